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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import GoldsmithError

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


# --- YAML -------------------------------------------------------------------------------


class _Str(str):
    """A string that remembers the line it was read from."""

    line: int = 0


class _Dict(dict):
    """A mapping that remembers the line it was read from."""

    line: int = 0


class _AnsibleLoader(yaml.SafeLoader):
    """SafeLoader that also reads Ansible's own tags (`!unsafe`, `!vault`) as plain values."""


def _construct_tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


_AnsibleLoader.add_multi_constructor("!", _construct_tagged)


class _LineLoader(_AnsibleLoader):
    """Reads strings and mappings with their line numbers, for errors a person can find."""


def _construct_str(loader: yaml.SafeLoader, node: yaml.Node) -> _Str:
    s = _Str(loader.construct_scalar(node))  # type: ignore[arg-type]
    s.line = node.start_mark.line + 1
    return s


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[_Dict]:
    d = _Dict()
    d.line = node.start_mark.line + 1
    yield d
    d.update(loader.construct_mapping(node))


_LineLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _load(path: Path, root: Path, loader: type[yaml.SafeLoader] = _LineLoader) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise RoleError(f"{_rel(path, root)}: cannot read: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise RoleError(f"{_rel(path, root)}{line}: not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise RoleError(f"{_rel(path, root)}: not valid YAML: {e}") from None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _where(path: Path, root: Path, node: object) -> str:
    line = getattr(node, "line", 0)
    return f"{_rel(path, root)}:{line}" if line else _rel(path, root)


# --- resolution -------------------------------------------------------------------------


class _Resolver:
    """Walks playbooks, task files and roles; remembers each role's expansion."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.roles_dir = root / "roles"
        self.expanded: dict[str, tuple[str, ...]] = {}

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
        names: list[str] = []
        for section in PLAY_SECTIONS:
            items = play.get(section) or []
            if not isinstance(items, list):
                raise RoleError(f"{_where(path, self.root, play)}: {section} must be a list")
            if section == "roles":
                for ref in items:
                    names.extend(self.role(self.role_name(path, ref, play), path, ()))
            else:
                for ref in self.task_roles(path, items, ()):
                    names.extend(self.role(ref, path, ()))
        return Play(hosts=str(hosts), roles=tuple(_unique(names)))

    # tasks

    def task_roles(
        self, path: Path, tasks: Iterable[Any], files: tuple[Path, ...]
    ) -> Iterator[_Str]:
        """Literal role names that `tasks` (read from `path`) import or include, in order."""
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

    def task_file(
        self, path: Path, key: str, value: Any, task: dict, files: tuple[Path, ...]
    ) -> Iterator[_Str]:
        """Roles included by a task file a playbook or role imports (when its name is literal)."""
        if isinstance(value, dict):
            value = value.get("file", value.get("_raw_params"))
        if not isinstance(value, str) or "{{" in value:
            return  # a templated task file: Ansible decides at run time; specs are per role
        # A role's tasks are all scanned anyway; this follows a playbook's own task files.
        target = (path.parent / value).resolve()
        if target in files or self.roles_dir.resolve() in target.parents:
            return
        if not target.is_file():
            raise RoleError(f"{_where(path, self.root, task)}: {key}: {value!r} does not exist")
        data = _load(target, self.root)
        if isinstance(data, list):
            yield from self.task_roles(target, data, (*files, target))

    def role_name(self, path: Path, ref: Any, where: object, key: str = "roles") -> _Str:
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
        out = _Str(name.strip())
        out.line = getattr(name, "line", 0) or getattr(where, "line", 0)
        return out

    # roles

    def role(self, name: _Str, path: Path, chain: tuple[str, ...]) -> tuple[str, ...]:
        """`name` and every role it brings in, dependencies first."""
        if name in chain:
            raise RoleError(
                f"{_where(path, self.root, name)}: role dependency cycle: "
                + " -> ".join((*chain, name))
            )
        if name in self.expanded:
            return self.expanded[name]
        role_dir = self.roles_dir / name
        if "/" in name or not role_dir.is_dir():
            known = ", ".join(self.known_roles()) or "none"
            raise RoleError(
                f"{_where(path, self.root, name)}: role {str(name)!r} is not in roles/ "
                f"(roles there: {known}); roles are part of this repository, not fetched"
            )
        chain = (*chain, name)
        before: list[str] = []
        meta = _first_yaml(role_dir / "meta" / "main")
        if meta is not None:
            data = _load(meta, self.root)
            deps = data.get("dependencies") if isinstance(data, dict) else None
            for dep in deps or []:
                before.extend(self.role(self.role_name(meta, dep, data), meta, chain))
        after: list[str] = []
        tasks_dir = role_dir / "tasks"
        for task_file in sorted(tasks_dir.rglob("*")) if tasks_dir.is_dir() else []:
            if task_file.suffix not in YAML_SUFFIXES or not task_file.is_file():
                continue
            data = _load(task_file, self.root)
            if isinstance(data, list):
                for ref in self.task_roles(task_file, data, (task_file,)):
                    after.extend(self.role(ref, task_file, chain))
        result = tuple(_unique([*before, str(name), *after]))
        self.expanded[str(name)] = result
        return result

    def known_roles(self) -> list[str]:
        if not self.roles_dir.is_dir():
            return []
        return sorted(p.name for p in self.roles_dir.iterdir() if p.is_dir())


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
    plays = tuple(_Resolver(root).playbook(playbook, ()))
    roles = tuple(_unique(r for play in plays for r in play.roles))
    specs: dict[str, Path] = {}
    uncovered: list[str] = []
    for role in roles:
        folder = spec_dir(role, root)
        if any(folder.glob("test_*.py")):
            specs[role] = folder
        else:
            uncovered.append(role)
    return RoleMap(
        playbook=playbook, plays=plays, roles=roles, specs=specs, uncovered=tuple(uncovered)
    )


def role_defaults(role: str, root: Path) -> dict:
    """The role's `defaults/main.yml` (or `.yaml`, or a `defaults/main/` folder); {} if none.

    Specs read the values the role uses from here, so a changed default needs no spec edit.
    """
    defaults = root / "roles" / role / "defaults"
    files: list[Path] = []
    single = _first_yaml(defaults / "main")
    if single is not None:
        files.append(single)
    elif (defaults / "main").is_dir():
        files.extend(sorted(p for p in (defaults / "main").iterdir() if p.suffix in YAML_SUFFIXES))
    merged: dict = {}
    for f in files:
        data = _load(f, root, loader=_AnsibleLoader)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise RoleError(f"{_rel(f, root)}: role defaults must be a mapping of variables")
        merged.update(data)
    return merged
