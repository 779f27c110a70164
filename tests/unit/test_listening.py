"""A local bake's listening sockets: read off the live machine by the spec step, beside
its specs' start and before any spec that restarts services, into the inventory its
sealed disk gives (which cannot show them)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from goldsmith import inventory, spec, spec_shell
from goldsmith.errors import GoldsmithError
from goldsmith.targets import local

SSHD = {"proto": "tcp", "address": "0.0.0.0", "port": 22, "process": "sshd"}


def test_the_reader_sent_to_the_machine_is_inventory_alone_and_prints_its_sockets(
    tmp_path: Path,
) -> None:
    """What goes over SSH is goldsmith.inventory's source and two lines: run here with an
    isolated python3 (no goldsmith on its path), it prints this machine's sockets."""
    source = Path(inventory.__file__).read_text() + spec._LISTENING_MAIN
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-I", "-"], input=source, capture_output=True, text=True, cwd=tmp_path
        )
    found = spec.parse_listening(done.returncode, done.stdout, done.stderr)
    mine = [x for x in found if x["port"] == port and x["proto"] == "tcp"]
    assert mine == [
        {"proto": "tcp", "address": "127.0.0.1", "port": port, "process": mine[0]["process"]}
    ]
    assert mine[0]["process"].startswith("python")


def test_a_failed_or_garbled_read_is_an_error_that_says_what_came_back() -> None:
    with pytest.raises(GoldsmithError, match=r"failed \(exit 1\): sudo: a password is required"):
        spec.parse_listening(1, "", "sudo: a password is required\n")
    with pytest.raises(GoldsmithError, match="not JSON: 'Traceback"):
        spec.parse_listening(0, "Traceback (most recent call last)", "")
    with pytest.raises(GoldsmithError, match="not a list of sockets"):
        spec.parse_listening(0, json.dumps([{"proto": "tcp"}]), "")
    assert spec.parse_listening(0, json.dumps([SSHD]), "") == [SSHD]


def test_an_unreachable_machine_fails_the_spec_step_and_no_service_is_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: the read fails, the gate the restarting specs wait
    for says so (they must not run), and the step exits 1."""
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    layers = spec.write_layers(tmp_path / "layers.json", [])
    monkeypatch.setenv("GOLDSMITH_SPEC_HOST", "127.0.0.1")
    monkeypatch.setenv("GOLDSMITH_SPEC_PORT", "9")  # discard: nothing listens here
    monkeypatch.setenv("GOLDSMITH_SPEC_USER", "goldsmith")
    said: list[str] = []

    def specs_beside(layers: list, *, gate: Path, **kw: object) -> None:
        said.append(spec_shell.await_gate(gate, wait=60))

    monkeypatch.setattr(spec, "run_layers", specs_beside)
    out = tmp_path / "listening.json"
    argv = ["live", "--layers", str(layers), "--junit", str(tmp_path / "j.xml")]
    argv += ["--key", str(key), "--root", str(tmp_path), "--listening", str(out)]
    assert spec.main(argv) == 1
    failed = "reading the machine's listening sockets failed (exit 255)"
    assert said and said[0].startswith(f"the listening sockets were not read: {failed}")
    assert f"{failed}" in capsys.readouterr().out
    assert not out.exists()
    assert list(tmp_path.glob("listening.json*")) == []


GATED = """
import time
from pathlib import Path

{restarts}

def test_it(tmp_path_factory):
    Path({log!r}).open("a").write(f"{{__name__}} {{time.monotonic()}}\\n")
"""


def _gated_run(tmp_path: Path, gate: Path, say: str | None) -> tuple[int, str, dict]:
    """A real pytest run with goldsmith's plugin: a spec that does not declare RESTARTS,
    then one that does; the gate is written ("say") 0.3 s after the first has run."""
    log = tmp_path / "ran.log"
    (tmp_path / "test_restarts.py").write_text(
        GATED.format(restarts='RESTARTS = "self_healing_services"', log=str(log))
    )
    (tmp_path / "test_plain.py").write_text(GATED.format(restarts="", log=str(log)))
    env = {**os.environ, spec_shell.RESTART_GATE: str(gate)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "goldsmith.spec_shell",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_plain.py",
            "test_restarts.py",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Once the plain spec has run, the other is being held (or has run: then it fails).
    deadline = time.monotonic() + 60
    while "test_plain" not in (log.read_text() if log.exists() else "") and proc.poll() is None:
        assert time.monotonic() < deadline, "the plain spec never ran"
        time.sleep(0.05)
    time.sleep(0.3)
    said_at = time.monotonic()
    if say is not None:
        gate.write_text(say + "\n")
    out, _ = proc.communicate(timeout=120)
    ran = {}
    if log.exists():
        ran = {m: float(t) for m, t in (line.split() for line in log.read_text().splitlines())}
    return proc.returncode, out, {"said_at": said_at, **ran}


def test_a_spec_that_restarts_services_waits_for_the_gate_and_runs_when_it_says_ok(
    tmp_path: Path,
) -> None:
    code, out, ran = _gated_run(tmp_path, tmp_path / "gate", "ok")
    assert code == 0, out
    assert ran["test_restarts"] >= ran["said_at"], "ran before the gate said ok"
    assert ran["test_plain"] < ran["said_at"], "a spec that restarts nothing was held back"


def test_a_spec_that_restarts_services_fails_without_running_when_the_gate_says_no(
    tmp_path: Path,
) -> None:
    code, out, ran = _gated_run(tmp_path, tmp_path / "gate", "the sockets were not read")
    assert code == 1, out
    assert "this spec restarts services, and must not run: the sockets were not read" in out
    assert "test_restarts" not in ran and "test_plain" in ran


def test_a_gate_never_written_fails_the_spec_after_its_wait(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    assert spec_shell.await_gate(gate, wait=0.3).startswith("nothing was said in 0 s")
    gate.write_text("ok\n")
    assert spec_shell.await_gate(gate, wait=0.3) == "ok"


def _bake(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(
        plan=SimpleNamespace(image=SimpleNamespace(name="web")),
        live_listening=tmp_path / "listening-live.json",
    )


def test_the_local_target_takes_the_sockets_the_spec_step_read(tmp_path: Path) -> None:
    bake = _bake(tmp_path)
    with pytest.raises(GoldsmithError, match=r"web: .*were not read \(listening-live.json: "):
        local.read_listening(bake, "no image written")
    bake.live_listening.write_text('{"proto": "tcp"}')
    with pytest.raises(GoldsmithError, match="holds no list of sockets, no image written"):
        local.read_listening(bake, "no image written")
    bake.live_listening.write_text(json.dumps([SSHD]))
    assert local.read_listening(bake, "no image written") == [SSHD]
