"""The spec step runs a layer's specs that do not rely on a restarted unit beside the spec
that restarts services (goldsmith.spec: UNITS, RESTARTS), so their checks overlap its
waits; a spec that may rely on a restarted unit stays with it, in order.

Real pytest processes against this machine (`local://`): running at once is proven by
two specs waiting for each other, not by a clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from spec_kit import MEETS

from goldsmith import spec
from goldsmith.errors import GoldsmithError


def _spec(root: Path, role: str, text: str) -> Path:
    d = root / "tests/spec" / role
    d.mkdir(parents=True, exist_ok=True)
    (d / f"test_{role}.py").write_text(text)
    return d


def _project(tmp_path: Path, services: object = None) -> tuple[Path, spec.Layer]:
    """A layer with a spec that restarts (`healer`, its services in its role's defaults:
    web and db), one relying on `web.service` (`webcheck`) and one on `cron.service`
    (`aside`)."""
    root = tmp_path / "project"
    healer = _spec(
        root,
        "healer",
        MEETS.format(decl='RESTARTS = "healer_services"', me="healer", other="aside"),
    )
    aside = _spec(
        root, "aside", MEETS.format(decl='UNITS = ("cron.service",)', me="aside", other="healer")
    )
    web = _spec(root, "webcheck", 'UNITS = ["web"]\n\ndef test_web():\n    pass\n')
    defaults = root / "roles/healer/defaults"
    defaults.mkdir(parents=True)
    defaults.joinpath("main.yml").write_text(
        yaml.safe_dump({"healer_services": [{"name": "web"}, "db.service"]})
    )
    for role in ("aside", "webcheck"):
        (root / "roles" / role / "tasks").mkdir(parents=True)
    (root / "playbooks").mkdir()
    book = root / "playbooks/image.yml"
    roles = ["webcheck", "aside", "healer"]
    play = {"hosts": "all", "roles": roles}
    if services is not None:
        play["roles"] = [*roles[:2], {"role": "healer", "vars": {"healer_services": services}}]
    book.write_text(yaml.safe_dump([play]))
    return root, spec.Layer("image", book, [web, aside, healer])


def test_a_spec_relying_on_no_restarted_unit_runs_beside_the_one_that_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, layer = _project(tmp_path)
    monkeypatch.setenv("RENDEZVOUS", str(tmp_path))
    killed = spec.restarted_units([(layer, layer.specs)], root)
    assert killed == {"web.service", "db.service"}
    web, aside, healer = layer.specs
    assert spec.split_run(layer.specs, killed) == ([web, healer], [aside])
    junit = tmp_path / "junit.xml"
    monkeypatch.setattr(spec.os, "cpu_count", lambda: 2)  # one layer: room for one more run
    result = spec.run_layers([layer], hosts="local://", junit=junit, root=root)
    assert result is not None and (result.passed, result.failed) == (3, 0), result.failures
    assert junit.read_text().count('name="spec"') == 2  # one suite per run, the layer's name
    assert not list(tmp_path.glob("junit.*.xml"))


def test_the_playbooks_list_wins_and_a_unit_it_restarts_keeps_its_spec_in_order(
    tmp_path: Path,
) -> None:
    """The playbook restarts cron too: `aside` relies on it, so nothing is split."""
    root, layer = _project(tmp_path, services=["web", "cron"])
    killed = spec.restarted_units([(layer, layer.specs)], root)
    assert killed == {"web.service", "cron.service"}
    assert spec.split_run(layer.specs, killed) == (layer.specs, [])


def test_a_list_that_cannot_be_read_as_names_splits_nothing(tmp_path: Path) -> None:
    root, layer = _project(tmp_path, services="{{ my_services }}")
    assert spec.restarted_units([(layer, layer.specs)], root) is None
    root, layer = _project(tmp_path / "other", services=[{"name": "{{ svc }}"}])
    assert spec.restarted_units([(layer, layer.specs)], root) is None


def test_a_spec_without_units_may_rely_on_anything(tmp_path: Path) -> None:
    d = _spec(tmp_path, "plain", "def test_x():\n    pass\n")
    assert spec.declared(d) == spec.Declared(None, None)
    (d / "test_more.py").write_text('UNITS = ("a.timer", "b")\n')
    assert spec.declared(d).units is None  # one module without UNITS: unknown
    (d / "test_plain.py").write_text("UNITS: tuple[str, ...] = ()\n")
    assert spec.declared(d) == spec.Declared(frozenset({"a.timer", "b.service"}), None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('UNITS = "nginx.service"\n', r"UNITS must be a list of systemd unit names, not 'nginx"),
        ("UNITS = [1]\n", r"UNITS must be a list of systemd unit names, not \[1\]"),
        ("RESTARTS = ['x']\n", r"RESTARTS must name a role variable, not \['x'\]"),
        ("UNITS = tuple(NAMES)\n", r"test_bad.py:1: UNITS must be a literal .*'tuple\(NAMES\)'"),
    ],
)
def test_a_bad_declaration_names_the_file_the_name_and_the_value(
    tmp_path: Path, text: str, message: str
) -> None:
    d = _spec(tmp_path, "bad", text)
    with pytest.raises(GoldsmithError, match=message) as err:
        spec.declared(d)
    assert str(d / "test_bad.py") in str(err.value)


def test_a_set_aside_spec_another_layer_applies_alike_joins_that_layers_set_aside_run(
    tmp_path: Path,
) -> None:
    """Each run costs a pytest and a shell on the machine: the child's only set-aside spec
    (`shared`, applied alike by both layers) joins the parent's set-aside run; the child's
    restarting spec keeps its own run with its own values."""
    root, parent = _project(tmp_path)
    _spec(root, "shared", "UNITS = ()\n\ndef test_shared():\n    pass\n")
    web, aside, healer = parent.specs
    shared = root / "tests/spec/shared"
    roles = ["shared", "webcheck", "aside", "healer"]
    parent = spec.Layer(parent.image, parent.playbook, [shared, web, aside, healer])
    parent.playbook.write_text(yaml.safe_dump([{"hosts": "all", "roles": roles}]))
    child_book = root / "playbooks/child.yml"
    child_roles = ["shared", {"role": "healer", "vars": {"healer_services": ["api"]}}]
    child_book.write_text(yaml.safe_dump([{"hosts": "all", "roles": child_roles}]))
    child = spec.Layer("child", child_book, [shared, healer])
    plan = spec.layer_specs([parent, child])
    assert plan[1] == (child, [shared, healer])  # the child has fewer: it proves `shared`
    parts = [tmp_path / "p.xml", tmp_path / "c.xml"]
    runs = spec.beside_restarts(plan, root, parts, limit=3)
    assert [(layer.image, specs, aside) for layer, specs, aside, _ in runs] == [
        ("image", [web, healer], False),
        ("image", [shared, aside], True),
        ("child", [healer], False),
    ]
    # One run per core at most: on two, the layers' runs are all there is.
    unsplit = [(parent, plan[0][1], False, parts[0]), (child, plan[1][1], False, parts[1])]
    assert spec.beside_restarts(plan, root, parts, limit=2) == unsplit
