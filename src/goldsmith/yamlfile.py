"""YAML as goldsmith reads the project's Ansible files: safe, Ansible's own tags read as
plain values, and (by default) every string and mapping knowing its line, so an error
can name the file and line a person has to change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .errors import GoldsmithError


class Str(str):
    """A string that remembers the line it was read from."""

    line: int = 0


class Dict(dict):
    """A mapping that remembers the line it was read from."""

    line: int = 0


class AnsibleLoader(yaml.SafeLoader):
    """SafeLoader that also reads Ansible's own tags (`!unsafe`, `!vault`) as plain values."""


def _construct_tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]


AnsibleLoader.add_multi_constructor("!", _construct_tagged)


class LineLoader(AnsibleLoader):
    """Reads strings and mappings with their line numbers, for errors a person can find."""


def _construct_str(loader: yaml.SafeLoader, node: yaml.Node) -> Str:
    s = Str(loader.construct_scalar(node))  # type: ignore[arg-type]
    s.line = node.start_mark.line + 1
    return s


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[Dict]:
    d = Dict()
    d.line = node.start_mark.line + 1
    yield d
    d.update(loader.construct_mapping(node))


LineLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)
LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def load(
    path: Path,
    root: Path,
    loader: type[yaml.SafeLoader] = LineLoader,
    error: type[GoldsmithError] = GoldsmithError,
) -> Any:
    """The file's YAML; `error` naming the file (and line) if it cannot be read or parsed."""
    try:
        text = path.read_text()
    except OSError as e:
        raise error(f"{rel(path, root)}: cannot read: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise error(f"{rel(path, root)}{line}: not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise error(f"{rel(path, root)}: not valid YAML: {e}") from None


def rel(path: Path, root: Path) -> str:
    """`path` relative to the project when it is inside it, else as given."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def where(path: Path, root: Path, node: object) -> str:
    """file:line of a value read with LineLoader (just the file when it has no line)."""
    line = getattr(node, "line", 0)
    return f"{rel(path, root)}:{line}" if line else rel(path, root)
