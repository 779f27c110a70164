"""Require IMDSv2 on a build's builder instance, which Packer 1.6.6 cannot ask for itself.

Packer's amazon-ebs builder gained `metadata_options` after 1.6.6 (Debian's). Until
goldsmith runs on a newer Packer, the guard does what that block would: while Packer
runs, it looks for the instance tagged with this build's id (Packer's `run_tags` are set
at launch) and sets HttpTokens=required on it as soon as it is pending or running, long
before SSH is up and Ansible starts. A build whose builder could not be guarded fails:
"IMDSv2 required" is a promise, not a best effort.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from . import amis, reaper
from .clients import Aws

LIVE_STATES = ["pending", "running"]


class Imdsv2Guard:
    """Run as a context around `packer build`; `enforced` lists the instances it guarded."""

    def __init__(self, aws: Aws, region: str, build_id: str, *, interval_s: float = 2.0) -> None:
        self.aws = aws
        self.region = region
        self.build_id = build_id
        self.interval_s = interval_s
        self.enforced: dict[str, float] = {}  # instance id -> seconds after the guard started
        self.error: GoldsmithError | None = None
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[str]:
        """Require IMDSv2 on every live instance of this build not yet requiring it."""
        done = []
        filters = {f"tag:{amis.TAG_BUILD_ID}": [self.build_id], "instance-state-name": LIVE_STATES}
        for inst in reaper.instances(self.aws, self.region, filters):
            instance_id = inst["InstanceId"]
            options: dict[str, Any] = inst.get("MetadataOptions") or {}
            if options.get("HttpTokens") == "required":
                self.enforced.setdefault(instance_id, self._elapsed())
                continue
            self.aws.ec2(self.region).modify_instance_metadata_options(
                InstanceId=instance_id, HttpTokens="required", HttpEndpoint="enabled"
            )
            self.enforced[instance_id] = self._elapsed()
            log("imds", f"IMDSv2 required on builder {instance_id} ({self.region})")
            done.append(instance_id)
        return done

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 1) if self._started else 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except GoldsmithError as err:
                self.error = err
                return
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Imdsv2Guard:
        self._started = time.monotonic()
        self.aws.ec2(self.region)  # made here: a boto3 session is not safe to share across threads
        self._thread = threading.Thread(target=self._run, name="imdsv2-guard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def check(self) -> None:
        """After a build that reached its image: fail unless the builder was guarded."""
        if self.error is not None:
            raise GoldsmithError(
                f"could not require IMDSv2 on build {self.build_id}'s builder instance: "
                f"{self.error}"
            )
        if not self.enforced:
            raise GoldsmithError(
                f"no builder instance tagged {amis.TAG_BUILD_ID}={self.build_id} was seen in "
                f"{self.region}, so IMDSv2 could not be required on it"
            )

    def as_dict(self) -> dict[str, Any]:
        return {"http_tokens": "required", "instances": dict(self.enforced)}
