"""Roles no one here wrote: a collection's role, installed from a tarball and a folder,
baked and proven by its own specs; bad requirements stop before any VM."""

from __future__ import annotations

import json
from pathlib import Path

import galaxy_kit
import pytest
from conftest import invoke, qemu_processes

from goldsmith import disk, vm

pytestmark = pytest.mark.bake


def test_a_collections_role_bakes_proven_by_its_specs_and_the_manifest_names_it(
    scratch: Path, tmp_path: Path
) -> None:
    galaxy_kit.add_acme(scratch)
    galaxy_kit.add_site_image(scratch)
    proc = invoke(scratch, "build", "--image", "site", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "wrote requirements.lock" in proc.stdout
    out = scratch / "build/site/local"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collections"] == {"acme.common": "1.0.0", "acme.web": "1.0.0"}
    assert manifest["roles"] == ["acme.common.motd", "acme.web.site"]
    assert manifest["uncovered_roles"] == ["acme.common.motd"]
    assert manifest["specs"]["live"] == manifest["specs"]["live"] | {"passed": 2, "failed": 0}
    assert "collection acme.web 1.0.0" in manifest["inputs"]
    junit = (out / "junit.xml").read_text()
    assert 'classname="acme.web.site.test_site" name="test_site_name_is_stamped[' in junit
    assert "<failure" not in junit
    assert not qemu_processes(scratch)
    # The tarball and folder gone (air-gapped): the plan still reuses the proven image.
    for f in (scratch / "thirdparty").rglob("*"):
        if f.is_file():
            f.unlink()
    proc = invoke(scratch, "plan", "--image", "site", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["action"] == "reuse"
    # The same specs against a running host: the baked image, booted with a login put back.
    bootable = disk.with_build_access(out / "site.qcow2", tmp_path / "site.raw")
    with vm.booted("test-site", bootable, root=scratch) as machine:
        proc = invoke(
            scratch, "spec", "--image", "site", "--hosts", machine.url(), "--key", str(machine.key)
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    junit = (scratch / "build/spec/site-junit.xml").read_text()
    assert 'name="test_site_name_is_stamped[' in junit and "<failure" not in junit
    assert not qemu_processes(scratch)


@pytest.mark.parametrize(
    ("requirements", "playbook", "message"),
    [
        (
            "collections:\n  - name: acme.web\n    version: '>=1.0'\n",
            None,
            "requirements.yml:2: collections[0] 'acme.web': version '>=1.0' is a range",
        ),
        (
            None,
            "---\n- name: Site\n  hosts: all\n  roles:\n    - acme.web.nosuch\n",
            "playbooks/site.yml:5: role 'acme.web.nosuch' is not in collection acme.web 1.0.0 "
            "(its roles: site)",
        ),
    ],
    ids=["unpinned", "no-such-role"],
)
def test_bad_requirements_stop_before_any_vm(
    scratch: Path, requirements: str | None, playbook: str | None, message: str
) -> None:
    galaxy_kit.add_acme(scratch)
    galaxy_kit.add_site_image(scratch)
    if requirements:
        (scratch / "requirements.yml").write_text(requirements)
    if playbook:
        (scratch / "playbooks/site.yml").write_text(playbook)
    proc = invoke(scratch, "build", "--image", "site", timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "[packer]" not in proc.stdout
    assert not (scratch / "build").exists() or not list((scratch / "build").glob(".work-*"))
    assert not qemu_processes(scratch)
