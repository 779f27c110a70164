"""The "latest AMI" pointer: one SSM parameter per image and region.

Consumers (launch templates, Terraform, CloudFormation) resolve
`resolve:ssm:/goldsmith/web/latest` instead of hard-coding AMI ids. The parameter's data
type is `aws:ec2:image`, so AWS itself checks the value is an AMI in that region.

This module only reads and writes the parameter; when it may move (only forward, and in
every region together) is `publish`'s rule, documented there.
"""

from __future__ import annotations

from ..errors import GoldsmithError
from .clients import Aws, AwsError

DATA_TYPE = "aws:ec2:image"


def parameter_name(template: str, image: str) -> str:
    """The parameter for `image` from the catalogue's template, e.g. /goldsmith/{image}/latest."""
    try:
        name = template.format(image=image)
    except (KeyError, IndexError, ValueError) as err:
        raise GoldsmithError(
            f"images.yml: images.{image}.aws.ssm_parameter {template!r} is not a valid "
            f"template (only {{image}} may be used): {err}"
        ) from None
    if not name.startswith("/") or "//" in name or name.endswith("/"):
        raise GoldsmithError(
            f"images.yml: images.{image}.aws.ssm_parameter {template!r} gives {name!r}, "
            "not an SSM parameter path ('/a/b/c')"
        )
    return name


def put_ami(aws: Aws, region: str, name: str, ami_id: str, description: str = "") -> int:
    """Point the parameter `name` in `region` at `ami_id`; return the parameter's new version."""
    resp = aws.ssm(region).put_parameter(
        Name=name,
        Value=ami_id,
        Type="String",
        DataType=DATA_TYPE,
        Overwrite=True,
        Description=description or "latest AMI baked by goldsmith",
    )
    return int(resp.get("Version", 0))


def get_ami(aws: Aws, region: str, name: str) -> str | None:
    """The AMI id the parameter points at, or None when it does not exist (yet)."""
    try:
        resp = aws.ssm(region).get_parameter(Name=name)
    except AwsError as err:
        if err.code == "ParameterNotFound":
            return None
        raise
    return str(resp["Parameter"]["Value"])


def delete(aws: Aws, region: str, name: str) -> None:
    """Remove the parameter `name` from `region` (gone already is fine)."""
    try:
        aws.ssm(region).delete_parameter(Name=name)
    except AwsError as err:
        if err.code != "ParameterNotFound":
            raise
