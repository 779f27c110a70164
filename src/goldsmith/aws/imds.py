"""Require IMDSv2 on a build's builder instance, which Packer 1.6.6 cannot ask for itself.

Packer's amazon-ebs builder gained `metadata_options` after 1.6.6 (Debian's, and the one
CI installs). Until goldsmith runs on a newer Packer, two steps do what that block would,
with no window in which anything runs on the builder with IMDSv1 open:

1. The guard (`Imdsv2Guard`), a thread beside `packer build`: it looks for the builder
   by the build's key pair and its build-id tag (Packer sets both at launch), requires
   IMDSv2 as soon as the instance is pending or running, and waits until AWS reports the
   change applied. A denied or unapplied change stops Packer at once (`stop_build`),
   which terminates the builder; the build fails naming the permission.
2. The gate, Packer's first provisioner (`python -m goldsmith.aws.imds gate`): it names
   the builder by its instance id (Packer's `build.ID`, no eventually consistent filter),
   requires IMDSv2 itself if the guard has not yet, and waits until it is applied. Only
   then does Ansible start; a denied change fails Packer there.

Both use `require()`, which is idempotent.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from . import amis, reaper
from .clients import Aws

LIVE_STATES = ["pending", "running"]
APPLY_TIMEOUT_S = 120.0


def options_of(aws: Aws, region: str, instance_id: str) -> dict[str, Any]:
    """The instance's metadata options as EC2 reports them now."""
    res = aws.ec2(region).describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(res[0]["Instances"][0].get("MetadataOptions") or {})


def require(
    aws: Aws,
    region: str,
    instance_id: str,
    *,
    timeout_s: float = APPLY_TIMEOUT_S,
    interval_s: float = 0.5,
) -> bool:
    """Require IMDSv2 on `instance_id` and wait until EC2 reports it applied; return
    whether this call changed it. A denied call, or a change not applied within
    `timeout_s`, raises GoldsmithError."""
    options = options_of(aws, region, instance_id)
    changed = False
    if options.get("HttpTokens") != "required":
        aws.ec2(region).modify_instance_metadata_options(
            InstanceId=instance_id, HttpTokens="required", HttpEndpoint="enabled"
        )
        changed = True
        options = options_of(aws, region, instance_id)
    deadline = time.monotonic() + timeout_s
    while not (options.get("HttpTokens") == "required" and options.get("State") == "applied"):
        if time.monotonic() > deadline:
            raise GoldsmithError(
                f"IMDSv2 was requested on {instance_id} ({region}) but is not applied after "
                f"{timeout_s:.0f}s (metadata options: {options})"
            )
        time.sleep(interval_s)
        options = options_of(aws, region, instance_id)
    return changed


class Imdsv2Guard:
    """Run as a context around `packer build`; `enforced` lists the instances it guarded,
    each once IMDSv2 is applied on it."""

    def __init__(
        self,
        aws: Aws,
        region: str,
        build_id: str,
        *,
        key_name: str = "",
        interval_s: float = 0.5,
        stop_build: Callable[[], None] | None = None,
    ) -> None:
        self.aws = aws
        self.region = region
        self.build_id = build_id
        self.key_name = key_name
        self.interval_s = interval_s
        self.stop_build = stop_build
        self.enforced: dict[str, float] = {}  # instance id -> seconds after the guard started
        self.error: GoldsmithError | None = None
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def builders(self) -> list[str]:
        """This build's live instances, found by its build-id tag or by its key pair."""
        found: dict[str, None] = {}
        filters = [{f"tag:{amis.TAG_BUILD_ID}": [self.build_id]}]
        if self.key_name:
            filters.append({"key-name": [self.key_name]})
        for flt in filters:
            for inst in reaper.instances(
                self.aws, self.region, {**flt, "instance-state-name": LIVE_STATES}
            ):
                found[inst["InstanceId"]] = None
        return list(found)

    def poll_once(self) -> list[str]:
        """Require IMDSv2 on every live builder not yet guarded; return those changed."""
        done = []
        for instance_id in self.builders():
            if instance_id in self.enforced:
                continue
            if require(self.aws, self.region, instance_id, interval_s=self.interval_s):
                log("imds", f"IMDSv2 required and applied on builder {instance_id} ({self.region})")
                done.append(instance_id)
            self.enforced[instance_id] = self._elapsed()
        return done

    def _elapsed(self) -> float:
        return round(time.monotonic() - self._started, 1) if self._started else 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except GoldsmithError as err:
                self.error = err
                log("imds", f"IMDSv2 could not be required; stopping the build: {err}")
                if self.stop_build is not None:
                    self.stop_build()
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

    def failure(self) -> GoldsmithError:
        """The error a build stopped by the guard fails with."""
        return GoldsmithError(
            f"could not require IMDSv2 on build {self.build_id}'s builder instance, so the "
            f"build was stopped before anything ran on it: {self.error}"
        )

    def check(self, gated: list[str] | None = None) -> None:
        """After a build that reached its image: fail unless the builder was guarded (by
        the guard, or by the gate: `gated`)."""
        if self.error is not None:
            raise self.failure()
        if not self.enforced and not gated:
            raise GoldsmithError(
                f"no builder instance tagged {amis.TAG_BUILD_ID}={self.build_id} was seen in "
                f"{self.region}, so IMDSv2 could not be required on it"
            )

    def as_dict(self, gated: list[str] | None = None) -> dict[str, Any]:
        return {
            "http_tokens": "required",
            "instances": dict(self.enforced),
            "gated": sorted(gated or []),
        }


def gate(region: str, instance_id: str, record: Path | None) -> int:
    """Packer's first provisioner: IMDSv2 required and applied before anything runs."""
    if not instance_id:
        print("imds gate: Packer gave no instance id (build.ID)", file=sys.stderr)
        return 2
    try:
        changed = require(Aws(), region, instance_id)
    except GoldsmithError as err:
        print(f"imds gate: {err}", file=sys.stderr)
        return 1
    print(
        f"imds gate: IMDSv2 {'required' if changed else 'already required'} and applied on "
        f"{instance_id} ({region})"
    )
    if record is not None:
        record.write_text(json.dumps({"instance_id": instance_id, "changed_here": changed}))
    return 0


def gated(record: Path) -> list[str]:
    """The instance the gate checked, from its record (none if it never ran)."""
    try:
        return [str(json.loads(record.read_text())["instance_id"])]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m goldsmith.aws.imds")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gate", help="require IMDSv2 on a builder and wait until applied")
    g.add_argument("--region", required=True)
    g.add_argument("--instance-id", required=True)
    g.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    return gate(args.region, args.instance_id, args.record)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
