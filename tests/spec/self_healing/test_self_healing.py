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


@pytest.fixture(params=_SERVICES, ids=[s["name"] for s in _SERVICES])
def service(request, host, defaults) -> dict[str, Any]:
    """One listed service, with its effective systemd properties; skipped if not installed."""
    wanted = request.param
    unit = f"{wanted['name']}.service"
    if host.run(f"systemctl cat {unit}").rc != 0:
        pytest.skip(f"{unit} is not installed on this image")
    props = host.check_output(
        f"systemctl show {unit} -p Restart -p RestartUSec -p StartLimitIntervalUSec "
        "-p StartLimitBurst -p MemoryHigh -p MemoryMax -p OOMPolicy -p ControlGroup -p ActiveState"
    )
    shown = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    return {"unit": unit, "wanted": wanted, "shown": shown}


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
    the service into its crash-loop limit."""
    return (
        f"old=$(systemctl show -p MainPID --value {unit}); "
        f'[ "$old" -gt 0 ] || {{ echo "{unit} 2 no main process"; exit 0; }}; '
        f"before=$(systemctl show -p NRestarts --value {unit}); "
        'kill -KILL "$old"; '
        f"for i in $(seq {wait * 2}); do sleep 0.5; "
        f"new=$(systemctl show -p MainPID --value {unit}); "
        f'if [ "$(systemctl is-active {unit})" = active ] && [ "$new" -gt 0 ]'
        ' && [ "$new" != "$old" ]; then '
        f"after=$(systemctl show -p NRestarts --value {unit}); "
        f"systemctl reset-failed {unit}; "
        f'echo "{unit} 0 restarted $old -> $new after $((after - before)) restart(s)"; '
        "exit 0; fi; done; "
        f'echo "{unit} 1 not back after {wait}s: $(systemctl is-active {unit})"'
    )


@pytest.fixture(scope="module")
def revived(host, defaults) -> dict[str, tuple[int, str]]:
    """Every installed listed service killed at once and awaited together (each restart
    takes its RestartSec; one after the other they would add up): unit -> (status, what
    happened). One remote command does the kills and the waits, so the check survives
    the SSH server's own restart."""
    scripts = []
    for wanted in _SERVICES:
        unit = f"{wanted['name']}.service"
        if host.run(f"systemctl cat {unit}").rc == 0:
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
