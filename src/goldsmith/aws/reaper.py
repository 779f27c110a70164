"""Find and delete what a build left behind in AWS.

A CI job cancelled mid-bake kills Packer before its cleanup runs: the builder instance
keeps running, its temporary key pair and security group stay. The reaper finds them by
the build's tag (`goldsmith:build-id`, on the instance, the key pair, the AMI and its
snapshots) and by Packer's naming (`packer_*`) of the temporary security group and key
pair the tagged instance used, and deletes them. AMIs of a failed build are deregistered
and their snapshots deleted.

`sweep=True` also deletes `packer_*` key pairs and security groups no live instance
uses, whoever made them: meant for a scheduled clean-up, not while other bakes run
(a parallel bake holds them for a few seconds before its instance starts).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from . import amis
from .clients import Aws, AwsError

PACKER_PREFIX = "packer_"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


@dataclass
class Reaped:
    """What the reaper deleted (or, with dry_run, would delete), per kind: 'region:id'."""

    instances: list[str] = field(default_factory=list)
    key_pairs: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(vars(self).values())

    def summary(self) -> str:
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in vars(self).items() if v]
        return ", ".join(parts) or "nothing"


def instances(aws: Aws, region: str, filters: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
    """Every instance matching `filters`, across all pages."""
    paginator = aws.ec2(region).get_paginator("describe_instances")
    flt = [{"Name": k, "Values": v} for k, v in filters.items()]
    for page in paginator.paginate(Filters=flt, PaginationConfig={"PageSize": amis.PAGE_SIZE}):
        for reservation in page.get("Reservations", []):
            yield from reservation.get("Instances", [])


def reap(
    aws: Aws,
    regions: Iterable[str],
    build_id: str | None,
    *,
    images: bool = False,
    sweep: bool = False,
    dry_run: bool = False,
    wait_s: int = 600,
) -> Reaped:
    """Delete what build `build_id` leaked in `regions`; `images=True` for a failed build's AMIs."""
    if not build_id and not sweep:
        raise GoldsmithError("the reaper needs a build id (or sweep=True)")
    done = Reaped()
    for region in dict.fromkeys(regions):
        _reap_region(aws, region, build_id, images, sweep, dry_run, wait_s, done)
    log("reap", f"{'would delete' if dry_run else 'deleted'}: {done.summary()}")
    return done


def _reap_region(
    aws: Aws,
    region: str,
    build_id: str | None,
    images: bool,
    sweep: bool,
    dry_run: bool,
    wait_s: int,
    done: Reaped,
) -> None:
    ec2 = aws.ec2(region)
    groups: dict[str, str] = {}  # id -> name of the security groups leaked instances used
    keys: set[str] = set()
    doomed: list[str] = []
    if build_id:
        for inst in instances(
            aws,
            region,
            {f"tag:{amis.TAG_BUILD_ID}": [build_id], "instance-state-name": LIVE_STATES},
        ):
            doomed.append(inst["InstanceId"])
            for g in inst.get("SecurityGroups", []):
                groups[g["GroupId"]] = g.get("GroupName", "")
            if inst.get("KeyName"):
                keys.add(inst["KeyName"])
    if doomed:
        done.instances += [f"{region}:{i}" for i in doomed]
        if not dry_run:
            ec2.terminate_instances(InstanceIds=doomed)
            # Security groups cannot go while an instance still uses them.
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=doomed,
                WaiterConfig={"Delay": 5, "MaxAttempts": max(1, wait_s // 5)},
            )

    # A dry run leaves the doomed instances up: they do not count as users.
    in_use_groups, in_use_keys = _in_use(aws, region, set(doomed))

    # Key pairs: the build's own (tagged), Packer's temporary ones the instances used,
    # and with sweep every unused packer_* one.
    pairs = ec2.describe_key_pairs().get("KeyPairs", [])
    for kp in pairs:
        name = kp["KeyName"]
        tagged = build_id is not None and amis.tags_of(kp).get(amis.TAG_BUILD_ID) == build_id
        temporary = name.startswith(PACKER_PREFIX) and (name in keys or sweep)
        if (tagged or temporary) and name not in in_use_keys:
            done.key_pairs.append(f"{region}:{name}")
            if not dry_run:
                ec2.delete_key_pair(KeyName=name)

    # Security groups: Packer's temporary ones only, never a group someone passed in.
    for sg in _security_groups(aws, region):
        gid, name = sg["GroupId"], sg.get("GroupName", "")
        tagged = build_id is not None and amis.tags_of(sg).get(amis.TAG_BUILD_ID) == build_id
        temporary = name.startswith(PACKER_PREFIX) and (gid in groups or sweep)
        if (tagged or temporary) and gid not in in_use_groups:
            done.security_groups.append(f"{region}:{gid}")
            if not dry_run:
                _delete_group(aws, region, gid)

    if images and build_id:
        _reap_images(aws, region, build_id, dry_run, done)


def _security_groups(aws: Aws, region: str) -> Iterator[dict[str, Any]]:
    paginator = aws.ec2(region).get_paginator("describe_security_groups")
    for page in paginator.paginate(PaginationConfig={"PageSize": amis.PAGE_SIZE}):
        yield from page.get("SecurityGroups", [])


def _in_use(aws: Aws, region: str, exclude: set[str]) -> tuple[set[str], set[str]]:
    """Security group ids and key names live instances (other than `exclude`) still use."""
    groups: set[str] = set()
    keys: set[str] = set()
    for inst in instances(aws, region, {"instance-state-name": LIVE_STATES}):
        if inst["InstanceId"] in exclude or inst.get("State", {}).get("Name") == "shutting-down":
            continue
        groups.update(g["GroupId"] for g in inst.get("SecurityGroups", []))
        if inst.get("KeyName"):
            keys.add(inst["KeyName"])
    return groups, keys


def _delete_group(aws: Aws, region: str, group_id: str, attempts: int = 12) -> None:
    """Delete a security group, riding out the seconds an ENI takes to let go of it."""
    for attempt in range(attempts):
        try:
            aws.ec2(region).delete_security_group(GroupId=group_id)
            return
        except AwsError as err:
            if err.code == "InvalidGroup.NotFound":
                return
            if err.code != "DependencyViolation" or attempt == attempts - 1:
                raise
            time.sleep(5)


def _reap_images(aws: Aws, region: str, build_id: str, dry_run: bool, done: Reaped) -> None:
    ec2 = aws.ec2(region)
    flt = {f"tag:{amis.TAG_BUILD_ID}": [build_id]}
    snapshots: set[str] = set()
    for image in amis.describe_images(aws, region, owners=["self"], filters=flt):
        done.images.append(f"{region}:{image['ImageId']}")
        snapshots.update(amis.snapshots_of(image))
        if not dry_run:
            ec2.deregister_image(ImageId=image["ImageId"])
    # Snapshots tagged by the build but whose AMI never got registered or tagged.
    paginator = ec2.get_paginator("describe_snapshots")
    for page in paginator.paginate(
        OwnerIds=["self"],
        Filters=[{"Name": f"tag:{amis.TAG_BUILD_ID}", "Values": [build_id]}],
        PaginationConfig={"PageSize": amis.PAGE_SIZE},
    ):
        snapshots.update(s["SnapshotId"] for s in page.get("Snapshots", []))
    for snapshot in sorted(snapshots):
        done.snapshots.append(f"{region}:{snapshot}")
        if not dry_run:
            try:
                ec2.delete_snapshot(SnapshotId=snapshot)
            except AwsError as err:
                if err.code != "InvalidSnapshot.NotFound":
                    raise
