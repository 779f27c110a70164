"""Where things live in a goldsmith project. Everything is relative to the project root."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The project root: $GOLDSMITH_ROOT, else the nearest folder above cwd holding images.yml."""
    env = os.environ.get("GOLDSMITH_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "images.yml").is_file():
            return d
    return here


def cache_dir(root: Path) -> Path:
    """Built bases and downloads, kept between builds (git-ignored)."""
    return root / ".cache"


def build_dir(root: Path) -> Path:
    """Build outputs: build/<image>/."""
    return root / "build"


def venv_bin(name: str) -> str:
    """A tool installed beside the running Python (the project's .venv), else the bare name."""
    import sys

    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
