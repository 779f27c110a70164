"""The benchmark's pieces that need no VM: the from-scratch variant of a layered image,
and the floor's apt command."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import yaml

from goldsmith import bench
from goldsmith.catalogue import load

ROOT = Path(__file__).resolve().parents[2]


def test_a_layered_image_from_scratch_is_its_layers_plays_on_the_root_base(
    tmp_path: Path,
) -> None:
    """web flattened: on debian12, one playbook with base's play then web's, which the
    catalogue accepts and resolves to every role of both layers (so every spec runs)."""
    catalogue = load(ROOT / "images.yml")
    web = catalogue.image("web")
    assert web.parent == "base"
    data, plays = bench.flattened(catalogue, web)
    assert data["images"]["web"] == {
        "base": "debian12",
        "playbook": "playbooks/web.scratch.yml",
        "targets": ["local"],
    }
    assert [p["name"] for p in plays] == ["Bake the base image", "Bake the web image"]
    for name in ("roles", "playbooks", "tests/spec"):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / "images.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "playbooks/web.scratch.yml").write_text(yaml.safe_dump(plays))
    flat = load(tmp_path / "images.yml")
    assert flat.image("web").parent is None
    layered = {r for i in catalogue.layers(web) for r in catalogue.role_map(i).roles}
    assert set(flat.role_map(flat.image("web")).roles) == layered
    assert {"base", "ssh_hardening", "nginx", "self_healing"} <= layered


def test_the_floor_installs_exactly_the_named_packages_then_the_locale() -> None:
    cmd = bench.floor_command(["nginx", "libfoo1", "weird'name"])
    words = shlex.split(cmd.replace(";", " ;"))
    assert words[0:2] == ["set", "-e"]
    install = words.index("install")
    assert words[install - 1] == "apt-get" and "--no-install-recommends" in words
    assert ["nginx", "libfoo1", "weird'name"] == words[install + 4 : install + 7]
    assert cmd.index("apt-get update") < cmd.index("apt-get install") < cmd.index("locale-gen")
