"""goldsmith.aws.reaper: what a cancelled or failed build leaked goes, nothing else (moto)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

from goldsmith.aws import amis, keys, reaper
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

WEST, CENTRAL = "eu-west-1", "eu-central-1"
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHnEOSSmDx1kWUGlhStgeq2AzfM9FhMCSS+Fo0sKtQdd goldsmith"
)


def packer_leftovers(aws: Aws, region: str, build_id: str, suffix: str) -> dict[str, Any]:
    """What a Packer build killed mid-way leaves: instance, temporary key pair and group."""
    ec2 = aws.ec2(region)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    key = f"packer_{suffix}"
    ec2.create_key_pair(KeyName=key)
    group = ec2.create_security_group(GroupName=f"packer_{suffix}", Description="Temporary group")
    inst = ec2.run_instances(
        ImageId=source,
        MinCount=1,
        MaxCount=1,
        KeyName=key,
        SecurityGroupIds=[group["GroupId"]],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": amis.TAG_BUILD_ID, "Value": build_id}]}
        ],
    )["Instances"][0]
    return {"instance": inst["InstanceId"], "key": key, "group": group["GroupId"]}


def build_id_at(started: datetime) -> str:
    """A build id as the pipeline makes them: image, UTC start time, pid."""
    return f"web-{started:%Y%m%dT%H%M%SZ}-4242"


def set_image_state(region: str, ami_id: str, value: str) -> None:
    """Hold an AMI in `value` (moto makes images available at once; EC2 takes minutes)."""
    ec2_backends[DEFAULT_ACCOUNT_ID][region].amis[ami_id].state = value


def snapshot_ids(aws: Aws, region: str) -> set[str]:
    snaps = aws.ec2(region).describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return {s["SnapshotId"] for s in snaps}


def image_ids(aws: Aws, region: str) -> set[str]:
    return {i["ImageId"] for i in amis.describe_images(aws, region, owners=["self"])}


def state(aws: Aws, region: str, instance_id: str) -> str:
    res = aws.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(res[0]["Instances"][0]["State"]["Name"])


def key_names(aws: Aws, region: str) -> set[str]:
    return {k["KeyName"] for k in aws.ec2(region).describe_key_pairs()["KeyPairs"]}


def group_ids(aws: Aws, region: str) -> set[str]:
    return {g["GroupId"] for g in aws.ec2(region).describe_security_groups()["SecurityGroups"]}


def test_reaps_the_builds_instance_key_and_group_only(aws: Aws) -> None:
    mine = packer_leftovers(aws, WEST, "build-1", "aaa")
    other = packer_leftovers(aws, WEST, "build-2", "bbb")
    keys.import_build_key(aws, WEST, "build-1", PUBLIC_KEY)
    keys.import_build_key(aws, WEST, "build-2", PUBLIC_KEY)

    done = reaper.reap(aws, [WEST], "build-1")

    assert state(aws, WEST, mine["instance"]) == "terminated"
    assert state(aws, WEST, other["instance"]) == "running"
    assert "packer_aaa" not in key_names(aws, WEST)
    assert keys.key_pair_name("build-1") not in key_names(aws, WEST)
    assert {"packer_bbb", keys.key_pair_name("build-2")} <= key_names(aws, WEST)
    assert mine["group"] not in group_ids(aws, WEST)
    assert other["group"] in group_ids(aws, WEST)
    assert done.instances == [f"{WEST}:{mine['instance']}"]
    assert sorted(done.key_pairs) == sorted([f"{WEST}:packer_aaa", f"{WEST}:goldsmith-build-1"])


def test_dry_run_deletes_nothing_but_says_what_it_would(aws: Aws) -> None:
    mine = packer_leftovers(aws, WEST, "build-1", "aaa")
    done = reaper.reap(aws, [WEST], "build-1", dry_run=True)
    assert state(aws, WEST, mine["instance"]) == "running"
    assert "packer_aaa" in key_names(aws, WEST) and mine["group"] in group_ids(aws, WEST)
    assert done.instances and done.key_pairs and done.security_groups


def test_reaper_sees_every_page_of_instances(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amis, "PAGE_SIZE", 5)  # EC2's smallest page
    ec2 = aws.ec2(CENTRAL)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": amis.TAG_BUILD_ID, "Value": "b"}]}]
    ids = [
        ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, TagSpecifications=tags)[
            "Instances"
        ][0]["InstanceId"]
        for _ in range(12)
    ]
    seen = [
        i["InstanceId"] for i in reaper.instances(aws, CENTRAL, {"tag:goldsmith:build-id": ["b"]})
    ]
    assert sorted(seen) == sorted(ids)
    reaper.reap(aws, [CENTRAL], "b")
    assert {state(aws, CENTRAL, i) for i in ids} == {"terminated"}


def test_failed_builds_amis_and_snapshots_go_in_every_region(aws: Aws) -> None:
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    failed = ec2.create_image(InstanceId=inst, Name="failed")["ImageId"]
    kept = ec2.create_image(InstanceId=inst, Name="kept")["ImageId"]
    for ami, build in ((failed, "bad"), (kept, "good")):
        amis.tag_image(aws, WEST, amis.describe_image(aws, WEST, ami), {amis.TAG_BUILD_ID: build})
    copy = aws.ec2(CENTRAL).copy_image(SourceImageId=failed, SourceRegion=WEST, Name="copy")[
        "ImageId"
    ]
    amis.tag_image(
        aws, CENTRAL, amis.describe_image(aws, CENTRAL, copy), {amis.TAG_BUILD_ID: "bad"}
    )
    failed_snaps = amis.snapshots_of(amis.describe_image(aws, WEST, failed))

    done = reaper.reap(aws, [WEST, CENTRAL], "bad", images=True)

    assert sorted(done.images) == sorted([f"{WEST}:{failed}", f"{CENTRAL}:{copy}"])
    assert [i["ImageId"] for i in amis.describe_images(aws, WEST, owners=["self"])] == [kept]
    assert list(amis.describe_images(aws, CENTRAL, owners=["self"])) == []
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not set(failed_snaps) & left
    assert set(amis.snapshots_of(amis.describe_image(aws, WEST, kept))) <= left


def test_reaper_needs_a_build_id() -> None:
    with pytest.raises(GoldsmithError, match="needs a build id"):
        reaper.reap(Aws(endpoint_url="http://127.0.0.1:9"), [WEST], None)
    with pytest.raises(GoldsmithError, match="AMIs of one failed build only"):
        reaper.reap(Aws(endpoint_url="http://127.0.0.1:9"), [WEST], None, images=True, sweep=True)


def test_build_key_is_imported_tagged_and_replaced(aws: Aws) -> None:
    name = keys.import_build_key(aws, WEST, "b7", PUBLIC_KEY)
    assert name == "goldsmith-b7"
    again = keys.import_build_key(aws, WEST, "b7", PUBLIC_KEY)  # a retry of the same build
    assert again == name
    pair = aws.ec2(WEST).describe_key_pairs(KeyNames=[name])["KeyPairs"][0]
    assert amis.tags_of(pair)[amis.TAG_BUILD_ID] == "b7"
    assert keys.delete_build_key(aws, WEST, "b7") is True
    assert keys.delete_build_key(aws, WEST, "b7") is False


def test_a_copy_cut_short_is_found_by_its_build_tag(aws: Aws) -> None:
    """A publish that dies right after CopyImage: the copy carries the build id already."""
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]
    ami = ec2.create_image(InstanceId=inst["InstanceId"], Name="goldsmith-web")["ImageId"]
    prov = amis.Provenance("web", "sha", "f" * 64, "build-9")
    copy = amis.start_copy(
        aws, WEST, amis.describe_image(aws, WEST, ami), CENTRAL, tags=prov.tags(), encrypted=True
    )
    snaps = amis.snapshots_of(amis.describe_image(aws, CENTRAL, copy))
    done = reaper.reap(aws, [CENTRAL], "build-9", images=True)
    assert done.images == [f"{CENTRAL}:{copy}"]
    assert done.snapshots == [f"{CENTRAL}:{s}" for s in sorted(snaps)]
    assert list(amis.describe_images(aws, CENTRAL, owners=["self"])) == []


@pytest.mark.parametrize("reaper_runs_as", ["root", "the repository's policy"])
def test_a_killed_builds_leftovers_in_two_regions_are_found_by_its_id(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict[str, Any]],
    reaper_runs_as: str,
) -> None:
    """Killed while CreateImage ran and a copy was under way: the untagged pending AMI and
    its snapshot are traced to the tagged instance; the copy carries the tag already. The
    CI role (aws/policy.json, enforced) may do all of it."""
    build = "web-20261204T100000Z-1"
    seeded = snapshot_ids(aws, WEST) | snapshot_ids(aws, CENTRAL)  # moto's own AMIs'
    mine = packer_leftovers(aws, WEST, build, "aaa")
    other = packer_leftovers(aws, WEST, "web-20261204T100500Z-2", "bbb")
    keys.import_build_key(aws, WEST, build, PUBLIC_KEY)
    ec2 = aws.ec2(WEST)
    # CreateImage interrupted: Packer tags the AMI only once it is available.
    pending = ec2.create_image(InstanceId=mine["instance"], Name="goldsmith-web-1")["ImageId"]
    set_image_state(WEST, pending, "pending")
    kept = ec2.create_image(InstanceId=other["instance"], Name="goldsmith-web-2")["ImageId"]
    # A snapshot of the builder's volume no AMI leads to.
    inst = ec2.describe_instances(InstanceIds=[mine["instance"]])["Reservations"][0]["Instances"]
    volume = inst[0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    stray = ec2.create_snapshot(VolumeId=volume)["SnapshotId"]
    prov = amis.Provenance("web", "sha", "f" * 64, build)
    copy = amis.start_copy(
        aws,
        WEST,
        amis.describe_image(aws, WEST, pending),
        CENTRAL,
        tags=prov.tags(),
        encrypted=True,
    )
    set_image_state(CENTRAL, copy, "pending")
    made = (snapshot_ids(aws, WEST) | snapshot_ids(aws, CENTRAL)) - seeded
    kept_snaps = set(amis.snapshots_of(amis.describe_image(aws, WEST, kept)))

    who = aws if reaper_runs_as == "root" else as_policy(repo_policy())
    done = reaper.reap(who, [WEST, CENTRAL], build, images=True)

    assert state(aws, WEST, mine["instance"]) == "terminated"
    assert state(aws, WEST, other["instance"]) == "running"
    assert sorted(done.images) == sorted([f"{WEST}:{pending}", f"{CENTRAL}:{copy}"])
    assert image_ids(aws, WEST) == {kept} and image_ids(aws, CENTRAL) == set()
    assert stray in {s.split(":")[1] for s in done.snapshots}
    assert (snapshot_ids(aws, WEST) | snapshot_ids(aws, CENTRAL)) - seeded == kept_snaps
    assert made - kept_snaps == {s.split(":")[1] for s in done.snapshots}
    assert {"packer_bbb"} <= key_names(aws, WEST)
    assert not {"packer_aaa", keys.key_pair_name(build)} & key_names(aws, WEST)
    assert mine["group"] not in group_ids(aws, WEST) and other["group"] in group_ids(aws, WEST)
    assert done.security_groups == [f"{WEST}:{mine['group']}"]


def test_a_builder_that_terminated_itself_still_leads_to_its_group_and_key(aws: Aws) -> None:
    """shutdown_behavior terminate: the instance is gone, EC2 still lists what it used."""
    mine = packer_leftovers(aws, WEST, "b-gone", "gone")
    aws.ec2(WEST).terminate_instances(InstanceIds=[mine["instance"]])
    done = reaper.reap(aws, [WEST], "b-gone")
    assert done.instances == []
    assert done.key_pairs == [f"{WEST}:packer_gone"]
    assert done.security_groups == [f"{WEST}:{mine['group']}"]


def test_sweep_takes_dead_builds_tagged_leftovers_and_nothing_untagged(aws: Aws) -> None:
    now = datetime.now(UTC)
    dead = packer_leftovers(aws, WEST, build_id_at(now - timedelta(days=2)), "dead")
    running = packer_leftovers(aws, WEST, build_id_at(now - timedelta(minutes=5)), "live")
    keys.import_build_key(aws, WEST, build_id_at(now - timedelta(days=2)), PUBLIC_KEY)
    ec2 = aws.ec2(WEST)
    # Packer leftovers of someone else's bake (no goldsmith tag): not goldsmith's to take.
    ec2.create_key_pair(KeyName="packer_orphan")
    orphan = ec2.create_security_group(GroupName="packer_orphan", Description="Temporary group")
    theirs = ec2.create_security_group(GroupName="web-servers", Description="not Packer's")

    done = reaper.reap(aws, [WEST], None, sweep=True)

    assert state(aws, WEST, dead["instance"]) == "terminated"
    assert state(aws, WEST, running["instance"]) == "running"
    assert dead["group"] not in group_ids(aws, WEST)
    assert not {"packer_dead", keys.key_pair_name(build_id_at(now - timedelta(days=2)))} & (
        key_names(aws, WEST)
    )
    assert {"packer_orphan", "packer_live"} <= key_names(aws, WEST)
    assert {orphan["GroupId"], theirs["GroupId"], running["group"]} <= group_ids(aws, WEST)
    assert done.instances == [f"{WEST}:{dead['instance']}"]
    assert done.images == [] and done.snapshots == []


def test_sweep_dry_run_lists_and_deletes_nothing(aws: Aws) -> None:
    dead = packer_leftovers(aws, WEST, "web-20200101T000000Z-7", "old")
    done = reaper.reap(aws, [WEST], None, sweep=True, dry_run=True)
    assert done.instances == [f"{WEST}:{dead['instance']}"]
    assert done.key_pairs == [f"{WEST}:packer_old"]
    assert state(aws, WEST, dead["instance"]) == "running"
    assert "packer_old" in key_names(aws, WEST) and dead["group"] in group_ids(aws, WEST)
