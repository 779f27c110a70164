"""goldsmith.aws.clients: endpoint override, regions, and errors a person can act on."""

from __future__ import annotations

import socket

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from goldsmith.aws.clients import Aws, AwsError, AwsPermissionError
from goldsmith.errors import GoldsmithError


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")


def test_endpoint_comes_from_env_and_clients_are_per_region(
    fake_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    aws = Aws()
    assert aws.endpoint_url == "http://127.0.0.1:9"
    west, central = aws.ec2("eu-west-1"), aws.ec2("eu-central-1")
    assert west.raw.meta.endpoint_url == "http://127.0.0.1:9"
    assert (west.region, central.region) == ("eu-west-1", "eu-central-1")
    assert west.raw.meta.region_name == "eu-west-1"
    assert aws.ec2("eu-west-1") is west


def test_real_aws_endpoint_without_override(fake_env: None) -> None:
    aws = Aws()
    assert aws.endpoint_url is None
    assert aws.ssm("eu-central-1").raw.meta.endpoint_url == "https://ssm.eu-central-1.amazonaws.com"


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "AccessDenied", "AccessDeniedException"])
def test_denied_call_names_action_region_and_permission(fake_env: None, code: str) -> None:
    aws = Aws()
    ec2 = aws.ec2("eu-central-1")
    with Stubber(ec2.raw) as stub:
        stub.add_client_error(
            "copy_image",
            service_error_code=code,
            service_message="You are not authorized to perform this operation.",
        )
        with pytest.raises(AwsPermissionError) as err:
            ec2.copy_image(SourceImageId="ami-12345678", SourceRegion="eu-west-1", Name="web")
    msg = str(err.value)
    assert "ec2:CopyImage" in msg
    assert "eu-central-1" in msg
    assert "needs the IAM permission 'ec2:CopyImage'" in msg
    assert err.value.code == code and err.value.action == "ec2:CopyImage"


def test_denied_page_of_a_paginator_is_translated(fake_env: None) -> None:
    aws = Aws()
    ssm = aws.ssm("eu-west-1")
    with Stubber(ssm.raw) as stub:
        stub.add_client_error("get_parameters_by_path", service_error_code="AccessDeniedException")
        with pytest.raises(AwsPermissionError, match="ssm:GetParametersByPath in eu-west-1"):
            list(ssm.get_paginator("get_parameters_by_path").paginate(Path="/goldsmith"))


def test_other_errors_keep_their_code(fake_env: None) -> None:
    with mock_aws():
        aws = Aws()
        with pytest.raises(AwsError) as err:
            aws.ec2("eu-west-1").deregister_image(ImageId="ami-00000000000000000")
    assert not isinstance(err.value, AwsPermissionError)
    assert err.value.code.startswith("InvalidAMIID")
    assert "ec2:DeregisterImage failed in eu-west-1" in str(err.value)


def test_unreachable_endpoint_says_so(fake_env: None) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    aws = Aws(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
    with pytest.raises(GoldsmithError, match="cannot reach AWS .* is the twin, is it up"):
        aws.ec2("eu-west-1").describe_regions()


def test_missing_region_is_a_clear_error(fake_env: None) -> None:
    with pytest.raises(GoldsmithError, match="no AWS region given for ec2"):
        Aws().ec2("")
