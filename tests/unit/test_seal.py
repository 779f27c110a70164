"""The seal's self-check, run on a root folder made here (`seal.sh --check ROOT`).

The seal ends with this check on the live machine, so on a cloud target, whose disk is
never mounted here, a leftover fails Packer before the AMI is made. Each case plants one
leftover in an otherwise clean root and expects the check to name it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SEAL = Path(__file__).resolve().parents[2] / "src/goldsmith/data/seal.sh"


def clean_root(root: Path, user: str = "admin") -> Path:
    """A root as a sealed image leaves it: an empty machine-id, the image's own user."""
    for d in (
        "etc/ssh",
        "etc/sudoers.d",
        "etc/systemd/system",
        "root",
        f"home/{user}",
        "tmp/systemd-private-1-ssh.service-x",
        "var/tmp",
        "var/log/journal",
        "var/log/apt",
        "var/lib/systemd",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives",
        "usr/local/sbin",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/machine-id").write_text("")
    (root / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{user}:x:1000:1000::/home/{user}:/bin/bash\n"
    )
    (root / "etc/sudoers.d/README").write_text("# files in this folder are read by sudo\n")
    (root / "etc/sudoers.d/monitoring").write_text("nagios ALL=(root) NOPASSWD: /usr/bin/check\n")
    (root / "var/log/apt/history.log").write_text("")
    (root / "var/lib/apt/lists/lock").write_text("")
    return root


def check(root: Path, created: bool, user: str = "admin") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(SEAL), "--check", str(root), "1" if created else "0"],
        env={**os.environ, "GOLDSMITH_BUILD_USER": user},
        capture_output=True,
        text=True,
    )


def write(path: str, text: str = "x\n", named: str = "") -> tuple[str, str, str]:
    """A leftover: the file to plant, its content, and the path the check must name."""
    return path, text, named or path


LEFTOVERS = {
    "host key": write("etc/ssh/ssh_host_ed25519_key.pub"),
    "machine-id": write("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
    "authorized_keys": write("home/admin/.ssh/authorized_keys", "ssh-ed25519 AAAA build\n"),
    "known_hosts": write("root/.ssh/known_hosts", "host ssh-ed25519 AAAA\n"),
    "ansible folder": write("home/admin/.ansible/tmp/x", named="home/admin/.ansible"),
    "history": write("root/.bash_history", "sudo -i\n"),
    "aws credentials": write("home/admin/.aws/credentials", "[default]\n"),
    "build sudo rule": write("etc/sudoers.d/goldsmith-build", "goldsmith ALL=(ALL) ALL\n"),
    "cloud-init sudo rule": write("etc/sudoers.d/90-cloud-init-users", "# cloud-init\n"),
    "a rule for the build user": write("etc/sudoers.d/extra", "admin ALL=(ALL) NOPASSWD: ALL\n"),
    "credential unit": write("etc/systemd/system/goldsmith-build-credential.service"),
    "credential program": write("usr/local/sbin/goldsmith-build-credential"),
    "marker": write("var/lib/goldsmith/build-user", "admin\n", named="var/lib/goldsmith"),
    "tmp dotfile": write("tmp/.goldsmith-seal.sh"),
    "var tmp file": write("var/tmp/build.log"),
    "archived journal": write("var/log/journal/0123/system@0001-0002.journal~", ""),
    "wtmp": write("var/log/wtmp", "login records\n"),
    "apt log": write("var/log/apt/history.log", "Start-Date: today\n"),
    "dpkg log": write("var/log/dpkg.log", "status installed nginx\n"),
    "cloud-init log": write("var/log/cloud-init.log", "ran\n"),
    "random seed": write("var/lib/systemd/random-seed"),
    "dhcp lease": write("var/lib/dhcp/dhclient.eth0.leases"),
    "deb": write("var/cache/apt/archives/nginx_1.22_amd64.deb"),
    "package list": write("var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease"),
    "cloud-init instance": write(
        "var/lib/cloud/instances/i-123/obj.pkl", named="var/lib/cloud/instances"
    ),
    "private key": write("opt/app/key.pem", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"),
}


def test_a_clean_root_passes(tmp_path: Path) -> None:
    done = check(clean_root(tmp_path), created=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "self-check passed" in done.stdout


@pytest.mark.parametrize("what", sorted(LEFTOVERS))
def test_each_leftover_is_named(tmp_path: Path, what: str) -> None:
    root = clean_root(tmp_path)
    path, text, named = LEFTOVERS[what]
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    done = check(root, created=False)
    assert done.returncode == 1, f"{what} passed the self-check:\n{done.stdout}"
    left = [line for line in done.stdout.splitlines() if "LEFT:" in line]
    assert any(f"{root}/{named}" in line for line in left), done.stdout
    assert "self-check failed: 1 thing(s) left" in done.stdout


def test_a_user_goldsmith_created_must_be_gone_but_an_images_own_user_stays(
    tmp_path: Path,
) -> None:
    root = clean_root(tmp_path)
    assert check(root, created=False).returncode == 0  # admin is the image's user: kept
    done = check(root, created=True)  # the credential unit made admin: it must go
    assert done.returncode == 1
    assert "build user admin, created by the build, still exists" in done.stdout
    assert f"{root}/home/admin (the build user's home)" in done.stdout


def test_usage_without_a_root() -> None:
    done = subprocess.run(["sh", str(SEAL), "--check"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr


def test_the_check_leaves_no_temporary_file(tmp_path: Path) -> None:
    """It runs on the live machine last: a file of its own in /tmp would fail it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    root = clean_root(tmp_path / "root")
    done = subprocess.run(
        ["sh", str(SEAL), "--check", str(root)],
        env={**os.environ, "TMPDIR": str(scratch), "GOLDSMITH_BUILD_USER": "admin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
    assert list(scratch.iterdir()) == []


def test_an_empty_root_does_not_search_the_current_folder(tmp_path: Path) -> None:
    (tmp_path / "here.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nx\n")
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        ["sh", str(SEAL), "--check", "empty"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
