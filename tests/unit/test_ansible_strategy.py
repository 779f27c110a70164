"""How goldsmith runs Ansible: the strategy setting takes effect, and the timings callback
writes what the manifest's provision profile is made of.

A real ansible-playbook runs on this machine (connection local): under Mitogen the
modules of two tasks run in one Python process that stays up, under Ansible's linear
strategy each task starts its own, and that is what the tasks' shells report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from goldsmith import ansible_env
from goldsmith.errors import GoldsmithError
from goldsmith.settings import Settings

ROLE_TASKS = """\
- name: Report the module's process
  ansible.builtin.shell: echo $PPID
  register: probe_first
  changed_when: false
- name: Report the module's process again
  ansible.builtin.shell: echo $PPID
  register: probe_second
  changed_when: false
- name: Write both
  ansible.builtin.copy:
    dest: "{{ probe_out }}"
    content: "{{ [probe_first.stdout, probe_second.stdout] | to_json }}"
    mode: "0644"
"""
PLAYBOOK = """\
- name: Exercise the strategy and the timings callback
  hosts: all
  gather_facts: false
  roles:
    - role: probe
"""


def run(tmp_path: Path, strategy: str) -> tuple[list[str], list[str]]:
    """Run the probe role with `strategy`; the two tasks' module PIDs and the timings lines."""
    (tmp_path / "roles/probe/tasks").mkdir(parents=True)
    (tmp_path / "roles/probe/tasks/main.yml").write_text(ROLE_TASKS)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    timings = tmp_path / "timings.jsonl"
    out = tmp_path / "pids.json"
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-e",
        f"probe_out={out}",
        "play.yml",
    ]
    env = {
        **os.environ,
        **ansible_env.ansible_env(tmp_path, strategy),
        **ansible_env.timings_env(timings),
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
    }
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), timings.read_text().splitlines()


@pytest.fixture(scope="module")
def mitogen_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    return run(tmp_path_factory.mktemp("mitogen"), "mitogen")


def test_mitogen_runs_every_module_in_one_process_linear_starts_one_per_task(
    tmp_path: Path, mitogen_run: tuple[list[str], list[str]]
) -> None:
    mitogen, _ = mitogen_run
    linear, _ = run(tmp_path, "linear")
    assert mitogen[0] == mitogen[1], mitogen
    assert linear[0] != linear[1], linear


def test_the_timings_callback_times_every_task_by_role(
    mitogen_run: tuple[list[str], list[str]],
) -> None:
    assert ansible_env.DEFAULT_STRATEGY == "mitogen"
    _, lines = mitogen_run
    events = [json.loads(line) for line in lines]
    assert [(e["role"], e["task"]) for e in events] == [
        ("probe", "Report the module's process"),
        ("probe", "Report the module's process again"),
        ("probe", "Write both"),
    ]
    assert all(e["seconds"] > 0 for e in events)
    prof = ansible_env.profile(lines, slowest=2)
    assert prof["tasks"] == 3
    assert prof["by_role"] == {"probe": pytest.approx(sum(e["seconds"] for e in events), abs=0.2)}
    assert [t["task"] for t in prof["slowest"]] == [
        e["task"] for e in sorted(events, key=lambda e: -e["seconds"])[:2]
    ]


def test_profile_sums_per_role_and_the_play_own_tasks() -> None:
    lines = [
        json.dumps({"event": "task", "role": None, "task": "Gathering Facts", "seconds": 4.0}),
        json.dumps({"event": "task", "role": "base", "task": "a", "seconds": 1.25}),
        json.dumps({"event": "task", "role": "base", "task": "b", "seconds": 2.5}),
        json.dumps({"event": "task", "role": "nginx", "task": "c", "seconds": 0.5}),
    ]
    prof = ansible_env.profile(lines, slowest=1)
    assert prof == {
        "tasks": 4,
        "seconds": 8.2,
        "by_role": {"(play)": 4.0, "base": 3.8, "nginx": 0.5},
        "slowest": [{"role": None, "task": "Gathering Facts", "seconds": 4.0}],
    }
    assert ansible_env.profile([]) == {"tasks": 0, "seconds": 0, "by_role": {}, "slowest": []}


def test_the_strategy_setting_is_checked() -> None:
    assert Settings().ansible_strategy == "mitogen"
    assert Settings.from_config({"ansible_strategy": "linear"}).ansible_strategy == "linear"
    with pytest.raises(GoldsmithError, match="goldsmith.ansible_strategy='free'"):
        Settings.from_config({"ansible_strategy": "free"})
