"""The fingerprint of a build's inputs: same inputs, same fingerprint, and the image is reused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from . import tools
from .catalogue import Image
from .roles import RoleMap


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
        elif p.is_file():
            out.append(p)
    return out


def tool_versions() -> dict[str, str]:
    import ansible.release

    return {
        "packer": tools.capture(["packer", "version"]).strip().splitlines()[0],
        "ansible-core": ansible.release.__version__,
    }


def compute(image: Image, role_map: RoleMap, root: Path, base_id: str, target: str) -> str:
    """sha256 over the image entry, its playbook, roles, specs, packer/, the seal and tools."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(image), sort_keys=True, default=str).encode())
    h.update(f"target={target} base={base_id}".encode())
    h.update(json.dumps(tool_versions(), sort_keys=True).encode())
    inputs = [
        image.playbook,
        root / "packer",
        Path(__file__).parent / "data",
        root / "tests/spec/conftest.py",
        root / "tests/spec/hygiene",
    ]
    inputs += [root / "roles" / r for r in role_map.roles]
    inputs += list(role_map.specs.values())
    for f in _files(inputs):
        name = (
            f.relative_to(root) if f.is_relative_to(root) else f.relative_to(Path(__file__).parent)
        )
        h.update(str(name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()
