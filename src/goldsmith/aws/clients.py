"""boto3 clients that honour an endpoint override and turn AWS errors into goldsmith errors.

A denied call is the most common failure of an image pipeline's first run in a new
account; its message says which API action was denied, in which region, and which IAM
permission the build role needs, instead of a botocore traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from ..errors import GoldsmithError

# Error codes AWS services use for "the caller lacks a permission".
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedAccess",
        "AuthorizationError",
        "NotAuthorized",
    }
)


class AwsError(GoldsmithError):
    """An AWS API call failed; `code` is AWS's error code, `action` the IAM action name."""

    def __init__(self, message: str, *, code: str, action: str, region: str) -> None:
        super().__init__(message)
        self.code = code
        self.action = action
        self.region = region


class AwsPermissionError(AwsError):
    """AWS denied a call: the build role lacks the IAM permission named in the message."""


def iam_action(client: Any, operation: str) -> str:
    """The IAM action for an API operation of `client`, e.g. ``ec2:CopyImage``."""
    prefix = client.meta.service_model.signing_name or client.meta.service_model.endpoint_prefix
    return f"{prefix}:{operation}"


def translate_core(
    err: botocore.exceptions.BotoCoreError, client: Any, region: str
) -> GoldsmithError:
    """Turn a botocore error that never reached AWS (credentials, network) into a clear one."""
    if isinstance(err, botocore.exceptions.NoCredentialsError):
        return GoldsmithError(
            f"no AWS credentials found for {client.meta.service_model.service_name} in {region}: "
            "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (for the twin: "
            "`./run twin.up` prints the environment to use)"
        )
    if isinstance(err, botocore.exceptions.EndpointConnectionError):
        return GoldsmithError(
            f"cannot reach AWS at {client.meta.endpoint_url} ({region}): {err}; "
            "if that is the twin, is it up? (`./run twin.up`)"
        )
    if isinstance(err, botocore.exceptions.ParamValidationError):
        service = client.meta.service_model.service_name
        return GoldsmithError(f"invalid {service} request in {region}: {err}")
    return GoldsmithError(f"AWS call in {region} failed before reaching AWS: {err}")


def translate(err: botocore.exceptions.ClientError, client: Any, region: str) -> AwsError:
    """Turn a botocore ClientError into an AwsError a person can act on."""
    error = err.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", "")).strip()
    action = iam_action(client, err.operation_name)
    if code in DENIED_CODES:
        return AwsPermissionError(
            f"AWS denied {action} in {region} ({code}): the role or user running goldsmith "
            f"needs the IAM permission {action!r} in {region}"
            + (f"; AWS said: {message}" if message else ""),
            code=code,
            action=action,
            region=region,
        )
    return AwsError(
        f"AWS {action} failed in {region} ({code})" + (f": {message}" if message else ""),
        code=code,
        action=action,
        region=region,
    )


class _Paginator:
    """A boto3 paginator whose pages raise AwsError instead of ClientError."""

    def __init__(self, inner: Any, client: Any, region: str) -> None:
        self._inner = inner
        self._client = client
        self._region = region

    def paginate(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self._inner.paginate(**kwargs)
        except botocore.exceptions.ClientError as err:
            raise translate(err, self._client, self._region) from None
        except botocore.exceptions.BotoCoreError as err:
            raise translate_core(err, self._client, self._region) from None


class Client:
    """A boto3 client for one service in one region; every call raises AwsError on failure.

    Attribute access falls through to the boto3 client, so `Client.describe_images(...)`
    is boto3's own call; only the error type changes.
    """

    def __init__(self, inner: Any, region: str) -> None:
        self.raw = inner
        self.region = region

    def get_paginator(self, operation: str) -> _Paginator:
        return _Paginator(self.raw.get_paginator(operation), self.raw, self.region)

    def get_waiter(self, name: str) -> Any:
        # Waiters raise WaiterError; `amis.wait_available` explains those itself.
        return self.raw.get_waiter(name)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.raw, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except botocore.exceptions.ClientError as err:
                raise translate(err, self.raw, self.region) from None
            except botocore.exceptions.BotoCoreError as err:
                raise translate_core(err, self.raw, self.region) from None

        return call


@dataclass
class Aws:
    """Where AWS is: the real one (endpoint_url None) or a twin at `endpoint_url`.

    `endpoint_url` defaults to $AWS_ENDPOINT_URL, the variable boto3 and the AWS CLI
    honour too, so `goldsmith`, `aws` and tests agree on which AWS they talk to.
    """

    endpoint_url: str | None = None
    profile: str | None = None
    # Explicit credentials (the twin's fake ones); None takes boto3's usual chain.
    access_key: str | None = None
    secret_key: str | None = None
    # Retries in "adaptive" mode ride out the throttling a batch of parallel bakes causes.
    max_attempts: int = 10
    _session: boto3.Session | None = field(default=None, repr=False)
    _clients: dict[tuple[str, str], Client] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.endpoint_url is None:
            self.endpoint_url = os.environ.get("AWS_ENDPOINT_URL") or None

    @property
    def session(self) -> boto3.Session:
        if self._session is None:
            self._session = boto3.Session(
                profile_name=self.profile,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
            )
        return self._session

    def client(self, service: str, region: str) -> Client:
        """A client for `service` in `region` (cached: one per service and region)."""
        if not region:
            raise GoldsmithError(f"no AWS region given for {service}")
        key = (service, region)
        if key not in self._clients:
            try:
                raw = self.session.client(
                    service,
                    region_name=region,
                    endpoint_url=self.endpoint_url,
                    config=botocore.config.Config(
                        retries={"max_attempts": self.max_attempts, "mode": "adaptive"}
                    ),
                )
            except botocore.exceptions.BotoCoreError as err:
                raise GoldsmithError(
                    f"cannot make an AWS {service} client in {region}: {err}"
                ) from None
            self._clients[key] = Client(raw, region)
        return self._clients[key]

    def ec2(self, region: str) -> Client:
        return self.client("ec2", region)

    def ssm(self, region: str) -> Client:
        return self.client("ssm", region)
