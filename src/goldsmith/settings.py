"""goldsmith's settings: what a user may configure, in one place, with its defaults.

The tasks read them from Invoke's configuration, under `goldsmith:` (`invoke.yaml` at the
project root, or the environment the way Invoke documents it, e.g.
`INVOKE_GOLDSMITH_ACCELERATOR=tcg`), and pass them down; library code reads no
environment variable for configuration. The README lists every setting.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .ansible_env import DEFAULT_STRATEGY, STRATEGIES
from .errors import GoldsmithError

ACCELERATORS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class Settings:
    # QEMU accelerator for local bakes and VMs: auto (KVM when it really works), kvm, tcg.
    accelerator: str = "auto"
    # aws/twin: publish (copies, sharing, SSM) right after a proven bake; CI sets false and
    # publishes in post_build.
    publish: bool = True
    # Seconds Packer gets to clean up after goldsmith asks it to stop, per target kind.
    packer_stop_seconds_local: int = 30
    packer_stop_seconds_aws: int = 600
    # aws: how long to wait for an AMI (and its copies) to become available.
    ami_wait_seconds: int = 3600
    # aws: CIDRs allowed to reach the builder's SSH port (default: this machine's address).
    aws_ssh_cidrs: tuple[str, ...] = ()
    # requirements.lock must already match requirements.yml (CI sets true): setup and
    # builds install what it records but never rewrite it.
    requirements_locked: bool = False
    # How Ansible reaches a machine in bakes and the dev loop: mitogen (one Python on the
    # machine for the whole run) or linear (Ansible's own: Python started per task).
    ansible_strategy: str = DEFAULT_STRATEGY
    # The CVE gate's security tracker data (JSON, relative to the project or absolute) for
    # every image with a vulnerabilities policy, instead of the `tracker` images.yml names
    # (CI downloads a fresh copy and points here). Empty: images.yml's.
    cve_tracker: str = ""

    def packer_stop_seconds(self, target: str) -> int:
        return self.packer_stop_seconds_local if target == "local" else self.packer_stop_seconds_aws

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The defaults, in the shape of Invoke's configuration (lists, not tuples)."""
        # Invoke casts environment overrides to the default's type, and cannot to a list:
        # lists are comma-separated strings here.
        return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(cls()).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Settings:
        """Check and convert the `goldsmith:` configuration; errors name the key and value."""
        config = dict(config or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise GoldsmithError(
                f"configuration goldsmith.{unknown[0]}: no such setting "
                f"(settings: {', '.join(known)})"
            )
        values: dict[str, Any] = {}
        for name, value in config.items():
            default = getattr(cls(), name)
            where = f"configuration goldsmith.{name}={value!r}"
            if isinstance(default, bool):
                values[name] = _bool(value, where)
            elif isinstance(default, int):
                try:
                    values[name] = int(value)
                except (TypeError, ValueError):
                    raise GoldsmithError(f"{where}: expected a whole number") from None
                if values[name] <= 0:
                    raise GoldsmithError(f"{where}: expected a positive number")
            elif isinstance(default, tuple):
                items = value.split(",") if isinstance(value, str) else list(value or [])
                values[name] = tuple(str(i).strip() for i in items if str(i).strip())
            else:
                values[name] = str(value)
        s = cls(**values)
        if s.accelerator not in ACCELERATORS:
            raise GoldsmithError(
                f"configuration goldsmith.accelerator={s.accelerator!r}: "
                f"choose one of {', '.join(ACCELERATORS)}"
            )
        if s.ansible_strategy not in STRATEGIES:
            raise GoldsmithError(
                f"configuration goldsmith.ansible_strategy={s.ansible_strategy!r}: "
                f"choose one of {', '.join(STRATEGIES)}"
            )
        for cidr in s.aws_ssh_cidrs:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise GoldsmithError(
                    f"configuration goldsmith.aws_ssh_cidrs: {cidr!r} is not a CIDR "
                    "(e.g. 203.0.113.7/32)"
                ) from None
        return s


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise GoldsmithError(f"{where}: expected true or false")
