"""Publish a finished bake: copy to regions, share, point SSM at it, report.

The order is the contract: copies are tagged (as they are created) and shared before any
SSM parameter moves, so a consumer resolving "latest" never gets an AMI it cannot launch.
Every step is idempotent, so a publish that failed half-way is simply run again.

The "latest" pointer only moves forward, and in every region together:

- "Newer" is decided by build time: when the bake started, the UTC time in its build id
  (``web-20261204T173909Z-4242``), which every AMI of the build carries in its
  `goldsmith:build-id` tag. The pointer's current AMI is described in each region and
  its tag read; no second record (parameter description, counter) can disagree with it.
  Build time is not git history: a rebuild of an old commit started later is newer.
- A publish whose build is older than what the pointer holds in any region is refused
  (`PointerIsNewer`, naming image, region, the current AMI and its build time), before
  anything is copied and again after the copies, just before the first write: a newer
  publish may have landed while the copies ran.
- A pointer at an AMI goldsmith cannot date (not a goldsmith build, or deregistered) is
  replaced, and said so; a build of ours that cannot be dated replaces only such pointers.
- Every copy is available and shared, and every region checked, before the first
  parameter is written; if a write fails, the regions already moved are put back, so no
  consumer sees two builds as "latest" in two regions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import GoldsmithError
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


class PointerIsNewer(GoldsmithError):
    """The "latest" pointer holds a newer build than the one being published."""


@dataclass(frozen=True)
class Pointer:
    """What the "latest" parameter holds in one region before a publish moves it."""

    region: str
    ami_id: str | None  # None: the parameter does not exist yet
    build_id: str = ""  # the AMI's goldsmith:build-id tag ("" when it has none)
    built_at: datetime | None = None  # the time in that build id; None: cannot be dated


def read_pointer(aws: Aws, region: str, name: str) -> Pointer:
    """The parameter `name` in `region`, and the build of the AMI it points at."""
    current = ssm.get_ami(aws, region, name)
    if current is None:
        return Pointer(region, None)
    image = amis.find_image(aws, region, current)
    if image is None:
        return Pointer(region, current)  # deregistered (pruned): nothing to compare with
    build_id = amis.tags_of(image).get(amis.TAG_BUILD_ID, "")
    return Pointer(region, current, build_id, amis.build_time(build_id))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "an unknown time"


def _is_ahead(pointer: Pointer, provenance: amis.Provenance) -> bool:
    """Whether `pointer` holds a build that this publish must not replace."""
    if pointer.ami_id is None or pointer.built_at is None:
        return False
    if pointer.build_id == provenance.build_id:
        return False  # this very build: publishing it again is a no-op
    ours = provenance.built_at
    return ours is None or pointer.built_at > ours


def check_forward(
    aws: Aws,
    provenance: amis.Provenance,
    regions: Iterable[str],
    name: str,
    *,
    doing: str = "publish",
    remedy: str = "Publish a newer build (or set the parameter by hand to roll back on purpose).",
) -> dict[str, Pointer]:
    """Read the pointer in every region; refuse the publish if any holds a newer build.

    Every region is read before the verdict, so the error lists them all and nothing
    has been written when it is raised. `doing` and `remedy` word the refusal for
    another mover of a pointer (promote).
    """
    pointers = {r: read_pointer(aws, r, name) for r in dict.fromkeys(regions)}
    ahead = [p for p in pointers.values() if _is_ahead(p, provenance)]
    if ahead:
        where = "; ".join(
            f"in {p.region} it points at {p.ami_id} (build {p.build_id}, built {_when(p.built_at)})"
            for p in ahead
        )
        raise PointerIsNewer(
            f"refusing to {doing} image {provenance.image!r} build {provenance.build_id} "
            f"(built {_when(provenance.built_at)}): {name} already holds a newer build: "
            f"{where}. The pointer only moves forward; every region keeps its current AMI. "
            + remedy
        )
    return pointers


def move_pointers(
    aws: Aws,
    name: str,
    targets: Mapping[str, str],
    pointers: Mapping[str, Pointer],
    description: str,
) -> None:
    """Point `name` at `targets` ({region: AMI}) everywhere, or nowhere.

    A write that fails puts the regions already moved back on their previous AMI, so a
    consumer never resolves two builds as "latest" in two regions.
    """
    moved: list[str] = []
    try:
        for region, ami_id in targets.items():
            current = pointers[region]
            if current.ami_id == ami_id:
                continue
            if current.ami_id and current.built_at is None:
                log("publish", f"{region}: {name} held {current.ami_id}, no dated goldsmith build")
            ssm.put_ami(aws, region, name, ami_id, description=description)
            moved.append(region)
    except GoldsmithError as err:
        undone = _put_back(aws, name, [pointers[r] for r in moved])
        raise GoldsmithError(f"{err}; {undone}") from None


def _put_back(aws: Aws, name: str, pointers: list[Pointer]) -> str:
    """Restore `pointers`; say what was restored (and what could not be)."""
    if not pointers:
        return f"no region's {name} had moved"
    failed: list[str] = []
    for p in pointers:
        try:
            if p.ami_id is None:
                ssm.delete(aws, p.region, name)
            else:
                ssm.put_ami(aws, p.region, name, p.ami_id, description="restored by goldsmith")
        except GoldsmithError as err:
            failed.append(f"{p.region} ({err})")
    regions = ", ".join(p.region for p in pointers)
    if failed:
        return f"{name} could not be put back in " + "; ".join(failed) + " (set it by hand)"
    return f"{name} was put back on its previous AMI in {regions}"


def from_build_manifest(path: Path) -> tuple[amis.Provenance, amis.Built]:
    """Provenance and built AMIs from goldsmith's build manifest (build/<image>/manifest.json).

    The build manifest embeds Packer's manifest under `packer_manifest`, so publishing
    needs nothing from the build's temporary folder.
    """
    import json

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
    # Refuse an old build before copying anything of it.
    check_forward(aws, provenance, targets, name)
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
    # Again: copies take long, and a newer publish may have moved the pointer meanwhile.
    pointers = check_forward(aws, provenance, targets, name)
    move_pointers(
        aws,
        name,
        {region: image["ImageId"] for region, image in images.items()},
        pointers,
        description=f"goldsmith {provenance.image} {provenance.git_sha[:12]} "
        f"build {provenance.build_id}",
    )
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
        result.regions[region] = RegionResult(
            ami_id=image["ImageId"],
            snapshots=amis.snapshots_of(image),
            shared_with=sorted(share_with),
            ssm_parameter=name,
            ssm_previous=pointers[region].ami_id,
        )
        log("publish", f"{region}: {image['ImageId']} -> {name}")
    result.seconds = round(time.monotonic() - started, 1)
    return result
