"""Ansible callback: record every changed task as one JSON line, beside the normal output.

goldsmith's idempotence check (goldsmith.devloop) enables it for the second converge and reads
the file it writes, so changed tasks are known by role, name, tags and host without
scraping the human-readable output. It writes nothing unless GOLDSMITH_CHANGES_FILE is set.
"""

from __future__ import annotations

import json
import os

from ansible.playbook.handler import Handler
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: goldsmith_changes
type: aggregate
short_description: write changed tasks (role, name, tags, host) as JSON lines
description:
  - Appends one JSON object per line to the file named by GOLDSMITH_CHANGES_FILE,
    a "start" event, one "changed" event per changed task and host, and a "stats" event.
requirements:
  - enabled in callbacks_enabled (ANSIBLE_CALLBACKS_ENABLED=goldsmith_changes)
"""


class CallbackModule(CallbackBase):
    """Writes changed tasks for goldsmith's idempotence check."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "goldsmith_changes"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("GOLDSMITH_CHANGES_FILE", "")

    def _write(self, event: dict) -> None:
        if not self._path:
            return
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")

    def v2_playbook_on_start(self, playbook) -> None:
        self._write({"event": "start", "playbook": str(playbook._file_name)})

    def _changed(self, result, failed: bool = False) -> None:
        data = result._result
        if not data.get("changed"):
            return
        task = result._task
        role = task._role.get_name(include_role_fqcn=False) if task._role else None
        self._write(
            {
                "event": "changed",
                "host": result._host.get_name(),
                "role": role,
                # A task without a name is known by its action, as Ansible shows it.
                "task": str(task.name or task.action),
                "action": str(task.action),
                "tags": sorted(str(t) for t in (task.tags or [])),
                "handler": isinstance(task, Handler),
                "failed": failed,
            }
        )

    def v2_runner_on_ok(self, result) -> None:
        self._changed(result)

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        # A failure that stops the play fails the converge anyway; an ignored one that
        # changed something still changed it.
        if ignore_errors:
            self._changed(result, failed=True)

    def v2_playbook_on_stats(self, stats) -> None:
        self._write(
            {
                "event": "stats",
                "changed": {h: stats.summarize(h)["changed"] for h in sorted(stats.processed)},
            }
        )
