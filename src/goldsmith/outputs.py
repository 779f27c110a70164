"""Where proven builds live, and how they get there without ever destroying the last one.

    build/<image>/<target>/manifest.json   what was built, from what, proven how
    build/<image>/<target>/junit.xml       the specs and hygiene checks of that build
    build/<image>/<target>/<artifact>      the local target's qcow2 (an AMI lives in AWS)
    build/<image>/<target>/inventory.json  what the sealed disk holds (goldsmith.inventory)
    build/<image>/<target>/sbom.cdx.json   its packages as a CycloneDX SBOM
    build/<image>/<target>/cve-report.md   the CVE gate's report (images with a policy)
    build/<image>/<target>/previous/       the proven build this one replaced: its
                                           manifest.json and inventory.json (one generation)

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
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import imagediff, tools
from .errors import GoldsmithError
from .paths import build_dir

MANIFEST = "manifest.json"
JUNIT = "junit.xml"
INVENTORY = "inventory.json"
SBOM = "sbom.cdx.json"
CVE_REPORT = "cve-report.md"
PREVIOUS = "previous"


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


def write_json(path: Path, data: Any) -> str:
    """Write `data` as JSON (atomically); return the sha256 of what was written."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomic(path, text)
    return sha256_text(text)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def keep_previous(dest: Path, staged: Path) -> None:
    """Copy the proven build in `dest` (its manifest and inventory, not its artifact, not
    its own previous/) into `staged`/previous/, so the new build can be compared with it."""
    if not (dest / MANIFEST).is_file():
        return
    keep = staged / PREVIOUS
    keep.mkdir(exist_ok=True)
    for name in (MANIFEST, INVENTORY):
        if (dest / name).is_file():
            shutil.copy2(dest / name, keep / name)


class NothingToCompare(GoldsmithError):
    """A side of a comparison has no build, or a build without an inventory."""


@dataclass
class Recorded:
    """One side of a comparison: an inventory and, when it came from a build, its manifest."""

    label: str  # what a person calls it: "build base-2026...-42 (build/base/local)"
    inventory: dict[str, Any]
    manifest: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        m = self.manifest or {}
        return {
            "label": self.label,
            "build_id": m.get("build_id"),
            "fingerprint": m.get("fingerprint"),
            "recorded": m.get("recorded"),
        }


def _load(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GoldsmithError(f"{path}: cannot read {what}: {err}") from None


def read_recorded(path: Path, *, label: str = "") -> Recorded:
    """The inventory at `path`: an inventory.json, a manifest.json (whose inventory file
    sits next to it, checked against the sha256 it records), or a build folder."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise GoldsmithError(
            f"{path}: no such file (a manifest.json, an inventory.json or a build folder)"
        )
    data = _load(path, "a manifest or an inventory")
    if not isinstance(data, dict):
        raise GoldsmithError(f"{path}: neither a manifest nor an inventory")
    if "packages" in data and "etc" in data and "build_id" not in data:
        return Recorded(label or str(path), data)
    if "build_id" not in data:
        raise GoldsmithError(f"{path}: neither a manifest nor an inventory")
    label = label or f"build {data['build_id']} ({path.parent})"
    entry = data.get("inventory")
    if not entry:
        why = data.get("inventory_reason") or "it was recorded before goldsmith kept inventories"
        raise NothingToCompare(f"{label} has no inventory: {why}")
    inv_path = path.parent / entry["file"]
    if not inv_path.is_file():
        raise NothingToCompare(f"{label}: its inventory {inv_path.name} is missing")
    if sha256_file(inv_path) != entry.get("sha256"):
        raise GoldsmithError(
            f"{label}: {inv_path.name} is not the file its manifest records (another sha256): "
            "it was changed after the build"
        )
    return Recorded(label, _load(inv_path, "the inventory"), data)


def recorded(root: Path, image: str, target: str, *, previous: bool = False) -> Recorded:
    """The proven build of `image` for `target` (with `previous`: the one it replaced)."""
    d = target_dir(root, image, target)
    rel = d.relative_to(root) if d.is_relative_to(root) else d
    if previous:
        d, rel = d / PREVIOUS, rel / PREVIOUS
    if not (d / MANIFEST).is_file():
        if previous:
            raise NothingToCompare(
                f"{image} ({target}) has no previous proven build to compare with ({rel}/ "
                "is kept from the second proven build on); name one with --against"
            )
        raise NothingToCompare(
            f"{image} has no proven {target} build ({rel}/{MANIFEST}): "
            f"./run build --image {image} --target {target}"
        )
    build_id = _load(d / MANIFEST, "the manifest").get("build_id", "?")
    return read_recorded(d / MANIFEST, label=f"build {build_id} ({rel})")


@dataclass
class Comparison:
    """Two recorded builds (or inventories) of an image and what changed between them."""

    image: str
    target: str
    old: Recorded
    new: Recorded
    diff: imagediff.Diff

    def to_markdown(self) -> str:
        title = f"{self.image} ({self.target}): {self.old.label} → {self.new.label}"
        return self.diff.to_markdown(title)

    def to_json(self) -> str:
        data = {
            "image": self.image,
            "target": self.target,
            "old": self.old.describe(),
            "new": self.new.describe(),
            "changed": not self.diff.empty,
            "changes": self.diff.to_dict(),
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def compare(root: Path, image: str, target: str, against: Path | None = None) -> Comparison:
    """The image's proven build against `against` (a manifest, an inventory or a build
    folder), or else against the build it replaced (previous/). NothingToCompare when a
    side is missing or has no inventory."""
    new = recorded(root, image, target)
    old = read_recorded(against) if against else recorded(root, image, target, previous=True)
    return Comparison(image, target, old, new, imagediff.diff(old.inventory, new.inventory))


# --- the build recorded for a git ref --------------------------------------------------------
#
# A proven build's manifest records the commit it was baked from (git.sha). The build "at"
# a ref is the newest build kept here whose commit is the ref's or one before it: images
# are baked on merge and reused while their inputs are unchanged, so a later commit's
# image is the build of an earlier one. Only what this machine (or a CI cache) keeps is
# seen: the proven build and the one it replaced.


def ref_commit(root: Path, ref: str) -> str:
    """The commit `ref` names in the project's git repository."""
    try:
        out = tools.capture(["git", "-C", root, "rev-parse", "--verify", f"{ref}^{{commit}}"])
    except (GoldsmithError, OSError):
        raise GoldsmithError(
            f"git cannot resolve {ref!r} to a commit here (a branch, tag or sha this "
            "clone has; a shallow clone may need `git fetch` of it)"
        ) from None
    return out.strip()


def _before(root: Path, older: str, newer: str) -> int | None:
    """How many commits `older` is behind `newer`, or None when it is not an ancestor
    (or git does not know it: a commit this clone lacks)."""
    try:
        tools.capture(["git", "-C", root, "merge-base", "--is-ancestor", older, newer])
        count = tools.capture(["git", "-C", root, "rev-list", "--count", f"{older}..{newer}"])
    except (GoldsmithError, OSError):
        return None
    return int(count.strip())


def recorded_at_ref(root: Path, image: str, target: str, ref: str) -> Recorded:
    """The build of `image` for `target` that was proven as of git `ref`: of the builds
    kept in build/<image>/<target>/ (the proven one, previous/), the one baked from the
    ref's commit, else the newest baked from an ancestor of it. NothingToCompare when
    none is kept here."""
    commit = ref_commit(root, ref)
    d = target_dir(root, image, target)
    rel = d.relative_to(root) if d.is_relative_to(root) else d
    kept: list[tuple[Path, dict[str, Any]]] = []
    for folder in (d, d / PREVIOUS):
        if (folder / MANIFEST).is_file():
            m = _load(folder / MANIFEST, "the manifest")
            if isinstance(m, dict):
                kept.append((folder, m))
    best: tuple[int, Path, dict[str, Any]] | None = None
    for folder, m in kept:
        sha = str((m.get("git") or {}).get("sha") or "")
        if not sha or sha == "unknown":
            continue
        behind = 0 if sha == commit else _before(root, sha, commit)
        if behind is not None and (best is None or behind < best[0]):
            best = (behind, folder, m)
    if best is None:
        shas = [str((m.get("git") or {}).get("sha") or "unknown")[:12] for _, m in kept]
        held = f"builds of {', '.join(shas)}" if shas else "no proven build"
        raise NothingToCompare(
            f"no build of {image} ({target}) baked from {ref} ({commit[:12]}) or a commit "
            f"before it is recorded here: {rel}/ holds {held} (only the proven build and "
            "the one it replaced are kept, on this machine or in its CI cache)"
        )
    behind, folder, m = best
    sha = str(m["git"]["sha"])
    at = f"{ref}" if behind == 0 else f"{sha[:12]}, {behind} commit(s) before {ref}"
    dirty = ", uncommitted changes" if (m.get("git") or {}).get("dirty") else ""
    where = rel / PREVIOUS if folder.name == PREVIOUS else rel
    label = f"build {m.get('build_id', '?')} at {at}{dirty} ({where})"
    return read_recorded(folder / MANIFEST, label=label)


def compare_at_ref(root: Path, image: str, target: str, ref: str) -> Comparison:
    """The image's proven build against the build that was proven as of git `ref`."""
    old = recorded_at_ref(root, image, target, ref)  # first: a ref git does not know is an error
    new = recorded(root, image, target)
    return Comparison(image, target, old, new, imagediff.diff(old.inventory, new.inventory))


def summary(root: Path, image: str, target: str) -> dict[str, Any] | None:
    """The last proven build in one line's worth of fields, or None."""
    proven = read_proven(root, image, target, quiet=True)
    if proven is None:
        return None
    m = proven.manifest
    return {
        "build_id": m.get("build_id", ""),
        "recorded": m.get("recorded", ""),
        "fingerprint": proven.fingerprint[:12],
        "git": (m.get("git") or {}).get("sha", "")[:12],
        "previous": (proven.dir / PREVIOUS / MANIFEST).is_file(),
    }


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
