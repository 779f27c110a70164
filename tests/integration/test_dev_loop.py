"""The role developer's loop on a real VM, and specs against any host.

One dev VM for the web image serves the whole module (a converge under TCG takes
minutes). web is layered on base, so the VM boots from base's proven build (the suite's
`proven_base`) and a converge applies web's own playbook: up, converge, verify (base's
specs and web's), idempotence of every shipped role (base's playbook and web's run again),
`./run spec` against it (by address and by inventory), then
edits in throwaway copies of the project (their .cache is the real one, so they reach the
same VM by name), then down.
Tests run in file order; the ones that edit the VM's roles come last.
"""

from __future__ import annotations

import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, invoke, vm_processes

from goldsmith import devloop, vm
from goldsmith.catalogue import load
from goldsmith.roles import role_defaults

# The lane whose first bake is base (./run test runs two lanes of bakes side by side).
pytestmark = [pytest.mark.bake, pytest.mark.base_lane]

NAME = "test-dev-web"


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read().decode()


def out(proc) -> str:
    return proc.stdout + proc.stderr


def passed_cases(junit: Path) -> list[ET.Element]:
    """The JUnit's test cases, asserting none failed."""
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert not [c for c in cases if c.find("failure") is not None or c.find("error") is not None]
    return cases


@pytest.fixture(scope="module")
def dev_vm(proven_base: Path):
    """`./run up --image web`: a dev VM kept running for the module; down at the end."""
    invoke(ROOT, "down", "--name", NAME)  # left over from an interrupted run
    proc = invoke(ROOT, "up", "--image", "web", "--name", NAME)
    assert proc.returncode == 0, out(proc)[-3000:]
    assert "web is layered on base: booting its proven build" in proc.stdout
    assert "[packer]" not in proc.stdout, "base was proven by the suite: up bakes nothing"
    yield devloop.find(ROOT, "web", NAME)
    invoke(ROOT, "down", "--name", NAME)


@pytest.fixture(scope="module")
def converged(dev_vm: devloop.DevVM) -> devloop.DevVM:
    """`./run converge`: the web playbook applied to the dev VM."""
    proc = invoke(ROOT, "converge", "--image", "web", "--name", NAME)
    assert proc.returncode == 0, out(proc)[-3000:]
    assert "PLAY RECAP" in proc.stdout and "failed=0" in proc.stdout
    return dev_vm


def test_up_boots_a_dev_vm_from_the_parents_build_kept_running(dev_vm: devloop.DevVM) -> None:
    assert dev_vm.image == "web" and dev_vm.machine.running()
    assert set(dev_vm.machine.forwards) == {22, 80, 9100}
    assert vm_processes(NAME), "the dev VM is not running"
    # Found by image name through its state in .cache/vms/.
    assert (ROOT / ".cache/vms" / NAME / "dev.json").is_file()
    proc = invoke(ROOT, "login", "--name", NAME, "--command", "id -un && sudo -n true && echo sudo")
    assert proc.returncode == 0, out(proc)
    assert proc.stdout.split() == ["goldsmith", "sudo"]
    # A second `up` finds it running and boots nothing.
    proc = invoke(ROOT, "up", "--image", "web", "--name", NAME)
    assert proc.returncode == 0 and "already up" in proc.stdout


def test_converge_applies_the_web_playbook_and_verify_passes(converged: devloop.DevVM) -> None:
    nginx = role_defaults("nginx", ROOT)
    body = http_get(converged.machine.forwards[80], nginx["nginx_health_path"])
    assert body.strip() == str(nginx["nginx_health_body"])
    assert "node_cpu_seconds_total" in http_get(converged.machine.forwards[9100], "/metrics")

    proc = invoke(ROOT, "verify", "--image", "web", "--name", NAME)
    assert proc.returncode == 0, out(proc)[-3000:]
    junit = ROOT / "build/dev" / f"{NAME}-junit.xml"
    assert len(passed_cases(junit)) > 5
    suites = [s.get("name") for s in ET.parse(junit).getroot().iter("testsuite")]
    assert suites == ["spec base", f"verify-{NAME}"], "base's specs, then web's own"


def test_idempotence_passes_for_every_shipped_role(converged: devloop.DevVM) -> None:
    shipped = {p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir()}
    catalogue = load(ROOT / "images.yml")
    layers = catalogue.layers(catalogue.image("web"))
    assert [i.name for i in layers] == ["base", "web"]
    assert {r for i in layers for r in catalogue.role_map(i).roles} == shipped, (
        "base's and web's playbooks must apply every shipped role for this test to prove them all"
    )
    proc = invoke(ROOT, "idempotence", "--image", "web", "--name", NAME)
    assert proc.returncode == 0, out(proc)[-5000:]
    assert "the second converge changed nothing" in proc.stdout
    # Both layers' playbooks ran, and neither changed anything.
    assert "playbooks/base.yml -> " in proc.stdout and "playbooks/web.yml -> " in proc.stdout
    assert len(re.findall(rf"{NAME}\s+: ok=\d+\s+changed=0 ", proc.stdout)) == 2


def test_spec_against_the_converged_vm_passes(converged: devloop.DevVM, tmp_path: Path) -> None:
    m = converged.machine
    junit = tmp_path / "spec-junit.xml"
    proc = invoke(
        ROOT,
        "spec",
        "--image",
        "web",
        "--hosts",
        f"goldsmith@127.0.0.1:{m.ssh_port}",  # no scheme: ssh:// is implied
        "--key",
        str(m.key),
        "--junit",
        str(junit),
    )
    assert proc.returncode == 0, out(proc)[-3000:]
    assert len(passed_cases(junit)) > 5


def test_spec_by_inventory_reads_group_vars_and_patterns(
    converged: devloop.DevVM, tmp_path: Path
) -> None:
    """The VM reached through an inventory Ansible reads: a range, :children, group_vars."""
    m = converged.machine
    (tmp_path / "inventory.ini").write_text("[dev]\ndev-web[1:1]\n\n[fleet:children]\ndev\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars/fleet.yml").write_text(
        f"ansible_host: 127.0.0.1\nansible_port: {m.ssh_port}\nansible_user: goldsmith\n"
        f"ansible_ssh_private_key_file: {m.key}\n"
    )
    junit = tmp_path / "spec-junit.xml"
    proc = invoke(
        ROOT,
        "spec",
        "--image",
        "web",
        "--inventory",
        str(tmp_path / "inventory.ini"),
        "--junit",
        str(junit),
    )
    assert proc.returncode == 0, out(proc)[-3000:]
    assert f"dev-web1 (ssh://goldsmith@127.0.0.1:{m.ssh_port})" in proc.stdout
    suites = [s.get("name") for s in ET.parse(junit).getroot().iter("testsuite")]
    assert suites == ["dev-web1 [base]", "dev-web1"] and len(passed_cases(junit)) > 5


def nginx_only(project: Path) -> None:
    """Make the copy's web playbook apply nginx alone: a re-converge in about a minute.

    The whole playbook's idempotence is proved above; these tests prove the loop's
    mechanics on an edited role, and the CI budget has no room for more full converges.
    """
    (project / "playbooks/web.yml").write_text(
        "---\n- name: Iterate on nginx\n  hosts: all\n  become: true\n  roles: [nginx]\n"
    )
    # One layer: verify and idempotence then leave base's playbook and specs out (they
    # are proved above on the same VM).
    catalogue = yaml.safe_load((project / "images.yml").read_text())
    catalogue["images"]["web"] = {
        "base": "debian12",
        "playbook": "playbooks/web.yml",
        "targets": ["local"],
    }
    (project / "images.yml").write_text(yaml.safe_dump(catalogue, sort_keys=False))


def test_a_non_idempotent_task_fails_idempotence_naming_it(
    converged: devloop.DevVM, scratch: Path
) -> None:
    nginx_only(scratch)
    tasks = scratch / "roles/nginx/tasks/main.yml"
    tasks.write_text(
        tasks.read_text() + "\n- name: Count the workers on every run\n"
        "  ansible.builtin.command: pgrep -c nginx\n"
        "\n- name: Rotate the demo token\n"
        "  ansible.builtin.command: /bin/true\n"
        "  tags: [molecule-idempotence-notest]\n"
    )
    proc = invoke(scratch, "idempotence", "--image", "web", "--name", NAME)
    assert proc.returncode != 0
    assert "1 task(s) changed" in proc.stderr, out(proc)[-3000:]
    assert "task [nginx : Count the workers on every run]" in proc.stderr
    assert "Rotate the demo token" not in proc.stderr


MARKER_TASK = """
- name: Write the dev loop marker
  ansible.builtin.copy:
    dest: /etc/goldsmith-dev-marker
    content: "{{ nginx_health_body }}\\n"
    owner: root
    group: root
    mode: "0644"
"""
MARKER_SPEC = """\
def test_dev_loop_marker_holds_the_health_body(host, defaults):
    body = defaults["nginx_health_body"]
    assert host.file("/etc/goldsmith-dev-marker").content_string == f"{body}\\n"
"""


def test_a_changed_task_is_applied_by_converge_and_checked_by_verify(
    converged: devloop.DevVM, scratch: Path
) -> None:
    nginx_only(scratch)
    tasks = scratch / "roles/nginx/tasks/main.yml"
    tasks.write_text(tasks.read_text() + MARKER_TASK)
    (scratch / "tests/spec/nginx/test_dev_marker.py").write_text(MARKER_SPEC)
    defaults = scratch / "roles/nginx/defaults/main.yml"
    text = defaults.read_text()
    assert "nginx_health_body: ok" in text
    defaults.write_text(text.replace("nginx_health_body: ok", "nginx_health_body: edited"))

    # Before the converge, verify sees the VM does not match the edited role.
    proc = invoke(scratch, "verify", "--image", "web", "--name", NAME)
    assert proc.returncode != 0
    assert "test_dev_loop_marker_holds_the_health_body" in proc.stderr, out(proc)[-3000:]

    started = time.monotonic()
    proc = invoke(scratch, "converge", "--image", "web", "--name", NAME)
    wall = time.monotonic() - started
    assert proc.returncode == 0, out(proc)[-3000:]
    ansible = float(re.search(r"ansible-playbook ran ([0-9.]+)s", proc.stdout).group(1))
    # Nothing is rebuilt: goldsmith (and starting Python and invoke) adds seconds at most.
    assert wall - ansible < 10, f"converge took {wall:.0f}s, Ansible {ansible:.0f}s"
    assert not (scratch / "build/web").exists() and "packer" not in proc.stdout.lower()
    path = role_defaults("nginx", scratch)["nginx_health_path"]
    assert http_get(converged.machine.forwards[80], path).strip() == "edited"

    proc = invoke(scratch, "verify", "--image", "web", "--name", NAME)
    assert proc.returncode == 0, out(proc)[-3000:]


def test_down_stops_and_removes_the_dev_vm(dev_vm: devloop.DevVM) -> None:
    proc = invoke(ROOT, "down", "--image", "web", "--name", NAME)
    assert proc.returncode == 0
    assert vm.status(NAME, ROOT) is None
    assert not vm_processes(NAME), "a qemu of this module outlived `./run down`"
    proc = invoke(ROOT, "converge", "--image", "web", "--name", NAME)
    assert proc.returncode != 0 and f"dev VM {NAME} is not up" in proc.stderr
