"""The spec runs' shared shell (goldsmith.spec_shell) gives testinfra what its ssh backend
gives: each command's exit status, stdout and stderr byte for byte, one fresh process
per command, nothing read from the shell's input.

The shell is a real /bin/sh on this machine, reached the way the backend reaches a
remote one, except that the ssh in front of it is left out.
"""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

import pytest
import testinfra
import testinfra.backend

from goldsmith import spec_shell


class LocalShell(spec_shell.ShellSshBackend):
    """The backend with `ssh HOST` left out: the shell runs here."""

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        return ["%s"], [command]


@pytest.fixture
def host():
    backend = LocalShell("ssh://nobody@127.0.0.1")
    yield testinfra.host.Host(backend)
    backend.close()


def test_status_stdout_and_stderr_come_back_byte_for_byte(host) -> None:
    r = host.run("printf 'a\\n\\nb\\0\\377'; printf 'oops\\n' >&2; exit 3")
    assert (r.rc, r.stdout_bytes, r.stderr_bytes) == (3, b"a\n\nb\x00\xff", b"oops\n")
    assert host.run("true").stdout_bytes == b""


def test_output_comes_back_as_written_whatever_its_last_bytes(host) -> None:
    """The output is passed through, not encoded: what ends it (no newline, newlines
    only, a line like the end-of-output line) comes back exactly, and so does a large one."""
    for out in (b"no newline", b"\n", b"\n\n", b"a\r\n", b"goldsmith-spec-0 0\n"):
        assert host.run("printf %s | base64 -d", base64.b64encode(out).decode()).stdout_bytes == out
    assert host.run("head -c 300000 /dev/zero | tr '\\0' x").stdout_bytes == b"x" * 300_000
    r = host.run("printf 'out'; printf 'err' >&2")
    assert (r.stdout_bytes, r.stderr_bytes) == (b"out", b"err")
    assert host.run("exit 7").rc == 7


def test_commands_are_quoted_and_run_in_their_own_process(host) -> None:
    assert host.check_output("echo %s", 'it\'s a "quote"; $HOME') == 'it\'s a "quote"; $HOME'
    first, second = (host.check_output("echo $$") for _ in range(2))
    assert first != second
    # A command cannot change the shell the next one runs in, nor read its input.
    host.run("cd /; exit 0")
    assert host.run("read line; echo $?").stdout.strip() == "1"
    assert host.check_output("echo %s", "multi\nline") == "multi\nline"


def test_the_output_folder_is_private_in_memory_and_removed_at_the_end(tmp_path: Path) -> None:
    backend = LocalShell("ssh://nobody@127.0.0.1")
    h = testinfra.host.Host(backend)
    h.run("true")
    folder = Path(backend._dir)
    assert folder.parent == Path("/dev/shm") and folder.is_dir()
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    backend.close()
    assert not folder.exists()


def test_a_killed_shell_is_started_again_and_a_death_mid_command_is_an_error(host) -> None:
    backend = host.backend
    host.run("true")
    backend._proc.kill()
    backend._proc.wait()
    assert host.check_output("echo back") == "back"
    with pytest.raises(RuntimeError, match="the spec shell on 127.0.0.1 ended"):
        # The command outlives its shell, but holds no end of the shell's output.
        host.run("kill -KILL $PPID; exec sleep 5 >/dev/null 2>&1")
    assert host.check_output("echo again") == "again"


def test_with_sudo_the_shell_is_sudos_and_commands_are_not_wrapped_again() -> None:
    backend = LocalShell("ssh://nobody@127.0.0.1", sudo=True)
    assert backend._shell_command() == "sudo -n /bin/sh"
    assert backend.get_command("id -u") == "id -u"
    other = LocalShell("ssh://nobody@127.0.0.1", sudo=True, sudo_user="web data")
    assert other._shell_command() == f"sudo -n -u {shlex.quote('web data')} /bin/sh"


def test_loading_the_plugin_gives_ssh_hosts_this_backend() -> None:
    assert testinfra.backend.get_backend_class("ssh") is spec_shell.ShellSshBackend


class RefusedFirst(LocalShell):
    """An SSH server that refuses the first `refusals` connections (ssh exits 255), as
    one being restarted does, or that fails another way (`status`)."""

    def __init__(self, *args, refusals: int, status: int = 255, **kw) -> None:
        super().__init__(*args, **kw)
        self.refusals, self.status, self.attempts = refusals, status, 0

    def _build_ssh_command(self, command: str) -> tuple[list[str], list[str]]:
        self.attempts += 1
        if self.attempts <= self.refusals:
            return ["sh", "-c", "%s"], [f"echo Connection refused >&2; exit {self.status}"]
        return super()._build_ssh_command(command)


def test_a_server_that_refuses_for_a_while_is_tried_again(monkeypatch) -> None:
    monkeypatch.setattr(spec_shell.time, "sleep", lambda s: None)
    backend = RefusedFirst("ssh://nobody@127.0.0.1", refusals=2)
    assert testinfra.host.Host(backend).check_output("echo in") == "in"
    assert backend.attempts == 3
    backend.close()


def test_a_refusal_past_the_wait_or_another_failure_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(spec_shell.time, "sleep", lambda s: None)
    monkeypatch.setattr(spec_shell, "CONNECT_WAIT", -1.0)
    refused = RefusedFirst("ssh://nobody@127.0.0.1", refusals=5)
    with pytest.raises(spec_shell.ShellGone, match="exit 255.*Connection refused"):
        testinfra.host.Host(refused).run("true")
    assert refused.attempts == 1
    denied = RefusedFirst("ssh://nobody@127.0.0.1", refusals=5, status=1)
    monkeypatch.setattr(spec_shell, "CONNECT_WAIT", 30.0)
    with pytest.raises(spec_shell.ShellGone, match="exit 1"):
        testinfra.host.Host(denied).run("true")
    assert denied.attempts == 1
