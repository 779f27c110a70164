"""The AWS twin: moto in server mode on loopback, standing in for AWS.

Packer (through `custom_endpoint_ec2`), boto3 and the AWS CLI (through
$AWS_ENDPOINT_URL) all talk to it, so the whole AWS path runs here without an account.
Its state lives in .cache/twin/ under the project root: the pid, the port, the log and
the AMI catalogue it was started with. `up()` reuses a twin that is already running.

IAM: the twin enforces it. Builds, publishes and reaps on the twin run as an IAM user
whose only policy is the repository's aws/policy.json (`builder()`), so a permission
that policy lacks fails the twin's build as it would fail CI's, naming the action; the
twin's root (`admin_aws()`) sets the twin up. See `twin_moto` for what moto checks.

Source AMIs: moto's bundled catalogue has no Debian image, and an AMI registered through
the API is always owned by the caller's account, never by Debian's (136693071363). So
the twin starts moto with $MOTO_AMIS_PATH pointing at a catalogue of moto's own public
AMIs plus Debian 12 images owned by 136693071363 (`DEBIAN_SEED`): the catalogue's real
filter (owner 136693071363, name debian-12-amd64-*) finds them, in every region, exactly
as it finds Debian's images on AWS.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import GoldsmithError
from ..paths import cache_dir, venv_bin
from ..tools import log
from .clients import Aws
from .policy import POLICY, load_policy

HOST = "127.0.0.1"
# moto's server, with AMIs made from instances EBS-backed as on AWS (see the module).
SERVER_MODULE = "goldsmith.aws.twin_server"
DEBIAN_OWNER = "136693071363"
# Two dated releases, so `most_recent` really picks one; the newest is the later date.
DEBIAN_SEED: list[dict[str, Any]] = [
    {
        "ami_id": f"ami-0de0b1a{n:010d}",
        "name": f"debian-12-amd64-{date}",
        "description": f"Debian 12 (bookworm) amd64 {date} (goldsmith twin seed)",
        "owner_id": DEBIAN_OWNER,
        "public": True,
        "state": "available",
        "architecture": "x86_64",
        "virtualization_type": "hvm",
        "hypervisor": "xen",
        "image_type": "machine",
        "image_location": f"{DEBIAN_OWNER}/debian-12-amd64-{date}",
        "root_device_type": "ebs",
        "root_device_name": "/dev/xvda",
        "sriov": "simple",
        "boot_mode": "uefi-preferred",
        "creation_date": created,
    }
    for n, (date, created) in enumerate(
        [
            ("20240102-1614", "2024-01-02T16:30:00.000Z"),
            ("20240717-1811", "2024-07-17T18:30:00.000Z"),
        ],
        start=1,
    )
]
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
START_TIMEOUT_S = 60.0
# The policy a build runs with: the CI role's (the CI stack attaches the same document).
POLICY_FILE = POLICY
BUILDER_PREFIX = "goldsmith-build-"
# The twin's server appends each call it checked against a policy here (twin_moto).
AUDIT_ENV = "GOLDSMITH_TWIN_AUDIT"


@dataclass(frozen=True)
class Twin:
    """A running twin."""

    pid: int
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"


def state_dir(root: Path) -> Path:
    """Where the twin keeps its pid, port, log and AMI catalogue."""
    return cache_dir(root) / "twin"


def running(root: Path) -> Twin | None:
    """The twin started from this project, if it is running and answering."""
    d = state_dir(root)
    try:
        pid = int((d / "moto.pid").read_text().strip())
        port = int((d / "moto.port").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _is_moto(pid):
        return None
    twin = Twin(pid, port)
    return twin if _answers(twin.endpoint) else None


def up(root: Path) -> Twin:
    """Start the twin (or reuse the running one); return it once it answers."""
    current = running(root)
    if current:
        log("twin", f"already up at {current.endpoint} (pid {current.pid})")
        return current
    d = state_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    _stop_stale(d)
    amis = d / "amis.json"
    amis.write_text(json.dumps(seeded_amis(), indent=1))
    port = _free_port()
    shutil.rmtree(d / "builders", ignore_errors=True)  # IAM users of an earlier twin
    (d / "iam-audit.jsonl").unlink(missing_ok=True)  # and its calls
    env = {
        **os.environ,
        "MOTO_AMIS_PATH": str(amis.resolve()),
        AUDIT_ENV: str((d / "iam-audit.jsonl").resolve()),
    }
    # Its own session: the twin outlives the command that started it (`./run twin.up`).
    with open(d / "moto.log", "ab") as out:
        proc = subprocess.Popen(
            [venv_bin("python"), "-m", SERVER_MODULE, "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    twin = Twin(proc.pid, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(twin.endpoint):
        if proc.poll() is not None:
            raise GoldsmithError(
                f"moto_server exited with code {proc.returncode} while starting; "
                f"see {d / 'moto.log'}:\n{_tail(d / 'moto.log')}"
            )
        if time.monotonic() > deadline:
            _kill(proc.pid)
            raise GoldsmithError(
                f"moto_server did not answer on {twin.endpoint} within {START_TIMEOUT_S:.0f}s; "
                f"see {d / 'moto.log'}"
            )
        time.sleep(0.2)
    (d / "moto.pid").write_text(f"{proc.pid}\n")
    (d / "moto.port").write_text(f"{port}\n")
    log("twin", f"up at {twin.endpoint} (pid {proc.pid})")
    return twin


def disk_of(root: Path, ami: str) -> Path:
    """Where the twin keeps the disk behind one of its AMIs (the stand-in's sealed disk),
    so an image layered on it boots from what that AMI holds, as on EC2."""
    return state_dir(root) / "disks" / f"{ami}.qcow2"


def down(root: Path) -> bool:
    """Stop the twin; return whether one was running. Its state is gone with it."""
    d = state_dir(root)
    was = running(root)
    _stop_stale(d)
    shutil.rmtree(d / "disks", ignore_errors=True)
    shutil.rmtree(d / "builders", ignore_errors=True)
    if was:
        log("twin", f"stopped (pid {was.pid})")
    return was is not None


def endpoint(root: Path) -> str:
    """The running twin's endpoint URL; a clear error when it is not up."""
    twin = running(root)
    if not twin:
        raise GoldsmithError("the AWS twin is not running; start it with `./run twin.up`")
    return twin.endpoint


def env(root: Path, region: str = "eu-west-1") -> dict[str, str]:
    """Environment for boto3, the AWS CLI and Packer to talk to the running twin.

    Fake credentials (moto accepts any) keep a developer's real AWS credentials out of
    reach: boto3, the CLI and Packer take credentials, region and endpoint from the
    environment before any profile, so nothing pointed at the twin can touch a real account.
    """
    creds = builder(root)
    return {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT_URL": endpoint(root),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def aws(root: Path) -> Aws:
    """An `Aws` for the running twin as the builder (`builder()`), whatever the environment."""
    url = endpoint(root)
    creds = builder(root)
    return Aws(
        endpoint_url=url, access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"]
    )


def builder(root: Path) -> dict[str, str]:
    """The access key of the twin's IAM user for `root`'s policy (aws/policy.json), made
    on first use: a user per policy content, so projects with different policies can
    share one twin. The key is kept in the twin's state until the twin stops or resets."""
    document = load_policy(root)
    policy = json.dumps(document, sort_keys=True)
    name = BUILDER_PREFIX + hashlib.sha256(policy.encode()).hexdigest()[:12]
    kept = state_dir(root) / "builders" / f"{name}.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    with open(kept.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one twin, several bakes at once
        if kept.is_file():
            return dict(json.loads(kept.read_text()))
        iam = admin_aws(root).client("iam", "us-east-1")
        if not any(u["UserName"] == name for u in iam.list_users()["Users"]):
            # (A user kept from a run whose key was lost gets a new key, same policy.)
            try:
                arn = iam.create_policy(PolicyName=name, PolicyDocument=policy)["Policy"]["Arn"]
            except GoldsmithError as err:
                raise GoldsmithError(f"{POLICY_FILE}: IAM refuses the policy: {err}") from None
            iam.create_user(UserName=name)
            iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        creds = {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}
        kept.write_text(json.dumps(creds))
        log("twin", f"builds on the twin run as IAM user {name} ({POLICY_FILE})")
        return creds


def admin_aws(root: Path) -> Aws:
    """An `Aws` for the twin as its account's root: for setting the twin up and for
    deploying the CI stack, never for a build (builds run as `aws(root)`)."""
    return Aws(
        endpoint_url=endpoint(root),
        access_key=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def ensure_keys(root: Path, keys: Mapping[str, str]) -> list[str]:
    """Make the KMS keys an image names by alias ({region: alias/NAME or alias ARN}) exist
    on the twin, each a new symmetric key behind that alias in its region: on AWS the
    account holds them (the CI stack makes them); the twin is an empty account. A key
    named by id or key ARN cannot be made with that id, so it is left to the test that
    names it. Returns "REGION:ALIAS" for each key made here."""
    made = []
    for region, key in sorted(keys.items()):
        alias = key if key.startswith("alias/") else ""
        if key.startswith("arn:") and ":alias/" in key:
            alias = "alias/" + key.split(":alias/", 1)[1]
        if not alias or alias.startswith("alias/aws/"):
            continue
        kms = admin_aws(root).client("kms", region)
        if any(a["AliasName"] == alias for a in kms.list_aliases().get("Aliases", [])):
            continue
        key_id = kms.create_key(Description=f"goldsmith twin: {alias} in {region}")["KeyMetadata"][
            "KeyId"
        ]
        kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        made.append(f"{region}:{alias}")
    if made:
        log("twin", "KMS keys made for the images' aliases: " + ", ".join(made))
    return made


def reset(root: Path) -> None:
    """Forget everything the twin holds (instances, AMIs, parameters); seeds come back."""
    req = urllib.request.Request(endpoint(root) + "/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10):
        pass
    shutil.rmtree(state_dir(root) / "disks", ignore_errors=True)
    shutil.rmtree(state_dir(root) / "builders", ignore_errors=True)  # IAM is reset too


def seeded_amis() -> list[dict[str, Any]]:
    """moto's bundled public AMIs plus the Debian seeds."""
    bundled = files("moto") / "ec2" / "resources" / "amis.json.gz"
    amis: list[dict[str, Any]] = json.loads(gzip.decompress(bundled.read_bytes()))
    seeded = {a["ami_id"] for a in DEBIAN_SEED}
    return [a for a in amis if a["ami_id"] not in seeded] + DEBIAN_SEED


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _is_moto(pid: int) -> bool:
    """Whether `pid` is a live moto_server (a stale pid file may name a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return SERVER_MODULE.encode() in cmdline


def _stop_stale(d: Path) -> None:
    """Stop the twin named by the pid file, if any, and forget it."""
    try:
        pid = int((d / "moto.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        pid = 0
    if pid and _is_moto(pid):
        _kill(pid)
    for name in ("moto.pid", "moto.port"):
        (d / name).unlink(missing_ok=True)


def _kill(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (the twin started and stopped by one process).
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that is not our child still "exists"; its /proc status says Z.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
