"""Real local bakes: Packer, QEMU, Ansible over SSH, testinfra; then the output boots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, add_mini_image, invoke, qemu_processes

from goldsmith import vm

pytestmark = pytest.mark.bake


@pytest.fixture(scope="module")
def baked_base() -> Path:
    """`invoke build --image base` in the real project (reused by later tests of the suite)."""
    proc = invoke(ROOT, "build", "--image", "base", "--force")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return ROOT / "build" / "base"


def test_bake_base_writes_image_manifest_and_junit(baked_base: Path) -> None:
    qcow2 = baked_base / "base.qcow2"
    assert qcow2.is_file() and qcow2.stat().st_size > 50 * 2**20
    manifest = json.loads((baked_base / "manifest.json").read_text())
    assert manifest["image"] == "base"
    assert set(manifest["roles"]) >= {"base", "ssh_hardening", "node_exporter", "self_healing"}
    assert "prometheus-node-exporter" in manifest["packages"]
    assert manifest["specs"]["live"]["failed"] == 0 and manifest["specs"]["live"]["passed"] > 5
    assert manifest["specs"]["hygiene"]["failed"] == 0
    assert manifest["specs"]["hygiene"]["passed"] > 3
    assert {"provision", "spec", "hygiene", "total"} <= set(manifest["timings"])
    assert len(manifest["git"]["sha"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    junit = (baked_base / "junit.xml").read_text()
    assert "<testsuites" in junit and 'name="hygiene"' in junit and "<failure" not in junit
    assert not qemu_processes(ROOT), "a qemu outlived the build"
    assert not list((ROOT / "build").glob(".work-*")), "a build folder outlived the build"


def test_baked_base_boots_with_its_own_boot_loader_and_answers_ssh(baked_base: Path) -> None:
    """No -kernel: extlinux on the disk boots it; first boot makes new host keys."""
    with vm.booted("test-boot-base", baked_base / "base.qcow2", root=ROOT) as machine:
        out = machine.ssh(
            "sudo",
            "-n",
            "sh",
            "-c",
            "ls /etc/ssh/ssh_host_ed25519_key && cat /etc/machine-id && "
            "systemctl is-active prometheus-node-exporter",
        ).stdout.split()
        assert out[0] == "/etc/ssh/ssh_host_ed25519_key"
        assert len(out[1]) == 32  # a machine-id made at this first boot
        assert out[2] == "active"
    assert not qemu_processes(ROOT)


def test_second_build_with_same_inputs_reuses_the_image(baked_base: Path) -> None:
    before = (baked_base / "manifest.json").read_text()
    proc = invoke(ROOT, "build", "--image", "base")
    assert proc.returncode == 0
    assert "inputs unchanged" in proc.stdout
    assert (baked_base / "manifest.json").read_text() == before


def test_failing_spec_fails_the_build_names_it_and_writes_nothing(scratch: Path) -> None:
    add_mini_image(
        scratch,
        "def test_marker_says_goodbye(host):\n"
        "    assert host.file('/etc/mini').content_string == 'goodbye\\n'\n",
    )
    proc = invoke(scratch, "build", "--image", "mini")
    assert proc.returncode != 0
    assert "test_marker_says_goodbye" in proc.stderr + proc.stdout
    assert "no image written" in proc.stderr
    assert not (scratch / "build/mini/mini.qcow2").exists()
    assert not list((scratch / "build").glob(".work-*"))
    assert not qemu_processes(ROOT, scratch), "a qemu outlived the failed build"


def test_misspelt_catalogue_key_fails_before_any_vm(scratch: Path) -> None:
    text = (
        (scratch / "images.yml")
        .read_text()
        .replace("playbook: playbooks/web.yml", "playbok: playbooks/web.yml")
    )
    (scratch / "images.yml").write_text(text)
    proc = invoke(scratch, "build", "--image", "web", timeout=120)
    assert proc.returncode != 0
    assert "playbok" in proc.stderr and "images.yml" in proc.stderr
    assert "[packer]" not in proc.stdout and "[vm]" not in proc.stdout
    assert not (scratch / "build").exists()
    assert shutil.which("packer")
