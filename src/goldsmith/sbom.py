"""A CycloneDX SBOM of an image: its Debian packages, from an inventory (`inventory.collect`).

Each package is a component with the purl `pkg:deb/<vendor>/<name>@<version>?arch=<arch>
&distro=<vendor>-<version_id>`; its source package is named in the purl's `upstream`
qualifier (`<source>`, or `<source>@<source version>` when that differs from the
package's version, as other SBOM tools write it) and in the
properties `debian:source` and `debian:source_version`, which `cvegate` also keys on.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

__all__ = ["SPEC_VERSION", "purl", "to_cyclonedx"]

SPEC_VERSION = "1.6"


def purl(pkg: dict[str, str], vendor: str = "debian", distro: str = "debian-12") -> str:
    """The package URL of one inventory package."""
    return _purl(pkg, vendor, distro).to_string()


def _purl(pkg: dict[str, str], vendor: str, distro: str) -> PackageURL:
    qualifiers = {"arch": pkg["architecture"], "distro": distro}
    if pkg["source_version"] != pkg["version"]:
        qualifiers["upstream"] = f"{pkg['source']}@{pkg['source_version']}"
    elif pkg["source"] != pkg["name"]:
        qualifiers["upstream"] = pkg["source"]
    return PackageURL(
        type="deb",
        namespace=vendor,
        name=pkg["name"],
        version=pkg["version"],
        qualifiers=qualifiers,
    )


def to_cyclonedx(
    inventory: dict[str, Any],
    image: str,
    version: str,
    *,
    timestamp: datetime | None = None,
) -> str:
    """The CycloneDX 1.6 JSON document of `inventory`'s packages, for `image` at `version`
    (a build id or fingerprint).

    The document's serial number is derived from its content, so the same inventory gives
    the same SBOM; `timestamp` (default: now) is the one field that differs between runs.
    """
    os_ = inventory.get("os") or {}
    vendor = os_.get("id") or "debian"
    distro = f"{vendor}-{os_.get('version_id') or '12'}"
    components = []
    for pkg in inventory["packages"].values():
        p = _purl(pkg, vendor, distro)
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=pkg["name"],
                version=pkg["version"],
                purl=p,
                bom_ref=p.to_string(),
                properties=[
                    Property(name="debian:source", value=pkg["source"]),
                    Property(name="debian:source_version", value=pkg["source_version"]),
                ],
            )
        )
    refs = "\n".join(sorted(c.bom_ref.value or "" for c in components))
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"goldsmith:{image}:{version}\n{refs}")
    root = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=image,
        version=version,
        bom_ref=f"goldsmith-image:{image}@{version}",
        properties=[Property(name="distro", value=distro)],
    )
    metadata = BomMetaData(component=root, timestamp=timestamp or datetime.now().astimezone())
    bom = Bom(components=components, metadata=metadata, serial_number=serial)
    # The image holds every package; dpkg's own Depends are not recorded here.
    bom.register_dependency(root, components)
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"
