"""testinfra's ssh backend with one shell per host for the whole spec run (a pytest plugin).

testinfra's own ssh backend runs every command as a new SSH session: sshd starts a
session, the login shell starts, `sudo` starts (PAM, the sudoers, a journal entry) and
then the command, about 0.7 s a command in an emulated guest, most of a spec run.
goldsmith's spec runs (`pytest -p goldsmith.spec_shell`, goldsmith.spec.run) replace it,
for `ssh://` hosts only, with this one: a single `sudo -n /bin/sh` per host (or a plain
`/bin/sh` without --sudo) that reads commands on its standard input. Each command still
runs as testinfra would run it, `/bin/sh -c COMMAND` with no input, in a fresh process.
Its standard output comes back as it is, byte for byte, followed by a newline and a line
with a marker unique to the shell (a random token) and the exit status; its standard
error goes through a file in a private folder in /dev/shm (memory, never on the disk
that becomes the image), removed when the run ends, and comes back base64-encoded on
the next line, with no process spent on it when it is empty (most commands). A command
costs one process besides its own: every extra process start is a tenth of a second in
an emulated guest.

If the shell is gone (its session was killed), the next command starts another one; a
command whose shell dies under it raises, as testinfra's ssh backend does on exit 255.

The plugin also holds back every spec that restarts services (one whose module declares
RESTARTS, tests/spec/README.md) while RESTART_GATE names a file that does not exist yet:
the build's spec step reads the machine's listening sockets beside the specs' start, and
no service may be killed before that read is done (goldsmith.spec.main).
"""

from __future__ import annotations

import atexit
import base64
import os
import secrets
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import testinfra.backend
from testinfra.backend import base
from testinfra.backend.ssh import SshBackend

# How long a new shell waits for an SSH server that refuses connections (restarting).
CONNECT_WAIT = 30.0

# A file the spec step writes once nothing holds back the specs that restart services:
# "ok", or why they must not run. How long a spec waits for it.
RESTART_GATE = "GOLDSMITH_SPEC_RESTART_GATE"
GATE_WAIT = 300.0


class ShellGone(RuntimeError):
    """The remote shell ended (`status`: ssh's exit status; 255 when it never connected
    or lost the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ShellSshBackend(SshBackend):
    """SshBackend whose commands share one remote shell (see the module's docstring)."""

    NAME = "ssh"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proc: subprocess.Popen | None = None
        self._errors: Any = None  # the shell's own stderr (a local temporary file)
        self._marker = ""
        self._dir = ""
        atexit.register(self.close)

    def get_command(self, command: str, *args: str) -> str:
        # The shell already runs as the sudo user: no `sudo` per command.
        return self.quote(command, *args)

    def _shell_command(self) -> str:
        if not self.sudo:
            return "/bin/sh"
        if self.sudo_user is None:
            return "sudo -n /bin/sh"
        return self.quote("sudo -n -u %s /bin/sh", self.sudo_user)

    def _start(self) -> None:
        """Start the shell; while the SSH server does not take the connection (ssh exits
        255: it is being restarted, by a self-healing spec in another layer's run, say),
        try again for up to CONNECT_WAIT seconds."""
        deadline = time.monotonic() + CONNECT_WAIT
        while True:
            try:
                return self._start_once()
            except ShellGone as e:
                if e.status != 255 or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _start_once(self) -> None:
        cmd, cmd_args = self._build_ssh_command(self._shell_command())
        self._errors = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            self.quote(" ".join(cmd), *cmd_args),
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
        )
        self._marker = f"goldsmith-spec-{secrets.token_hex(8)}"
        self._send('umask 077; mktemp -d /dev/shm/goldsmith-spec.XXXXXX 2>&1; echo "$?"')
        path, status = self._readline().strip(), self._readline().strip()
        if status != "0" or not path.startswith("/dev/shm/goldsmith-spec."):
            raise RuntimeError(f"the spec shell on {self.host.name} could not start: {path}")
        self._dir = path

    def _send(self, script: str) -> None:
        assert self._proc is not None and self._proc.stdin
        try:
            self._proc.stdin.write(script.encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._dead()

    def _readline(self) -> str:
        assert self._proc is not None and self._proc.stdout
        line = self._proc.stdout.readline()
        if not line:
            self._dead()
        return line.decode()

    def _dead(self) -> None:
        """The shell ended under a command: say so with what it wrote on stderr."""
        assert self._proc is not None
        rc = self._proc.wait()
        self._proc = None
        self._errors.seek(0)
        errors = self._errors.read().decode(errors="replace").strip()
        raise ShellGone(rc, f"the spec shell on {self.host.name} ended (exit {rc}): {errors}")

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        command = self.get_command(command, *args)
        d, m = self._dir, self._marker
        self._send(
            f"/bin/sh -c {shlex.quote(command)} </dev/null 2>{d}/e; "
            # `printf` and `[` are the shell's own: no process for either.
            f'printf "\\n{m} %s\\n" "$?"; '
            f"if [ -s {d}/e ]; then base64 -w0 {d}/e; fi; echo"
        )
        rc, stdout = self._read_output(m.encode())
        stderr = base64.b64decode(self._readline().strip())
        return self.result(rc, self.encode(command), stdout, stderr)

    def _read_output(self, marker: bytes) -> tuple[int, bytes]:
        """The command's output up to the marker line, without the newline written
        before the marker; and the exit status the marker line carries."""
        assert self._proc is not None and self._proc.stdout
        lines: list[bytes] = []
        while True:
            line = self._proc.stdout.readline()
            if not line:
                self._dead()
            if line.startswith(marker + b" ") and line.endswith(b"\n"):
                rc = int(line[len(marker) + 1 :])
                return rc, b"".join(lines)[:-1]
            lines.append(line)

    def close(self) -> None:
        """End the shell and remove its folder."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            if self._dir:
                proc.stdin.write(f"rm -rf {self._dir}\n".encode())
            proc.stdin.write(b"exit 0\n")
            proc.stdin.close()
            proc.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


# As a pytest plugin (`-p goldsmith.spec_shell`): ssh:// hosts get this backend.
testinfra.backend.BACKENDS["ssh"] = f"{__name__}.{ShellSshBackend.__name__}"


def await_gate(gate: Path, wait: float = GATE_WAIT) -> str:
    """Wait until `gate` exists; its text ("ok", or what went wrong instead)."""
    deadline = time.monotonic() + wait
    while not gate.exists():
        if time.monotonic() > deadline:
            return f"nothing was said in {wait:.0f} s ({gate.name} is missing)"
        time.sleep(0.1)
    return gate.read_text().strip()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A spec that restarts services waits for RESTART_GATE (before its fixtures, which
    may do the killing), and fails if the gate says it must not run."""
    gate = os.environ.get(RESTART_GATE, "")
    module = getattr(item, "module", None)
    if not gate or getattr(module, "RESTARTS", None) is None:
        return
    said = await_gate(Path(gate))
    if said != "ok":
        pytest.fail(f"this spec restarts services, and must not run: {said}", pytrace=False)
