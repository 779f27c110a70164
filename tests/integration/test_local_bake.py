"""Real local bakes: Packer, QEMU, Ansible over SSH, testinfra; then the output boots."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    add_kid_image,
    add_mini_image,
    copy_project,
    invoke,
    qemu_processes,
    vm_processes,
)
from cve_kit import CVE_TRACKER

from goldsmith import disk, vm

pytestmark = pytest.mark.bake


def build_qemus() -> list[str]:
    """qemu processes of the real project's builds (their disks are in build/.work-*);
    not its VMs, e.g. the other lane's dev VM."""
    return [p for p in qemu_processes(ROOT) if f"{ROOT}/build/.work-" in p]


@pytest.fixture(scope="module")
def baked_base(proven_base: Path) -> Path:
    """base's proven local build in the real project (baked once for the suite)."""
    return proven_base


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
    # Where provisioning went, task by task, under the default strategy.
    prov = manifest["provision"]
    assert prov["strategy"] == "mitogen" and prov["tasks"] > 10, prov
    assert {"base", "ssh_hardening", "node_exporter"} <= set(prov["by_role"]), prov
    # Written with zstd (packer/source.qemu.pkr.hcl's qemu_img_args).
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", qcow2], capture_output=True, text=True, check=True
    )
    assert json.loads(info.stdout)["format-specific"]["data"]["compression-type"] == "zstd"
    assert len(manifest["git"]["sha"]) == 40 and isinstance(manifest["git"]["dirty"], bool)
    junit = (baked_base / "junit.xml").read_text()
    assert "<testsuites" in junit and 'name="hygiene"' in junit and "<failure" not in junit
    assert not build_qemus(), "a qemu outlived the build"
    assert not list((ROOT / "build").glob(".work-*")), "a build folder outlived the build"


def test_base_build_records_inventory_and_sbom_beside_the_manifest(baked_base: Path) -> None:
    """The session's own bake of base (made by this code: the fingerprint covers the
    catalogue entry, whose shape gained the CVE gate's policy, so a base recorded before
    inventories were kept is rebaked, not reused) records what its sealed disk holds."""
    manifest = json.loads((baked_base / "manifest.json").read_text())
    assert "inventory" in manifest, (
        "base's proven build predates inventories: ./run build --image base --force"
    )
    entry = manifest["inventory"]
    text = (baked_base / entry["file"]).read_text()
    assert entry["file"] == "inventory.json"
    assert hashlib.sha256(text.encode()).hexdigest() == entry["sha256"]
    inventory = json.loads(text)
    assert {p["name"]: p["version"] for p in inventory["packages"].values()} == manifest["packages"]
    assert inventory["os"]["codename"] == "bookworm" and inventory["kernels"]
    assert "ssh.service" in inventory["units"] and "etc/ssh/sshd_config" in inventory["etc"]
    # What the disk cannot show, read on the live machine before its specs.
    assert "listening" in inventory, (
        "base's proven build predates live sockets: ./run build --image base --force"
    )
    assert entry["read"].endswith(
        "; listening sockets read on the live machine before any spec restarted a service"
    )
    ports = {(x["proto"], x["port"], x["process"]) for x in inventory["listening"]}
    assert {("tcp", 22, "sshd"), ("tcp6", 9100, "prometheus-node")} <= ports, ports
    sbom = json.loads((baked_base / manifest["sbom"]["file"]).read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    assert len(sbom["components"]) == len(inventory["packages"])
    # This project's images have no vulnerabilities policy: no gate, and the manifest says so.
    assert manifest["cve_gate"] is None and manifest["cve_gate_reason"]
    same = invoke(ROOT, "diff", "--image", "base", "--against", str(baked_base), "--fail-on-change")
    assert same.returncode == 0 and "no change" in same.stdout, same.stderr


def test_baked_base_boots_with_its_own_boot_loader_and_answers_ssh(
    baked_base: Path, tmp_path: Path
) -> None:
    """No -kernel: extlinux on the disk boots it; first boot makes new host keys.

    The sealed image carries no build credential unit, so the test puts it back into a
    copy to log in with a key of its own.
    """
    bootable = disk.with_build_access(baked_base / "base.qcow2", tmp_path / "base.raw")
    with vm.booted("test-boot-base", bootable, root=ROOT) as machine:
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
    assert not vm_processes("test-boot-base")


def test_second_build_with_same_inputs_reuses_the_image(baked_base: Path) -> None:
    before = (baked_base / "manifest.json").read_text()
    proc = invoke(ROOT, "build", "--image", "base")
    assert proc.returncode == 0
    assert "inputs unchanged" in proc.stdout
    assert (baked_base / "manifest.json").read_text() == before


def plan_of(project: Path, image: str) -> dict:
    proc = invoke(project, "plan", "--image", image, "--target", "local", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    return row


def test_same_inputs_in_another_folder_same_fingerprint_and_reuse(
    baked_base: Path, scratch: Path
) -> None:
    """CI clones into a new folder every run: the fingerprint must not see the folder."""
    here, there = plan_of(ROOT, "base"), plan_of(scratch, "base")
    assert here["fingerprint"] == there["fingerprint"] and len(here["fingerprint"]) == 64
    assert here["action"] == "reuse" and there["action"] == "rebake"
    shutil.copytree(ROOT / "build" / "base", scratch / "build" / "base", ignore=ignore_lock)
    assert plan_of(scratch, "base")["action"] == "reuse"
    proc = invoke(scratch, "build", "--image", "base", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "inputs unchanged" in proc.stdout and "[packer]" not in proc.stdout
    # A changed role: the plan says rebake and names what changed.
    with (scratch / "roles/base/defaults/main.yml").open("a") as f:
        f.write("# a reviewer's comment\n")
    changed = plan_of(scratch, "base")
    assert changed["action"] == "rebake" and changed["changed"] == ["roles/base/defaults/main.yml"]


def ignore_lock(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == ".lock"]


def test_truncated_manifest_is_one_line_and_no_previous_build(
    baked_base: Path, scratch: Path
) -> None:
    shutil.copytree(ROOT / "build" / "base", scratch / "build" / "base", ignore=ignore_lock)
    manifest = scratch / "build/base/local/manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    proc = invoke(scratch, "plan", "--image", "base", "--target", "local", timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "rebake" in proc.stdout
    # The plan's answer is its stdout; what it noticed on the way goes to stderr.
    (line,) = [ln for ln in proc.stderr.splitlines() if "unreadable" in ln]
    assert "build/base/local/manifest.json" in line and "no previous build" in line


def leftovers(project: Path) -> list[str]:
    """What a build of `project` could leave on this machine: qemu, work folders, mounts,
    loop devices."""
    found = qemu_processes(project)
    found += [str(p) for p in (project / "build").glob(".work-*")]
    found += [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if str(project) in ln]
    loops = subprocess.run(["losetup", "--list"], capture_output=True, text=True).stdout
    found += [ln for ln in loops.splitlines() if str(project) in ln]
    return found


def start_build(project: Path, *args: str) -> subprocess.Popen:
    """A build as a terminal starts it: Ctrl-C (SIGINT) reaches it even when this suite
    runs in the background, whose shell started it with SIGINT ignored (inherited)."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), "build", *args],
        cwd=project,
        env={**os.environ, "GOLDSMITH_ROOT": str(project)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 900) -> str:
    """The build's output up to the first line holding `marker` (fails on timeout or exit)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
        assert time.monotonic() < deadline, f"no {marker!r} within {timeout}s"
    raise AssertionError(f"the build ended before {marker!r}:\n" + "".join(seen[-40:]))


@pytest.fixture(scope="module")
def mini_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("drills"))
    add_mini_image(project, GOOD_SPEC)
    return project


GOOD_SPEC = (
    "def test_marker_says_hello(host):\n"
    "    assert host.file('/etc/mini').content_string == 'hello\\n'\n"
)


def test_drill_sigkill_mid_provision_then_a_new_build_sweeps_and_succeeds(
    mini_project: Path,
) -> None:
    proc = start_build(mini_project, "--image", "mini")
    read_until(proc, "Provisioning with Ansible")
    proc.kill()  # SIGKILL: goldsmith gets no chance to clean up
    proc.wait()
    again = invoke(mini_project, "build", "--image", "mini")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "[sweep]" in again.stdout and "removed work folder" in again.stdout
    assert (mini_project / "build/mini/local/mini.qcow2").is_file()
    time.sleep(2)
    assert leftovers(mini_project) == []


def test_drill_second_build_of_an_image_fails_clearly_and_ctrl_c_twice_cleans_up(
    mini_project: Path,
) -> None:
    proven = (mini_project / "build/mini/local/manifest.json").read_text()
    # mini's one task takes a second under Mitogen: a task that waits holds the build in
    # provisioning, so the Ctrl-C surely lands there, however long the second build takes.
    tasks = mini_project / "roles/mini/tasks/main.yml"
    original = tasks.read_text()
    tasks.write_text(
        original + "- name: Hold the build in provisioning for the drill\n"
        "  ansible.builtin.command: sleep 900\n  changed_when: false\n"
    )
    try:
        first = start_build(mini_project, "--image", "mini", "--force")
        read_until(first, "[phase] bake mini")
        second = invoke(mini_project, "build", "--image", "mini", "--force", timeout=300)
        assert second.returncode != 0
        assert "another build of this image is running" in second.stderr
        read_until(first, "Hold the build in provisioning")
        first.send_signal(signal.SIGINT)
        time.sleep(1)
        first.send_signal(signal.SIGINT)  # impatient: must not cut the cleanup short
        rest, _ = first.communicate(timeout=600)
    finally:
        tasks.write_text(original)
    assert first.returncode == 130, rest[-3000:]
    assert "interrupted; cleaned up" in rest
    assert leftovers(mini_project) == []
    assert (mini_project / "build/mini/local/manifest.json").read_text() == proven


def test_drill_failed_rebuild_keeps_the_proven_image_which_is_then_reused(
    mini_project: Path,
) -> None:
    out = mini_project / "build/mini/local"
    proven = (out / "manifest.json").read_text()
    spec = mini_project / "tests/spec/mini/test_mini.py"
    spec.write_text(GOOD_SPEC.replace("hello", "goodbye").replace("says_goodbye", "says_bye"))
    failed = invoke(mini_project, "build", "--image", "mini")
    assert failed.returncode != 0
    assert "test_marker_says_bye" in failed.stderr + failed.stdout
    assert "no image written" in failed.stderr
    assert (out / "manifest.json").read_text() == proven and (out / "mini.qcow2").is_file()
    assert leftovers(mini_project) == []
    spec.write_text(GOOD_SPEC)
    again = invoke(mini_project, "build", "--image", "mini")
    assert again.returncode == 0 and "inputs unchanged" in again.stdout


def test_a_layered_image_bakes_from_its_parents_proven_build_and_is_proven_whole(
    mini_project: Path,
) -> None:
    """kid is layered on mini (proven by the drills above): --jobs 2 runs each bake in a
    process of its own, mini first (reused), then kid from mini's qcow2. kid provisions
    only its own role, mini's spec runs on it too, and its qcow2 stands alone."""
    add_kid_image(mini_project)
    mini = json.loads((mini_project / "build/mini/local/manifest.json").read_text())
    proc = invoke(mini_project, "build", "--image", "kid", "--image", "mini", "--jobs", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "[mini] [build] mini: inputs unchanged" in proc.stdout
    assert "TASK [kid : Write the layer's marker file]" in proc.stdout
    assert "TASK [mini :" not in proc.stdout
    out = mini_project / "build/kid/local"
    kid = json.loads((out / "manifest.json").read_text())
    assert kid["parent"] == {
        "image": "mini",
        "fingerprint": mini["fingerprint"],
        "build_id": mini["build_id"],
    }
    assert kid["roles"] == ["kid"] and kid["base"]["id"] == f"image mini {mini['fingerprint']}"
    junit = (out / "junit.xml").read_text()
    assert 'name="spec mini"' in junit and 'name="spec"' in junit and "<failure" not in junit
    assert "test_marker_says_hello" in junit and "test_kid_marker" in junit
    assert kid["specs"]["live"]["passed"] == 2 and kid["specs"]["hygiene"]["failed"] == 0
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / "kid.qcow2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert "backing-filename" not in info, "the child's qcow2 must stand alone"
    assert leftovers(mini_project) == []
    # A change in the child's role rebakes the child only; one in the parent's, both.
    with (mini_project / "roles/kid/tasks/main.yml").open("a") as f:
        f.write("# edited\n")
    assert [plan_of(mini_project, i)["action"] for i in ("mini", "kid")] == ["reuse", "rebake"]
    with (mini_project / "roles/mini/tasks/main.yml").open("a") as f:
        f.write("# edited\n")
    assert [plan_of(mini_project, i)["action"] for i in ("mini", "kid")] == ["rebake", "rebake"]


# The tracker data of Debian's security tracker (its JSON's shape), written for the test:
# base-files, which every image has, with a fixed high-urgency issue it does not have.
ALLOW = (
    "      allow:\n        - {id: CVE-2099-0002, package: base-files, "
    'reason: "the test accepts it", expires: 2099-12-31}\n'
)


def test_a_role_change_shows_in_diff_and_the_cve_gate_stops_a_bake(mini_project: Path) -> None:
    """kid (proven by the test above) gets a role change and a CVE policy whose tracker
    marks base-files fixed in a version it does not have: the bake fails at the gate,
    naming both, and writes nothing. With an allow entry it passes, the report shows the
    exception, and `./run diff` shows the role's change and nothing else."""
    for role in ("mini", "kid"):  # undo the plan checks' edits above: mini is reused
        tasks = mini_project / f"roles/{role}/tasks/main.yml"
        tasks.write_text(tasks.read_text().replace("# edited\n", ""))
    out = mini_project / "build/kid/local"
    proven = json.loads((out / "manifest.json").read_text())
    with (mini_project / "roles/kid/tasks/main.yml").open("a") as f:
        f.write(
            "- name: Write the layer's note\n  ansible.builtin.copy:\n"
            '    dest: /etc/kid-note\n    content: "noted\\n"\n    mode: "0644"\n'
        )
    (mini_project / "security").mkdir()
    (mini_project / "security/tracker.json").write_text(json.dumps(CVE_TRACKER))
    catalogue = mini_project / "images.yml"
    policy = "    vulnerabilities:\n      tracker: security/tracker.json\n      fail_on: high\n"
    text = catalogue.read_text()
    kid = "    playbook: playbooks/kid.yml\n"
    catalogue.write_text(text.replace(kid, kid + policy, 1))

    failed = invoke(mini_project, "build", "--image", "kid")
    assert failed.returncode != 0
    assert "the CVE gate failed" in failed.stderr and "no image written" in failed.stderr
    assert "CVE-2099-0002 in base-files" in failed.stderr
    assert json.loads((out / "manifest.json").read_text())["build_id"] == proven["build_id"]
    assert leftovers(mini_project) == []

    catalogue.write_text(text.replace(kid, kid + policy + ALLOW, 1))
    passed = invoke(mini_project, "build", "--image", "kid")
    assert passed.returncode == 0, passed.stdout[-3000:] + passed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cve_gate"]["ok"] and manifest["cve_gate"]["allowed"] == ["CVE-2099-0002"]
    report = (out / "cve-report.md").read_text()
    assert "Allowed by the policy (1)" in report and "the test accepts it" in report
    diff = invoke(mini_project, "diff", "--image", "kid", "--format", "json", "--fail-on-change")
    assert diff.returncode == 1, diff.stdout[-3000:] + diff.stderr
    changes = json.loads(diff.stdout)["changes"]
    assert changes == {"etc": {"added": {"etc/kid-note": changes["etc"]["added"]["etc/kid-note"]},
                               "changed": {}, "removed": {}}}  # fmt: skip


def git(root: Path, *args: str) -> str:
    who = ["-c", "user.name=goldsmith", "-c", "user.email=goldsmith@example.invalid"]
    done = subprocess.run(["git", *who, *args], cwd=root, check=True, capture_output=True)
    return done.stdout.decode().strip()


def test_report_bake_shows_what_a_committed_role_change_does_to_the_image(
    mini_project: Path,
) -> None:
    """`./run report --bake` in a pull request's checkout: kid's role installs one more
    package in a commit. The plan's last proven kid build (the tests above proved it) is
    the reference: it stands for the commit before, whose worktree gives the same
    fingerprint, so it is reused, not baked again; the change is baked locally (mini,
    its parent, reused) with its specs, and the report names the package as added and
    nothing else. Nothing is left behind: no worktree, VM, mount or work folder."""
    catalogue = mini_project / "images.yml"
    if "\n  kid:\n" not in catalogue.read_text():  # this test alone: kid is baked first
        add_kid_image(mini_project)
    # base and web are other tests' (neither's entry is in mini's or kid's fingerprint).
    text = catalogue.read_text()
    catalogue.write_text(text[: text.index("  base:\n    base: debian12\n")])
    proven = invoke(mini_project, "build", "--image", "kid")
    assert proven.returncode == 0, proven.stdout[-3000:] + proven.stderr
    (mini_project / ".gitignore").write_text("build/\n.cache\n")
    git(mini_project, "init", "-q", "-b", "main")
    git(mini_project, "add", "-A")
    git(mini_project, "commit", "-q", "-m", "kid as proven")
    before = git(mini_project, "rev-parse", "HEAD")
    # kid's proven build was baked from exactly these files, before the folder was a git
    # checkout: record the commit it stands for, as a build of it in CI would have.
    out = mini_project / "build/kid/local"
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(
        json.dumps(manifest | {"git": {"sha": before, "dirty": False}})
    )
    assert plan_of(mini_project, "kid")["action"] == "reuse"

    with (mini_project / "roles/kid/tasks/main.yml").open("a") as f:
        # apt-get itself: the apt module needs python3-apt, which the image does not have.
        f.write(
            "- name: Refresh the package lists\n"
            "  ansible.builtin.command: apt-get update -q\n  changed_when: false\n"
            "- name: Install GNU hello\n"
            "  ansible.builtin.command: apt-get install -y -q --no-install-recommends hello\n"
            "  changed_when: true\n"
        )
    git(mini_project, "commit", "-q", "-am", "kid installs hello")
    started = time.monotonic()
    proc = invoke(mini_project, "report", "--target", "local", "--bake")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    print(f"report --bake took {took:.0f}s")
    data = json.loads((mini_project / "build/report/pr-report.json").read_text())
    entries = {e["image"]: e for e in data["images"]}
    assert data["rebake"] == ["kid"] and entries["mini"]["validation"] is None
    kid = entries["kid"]
    v = kid["validation"]
    assert v["errors"] == [] and v["reference"]["commit"] == before
    assert v["reference"]["source"] == "published"
    assert v["reference_build"]["build_id"] == manifest["build_id"]
    assert v["reference_build"]["how"].startswith(
        f"reused the local build {manifest['build_id']} kept in build/kid/local/"
    )
    changes = v["changes"]
    assert set(changes) == {"packages"}, changes
    assert list(changes["packages"]["added"]) == ["hello"], changes["packages"]
    assert not changes["packages"]["removed"] and not changes["packages"]["changed"]
    baked = json.loads((out / "manifest.json").read_text())
    assert v["new"]["build_id"] == baked["build_id"] != manifest["build_id"]
    assert baked["git"] == {"sha": git(mini_project, "rev-parse", "HEAD"), "dirty": False}
    assert kid["specs"]["live"]["passed"] == 2 and kid["specs"]["live"]["failed"] == 0
    assert "TASK [mini :" not in proc.stdout + proc.stderr  # mini, the parent, was reused
    md = (mini_project / "build/report/pr-report.md").read_text()
    assert f"- Reference: a local bake of commit `{before[:12]}`" in md
    assert "- added `hello` " in md
    assert leftovers(mini_project) == []
    assert git(mini_project, "worktree", "list").count("\n") == 0


def test_spec_that_does_not_load_fails_before_any_vm(scratch: Path) -> None:
    (scratch / "tests/spec/base/test_broken.py").write_text("def test_x(host:\n    pass\n")
    proc = invoke(scratch, "build", "--image", "base", timeout=300)
    assert proc.returncode != 0
    assert "test_broken.py" in proc.stderr and "specs do not load" in proc.stderr
    assert "[packer]" not in proc.stdout and "[vm]" not in proc.stdout


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
