"""The fingerprint of a build's inputs: same inputs, same fingerprint, and the image is reused.

Only content and paths relative to the project go in, so the same commit gives the same
fingerprint in any folder on any machine (CI clones into a new folder every run). Each
input's own hash is kept too (`inputs`), so a later build can say which inputs changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import requirements, tools
from .catalogue import Image
from .roles import RoleMap

PACKAGE = Path(__file__).parent


def tool_versions() -> dict[str, str]:
    import ansible.release

    return {
        "packer": tools.capture(["packer", "version"]).strip().splitlines()[0],
        "ansible-core": ansible.release.__version__,
    }


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        elif p.is_file():
            out.append(p)
    return out


def _relative(value: Any, root: Path) -> Any:
    """The catalogue entry with every path made relative to the project (or dropped)."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_relative(v, root) for v in value]
    if isinstance(value, Path):
        return str(value.relative_to(root)) if value.is_relative_to(root) else value.name
    return value


def _third_party(role_map: RoleMap, root: Path) -> dict[str, Path]:
    """The pinned collections and standalone roles the image uses, by an input name."""
    content = requirements.installed(root)
    out = {
        f"collection {n} {v}": content.collections[n].path
        for n, v in role_map.collections.items()
        if n in content.collections
    }
    out |= {f"role {n} {v}".rstrip(): role_map.dirs[n] for n, v in role_map.galaxy_roles.items()}
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inputs(
    image: Image,
    role_map: RoleMap,
    root: Path,
    base_id: str,
    target: str,
    tools_: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every input of a build, by a stable name, with the sha256 of its content."""
    entry = _relative(asdict(image), root)
    out = {
        "catalogue entry": _sha(json.dumps(entry, sort_keys=True, default=str).encode()),
        "target": target,
        "base": base_id,
        "tools": _sha(json.dumps(dict(tools_ or tool_versions()), sort_keys=True).encode()),
    }
    files = [
        image.playbook,
        root / "packer",
        PACKAGE / "data",
        root / "tests/spec/conftest.py",
        root / "tests/spec/hygiene",
    ]
    # The project's own roles by their files; a pinned collection or role by its version
    # and the sha256 of its installed files (requirements.lock says the same), so the
    # fingerprint does not depend on whether it is vendored or installed.
    local = root / "roles"
    files += [d for d in role_map.dirs.values() if d.is_relative_to(local)]
    files += list(role_map.specs.values())
    for name, folder in sorted(_third_party(role_map, root).items()):
        out[name] = requirements.tree_sha(folder)
    for f in _files(files):
        # goldsmith's own files by one name, whether or not the package sits in the
        # project (an editable install in a checkout, or a wheel in a virtualenv).
        if f.is_relative_to(PACKAGE):
            name = f"goldsmith/{f.relative_to(PACKAGE)}"
        else:
            name = str(f.relative_to(root))
        out[name] = _sha(f.read_bytes())
    return out


def of(inputs_: Mapping[str, str]) -> str:
    """The fingerprint: one sha256 over the sorted inputs and their hashes."""
    return _sha(json.dumps(dict(inputs_), sort_keys=True).encode())


def changed(old: Mapping[str, str] | None, new: Mapping[str, str]) -> list[str] | None:
    """The inputs that differ between two records (added, removed or edited), or None
    when the old build recorded no inputs (so nothing can be told)."""
    if not old:
        return None
    names = sorted(set(old) | set(new))
    return [n for n in names if old.get(n) != new.get(n)]
