"""goldsmith.aws.ssm: the "latest AMI" parameter (moto)."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from goldsmith.aws import ssm
from goldsmith.aws.clients import Aws, AwsPermissionError
from goldsmith.errors import GoldsmithError

NAME = "/goldsmith/web/latest"


def some_amis(aws: Aws, region: str, n: int) -> list[str]:
    return [i["ImageId"] for i in aws.ec2(region).describe_images(Owners=["amazon"])["Images"][:n]]


def test_put_then_get_per_region(aws: Aws) -> None:
    west, central = some_amis(aws, "eu-west-1", 1)[0], some_amis(aws, "eu-central-1", 2)[1]
    assert ssm.get_ami(aws, "eu-west-1", NAME) is None
    assert ssm.put_ami(aws, "eu-west-1", NAME, west) == 1
    ssm.put_ami(aws, "eu-central-1", NAME, central)
    assert ssm.get_ami(aws, "eu-west-1", NAME) == west
    assert ssm.get_ami(aws, "eu-central-1", NAME) == central
    param = aws.ssm("eu-west-1").get_parameter(Name=NAME)["Parameter"]
    assert (param["Type"], param["DataType"]) == ("String", "aws:ec2:image")


def test_put_overwrites_and_counts_versions(aws: Aws) -> None:
    first, second = some_amis(aws, "eu-west-1", 2)
    ssm.put_ami(aws, "eu-west-1", NAME, first)
    assert ssm.put_ami(aws, "eu-west-1", NAME, second) == 2
    assert ssm.get_ami(aws, "eu-west-1", NAME) == second


def test_other_errors_are_not_swallowed(aws: Aws) -> None:
    # Only "not found" means "no pointer yet"; a denied read must not look like one.
    client = aws.ssm("eu-west-1")
    with Stubber(client.raw) as stub:
        stub.add_client_error("get_parameter", service_error_code="AccessDeniedException")
        with pytest.raises(AwsPermissionError, match="ssm:GetParameter in eu-west-1"):
            ssm.get_ami(aws, "eu-west-1", NAME)


@pytest.mark.parametrize(
    ("template", "expected"),
    [("/goldsmith/{image}/latest", "/goldsmith/web/latest"), ("/amis/{image}", "/amis/web")],
)
def test_parameter_name(template: str, expected: str) -> None:
    assert ssm.parameter_name(template, "web") == expected


@pytest.mark.parametrize(
    "template", ["goldsmith/{image}", "/goldsmith/{name}/latest", "/a//{image}"]
)
def test_bad_parameter_template_names_the_key(template: str) -> None:
    with pytest.raises(GoldsmithError, match=r"images.web.aws.ssm_parameter"):
        ssm.parameter_name(template, "web")
