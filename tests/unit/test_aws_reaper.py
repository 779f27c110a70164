"""goldsmith.aws.reaper: what a cancelled or failed build leaked goes, nothing else (moto)."""

from __future__ import annotations

from typing import Any

import pytest

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


def test_sweep_takes_unused_packer_leftovers_but_not_live_ones(aws: Aws) -> None:
    live = packer_leftovers(aws, WEST, "running-build", "live")
    ec2 = aws.ec2(WEST)
    ec2.create_key_pair(KeyName="packer_orphan")
    orphan = ec2.create_security_group(GroupName="packer_orphan", Description="Temporary group")
    mine = ec2.create_security_group(GroupName="web-servers", Description="not Packer's")
    reaper.reap(aws, [WEST], None, sweep=True)
    assert "packer_orphan" not in key_names(aws, WEST)
    assert orphan["GroupId"] not in group_ids(aws, WEST)
    assert {live["group"], mine["GroupId"]} <= group_ids(aws, WEST)
    assert "packer_live" in key_names(aws, WEST)


def test_reaper_needs_a_build_id() -> None:
    with pytest.raises(GoldsmithError, match="needs a build id"):
        reaper.reap(Aws(endpoint_url="http://127.0.0.1:9"), [WEST], None)


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
