"""Local virtual machines: QEMU, its own boot loader, user-mode network, SSH on loopback.

One mechanism serves the build's stand-in machines, the dev loop and the tests: a
copy-on-write overlay over an image, a per-VM SSH key handed to the guest as an SMBIOS
OEM string (the image's goldsmith-build-credential unit turns it into the `goldsmith`
user), and ports forwarded to 127.0.0.1. State lives in .cache/vms/<name>/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import tools
from .errors import GoldsmithError
from .paths import cache_dir, project_root

QEMU = "qemu-system-x86_64"
# The user a build or dev VM logs in as, unless its target names another (an AMI's own
# user on aws and twin). The guest's credential unit creates it; the seal removes it.
BUILD_USER = "goldsmith"
SSH_OPTIONS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "ConnectTimeout=5",
]


@dataclass
class VM:
    """A running (or recorded) VM: what is needed to reach it and to stop it."""

    name: str
    dir: Path
    image: str
    ssh_port: int
    forwards: dict[int, int] = field(default_factory=dict)  # guest port -> host port
    pid: int = 0
    user: str = BUILD_USER

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.ssh_port}"

    def running(self) -> bool:
        return self.pid > 0 and _alive(self.pid)

    def ssh_argv(self, *command: str) -> list[str]:
        return [
            "ssh",
            *SSH_OPTIONS,
            "-i",
            str(self.key),
            "-p",
            str(self.ssh_port),
            f"{self.user}@127.0.0.1",
            *command,
        ]

    def ssh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run argv on the VM, each word as given (ssh would otherwise re-split them)."""
        return subprocess.run(
            self.ssh_argv(shlex.join(argv)),
            capture_output=True,
            text=True,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def save(self) -> None:
        data = asdict(self)
        data["dir"] = str(self.dir)
        (self.dir / "vm.json").write_text(json.dumps(data, indent=2))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vms_dir(root: Path) -> Path:
    return cache_dir(root) / "vms"


def make_key(path: Path) -> str:
    """A fresh ed25519 key for one build or one VM; returns the public key line."""
    path.unlink(missing_ok=True)
    tools.capture(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "goldsmith-build", "-f", str(path)]
    )
    return Path(f"{path}.pub").read_text().strip()


def overlay_on(image: Path, overlay: Path) -> None:
    """A copy-on-write qcow2 at `overlay` over `image` (qcow2 or raw), which stays untouched."""
    info = json.loads(tools.capture(["qemu-img", "info", "--output=json", str(image)]))
    tools.capture(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"]]
        + ["-b", str(image.resolve()), str(overlay)]
    )


def smbios_credential(public_key: str, user: str = BUILD_USER, image_user: bool = False) -> str:
    """The -smbios value that hands `user` and `public_key` to the guest's credential unit.

    OEM strings in one type 11 entry; a comma inside a value is doubled for QEMU.
    `image_user`: the user stands for the image's own (an AMI's default user, which
    exists before any build), so the seal keeps it; else the seal deletes it.
    """
    kind, blob = public_key.split()[:2]
    values = [f"goldsmith.build_user={user}", f"goldsmith.build_key={kind} {blob}"]
    if image_user:
        values.append("goldsmith.build_user_kept=1")
    return "type=11," + ",".join("value=" + v.replace(",", ",,") for v in values)


_ACCEL: str | None = None


def accelerator(
    root: Path | None = None, probe_image: Path | None = None, forced: str = "auto"
) -> str:
    """'kvm' if KVM really runs a guest here, else 'tcg'.

    /dev/kvm existing is not enough: nested KVM on these machines starts, then stops the
    guest with "KVM internal error". So boot the probe image briefly under KVM and look
    for the kernel on the serial console. The answer is cached per machine (qemu and
    host kernel versions). `forced` (the `accelerator` setting) kvm or tcg skips the probe.
    """
    global _ACCEL
    if forced in ("kvm", "tcg"):
        return forced
    if _ACCEL:
        return _ACCEL
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _ACCEL = "tcg"
        return _ACCEL
    root = root or project_root()
    version = tools.capture([QEMU, "--version"]).splitlines()[0] + " " + os.uname().release
    cache = cache_dir(root) / "accel.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("version") == version:
            _ACCEL = saved["accel"]
            return _ACCEL
    except (OSError, ValueError, KeyError):
        pass
    if probe_image is None:
        return "tcg"  # nothing to probe with yet; do not cache
    _ACCEL = _probe_kvm(probe_image)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"version": version, "accel": _ACCEL}))
    tools.log(
        "vm", f"accelerator: {_ACCEL} (KVM {'works' if _ACCEL == 'kvm' else 'does not work'} here)"
    )
    return _ACCEL


def _probe_kvm(image: Path, seconds: float = 20) -> str:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="goldsmith-kvm-") as tmp:
        overlay = Path(tmp) / "probe.qcow2"
        overlay_on(image, overlay)
        serial = Path(tmp) / "serial.log"
        proc = subprocess.Popen(
            [
                QEMU,
                "-accel",
                "kvm",
                "-machine",
                "q35",
                "-m",
                "512",
                "-display",
                "none",
                "-drive",
                f"file={overlay},if=virtio",
                "-serial",
                f"file:{serial}",
                "-nic",
                "none",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and proc.poll() is None:
                text = serial.read_text(errors="replace") if serial.exists() else ""
                if "Linux version" in text:
                    return "kvm"
                time.sleep(0.5)
            return "tcg"
        finally:
            tools.stop_group(proc, grace=2)


def up(
    name: str,
    image: Path,
    *,
    root: Path | None = None,
    forward: tuple[int, ...] = (),
    memory: str = "2048",
    timeout: float = 300,
    key: Path | None = None,
    user: str = BUILD_USER,
    image_user: bool = False,
) -> VM:
    """Boot `name` from `image` (an overlay; the image is never written) and wait for SSH.

    `key`: an existing private key (its public half beside it, `<key>.pub`) to hand the
    guest instead of a fresh one, e.g. the build's key, which an AWS twin build also
    imports as the EC2 key pair. It is copied into the VM's folder. `user`: who logs in
    with it (the guest's credential unit creates that user if it does not exist);
    `image_user`: see smbios_credential.
    """
    root = root or project_root()
    existing = status(name, root)
    if existing and existing.running():
        tools.log("vm", f"{name} is already up: {existing.url()}")
        return existing
    if not image.is_file():
        raise GoldsmithError(f"image {image} does not exist")
    tools.require(QEMU, "qemu-img", "ssh", "ssh-keygen")
    vdir = vms_dir(root) / name
    shutil.rmtree(vdir, ignore_errors=True)
    vdir.mkdir(parents=True)
    vm = VM(name=name, dir=vdir, image=str(image.resolve()), ssh_port=free_port(), user=user)
    vm.forwards = {22: vm.ssh_port, **{p: free_port() for p in forward}}
    if key is None:
        public = make_key(vm.key)
    else:
        shutil.copy(key, vm.key)
        shutil.copy(f"{key}.pub", f"{vm.key}.pub")
        vm.key.chmod(0o600)
        public = Path(f"{vm.key}.pub").read_text().strip()
    overlay = vdir / "disk.qcow2"
    overlay_on(image, overlay)
    accel = accelerator(root, image)
    fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in vm.forwards.items())
    argv = [
        QEMU,
        "-name",
        f"goldsmith-{name}",
        "-accel",
        accel,
        "-machine",
        "q35",
        "-m",
        memory,
        "-smp",
        "2",
        "-display",
        "none",
        "-daemonize",
        "-pidfile",
        str(vdir / "qemu.pid"),
        "-drive",
        f"file={overlay},if=virtio",
        "-nic",
        f"user,model=virtio-net-pci,{fwd}",
        "-serial",
        f"file:{vdir / 'serial.log'}",
        "-smbios",
        smbios_credential(public, user, image_user),
    ]
    if accel == "tcg":
        argv[argv.index("-accel") + 1] = "tcg,thread=multi"
    tools.log("vm", f"booting {name} from {image.name} ({accel})")
    tools.capture(argv)
    vm.pid = int((vdir / "qemu.pid").read_text().strip())
    vm.save()
    try:
        wait_ssh(vm, timeout)
    except BaseException:
        down(name, root)
        raise
    tools.log("vm", f"{name} is up: {vm.url()} (key {vm.key.relative_to(root)})")
    return vm


def wait_ssh(vm: VM, timeout: float = 300) -> None:
    """Wait until the build user can run a command over SSH."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not vm.running():
            raise GoldsmithError(f"VM {vm.name} stopped while booting; see {vm.dir / 'serial.log'}")
        if vm.ssh("true", check=False).returncode == 0:
            return
        time.sleep(2)
    raise GoldsmithError(
        f"VM {vm.name} did not answer SSH within {timeout:.0f}s; see {vm.dir / 'serial.log'}"
    )


def status(name: str, root: Path | None = None) -> VM | None:
    root = root or project_root()
    f = vms_dir(root) / name / "vm.json"
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    data["dir"] = Path(data["dir"])
    data["forwards"] = {int(k): v for k, v in data["forwards"].items()}
    return VM(**data)


def down(name: str, root: Path | None = None) -> bool:
    """Stop `name` and remove its state. True if there was something to stop."""
    root = root or project_root()
    vm = status(name, root)
    vdir = vms_dir(root) / name
    if vm is None and not vdir.exists():
        return False
    if vm and vm.running():
        os.kill(vm.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while vm.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        if vm.running():
            os.kill(vm.pid, signal.SIGKILL)
    shutil.rmtree(vdir, ignore_errors=True)
    tools.log("vm", f"{name} is down")
    return True


@contextmanager
def booted(name: str, image: Path, **kw):
    """A VM for the length of a `with` block; stopped and removed however the block ends."""
    root = kw.get("root") or project_root()
    try:
        yield up(name, image, **kw)
    finally:
        down(name, root)


def main(argv: list[str] | None = None) -> int:
    """Small CLI for people and helpers: up/down/status of a named VM."""
    p = argparse.ArgumentParser(prog="python -m goldsmith.vm")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="boot a VM from an image (default: the built debian12 base)")
    u.add_argument("--name", default="dev")
    u.add_argument("--image", type=Path, help="qcow2 to boot (default: the newest built base)")
    u.add_argument(
        "--forward",
        type=int,
        action="append",
        default=[],
        help="guest TCP port to forward to loopback (repeatable)",
    )
    for c in ("down", "status"):
        sub.add_parser(c).add_argument("--name", default="dev")
    args = p.parse_args(argv)
    root = project_root()
    try:
        if args.cmd == "up":
            image = args.image or _newest_base(root)
            vm = up(args.name, image, root=root, forward=tuple(args.forward))
            print(
                json.dumps(
                    {
                        "url": vm.url(),
                        "port": vm.ssh_port,
                        "key": str(vm.key),
                        "user": vm.user,
                        "forwards": vm.forwards,
                    }
                )
            )
        elif args.cmd == "down":
            down(args.name, root)
        else:
            vm = status(args.name, root)
            print(
                json.dumps({"running": bool(vm and vm.running()), "url": vm.url() if vm else None})
            )
    except GoldsmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _newest_base(root: Path) -> Path:
    found = sorted(
        (cache_dir(root) / "bases").glob("*/base.qcow2"), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise GoldsmithError("no base image built yet: run `./run base`")
    return found[-1]


if __name__ == "__main__":
    sys.exit(main())
