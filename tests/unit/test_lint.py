"""The lint runner, with the project's real lint configuration, on throwaway projects."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from goldsmith import lint
from goldsmith.errors import GoldsmithError

if TYPE_CHECKING:
    from conftest import Project

TASK = """\
---
- name: Install curl
  {module}:
    name: curl
    state: present
"""


def clean_project(project: Project) -> Project:
    """A tiny project every check passes on: one role, one playbook."""
    project.lint_config()
    project.role("pkg", tasks=TASK.format(module="ansible.builtin.apt"), spec=False)
    project.playbook(
        "site",
        text="""\
        ---
        - name: Site
          hosts: all
          become: true
          roles:
            - pkg
        """,
    )
    return project


def test_ansible_lint_fails_on_a_short_module_name(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_project(project)
    # The control, in the same run (ansible-lint takes seconds): role `pkg` uses the fully
    # qualified name and is not named; role `short` is the same task with the short name.
    project.role("short", tasks=TASK.format(module="apt"), spec=False)
    project.playbook("other", "short")
    with pytest.raises(GoldsmithError, match=r"lint failed[\s\S]*- ansible-lint"):
        lint.lint(project.root, only=["ansible-lint"])
    out = capsys.readouterr().out
    assert "[ansible-lint] fqcn[action-core]" in out
    assert "roles/short/tasks/main.yml:3" in out
    assert "ansible.builtin.apt" in out
    assert "roles/pkg/" not in out
    assert "[lint] FAILED  ansible-lint" in out


def test_syntax_check_and_yamllint_run_and_fail_together(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_project(project)
    lint.lint(project.root, only=["yamllint", "syntax-check"])
    capsys.readouterr()

    project.playbook("broken", text="- name: Broken\n  hosts: all\n  roles: [ghost]   \n")
    with pytest.raises(GoldsmithError) as err:
        lint.lint(project.root, only=["yamllint", "syntax-check"])
    # Both checks ran and both are named, the first failure did not hide the second.
    assert "- yamllint" in str(err.value)
    assert "- syntax-check" in str(err.value)
    out = capsys.readouterr().out
    assert "trailing spaces" in out
    assert "[syntax-check] FAILED: playbooks/broken.yml" in out
    assert "ghost" in out


def test_ruff_checks_python(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    project.write("src/ok.py", '"""Fine."""\n\nX = 1\n')
    lint.lint(project.root, only=["ruff", "ruff-format"])
    project.write("src/bad.py", "import os\nX=1\n")
    with pytest.raises(GoldsmithError) as err:
        lint.lint(project.root, only=["ruff", "ruff-format"])
    assert "- ruff\n" in str(err.value) + "\n"
    assert "- ruff-format" in str(err.value)
    assert "F401" in capsys.readouterr().out


def test_packer_validate_goes_through_goldsmith_packer(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lint calls goldsmith.packer.validate_all(root), and says so when it is not there."""
    stand_in = types.ModuleType("goldsmith.packer")
    monkeypatch.setitem(sys.modules, "goldsmith.packer", stand_in)
    with pytest.raises(
        GoldsmithError, match="packer-validate: goldsmith.packer has no validate_all"
    ):
        lint.lint(project.root, only=["packer-validate"])

    seen: list[Path] = []
    stand_in.validate_all = seen.append  # type: ignore[attr-defined]
    lint.lint(project.root, only=["packer-validate"])
    assert seen == [project.root]

    def invalid(root: Path) -> None:
        raise GoldsmithError("packer/build.pkr.hcl: unknown variable")

    stand_in.validate_all = invalid  # type: ignore[attr-defined]
    with pytest.raises(GoldsmithError, match="packer-validate: packer/build.pkr.hcl: unknown"):
        lint.lint(project.root, only=["packer-validate"])


def test_unknown_check_is_named(project: Project) -> None:
    with pytest.raises(GoldsmithError, match="unknown lint check.*: flake8; checks: yamllint"):
        lint.lint(project.root, only=["flake8"])
