"""A layered image's spec step (goldsmith.spec.run_layers): every layer's specs run, each
with its own playbook's values, the layers at once, a role proven alike by an earlier
layer not run again, one JUnit file with a suite per layer.

The specs are real pytest files run by real pytest processes against this machine
(`local://`); they prove concurrency by waiting for each other, not by a clock.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from spec_kit import MEETS

from goldsmith import spec


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for role, other in (("parent_role", "child_role"), ("child_role", "parent_role")):
        d = root / "tests/spec" / role
        d.mkdir(parents=True)
        (d / f"test_{role}.py").write_text(MEETS.format(decl="", me=role, other=other))
    shared = root / "tests/spec/shared_role"
    shared.mkdir()
    (shared / "test_shared_role.py").write_text("def test_shared():\n    pass\n")
    (root / "playbooks").mkdir()
    return root


def _playbook(root: Path, name: str, roles: list) -> Path:
    path = root / "playbooks" / f"{name}.yml"
    path.write_text(yaml.safe_dump([{"hosts": "all", "roles": roles}]))
    return path


def test_layers_run_at_once_and_a_role_proven_alike_runs_once(tmp_path: Path, monkeypatch) -> None:
    root = _project(tmp_path)
    monkeypatch.setenv("RENDEZVOUS", str(tmp_path))
    specs = root / "tests/spec"
    layers = [
        spec.Layer(
            "parent",
            _playbook(root, "parent", ["parent_role", "shared_role"]),
            [specs / "parent_role", specs / "shared_role"],
        ),
        spec.Layer(
            "child",
            _playbook(root, "child", ["child_role"]),
            [specs / "child_role", specs / "shared_role"],
        ),
    ]
    junit = tmp_path / "junit.xml"
    result = spec.run_layers(layers, hosts="local://", junit=junit, root=root)
    assert result is not None
    assert (result.passed, result.failed) == (3, 0), result.failures
    text = junit.read_text()
    assert 'name="spec parent"' in text and 'name="spec"' in text
    assert text.count('name="test_shared"') == 1
    assert not list(tmp_path.glob("junit.*.xml"))


def test_a_role_a_later_layer_applies_with_other_values_is_proven_again(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path)
    specs = root / "tests/spec"
    shared = specs / "shared_role"
    parent = spec.Layer("parent", _playbook(root, "parent", ["shared_role"]), [shared])
    child = spec.Layer(
        "child",
        _playbook(root, "child", [{"role": "shared_role", "vars": {"port": 8080}}]),
        [shared],
    )
    alike = spec.Layer("alike", _playbook(root, "alike", ["shared_role"]), [shared])
    plan = spec.layer_specs([parent, child, alike])
    assert [(layer.image, specs) for layer, specs in plan] == [
        ("parent", [shared]),
        ("child", [shared]),
        ("alike", []),
    ]


def test_a_playbook_with_ansibles_own_tags_is_read(tmp_path: Path) -> None:
    """A vaulted or `!unsafe` value in a playbook (plain YAML cannot read either) does not
    stop the spec step; the value counts as it is written."""
    root = _project(tmp_path)
    shared = root / "tests/spec/shared_role"
    book = root / "playbooks" / "vaulted.yml"
    book.write_text(
        "- hosts: all\n"
        "  roles:\n"
        "    - role: shared_role\n"
        "      vars:\n"
        "        secret: !vault |\n"
        "          $ANSIBLE_VAULT;1.1;AES256\n"
        "          3132\n"
        "        motd: !unsafe '{{ not templated }}'\n"
    )
    parent = spec.Layer("parent", _playbook(root, "parent", ["shared_role"]), [shared])
    child = spec.Layer("child", book, [shared])
    plan = spec.layer_specs([parent, child])
    assert [(layer.image, specs) for layer, specs in plan] == [
        ("parent", [shared]),
        ("child", [shared]),
    ]


def test_a_role_proven_once_goes_to_the_layer_with_the_least_to_run(tmp_path: Path) -> None:
    """The layers' runs go at once and the step ends with the last one: a role two layers
    apply alike is proven by the one with fewer specs (the earlier on a tie), still once,
    in the playbook's order of that layer's roles."""
    root = _project(tmp_path)
    specs = root / "tests/spec"
    shared, mine, theirs = specs / "shared_role", specs / "parent_role", specs / "child_role"
    extra = specs / "extra_role"
    extra.mkdir()
    parent = spec.Layer(
        "parent",
        _playbook(root, "parent", ["shared_role", "parent_role", "extra_role"]),
        [shared, mine, extra],
    )
    child = spec.Layer("child", _playbook(root, "child", ["child_role"]), [theirs, shared])
    plan = spec.layer_specs([parent, child])
    assert [(layer.image, specs) for layer, specs in plan] == [
        ("parent", [mine, extra]),
        ("child", [theirs, shared]),
    ]
    # A tie goes to the earlier layer.
    parent = spec.Layer("parent", parent.playbook, [shared, mine])
    plan = spec.layer_specs([parent, child])
    assert [specs for _, specs in plan] == [[shared, mine], [theirs]]
