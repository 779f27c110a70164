"""Run a CodeBuild buildspec's phases here, as CodeBuild would, so the buildspec is tested.

What CodeBuild does with a version 0.2 buildspec, and this runner does too:
- every command of every phase runs in one bash shell, in order, so variables set in one
  command are seen by the next (and by later phases);
- a failing install or pre_build command ends the build: nothing after it runs;
- a failing build command skips the rest of the build phase, sets
  CODEBUILD_BUILD_SUCCEEDING=0, and post_build still runs (it publishes or cleans up);
- `env.variables` are exported first; the caller's `overrides` win, as a project's
  environment overrides do.
`runtime-versions` is CodeBuild's image setup and is ignored here.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .. import tools
from ..errors import GoldsmithError

PHASES = ("install", "pre_build", "build", "post_build")


def load(path: Path) -> dict[str, Any]:
    """The buildspec at `path`, checked for what the runner needs."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise GoldsmithError(f"{path}: cannot read the buildspec ({err})") from None
    if not isinstance(spec, dict) or str(spec.get("version")) != "0.2":
        raise GoldsmithError(f"{path}: key 'version' must be 0.2")
    phases = spec.get("phases")
    if not isinstance(phases, dict):
        raise GoldsmithError(f"{path}: key 'phases' is missing")
    for name, phase in phases.items():
        if name not in PHASES:
            raise GoldsmithError(f"{path}: phases.{name} is not a CodeBuild phase")
        cmds = (phase or {}).get("commands", [])
        if not isinstance(cmds, list) or not all(isinstance(c, str) for c in cmds):
            raise GoldsmithError(f"{path}: phases.{name}.commands must be a list of strings")
    return spec


def script(spec: Mapping[str, Any], overrides: Mapping[str, str], workdir: Path) -> str:
    """The bash script that runs the buildspec's phases with CodeBuild's rules."""
    lines = ["set +e", "export CODEBUILD_BUILD_SUCCEEDING=1", "__status=0"]
    env = {**(spec.get("env", {}) or {}).get("variables", {}), **overrides}
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
    n = 0
    for phase in PHASES:
        cmds = ((spec["phases"].get(phase)) or {}).get("commands", [])
        lines.append(f"__skip=0; echo '[buildspec] phase {phase}'")
        for cmd in cmds:
            n += 1
            f = workdir / f"cmd{n:03d}.sh"
            f.write_text(cmd + "\n")
            first = cmd.strip().splitlines()[0] if cmd.strip() else ""
            lines.append(
                f"if [ $__skip = 0 ] && [ $__status = 0 -o {phase} = post_build ]; then "
                f"echo {shlex.quote(f'[buildspec] {phase}: {first}')}; "
                f". {shlex.quote(str(f))}; __rc=$?; "
                f"if [ $__rc != 0 ]; then echo '[buildspec] {phase} failed ('$__rc')'; "
                f"__skip=1; __status=1; export CODEBUILD_BUILD_SUCCEEDING=0; fi; fi"
            )
        if phase in ("install", "pre_build"):
            lines.append(
                f"if [ $__status != 0 ]; then echo '[buildspec] stop after {phase}'; exit 1; fi"
            )
    lines.append("exit $__status")
    return "\n".join(lines) + "\n"


def run(path: Path, overrides: Mapping[str, str], cwd: Path) -> int:
    """Run the buildspec at `path` in `cwd`; return its exit code (0 when every phase passed)."""
    spec = load(path)
    with tempfile.TemporaryDirectory(prefix="buildspec-") as tmp:
        body = script(spec, overrides, Path(tmp))
        (Path(tmp) / "run.sh").write_text(body)
        return tools.run(["bash", Path(tmp) / "run.sh"], prefix="buildspec", cwd=cwd, check=False)
