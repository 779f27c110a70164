"""sbom.to_cyclonedx: a valid CycloneDX document with Debian purls."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from goldsmith import sbom

INVENTORY: dict[str, Any] = {
    "os": {"id": "debian", "version_id": "12", "codename": "bookworm"},
    "packages": {
        "bash": {
            "name": "bash",
            "version": "5.2.15-2+b7",
            "architecture": "amd64",
            "source": "bash",
            "source_version": "5.2.15-2",
        },
        "libssl3": {
            "name": "libssl3",
            "version": "3.0.13-1~deb12u1",
            "architecture": "amd64",
            "source": "openssl",
            "source_version": "3.0.13-1~deb12u1",
        },
        "tzdata": {
            "name": "tzdata",
            "version": "2024a-0+deb12u1",
            "architecture": "all",
            "source": "tzdata",
            "source_version": "2024a-0+deb12u1",
        },
        "vim": {
            "name": "vim",
            "version": "2:9.0.1378-2",
            "architecture": "amd64",
            "source": "vim",
            "source_version": "2:9.0.1378-2",
        },
    },
}

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _doc() -> str:
    return sbom.to_cyclonedx(INVENTORY, "base", "20260102-1", timestamp=WHEN)


def test_the_document_passes_the_librarys_strict_schema_validation() -> None:
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(_doc())
    assert error is None, error


def test_the_validator_would_catch_a_broken_document() -> None:
    # Guards the test above: the validator really validates.
    broken = json.loads(_doc())
    broken["components"][0]["type"] = "not-a-type"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(broken)) is not None


def test_every_package_is_a_component_with_its_debian_purl() -> None:
    doc = json.loads(_doc())
    assert doc["specVersion"] == sbom.SPEC_VERSION
    purls = {c["name"]: c["purl"] for c in doc["components"]}
    assert purls == {
        "bash": "pkg:deb/debian/bash@5.2.15-2%2Bb7?arch=amd64&distro=debian-12"
        "&upstream=bash%405.2.15-2",
        "libssl3": "pkg:deb/debian/libssl3@3.0.13-1~deb12u1?arch=amd64&distro=debian-12"
        "&upstream=openssl",
        "tzdata": "pkg:deb/debian/tzdata@2024a-0%2Bdeb12u1?arch=all&distro=debian-12",
        "vim": "pkg:deb/debian/vim@2:9.0.1378-2?arch=amd64&distro=debian-12",
    }


def test_the_source_package_is_a_property_of_each_component() -> None:
    doc = json.loads(_doc())
    props = {c["name"]: {p["name"]: p["value"] for p in c["properties"]} for c in doc["components"]}
    assert props["libssl3"] == {
        "debian:source": "openssl",
        "debian:source_version": "3.0.13-1~deb12u1",
    }
    assert props["bash"]["debian:source_version"] == "5.2.15-2"


def test_the_image_is_the_described_component_and_holds_every_package() -> None:
    doc = json.loads(_doc())
    root = doc["metadata"]["component"]
    assert (root["name"], root["version"], root["type"]) == (
        "base",
        "20260102-1",
        "operating-system",
    )
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert sorted(deps[root["bom-ref"]]) == sorted(c["bom-ref"] for c in doc["components"])


def test_same_inventory_same_document_and_serial_number() -> None:
    assert _doc() == _doc()
    other = dict(INVENTORY, packages=dict(INVENTORY["packages"]))
    del other["packages"]["vim"]
    a = json.loads(_doc())["serialNumber"]
    b = json.loads(sbom.to_cyclonedx(other, "base", "20260102-1", timestamp=WHEN))["serialNumber"]
    assert a != b
