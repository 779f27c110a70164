"""Run specs: the testinfra specs of an image's roles, against a live machine or a sealed disk.

Which specs run is decided by the playbook (goldsmith.roles, after ansible_spec): the
roles it applies and their dependencies, each role's tests/spec/<role>/. A role with no
spec is reported as uncovered, never skipped in silence. The hygiene spec is not a role's:
every image gets it, against what ships.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import inventory, tools, vm
from .errors import GoldsmithError
from .roles import RoleMap, playbook_vars, role_defaults
from .spec_shell import RESTART_GATE
from .yamlfile import AnsibleLoader

HYGIENE = "hygiene"


@dataclass
class SpecResult:
    """What a spec run proved: counts, the failing tests by name, the JUnit file."""

    junit: Path
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.passed > 0

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "failures": self.failures,
        }


def spec_root(root: Path) -> Path:
    return root / "tests" / "spec"


def hygiene_dir(root: Path) -> Path:
    return spec_root(root) / HYGIENE


def ssh_config(path: Path) -> Path:
    """An ssh_config for build machines: their host keys are new every boot.

    testinfra asks for ControlMaster but sets no ControlPath, so without one every check
    would be a new SSH handshake (seconds each under emulation); this one shares a
    connection for the whole run.
    """
    path.write_text(
        "Host *\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  IdentitiesOnly yes\n"
        f"  ControlPath {path.parent}/cm-%C\n"
    )
    return path


def report_coverage(role_map: RoleMap) -> None:
    covered = ", ".join(role_map.specs) or "none"
    tools.log("spec", f"roles with specs: {covered}")
    for role in role_map.uncovered:
        tools.log("spec", f"UNCOVERED: role {role!r} has no spec in tests/spec/{role}/")


def run(
    paths: list[Path],
    *,
    hosts: str,
    junit: Path,
    root: Path,
    ssh_key: Path | None = None,
    sudo: bool = False,
    connection: str | None = None,
    suite: str = "spec",
    extra_env: dict[str, str] | None = None,
    playbook: Path | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> SpecResult:
    """Run pytest/testinfra over `paths` against `hosts`; return the parsed JUnit result.

    `playbook`: the image's playbook, whose vars for a role the role's spec expects on
    top of the role's defaults (GOLDSMITH_PLAYBOOK, read by tests/spec/conftest.py).
    """
    if not paths:
        raise GoldsmithError("no specs to run")
    junit.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="goldsmith-spec-") as tmp:
        argv = [
            sys.executable,
            "-m",
            "pytest",
            *map(str, paths),
            f"--hosts={hosts}",
            f"--junitxml={junit}",
            "-o",
            f"junit_suite_name={suite}",
            "-p",
            "no:cacheprovider",
            # ssh:// hosts: one shell per host for the whole run (goldsmith.spec_shell).
            "-p",
            "goldsmith.spec_shell",
            "--rootdir",
            str(spec_root(root)),
            "-q",
            "--color=no",
            "-rfE",
            # Where a spec run's time goes, in the build log (the slowest, 1 s and up).
            "--durations=8",
            "--durations-min=1",
        ]
        if hosts.startswith("ssh://") or hosts.startswith("paramiko://"):
            argv.append(f"--ssh-config={ssh_config(Path(tmp) / 'ssh_config')}")
        if ssh_key:
            argv.append(f"--ssh-identity-file={ssh_key}")
        if sudo:
            argv.append("--sudo")
        if connection:
            argv.append(f"--connection={connection}")
        env = {"GOLDSMITH_ROOT": str(root), **(extra_env or {})}
        if playbook:
            env["GOLDSMITH_PLAYBOOK"] = str(playbook)
        try:
            code = tools.run(argv, prefix=suite, env=env, cwd=root, check=False, on_start=on_start)
        finally:
            # The shared connection's master outlives pytest by ControlPersist: end it now.
            subprocess.run(["pkill", "-f", f"{tmp}/ssh_config"], check=False)
    result = parse_junit(junit)
    if code not in (0, 1) and result.failed == 0:
        # pytest itself failed (collection error, bad option): never count that as a pass.
        result.failed += 1
        result.failures.append(f"pytest exited with code {code} (see the output above)")
    return result


def parse_junit(junit: Path) -> SpecResult:
    result = SpecResult(junit=junit)
    if not junit.is_file():
        return result
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
            result.failures.append(name)
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    return result


def merge_junit(parts: list[Path], out: Path) -> None:
    """One JUnit file (a <testsuites> of every part's suites), as CodeBuild reports want."""
    suites = ET.Element("testsuites")
    for part in parts:
        if not part.is_file():
            continue
        node = ET.parse(part).getroot()
        for suite in [node] if node.tag == "testsuite" else list(node.iter("testsuite")):
            suites.append(suite)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(out, encoding="utf-8", xml_declaration=True)


def collect(paths: list[Path], root: Path) -> None:
    """Pre-flight: collect the specs without running them, so a spec that does not even
    import (a syntax error, a missing name) fails here, before any machine starts."""
    if not paths:
        return
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(spec_root(root)),
        "--color=no",
        *map(str, paths),
    ]
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "GOLDSMITH_ROOT": str(root)},
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E ", "ERROR"))] or lines[-15:]
        raise GoldsmithError(
            "the specs do not load (pytest --collect-only failed, nothing was started):\n  "
            + "\n  ".join(errors[:20])
        )


@dataclass(frozen=True)
class Layer:
    """One layer of an image: the image whose playbook made it, that playbook, the
    spec folders of its roles."""

    image: str
    playbook: Path
    specs: list[Path]


# What a spec folder declares in its test modules, as module-level literals (read here,
# not run): UNITS, the systemd units whose state its checks rely on; RESTARTS, the name of
# the role variable listing the services it kills to prove they come back (each entry a
# name or a mapping with `name`; `.service` is added to a name without a unit suffix).
UNITS = "UNITS"
RESTARTS = "RESTARTS"


@dataclass(frozen=True)
class Declared:
    """A spec folder's declarations: `units` None when a module of it declares none (it
    may then rely on any unit), `restarts` the variable's name or None."""

    units: frozenset[str] | None
    restarts: str | None


def declared(folder: Path) -> Declared:
    """Read UNITS and RESTARTS from the folder's test modules; GoldsmithError naming the
    file, the name and the value when one is not what it must be. A module that does not
    parse declares nothing (pytest's collection names its error)."""
    units: set[str] | None = set()
    restarts: str | None = None
    for module in sorted(folder.glob("test_*.py")):
        try:
            tree = ast.parse(module.read_text(), filename=str(module))
        except SyntaxError:
            return Declared(None, None)
        values = _module_literals(module, tree, (UNITS, RESTARTS))
        if UNITS not in values:
            units = None
        elif units is not None:
            value = values[UNITS]
            if not isinstance(value, list | tuple) or not all(
                isinstance(u, str) and u for u in value
            ):
                raise GoldsmithError(
                    f"{module}: {UNITS} must be a list of systemd unit names, not {value!r}"
                )
            units |= {unit_name(u) for u in value}
        if RESTARTS in values:
            value = values[RESTARTS]
            if not isinstance(value, str) or not value.isidentifier():
                raise GoldsmithError(
                    f"{module}: {RESTARTS} must name a role variable, not {value!r}"
                )
            restarts = value
    return Declared(None if units is None else frozenset(units), restarts)


def _module_literals(module: Path, tree: ast.Module, names: tuple[str, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                try:
                    found[target.id] = ast.literal_eval(value)
                except ValueError:
                    raise GoldsmithError(
                        f"{module}:{node.lineno}: {target.id} must be a literal "
                        f"(goldsmith reads it without running the spec), not "
                        f"{ast.unparse(value)!r}"
                    ) from None
    return found


def unit_name(name: str) -> str:
    """A systemd unit's full name: `.service` added to a bare service name."""
    return name if "." in name else f"{name}.service"


def plays_of(playbook: Path, cache: dict[Path, Any]) -> Any:
    """A playbook's plays, read once per `cache` (one spec step); Ansible's own tags
    (`!vault`, `!unsafe`) read as values, as goldsmith.roles does."""
    if playbook not in cache:
        cache[playbook] = yaml.load(playbook.read_text(), Loader=AnsibleLoader) or []
    return cache[playbook]


def restarted_units(runs: list[tuple[Layer, list[Path]]], root: Path) -> frozenset[str] | None:
    """The units the runs' specs kill (each spec declaring RESTARTS, with the values its
    layer gives the role: its defaults and the playbook's vars); None when a list cannot
    be read as names, so nothing is split."""
    killed: set[str] = set()
    plays: dict[Path, Any] = {}
    for layer, specs in runs:
        for d in specs:
            var = declared(d).restarts
            if var is None:
                continue
            given = playbook_vars(plays_of(layer.playbook, plays), d.name)
            values = {**role_defaults(d.name, root), **given}
            services = values.get(var)
            if not isinstance(services, list):
                return None
            for entry in services:
                name = entry.get("name") if isinstance(entry, dict) else entry
                if not isinstance(name, str) or not name or "{{" in name:
                    return None
                killed.add(unit_name(name))
    return frozenset(killed)


def split_run(specs: list[Path], killed: frozenset[str]) -> tuple[list[Path], list[Path]]:
    """A run's specs in two runs that may go at once: (those that kill services or may
    rely on one that is killed, in their order; those whose declared units none of the
    runs kills). The second run's checks overlap the first's waits for restarts."""
    aside = []
    for d in specs:
        found = declared(d)
        if found.restarts is None and found.units is not None and not found.units & killed:
            aside.append(d)
    return [d for d in specs if d not in aside], aside


def beside_restarts(
    plan: list[tuple[Layer, list[Path]]],
    root: Path,
    parts: list[Path],
    limit: int | None = None,
) -> list[tuple[Layer, list[Path], bool, Path]]:
    """The layers' runs (`plan`, each with its JUnit part), with the specs that neither
    kill a service nor rely on one that is killed (split_run) in runs of their own, beside
    the runs that restart: their checks overlap the restarts' waits (RestartSec each)
    instead of coming before them. Each run costs a pytest and a shell on the machine, so
    a layer's set-aside specs that another layer applies alike (same role, same values)
    join that layer's set-aside run instead of making one more. At most `limit` runs (the
    host's cores; each run's pytest and checks want one): with more, nothing is set aside
    (measured here: a layered web bake's specs took no less in three or four runs than
    in two).
    Returns (layer, specs, set aside?, part) per run, in the plan's order."""
    unsplit = [
        (layer, specs, False, part) for (layer, specs), part in zip(plan, parts, strict=True)
    ]
    limit = limit or os.cpu_count() or 2
    killed = restarted_units(plan, root) if len(plan) < limit else None
    if not killed:
        return unsplit
    pieces = [
        [layer, *split_run(specs, killed), part]
        for (layer, specs), part in zip(plan, parts, strict=True)
    ]
    plays: dict[Path, Any] = {}

    def alike(d: Path, a: Layer, b: Layer) -> bool:
        """Layer `b` applies the role of spec `d` with the values `a` gives it."""
        return d in b.specs and playbook_vars(plays_of(a.playbook, plays), d.name) == playbook_vars(
            plays_of(b.playbook, plays), d.name
        )

    for piece in pieces:
        layer, _, aside, _ = piece
        for other in pieces:
            if other is piece or not other[2] or not aside:
                continue
            if all(alike(d, layer, other[0]) for d in aside):
                joined = set(other[2]) | set(aside)
                other[2] = [d for d in dict.fromkeys(other[0].specs) if d in joined]
                piece[2] = []
                break
    out: list[tuple[Layer, list[Path], bool, Path]] = []
    for layer, main, aside, part in pieces:
        out += [(layer, main, False, part)] if main else []
        out += [(layer, aside, True, part)] if aside else []
    if len(out) > limit:
        return unsplit
    for layer, specs, aside, _ in out:
        if aside:
            tools.log(
                "spec",
                f"{layer.image}: {', '.join(d.name for d in specs)} in a run of their own "
                f"(no unit they rely on is restarted by a spec: {', '.join(sorted(killed))})",
            )
    return out


def run_layers(
    layers: list[Layer],
    *,
    hosts: str,
    junit: Path,
    root: Path,
    ssh_key: Path | None = None,
    suite: str = "spec",
    gate: Path | None = None,
) -> SpecResult | None:
    """Prove a machine whole: each layer's specs (root ancestor first), each read with its
    own playbook's vars, one JUnit suite per layer ("spec PARENT", ..., then `suite`),
    merged into `junit`. None when no layer has a spec. `gate`: a file the specs that
    restart services wait for (goldsmith.spec_shell.RESTART_GATE).

    The layers' runs go at once, each its own pytest with its own shell on the machine:
    their waits overlap (a self-healing spec waits out each service's RestartSec). A
    role's spec that another layer runs with the same values is not run again (see
    `layer_specs`).
    """
    own = layers[-1].image
    runs: list[tuple[Layer, list[Path], Path]] = []
    for layer, specs in layer_specs(layers):
        if not layer.specs:
            tools.log("spec", f"{layer.image}: no role has specs (see the coverage list)")
            continue
        again = [d.name for d in layer.specs if d not in specs]
        if again:
            tools.log(
                "spec",
                f"{layer.image}: {', '.join(again)} proven once, by another layer's run "
                "(same role, same values)",
            )
        if not specs:
            continue
        if layer.image != own:
            tools.log("spec", f"the specs of {layer.image}, the image this one is layered on")
        runs.append((layer, specs, junit.with_suffix(f".{layer.image}.xml")))
    if not runs:
        return None
    runs = [
        (layer, specs, part.with_suffix(".aside.xml") if aside else part)
        for layer, specs, aside, part in beside_restarts(
            [(layer, specs) for layer, specs, _ in runs], root, [p for _, _, p in runs]
        )
    ]
    started: list[subprocess.Popen] = []
    pool = ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="spec")
    try:
        futures = [
            pool.submit(
                run,
                specs,
                hosts=hosts,
                junit=part,
                root=root,
                ssh_key=ssh_key,
                sudo=True,
                suite=suite if layer.image == own else f"spec {layer.image}",
                playbook=layer.playbook,
                on_start=started.append,
                extra_env={RESTART_GATE: str(gate)} if gate else None,
            )
            for layer, specs, part in runs
        ]
        results = [f.result() for f in futures]
    except BaseException:
        # Ctrl-C or a failure to start one: no layer's pytest outlives this run.
        with tools.shielded():
            for proc in started:
                tools.stop_group(proc, grace=5)
        raise
    finally:
        pool.shutdown(wait=True)
    total = SpecResult(junit=junit)
    for result in results:
        total.passed += result.passed
        total.skipped += result.skipped
        total.failed += result.failed
        total.failures += result.failures
    parts = [part for _, _, part in runs]
    merge_junit(parts, junit)
    for part in parts:
        part.unlink(missing_ok=True)
    return total


def layer_specs(layers: list[Layer]) -> list[tuple[Layer, list[Path]]]:
    """Each layer with the spec folders it runs: its own, less those another layer runs
    with the same values for that role (the role's vars in each layer's playbook; a spec
    reads the role's defaults with them). A role several layers apply alike (say
    apt_ready, which base's and nginx's roles depend on) is proven once, on the same
    machine, instead of once per layer; a role a layer applies with other values is
    proven again with them.

    The layers' runs go at once, so a spec proven once goes to the run with the fewest
    spec folders so far (the earliest layer on a tie): the runs end closer together, and
    the spec step ends when the last run does."""
    plays: dict[Path, Any] = {}
    # Each spec with the values it is run with, and the layers that apply it so.
    alike: list[tuple[Path, dict, list[int]]] = []
    for i, layer in enumerate(layers):
        for d in dict.fromkeys(layer.specs):
            values = playbook_vars(plays_of(layer.playbook, plays), d.name)
            found = [where for other, v, where in alike if other == d and v == values]
            if found:
                found[0].append(i)
            else:
                alike.append((d, values, [i]))
    runs: list[list[Path]] = [[] for _ in layers]
    for d, _, where in alike:  # a spec only one layer applies with its values: that layer's
        if len(where) == 1:
            runs[where[0]].append(d)
    for d, _, where in alike:
        if len(where) > 1:
            runs[min(where, key=lambda i: (len(runs[i]), i))].append(d)
    # Each run keeps its layer's order of the specs (the playbook's order of the roles).
    out = []
    for layer, mine in zip(layers, runs, strict=True):
        out.append((layer, [d for d in dict.fromkeys(layer.specs) if d in mine]))
    return out


def write_layers(path: Path, layers: list[Layer]) -> Path:
    """The spec step's plan (read back by `main`): each layer of the image, root ancestor
    first, itself last."""
    path.write_text(
        json.dumps(
            [
                {"image": x.image, "playbook": str(x.playbook), "specs": [str(d) for d in x.specs]}
                for x in layers
            ],
            indent=2,
        )
    )
    return path


# One program on the machine prints its listening sockets: goldsmith.inventory's reader
# (standard library only), fed on standard input to the machine's own python3.
_LISTENING_MAIN = "\nimport json as _j, sys as _s\n_j.dump(live_listeners(), _s.stdout)\n"


def read_listening(host: str, port: str, user: str, key: Path, timeout: float = 120) -> list:
    """The sockets the live machine at `host`:`port` listens on (inventory.live_listeners,
    run there as root over SSH, so each socket's process can be read); raises
    GoldsmithError when they cannot be read."""
    source = Path(inventory.__file__).read_text() + _LISTENING_MAIN
    argv = ["ssh", *vm.SSH_OPTIONS, "-o", "BatchMode=yes", "-i", str(key), "-p", str(port)]
    argv += [f"{user}@{host}", "sudo -n python3 -I -"]
    try:
        done = subprocess.run(
            argv, input=source, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise GoldsmithError(
            f"reading the machine's listening sockets took over {timeout:.0f} s"
        ) from None
    return parse_listening(done.returncode, done.stdout, done.stderr)


class ListeningRead(threading.Thread):
    """read_listening in a thread: the sockets go to `out` (JSON), then `gate` says "ok",
    or why the specs that restart services must not run; `error` is set on failure."""

    def __init__(self, host: str, port: str, user: str, key: Path, out: Path, gate: Path):
        super().__init__(name="listening", daemon=True)
        self.args = (host, port, user, key)
        self.out, self.gate = out, gate
        self.error: GoldsmithError | None = None

    def run(self) -> None:
        tools.log("listening", "reading the sockets the machine listens on")
        try:
            found = read_listening(*self.args)
            self.out.write_text(json.dumps(found, indent=2) + "\n")
            tools.log("listening", f"{len(found)} listening sockets read")
        except (GoldsmithError, OSError) as err:
            self.error = err if isinstance(err, GoldsmithError) else GoldsmithError(str(err))
        finally:
            said = (
                "ok" if self.error is None else f"the listening sockets were not read: {self.error}"
            )
            # Whole or not at all: a spec must never read half of it.
            part = self.gate.with_name(self.gate.name + ".part")
            part.write_text(said + "\n")
            part.replace(self.gate)


def parse_listening(status: int, out: str, err: str) -> list:
    """The reader's output as a list of sockets, or GoldsmithError saying what went wrong."""
    if status != 0:
        raise GoldsmithError(
            f"reading the machine's listening sockets failed (exit {status}): "
            + (err.strip().splitlines() or ["no message"])[-1]
        )
    try:
        found = json.loads(out)
    except ValueError:
        raise GoldsmithError(
            f"the machine's listening sockets are not JSON: {out[:200]!r}"
        ) from None
    keys = {"proto", "address", "port", "process"}
    if not isinstance(found, list) or not all(
        isinstance(x, dict) and set(x) == keys for x in found
    ):
        raise GoldsmithError(
            f"the machine's listening sockets are not a list of sockets: {out[:200]!r}"
        )
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m goldsmith.spec live ...`: the build's spec step, run by Packer's shell-local.

    The pipeline resolved the playbooks once and passes the layers (`--layers FILE`, see
    write_layers): a layered image is proven whole, by its parents' specs (each read with
    its own playbook's vars) and its own. Packer hands the machine's address over in
    GOLDSMITH_SPEC_HOST/PORT/USER (an internal protocol between goldsmith's Packer
    template and this step).
    """
    p = argparse.ArgumentParser(prog="python -m goldsmith.spec")
    p.add_argument("mode", choices=["live"])
    p.add_argument("--layers", type=Path, required=True)
    p.add_argument("--junit", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument(
        "--listening",
        type=Path,
        help="first read the sockets the machine listens on into this JSON file",
    )
    args = p.parse_args(argv)
    host = os.environ.get("GOLDSMITH_SPEC_HOST", "127.0.0.1")
    port = os.environ.get("GOLDSMITH_SPEC_PORT", "22")
    user = os.environ["GOLDSMITH_SPEC_USER"]
    layers = [
        Layer(x["image"], Path(x["playbook"]), [Path(d) for d in x["specs"]])
        for x in json.loads(args.layers.read_text())
    ]
    reader, gate = None, None
    if args.listening:
        # Beside the specs' start (pytest's, the shells'), but before any spec that
        # restarts services: a socket of a service starting again might be missed. Those
        # specs wait for the gate (goldsmith.spec_shell).
        gate = args.listening.with_name(args.listening.name + ".read")
        gate.unlink(missing_ok=True)
        reader = ListeningRead(host, port, user, args.key, args.listening, gate)
        reader.start()
    try:
        total = run_layers(
            layers,
            hosts=f"ssh://{user}@{host}:{port}",
            junit=args.junit,
            root=args.root,
            ssh_key=args.key,
            gate=gate,
        )
        if reader is not None:
            reader.join()
    finally:
        # Interrupted: the read (a daemon thread, its ssh bounded) is not waited for.
        if gate is not None:
            gate.unlink(missing_ok=True)
    if reader is not None and reader.error:
        tools.log("listening", f"{reader.error}: the image will not be sealed")
        return 1
    if total is None:
        return 0
    if not total.ok:
        for f in total.failures:
            tools.log("spec", f"FAILED {f}")
        tools.log("spec", f"{total.failed} spec(s) failed: the image will not be sealed")
        return 1
    tools.log("spec", f"{total.passed} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
