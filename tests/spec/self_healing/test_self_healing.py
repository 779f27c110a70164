"""Spec of the `self_healing` role: the image's services come back when they die.

Every service in the playbook's `self_healing_services` that is installed on the machine
must carry the restart
policy, the crash-loop limit and the memory ceiling, as systemd and the kernel apply
them, and must really come back after its main process is killed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import expected

# The role variable listing the services this spec kills (see tests/spec/README.md).
RESTARTS = "self_healing_services"

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def seconds(span: str) -> float:
    """A systemd time span as `systemctl show` prints it ("5s", "1min 30s", "500ms")."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(us|ms|min|s|h|d)", span):
        total += float(number) * _TIME_UNITS[unit]
    return total


def size(value: str) -> int:
    """A systemd size ("128M", "1G", "1024") in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", str(value).strip())
    assert m, f"not a size: {value!r}"
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


# Parametrized by the list the image's playbook gives the role, so each service is
# reported by name.
_SERVICES: list[dict[str, Any]] = expected("self_healing")["self_healing_services"]


_PROPERTIES = (
    "Restart RestartUSec StartLimitIntervalUSec StartLimitBurst MemoryHigh MemoryMax OOMPolicy "
    "ControlGroup ActiveState"
).split()


@pytest.fixture(scope="module")
def units(host) -> dict[str, dict[str, str] | None]:
    """Each listed service's unit -> its effective systemd properties, or None when it is
    not installed (`systemctl cat` fails), read once for every test of the module: one
    command for them all (each `systemctl` costs a few tenths of a second in an emulated
    guest), before any service is killed."""
    names = [f"{s['name']}.service" for s in _SERVICES]
    props = " ".join(f"-p {p}" for p in _PROPERTIES)
    script = "; ".join(
        f"if systemctl cat {u} >/dev/null; then echo '=' {u}; systemctl show {u} {props}"
        f" || echo '! {u} show failed'; else echo '-' {u}; fi"
        for u in names
    )
    found: dict[str, dict[str, str] | None] = {}
    shown: dict[str, str] = {}
    for line in host.check_output(script).splitlines():
        if line.startswith(("= ", "- ")):
            shown = {}
            found[line[2:]] = shown if line[0] == "=" else None
        elif line.startswith("! "):
            pytest.fail(f"systemctl show {line[2:]}")
        elif "=" in line:
            key, value = line.split("=", 1)
            shown[key] = value
    assert sorted(found) == sorted(names), found
    return found


@pytest.fixture(params=_SERVICES, ids=[s["name"] for s in _SERVICES])
def service(request, units) -> dict[str, Any]:
    """One listed service, with its effective systemd properties; skipped if not installed."""
    wanted = request.param
    unit = f"{wanted['name']}.service"
    if units[unit] is None:
        pytest.skip(f"{unit} is not installed on this image")
    return {"unit": unit, "wanted": wanted, "shown": units[unit]}


def test_self_healing_is_on(defaults):
    assert defaults["self_healing_enabled"], "self_healing is off in its defaults: nothing to prove"


def test_service_restarts_on_failure(service, defaults):
    wanted, shown = service["wanted"], service["shown"]
    assert shown["Restart"] == wanted.get("restart", defaults["self_healing_restart"])
    restart_sec = wanted.get("restart_sec", defaults["self_healing_restart_sec"])
    assert seconds(shown["RestartUSec"]) == restart_sec


def test_crash_loop_is_limited(service, defaults):
    shown = service["shown"]
    interval = defaults["self_healing_start_limit_interval_sec"]
    assert seconds(shown["StartLimitIntervalUSec"]) == interval
    assert int(shown["StartLimitBurst"]) == defaults["self_healing_start_limit_burst"]


def test_memory_ceiling_is_enforced_by_the_kernel(host, service):
    wanted, shown = service["wanted"], service["shown"]
    if "memory_max" not in wanted and "memory_high" not in wanted:
        pytest.skip(f"{service['unit']} has no memory ceiling in the defaults")
    cgroup = f"/sys/fs/cgroup{shown['ControlGroup']}"
    knobs = (
        ("memory_max", "MemoryMax", "memory.max"),
        ("memory_high", "MemoryHigh", "memory.high"),
    )
    for key, prop, knob in knobs:
        if key in wanted:
            limit = size(wanted[key])
            assert int(shown[prop]) == limit, prop
            # What the kernel enforces, not only what systemd was told.
            assert int(host.file(f"{cgroup}/{knob}").content_string.strip()) == limit, knob
    if "memory_max" in wanted:
        assert shown["OOMPolicy"] == "stop"


def _revive_script(unit: str, wait: int) -> str:
    """Kill `unit`'s main process with SIGKILL and wait up to `wait` s for systemd to
    start it again; print one line: the unit, 0 (back) or 1/2 (not), what happened. The
    start-limit counter is reset afterwards, so running the spec again does not push
    the service into its crash-loop limit.

    Each look at the unit is one `systemctl show` of its MainPID, ActiveState (what
    `systemctl is-active` prints) and NRestarts, read by the shell itself: the sooner a
    look ends, the sooner the restart is seen."""
    return (
        "look() { pid=0; state=; restarts=0; "
        f"for kv in $(systemctl show -p MainPID -p ActiveState -p NRestarts {unit}); do "
        'case "$kv" in MainPID=*) pid=${kv#*=};; ActiveState=*) state=${kv#*=};; '
        "NRestarts=*) restarts=${kv#*=};; esac; done; }; "
        "look; old=$pid; before=$restarts; "
        f'[ "$old" -gt 0 ] || {{ echo "{unit} 2 no main process"; exit 0; }}; '
        'kill -KILL "$old"; '
        f"for i in $(seq {wait * 2}); do sleep 0.5; look; "
        'if [ "$state" = active ] && [ "$pid" -gt 0 ] && [ "$pid" != "$old" ]; then '
        f"systemctl reset-failed {unit}; "
        f'echo "{unit} 0 restarted $old -> $pid after $((restarts - before)) restart(s)"; '
        "exit 0; fi; done; "
        f'echo "{unit} 1 not back after {wait}s: $state"'
    )


@pytest.fixture(scope="module")
def revived(host, defaults, units) -> dict[str, tuple[int, str]]:
    """Every installed listed service killed at once and awaited together (each restart
    takes its RestartSec; one after the other they would add up): unit -> (status, what
    happened). One remote command does the kills and the waits, so the check survives
    the SSH server's own restart."""
    scripts = []
    for wanted in _SERVICES:
        unit = f"{wanted['name']}.service"
        if units[unit] is not None:
            restart_sec = int(wanted.get("restart_sec", defaults["self_healing_restart_sec"]))
            scripts.append(f"( {_revive_script(unit, restart_sec + 60)} ) &")
    out = host.check_output(" ".join([*scripts, "wait"]))
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        unit, status, what = line.split(" ", 2)
        found[unit] = (int(status), what)
    return found


def test_service_comes_back_after_being_killed(service, revived):
    """Its main process killed with SIGKILL, systemd starts the service again, once."""
    status, what = revived.get(service["unit"], (1, "no answer for this unit"))
    assert status == 0, what
    assert "after 1 restart(s)" in what, what
