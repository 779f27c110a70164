"""A pull request's validation bake: what the change does to each image it rebakes.

`./run report --bake` (goldsmith.report writes the result). For each image that the plan,
for the report's target, says would rebake:

    new        a local build of the checkout as it is (pipeline.build, target local): its
               specs run inside the bake, as always, so "specs passed" is a fact
    reference  a local build of the commit the target's last proven build was baked from
               (an AMI's goldsmith:git-sha tag, a local manifest's git.sha), or of
               --base-ref where there is none; baked in a temporary git worktree of that
               commit, unless a proven local build with its fingerprint is kept here (a
               fingerprint does not depend on the folder), and its proven parent is
               borrowed the same way, so an unchanged parent is not baked twice
    comparison the two inventories (imagediff, as `./run diff` compares them)

Both sides are local bakes from the same base: a pull request's build makes no AMI (it
has no right to; a local bake needs no cloud permission), and an AMI made from Debian's
own AMI would differ from a local bake by the bases alone. Both are made by this
checkout's goldsmith, so the comparison shows what the change's roles, playbooks,
catalogue entry, specs and Packer templates do to the image. An image without the local
target cannot be baked for validation; its section says so.

What a run makes besides the checkout's own local builds is temporary: one work folder,
build/.work-validate-<time>-<pid>/, holds the worktrees (each sharing the project's
.cache, so the base disk is not built again) and goes at the end, on a failure and on
Ctrl-C or SIGTERM, with git's records of the worktrees. A run killed outright leaves the
folder to the next build's sweep (its owner is dead; its qemu and mounts go with it), and
the next validation run prunes git's record of a worktree that is gone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import imagediff, outputs, pipeline, targets, tools, workdir
from .ansible_env import INSTALLED_DIR
from .catalogue import Catalogue, load
from .errors import GoldsmithError
from .paths import cache_dir
from .pipeline import Interrupted
from .settings import Settings

LOCAL = "local"
PREFIX = "validate-"  # the work folder: build/.work-validate-<time>-<pid>/

# pipeline.build's shape: (root, image, target, *, settings=...) -> the manifest's path.
Bake = Callable[..., Path]


def git(where: Path, *args: str, check: bool = True) -> str:
    return tools.capture(["git", "-C", str(where), *args], check=check).strip()


def has_commit(root: Path, sha: str) -> bool:
    try:
        git(root, "cat-file", "-e", f"{sha}^{{commit}}")
    except (GoldsmithError, OSError):
        return False
    return True


# --- the reference: which commit a rebaked image is compared with ----------------------------


@dataclass
class Reference:
    """The commit an image's reference bake is made from, and what it stands for."""

    commit: str
    source: str  # "published": the last proven build's commit; "base-ref": --base-ref's
    stands_for: dict[str, Any]  # target, build_id, ami, region, label; or ref
    note: str = ""  # why --base-ref was taken, when the plan's build could not be

    def describe(self) -> str:
        """In words: 'the commit ami-1 in eu-west-1 (build web-…) was baked from'."""
        s = self.stands_for
        if self.source == "base-ref":
            return f"--base-ref {s['ref']}"
        what = s.get("label") or f"build {s.get('build_id')}"
        if s.get("build_id") and str(s["build_id"]) not in str(what):
            what += f" (build {s['build_id']})"
        return f"the commit the last proven {s.get('target')} build, {what}, was baked from"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"describe": self.describe()}


def choose_reference(
    root: Path, row: dict[str, Any], base_ref: str | None, base_commit: str | None
) -> Reference | None:
    """The reference of the plan's `row` (an image and a target that would rebake): the
    commit its last proven build was baked from, else `base_ref` (`base_commit`, the
    commit it names); None when there is neither (a new image, no --base-ref).

    A last proven build whose commit cannot be baked again (recorded outside git, baked
    with uncommitted changes, a commit this clone lacks) is an error unless --base-ref
    is given, which is then taken instead, with a note saying why."""
    image, target = row["image"], row["target"]
    last = row.get("last_build") or None
    problem = ""
    if last:
        gitinfo = last.get("git") or {}
        sha = str(gitinfo.get("sha") or "")
        label = row.get("last") or last.get("build_id")
        what = f"{image} ({target}): its last proven build, {label},"
        if not sha or sha == "unknown":
            problem = f"{what} records no commit (it was baked outside a git checkout)"
        elif gitinfo.get("dirty"):
            problem = (
                f"{what} was baked from {sha[:12]} with uncommitted changes, which that "
                "commit does not reproduce"
            )
        elif not has_commit(root, sha):
            problem = (
                f"{what} was baked from {sha[:12]}, which this clone does not have (a shallow "
                "clone: fetch that commit, or clone with the history)"
            )
        else:
            stands_for = {"target": target, "label": row.get("last")} | {
                k: last.get(k) for k in ("build_id", "ami", "region")
            }
            return Reference(sha, "published", stands_for)
    if base_ref and base_commit:
        note = f"{problem}; --base-ref {base_ref} is baked instead" if problem else ""
        if not last:
            note = f"{image} has no proven {target} build; --base-ref {base_ref} is baked instead"
        return Reference(base_commit, "base-ref", {"ref": base_ref}, note)
    if problem:
        raise GoldsmithError(
            f"{problem}: give --base-ref REF (e.g. origin/main, the merge base) to compare "
            "with a bake of that commit instead"
        )
    return None


# --- worktrees -------------------------------------------------------------------------------


def _toplevel(root: Path) -> tuple[Path, Path]:
    """The git repository's top folder and the project's place in it."""
    try:
        top = Path(git(root, "rev-parse", "--show-toplevel")).resolve()
    except (GoldsmithError, OSError):
        raise GoldsmithError(
            f"{root} is not in a git checkout: a validation bake's reference is baked from "
            "a commit (git worktree)"
        ) from None
    return top, root.resolve().relative_to(top)


class Worktrees:
    """Detached git worktrees of commits in `folder`, one per commit, each a project that
    shares this one's .cache (base disks) and, when requirements.lock is the same, its
    installed third-party content. `close()` removes them all and git's records of them."""

    def __init__(self, root: Path, folder: Path) -> None:
        self.root = root
        self.folder = folder
        self.top, self.prefix = _toplevel(root)
        self.made: dict[str, Path] = {}  # commit -> the worktree's folder
        # A run killed outright left git a record of a worktree whose folder is gone.
        git(self.top, "worktree", "prune", check=False)

    def project(self, commit: str) -> Path:
        """The project folder in the worktree of `commit` (made on first use)."""
        if commit not in self.made:
            where = self.folder / f"ref-{commit[:12]}"
            self.made[commit] = where  # before `add`: close() removes a half-made one too
            tools.log("validate", f"git worktree of {commit[:12]} (removed at the end)")
            git(self.top, "worktree", "add", "--detach", "--quiet", str(where), commit)
            self._share(where / self.prefix)
        return self.made[commit] / self.prefix

    def _share(self, project: Path) -> None:
        cache = cache_dir(self.root)
        cache.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(project / cache.name):
            (project / cache.name).symlink_to(cache)
        lock = "requirements.lock"
        mine, theirs = self.root / lock, project / lock
        same = mine.is_file() and theirs.is_file() and mine.read_bytes() == theirs.read_bytes()
        installed = self.root / INSTALLED_DIR
        if same and installed.is_dir() and not os.path.lexists(project / INSTALLED_DIR):
            (project / INSTALLED_DIR).symlink_to(installed)

    def close(self) -> list[str]:
        """Remove every worktree (also one with changes, or half made); say what could not be."""
        left = []
        for commit, where in self.made.items():
            git(self.top, "worktree", "remove", "--force", "--force", str(where), check=False)
            shutil.rmtree(where, ignore_errors=True)
            if where.exists():
                left.append(f"worktree of {commit[:12]} ({where})")
        git(self.top, "worktree", "prune", check=False)
        self.made.clear()
        return left


# --- one run ---------------------------------------------------------------------------------


@dataclass
class Validation:
    """One rebaked image (for one report row): its validation bake and its reference."""

    image: str
    target: str  # the report row's target; both bakes are local
    reference: Reference | None = None
    new: outputs.Recorded | None = None
    old: outputs.Recorded | None = None
    how: str = ""  # how the reference bake was had
    same_as_new: bool = False  # the reference's inputs are the change's: its bake is both
    none: str = ""  # why the image is not baked for validation
    missing: str = ""  # why there is nothing to compare with
    errors: list[str] = field(default_factory=list)

    @property
    def comparison(self) -> outputs.Comparison | None:
        if self.old is None or self.new is None:
            return None
        diff = imagediff.diff(self.old.inventory, self.new.inventory)
        return outputs.Comparison(self.image, LOCAL, self.old, self.new, diff)

    def to_dict(self) -> dict[str, Any]:
        if self.none:
            return {"none": self.none}
        m = (self.new.manifest if self.new else None) or {}
        data: dict[str, Any] = {
            "new": self.new.describe() | {"git": m.get("git"), "specs": m.get("specs")}
            if self.new
            else None,
            "reference": self.reference.to_dict() if self.reference else None,
            "reference_build": self.old.describe() | {"how": self.how} if self.old else None,
            "errors": self.errors,
        }
        result = self.comparison
        if result is not None:
            data |= {"changed": not result.diff.empty, "changes": result.diff.to_dict()}
        else:
            data["missing"] = self.missing or "; ".join(self.errors) or "no reference"
        return data


def _fingerprint(project: Path, image: str, settings: Settings, catalogue: Catalogue | None):
    """The plan of `image` for local in `project` and its fingerprint (nothing is baked)."""
    p = pipeline.plan(project, image, LOCAL, settings, catalogue)
    t = targets.get(LOCAL)
    return p, pipeline.decide(p, t, pipeline.source_of(p, t, prepare=False)).fingerprint


def kept_build(root: Path, image: str, fingerprint: str) -> Path | None:
    """A local build of `image` kept here with `fingerprint` and an inventory: the proven
    one, or the one it replaced (previous/: its manifest and inventory)."""
    d = outputs.target_dir(root, image, LOCAL)
    for folder in (d, d / outputs.PREVIOUS):
        try:
            m = json.loads((folder / outputs.MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("fingerprint") == fingerprint and m.get("inventory"):
            return folder
    return None


def borrow_parents(root: Path, project: Path, plan: Any) -> list[str]:
    """Give the worktree `project` the proven local builds of `plan`'s parents that this
    project holds with the same fingerprint (hard links: a parent's disk is only read),
    so the reference bake reuses them instead of baking them again. Returns their names."""
    t = targets.get(LOCAL)
    borrowed = []
    for layer in plan.layers[:-1]:
        name = layer.image.name
        fp = pipeline.decide(layer, t, pipeline.source_of(layer, t, prepare=False)).fingerprint
        proven = outputs.read_proven(root, name, LOCAL, quiet=True)
        dest = outputs.target_dir(project, name, LOCAL)
        if proven is None or proven.fingerprint != fp or dest.exists():
            continue
        shutil.copytree(
            proven.dir,
            dest,
            copy_function=_link_or_copy,
            ignore=lambda folder, names: [n for n in names if n == ".lock"],
        )
        borrowed.append(f"{name} (build {proven.manifest.get('build_id')})")
    return borrowed


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(
    root: Path,
    rows: list[dict[str, Any]],
    *,
    settings: Settings | None = None,
    base_ref: str | None = None,
    bake: Bake | None = None,
) -> dict[tuple[str, str], Validation]:
    """Validation bakes for the plan `rows` that would rebake, keyed (image, target).

    Everything that can be wrong is checked before the first bake: --base-ref, each
    reference's commit, the images' local target, their place in the reference's
    images.yml. A bake that fails is recorded in its Validation (the others go on);
    Ctrl-C or SIGTERM stops the run after everything temporary is removed."""
    settings = settings or Settings()
    bake = bake or pipeline.build
    catalogue = load(root / "images.yml")
    base_commit = outputs.ref_commit(root, base_ref) if base_ref else None
    found: dict[tuple[str, str], Validation] = {}
    wanted = [r for r in rows if r.get("action") != "reuse"]
    for row in wanted:
        image, target = row["image"], row["target"]
        v = Validation(image, target)
        found[(image, target)] = v
        img = catalogue.image(image)
        if LOCAL not in img.targets:
            v.none = (
                f"cannot be baked for validation: images.{image}.targets lists "
                f"{', '.join(img.targets)}, not local (a validation bake is local)"
            )
            continue
        v.reference = choose_reference(root, row, base_ref, base_commit)
        if v.reference is None:
            v.missing = (
                f"{image} has no proven {target} build to compare with (a new image); "
                "--base-ref REF compares with a bake of that commit"
            )
    todo = [v for v in found.values() if not v.none]
    if not todo:
        return found
    build_id = f"{PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    with pipeline.terminate_as_interrupt():
        work = workdir.create(root, build_id, kind="validate")
        trees: Worktrees | None = None
        try:
            if any(v.reference for v in todo):
                trees = Worktrees(root, work.path)
                _references(root, todo, trees, settings, bake)
            _new_bakes(root, todo, settings, bake)
        finally:
            with tools.shielded():
                left = trees.close() if trees is not None else []
                workdir.release(work.path)
                shutil.rmtree(work.path, ignore_errors=True)
                if work.path.exists():
                    left.append(f"work folder {work.path}")
                for item in left:
                    tools.log("cleanup", f"could not remove: {item}")
    return found


def _references(
    root: Path, todo: list[Validation], trees: Worktrees, settings: Settings, bake: Bake
) -> None:
    """Each reference: checked (early, before any bake), then had: the checkout's own
    bake when the inputs are the same, a build kept here with its fingerprint, or a bake
    in the worktree of its commit."""
    # The cve_tracker setting names a file of this project (CI downloads it; a worktree
    # has only what the commit holds).
    tracker = str(root / settings.cve_tracker) if settings.cve_tracker else ""
    in_tree = dataclasses.replace(settings, cve_tracker=tracker)
    plans: dict[tuple[str, str], tuple[Any, str]] = {}
    for v in todo:
        ref = v.reference
        if ref is None:
            continue
        project = trees.project(ref.commit)
        try:
            theirs = load(project / "images.yml")
        except GoldsmithError as err:
            raise GoldsmithError(
                f"images.yml at {ref.commit[:12]} ({ref.describe()}) does not load: {err}"
            ) from None
        if v.image not in theirs.images or LOCAL not in theirs.images[v.image].targets:
            why = "no image of that name" if v.image not in theirs.images else "no local target"
            v.missing = (
                f"images.yml at {ref.commit[:12]} ({ref.describe()}) has {why}: nothing to "
                "compare with"
            )
            continue
        key = (ref.commit, v.image)
        if key not in plans:
            plans[key] = _fingerprint(project, v.image, in_tree, theirs)
    new_fps = {v.image: _fingerprint(root, v.image, settings, None)[1] for v in todo}
    done: dict[tuple[str, str], _Had] = {}
    for v in todo:
        ref = v.reference
        if ref is None or v.missing:
            continue
        key = (ref.commit, v.image)
        if key not in done:
            done[key] = _reference_build(root, v, plans[key], in_tree, bake, new_fps)
        had = done[key]
        v.old, v.how, v.same_as_new = had.recorded, had.how, had.same_as_new
        v.errors += [had.error] if had.error else []


@dataclass
class _Had:
    """How one reference (an image at a commit) was had; shared by the rows it serves."""

    recorded: outputs.Recorded | None = None
    how: str = ""
    same_as_new: bool = False  # the change's own bake is the reference (_new_bakes)
    error: str = ""


def _reference_build(
    root: Path,
    v: Validation,
    planned: tuple[Any, str],
    settings: Settings,
    bake: Bake,
    new_fps: dict[str, str],
) -> _Had:
    assert v.reference is not None
    ref, (plan, fp) = v.reference, planned
    label = f"reference: local bake of {ref.commit[:12]}"
    if fp == new_fps.get(v.image):
        how = f"the same inputs as this change (fingerprint {fp[:12]}): its bake is both"
        return _Had(how=how, same_as_new=True)
    try:
        kept = kept_build(root, v.image, fp)
        if kept is not None:
            m = json.loads((kept / outputs.MANIFEST).read_text())
            rel = kept.relative_to(root) if kept.is_relative_to(root) else kept
            how = f"reused the local build {m.get('build_id')} kept in {rel}/ (same fingerprint)"
            tools.log("validate", f"{v.image}: reference {ref.commit[:12]}: {how}")
            return _Had(outputs.read_recorded(kept / outputs.MANIFEST, label=label), how)
        project = plan.root
        borrowed = borrow_parents(root, project, plan)
        tools.log(
            "validate",
            f"{v.image}: bake the reference, {ref.commit[:12]} ({ref.describe()}), locally"
            + (
                f"; its parent's proven build is lent to it: {', '.join(borrowed)}"
                if borrowed
                else ""
            ),
        )
        manifest = bake(project, v.image, LOCAL, settings=settings)
        recorded = outputs.read_recorded(Path(manifest), label=label)  # read before it goes
    except Interrupted:
        raise
    except GoldsmithError as err:
        return _Had(error=f"the reference bake of {v.image} at {ref.commit[:12]} failed: {err}")
    build_id = (recorded.manifest or {}).get("build_id")
    how = f"baked in a worktree of {ref.commit[:12]} (build {build_id})"
    if borrowed:
        how += f", on its parent's build kept here ({', '.join(borrowed)})"
    return _Had(recorded, how)


def _new_bakes(root: Path, todo: list[Validation], settings: Settings, bake: Bake) -> None:
    """The checkout's local build of each image (parents first, as the plan lists them)."""
    made: dict[str, outputs.Recorded | str] = {}
    for v in todo:
        if v.image not in made:
            tools.log("validate", f"{v.image}: the validation bake of this checkout (local)")
            try:
                manifest = Path(bake(root, v.image, LOCAL, settings=settings))
                m = json.loads(manifest.read_text())
                label = f"this change: local build {m.get('build_id')}"
                made[v.image] = outputs.read_recorded(manifest, label=label)
            except Interrupted:
                raise
            except GoldsmithError as err:
                made[v.image] = f"the validation bake of {v.image} (local) failed: {err}"
        got = made[v.image]
        if isinstance(got, str):
            v.errors.append(got)
            continue
        v.new = got
        if v.reference is not None and v.same_as_new:
            label = f"reference: local bake of {v.reference.commit[:12]}"
            v.old = dataclasses.replace(got, label=label)
