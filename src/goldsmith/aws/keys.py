"""The per-build EC2 key pair.

goldsmith generates one SSH key per build and imports its public half, named and tagged
with the build id, so Packer launches the builder with a key goldsmith holds (on the twin,
the stand-in VM accepts the same key) and the reaper can find the key pair by tag if a
cancelled job leaves it behind.
"""

from __future__ import annotations

from .amis import TAG_BUILD_ID, tag_list
from .clients import Aws, AwsError


def key_pair_name(build_id: str) -> str:
    """The name of the build's key pair (what Packer's `ssh_keypair_name` gets)."""
    return f"goldsmith-{build_id}"


def import_build_key(
    aws: Aws, region: str, build_id: str, public_key: str, tags: dict[str, str] | None = None
) -> str:
    """Import `public_key` (OpenSSH format) as the build's key pair; return its name.

    A key pair left by an earlier attempt of the same build id is replaced, because its
    private half may be gone.
    """
    name = key_pair_name(build_id)
    client = aws.ec2(region)
    delete_build_key(aws, region, build_id)
    client.import_key_pair(
        KeyName=name,
        PublicKeyMaterial=public_key.encode(),
        TagSpecifications=[
            {"ResourceType": "key-pair", "Tags": tag_list({**(tags or {}), TAG_BUILD_ID: build_id})}
        ],
    )
    return name


def delete_build_key(aws: Aws, region: str, build_id: str) -> bool:
    """Delete the build's key pair; return whether one existed."""
    name = key_pair_name(build_id)
    client = aws.ec2(region)
    try:
        found = client.describe_key_pairs(KeyNames=[name]).get("KeyPairs", [])
    except AwsError as err:
        if err.code == "InvalidKeyPair.NotFound":
            return False
        raise
    if not found:
        return False
    client.delete_key_pair(KeyName=name)
    return True
