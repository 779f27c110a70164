"""What a role's spec expects: the role's defaults, with the image's playbook on top."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _conftest():
    spec = importlib.util.spec_from_file_location("spec_conftest", ROOT / "tests/spec/conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conftest = _conftest()


def test_the_playbook_sets_self_healings_services_per_image(monkeypatch) -> None:
    monkeypatch.delenv("GOLDSMITH_PLAYBOOK", raising=False)
    assert conftest.expected("self_healing")["self_healing_services"] == []
    monkeypatch.setenv("GOLDSMITH_PLAYBOOK", "playbooks/base.yml")
    base = [s["name"] for s in conftest.expected("self_healing")["self_healing_services"]]
    monkeypatch.setenv("GOLDSMITH_PLAYBOOK", str(ROOT / "playbooks/web.yml"))
    web = [s["name"] for s in conftest.expected("self_healing")["self_healing_services"]]
    assert base == ["ssh", "prometheus-node-exporter"]
    assert web == ["nginx"]  # web is layered on base: base's services are its parent's


def test_play_vars_then_the_role_entrys_own(tmp_path: Path) -> None:
    playbook = tmp_path / "p.yml"
    playbook.write_text(
        "- hosts: all\n  vars: {nginx_port: 8080, nginx_root: /srv}\n"
        "  roles:\n    - role: nginx\n      vars: {nginx_port: 8443}\n    - base\n"
        "- hosts: all\n  roles: [base]\n"
    )
    assert conftest.playbook_vars("nginx", playbook) == {"nginx_port": 8443, "nginx_root": "/srv"}
    assert conftest.playbook_vars("base", playbook) == {"nginx_port": 8080, "nginx_root": "/srv"}
    assert conftest.playbook_vars("ssh_hardening", playbook) == {}


def test_reading_a_templated_value_names_the_file_and_key(monkeypatch) -> None:
    monkeypatch.delenv("GOLDSMITH_PLAYBOOK", raising=False)
    values = conftest.expected("nginx")
    assert values["nginx_port"] == 80  # literal: fine
    with pytest.raises(
        conftest.SpecDefaultsError,
        match=r"nginx/defaults/main.yml: key 'nginx_service' is templated",
    ):
        values["nginx_service"]  # this OS's name, from vars/Debian.yml


def test_a_missing_playbook_is_named(monkeypatch) -> None:
    monkeypatch.setenv("GOLDSMITH_PLAYBOOK", "playbooks/nope.yml")
    with pytest.raises(conftest.SpecDefaultsError, match="GOLDSMITH_PLAYBOOK=playbooks/nope.yml"):
        conftest.expected("nginx")
