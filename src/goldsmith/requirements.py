"""Roles and collections no one here wrote: requirements.yml, pinned; requirements.lock.

requirements.yml is Ansible's own format (`collections:` and `roles:`), read by
`ansible-galaxy`. goldsmith takes only entries that say exactly what they install:

    Galaxy collection   name: ns.coll            version: 1.2.3 (or ==1.2.3), no range
    Galaxy role         name: user.role          version: 1.2.3
    git                 git+URL or type: git     version: a full 40-hex commit (a tag moves)
    tarball, folder     type: file | dir | url   pinned by the lock's checksum of its content

Collections install with `--no-deps`: a collection's own dependencies must be listed (and
pinned) too, and one that is missing or out of its range is an error naming both.

Where they live: `vendor/` when it exists (committed, for air-gapped builds: Galaxy is
never asked and what is there must match the lock), else `.galaxy/` (not committed).
Each holds `collections/ansible_collections/<ns>/<name>/` and `roles/<name>/`.

requirements.lock (written by `./run setup`, reviewed and committed) records what was
installed: the requirements it came from, and each collection's and role's version and
the sha256 of its installed files. A build installs what the lock names when it is not
there (and never when it is), and fails when the same pins install other content. The
fingerprint hashes the installed content of what an image uses (goldsmith.fingerprint),
so bumping a collection rebakes only the images that use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import tools, yamlfile
from .ansible_env import INSTALLED_DIR, VENDOR_DIR, third_party_dir
from .errors import GoldsmithError
from .paths import venv_bin

REQUIREMENTS = "requirements.yml"
LOCK = "requirements.lock"
SECTIONS = ("collections", "roles")
SOURCE_TYPES = ("galaxy", "git", "file", "dir", "url", "subdirs")
_EXACT = re.compile(r"^(==)?\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_FQCN = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$", re.IGNORECASE)
# Written by ansible-galaxy at install time (a date): not part of what a role is.
_NOT_CONTENT = {"__pycache__", ".galaxy_install_info"}


class RequirementsError(GoldsmithError):
    """requirements.yml or requirements.lock is unusable, or what is installed is not it."""


@dataclass(frozen=True)
class Requirement:
    section: str  # "collections" or "roles"
    label: str  # what a person wrote: the name or source
    source_type: str
    version: str
    where: str  # requirements.yml:line
    local: str = ""  # a tarball or folder in the project: needed only to install


@dataclass(frozen=True)
class Installed:
    """One installed collection or standalone role."""

    name: str  # ns.coll for a collection; the role's folder name for a role
    version: str
    path: Path
    sha256: str
    dependencies: dict[str, str] = field(default_factory=dict)  # collections only

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "sha256": self.sha256}
        if self.dependencies:
            out["dependencies"] = dict(sorted(self.dependencies.items()))
        return out


@dataclass(frozen=True)
class Content:
    """What one third-party folder (vendor/ or .galaxy/) holds."""

    folder: Path
    collections: dict[str, Installed]
    roles: dict[str, Installed]

    def record(self) -> dict[str, Any]:
        return {
            "collections": {n: c.record() for n, c in sorted(self.collections.items())},
            "roles": {n: r.record() for n, r in sorted(self.roles.items())},
        }

    def describe(self) -> str:
        items = [f"{n} {c.version}" for n, c in sorted(self.collections.items())]
        items += [f"role {n} {r.version or '(no version)'}" for n, r in sorted(self.roles.items())]
        return ", ".join(items) or "nothing"


# --- requirements.yml ---------------------------------------------------------------------


def read(root: Path) -> list[Requirement]:
    """Every entry of requirements.yml, each checked to be pinned; [] if there is none."""
    path = root / REQUIREMENTS
    if not path.is_file():
        return []
    data = yamlfile.load(path, root, error=RequirementsError)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise RequirementsError(
            f"{yamlfile.where(path, root, data)}: requirements.yml must be a mapping "
            "with `collections:` and `roles:` lists"
        )
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise RequirementsError(
            f"{yamlfile.where(path, root, unknown[0])}: unknown key {str(unknown[0])!r} "
            f"(requirements.yml takes {' and '.join(SECTIONS)})"
        )
    out: list[Requirement] = []
    for section in SECTIONS:
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise RequirementsError(f"{yamlfile.where(path, root, data)}: {section} must be a list")
        for i, entry in enumerate(entries):
            out.append(_requirement(path, root, section, i, entry))
    return out


def _requirement(path: Path, root: Path, section: str, i: int, entry: Any) -> Requirement:
    where = yamlfile.where(path, root, entry)
    key = f"{section}[{i}]"
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        raise RequirementsError(f"{where}: {key}: expected a name or a mapping, not {entry!r}")
    name = entry.get("src") if section == "roles" and entry.get("src") else entry.get("name")
    if not isinstance(name, str) or not name.strip():
        what = "no name or src" if section == "roles" else "no name"
        raise RequirementsError(f"{where}: {key}: {what}")
    label = f"{key} {str(name)!r}"
    source = str(entry.get("type") or entry.get("scm") or _source_type(section, name, root))
    if source not in SOURCE_TYPES:
        raise RequirementsError(
            f"{where}: {label}: type {source!r} is not one of {', '.join(SOURCE_TYPES)}"
        )
    version = "" if entry.get("version") is None else str(entry.get("version")).strip()
    if source == "galaxy" and not _EXACT.match(version):
        got = f"version {version!r} is a range, not one version" if version else "no version"
        raise RequirementsError(
            f"{where}: {label}: {got}; pin an exact one (version: 1.2.3): "
            "an unpinned requirement installs whatever is newest on the day of the build"
        )
    if source == "git" and not _COMMIT.match(version):
        got = f"version {version!r}" if version else "no version"
        raise RequirementsError(
            f"{where}: {label}: {got}; a git source is pinned by a full 40-hex commit "
            "(a branch or tag can move)"
        )
    local = str(name) if source in ("file", "dir", "subdirs") and "://" not in name else ""
    return Requirement(section, label, source, version.lstrip("="), where, local)


def _source_type(section: str, name: str, root: Path) -> str:
    """The source `ansible-galaxy` would infer for an entry without `type:`."""
    if name.startswith("git+") or name.endswith(".git"):
        return "git"
    if "://" in name:
        return "url"
    if name.endswith((".tar.gz", ".tgz")):
        return "file"
    if (root / name).is_dir() and ("/" in name or name.startswith(".")):
        return "dir"
    return "galaxy"


def _requirements_sha(root: Path) -> str:
    """What the lock was resolved from: requirements.yml's data (comments do not count)."""
    path = root / REQUIREMENTS
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return _sha(json.dumps(data or {}, sort_keys=True, default=str).encode())


# --- what is installed ---------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_sha(folder: Path) -> str:
    """sha256 over every file's relative path and content (symlinks by their target)."""
    digest = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if _NOT_CONTENT & set(rel.parts) or (f.is_dir() and not f.is_symlink()):
            continue
        data = os.readlink(f).encode() if f.is_symlink() else f.read_bytes()
        digest.update(str(rel).encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def scan(folder: Path) -> Content:
    """The collections and roles installed under `folder` (vendor/ or .galaxy/)."""
    collections: dict[str, Installed] = {}
    base = folder / "collections" / "ansible_collections"
    for manifest in sorted(base.glob("*/*/MANIFEST.json")) if base.is_dir() else []:
        info = json.loads(manifest.read_text()).get("collection_info", {})
        name = f"{info.get('namespace')}.{info.get('name')}"
        collections[name] = Installed(
            name,
            str(info.get("version", "")),
            manifest.parent,
            tree_sha(manifest.parent),
            dict(info.get("dependencies") or {}),
        )
    roles: dict[str, Installed] = {}
    roles_dir = folder / "roles"
    for role in sorted(roles_dir.iterdir()) if roles_dir.is_dir() else []:
        if not role.is_dir() or role.name.startswith("."):
            continue
        info_file = role / "meta" / ".galaxy_install_info"
        info = yaml.safe_load(info_file.read_text()) if info_file.is_file() else None
        version = str((info or {}).get("version") or "")
        roles[role.name] = Installed(role.name, version, role, tree_sha(role))
    return Content(folder, collections, roles)


def installed(root: Path) -> Content:
    """What the project's Ansible runs see: vendor/ if it exists, else .galaxy/."""
    return scan(third_party_dir(root))


def check_dependencies(content: Content) -> None:
    """Every installed collection's dependencies are installed, within their ranges."""
    from ansible.galaxy.dependency_resolution.versioning import meets_requirements

    problems = []
    for c in content.collections.values():
        for dep, wanted in sorted(c.dependencies.items()):
            have = content.collections.get(dep)
            if have is None:
                problems.append(f"{c.name} {c.version} needs {dep} {wanted}: not pinned")
            elif not meets_requirements(have.version, str(wanted)):
                problems.append(
                    f"{c.name} {c.version} needs {dep} {wanted}: {REQUIREMENTS} pins {have.version}"
                )
    if problems:
        raise RequirementsError(
            "collections are installed without their dependencies (--no-deps), so each must be "
            "pinned in requirements.yml:\n  " + "\n  ".join(problems)
        )


# --- requirements.lock ---------------------------------------------------------------------


def read_lock(root: Path) -> dict[str, Any] | None:
    path = root / LOCK
    if not path.is_file():
        return None
    data = yamlfile.load(path, root, loader=yaml.SafeLoader, error=RequirementsError)
    if not isinstance(data, dict) or not {"requirements", *SECTIONS} <= set(data):
        raise RequirementsError(
            f"{LOCK}: not a lock goldsmith wrote (needs requirements, collections, roles); "
            "delete it and run ./run setup"
        )
    return data


def _write_lock(root: Path, content: Content) -> None:
    body = {"requirements": _requirements_sha(root), **content.record()}
    text = (
        "# Written by ./run setup from requirements.yml: what was installed, and the sha256\n"
        "# of its files. Review and commit it; builds install and check against it.\n"
        + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    )
    tmp = root / f".{LOCK}.tmp"
    tmp.write_text(text)
    tmp.replace(root / LOCK)


def _differences(lock: Mapping[str, Any], content: Content) -> list[str]:
    have = content.record()
    out = []
    for section in SECTIONS:
        want = lock.get(section) or {}
        got = have[section]
        kind = "collection" if section == "collections" else "role"
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name), got.get(name)
            if w is None:
                out.append(f"{kind} {name} {g['version']}: installed, not in {LOCK}")
            elif g is None:
                out.append(f"{kind} {name} {w.get('version')}: in {LOCK}, not installed")
            elif str(w.get("version")) != g["version"]:
                said = w.get("version")
                out.append(f"{kind} {name}: {LOCK} says {said}, installed {g['version']}")
            elif w.get("sha256") != g["sha256"]:
                out.append(
                    f"{kind} {name} {g['version']}: content differs from {LOCK} "
                    f"(sha256 {str(w.get('sha256'))[:12]}, installed {g['sha256'][:12]})"
                )
    return out


# --- installing ----------------------------------------------------------------------------


def ensure(root: Path, *, write_lock: bool = True) -> Content:
    """Make what requirements.lock names installed (asking Galaxy only when it is not).

    With `write_lock` (./run setup, a local build) a missing or stale lock is resolved and
    written; without it (CI: settings.requirements_locked) that is an error.
    """
    reqs = read(root)
    lock = read_lock(root)
    folder = third_party_dir(root)
    if not reqs and lock is None:
        return _nothing_pinned(scan(folder))
    fresh = lock is not None and lock.get("requirements") == _requirements_sha(root)
    current = scan(folder)
    if fresh and not _differences(lock, current):  # type: ignore[arg-type]
        check_dependencies(current)
        tools.log("requirements", f"installed as {LOCK} records: {current.describe()}")
        return current
    if folder.name == VENDOR_DIR:
        problems = _differences(lock, current) if fresh else [f"{REQUIREMENTS} changed since"]  # type: ignore[arg-type]
        raise RequirementsError(
            f"{VENDOR_DIR}/ does not match {LOCK} (builds never fetch while {VENDOR_DIR}/ "
            "exists): run ./run vendor and commit the result\n  " + "\n  ".join(problems)
        )
    if not fresh and not write_lock:
        raise RequirementsError(
            f"{REQUIREMENTS} changed since {LOCK} was written (or there is no lock): "
            f"run ./run setup, review {LOCK} and commit it"
        )
    content = _install(root, reqs, root / INSTALLED_DIR)
    _settle(root, lock if fresh else None, content)
    return scan(root / INSTALLED_DIR)


def _nothing_pinned(content: Content) -> Content:
    """requirements.yml pins nothing: nothing third-party may be used, even if installed."""
    if not content.collections and not content.roles:
        return content
    if content.folder.name == VENDOR_DIR:
        raise RequirementsError(
            f"{VENDOR_DIR}/ holds {content.describe()}, but {REQUIREMENTS} pins nothing: "
            f"delete {VENDOR_DIR}/ or pin what it holds"
        )
    shutil.rmtree(content.folder)
    tools.log("requirements", f"removed {content.folder.name}/: {REQUIREMENTS} pins nothing")
    return scan(content.folder)


def vendor(root: Path) -> Content:
    """Install requirements.yml afresh into vendor/ (to commit), checked against the lock."""
    reqs = read(root)
    lock = read_lock(root)
    fresh = lock is not None and lock.get("requirements") == _requirements_sha(root)
    content = _install(root, reqs, root / VENDOR_DIR)
    _settle(root, lock if fresh else None, content)
    return scan(root / VENDOR_DIR)


def _settle(root: Path, lock: Mapping[str, Any] | None, content: Content) -> None:
    """Check what was installed against the lock, or write the lock from it."""
    if lock is not None:
        problems = _differences(lock, content)
        if problems:
            raise RequirementsError(
                f"{REQUIREMENTS}'s pins installed other content than {LOCK} records "
                "(a source changed under the same pin?):\n  " + "\n  ".join(problems)
            )
    else:
        _write_lock(root, content)
        tools.log("requirements", f"wrote {LOCK} ({content.describe()}): review and commit it")


def _install(root: Path, reqs: list[Requirement], dest: Path) -> Content:
    """ansible-galaxy into a fresh folder, checked, then swapped in for `dest` whole."""
    gone = [r for r in reqs if r.local and not (root / r.local).exists()]
    if gone:
        raise RequirementsError(
            "; ".join(f"{r.where}: {r.label}: {r.local} does not exist" for r in gone)
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name.lstrip('.')}-", dir=dest.parent))
    try:
        galaxy = venv_bin("ansible-galaxy")
        # Only the fresh folder counts as installed (not ansible.cfg's paths), so
        # ansible-galaxy installs everything into it.
        env = {
            "ANSIBLE_COLLECTIONS_PATH": str(tmp / "collections"),
            "ANSIBLE_ROLES_PATH": str(tmp / "roles"),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "False",
            "ANSIBLE_NOCOLOR": "1",
        }
        req = root / REQUIREMENTS
        (tmp / "collections").mkdir()
        (tmp / "roles").mkdir()
        if any(r.section == "collections" for r in reqs):
            tools.log("requirements", f"ansible-galaxy collection install into {dest.name}/")
            tools.run(
                [galaxy, "collection", "install", "--no-deps", "--force"]
                + ["-r", req, "-p", tmp / "collections"],
                prefix="galaxy",
                cwd=root,
                env=env,
            )
        if any(r.section == "roles" for r in reqs):
            tools.log("requirements", f"ansible-galaxy role install into {dest.name}/")
            tools.run(
                [galaxy, "role", "install", "--no-deps", "--force", "-r", req, "-p", tmp / "roles"],
                prefix="galaxy",
                cwd=root,
                env=env,
            )
        content = scan(tmp)
        check_dependencies(content)
        old = dest.with_name(f".{dest.name.lstrip('.')}-old-{os.getpid()}")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        return scan(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
