"""Base images: where every image starts.

A `debootstrap` base is built here from Debian's packages and boots on its own, with
its own boot loader, as a cloud image does. The dedicated image tools need
device-mapper or vfat, which these machines' kernels lack; this is the recipe that
works everywhere: debootstrap into a folder, a raw disk with an msdos partition table,
the partition reached through an offset loop device, ext4 without the features
syslinux cannot read, extlinux and syslinux's MBR.

A `cloud-image` base is a distribution's cloud image: Packer downloads it and checks
its checksum; nothing is built here.

Bases are cached by the hash of their definition (catalogue entry, this recipe and the
files it installs): a second `./run base` finds the cache and does nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from . import tools
from .catalogue import Base
from .errors import GoldsmithError
from .paths import cache_dir

DATA = Path(__file__).parent / "data"
# Packages the base needs to be a machine Packer and Ansible can reach; nothing else.
PACKAGES = [
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "systemd-resolved",
    "openssh-server",
    "python3",
    "sudo",
    "ca-certificates",
]
# The files of DATA that the base installs (the seal is not one: it runs at each build).
BASE_FILES = (
    "10-dhcp.network",
    "goldsmith-build-credential",
    "goldsmith-build-credential.service",
    "goldsmith-hostkeys.service",
)
# Bump when the recipe changes in a way the hash of the files below would not show.
RECIPE_VERSION = "1"
PARTITION_OFFSET = 1024 * 1024  # first partition starts at 1 MiB
SYSTEM_TOOLS = ["debootstrap", "parted", "losetup", "mkfs.ext4", "extlinux", "qemu-img"]
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")


def definition_hash(base: Base) -> str:
    """Hash of everything that decides what a built base contains."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(base), sort_keys=True, default=str).encode())
    h.update(RECIPE_VERSION.encode())
    h.update(" ".join(PACKAGES).encode())
    h.update(Path(__file__).read_bytes())
    for name in BASE_FILES:
        h.update(name.encode())
        h.update((DATA / name).read_bytes())
    return h.hexdigest()


def image_path(base: Base, root: Path) -> Path:
    """Where the built base for this definition lives (whether it exists yet or not)."""
    return cache_dir(root) / "bases" / f"{base.name}-{definition_hash(base)[:16]}" / "base.qcow2"


def ensure(base: Base, root: Path) -> Path:
    """Return the path of the built base, building it first if this definition has none."""
    if base.kind != "debootstrap":
        raise GoldsmithError(
            f"base {base.name!r} is a {base.kind}: Packer fetches it, nothing to build"
        )
    out = image_path(base, root)
    if out.is_file():
        tools.log("base", f"{base.name} is up to date ({out.parent.name}); nothing to build")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two builds that start together wait for one base build instead of racing.
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            make(base, out)
    return out


def make(base: Base, out: Path) -> None:
    """Build a bootable Debian disk at `out` (qcow2). Needs root (debootstrap, loop devices)."""
    if not tools.is_root():
        raise GoldsmithError("building a base image needs root (debootstrap, loop devices, mount)")
    tools.require(*SYSTEM_TOOLS)
    if not MBR_BIN.is_file():
        raise GoldsmithError(f"{MBR_BIN} is missing; run `./run setup` (package syslinux-common)")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="base-", dir=out.parent))
    try:
        raw = work / "disk.raw"
        with ExitStack() as mounts:  # unmounted and detached before the disk is converted
            rootfs = work / "rootfs"
            _debootstrap(base, rootfs, mounts)
            _make_disk(base, rootfs, raw, mounts)
        tmp_out = out.with_suffix(".qcow2.part")
        tools.run(["qemu-img", "convert", "-c", "-O", "qcow2", raw, tmp_out], prefix="base")
        tmp_out.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tools.log("base", f"built {out.parent.name} in {time.monotonic() - started:.0f}s")


def _chroot(rootfs: Path, *cmd: str) -> None:
    env = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    tools.run(["chroot", rootfs, *cmd], prefix="base", env=env)


def _debootstrap(base: Base, rootfs: Path, stack: ExitStack) -> None:
    tools.log("base", f"debootstrap {base.suite} from {base.mirror}")
    tools.run(
        ["debootstrap", "--variant=minbase", base.suite, rootfs, base.mirror],
        prefix="debootstrap",
    )
    for fs, target in (("proc", "proc"), ("sysfs", "sys")):
        tools.run(["mount", "-t", fs, fs, rootfs / target], prefix="base")
        stack.callback(tools.run, ["umount", "-l", rootfs / target], prefix="base", check=False)
    # Keep the chroot's apt from starting services while packages install.
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _chroot(rootfs, "apt-get", "install", "-y", "--no-install-recommends", *PACKAGES)
    policy.unlink()

    etc = rootfs / "etc"
    (etc / "hostname").write_text("goldsmith\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 goldsmith\n::1 localhost\n")
    (etc / "systemd/network").mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "10-dhcp.network", etc / "systemd/network/10-dhcp.network")
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    sbin = rootfs / "usr/local/sbin"
    shutil.copy(DATA / "goldsmith-build-credential", sbin / "goldsmith-build-credential")
    (sbin / "goldsmith-build-credential").chmod(0o755)
    for unit in ("goldsmith-build-credential.service", "goldsmith-hostkeys.service"):
        shutil.copy(DATA / unit, etc / "systemd/system" / unit)
    _chroot(
        rootfs,
        "systemctl",
        "enable",
        "systemd-networkd",
        "systemd-resolved",
        "ssh",
        "goldsmith-build-credential",
        "goldsmith-hostkeys",
    )
    # The console on the serial port too, so a boot can be read from a log.
    grub_less_cmdline = "console=tty0 console=ttyS0,115200 net.ifnames=1"
    (rootfs / "boot/goldsmith-cmdline").write_text(grub_less_cmdline + "\n")
    # Seal the base as an image is sealed: no identity, no keys, no caches.
    _chroot(rootfs, "apt-get", "clean")
    for p in rootfs.glob("etc/ssh/ssh_host_*"):
        p.unlink()
    for p in (rootfs / "var/lib/apt/lists").glob("*_*"):
        p.unlink()
    (etc / "machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def _make_disk(base: Base, rootfs: Path, raw: Path, stack: ExitStack) -> None:
    tools.run(["truncate", "-s", base.disk_size, raw], prefix="base")
    tools.run(
        [
            "parted",
            "-s",
            raw,
            "mklabel",
            "msdos",
            "mkpart",
            "primary",
            "ext4",
            "1MiB",
            "100%",
            "set",
            "1",
            "boot",
            "on",
        ],
        prefix="parted",
    )
    loop = tools.capture(
        ["losetup", "--find", "--show", "--offset", str(PARTITION_OFFSET), raw]
    ).strip()
    stack.callback(tools.run, ["losetup", "-d", loop], prefix="base", check=False)
    # syslinux cannot read ext4 with 64bit or metadata_csum.
    tools.run(["mkfs.ext4", "-q", "-L", "root", "-O", "^64bit,^metadata_csum", loop], prefix="mkfs")
    uuid = tools.capture(["blkid", "-s", "UUID", "-o", "value", loop]).strip()
    mnt = raw.parent / "mnt"
    mnt.mkdir()
    tools.run(["mount", loop, mnt], prefix="base")
    stack.callback(tools.run, ["umount", mnt], prefix="base", check=False)
    # proc/sys are still mounted inside rootfs: copy one filesystem only.
    tools.run(["cp", "-a", "--one-file-system", f"{rootfs}/.", mnt], prefix="base")
    (mnt / "etc/fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
    cmdline = (mnt / "boot/goldsmith-cmdline").read_text().strip()
    (mnt / "boot/goldsmith-cmdline").unlink()
    kernel = _newest(mnt, "boot/vmlinuz-*")
    initrd = _newest(mnt, "boot/initrd.img-*")
    extlinux = mnt / "boot/extlinux"
    extlinux.mkdir(parents=True)
    (extlinux / "extlinux.conf").write_text(
        "DEFAULT debian\nTIMEOUT 0\nPROMPT 0\n"
        "LABEL debian\n"
        f"  LINUX /{kernel}\n"
        f"  INITRD /{initrd}\n"
        f"  APPEND root=UUID={uuid} ro {cmdline}\n"
    )
    tools.run(["extlinux", "--install", extlinux], prefix="extlinux")
    tools.run(["sync"], prefix="base")
    with open(raw, "r+b") as disk:
        disk.write(MBR_BIN.read_bytes()[:440])


def _newest(root: Path, pattern: str) -> str:
    found = sorted(root.glob(pattern))
    if not found:
        raise GoldsmithError(f"the base has no {pattern}: the kernel package did not install")
    return str(found[-1].relative_to(root))
