"""Look inside what ships: an output disk's root filesystem, mounted read-only.

These machines have no nbd, so a qcow2 cannot be attached directly: it is converted to a
raw copy, whose root partition is reached with `losetup --offset --read-only` (loop
devices get no partition nodes here) and mounted `ro,noload` (not even the journal is
replayed). Everything is undone however the block ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from . import tools
from .errors import GoldsmithError


def root_partition(raw: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the largest Linux filesystem partition of a raw disk."""
    out = tools.capture(["parted", "-s", "-m", str(raw), "unit", "B", "print"])
    best: tuple[int, int] | None = None
    for line in out.splitlines():
        fields = line.rstrip(";").split(":")
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        start, size, fs = int(fields[1].rstrip("B")), int(fields[3].rstrip("B")), fields[4]
        if fs.startswith(("ext", "xfs", "btrfs")) and (best is None or size > best[1]):
            best = (start, size)
    if best is None:
        raise GoldsmithError(f"no Linux root partition found on {raw.name}:\n{out}")
    return best


@contextmanager
def mounted_readonly(image: Path, workdir: Path) -> Iterator[Path]:
    """Mount the root filesystem of `image` (qcow2 or raw) read-only; yield the mount point."""
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sealed-", dir=workdir))
        stack.callback(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        raw = tmp / "disk.raw"
        tools.run(["qemu-img", "convert", "-O", "raw", image, raw], prefix="disk")
        offset, size = root_partition(raw)
        loop = tools.capture(
            [
                "losetup",
                "--find",
                "--show",
                "--read-only",
                "--offset",
                str(offset),
                "--sizelimit",
                str(size),
                str(raw),
            ]
        ).strip()
        stack.callback(tools.run, ["losetup", "-d", loop], prefix="disk", check=False, quiet=True)
        mnt = tmp / "root"
        mnt.mkdir()
        tools.run(["mount", "-o", "ro,noload", loop, mnt], prefix="disk")
        stack.callback(tools.run, ["umount", mnt], prefix="disk", check=False)
        yield mnt


def packages(mnt: Path) -> dict[str, str]:
    """Installed Debian packages and versions of a mounted root filesystem."""
    out = tools.capture(
        [
            "dpkg-query",
            f"--admindir={mnt}/var/lib/dpkg",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\n",
        ]
    )
    result = {}
    for line in out.splitlines():
        status, name, ver = line.split("\t")
        if status.startswith("ii"):
            result[name] = ver
    return result
