"""Publish a finished bake: copy to regions, share, point SSM at it, report.

The order is the contract: copies are tagged and shared before any SSM parameter moves,
so a consumer resolving "latest" never gets an AMI it cannot launch. Every step is
idempotent, so a publish that failed half-way is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..tools import log
from . import amis, ssm
from .clients import Aws


@dataclass
class RegionResult:
    """What one region got."""

    ami_id: str
    snapshots: list[str]
    shared_with: list[str]
    ssm_parameter: str
    ssm_previous: str | None


@dataclass
class PublishResult:
    """Everything a publish did; the input of the build report."""

    image: str
    build_id: str
    git_sha: str
    fingerprint: str
    roles: list[str]
    source_region: str
    source_ami: str
    packer_run_uuid: str
    regions: dict[str, RegionResult] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def from_build_manifest(path: Path) -> tuple[amis.Provenance, amis.Built]:
    """Provenance and built AMIs from goldsmith's build manifest (build/<image>/manifest.json).

    The build manifest embeds Packer's manifest under `packer_manifest`, so publishing
    needs nothing from the build's temporary folder.
    """
    import json

    from ..errors import GoldsmithError

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GoldsmithError(f"{path}: no build manifest; bake the image first") from None
    except json.JSONDecodeError as err:
        raise GoldsmithError(f"{path}: not valid JSON ({err})") from None
    try:
        provenance = amis.Provenance(
            image=str(data["image"]),
            git_sha=str(data["git"]["sha"]),
            fingerprint=str(data["fingerprint"]),
            build_id=str(data["build_id"]),
            roles=tuple(data.get("roles", [])),
        )
    except (KeyError, TypeError) as err:
        raise GoldsmithError(f"{path}: key {err} is missing") from None
    if data.get("target") not in ("aws", "twin"):
        raise GoldsmithError(
            f"{path}: target is {data.get('target')!r}; only aws and twin builds are published"
        )
    built = amis.parse_manifest(data.get("packer_manifest"), f"{path}: packer_manifest")
    return provenance, built


def publish(
    aws: Aws,
    manifest: Path | amis.Built,
    provenance: amis.Provenance,
    *,
    regions: list[str],
    share_with: list[str],
    ssm_parameter: str,
    encrypted: bool = True,
    kms_key_ids: Mapping[str, str] | None = None,
    build_name: str | None = None,
    wait: amis.Wait | None = None,
) -> PublishResult:
    """Publish the AMI recorded in Packer's `manifest` to every region in `regions`.

    `manifest` is the path of Packer's manifest file, or what `from_build_manifest`
    read from goldsmith's. `ssm_parameter` is the catalogue's template
    (``/goldsmith/{image}/latest``).
    """
    started = time.monotonic()
    built = (
        manifest if isinstance(manifest, amis.Built) else amis.read_manifest(manifest, build_name)
    )
    name = ssm.parameter_name(ssm_parameter, provenance.image)
    targets = list(dict.fromkeys([built.source_region, *regions]))
    if share_with and encrypted and not kms_key_ids:
        log(
            "publish",
            "warning: sharing encrypted AMIs needs a customer-managed KMS key the other "
            "accounts may use; AMIs encrypted with the default aws/ebs key cannot be launched "
            "by them",
        )
    images = amis.copy_to_regions(
        aws,
        built,
        targets,
        provenance.tags(),
        encrypted=encrypted,
        kms_key_ids=kms_key_ids,
        wait=wait,
    )
    for region, image in images.items():
        amis.share(aws, region, image, share_with)
    result = PublishResult(
        image=provenance.image,
        build_id=provenance.build_id,
        git_sha=provenance.git_sha,
        fingerprint=provenance.fingerprint,
        roles=list(provenance.roles),
        source_region=built.source_region,
        source_ami=built.source_ami,
        packer_run_uuid=built.run_uuid,
    )
    for region, image in images.items():
        previous = ssm.get_ami(aws, region, name)
        ssm.put_ami(
            aws,
            region,
            name,
            image["ImageId"],
            description=f"goldsmith {provenance.image} {provenance.git_sha[:12]} "
            f"build {provenance.build_id}",
        )
        result.regions[region] = RegionResult(
            ami_id=image["ImageId"],
            snapshots=amis.snapshots_of(image),
            shared_with=sorted(share_with),
            ssm_parameter=name,
            ssm_previous=previous,
        )
        log("publish", f"{region}: {image['ImageId']} -> {name}")
    result.seconds = round(time.monotonic() - started, 1)
    return result
