"""How goldsmith runs Ansible: the environment every ansible-playbook run gets.

Bakes, the dev loop and specs against any host all run Ansible the same way, so this
sits below all of them (it imports nothing of goldsmith's). ansible.cfg at the project
root says the same for a plain `ansible-playbook` run without goldsmith.
"""

from __future__ import annotations

import json
from pathlib import Path

# How tasks reach a machine. mitogen: Mitogen's strategy keeps one Python interpreter on
# the machine for the whole run and sends modules to it, instead of starting Python (and
# unpacking the module) per task; in a TCG guest a task costs about 0.3 s instead of 6 s
# (bench/README.md). linear: Ansible's own, as a plain `ansible-playbook` runs.
STRATEGIES = ("mitogen", "linear")
DEFAULT_STRATEGY = "mitogen"
CALLBACK_DIR = Path(__file__).parent / "ansible_plugins" / "callback"

# Third-party roles and collections (goldsmith.requirements): committed for air-gapped
# builds in vendor/, else installed (not committed) in .galaxy/.
VENDOR_DIR = "vendor"
INSTALLED_DIR = ".galaxy"


def third_party_dir(root: Path) -> Path:
    """Where the project's third-party content is: vendor/ when it exists, else .galaxy/."""
    vendored = root / VENDOR_DIR
    return vendored if vendored.is_dir() else root / INSTALLED_DIR


def roles_path(root: Path) -> list[Path]:
    """The project's roles first, then the pinned standalone roles."""
    return [root / "roles", third_party_dir(root) / "roles"]


def collections_path(root: Path) -> Path:
    return third_party_dir(root) / "collections"


def strategy_env(strategy: str) -> dict[str, str]:
    """The environment that selects `strategy` (one of STRATEGIES)."""
    if strategy == "linear":
        return {"ANSIBLE_STRATEGY": "linear"}
    if strategy != "mitogen":
        raise ValueError(f"unknown Ansible strategy {strategy!r} (one of {STRATEGIES})")
    import ansible_mitogen  # noqa: PLC0415  (only where it is used)

    plugins = Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def ansible_env(root: Path, strategy: str = "linear") -> dict[str, str]:
    """The project's roles and pinned collections only (none from the Python install);
    no host key prompts, no colour, pipelining; tasks run with `strategy`."""
    return {
        **strategy_env(strategy),
        "ANSIBLE_ROLES_PATH": ":".join(str(p) for p in roles_path(root)),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path(root)),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
        "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
        "ANSIBLE_PIPELINING": "True",
        # The SSH connection's timeout: Ansible's 10 s default is too short for a machine
        # under emulation on a busy host (a twin kid's first task timed out so).
        "ANSIBLE_TIMEOUT": "60",
    }


TIMINGS_CALLBACK = "goldsmith_timings"


def timings_env(path: Path) -> dict[str, str]:
    """The environment that makes ansible-playbook write each task's time to `path`
    (callback plugins/callback/goldsmith_timings.py)."""
    return {
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": TIMINGS_CALLBACK,
        "GOLDSMITH_TIMINGS_FILE": str(path),
    }


def profile(lines: list[str], slowest: int = 10) -> dict:
    """Where a run's time went, from the timings callback's JSON lines: the number of
    tasks, their seconds, the seconds per role (None: the play's own, e.g. facts) and
    the slowest tasks."""
    tasks = [e for e in map(json.loads, lines) if e.get("event") == "task"]
    by_role: dict[str, float] = {}
    for e in tasks:
        key = e["role"] or "(play)"
        by_role[key] = by_role.get(key, 0.0) + e["seconds"]
    top = sorted(tasks, key=lambda e: e["seconds"], reverse=True)[:slowest]
    return {
        "tasks": len(tasks),
        "seconds": round(sum(e["seconds"] for e in tasks), 1),
        "by_role": {k: round(v, 1) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])},
        "slowest": [
            {"role": e["role"], "task": e["task"], "seconds": round(e["seconds"], 1)} for e in top
        ],
    }
