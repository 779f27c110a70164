"""The package's shape: no import cycles, and a CLI whose every task answers --help."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Program

from goldsmith.tasks import namespace

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "goldsmith"


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it, lazily or not)."""
    modules = {}
    for f in package.rglob("*.py"):
        rel = f.relative_to(package.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        modules[".".join(parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m)
        state[n] = 2
        stack.pop()

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "goldsmith"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    assert cycles(import_graph(pkg)) == [["goldsmith.a", "goldsmith.b", "goldsmith.a"]]


def test_no_import_cycles_in_goldsmith() -> None:
    graph = import_graph(PACKAGE)
    assert "goldsmith.pipeline" in graph and graph["goldsmith.pipeline"]
    assert cycles(graph) == []


def invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
        cwd=ROOT,
        env={**os.environ, "GOLDSMITH_ROOT": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Invoke's own Program over goldsmith's tasks, as `./run` runs it, in this process."""
    with pytest.raises(SystemExit) as stop:
        Program(namespace=namespace(), binary="inv").run(["inv", *args])
    out = capsys.readouterr()
    return stop.value.code or 0, out.out + out.err


def test_every_task_answers_help(capsys: pytest.CaptureFixture[str]) -> None:
    # The real entry point once (tasks.py found by Invoke, its argument parser)...
    listed = invoke("--list", "--list-format=json")
    assert listed.returncode == 0, listed.stderr
    tree = json.loads(listed.stdout)
    names = [t["name"] for t in tree["tasks"]]
    names += [f"{c['name']}.{t['name']}" for c in tree["collections"] for t in c["tasks"]]
    assert {"build", "plan", "sweep", "up", "spec", "aws.publish", "twin.up"} <= set(names)
    proc = invoke("up", "--help")
    assert proc.returncode == 0 and "Usage: inv" in proc.stdout, proc.stdout + proc.stderr
    # ...and every task through the same Program in this process (a process each: 25 s).
    bad = {}
    for name in names:
        code, out = run_in_process(capsys, name, "--help")
        if code != 0 or "Usage: inv" not in out:
            bad[name] = out
    assert bad == {}


def test_a_missing_image_is_named_with_the_command_to_type() -> None:
    for task in ("up", "spec"):
        proc = invoke(task)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"error: --image is required: ./run {task} --image NAME (images: " in proc.stderr
        assert "Traceback" not in proc.stderr


def test_test_lanes_run_side_by_side_each_line_named_each_code_kept(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`./run test`'s bakes run as two pytest sessions at once: both start before either
    ends (each waits for the other's file), every line says its lane, and a failing lane's
    exit code is its own."""
    from goldsmith.tasks.core import run_lanes

    (tmp_path / "test_lanes.py").write_text(
        "import pathlib, time\n"
        "def wait_for(name):\n"
        "    for _ in range(600):\n"
        "        if pathlib.Path(name).exists():\n"
        "            return\n"
        "        time.sleep(0.05)\n"
        "    raise AssertionError(name)\n"
        "def test_a():\n"
        "    pathlib.Path('a').touch(); wait_for('b')\n"
        "def test_b():\n"
        "    pathlib.Path('b').touch(); wait_for('a'); assert False, 'b fails'\n"
    )
    args = ["-p", "no:cacheprovider", "test_lanes.py", "-k"]
    codes = run_lanes(tmp_path, {"first": [*args, "test_a"], "second": [*args, "test_b"]})
    assert codes == {"first": 0, "second": 1}
    out = capfd.readouterr().out.splitlines()
    assert any(ln.startswith("first | ") and "1 passed" in ln for ln in out)
    assert any(ln.startswith("second | ") and "1 failed" in ln for ln in out)
    assert all(ln.startswith(("first | ", "second | ")) for ln in out if ln)
