"""Which roles a playbook applies, and which specs prove them (after ansible_spec).

The playbook is the only list of what is on an image: the specs that run are the
specs of the roles it applies, found by reading the playbook the way Ansible does.

Followed, in the order Ansible runs them: a play's `pre_tasks`, `roles:`, `tasks`,
`post_tasks` and `handlers`; `import_role`/`include_role` (short and `ansible.builtin.`
names, also inside blocks and in task files the play imports); `import_playbook`
(relative to the importing playbook); a role's `meta/main.yml` `dependencies`
(recursively, before the role) and the roles a role includes in its own tasks (after
it). A role's name must be literal: a templated one (`{{ ... }}`) cannot say which
specs to run, so it is an error, as is a cycle or a role missing from `roles/`.

A role without `tests/spec/<role>/test_*.py` is reported in `RoleMap.uncovered`, never
skipped in silence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import requirements, yamlfile
from .errors import GoldsmithError
from .yamlfile import AnsibleLoader, LineLoader, Str
from .yamlfile import rel as _rel
from .yamlfile import where as _where

ROLE_KEYS = {
    f"{prefix}{action}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for action in ("import_role", "include_role")
}
TASKS_KEYS = {
    f"{prefix}{action}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for action in ("import_tasks", "include_tasks", "include")
}
# A module or role named by its collection: namespace.collection.name
_MODULE = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+\.[a-z0-9_]+$", re.IGNORECASE)
BUILTIN_COLLECTIONS = {"ansible.builtin", "ansible.legacy"}
PLAYBOOK_KEYS = {"import_playbook", "ansible.builtin.import_playbook"}
# The play sections in the order Ansible runs them.
PLAY_SECTIONS = ("pre_tasks", "roles", "tasks", "post_tasks", "handlers")
BLOCK_KEYS = ("block", "rescue", "always")
YAML_SUFFIXES = (".yml", ".yaml")


class RoleError(GoldsmithError):
    """A playbook applies a role that cannot be resolved (missing, templated, cyclic)."""


@dataclass(frozen=True)
class Play:
    """One play: its hosts and every role it applies, dependencies first, each once."""

    hosts: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class RoleMap:
    """What a playbook applies and which specs prove it."""

    playbook: Path
    plays: tuple[Play, ...]
    roles: tuple[str, ...]
    specs: dict[str, Path]
    uncovered: tuple[str, ...]
    # Each role's folder: roles/<name>, a pinned standalone role, or a collection's.
    dirs: dict[str, Path] = field(default_factory=dict)
    # The pinned collections the image uses (its roles', its modules', and what those
    # collections depend on), by name with their installed version.
    collections: dict[str, str] = field(default_factory=dict)
    # The pinned standalone roles it applies, with their installed version.
    galaxy_roles: dict[str, str] = field(default_factory=dict)


def _load(path: Path, root: Path, loader: type[yaml.SafeLoader] = LineLoader) -> Any:
    return yamlfile.load(path, root, loader, RoleError)


# --- resolution -------------------------------------------------------------------------


class _Resolver:
    """Walks playbooks, task files and roles; remembers each role's expansion."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.roles_dir = root / "roles"
        self.content = requirements.installed(root)
        self.expanded: dict[str, tuple[str, ...]] = {}
        self.dirs: dict[str, Path] = {}
        self.used: set[str] = set()  # collections whose roles or modules are used

    # playbooks

    def playbook(self, path: Path, chain: tuple[Path, ...]) -> list[Play]:
        path = path.resolve()
        if path in chain:
            cycle = " -> ".join(_rel(p, self.root) for p in (*chain, path))
            raise RoleError(f"import_playbook cycle: {cycle}")
        data = _load(path, self.root)
        if data is None:
            raise RoleError(f"{_rel(path, self.root)}: the playbook is empty")
        if not isinstance(data, list):
            raise RoleError(f"{_where(path, self.root, data)}: a playbook must be a list of plays")
        plays: list[Play] = []
        for entry in data:
            if not isinstance(entry, dict):
                raise RoleError(f"{_where(path, self.root, entry)}: a play must be a mapping")
            key = next((k for k in entry if k in PLAYBOOK_KEYS), None)
            if key is not None:
                target = entry[key]
                if not isinstance(target, str) or "{{" in target:
                    raise RoleError(
                        f"{_where(path, self.root, entry)}: {key} needs a literal file name"
                    )
                imported = path.parent / target
                if not imported.is_file():
                    raise RoleError(
                        f"{_where(path, self.root, entry)}: {key}: {target!r} does not exist"
                    )
                plays.extend(self.playbook(imported, (*chain, path)))
                continue
            plays.append(self.play(path, entry))
        return plays

    def play(self, path: Path, play: dict) -> Play:
        hosts = play.get("hosts", "")
        if isinstance(hosts, list):
            hosts = ",".join(str(h) for h in hosts)
        search = self.search_list(path, play, ())
        names: list[str] = []
        for section in PLAY_SECTIONS:
            items = play.get(section) or []
            if not isinstance(items, list):
                raise RoleError(f"{_where(path, self.root, play)}: {section} must be a list")
            if section == "roles":
                for ref in items:
                    names.extend(self.role(self.role_name(path, ref, play), path, (), search))
            else:
                for ref in self.task_roles(path, items, ()):
                    names.extend(self.role(ref, path, (), search))
        return Play(hosts=str(hosts), roles=tuple(_unique(names)))

    def search_list(self, path: Path, node: Any, first: tuple[str, ...]) -> tuple[str, ...]:
        """Collections a short role name is looked up in before the roles path (as Ansible
        does): the role's own collection, then the `collections:` keyword."""
        listed = node.get("collections") if isinstance(node, dict) else None
        if listed is None:
            return first
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            raise RoleError(f"{_where(path, self.root, node)}: collections must be a list of names")
        for name in listed:
            if name not in BUILTIN_COLLECTIONS:
                self.collection(Str(name) if not isinstance(name, Str) else name, path)
        return tuple(_unique([*first, *(c for c in listed if c not in BUILTIN_COLLECTIONS)]))

    # tasks

    def task_roles(
        self, path: Path, tasks: Iterable[Any], files: tuple[Path, ...]
    ) -> Iterator[Str]:
        """Literal role names that `tasks` (read from `path`) import or include, in order.

        A module named by its collection (`ns.coll.module`) marks that collection used.
        """
        for task in tasks:
            if not isinstance(task, dict):
                continue
            for key in BLOCK_KEYS:
                if isinstance(task.get(key), list):
                    yield from self.task_roles(path, task[key], files)
            for key, value in task.items():
                if key in ROLE_KEYS:
                    yield self.role_name(path, value, task, key=key)
                elif key in TASKS_KEYS:
                    yield from self.task_file(path, key, value, task, files)
                elif _MODULE.match(str(key).removeprefix("with_")):
                    # a module, or a lookup loop (with_community.general.flattened)
                    ns, coll, _ = str(key).removeprefix("with_").split(".")
                    if f"{ns}.{coll}" not in BUILTIN_COLLECTIONS:
                        located = Str(key)
                        located.line = getattr(key, "line", 0) or getattr(task, "line", 0)
                        self.collection(Str(f"{ns}.{coll}"), path, used_by=located)

    def task_file(
        self, path: Path, key: str, value: Any, task: dict, files: tuple[Path, ...]
    ) -> Iterator[Str]:
        """Roles included by a task file a playbook or role imports (when its name is literal)."""
        if isinstance(value, dict):
            value = value.get("file", value.get("_raw_params"))
        if not isinstance(value, str) or "{{" in value:
            return  # a templated task file: Ansible decides at run time; specs are per role
        # A role's tasks are all scanned anyway; this follows a playbook's own task files.
        target = (path.parent / value).resolve()
        if target in files or any(d.resolve() in target.parents for d in self.dirs.values()):
            return
        if self.roles_dir.resolve() in target.parents:
            return
        if not target.is_file():
            raise RoleError(f"{_where(path, self.root, task)}: {key}: {value!r} does not exist")
        data = _load(target, self.root)
        if isinstance(data, list):
            yield from self.task_roles(target, data, (*files, target))

    def role_name(self, path: Path, ref: Any, where: object, key: str = "roles") -> Str:
        """The literal name in a role reference: `name`, `{role: name}`, `{name: name}`."""
        name: Any = ref
        if isinstance(ref, dict):
            name = ref.get("role", ref.get("name"))
        elif isinstance(ref, str) and "=" in ref and key != "roles":
            # the old free form: include_role: name=web
            params = dict(p.split("=", 1) for p in ref.split() if "=" in p)
            name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RoleError(f"{_where(path, self.root, where)}: {key}: no role name in {ref!r}")
        if "{{" in name:
            raise RoleError(
                f"{_where(path, self.root, name if getattr(name, 'line', 0) else where)}: "
                f"{key}: templated role name {str(name)!r}; "
                "goldsmith must know which roles an image applies to pick their specs, "
                "so role names must be literal"
            )
        out = Str(name.strip())
        out.line = getattr(name, "line", 0) or getattr(where, "line", 0)
        return out

    # collections and roles

    def collection(
        self, name: Str, path: Path, used_by: Str | None = None
    ) -> requirements.Installed:
        """An installed collection, marked used; an error naming what is installed if not."""
        found = self.content.collections.get(str(name))
        if found is None:
            what = f"{str(used_by)!r} is from collection" if used_by else "collection"
            node = used_by if used_by is not None else name
            raise RoleError(
                f"{_where(path, self.root, node)}: {what} {str(name)!r}, which is not installed "
                f"(installed from {requirements.REQUIREMENTS}: {self.content.describe()}); "
                f"pin it in {requirements.REQUIREMENTS} and run ./run setup"
            )
        self.used.add(found.name)
        return found

    def locate(self, name: Str, path: Path, search: tuple[str, ...]) -> tuple[str, Path, str]:
        """The role's canonical name (FQCN for a collection's), its folder, and its collection."""
        parts = str(name).split(".")
        if len(parts) == 3 and all(parts):
            coll_name = Str(f"{parts[0]}.{parts[1]}")
            coll_name.line = name.line
            if coll_name in BUILTIN_COLLECTIONS:
                return self.locate(_with_line(parts[2], name), path, ())
            coll = self.collection(coll_name, path)
            folder = coll.path / "roles" / parts[2]
            if not folder.is_dir():
                theirs = ", ".join(_subdirs(coll.path / "roles")) or "none"
                raise RoleError(
                    f"{_where(path, self.root, name)}: role {str(name)!r} is not in collection "
                    f"{coll.name} {coll.version} (its roles: {theirs})"
                )
            return str(name), folder, coll.name
        if "/" in name or name in (".", ".."):
            raise RoleError(f"{_where(path, self.root, name)}: {str(name)!r} is not a role name")
        for coll_name in search:
            coll = self.content.collections.get(coll_name)
            if coll is not None and (coll.path / "roles" / name).is_dir():
                self.used.add(coll.name)
                return f"{coll.name}.{name}", coll.path / "roles" / name, coll.name
        if (self.roles_dir / name).is_dir():
            return str(name), self.roles_dir / name, ""
        pinned = self.content.roles.get(str(name))
        if pinned is not None:
            return str(name), pinned.path, ""
        known = ", ".join(_subdirs(self.roles_dir)) or "none"
        others = ", ".join(self.content.roles) or "none"
        searched = ", ".join(
            f"{c} {self.content.collections[c].version}"
            for c in search
            if c in self.content.collections
        )
        raise RoleError(
            f"{_where(path, self.root, name)}: role {str(name)!r} is not in roles/ "
            f"(roles there: {known}), nor a role pinned in {requirements.REQUIREMENTS} "
            f"(pinned roles: {others})"
            + (f", nor in the collections searched ({searched})" if searched else "")
            + f"; a role from elsewhere is pinned in {requirements.REQUIREMENTS} "
            "(a collection's by its full name, namespace.collection.role)"
        )

    def role(
        self, name: Str, path: Path, chain: tuple[str, ...], search: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        """`name` and every role it brings in, dependencies first (canonical names)."""
        canonical, role_dir, coll = self.locate(name, path, search)
        if canonical in chain:
            raise RoleError(
                f"{_where(path, self.root, name)}: role dependency cycle: "
                + " -> ".join((*chain, canonical))
            )
        if canonical in self.expanded:
            return self.expanded[canonical]
        self.dirs[canonical] = role_dir
        chain = (*chain, canonical)
        own = (coll,) if coll else ()
        before: list[str] = []
        meta = _first_yaml(role_dir / "meta" / "main")
        inner = own
        if meta is not None:
            data = _load(meta, self.root)
            inner = self.search_list(meta, data, own)
            deps = data.get("dependencies") if isinstance(data, dict) else None
            for dep in deps or []:
                before.extend(self.role(self.role_name(meta, dep, data), meta, chain, inner))
        after: list[str] = []
        for sub in ("tasks", "handlers"):
            folder = role_dir / sub
            for task_file in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if task_file.suffix not in YAML_SUFFIXES or not task_file.is_file():
                    continue
                data = _load(task_file, self.root)
                if isinstance(data, list):
                    for ref in self.task_roles(task_file, data, (task_file,)):
                        after.extend(self.role(ref, task_file, chain, inner))
        result = tuple(_unique([*before, canonical, *after]))
        self.expanded[canonical] = result
        return result

    def used_collections(self) -> dict[str, str]:
        """The used collections and everything they depend on, with their versions."""
        todo, seen = sorted(self.used), set()
        while todo:
            name = todo.pop()
            if name in seen or name not in self.content.collections:
                continue
            seen.add(name)
            todo.extend(self.content.collections[name].dependencies)
        return {n: self.content.collections[n].version for n in sorted(seen)}


def _with_line(text: str, like: Str) -> Str:
    out = Str(text)
    out.line = getattr(like, "line", 0)
    return out


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def _first_yaml(stem: Path) -> Path | None:
    for suffix in YAML_SUFFIXES:
        candidate = stem.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items))


def spec_dir(role: str, root: Path) -> Path:
    """Where the specs of `role` live."""
    return root / "tests" / "spec" / role


def resolve(playbook: Path, root: Path) -> RoleMap:
    """Every role `playbook` applies (dependencies first) and the spec folder of each."""
    playbook = playbook if playbook.is_absolute() else root / playbook
    if not playbook.is_file():
        raise RoleError(f"{_rel(playbook, root)}: the playbook does not exist")
    resolver = _Resolver(root)
    plays = tuple(resolver.playbook(playbook, ()))
    roles = tuple(_unique(r for play in plays for r in play.roles))
    specs: dict[str, Path] = {}
    uncovered: list[str] = []
    for role in roles:
        folder = spec_dir(role, root)
        if any(folder.glob("test_*.py")):
            specs[role] = folder
        else:
            uncovered.append(role)
    pinned = resolver.content.roles
    return RoleMap(
        playbook=playbook,
        plays=plays,
        roles=roles,
        specs=specs,
        uncovered=tuple(uncovered),
        dirs={r: resolver.dirs[r] for r in roles},
        collections=resolver.used_collections(),
        galaxy_roles={
            r: pinned[r].version
            for r in roles
            if r in pinned and resolver.dirs[r] == pinned[r].path
        },
    )


def playbook_vars(plays: Any, role: str) -> dict[str, Any]:
    """What a parsed playbook sets for `role`: each play that lists it, that play's
    `vars:`, then the role entry's own `vars:` (what a role's spec expects on top of the
    role's defaults)."""
    found: dict[str, Any] = {}
    for play in plays if isinstance(plays, list) else []:
        if not isinstance(play, dict):
            continue
        for entry in play.get("roles") or []:
            name = entry if isinstance(entry, str) else entry.get("role") or entry.get("name")
            if name != role:
                continue
            found |= play.get("vars") or {}
            if isinstance(entry, dict):
                found |= entry.get("vars") or {}
    return found


def role_dir(role: str, root: Path) -> Path:
    """The folder of `role` as a playbook names it (FQCN for a collection's role)."""
    return _Resolver(root).locate(Str(role), root / "playbooks", ())[1]


def role_defaults(role: str, root: Path) -> dict:
    """The role's `defaults/main.yml` (or `.yaml`, or a `defaults/main/` folder); {} if none.

    Specs read the values the role uses from here, so a changed default needs no spec edit.
    """
    try:
        defaults = role_dir(role, root) / "defaults"
    except RoleError:
        return {}  # no such role: no defaults (the spec's own error names the folder)
    files: list[Path] = []
    single = _first_yaml(defaults / "main")
    if single is not None:
        files.append(single)
    elif (defaults / "main").is_dir():
        files.extend(sorted(p for p in (defaults / "main").iterdir() if p.suffix in YAML_SUFFIXES))
    merged: dict = {}
    for f in files:
        data = _load(f, root, loader=AnsibleLoader)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise RoleError(f"{_rel(f, root)}: role defaults must be a mapping of variables")
        merged.update(data)
    return merged
