"""What the twin's moto does as AWS does, where moto on its own leaves it out.

The twin stands in for AWS, so an answer goldsmith relies on must be AWS's answer:

- An AMI that CreateImage makes from an EBS-backed instance is EBS-backed, and so is a
  copy of it. moto records such AMIs with the root device type "standard", and Packer's
  amazon-ebs refuses a source AMI that is not "ebs" ("invalid root device type"): an image
  layered on another, whose source is its parent's AMI, could not be baked on the twin.
- CopyImage honours `Encrypted`, `KmsKeyId` and `TagSpecifications`. moto ignores all
  three: its copies would be unencrypted and untagged whatever goldsmith asked for, so
  neither the twin nor the unit tests could show that every copy is encrypted with its
  region's key and tagged the moment it exists.
- An AMI's block device mappings say whether its snapshot is encrypted.
- A copy's snapshot records its key's ARN, whatever name CopyImage was given (an alias,
  say), and a key that does not exist in the copy's region is refused.

`install()` applies these to moto in this process: the twin's server (`twin_server`)
calls it before serving, and the unit tests' in-process moto calls it too, so both
answer alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moto.ec2.exceptions import EC2ClientError, InvalidParameterDependency
from moto.ec2.models import amis
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import convert_tag_spec

_moto_init = amis.Ami.__init__
_moto_mappings = amis.Ami.block_device_mappings


def _as_on_aws(self: amis.Ami, *args: Any, **kwargs: Any) -> None:
    _moto_init(self, *args, **kwargs)
    if kwargs.get("instance") is not None:
        self.root_device_type = "ebs"  # CreateImage from an instance (an EBS-backed one)
    elif kwargs.get("source_ami") is not None:
        self.root_device_type = kwargs["source_ami"].root_device_type  # CopyImage


def _mappings(self: amis.Ami) -> list[dict[str, Any]]:
    mappings = _moto_mappings.fget(self)  # type: ignore[attr-defined]
    for mapping in mappings:
        mapping["Ebs"]["Encrypted"] = bool(self.ebs_snapshot.encrypted)
    return mappings


def _copy_image(self: AmisResponse) -> Any:
    """moto's CopyImage, then AWS's encryption and tags on the new AMI and its snapshot."""
    encrypted = str(self._get_param("Encrypted", "false")).lower() == "true"
    kms_key_id = self._get_param("KmsKeyId") or None
    if kms_key_id and not encrypted:
        raise InvalidParameterDependency("KmsKeyId", "Encrypted")
    tags = convert_tag_spec(self._get_param("TagSpecifications", []))
    if kms_key_id:
        kms_key_id = key_arn(self.ec2_backend, kms_key_id)
    result = _moto_copy_image(self)
    backend = self.ec2_backend
    image = backend.amis[result.result["ImageId"]]
    source = backend_of(backend, self._get_param("SourceRegion")).amis[
        self._get_param("SourceImageId")
    ]
    snapshot = image.ebs_snapshot
    if encrypted or source.ebs_snapshot.encrypted:
        # AWS: a copy of an encrypted AMI stays encrypted; no key means the region's default.
        if not kms_key_id and not backend.default_kms_key_id:
            backend._create_default_encryption_key()
        snapshot.encrypted = True
        snapshot.kms_key_id = kms_key_id or backend.default_kms_key_id
    image.add_tags(tags.get("image", {}))
    snapshot.add_tags(tags.get("snapshot", {}))
    return result


def key_arn(backend: Any, key: str) -> str:
    """The ARN of the KMS key `key` (id, ARN, alias or alias ARN) in `backend`'s region, as
    AWS records it on an encrypted snapshot; a key that does not exist there is refused,
    as AWS refuses it (KMS keys are regional: an alias made in one region only is
    missing in the others)."""
    from moto.kms.models import kms_backends

    kms = kms_backends[backend.account_id][backend.region_name]
    try:
        return kms.describe_key(key).arn
    except (KeyError, TypeError, AttributeError):  # moto: unknown id, or an alias of none
        raise EC2ClientError(
            "InvalidParameterValue", f"KmsKeyId {key} does not exist in {backend.region_name}"
        ) from None


def backend_of(backend: Any, region: str) -> Any:
    """The EC2 backend of `region` in the account of `backend`."""
    from moto.ec2.models import ec2_backends

    return ec2_backends[backend.account_id][region]


_moto_copy_image: Callable[[AmisResponse], Any] = AmisResponse.copy_image

PATCHES: list[tuple[Any, str, Any]] = [
    (amis.Ami, "__init__", _as_on_aws),
    (amis.Ami, "block_device_mappings", property(_mappings)),
    (AmisResponse, "copy_image", _copy_image),
]


def install(setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make moto in this process answer as AWS does (see the module); `setattr` lets a
    test undo it (pytest's monkeypatch.setattr)."""
    for owner, name, value in PATCHES:
        setattr(owner, name, value)
