"""Promote a proven build to a channel: `/goldsmith/<image>/<channel>` in every region.

`latest` is publish's own pointer; a channel (`staging`, `stable`, `prod-eu`) is moved by
a person or a pipeline once a build has proven itself there. The rules are publish's,
and so is the code that applies them (`publish.check_forward`, `publish.move_pointers`):

- the build is one goldsmith published: found by its tags (`goldsmith:image`,
  `goldsmith:build-id`), available in every region of the image;
- by default the build `latest` points at (the same build in every region);
- the channel only moves forward, by build time, unless forced;
- every region or none: a write that fails puts the regions already moved back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import GoldsmithError
from ..tools import log
from . import amis, publish
from .clients import Aws
from .prune import Build, find_builds

CHANNEL_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
LATEST = "latest"


@dataclass
class Promoted:
    """What a promotion did: the channel's parameter, and per region the AMI and the one
    it held before (None: the channel was new there)."""

    image: str
    channel: str
    parameter: str
    build_id: str
    amis: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str | None] = field(default_factory=dict)
    forced: bool = False

    def summary(self) -> str:
        lines = [
            f"{self.parameter} -> build {self.build_id}" + (" (forced)" if self.forced else "")
        ]
        for region, ami_id in self.amis.items():
            before = self.previous.get(region)
            was = "unchanged" if before == ami_id else f"was {before or 'not set'}"
            lines.append(f"  {region}: {ami_id} ({was})")
        return "\n".join(lines)


def channel_parameter(image: str, channel: str) -> str:
    """`/goldsmith/<image>/<channel>`, once `channel` is a valid channel name."""
    if channel == LATEST:
        raise GoldsmithError(
            "--to latest: 'latest' is publish's own pointer and moves only when a build is "
            "published; promote to another channel (e.g. staging, stable)"
        )
    if not CHANNEL_RE.match(channel or ""):
        raise GoldsmithError(
            f"--to {channel!r}: a channel is lowercase letters, digits and single dashes "
            "(e.g. stable, prod-eu)"
        )
    return f"/goldsmith/{image}/{channel}"


def latest_build(aws: Aws, regions: list[str], latest: str) -> str:
    """The build id `latest` points at, the same in every region."""
    pointers = [publish.read_pointer(aws, r, latest) for r in regions]
    unset = [p.region for p in pointers if not p.build_id]
    if unset:
        raise GoldsmithError(
            f"{latest} points at no goldsmith build in {', '.join(unset)}: publish the image "
            "first, or name the build with --build-id"
        )
    ids = {p.build_id for p in pointers}
    if len(ids) > 1:
        where = ", ".join(f"{p.region}: {p.build_id}" for p in pointers)
        raise GoldsmithError(
            f"{latest} points at different builds ({where}): finish the publish, or name "
            "the build with --build-id"
        )
    return ids.pop()


def find_build(aws: Aws, image: str, regions: list[str], build_id: str) -> Build:
    """The build's AMIs, available in every region of the image."""
    build = next((b for b in find_builds(aws, image, regions) if b.build_id == build_id), None)
    if build is None:
        raise GoldsmithError(
            f"no AMI of image {image!r} carries build id {build_id!r} in "
            f"{', '.join(regions)} (tag {amis.TAG_BUILD_ID})"
        )
    missing = [
        f"{r} ({build.images[r].get('State')})" if r in build.images else r
        for r in regions
        if build.images.get(r, {}).get("State") != "available"
    ]
    if missing:
        raise GoldsmithError(
            f"build {build_id} of {image!r} has no available AMI in {', '.join(missing)}: "
            f"publish it there first (`./run aws.publish --image {image}`)"
        )
    return build


def promote(
    aws: Aws,
    image: str,
    regions: Iterable[str],
    channel: str,
    *,
    latest: str,
    build_id: str | None = None,
    force: bool = False,
) -> Promoted:
    """Point `/goldsmith/<image>/<channel>` at build `build_id` (default: the one `latest`
    points at) in every region of `regions`, or in none."""
    regions = list(dict.fromkeys(regions))
    name = channel_parameter(image, channel)
    build_id = build_id or latest_build(aws, regions, latest)
    build = find_build(aws, image, regions, build_id)
    source = next(
        (i for i in build.images.values() if amis.TAG_SOURCE_AMI not in amis.tags_of(i)),
        next(iter(build.images.values())),
    )
    tags = amis.tags_of(source)
    provenance = amis.Provenance(
        image,
        tags.get(amis.TAG_GIT_SHA, ""),
        tags.get(amis.TAG_FINGERPRINT, ""),
        build_id,
        tuple(r for r in tags.get(amis.TAG_ROLES, "").split(",") if r),
    )
    if force:
        pointers = {r: publish.read_pointer(aws, r, name) for r in regions}
        for p in pointers.values():
            if p.built_at and provenance.built_at and p.built_at > provenance.built_at:
                log("promote", f"{p.region}: {name} moves back from {p.build_id} (--force)")
    else:
        pointers = publish.check_forward(
            aws,
            provenance,
            regions,
            name,
            doing=f"promote to {channel}",
            remedy="Promote a newer build, or pass --force to move it back on purpose.",
        )
    targets = {r: build.images[r]["ImageId"] for r in regions}
    publish.move_pointers(
        aws,
        name,
        targets,
        pointers,
        description=f"goldsmith {image} {channel}: build {build_id}",
    )
    for region, ami_id in targets.items():
        log("promote", f"{region}: {ami_id} -> {name}")
    return Promoted(
        image=image,
        channel=channel,
        parameter=name,
        build_id=build_id,
        amis=targets,
        previous={r: pointers[r].ami_id for r in regions},
        forced=force,
    )
