"""goldsmith.aws.imds: IMDSv2 is required on this build's builder, and only on it (moto)."""

from __future__ import annotations

import time

import pytest
from botocore.stub import Stubber

from goldsmith.aws import amis, imds
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

WEST = "eu-west-1"
BUILD = "web-20261123T120000Z-4242"


def launch(aws: Aws, build_id: str) -> str:
    """An instance as Packer launches it: tagged with the build id, IMDSv1 allowed."""
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return str(
        ec2.run_instances(
            ImageId=source,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": amis.TAG_BUILD_ID, "Value": build_id}],
                }
            ],
        )["Instances"][0]["InstanceId"]
    )


def tokens(aws: Aws, instance_id: str) -> str:
    res = aws.ec2(WEST).describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(res[0]["Instances"][0]["MetadataOptions"]["HttpTokens"])


def test_requires_imdsv2_on_this_builds_instance_only(aws: Aws) -> None:
    ours, other = launch(aws, BUILD), launch(aws, "base-20261123T120000Z-1")
    assert tokens(aws, ours) == "optional"
    guard = imds.Imdsv2Guard(aws, WEST, BUILD)
    assert guard.poll_once() == [ours]
    assert tokens(aws, ours) == "required"
    assert tokens(aws, other) == "optional"
    assert guard.poll_once() == []  # already required: no second call
    guard.check()
    assert list(guard.as_dict()["instances"]) == [ours]


def test_guard_thread_finds_an_instance_launched_after_it_started(aws: Aws) -> None:
    with imds.Imdsv2Guard(aws, WEST, BUILD, interval_s=0.05) as guard:
        ours = launch(aws, BUILD)
        deadline = time.monotonic() + 10
        while ours not in guard.enforced and time.monotonic() < deadline:
            time.sleep(0.05)
    assert tokens(aws, ours) == "required"
    guard.check()


def test_a_build_whose_builder_was_never_seen_fails(aws: Aws) -> None:
    guard = imds.Imdsv2Guard(aws, WEST, BUILD)
    assert guard.poll_once() == []
    with pytest.raises(GoldsmithError, match=f"goldsmith:build-id={BUILD}"):
        guard.check()


def test_a_denied_modify_fails_the_build_naming_the_permission(aws: Aws) -> None:
    launch(aws, BUILD)
    guard = imds.Imdsv2Guard(aws, WEST, BUILD, interval_s=0.05)
    client = aws.ec2(WEST)
    real = client.raw.describe_instances(
        Filters=[{"Name": f"tag:{amis.TAG_BUILD_ID}", "Values": [BUILD]}]
    )
    with Stubber(client.raw) as stub:
        stub.add_response("describe_instances", real)
        stub.add_client_error(
            "modify_instance_metadata_options", service_error_code="UnauthorizedOperation"
        )
        with guard:
            deadline = time.monotonic() + 10
            while guard.error is None and time.monotonic() < deadline:
                time.sleep(0.05)
    with pytest.raises(GoldsmithError, match="ec2:ModifyInstanceMetadataOptions"):
        guard.check()
