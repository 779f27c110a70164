"""Look inside what ships: an output disk's root filesystem, mounted read-only.

These machines have no nbd, so a qcow2 cannot be attached directly: it is converted to a
raw copy, whose root partition is reached with `losetup --offset --read-only` (loop
devices get no partition nodes here) and mounted `ro,noload` (not even the journal is
replayed). Everything is undone however the block ends.
"""

from __future__ import annotations

import shutil
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
def _mounted_raw(raw: Path, mnt: Path, readonly: bool) -> Iterator[Path]:
    """Mount the root partition of the raw disk `raw` at `mnt` (made here)."""
    with ExitStack() as stack:
        offset, size = root_partition(raw)
        ro = ["--read-only"] if readonly else []
        loop = tools.capture(
            ["losetup", "--find", "--show", *ro, "--offset", str(offset), "--sizelimit", str(size)]
            + [str(raw)]
        ).strip()
        stack.callback(tools.run, ["losetup", "-d", loop], prefix="disk", check=False, quiet=True)
        mnt.mkdir()
        tools.run(["mount", "-o", "ro,noload" if readonly else "rw", loop, mnt], prefix="disk")
        stack.callback(tools.run, ["umount", mnt], prefix="disk", check=False)
        yield mnt


@contextmanager
def mounted_readonly(image: Path, workdir: Path) -> Iterator[Path]:
    """Mount the root filesystem of `image` (qcow2 or raw) read-only; yield the mount point."""
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sealed-", dir=workdir))
        stack.callback(lambda: shutil.rmtree(tmp, ignore_errors=True))
        raw = tmp / "disk.raw"
        tools.run(["qemu-img", "convert", "-O", "raw", image, raw], prefix="disk")
        yield stack.enter_context(_mounted_raw(raw, tmp / "root", readonly=True))


CREDENTIAL_UNIT = "goldsmith-build-credential.service"
CREDENTIAL_PROGRAM = "goldsmith-build-credential"


def with_build_access(image: Path, raw: Path) -> Path:
    """A raw copy of the sealed `image` at `raw` that a build key can log in to again.

    A sealed image carries no build credential unit (the seal removes it), so nothing can
    log in to a machine made from it with a key passed by SMBIOS. To boot one for a test,
    or to build on top of it, the unit goes back into a copy; `image` is not touched.
    """
    tools.run(["qemu-img", "convert", "-O", "raw", image, raw], prefix="disk")
    data = Path(__file__).parent / "data"
    with tempfile.TemporaryDirectory(prefix="access-", dir=raw.parent) as tmp:
        with _mounted_raw(raw, Path(tmp) / "root", readonly=False) as mnt:
            program = mnt / "usr/local/sbin" / CREDENTIAL_PROGRAM
            shutil.copy(data / CREDENTIAL_PROGRAM, program)
            program.chmod(0o755)
            unit = mnt / "etc/systemd/system" / CREDENTIAL_UNIT
            shutil.copy(data / CREDENTIAL_UNIT, unit)
            wants = mnt / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(exist_ok=True)
            (wants / CREDENTIAL_UNIT).unlink(missing_ok=True)
            (wants / CREDENTIAL_UNIT).symlink_to(f"/etc/systemd/system/{CREDENTIAL_UNIT}")
    return raw


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
