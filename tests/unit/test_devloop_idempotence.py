"""Idempotence: which tasks changed, read from the goldsmith_changes callback's record.

The parser is fed both hand-written records (every shape it must handle) and the record a
real ansible-playbook writes on this machine (connection local, commands that do nothing),
so a change in Ansible's callback API fails here, not in a half-hour bake.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from goldsmith import devloop
from goldsmith.errors import GoldsmithError


def record(*events: dict) -> list[str]:
    return [json.dumps(e) for e in events]


START = {"event": "start", "playbook": "web.yml"}


def changed(task: str, role: str | None = "nginx", tags=(), handler=False, host="dev-web"):
    return {
        "event": "changed",
        "host": host,
        "role": role,
        "task": task,
        "tags": list(tags),
        "handler": handler,
    }


def stats(n: int, host: str = "dev-web") -> dict:
    return {"event": "stats", "changed": {host: n}}


def test_no_change_passes() -> None:
    out = devloop.parse_changes(record(START, stats(0)))
    assert out.changed == [] and out.exempt == [] and out.counted == {"dev-web": 0}


def test_every_changed_task_is_listed_with_role_and_name() -> None:
    out = devloop.parse_changes(
        record(
            START,
            changed("Install nginx"),
            changed("Reload nginx", handler=True),
            changed("ansible.builtin.command", role=None),
            stats(3),
        )
    )
    assert [str(t) for t in out.changed] == [
        "task [nginx : Install nginx] on dev-web",
        "handler [nginx : Reload nginx] on dev-web",
        "task [ansible.builtin.command] on dev-web",
    ]


@pytest.mark.parametrize("tag", devloop.EXEMPT_TAGS)
def test_a_task_with_an_exempt_tag_is_not_counted(tag: str) -> None:
    out = devloop.parse_changes(
        record(
            START, changed("Rotate the key", tags=("web", tag)), changed("Install nginx"), stats(2)
        )
    )
    assert [t.task for t in out.changed] == ["Install nginx"]
    assert [t.task for t in out.exempt] == ["Rotate the key"]


def test_a_record_without_start_or_stats_is_an_error_not_a_pass() -> None:
    with pytest.raises(GoldsmithError, match="no complete run"):
        devloop.parse_changes([])
    with pytest.raises(GoldsmithError, match="no complete run"):
        devloop.parse_changes(record(START))  # ansible died before its recap


def test_changes_ansible_counted_but_nobody_recorded_are_an_error() -> None:
    with pytest.raises(GoldsmithError, match="counted 2 change"):
        devloop.parse_changes(record(START, changed("Install nginx"), stats(2)))


def test_a_line_that_is_not_json_is_named() -> None:
    with pytest.raises(GoldsmithError, match="line 2 is not JSON"):
        devloop.parse_changes([json.dumps(START), "oops"])


ROLE_TASKS = """\
- name: Run a command without changed_when
  ansible.builtin.command: /bin/true
  notify: Say the role changed
- name: Run a command Molecule is told to ignore
  ansible.builtin.command: /bin/true
  tags: [molecule-idempotence-notest]
- name: Run a command that says it changes nothing
  ansible.builtin.command: /bin/true
  changed_when: false
- name: Run a command per item
  ansible.builtin.command: "echo {{ item }}"
  loop: [1, 2]
  changed_when: false
"""
HANDLERS = """\
- name: Say the role changed
  ansible.builtin.command: /bin/true
"""
PLAYBOOK = """\
- name: Exercise the callback
  hosts: all
  gather_facts: false
  roles:
    - role: probe
  tasks:
    - name: Run a command in a block tagged exempt
      tags: [goldsmith-idempotence-notest]
      block:
        - name: Run the inner command
          ansible.builtin.command: /bin/true
"""


def run_playbook(tmp_path: Path, skip_tags: tuple[str, ...] = ()) -> devloop.Changes:
    (tmp_path / "roles/probe/tasks").mkdir(parents=True)
    (tmp_path / "roles/probe/handlers").mkdir(parents=True)
    (tmp_path / "roles/probe/tasks/main.yml").write_text(ROLE_TASKS)
    (tmp_path / "roles/probe/handlers/main.yml").write_text(HANDLERS)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    changes_file = tmp_path / "changes.jsonl"
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "play.yml",
    ]
    if skip_tags:
        argv += ["--skip-tags", ",".join(skip_tags)]
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
        **devloop.changes_env(changes_file),
    }
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return devloop.parse_changes(changes_file.read_text().splitlines())


def test_real_ansible_run_names_changed_tasks_and_exempts_tagged_ones(tmp_path: Path) -> None:
    out = run_playbook(tmp_path)
    assert [str(t) for t in out.changed] == [
        "task [probe : Run a command without changed_when] on localhost",
        "handler [probe : Say the role changed] on localhost",
    ]
    # Exempt by its own tag, and by a tag inherited from its block.
    assert sorted(t.task for t in out.exempt) == [
        "Run a command Molecule is told to ignore",
        "Run the inner command",
    ]
    assert out.counted == {"localhost": 4}


def test_real_ansible_run_skips_exempt_tags_as_molecule_does(tmp_path: Path) -> None:
    out = run_playbook(tmp_path, skip_tags=devloop.EXEMPT_TAGS)
    assert out.exempt == []
    assert [t.task for t in out.changed] == [
        "Run a command without changed_when",
        "Say the role changed",
    ]
