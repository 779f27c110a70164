"""What test_report.py and test_review.py share: inventories as `inventory.collect` shapes
them, proven build folders as the pipeline records them, and tasks run as `./run` runs
them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from invoke import Context, Exit

from goldsmith import outputs, sbom

if TYPE_CHECKING:
    from conftest import Project


def pkg(name: str, version: str, source: str = "") -> dict[str, str]:
    return {
        "name": name,
        "version": version,
        "architecture": "amd64",
        "source": source or name,
        "source_version": version,
    }


def inv(*packages: dict[str, str], etc: dict[str, str] | None = None) -> dict[str, Any]:
    """An inventory as inventory.collect() shapes it (format 1: what older builds kept)."""
    return {
        "format": 1,
        "os": {"id": "debian", "version_id": "12", "codename": "bookworm"},
        "packages": {p["name"]: p for p in packages},
        "units": {"ssh.service": {"wanted_by": ["multi-user.target.wants"], "file": ""}},
        "sockets": [],
        "users": {"root": {"uid": 0, "gid": 0, "home": "/root", "shell": "/bin/bash"}},
        "groups": {"root": {"gid": 0, "members": []}},
        "setid": [],
        "kernels": ["6.1.0-50-cloud-amd64"],
        "etc": etc or {"etc/hostname": "a" * 64},
    }


def write_build(
    folder: Path,
    image: str,
    build_id: str,
    inventory: dict[str, Any] | None,
    *,
    sha: str = "f" * 40,
    **fields: Any,
) -> Path:
    """A proven build's folder as the pipeline records it: artifact, inventory and SBOM,
    or (`inventory` None) a build that had no disk to read; `fields` go in the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{image}.qcow2").write_text("disk")
    manifest: dict[str, Any] = {
        "image": image,
        "target": "local",
        "build_id": build_id,
        "fingerprint": build_id.ljust(64, "0"),
        "recorded": "2026-12-04T18:00:00Z",
        "git": {"sha": sha, "dirty": False},
        "artifact": f"{image}.qcow2",
        "inventory": None,
        "inventory_reason": "no disk",
        "sbom": None,
        "specs": {
            "live": {"passed": 12, "failed": 0, "skipped": 1, "failures": []},
            "hygiene": {"passed": 15, "failed": 0, "skipped": 0, "failures": []},
        },
        "cve_gate": None,
        "cve_gate_reason": "images.yml gives this image no policy",
    }
    if inventory is not None:
        doc = sbom.to_cyclonedx(inventory, image, build_id)
        outputs.write_atomic(folder / "sbom.cdx.json", doc)
        del manifest["inventory_reason"]
        manifest["inventory"] = {
            "file": "inventory.json",
            "sha256": outputs.write_json(folder / "inventory.json", inventory),
        }
        manifest["sbom"] = {
            "file": "sbom.cdx.json",
            "sha256": outputs.sha256_text(doc),
            "format": "CycloneDX 1.6 JSON",
        }
    outputs.write_json(folder / "manifest.json", manifest | fields)
    return folder


def as_project_root(project: Project, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The standard project as the tasks' project root (and the working folder)."""
    project.standard()
    monkeypatch.setenv("GOLDSMITH_ROOT", str(project.root))
    monkeypatch.chdir(project.root)
    return project.root


def run(task: Any, capsys: pytest.CaptureFixture[str], **kwargs: Any) -> tuple[int, str, str]:
    """A task as `./run` calls it: (exit code, stdout, Exit's message)."""
    try:
        task(Context(), **kwargs)
        code, message = 0, ""
    except Exit as e:
        code, message = e.code, str(e.message or "")
    return code, capsys.readouterr().out, message
