"""A local bake's listening sockets: read off the live machine by the spec step, before
its specs, into the inventory its sealed disk gives (which cannot show them)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from goldsmith import inventory, spec
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


def test_an_unreachable_machine_fails_the_spec_step_before_any_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: the read fails, the step exits 1 and no spec runs."""
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    layers = spec.write_layers(tmp_path / "layers.json", [])
    monkeypatch.setenv("GOLDSMITH_SPEC_HOST", "127.0.0.1")
    monkeypatch.setenv("GOLDSMITH_SPEC_PORT", "9")  # discard: nothing listens here
    monkeypatch.setenv("GOLDSMITH_SPEC_USER", "goldsmith")
    monkeypatch.setattr(spec, "run_layers", lambda *a, **k: pytest.fail("a spec ran"))
    out = tmp_path / "listening.json"
    argv = ["live", "--layers", str(layers), "--junit", str(tmp_path / "j.xml")]
    argv += ["--key", str(key), "--root", str(tmp_path), "--listening", str(out)]
    assert spec.main(argv) == 1
    assert "reading the machine's listening sockets failed (exit 255)" in capsys.readouterr().out
    assert not out.exists()


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
