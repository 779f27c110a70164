"""System tools goldsmith needs, installed with apt when one is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import tools
from .errors import GoldsmithError

# command -> Debian package that provides it
TOOLS = {
    "packer": "packer",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "extlinux": "extlinux",
    "parted": "parted",
    "mkfs.ext4": "e2fsprogs",
    "losetup": "mount",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "git": "git",
}
# Files (not commands) that a package provides.
FILES = {"/usr/lib/syslinux/mbr/mbr.bin": "syslinux-common"}


def missing_packages() -> list[str]:
    pkgs = {pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None}
    pkgs |= {pkg for f, pkg in FILES.items() if not Path(f).exists()}
    return sorted(pkgs)


def apt_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure(root: Path) -> None:
    """Install missing system tools with apt; without root, say the exact command instead."""
    pkgs = missing_packages()
    if not pkgs:
        tools.log("setup", "system tools present: " + ", ".join(sorted(set(TOOLS.values()))))
    elif not tools.is_root():
        cmd = " ".join(apt_command(pkgs))
        raise GoldsmithError(f"missing system packages; run as root: apt-get update && {cmd}")
    else:
        tools.log("setup", f"installing with apt: {' '.join(pkgs)}")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        tools.run(["apt-get", "update", "-q"], prefix="apt", env=env)
        tools.run(apt_command(pkgs), prefix="apt", env=env)
