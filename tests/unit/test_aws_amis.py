"""goldsmith.aws.amis: Packer's manifest, copies, tags, sharing, waiting, pagination (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.stub import Stubber

from goldsmith.aws import amis
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

WEST, CENTRAL, NORTH = "eu-west-1", "eu-central-1", "eu-north-1"
PROV = amis.Provenance("web", "0123abcd" * 5, "f" * 64, "build-42", ("base", "nginx"))


def bake(aws: Aws, region: str = WEST, build_id: str = PROV.build_id) -> str:
    """What Packer leaves after a successful build: a tagged AMI built from an instance."""
    ec2 = aws.ec2(region)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]
    ami = ec2.create_image(InstanceId=inst["InstanceId"], Name=f"goldsmith-web-{build_id}")
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    image = amis.describe_image(aws, region, ami["ImageId"])
    amis.tag_image(aws, region, image, {**PROV.tags(), amis.TAG_BUILD_ID: build_id})
    return str(ami["ImageId"])


def manifest(tmp_path: Path, builds: list[dict], last: str) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"builds": builds, "last_run_uuid": last}))
    return path


def entry(artifact: str, run: str, name: str = "aws", builder: str = "amazon-ebs") -> dict:
    return {
        "name": name,
        "builder_type": builder,
        "build_time": 1,
        "files": None,
        "artifact_id": artifact,
        "packer_run_uuid": run,
        "custom_data": None,
    }


# --- manifest -------------------------------------------------------------------


def test_manifest_gives_the_last_runs_amis_in_order(tmp_path: Path) -> None:
    path = manifest(
        tmp_path,
        [
            entry("eu-west-1:ami-0old", "run-1"),
            entry("/tmp/out/disk.qcow2", "run-2", name="local", builder="qemu"),
            entry("eu-west-1:ami-0new,eu-north-1:ami-0north", "run-2"),
        ],
        "run-2",
    )
    built = amis.read_manifest(path)
    assert built.amis == {WEST: "ami-0new", NORTH: "ami-0north"}
    assert (built.source_region, built.source_ami, built.run_uuid) == (WEST, "ami-0new", "run-2")


def test_manifest_without_an_amazon_build_in_the_last_run(tmp_path: Path) -> None:
    path = manifest(tmp_path, [entry("eu-west-1:ami-0old", "run-1")], "run-2")
    with pytest.raises(GoldsmithError, match=r"manifest.json: no amazon-ebs build in the last run"):
        amis.read_manifest(path)


def test_manifest_picks_a_named_build_and_refuses_to_guess(tmp_path: Path) -> None:
    path = manifest(
        tmp_path, [entry("eu-west-1:ami-0a", "r", "a"), entry("eu-west-1:ami-0b", "r", "b")], "r"
    )
    assert amis.read_manifest(path, "b").source_ami == "ami-0b"
    with pytest.raises(GoldsmithError, match="several amazon-ebs builds"):
        amis.read_manifest(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "Packer's manifest is missing"),
        ("{not json", "not valid JSON"),
        ('{"last_run_uuid": "r"}', "key 'builds' is missing"),
        ('{"builds": []}', "key 'last_run_uuid' is missing"),
        (
            json.dumps({"builds": [entry("ami-0nocolon", "r")], "last_run_uuid": "r"}),
            r"builds\[0\].artifact_id: 'ami-0nocolon' is not an amazon-ebs artifact id",
        ),
        (
            json.dumps({"builds": [entry("eu-west-1:snap-1", "r")], "last_run_uuid": "r"}),
            "is not an amazon-ebs artifact id",
        ),
    ],
)
def test_bad_manifests_are_clear_errors(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(GoldsmithError, match=message) as err:
        amis.read_manifest(path)
    assert str(path) in str(err.value)


# --- tags ---------------------------------------------------------------------------


def test_provenance_tags() -> None:
    tags = PROV.tags()
    assert tags[amis.TAG_IMAGE] == "web"
    assert tags[amis.TAG_BUILD_ID] == "build-42"
    assert tags[amis.TAG_ROLES] == "base,nginx"
    assert tags[amis.TAG_GIT_SHA] == PROV.git_sha


def test_a_long_role_list_fits_in_a_tag() -> None:
    roles = [f"role_number_{i:03d}" for i in range(40)]
    value = amis.roles_tag(roles)
    assert len(value) <= amis.TAG_VALUE_MAX
    kept = value.split(",")[:-1]
    assert kept == roles[: len(kept)]
    assert value.endswith(f"+{len(roles) - len(kept)} more")


# --- copy, tag, share -----------------------------------------------------------------


def test_copy_to_regions_tags_copies_and_their_snapshots(aws: Aws) -> None:
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    images = amis.copy_to_regions(
        aws, built, [WEST, CENTRAL, NORTH], PROV.tags(), wait=amis.Wait(60, 1)
    )
    assert set(images) == {WEST, CENTRAL, NORTH}
    assert images[WEST]["ImageId"] == ami
    for region in (CENTRAL, NORTH):
        image = amis.describe_image(aws, region, images[region]["ImageId"])
        tags = amis.tags_of(image)
        assert tags[amis.TAG_BUILD_ID] == "build-42"
        assert tags[amis.TAG_SOURCE_AMI] == ami and tags[amis.TAG_SOURCE_REGION] == WEST
        snaps = amis.snapshots_of(image)
        assert snaps
        described = aws.ec2(region).describe_snapshots(SnapshotIds=snaps)["Snapshots"]
        for snap in described:
            assert amis.tags_of(snap)[amis.TAG_FINGERPRINT] == PROV.fingerprint


def test_copy_again_reuses_the_earlier_copy(aws: Aws) -> None:
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    first = amis.copy_to_regions(aws, built, [CENTRAL], PROV.tags(), wait=amis.Wait(60, 1))
    second = amis.copy_to_regions(aws, built, [CENTRAL], PROV.tags(), wait=amis.Wait(60, 1))
    assert first[CENTRAL]["ImageId"] == second[CENTRAL]["ImageId"]
    mine = list(amis.describe_images(aws, CENTRAL, owners=["self"]))
    assert len(mine) == 1


def test_share_grants_launch_and_create_volume(aws: Aws) -> None:
    ami = bake(aws)
    image = amis.describe_image(aws, WEST, ami)
    amis.share(aws, WEST, image, ["111122223333", "444455556666"])
    assert amis.launch_permissions(aws, WEST, ami) == ["111122223333", "444455556666"]
    for snap in amis.snapshots_of(image):
        attr = aws.ec2(WEST).describe_snapshot_attribute(
            SnapshotId=snap, Attribute="createVolumePermission"
        )
        users = sorted(p["UserId"] for p in attr["CreateVolumePermissions"])
        assert users == ["111122223333", "444455556666"]


def test_share_with_nobody_changes_nothing(aws: Aws) -> None:
    ami = bake(aws)
    amis.share(aws, WEST, amis.describe_image(aws, WEST, ami), [])
    assert amis.launch_permissions(aws, WEST, ami) == []


def test_missing_ami_is_a_clear_error(aws: Aws) -> None:
    with pytest.raises(
        GoldsmithError, match="AMI ami-0123456789abcdef0 does not exist in eu-west-1"
    ):
        amis.describe_image(aws, WEST, "ami-0123456789abcdef0")


def test_find_source_ami_picks_the_newest(aws: Aws) -> None:
    images = list(amis.describe_images(aws, WEST, owners=["amazon"], filters={"name": ["*"]}))
    newest = max(images, key=lambda i: i.get("CreationDate", ""))
    assert amis.find_source_ami(aws, WEST, ["amazon"], "*")["ImageId"] == newest["ImageId"]
    with pytest.raises(GoldsmithError, match="no AMI named 'nope-\\*' owned by amazon"):
        amis.find_source_ami(aws, WEST, ["amazon"], "nope-*")


# --- pagination and waiting (moto answers in one page and at once: stub those) ------


def test_describe_images_follows_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(amis, "PAGE_SIZE", 2)
    aws = Aws(endpoint_url=None)
    ec2 = aws.ec2(WEST)
    ids = [f"ami-{i:017x}" for i in range(5)]
    with Stubber(ec2.raw) as stub:
        for n, page in enumerate([ids[0:2], ids[2:4], ids[4:]]):
            expected = {"Owners": ["self"], "MaxResults": 2}
            if n:
                expected["NextToken"] = f"t{n}"
            response = {"Images": [{"ImageId": i} for i in page]}
            if n < 2:
                response["NextToken"] = f"t{n + 1}"
            stub.add_response("describe_images", response, expected)
        seen = [i["ImageId"] for i in amis.describe_images(aws, WEST, owners=["self"])]
        stub.assert_no_pending_responses()
    assert seen == ids


def test_waiting_too_long_says_how_to_wait_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws = Aws(endpoint_url=None)
    with Stubber(aws.ec2(CENTRAL).raw) as stub:
        for _ in range(2):
            stub.add_response(
                "describe_images", {"Images": [{"ImageId": "ami-0abc", "State": "pending"}]}
            )
        with pytest.raises(GoldsmithError) as err:
            amis.wait_available(aws, CENTRAL, "ami-0abc", amis.Wait(timeout_s=2, delay_s=1))
    assert "still 'pending' after 2s" in str(err.value)
    assert "ami_wait_seconds" in str(err.value)


def test_failed_ami_reports_aws_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws = Aws(endpoint_url=None)
    image = {"ImageId": "ami-0abc", "State": "failed", "StateReason": {"Message": "snapshot lost"}}
    with Stubber(aws.ec2(CENTRAL).raw) as stub:
        stub.add_response("describe_images", {"Images": [image]})
        with pytest.raises(
            GoldsmithError, match="AMI ami-0abc in eu-central-1 failed: snapshot lost"
        ):
            amis.wait_available(aws, CENTRAL, "ami-0abc", amis.Wait(timeout_s=5, delay_s=1))


# --- encryption and tags at creation (moto answers as the twin's: see twin_moto) -------


@pytest.fixture
def keys(aws: Aws) -> dict[str, tuple[str, str]]:
    """Each copy region's key as images.yml may name it, and the ARN AWS records on the
    copy's snapshots: a multi-region key's ARN in CENTRAL, an alias in NORTH."""
    central = aws.client("kms", CENTRAL).create_key(MultiRegion=True)["KeyMetadata"]
    north_kms = aws.client("kms", NORTH)
    north = north_kms.create_key()["KeyMetadata"]
    north_kms.create_alias(AliasName="alias/goldsmith-ami", TargetKeyId=north["KeyId"])
    return {
        CENTRAL: (central["Arn"], central["Arn"]),
        NORTH: ("alias/goldsmith-ami", north["Arn"]),
    }


def named(keys: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {region: name for region, (name, _) in keys.items()}


def encryption_of(aws: Aws, region: str, ami_id: str) -> list[tuple[bool, str]]:
    """(Encrypted, KmsKeyId) of every snapshot behind `ami_id`, and the mappings agree."""
    image = amis.describe_image(aws, region, ami_id)
    mapped = [m["Ebs"]["Encrypted"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
    snaps = aws.ec2(region).describe_snapshots(SnapshotIds=amis.snapshots_of(image))["Snapshots"]
    found = [(bool(s["Encrypted"]), str(s.get("KmsKeyId", ""))) for s in snaps]
    assert mapped == [e for e, _ in found]
    return found


def test_every_copy_is_encrypted_with_its_regions_key(aws: Aws, keys) -> None:
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    images = amis.copy_to_regions(
        aws,
        built,
        [WEST, CENTRAL, NORTH],
        PROV.tags(),
        kms_key_ids=named(keys),
        wait=amis.Wait(60, 1),
    )
    for region in (CENTRAL, NORTH):
        found = encryption_of(aws, region, images[region]["ImageId"])
        assert found and found == [(True, keys[region][1])] * len(found), region


def test_the_source_amis_snapshot_is_its_builders_volume_encrypted_with_the_key_arn(
    aws: Aws,
) -> None:
    """Packer launches the builder with an encrypted root volume, its key named by alias;
    CreateImage's snapshot is that volume's: encrypted, the key recorded by ARN."""
    kms = aws.client("kms", WEST)
    key = kms.create_key()["KeyMetadata"]
    kms.create_alias(AliasName="alias/goldsmith-ami", TargetKeyId=key["KeyId"])
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]
    ebs = {"VolumeSize": 8, "Encrypted": True, "KmsKeyId": "alias/goldsmith-ami"}
    inst = ec2.run_instances(
        ImageId=source["ImageId"],
        MinCount=1,
        MaxCount=1,
        BlockDeviceMappings=[{"DeviceName": source["RootDeviceName"], "Ebs": ebs}],
    )["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=inst, Name="goldsmith-web-1")["ImageId"]
    assert encryption_of(aws, WEST, ami) == [(True, key["Arn"])]


def test_a_key_that_is_not_in_the_copys_region_is_refused(aws: Aws, keys) -> None:
    """KMS keys are regional: the alias made in NORTH names nothing in CENTRAL."""
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    with pytest.raises(GoldsmithError, match="alias/goldsmith-ami does not exist in eu-central-1"):
        amis.copy_to_regions(
            aws,
            built,
            [CENTRAL],
            PROV.tags(),
            kms_key_ids={CENTRAL: "alias/goldsmith-ami"},
            wait=amis.Wait(60, 1),
        )


def test_copy_image_asks_for_encryption_and_the_key(
    aws: Aws, keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What goes to AWS, whatever moto makes of it: Encrypted and the region's key."""
    ami = bake(aws)
    calls: dict[str, dict] = {}
    for region in (CENTRAL, NORTH):
        client = aws.ec2(region)
        real = client.raw.copy_image

        def spy(real=real, region=region, **kwargs):  # type: ignore[no-untyped-def]
            calls[region] = kwargs
            return real(**kwargs)

        monkeypatch.setattr(client.raw, "copy_image", spy)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    amis.copy_to_regions(
        aws, built, [CENTRAL, NORTH], PROV.tags(), kms_key_ids=named(keys), wait=amis.Wait(60, 1)
    )
    for region in (CENTRAL, NORTH):
        assert calls[region]["Encrypted"] is True
        assert calls[region]["KmsKeyId"] == keys[region][0]


def test_without_keys_copies_get_the_regions_default_key(aws: Aws) -> None:
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    images = amis.copy_to_regions(aws, built, [CENTRAL], PROV.tags(), wait=amis.Wait(60, 1))
    found = encryption_of(aws, CENTRAL, images[CENTRAL]["ImageId"])
    assert found and all(encrypted and key for encrypted, key in found)
    assert all(key.startswith("arn:aws:kms:eu-central-1:") for _, key in found)


def test_a_region_without_a_key_fails_before_any_copy(aws: Aws) -> None:
    ami = bake(aws)
    built = amis.Built(amis={WEST: ami}, run_uuid="r", build_name="aws")
    with pytest.raises(GoldsmithError, match=r"no KMS key for region\(s\) eu-central-1"):
        amis.copy_to_regions(
            aws, built, [CENTRAL, NORTH], PROV.tags(), kms_key_ids={NORTH: "alias/x"}
        )
    for region in (CENTRAL, NORTH):
        assert list(amis.describe_images(aws, region, owners=["self"])) == []


def test_a_copy_is_tagged_the_moment_it_exists(aws: Aws, keys) -> None:
    """Before any wait: a publish killed here leaves a copy the reaper and a rerun find."""
    ami = bake(aws)
    source = amis.describe_image(aws, WEST, ami)
    copy = amis.start_copy(
        aws, WEST, source, CENTRAL, tags=PROV.tags(), encrypted=True, kms_key_id=keys[CENTRAL][0]
    )
    image = amis.describe_image(aws, CENTRAL, copy)
    tags = amis.tags_of(image)
    for key in (amis.TAG_BUILD_ID, amis.TAG_FINGERPRINT, amis.TAG_GIT_SHA):
        assert tags[key] == PROV.tags()[key]
    assert tags[amis.TAG_SOURCE_AMI] == ami
    snaps = aws.ec2(CENTRAL).describe_snapshots(SnapshotIds=amis.snapshots_of(image))
    for snap in snaps["Snapshots"]:
        assert amis.tags_of(snap)[amis.TAG_BUILD_ID] == PROV.build_id
    assert amis.find_copy(aws, CENTRAL, ami)["ImageId"] == copy  # type: ignore[index]


def test_build_time_is_read_from_the_build_id() -> None:
    moment = amis.build_time("web-api-20261204T173909Z-4242")
    assert moment is not None and moment.isoformat() == "2026-12-04T17:39:09+00:00"
    assert amis.build_time("build-42") is None
    assert amis.build_time("web-20261399T000000Z-1") is None  # no 99th of the 13th month
