"""Static checks of the whole project: seconds, no VM, no network.

Every check runs even when an earlier one fails, so one run shows everything to fix;
then `lint` fails naming the checks that failed. Each tool's output is streamed with
its name as the prefix. The configuration is the project's own `.yamllint` and
`.ansible-lint` (ansible-lint's production profile, offline: roles are never fetched).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import tools
from .ansible_env import ansible_env
from .errors import GoldsmithError
from .paths import venv_bin

# Python sources ruff checks, where they exist.
PYTHON_PATHS = ("src", "tests", "tasks.py")


def _env() -> dict[str, str]:
    """The venv's tools first on PATH: ansible-lint finds ansible from it, and says so if not."""
    bin_dir = str(Path(venv_bin("python")).parent)
    return {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]), "NO_COLOR": "1"}


def _run(cmd: Sequence[str | os.PathLike], prefix: str, root: Path, **env: str) -> bool:
    try:
        code = tools.run(cmd, prefix=prefix, cwd=root, env={**_env(), **env}, check=False)
    except FileNotFoundError:
        raise GoldsmithError(f"{cmd[0]} is not installed; run `./run setup`") from None
    return code == 0


def yamllint(root: Path) -> bool:
    """yamllint, strict (a warning fails), on every YAML file of the project."""
    return _run([venv_bin("yamllint"), "--strict", "-c", root / ".yamllint", "."], "yamllint", root)


def ansible_lint(root: Path) -> bool:
    """ansible-lint's production profile on playbooks/ and roles/, without Galaxy."""
    return _run(
        [
            venv_bin("ansible-lint"),
            "--profile",
            "production",
            "--offline",
            "--nocolor",
            "-c",
            root / ".ansible-lint",
        ],
        "ansible-lint",
        root,
        **ansible_env(root),
    )


def _python_paths(root: Path) -> list[str]:
    return [p for p in PYTHON_PATHS if (root / p).exists()]


def ruff_check(root: Path) -> bool:
    """ruff's lint rules (pyproject.toml) on the package, its tests and tasks.py."""
    paths = _python_paths(root)
    return not paths or _run([venv_bin("ruff"), "check", *paths], "ruff", root)


def ruff_format(root: Path) -> bool:
    """ruff's formatter, check only: the code is committed formatted."""
    paths = _python_paths(root)
    return not paths or _run([venv_bin("ruff"), "format", "--check", *paths], "ruff-format", root)


def packer_fmt(root: Path) -> bool:
    """`packer fmt -check` on every folder of packer/ with templates (packer 1.6 cannot recurse)."""
    # packer 1.6 also fails on a folder without HCL2 files rather than finding nothing to do.
    folders = sorted({p.parent for p in (root / "packer").rglob("*.pkr*.hcl")})
    if not folders:
        tools.log("packer-fmt", "no packer/*.pkr.hcl; nothing to check")
        return True
    tools.require("packer")
    results = [
        _run([venv_bin("packer"), "fmt", "-check", f.relative_to(root)], "packer-fmt", root)
        for f in folders
    ]
    return all(results)


def packer_validate(root: Path) -> bool:
    """`packer validate` of every target's template, through goldsmith.packer."""
    try:
        packer = importlib.import_module("goldsmith.packer")
    except ImportError as e:
        raise GoldsmithError(f"goldsmith.packer cannot be imported ({e})") from None
    validate_all: Callable[[Path], object] | None = getattr(packer, "validate_all", None)
    if validate_all is None:
        raise GoldsmithError("goldsmith.packer has no validate_all(root) yet")
    validate_all(root)
    return True


def cfn_lint(root: Path) -> bool:
    """cfn-lint on the CI stack as it is deployed: aws/ci-stack.yml with aws/policy.json
    inserted (goldsmith.aws.stack), written to a temporary file; a warning fails too."""
    from .aws import stack

    if not (root / stack.TEMPLATE).is_file():
        tools.log("cfn-lint", f"no {stack.TEMPLATE}; nothing to check")
        return True
    with tempfile.TemporaryDirectory(prefix="cfn-lint-") as tmp:
        rendered = stack.write_rendered(root, Path(tmp) / "ci-stack.rendered.json")
        tools.log("cfn-lint", f"{stack.TEMPLATE} rendered with {stack.POLICY}")
        return _run([venv_bin("cfn-lint"), "--", rendered], "cfn-lint", root)


def syntax_check(root: Path) -> bool:
    """`ansible-playbook --syntax-check` of every playbook, with the project's roles and
    its pinned collections, as a build runs it."""
    playbooks = sorted((root / "playbooks").glob("*.yml"))
    if not playbooks:
        tools.log("syntax-check", "no playbooks/*.yml; nothing to check")
        return True
    ok = True
    for playbook in playbooks:
        rel = playbook.relative_to(root)
        passed = _run(
            [venv_bin("ansible-playbook"), "--syntax-check", "-i", "localhost,", rel],
            "syntax-check",
            root,
            **ansible_env(root),
        )
        if not passed:
            tools.log("syntax-check", f"FAILED: {rel}")
        ok = ok and passed
    return ok


CHECKS: dict[str, Callable[[Path], bool]] = {
    "yamllint": yamllint,
    "ansible-lint": ansible_lint,
    "ruff": ruff_check,
    "ruff-format": ruff_format,
    "packer-fmt": packer_fmt,
    "packer-validate": packer_validate,
    "cfn-lint": cfn_lint,
    "syntax-check": syntax_check,
}


def lint(root: Path, only: Sequence[str] | None = None) -> None:
    """Run every check (or those named in `only`); fail listing the ones that failed."""
    names = list(only) if only else list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise GoldsmithError(
            f"unknown lint check(s): {', '.join(unknown)}; checks: {', '.join(CHECKS)}"
        )
    failed: list[str] = []
    for name in names:
        started = time.monotonic()
        try:
            passed = CHECKS[name](root)
            reason = ""
        except GoldsmithError as e:
            passed, reason = False, str(e)
        took = f"{time.monotonic() - started:.1f}s"
        if passed:
            tools.log("lint", f"ok      {name} ({took})")
        else:
            tools.log("lint", f"FAILED  {name} ({took}){': ' + reason if reason else ''}")
            # A reason of several lines (a catalogue error, say) stays under its check.
            failed.append(f"{name}: {reason}".replace("\n", "\n    ") if reason else name)
    if failed:
        raise GoldsmithError(
            "lint failed (see the output above):\n" + "\n".join(f"  - {f}" for f in failed)
        )
