"""Run external tools: arguments as a list, output streamed with a prefix, exit code checked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import MissingTool, ToolError


def log(prefix: str, message: str) -> None:
    """One line of progress, prefixed with the phase or tool it comes from."""
    print(f"[{prefix}] {message}", flush=True)


def require(*names: str) -> None:
    """Fail clearly when a system tool is missing."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise MissingTool(
            f"missing system tools: {', '.join(missing)}; run `./run setup` to install them"
        )


def run(
    cmd: Sequence[str | os.PathLike],
    *,
    prefix: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    quiet: bool = False,
    stop_grace: float = 10.0,
    die_with_us: bool = False,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> int:
    """Run `cmd`, stream its merged output line by line as `[prefix] line`, return its exit code.

    The child gets its own process group: on Ctrl-C or any exception the whole group is
    terminated, given `stop_grace` seconds to clean up (Packer deleting its cloud
    resources), then killed, so no tool (qemu under packer, say) outlives us. A second
    Ctrl-C while it cleans up does not cut that short. With `die_with_us`, the kernel
    also sends the child SIGTERM if goldsmith itself is killed (SIGKILL included).
    `on_start` is given the child as soon as it runs (to stop it from another thread).
    """
    argv = [str(c) for c in cmd]
    if die_with_us and shutil.which("setpriv"):
        argv = ["setpriv", "--pdeathsig", "TERM", "--", *argv]
    name = prefix or Path(argv[0]).name
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    if on_start:
        on_start(proc)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not quiet:
                print(f"[{name}] {line}", flush=True)
            if on_line:
                on_line(line)
        code = proc.wait()
    except BaseException:
        with shielded():
            stop_group(proc, grace=stop_grace)
        raise
    if check and code != 0:
        raise ToolError(name, code)
    return code


def capture(cmd: Sequence[str | os.PathLike], *, check: bool = True, **kw) -> str:
    """Run `cmd` and return its stdout; stderr is included in the error on failure."""
    argv = [str(c) for c in cmd]
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    if check and res.returncode != 0:
        raise ToolError(Path(argv[0]).name, res.returncode, res.stderr.strip()[-2000:])
    return res.stdout


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate a child's whole process group; kill it if it does not go within `grace` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def shielded() -> Iterator[None]:
    """Run a cleanup to its end: Ctrl-C and SIGTERM during it are noted, not obeyed."""

    def note(signum, frame):
        log("cleanup", "still cleaning up; it finishes on its own")

    try:
        previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals go to the main thread anyway
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def is_root() -> bool:
    return os.geteuid() == 0


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)
