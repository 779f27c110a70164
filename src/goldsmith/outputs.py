"""Where proven builds live, and how they get there without ever destroying the last one.

    build/<image>/<target>/manifest.json   what was built, from what, proven how
    build/<image>/<target>/junit.xml       the specs and hygiene checks of that build
    build/<image>/<target>/<artifact>      the local target's qcow2 (an AMI lives in AWS)

A build stages its results in its work folder and only when every check passed swaps
the staged folder with `build/<image>/<target>/` in one atomic rename (renameat2
RENAME_EXCHANGE), so the folder always holds one whole proven build: the previous one
until the swap, the new one after it. A per-image lock keeps two builds of one image
from running at once. Unreadable state is reported in one line and treated as "no
previous build", never a traceback.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import tools
from .errors import GoldsmithError
from .paths import build_dir

MANIFEST = "manifest.json"
JUNIT = "junit.xml"


def image_dir(root: Path, image: str) -> Path:
    return build_dir(root) / image


def target_dir(root: Path, image: str, target: str) -> Path:
    return image_dir(root, image) / target


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@dataclass
class Proven:
    """The last proven build of an image for one target, as its folder records it."""

    dir: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.get("fingerprint", ""))

    @property
    def artifact(self) -> Path | None:
        name = self.manifest.get("artifact")
        return self.dir / name if name else None


def read_proven(root: Path, image: str, target: str, *, quiet: bool = False) -> Proven | None:
    """The proven build in build/<image>/<target>/, or None (with one line saying why)."""
    d = target_dir(root, image, target)
    path = d / MANIFEST
    where = path.relative_to(root) if path.is_relative_to(root) else path
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not manifest.get("fingerprint"):
            raise ValueError("no fingerprint in it")
    except (OSError, ValueError) as err:
        if not quiet:
            tools.log("build", f"{where} is unreadable ({err}); treated as no previous build")
        return None
    proven = Proven(d, manifest)
    if proven.artifact is not None and not proven.artifact.is_file():
        if not quiet:
            tools.log(
                "build",
                f"{where} names {proven.artifact.name}, which is missing; "
                "treated as no previous build",
            )
        return None
    return proven


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the kernel cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit(staged: Path, dest: Path) -> None:
    """Make the folder `staged` the new `dest`: one atomic swap, then the old one goes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.rename(staged, dest)
        return
    if not _exchange(staged, dest):
        # Without renameat2: two renames; a crash between them leaves `.previous`, which
        # the next build of this image removes.
        old = dest.with_name(f".{dest.name}.previous")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dest, old)
        os.rename(staged, dest)
        staged = old
    shutil.rmtree(staged, ignore_errors=True)


@contextmanager
def image_lock(root: Path, image: str) -> Iterator[None]:
    """Hold build/<image>/.lock for the length of a build; a second build fails clearly.

    flock goes with the process that holds it, so a killed build never leaves it held.
    """
    d = image_dir(root, image)
    d.mkdir(parents=True, exist_ok=True)
    f = open(d / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise GoldsmithError(
                f"{image}: another build of this image is running ({holder}); "
                "wait for it to finish, or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        for stale in d.glob(".*.previous"):
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        f.close()
