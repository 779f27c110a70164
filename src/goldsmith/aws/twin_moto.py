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
  say), and a key that does not exist in the copy's region is refused. So does the
  snapshot CreateImage makes of an instance's encrypted root volume, which moto made of
  a fresh unencrypted volume.
- EnableImageDeprecation exists (moto lacks it): the AMI's DeprecationTime is set, so
  `aws.prune` deprecates before it deregisters on the twin as on AWS.
- ModifyInstanceMetadataOptions takes effect a moment later, as on EC2: the change is
  "pending" at first and "applied" only after `METADATA_PENDING_S`, so the IMDSv2 guard's
  wait for "applied" is exercised, not skipped.
- IAM, when the twin enforces it (`enforce_iam()`, the twin's server does): every call
  signed by an IAM user's key is allowed only by that user's policies, and a denial names
  the action ("... is not authorized to perform: ec2:RunInstances"), so a build run as
  the repository's policy fails on the first permission it lacks. The twin's root key
  (`ROOT_ACCESS_KEYS`, the account's root) and moto's own unsigned API are not checked.
  moto decides by action only: it gives EC2, SSM and KMS calls no resource ARN and no
  condition values, so a statement's `Resource` and `Condition` are taken as met (what
  they narrow is AWS's to enforce). Each checked call is appended to the audit file
  named by $GOLDSMITH_TWIN_AUDIT, one JSON line (caller key, action, allowed).

`install()` applies these to moto in this process: the twin's server (`twin_server`)
calls it before serving, and the unit tests' in-process moto calls it too, so both
answer alike.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import xmltodict
from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import AccessDeniedError, JsonRESTError
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError, InvalidParameterDependency
from moto.ec2.models import amis
from moto.ec2.models.instances import InstanceBackend, MetadataOptions
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.utils import convert_tag_spec
from moto.iam.access_control import IAMPolicyStatement

from .twin import AUDIT_ENV, FAKE_CREDENTIALS

# The account's root: calls signed with its key are never checked (a root can do anything
# in its account). The twin's root key, and the one moto's in-process mock signs with.
ROOT_ACCESS_KEYS = frozenset({FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"], "FOOBARKEY"})
METADATA_PENDING_S = 1.0

_moto_init = amis.Ami.__init__
_moto_mappings = amis.Ami.block_device_mappings


def _as_on_aws(self: amis.Ami, *args: Any, **kwargs: Any) -> None:
    _moto_init(self, *args, **kwargs)
    if kwargs.get("instance") is not None:
        self.root_device_type = "ebs"  # CreateImage from an instance (an EBS-backed one)
        _snapshot_like_root_volume(self, kwargs["instance"])
    elif kwargs.get("source_ami") is not None:
        self.root_device_type = kwargs["source_ami"].root_device_type  # CopyImage


def _snapshot_like_root_volume(image: amis.Ami, instance: Any) -> None:
    """CreateImage's snapshot is of the instance's root volume: encrypted as it is, with
    its key recorded by ARN (the launch may have named the key by alias)."""
    mapping = dict(instance.get_block_device_mapping)
    block = mapping.get(instance.root_device_name) or next(iter(mapping.values()), None)
    if block is None:
        return
    volume = image.ec2_backend.get_volume(block.volume_id)
    snapshot = image.ebs_snapshot
    snapshot.encrypted = bool(volume.encrypted)
    if volume.kms_key_id:
        snapshot.kms_key_id = key_arn(image.ec2_backend, volume.kms_key_id)
    elif volume.encrypted:
        backend = image.ec2_backend
        if not backend.default_kms_key_id:
            backend._create_default_encryption_key()
        snapshot.kms_key_id = backend.default_kms_key_id


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


def _enable_image_deprecation(self: AmisResponse) -> Any:
    """AWS's EnableImageDeprecation: the AMI (the caller's own) gets its DeprecationTime."""
    ami_id = self._get_param("ImageId")
    image = self.ec2_backend.amis.get(ami_id)
    if image is None:
        raise InvalidAMIIdError(ami_id)
    image.deprecation_time = self._get_param("DeprecateAt")
    return ActionResult({"Return": True})


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


def _caller(headers: Any) -> tuple[str, str]:
    """(access key id, service) of a SigV4-signed request; ("", "") when unsigned."""
    found = re.search(
        r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/", headers.get("Authorization") or ""
    )
    return (found.group(1), found.group(2)) if found else ("", "")


def _authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
    """moto's check of the caller's policies, for IAM users' keys only; each one audited."""
    key, service = _caller(self.headers)
    if not key or key in ROOT_ACCESS_KEYS:
        return
    enforced = ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        _moto_authorize(self, iam_request_cls, resource)
    except AccessDeniedError as err:
        if enforced:
            _audit(key, f"{service}:{self._get_action()}", False)
        if self.headers.get("X-Amz-Target"):
            # A JSON service (SSM, KMS) answers AccessDeniedException in JSON, as AWS does;
            # moto's XML error leaves boto3 with a bare "403".
            raise JsonRESTError("AccessDeniedException", err.message) from None
        if service == "ec2":
            raise Ec2Unauthorized(err.message) from None
        raise
    if enforced:
        _audit(key, f"{service}:{self._get_action()}", True)


class Ec2Unauthorized(AccessDeniedError):
    """EC2's own denial: UnauthorizedOperation in EC2's error document (<Response>), which
    Packer's SDK requires; moto's generic <ErrorResponse> makes Packer fail to read it."""

    def __init__(self, message: str) -> None:
        super().__init__(user_arn="", action="")
        self.error_type = "UnauthorizedOperation"
        self.message = f"You are not authorized to perform this operation. {message}"
        error = {"Code": self.error_type, "Message": self.message}
        self.description = xmltodict.unparse(
            {"Response": {"Errors": {"Error": error}, "RequestID": str(uuid.uuid4())}}
        )


def _audit(key: str, action: str, allowed: bool) -> None:
    path = os.environ.get(AUDIT_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"key": key, "action": action, "allowed": allowed}) + "\n")


def _element_matches(self: IAMPolicyStatement, element: str, value: str) -> bool:
    # moto passes "*" for a call whose resource it does not know (EC2, SSM, KMS).
    if element == "Resource" and value == "*":
        return True
    return _moto_element_matches(self, element, value)


def _conditions_met(self: IAMPolicyStatement, incoming: dict[str, str] | None) -> bool:
    # moto gives no condition values (tags, request parameters) for such calls.
    return True if incoming is None else _moto_conditions(self, incoming)


class _AppliedLater(MetadataOptions):
    """Metadata options that are "pending" until `applied_at`, as EC2 reports a change."""

    applied_at = 0.0

    @property  # type: ignore[override]
    def state(self) -> str:
        if time.monotonic() < self.applied_at:
            return "pending"
        return str(self.__dict__.get("state", "applied"))  # (moto's own value)

    @state.setter
    def state(self, value: str) -> None:
        self.__dict__["state"] = value


def _modify_metadata_options(self: InstanceBackend, *args: Any, **kwargs: Any) -> Any:
    options = _moto_modify_metadata_options(self, *args, **kwargs)
    options.__class__ = _AppliedLater
    options.applied_at = time.monotonic() + METADATA_PENDING_S
    return options


def enforce_iam() -> None:
    """Check every call signed by an IAM user's key from the first one on (moto's
    INITIAL_NO_AUTH_ACTION_COUNT)."""
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0


_moto_copy_image: Callable[[AmisResponse], Any] = AmisResponse.copy_image
_moto_modify_metadata_options = InstanceBackend.modify_instance_metadata_options
_moto_authorize = ActionAuthenticatorMixin._authenticate_and_authorize_action
_moto_element_matches = IAMPolicyStatement._check_element_matches
_moto_conditions = IAMPolicyStatement._check_conditions

PATCHES: list[tuple[Any, str, Any]] = [
    (amis.Ami, "__init__", _as_on_aws),
    (amis.Ami, "block_device_mappings", property(_mappings)),
    (AmisResponse, "copy_image", _copy_image),
    (AmisResponse, "enable_image_deprecation", _enable_image_deprecation),
    (InstanceBackend, "modify_instance_metadata_options", _modify_metadata_options),
    (ActionAuthenticatorMixin, "_authenticate_and_authorize_action", _authorize),
    (IAMPolicyStatement, "_check_element_matches", _element_matches),
    (IAMPolicyStatement, "_check_conditions", _conditions_met),
]


def install(setattr: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make moto in this process answer as AWS does (see the module); `setattr` lets a
    test undo it (pytest's monkeypatch.setattr)."""
    for owner, name, value in PATCHES:
        setattr(owner, name, value)
