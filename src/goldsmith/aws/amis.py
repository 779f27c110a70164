"""AMIs after a bake: read what Packer built, copy, tag, share.

What was built comes from Packer's manifest post-processor (`artifact_id` of the
builds of the last run), never from a log. Nothing here runs before the specs passed:
the build only reaches the manifest when every provisioner, specs included, succeeded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import botocore.exceptions

from ..errors import GoldsmithError
from ..tools import log
from .clients import DENIED_CODES, Aws, AwsError, iam_action

# Provenance tag keys: on the builder instance, the AMI and its snapshots, in every region.
TAG_IMAGE = "goldsmith:image"
TAG_GIT_SHA = "goldsmith:git-sha"
TAG_FINGERPRINT = "goldsmith:fingerprint"
TAG_BUILD_ID = "goldsmith:build-id"
TAG_ROLES = "goldsmith:roles"
# On copies: the AMI they were copied from, so a second publish reuses them.
TAG_SOURCE_AMI = "goldsmith:source-ami"
TAG_SOURCE_REGION = "goldsmith:source-region"

TAG_VALUE_MAX = 256  # EC2's limit on a tag value
# describe_* page size; small enough that pagination really happens in large accounts.
PAGE_SIZE = 100
AMAZON_EBS = "amazon-ebs"
# A bake's id is "<image>-<UTC time the bake started>-<pid>" (the pipeline makes it).
BUILD_TIME_RE = re.compile(r"-(\d{8}T\d{6}Z)-\d+$")


@dataclass(frozen=True)
class Provenance:
    """Where an image comes from: what every copy and snapshot is tagged with."""

    image: str
    git_sha: str
    fingerprint: str
    build_id: str
    roles: tuple[str, ...] = ()

    def tags(self) -> dict[str, str]:
        """The provenance as EC2 tags (values kept within EC2's 256-character limit)."""
        return {
            "Name": f"goldsmith-{self.image}",
            TAG_IMAGE: self.image,
            TAG_GIT_SHA: self.git_sha,
            TAG_FINGERPRINT: self.fingerprint,
            TAG_BUILD_ID: self.build_id,
            TAG_ROLES: roles_tag(self.roles),
        }

    @property
    def built_at(self) -> datetime | None:
        """When the bake started, read from its build id (None for an id of another form)."""
        return build_time(self.build_id)


def build_time(build_id: str) -> datetime | None:
    """The UTC time in a goldsmith build id (``web-20261204T173909Z-4242``), or None.

    The id is what every AMI of the build is tagged with (goldsmith:build-id), so the
    time of any published AMI can be read back from its tags.
    """
    found = BUILD_TIME_RE.search(build_id or "")
    if not found:
        return None
    try:
        return datetime.strptime(found.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def roles_tag(roles: Iterable[str]) -> str:
    """Roles as one tag value; a list too long for a tag ends with '+N more' instead of failing."""
    roles = list(roles)
    value = ",".join(roles)
    if len(value) <= TAG_VALUE_MAX:
        return value
    kept: list[str] = []
    for i, role in enumerate(roles):
        rest = f",+{len(roles) - i} more"
        if len(",".join([*kept, role])) + len(rest) > TAG_VALUE_MAX:
            return ",".join(kept) + rest
        kept.append(role)
    return value  # not reached: the loop returns once the value is too long


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


# --- Packer's manifest ------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """The AMIs one Packer run registered: {region: ami id}, and the run's id."""

    amis: dict[str, str]
    run_uuid: str
    build_name: str
    custom_data: dict[str, Any] = field(default_factory=dict)

    @property
    def source_region(self) -> str:
        return next(iter(self.amis))

    @property
    def source_ami(self) -> str:
        return self.amis[self.source_region]


def parse_artifact_id(artifact_id: str, *, where: str = "artifact_id") -> dict[str, str]:
    """Parse amazon-ebs's artifact id, ``"eu-west-1:ami-1,eu-central-1:ami-2"``, in order."""
    amis: dict[str, str] = {}
    for part in str(artifact_id).split(","):
        region, sep, ami = part.strip().partition(":")
        if not sep or not region or not ami.startswith("ami-"):
            raise GoldsmithError(
                f"{where}: {artifact_id!r} is not an amazon-ebs artifact id "
                "(expected 'region:ami-...' entries separated by commas)"
            )
        amis[region] = ami
    return amis


def read_manifest(path: Path, build_name: str | None = None) -> Built:
    """The AMIs of the last Packer run recorded in Packer's manifest file at `path`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GoldsmithError(
            f"{path}: Packer's manifest is missing; the build did not finish"
        ) from None
    except json.JSONDecodeError as err:
        raise GoldsmithError(f"{path}: not valid JSON ({err})") from None
    return parse_manifest(data, str(path), build_name)


def parse_manifest(data: Any, where: str, build_name: str | None = None) -> Built:
    """The AMIs of the last Packer run in a manifest post-processor's JSON (`data`).

    The manifest post-processor appends one entry per build and run; only entries of
    the last run (`last_run_uuid`) count, so an old run's AMI is never published.
    `build_name` picks one source when a run has several amazon-ebs builds. `where`
    names the file (and key) in errors.
    """
    if not isinstance(data, dict) or not isinstance(data.get("builds"), list):
        raise GoldsmithError(f"{where}: key 'builds' is missing or not a list")
    last = data.get("last_run_uuid")
    if not last or not isinstance(last, str):
        raise GoldsmithError(f"{where}: key 'last_run_uuid' is missing")
    found: list[Built] = []
    for i, build in enumerate(data["builds"]):
        if not isinstance(build, dict):
            raise GoldsmithError(f"{where}: builds[{i}] is not an object")
        if build.get("packer_run_uuid") != last or build.get("builder_type") != AMAZON_EBS:
            continue
        if build_name and build.get("name") != build_name:
            continue
        key = f"{where}: builds[{i}].artifact_id"
        if "artifact_id" not in build:
            raise GoldsmithError(f"{key} is missing")
        found.append(
            Built(
                amis=parse_artifact_id(build["artifact_id"], where=key),
                run_uuid=last,
                build_name=str(build.get("name", "")),
                custom_data=dict(build.get("custom_data") or {}),
            )
        )
    which = f"amazon-ebs build {build_name!r}" if build_name else "amazon-ebs build"
    if not found:
        raise GoldsmithError(f"{where}: no {which} in the last run (last_run_uuid {last!r})")
    if len(found) > 1:
        names = ", ".join(b.build_name for b in found)
        raise GoldsmithError(
            f"{where}: the last run has several amazon-ebs builds ({names}); name one"
        )
    return found[0]


# --- Reading AMIs -----------------------------------------------------------------


def describe_images(
    aws: Aws,
    region: str,
    *,
    owners: list[str] | None = None,
    filters: Mapping[str, Iterable[str]] | None = None,
    image_ids: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every image matching, across all pages."""
    kwargs: dict[str, Any] = {}
    if owners:
        kwargs["Owners"] = owners
    if filters:
        kwargs["Filters"] = [{"Name": k, "Values": list(v)} for k, v in filters.items()]
    if image_ids:
        kwargs["ImageIds"] = image_ids
    else:  # EC2 refuses MaxResults together with ImageIds
        kwargs["PaginationConfig"] = {"PageSize": PAGE_SIZE}
    for page in aws.ec2(region).get_paginator("describe_images").paginate(**kwargs):
        yield from page.get("Images", [])


def find_image(aws: Aws, region: str, ami_id: str) -> dict[str, Any] | None:
    """One image, or None when it does not exist (any more) in `region`."""
    try:
        images = list(describe_images(aws, region, image_ids=[ami_id]))
    except AwsError as err:
        if err.code.startswith("InvalidAMIID"):
            return None
        raise
    return images[0] if images else None


def describe_image(aws: Aws, region: str, ami_id: str) -> dict[str, Any]:
    """One image; a clear error when it does not exist in `region`."""
    image = find_image(aws, region, ami_id)
    if image is None:
        raise GoldsmithError(f"AMI {ami_id} does not exist in {region}")
    return image


def snapshots_of(image: Mapping[str, Any]) -> list[str]:
    """The EBS snapshot ids behind an image's block devices."""
    return [
        m["Ebs"]["SnapshotId"]
        for m in image.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    ]


def find_source_ami(aws: Aws, region: str, owners: list[str], name: str) -> dict[str, Any]:
    """The newest available image named like `name` owned by `owners` (Packer's source filter)."""
    flt = {"name": [name], "state": ["available"]}
    images = list(describe_images(aws, region, owners=owners, filters=flt))
    if not images:
        raise GoldsmithError(
            f"no AMI named {name!r} owned by {', '.join(owners)} in {region}: "
            "check images.yml aws.source_ami"
        )
    return max(images, key=lambda i: i.get("CreationDate", ""))


def find_copy(aws: Aws, region: str, source_ami: str) -> dict[str, Any] | None:
    """A copy of `source_ami` already in `region` (a previous publish got that far)."""
    for image in describe_images(
        aws, region, owners=["self"], filters={f"tag:{TAG_SOURCE_AMI}": [source_ami]}
    ):
        if image.get("State") in ("available", "pending"):
            return image
    return None


# --- Waiting ----------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    """How long to wait for an AMI to become available.

    Copies of large or first-in-region snapshots take long; AWS's default waiter gives up
    after 10 minutes, which is the classic "AMI waiter timed out" failure. The default
    here is an hour (the `ami_wait_seconds` setting).
    """

    timeout_s: int = 3600
    delay_s: int = 15


def wait_available(aws: Aws, region: str, ami_id: str, wait: Wait) -> dict[str, Any]:
    """Wait until `ami_id` is available in `region`; return its description."""
    client = aws.ec2(region)
    delay = max(1, wait.delay_s)
    attempts = max(1, wait.timeout_s // delay)
    try:
        client.get_waiter("image_available").wait(
            ImageIds=[ami_id], WaiterConfig={"Delay": delay, "MaxAttempts": attempts}
        )
    except botocore.exceptions.WaiterError as err:
        error = (err.last_response or {}).get("Error", {})
        if error.get("Code") in DENIED_CODES:
            action = iam_action(client.raw, "DescribeImages")
            raise GoldsmithError(
                f"AWS denied {action} in {region} while waiting for {ami_id}: the role or user "
                f"running goldsmith needs the IAM permission {action!r}"
            ) from None
        images = (err.last_response or {}).get("Images") or [{}]
        state = images[0].get("State", "unknown")
        reason = images[0].get("StateReason", {}).get("Message", "")
        if state == "failed":
            raise GoldsmithError(
                f"AMI {ami_id} in {region} failed: {reason or 'no reason given'}"
            ) from None
        raise GoldsmithError(
            f"AMI {ami_id} in {region} is still {state!r} after {wait.timeout_s}s; "
            "raise the ami_wait_seconds setting for slow snapshot copies"
        ) from None
    return describe_image(aws, region, ami_id)


# --- Changing AMIs ----------------------------------------------------------------


def tag_image(aws: Aws, region: str, image: Mapping[str, Any], tags: Mapping[str, str]) -> None:
    """Tag an image and every snapshot behind it (EC2 does neither for copies)."""
    resources = [image["ImageId"], *snapshots_of(image)]
    aws.ec2(region).create_tags(Resources=resources, Tags=tag_list(tags))


def share(aws: Aws, region: str, image: Mapping[str, Any], accounts: list[str]) -> None:
    """Let `accounts` launch the image and create volumes from its snapshots.

    Without createVolumePermission on the snapshots the other account can launch, but
    cannot copy the AMI or restore a volume from it.
    """
    if not accounts:
        return
    client = aws.ec2(region)
    users = [{"UserId": a} for a in accounts]
    client.modify_image_attribute(
        ImageId=image["ImageId"],
        Attribute="launchPermission",
        LaunchPermission={"Add": users},
    )
    for snapshot in snapshots_of(image):
        client.modify_snapshot_attribute(
            SnapshotId=snapshot,
            Attribute="createVolumePermission",
            OperationType="add",
            UserIds=list(accounts),
        )


def launch_permissions(aws: Aws, region: str, ami_id: str) -> list[str]:
    """Account ids allowed to launch `ami_id`."""
    attr = aws.ec2(region).describe_image_attribute(ImageId=ami_id, Attribute="launchPermission")
    return sorted(p["UserId"] for p in attr.get("LaunchPermissions", []) if "UserId" in p)


def copy_tags(tags: Mapping[str, str], source_region: str, source_ami: str) -> dict[str, str]:
    """A copy's tags: the provenance, and where it was copied from (so a rerun reuses it)."""
    return {**tags, TAG_SOURCE_AMI: source_ami, TAG_SOURCE_REGION: source_region}


def start_copy(
    aws: Aws,
    source_region: str,
    image: Mapping[str, Any],
    region: str,
    *,
    tags: Mapping[str, str],
    encrypted: bool,
    kms_key_id: str = "",
) -> str:
    """Start copying `image` to `region` (or find the copy a previous publish made).

    The copy and its snapshot carry `tags` from the moment they exist (CopyImage's
    TagSpecifications), so a publish that dies while copying leaves nothing the reaper
    (tag goldsmith:build-id) or the next publish (tag goldsmith:source-ami) cannot find.
    """
    existing = find_copy(aws, region, image["ImageId"])
    if existing:
        log("publish", f"{region}: reusing copy {existing['ImageId']} of {image['ImageId']}")
        return str(existing["ImageId"])
    marked = tag_list(copy_tags(tags, source_region, image["ImageId"]))
    kwargs: dict[str, Any] = {
        "SourceImageId": image["ImageId"],
        "SourceRegion": source_region,
        "Name": image.get("Name") or image["ImageId"],
        "Description": image.get("Description") or f"copy of {source_region}:{image['ImageId']}",
        "Encrypted": encrypted,
        "TagSpecifications": [
            {"ResourceType": "image", "Tags": marked},
            {"ResourceType": "snapshot", "Tags": marked},
        ],
    }
    if encrypted and kms_key_id:
        kwargs["KmsKeyId"] = kms_key_id
    ami_id = str(aws.ec2(region).copy_image(**kwargs)["ImageId"])
    key = f" with KMS key {kms_key_id}" if encrypted and kms_key_id else ""
    log("publish", f"{region}: copying {image['ImageId']} from {source_region} as {ami_id}{key}")
    return ami_id


def check_keys(regions: Iterable[str], kms_key_ids: Mapping[str, str], source_region: str) -> None:
    """Every region a copy goes to needs its own key once any key is given.

    KMS keys are regional: a region left out would silently get the account's default
    EBS key, which accounts the AMI is shared with cannot use.
    """
    if not kms_key_ids:
        return
    missing = [r for r in dict.fromkeys(regions) if r != source_region and not kms_key_ids.get(r)]
    if missing:
        given = ", ".join(sorted(kms_key_ids))
        raise GoldsmithError(
            f"no KMS key for region(s) {', '.join(missing)} (keys are given for {given}): "
            "every region an AMI is copied to needs its own key (images.yml aws.kms_key_id)"
        )


def copy_to_regions(
    aws: Aws,
    built: Built,
    regions: Iterable[str],
    tags: Mapping[str, str],
    *,
    encrypted: bool = True,
    kms_key_ids: Mapping[str, str] | None = None,
    wait: Wait | None = None,
) -> dict[str, dict[str, Any]]:
    """Copy the built AMI to every region in `regions`; return {region: image} for all of them.

    Copies start in all regions first and are waited for after, so they run in parallel.
    Every copy is tagged with `tags` as it is created; every image (the source too) and its
    snapshots end up tagged with them. `kms_key_ids` maps region to KMS key for encrypted
    copies (KMS keys are regional): when given, every copy's region must have one; when
    empty, copies get each region's default EBS key.
    """
    wait = wait or Wait()
    kms_key_ids = kms_key_ids or {}
    regions = list(dict.fromkeys(regions))
    if encrypted:
        check_keys([r for r in regions if r not in built.amis], kms_key_ids, built.source_region)
    source = wait_available(aws, built.source_region, built.source_ami, wait)
    pending: dict[str, str] = {}
    for region in regions:
        if region in built.amis:
            pending[region] = built.amis[region]
        else:
            pending[region] = start_copy(
                aws,
                built.source_region,
                source,
                region,
                tags=tags,
                encrypted=encrypted,
                kms_key_id=kms_key_ids.get(region, ""),
            )
    images = {built.source_region: source}
    for region, ami_id in pending.items():
        if region not in images:
            images[region] = wait_available(aws, region, ami_id, wait)
    for region, image in images.items():
        copied = region != built.source_region
        tag_image(
            aws,
            region,
            image,
            copy_tags(tags, built.source_region, built.source_ami) if copied else tags,
        )
    return images


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}
