"""inventory.collect on a fake root filesystem built in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from goldsmith import inventory

DPKG_STATUS = """\
Package: openssl
Status: install ok installed
Priority: optional
Architecture: amd64
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit
 a continuation line: Source: not-a-field (9)

Package: libssl3
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 3.0.11-1~deb12u2

Package: libfoo1
Status: hold ok installed
Architecture: amd64
Source: foo (1.2-3)
Version: 1.2-3+b1

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4

Package: libc6
Status: install ok installed
Architecture: i386
Source: glibc
Version: 2.36-9+deb12u4

Package: removed-pkg
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
"""

SSH_SOCKET = """\
[Unit]
Description=OpenBSD Secure Shell server socket

[Socket]
ListenStream=22
Accept=yes

[Install]
WantedBy=sockets.target
"""


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small Debian-like root: merged /usr (lib -> usr/lib), absolute unit symlinks."""
    r = tmp_path / "root"
    _write(r / "var/lib/dpkg/status", DPKG_STATUS)
    _write(
        r / "usr/lib/os-release",
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
        "VERSION_CODENAME=bookworm\n",
    )
    _link(r / "etc/os-release", "../usr/lib/os-release")
    _link(r / "lib", "usr/lib")
    units = r / "usr/lib/systemd/system"
    _write(units / "ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n")
    _write(units / "ssh.socket", SSH_SOCKET)
    _write(units / "getty@.service", "[Service]\n")
    _write(units / "cron.service", "[Service]\n")
    _write(units / "syslog.socket", "[Socket]\nListenDatagram=/run/systemd/journal/syslog\n")
    etc_units = r / "etc/systemd/system"
    # Absolute links of the image, through its /lib symlink: never resolved on the host.
    _link(etc_units / "multi-user.target.wants/ssh.service", "/lib/systemd/system/ssh.service")
    _link(etc_units / "sockets.target.wants/ssh.socket", "/lib/systemd/system/ssh.socket")
    _link(etc_units / "getty.target.wants/getty@tty1.service", "/lib/systemd/system/getty@.service")
    _link(etc_units / "multi-user.target.requires/cron.service", "/lib/systemd/system/cron.service")
    _link(etc_units / "sshd.service", "/lib/systemd/system/ssh.service")
    # A drop-in adds a second port to ssh.socket; syslog.socket is not enabled.
    _write(etc_units / "ssh.socket.d/port.conf", "[Socket]\nListenStream=2222\n")
    _write(
        r / "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n",
    )
    _write(r / "etc/group", "root:x:0:\nshadow:x:42:\nsudo:x:27:bob,alice\nalice:x:1000:\n")
    _write(r / "etc/ssh/sshd_config", "PermitRootLogin no\n")
    _link(r / "etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
    _write(r / "boot/vmlinuz-6.1.0-18-amd64", b"kernel")
    _write(r / "boot/vmlinuz-6.1.0-21-amd64", b"kernel")
    _link(r / "boot/vmlinuz", "vmlinuz-6.1.0-21-amd64")
    os.chmod(_write(r / "usr/bin/sudo", b"\x7fELF"), 0o4755)
    os.chown(_write(r / "usr/bin/chage", b"\x7fELF"), 0, 42)  # before chmod: chown clears SGID
    os.chmod(r / "usr/bin/chage", 0o2755)
    os.chmod(_write(r / "usr/bin/ls", b"\x7fELF"), 0o755)
    # Skipped outright: a SUID file under proc, and a symlink to a SUID file.
    os.chmod(_write(r / "proc/1/exe", b"x"), 0o4755)
    _link(r / "usr/local/bin/sudo-link", "/usr/bin/sudo")
    # A symlinked folder that leads out of the image, to a SUID file: not entered.
    os.chmod(_write(tmp_path / "outside/evil", b"x"), 0o4755)
    _link(r / "opt/outside", str(tmp_path / "outside"))
    return r


def test_packages_carry_their_source_package_and_source_version(root: Path) -> None:
    packages = inventory.collect(root)["packages"]
    # Only installed packages; a name installed for two arches is keyed name:arch.
    assert list(packages) == ["libc6:amd64", "libc6:i386", "libfoo1", "libssl3", "openssl"]
    assert packages["openssl"] == {
        "name": "openssl",
        "version": "3.0.11-1~deb12u2",
        "architecture": "amd64",
        "source": "openssl",
        "source_version": "3.0.11-1~deb12u2",
    }
    assert packages["libssl3"]["source"] == "openssl"
    assert packages["libssl3"]["source_version"] == "3.0.11-1~deb12u2"
    # A binNMU: the source version is the one in parentheses, not the binary's.
    assert packages["libfoo1"]["version"] == "1.2-3+b1"
    assert (packages["libfoo1"]["source"], packages["libfoo1"]["source_version"]) == (
        "foo",
        "1.2-3",
    )
    assert packages["libc6:i386"]["architecture"] == "i386"


def test_enabled_units_resolve_inside_the_image(root: Path) -> None:
    inv = inventory.collect(root)
    units = inv["units"]
    assert list(units) == ["cron.service", "getty@tty1.service", "ssh.service", "ssh.socket"]
    assert units["ssh.service"] == {
        "wanted_by": ["multi-user.target.wants"],
        "file": "/usr/lib/systemd/system/ssh.service",
    }
    assert units["cron.service"]["wanted_by"] == ["multi-user.target.requires"]
    # A template instance is defined by its template's file.
    assert units["getty@tty1.service"]["file"] == "/usr/lib/systemd/system/getty@.service"
    assert inv["os"] == {"id": "debian", "version_id": "12", "codename": "bookworm"}


def test_sockets_are_those_of_enabled_socket_units_with_drop_ins(root: Path) -> None:
    sockets = inventory.collect(root)["sockets"]
    assert sockets == [
        {"unit": "ssh.socket", "type": "stream", "listen": "22"},
        {"unit": "ssh.socket", "type": "stream", "listen": "2222"},
    ]


def test_an_empty_listen_line_in_a_drop_in_resets_the_list(root: Path) -> None:
    _write(
        root / "etc/systemd/system/ssh.socket.d/port.conf",
        "[Socket]\nListenStream=\nListenStream=[::1]:2200\n",
    )
    sockets = inventory.collect(root)["sockets"]
    assert [s["listen"] for s in sockets] == ["[::1]:2200"]


def test_users_and_groups(root: Path) -> None:
    inv = inventory.collect(root)
    assert inv["users"]["alice"] == {
        "uid": 1000,
        "gid": 1000,
        "home": "/home/alice",
        "shell": "/bin/bash",
    }
    assert list(inv["users"]) == ["alice", "daemon", "root"]
    assert inv["groups"]["sudo"] == {"gid": 27, "members": ["alice", "bob"]}


def test_setid_files_found_without_following_links_or_entering_proc(root: Path) -> None:
    setid = inventory.collect(root)["setid"]
    assert setid == [
        {"path": "/usr/bin/chage", "mode": "2755", "owner": "root", "group": "shadow"},
        {"path": "/usr/bin/sudo", "mode": "4755", "owner": "root", "group": "root"},
    ]


def test_kernels_and_etc_hashes(root: Path) -> None:
    inv = inventory.collect(root)
    assert inv["kernels"] == ["6.1.0-18-amd64", "6.1.0-21-amd64"]
    etc = inv["etc"]
    assert etc["etc/ssh/sshd_config"] == hashlib.sha256(b"PermitRootLogin no\n").hexdigest()
    assert etc["etc/localtime"] == "-> /usr/share/zoneinfo/Etc/UTC"
    assert etc["etc/os-release"] == "-> ../usr/lib/os-release"
    assert etc["etc/systemd/system/sshd.service"] == "-> /lib/systemd/system/ssh.service"
    assert list(etc) == sorted(etc)


def test_symlinks_are_never_resolved_against_the_hosts_root(root: Path, tmp_path: Path) -> None:
    # /etc/passwd in the image points at an absolute path; the host has its own
    # /etc/passwd-like files, but the image's link must land in the image.
    real = _write(root / "srv/passwd", "carol:x:1001:1001::/home/carol:/bin/sh\n")
    (root / "etc/passwd").unlink()
    _link(root / "etc/passwd", "/srv/passwd")
    assert real.exists()
    assert list(inventory.collect(root)["users"]) == ["carol"]


def test_output_is_deterministic_and_json_serialisable(root: Path) -> None:
    a = inventory.collect(root)
    b = inventory.collect(root)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert json.loads(json.dumps(a)) == a
    assert a["format"] == inventory.FORMAT


def test_an_empty_root_gives_an_empty_inventory(tmp_path: Path) -> None:
    inv = inventory.collect(tmp_path)
    assert inv["packages"] == {} and inv["units"] == {} and inv["setid"] == []
    assert inv["os"] == {"id": "", "version_id": "", "codename": ""}
