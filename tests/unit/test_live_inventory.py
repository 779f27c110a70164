"""The cloud build's inventory and CVE gate, read on the builder (goldsmith.targets.live):
the checks on what Packer fetched, and the gate step Packer runs on it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from cve_kit import CVE_TRACKER

from goldsmith import inventory
from goldsmith.errors import GoldsmithError
from goldsmith.targets import live


def found(**parts: Any) -> dict[str, Any]:
    """An inventory of the current format holding base-files 12.4+deb12u5."""
    version = "12.4+deb12u5"
    base_files = {
        "name": "base-files",
        "version": version,
        "architecture": "amd64",
        "source": "base-files",
        "source_version": version,
    }
    return {
        "format": inventory.FORMAT,
        "os": {"id": "debian", "version_id": "12", "codename": "bookworm"},
        "packages": {"base-files": base_files},
        "units": {},
        "users": {"root": {"uid": 0, "gid": 0, "home": "/root", "shell": "/bin/bash"}},
        "etc": {"etc/hostname": "a" * 64},
    } | parts


def write(path: Path, doc: Any) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (None, "was not fetched (inventory-live.json is missing)"),
        ("{not json", "is not JSON"),
        (found(packages={}), "lists no packages"),
        (found(format=0), "has format 0"),
    ],
)
def test_what_packer_fetched_must_be_an_inventory(tmp_path: Path, doc: Any, says: str) -> None:
    path = tmp_path / live.INVENTORY_FILE
    if doc is not None:
        write(path, doc)
    with pytest.raises(GoldsmithError) as err:
        live.read(path)
    assert says in str(err.value) and "no AMI registered" in str(err.value)


def test_a_fetched_inventory_reads_back_whole(tmp_path: Path) -> None:
    doc = found()
    assert live.read(write(tmp_path / live.INVENTORY_FILE, doc)) == doc


def test_the_twin_compares_only_what_both_reads_have() -> None:
    disk = found()
    # The live machine's listening sockets cannot be on a disk: not compared.
    assert live.differences(found(listening=[{"port": 22}]), disk) == []
    other = found(etc={"etc/hostname": "b" * 64}, units={"x.service": {}})
    assert live.differences(other, disk) == ["etc", "units"]


def policy_project(project: Any, allow: bool = False) -> Path:
    project.standard()
    policy = "vulnerabilities:\n  tracker: security/tracker.json\n  fail_on: high\n"
    if allow:
        policy += (
            "  allow:\n    - {id: CVE-2099-0002, package: base-files, "
            'reason: "accepted here", expires: 2099-12-31}\n'
        )
    project.catalogue(project.CATALOGUE.replace("images:\n", policy + "images:\n", 1))
    project.write("security/tracker.json", json.dumps(CVE_TRACKER))
    return project.root / "images.yml"


def gate(tmp_path: Path, catalogue: Path, image: str = "web") -> tuple[int, dict[str, Any]]:
    """`live.gate_command` as Packer's shell-local step runs it (parsed back, in process)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    write(work / live.INVENTORY_FILE, found())
    tracker = catalogue.parent / "security/tracker.json"
    argv = shlex.split(live.gate_command(catalogue, image, work, tracker))
    assert argv[1:4] == ["-m", "goldsmith.targets.live", "gate"]
    code = live.main(argv[3:])
    return code, json.loads((work / live.GATE_RECORD).read_text())


def test_the_gate_step_fails_naming_the_issue_and_records_why(
    project: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, record = gate(tmp_path, policy_project(project))
    assert code == 1 and record["ok"] is False
    assert "CVE-2099-0002 in base-files" in record["error"]
    assert "web: the CVE gate failed" in record["error"] and "no AMI registered" in record["error"]
    assert "CVE-2099-0002" in capsys.readouterr().err
    # What amazon.during_packer raises instead of Packer's own failure.
    assert live.failure(tmp_path / "work") == record["error"]


def test_the_gate_step_passes_an_allowed_issue(project: Any, tmp_path: Path) -> None:
    code, record = gate(tmp_path, policy_project(project, allow=True))
    assert (code, record) == (0, {"ok": True})
    assert live.failure(tmp_path / "work") is None


def test_the_gate_step_passes_an_image_without_a_policy(project: Any, tmp_path: Path) -> None:
    project.standard()
    code, record = gate(tmp_path, project.root / "images.yml")
    assert (code, record) == (0, {"ok": True})


def test_no_verdict_is_no_failure(tmp_path: Path) -> None:
    assert live.failure(tmp_path) is None


def test_the_seal_runs_the_inventory_module_alone() -> None:
    """The builder loads the module by path, without goldsmith: it imports only the
    standard library."""
    import ast
    import sys

    tree = ast.parse(live.script().read_text())
    imported = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
