"""Ansible callback: how long each task took, one JSON line per task, beside the normal output.

A bake enables it (goldsmith.pipeline), so the manifest says where a provision's time went:
per task (role, name, action, seconds) and per role. It writes nothing unless
GOLDSMITH_TIMINGS_FILE is set.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: goldsmith_timings
type: aggregate
short_description: write each task's wall time (role, name, action) as JSON lines
description:
  - Appends one JSON object per line to the file named by GOLDSMITH_TIMINGS_FILE,
    a "task" event per task or handler when the next one starts (or the play ends),
    with its role, name, action and seconds.
requirements:
  - enabled in callbacks_enabled (ANSIBLE_CALLBACKS_ENABLED=goldsmith_timings)
"""


class CallbackModule(CallbackBase):
    """Writes each task's wall time for goldsmith's manifest and benchmark."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "goldsmith_timings"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("GOLDSMITH_TIMINGS_FILE", "")
        self._current: dict | None = None

    def _finish(self) -> None:
        """Close the running task: the time from its start to now."""
        if self._current is None or not self._path:
            self._current = None
            return
        event = self._current
        event["seconds"] = round(time.monotonic() - event.pop("_t0"), 3)
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
        self._current = None

    def _start(self, task, handler: bool) -> None:
        self._finish()
        role = task._role.get_name(include_role_fqcn=False) if task._role else None
        self._current = {
            "event": "task",
            "role": role,
            # A task without a name is known by its action, as Ansible shows it.
            "task": str(task.name or task.action),
            "action": str(task.action),
            "handler": handler,
            "_t0": time.monotonic(),
        }

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._start(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._start(task, handler=True)

    def v2_playbook_on_play_start(self, play) -> None:
        self._finish()

    def v2_playbook_on_stats(self, stats) -> None:
        self._finish()
