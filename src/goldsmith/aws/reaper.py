"""Find and delete what a build left behind in AWS, by the build's id.

Everything a bake makes in AWS carries its build id (tag `goldsmith:build-id`) from the
moment it exists: the builder instance and its volumes (Packer's `run_tags`,
`run_volume_tags`), the build's key pair (imported by goldsmith, tagged), copies and
their snapshots (CopyImage's TagSpecifications). What cannot be tagged at creation is
reached through the tagged instance:

- Packer 1.6.6 cannot tag its temporary security group (or a temporary key pair, which
  goldsmith does not use: it passes its own): the instance names them (SecurityGroups,
  KeyName); only Packer's own (`packer_*`) are taken, never a group someone passed in.
- Packer tags the AMI and its snapshots only once CreateImage has finished, so a build
  killed while the image is pending leaves an untagged AMI: found by the instance it was
  made from (DescribeImages' `source-instance-id`), and its snapshots by their
  description (`Created by CreateImage(<instance>) ...`) and by the build's volumes.

What cannot be found: Packer's group and key pair, and an untagged AMI, once EC2 no
longer lists the terminated instance (about an hour after it ends) - the reaper runs
in the build's own cleanup and in the next build's sweep, well within that. Packer's run
uuid does not help: the manifest that records it is written only when the build
succeeded, and Packer names its temporary resources with uuids of their own.

`sweep=True` takes the leftovers of every dead build (one whose build id says it started
more than `dead_after_s` ago), but only what goldsmith tagged and the Packer groups and
key pairs of such tagged instances: an untagged `packer_*` group or key pair in the
account is someone else's and stays. A sweep never deregisters an AMI (published AMIs
carry the same tags).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from . import amis
from .clients import Aws, AwsError

PACKER_PREFIX = "packer_"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
# A build whose id says it started longer ago than this is dead (CodeBuild's longest
# timeout is 8 hours): a sweep takes its leftovers.
DEAD_AFTER_S = 8 * 3600
# EC2 takes at most 200 values per filter.
FILTER_VALUES_MAX = 100


@dataclass
class Reaped:
    """What the reaper deleted (or, with dry_run, would delete), per kind: 'region:id'."""

    instances: list[str] = field(default_factory=list)
    key_pairs: list[str] = field(default_factory=list)
    security_groups: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(vars(self).values())

    def summary(self) -> str:
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in vars(self).items() if v]
        return ", ".join(parts) or "nothing"


@dataclass
class Builders:
    """The tagged instances of the builds being reaped in one region, and what they used."""

    live: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # every state: AMIs are traced to them
    keys: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)


def instances(aws: Aws, region: str, filters: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
    """Every instance matching `filters`, across all pages."""
    paginator = aws.ec2(region).get_paginator("describe_instances")
    flt = [{"Name": k, "Values": v} for k, v in filters.items()]
    for page in paginator.paginate(Filters=flt, PaginationConfig={"PageSize": amis.PAGE_SIZE}):
        for reservation in page.get("Reservations", []):
            yield from reservation.get("Instances", [])


def selector(
    build_id: str | None, sweep: bool, dead_after_s: int = DEAD_AFTER_S
) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a resource (with its Tags) is one to reap: of `build_id`, or, when
    sweeping, of any dead build (a build id without a start time is never taken as dead)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=dead_after_s)

    def mine(resource: Mapping[str, Any]) -> bool:
        tagged = amis.tags_of(resource).get(amis.TAG_BUILD_ID)
        if not tagged:
            return False
        if tagged == build_id:
            return True
        started = amis.build_time(tagged) if sweep else None
        return started is not None and started < cutoff

    return mine


def reap(
    aws: Aws,
    regions: Iterable[str],
    build_id: str | None,
    *,
    images: bool = False,
    sweep: bool = False,
    dry_run: bool = False,
    wait_s: int = 600,
    dead_after_s: int = DEAD_AFTER_S,
) -> Reaped:
    """Delete what build `build_id` leaked in `regions`; `images=True` for a failed build's
    AMIs; `sweep=True` for the tagged leftovers of every dead build too."""
    if not build_id and not sweep:
        raise GoldsmithError("the reaper needs a build id (or sweep=True)")
    if images and not build_id:
        raise GoldsmithError("the reaper deregisters AMIs of one failed build only: give its id")
    mine = selector(build_id, sweep, dead_after_s)
    flt = _tag_filter(None if sweep else build_id)
    done = Reaped()
    for region in dict.fromkeys(regions):
        builders = _reap_instances(aws, region, flt, mine, dry_run, wait_s, done)
        _reap_key_pairs(aws, region, mine, builders, dry_run, done)
        _reap_groups(aws, region, mine, builders, dry_run, done)
        if images and build_id:
            _reap_images(aws, region, build_id, builders, dry_run, done)
        _reap_volumes(aws, region, mine, dry_run, done)
    log("reap", f"{'would delete' if dry_run else 'deleted'}: {done.summary()}")
    return done


def _tag_filter(build_id: str | None) -> dict[str, list[str]]:
    """EC2's filter for one build's resources, or (None) for everything goldsmith tagged."""
    if build_id:
        return {f"tag:{amis.TAG_BUILD_ID}": [build_id]}
    return {"tag-key": [amis.TAG_BUILD_ID]}


def _reap_instances(
    aws: Aws,
    region: str,
    flt: dict[str, list[str]],
    mine: Callable[[Mapping[str, Any]], bool],
    dry_run: bool,
    wait_s: int,
    done: Reaped,
) -> Builders:
    """Terminate the tagged builders; return them (terminated ones too) and what they used.

    A terminated instance still names its key pair and groups while EC2 lists it, so a
    reaper that runs after the builder terminated itself (shutdown_behavior) finds them.
    """
    found = Builders()
    for inst in instances(aws, region, flt):
        if not mine(inst):
            continue
        found.ids.add(inst["InstanceId"])
        if inst.get("State", {}).get("Name") in LIVE_STATES:
            found.live.append(inst["InstanceId"])
        found.groups.update(g["GroupId"] for g in inst.get("SecurityGroups", []))
        if inst.get("KeyName"):
            found.keys.add(inst["KeyName"])
        found.volumes.update(
            m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
        )
    if found.live:
        done.instances += [f"{region}:{i}" for i in found.live]
        if not dry_run:
            ec2 = aws.ec2(region)
            ec2.terminate_instances(InstanceIds=found.live)
            # Security groups cannot go while an instance still uses them.
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=found.live,
                WaiterConfig={"Delay": 5, "MaxAttempts": max(1, wait_s // 5)},
            )
    return found


def _reap_key_pairs(
    aws: Aws,
    region: str,
    mine: Callable[[Mapping[str, Any]], bool],
    builders: Builders,
    dry_run: bool,
    done: Reaped,
) -> None:
    """The builds' own key pairs (tagged) and Packer's temporary ones their instances used."""
    ec2 = aws.ec2(region)
    _, in_use = _in_use(aws, region, set(builders.live))
    for kp in ec2.describe_key_pairs().get("KeyPairs", []):
        name = kp["KeyName"]
        temporary = name.startswith(PACKER_PREFIX) and name in builders.keys
        if (mine(kp) or temporary) and name not in in_use:
            done.key_pairs.append(f"{region}:{name}")
            if not dry_run:
                ec2.delete_key_pair(KeyName=name)


def _reap_groups(
    aws: Aws,
    region: str,
    mine: Callable[[Mapping[str, Any]], bool],
    builders: Builders,
    dry_run: bool,
    done: Reaped,
) -> None:
    """Packer's temporary groups the builds' instances used (and any the builds tagged),
    never a group someone passed in."""
    in_use, _ = _in_use(aws, region, set(builders.live))
    for sg in _security_groups(aws, region):
        gid, name = sg["GroupId"], sg.get("GroupName", "")
        temporary = name.startswith(PACKER_PREFIX) and gid in builders.groups
        if (mine(sg) or temporary) and gid not in in_use:
            done.security_groups.append(f"{region}:{gid}")
            if not dry_run:
                _delete_group(aws, region, gid)


def _security_groups(aws: Aws, region: str) -> Iterator[dict[str, Any]]:
    paginator = aws.ec2(region).get_paginator("describe_security_groups")
    for page in paginator.paginate(PaginationConfig={"PageSize": amis.PAGE_SIZE}):
        yield from page.get("SecurityGroups", [])


def _in_use(aws: Aws, region: str, exclude: set[str]) -> tuple[set[str], set[str]]:
    """Security group ids and key names live instances (other than `exclude`) still use.

    A dry run leaves the doomed instances up: excluded, they do not count as users.
    """
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


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    items = sorted(values)
    for i in range(0, len(items), FILTER_VALUES_MAX):
        yield items[i : i + FILTER_VALUES_MAX]


def _build_images(
    aws: Aws, region: str, build_id: str, builders: Builders
) -> dict[str, dict[str, Any]]:
    """The build's AMIs in any state: tagged (Packer's AMI once made, copies from their
    start), and untagged ones CreateImage made from the build's instances."""
    found = {
        i["ImageId"]: i
        for i in amis.describe_images(aws, region, owners=["self"], filters=_tag_filter(build_id))
    }
    for ids in _chunks(builders.ids):
        for image in amis.describe_images(
            aws, region, owners=["self"], filters={"source-instance-id": ids}
        ):
            found.setdefault(image["ImageId"], image)
    return found


def _build_snapshots(aws: Aws, region: str, build_id: str, builders: Builders) -> set[str]:
    """Snapshots of the build without an AMI to lead to them: tagged, made by CreateImage
    from its instances (EC2's description says so), or taken of its volumes."""
    filters: list[dict[str, Any]] = [{"Name": f"tag:{amis.TAG_BUILD_ID}", "Values": [build_id]}]
    filters += [
        {"Name": "description", "Values": [f"Created by CreateImage({i})*" for i in ids]}
        for ids in _chunks(builders.ids)
    ]
    filters += [{"Name": "volume-id", "Values": ids} for ids in _chunks(builders.volumes)]
    found: set[str] = set()
    paginator = aws.ec2(region).get_paginator("describe_snapshots")
    for flt in filters:
        for page in paginator.paginate(
            OwnerIds=["self"], Filters=[flt], PaginationConfig={"PageSize": amis.PAGE_SIZE}
        ):
            found.update(s["SnapshotId"] for s in page.get("Snapshots", []))
    return found


def _reap_images(
    aws: Aws, region: str, build_id: str, builders: Builders, dry_run: bool, done: Reaped
) -> None:
    """Deregister a failed build's AMIs (pending and failed ones too) and delete their
    snapshots, and the build's snapshots no AMI leads to."""
    ec2 = aws.ec2(region)
    snapshots = _build_snapshots(aws, region, build_id, builders)
    images = _build_images(aws, region, build_id, builders)
    for image in images.values():
        snapshots.update(amis.snapshots_of(image))
    if not dry_run:
        # The CI policy (aws/policy.json) deletes only what carries a build id: what an
        # interrupted CreateImage left untagged is tagged with this build's first.
        for ids in _chunks([*images, *snapshots]):
            try:
                ec2.create_tags(Resources=ids, Tags=amis.tag_list({amis.TAG_BUILD_ID: build_id}))
            except AwsError as err:
                if "NotFound" not in err.code and not err.code.startswith("InvalidAMIID"):
                    raise  # (one gone meanwhile: its deletion below says so, or skips it)
    for ami_id in sorted(images):
        done.images.append(f"{region}:{ami_id}")
        if not dry_run:
            try:
                ec2.deregister_image(ImageId=ami_id)
            except AwsError as err:
                if not err.code.startswith("InvalidAMIID"):
                    raise
    for snapshot in sorted(snapshots):
        done.snapshots.append(f"{region}:{snapshot}")
        if not dry_run:
            try:
                ec2.delete_snapshot(SnapshotId=snapshot)
            except AwsError as err:
                if err.code != "InvalidSnapshot.NotFound":
                    raise


def _reap_volumes(
    aws: Aws,
    region: str,
    mine: Callable[[Mapping[str, Any]], bool],
    dry_run: bool,
    done: Reaped,
) -> None:
    """Tagged volumes left detached (`available`): the builder's volumes go with it
    (delete_on_termination), so these are what an interrupted build detached."""
    ec2 = aws.ec2(region)
    paginator = ec2.get_paginator("describe_volumes")
    flt = [
        {"Name": "tag-key", "Values": [amis.TAG_BUILD_ID]},
        {"Name": "status", "Values": ["available"]},
    ]
    for page in paginator.paginate(Filters=flt, PaginationConfig={"PageSize": amis.PAGE_SIZE}):
        for volume in page.get("Volumes", []):
            if not mine(volume):
                continue
            done.volumes.append(f"{region}:{volume['VolumeId']}")
            if not dry_run:
                ec2.delete_volume(VolumeId=volume["VolumeId"])
