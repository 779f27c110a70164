"""The -var values of packer/source.aws.pkr.hcl, from the catalogue and the build.

The template's variables are all named `aws_*`; this is the one place that knows them,
so packer.py writes the result into its .pkrvars.hcl (typed values: strings, numbers,
booleans, lists) without knowing AWS.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from typing import Any

from ..errors import GoldsmithError
from .amis import Provenance, roles_tag

CHECKIP_URL = "https://checkip.amazonaws.com"


def builder_cidrs() -> list[str]:
    """Who may reach the builder's SSH port: this machine's public address only.

    The `aws_ssh_cidrs` setting replaces it, e.g. for a CodeBuild project in a VPC that
    reaches builders by private IP (goldsmith passes it as `ssh_source_cidrs`).
    """
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=10) as resp:
            ip = resp.read().decode().strip()
        ipaddress.ip_address(ip)
    except (OSError, ValueError) as err:
        raise GoldsmithError(
            f"cannot find this machine's public address at {CHECKIP_URL} ({err}); "
            "set the aws_ssh_cidrs setting to the CIDR the builder may be reached from"
        ) from None
    return [f"{ip}/32"]


def packer_vars(
    settings: Any,
    provenance: Provenance,
    *,
    region: str,
    endpoint: str = "",
    ssh_host: str = "",
    ssh_port: int = 22,
    keypair_name: str = "",
    private_key_file: str = "",
    ssh_source_cidrs: list[str] | None = None,
    ami_name: str = "",
    source_ami: str = "",
) -> dict[str, Any]:
    """Variables for the amazon-ebs source, typed as the template declares them.

    `settings` is the image's catalogue.AwsSettings. `endpoint`, `ssh_host` and `ssh_port`
    are the twin's (empty/22 on real AWS). `ssh_source_cidrs` defaults to
    `builder_cidrs()` on real AWS and to loopback on the twin, where nothing is reachable.
    """
    if ssh_source_cidrs is None:
        ssh_source_cidrs = ["127.0.0.1/32"] if endpoint else builder_cidrs()
    values: dict[str, Any] = {
        "aws_region": region,
        "aws_endpoint_ec2": endpoint,
        "aws_source_ami_owners": list(settings.source_ami_owners),
        "aws_source_ami_name": settings.source_ami_name,
        "aws_source_ami": source_ami,
        "aws_instance_type": settings.instance_type,
        "aws_encrypt_boot": settings.encrypt_boot,
        "aws_kms_key_id": settings.kms_key_for(region),
        "aws_spot": settings.spot,
        "aws_ssh_username": settings.ssh_username,
        "aws_ssh_keypair_name": keypair_name,
        "aws_ssh_private_key_file": private_key_file,
        "aws_ssh_host": ssh_host,
        "aws_ssh_port": ssh_port,
        "aws_ssh_source_cidrs": ssh_source_cidrs,
        "aws_ami_name": ami_name,
        "aws_image": provenance.image,
        "aws_git_sha": provenance.git_sha,
        "aws_fingerprint": provenance.fingerprint,
        "aws_build_id": provenance.build_id,
        "aws_roles": roles_tag(provenance.roles),
    }
    return values
