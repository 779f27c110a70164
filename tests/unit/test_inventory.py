"""inventory.collect on a fake root filesystem built in tmp_path."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
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


def test_masked_units_are_the_links_to_dev_null(root: Path, tmp_path: Path) -> None:
    etc_units = root / "etc/systemd/system"
    _link(etc_units / "apt-daily.timer", "/dev/null")
    _link(etc_units / "rpcbind.socket", "../../../dev/null")  # relative, as systemctl may write
    _link(etc_units / "getty@tty2.service", "/dev/null")
    _link(etc_units / "dbus-org.freedesktop.timesync1.service", "/lib/systemd/system/cron.service")
    _write(etc_units / "local.service", "[Service]\nExecStart=/bin/true\n")
    _link(etc_units / "multi-user.target.wants/bad.service", "/dev/null")  # not a mask
    inv = inventory.collect(root)
    assert inv["masked"] == ["apt-daily.timer", "getty@tty2.service", "rpcbind.socket"]
    (tmp_path / "empty").mkdir()
    assert inventory.collect(tmp_path / "empty")["masked"] == []


ALL_KINDS_SOCKET = """\
[Socket]
ListenStream=/run/app.sock
ListenDatagram=514
ListenSequentialPacket=/run/app.seq
ListenFIFO=/run/app.fifo
ListenNetlink=kobject-uevent 1
ListenSpecial=/proc/kmsg
ListenMessageQueue=/app-queue
ListenUSBFunction=/dev/usb-ffs/app
Service=app.service
"""


def test_every_kind_of_listen_setting_is_recorded_with_its_type(root: Path) -> None:
    _write(root / "usr/lib/systemd/system/app.socket", ALL_KINDS_SOCKET)
    _link(
        root / "etc/systemd/system/sockets.target.wants/app.socket",
        "/lib/systemd/system/app.socket",
    )
    app = [
        (s["type"], s["listen"])
        for s in inventory.collect(root)["sockets"]
        if s["unit"] == "app.socket"
    ]
    assert app == [
        ("datagram", "514"),
        ("fifo", "/run/app.fifo"),
        ("message-queue", "/app-queue"),
        ("netlink", "kobject-uevent 1"),
        ("sequential-packet", "/run/app.seq"),
        ("special", "/proc/kmsg"),
        ("stream", "/run/app.sock"),
        ("usb-function", "/dev/usb-ffs/app"),
    ]
    # As in systemd, an empty Listen*= of any kind resets all of them.
    _write(
        root / "etc/systemd/system/app.socket.d/only-fifo.conf",
        "[Socket]\nListenFIFO=\nListenFIFO=/run/other.fifo\n",
    )
    app = [s for s in inventory.collect(root)["sockets"] if s["unit"] == "app.socket"]
    assert app == [{"unit": "app.socket", "type": "fifo", "listen": "/run/other.fifo"}]


# /proc/net tables as a little-endian kernel writes them (longer lines than ours): addresses
# in 32-bit words of the host's byte order, ports in hex. States: 0A LISTEN, 01 ESTABLISHED,
# 06 TIME_WAIT, 07 CLOSE.
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   105        0 101 1 0000000000000000 100 0 0 10 0
   2: 0500000A:0016 0900000A:C738 01 00000000:00000000 02:000A7B1F 00000000     0        0 200 4 0000000000000000 20 4 31 10 -1
"""  # noqa: E501 (the lines as the kernel writes them)
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000    33        0 102 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 103 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   3: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D2F0 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
"""  # noqa: E501 (the lines as the kernel writes them)
PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  220: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 104 2 0000000000000000 0
  301: 0500000A:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000   100        0 201 2 0000000000000000 0
  302: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000   100        0 202 2 0000000000000000 0
"""  # noqa: E501 (the lines as the kernel writes them)
PROC_UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  546: 000080FE00000000FF005450563412FE:0222 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 105 2 0000000000000000 0
"""  # noqa: E501 (the lines as the kernel writes them)
PROC_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 106 /run/systemd/private
0000000000000000: 00000002 00000000 00000000 0002 01 107 /run/systemd/journal/socket
0000000000000000: 00000002 00000000 00010000 0001 01 108 @/tmp/.X11-unix/X0
0000000000000000: 00000003 00000000 00000000 0001 03 109
0000000000000000: 00000003 00000000 00000000 0001 03 110 /run/dbus/system_bus_socket
"""


def write_proc(proc: Path) -> Path:
    """A /proc with its network tables and a few processes holding sockets."""
    for name, text in (
        ("tcp", PROC_TCP),
        ("tcp6", PROC_TCP6),
        ("udp", PROC_UDP),
        ("udp6", PROC_UDP6),
        ("unix", PROC_UNIX),
    ):
        _write(proc / "net" / name, text)
    processes = {
        1: ("systemd", [100, 106, 107]),
        412: ("sshd", [100]),  # inherited from pid 1: the lowest pid names the owner
        600: ("postgres", [101, 201]),
        900: ("nginx", [102]),
        500: ("dhclient", [104]),
    }
    for pid, (comm, inodes) in processes.items():
        _write(proc / str(pid) / "comm", f"{comm}\n")
        _link(proc / str(pid) / "fd/0", "/dev/null")
        for n, inode in enumerate(inodes, 3):
            _link(proc / str(pid) / "fd" / str(n), f"socket:[{inode}]")
    _write(proc / "777/comm", "gone\n")  # no fd folder (the process exited): passed over
    _write(proc / "self/comm", "not-a-pid\n")
    return proc


@pytest.mark.skipif(sys.byteorder != "little", reason="the tables are a little-endian kernel's")
def test_live_listeners_reads_proc_net_and_names_the_processes(tmp_path: Path) -> None:
    proc = write_proc(tmp_path / "proc")
    rows = inventory.live_listeners(proc)
    assert [(r["proto"], r["address"], r["port"], r["process"]) for r in rows] == [
        ("tcp", "0.0.0.0", 22, "systemd"),
        ("tcp", "127.0.0.1", 5432, "postgres"),
        ("tcp6", "::", 80, "nginx"),
        ("tcp6", "::1", 8080, ""),  # no readable process holds inode 103
        ("tcp6", "::ffff:127.0.0.1", 631, ""),
        ("udp", "0.0.0.0", 68, "dhclient"),
        ("udp6", "fe80::5054:ff:fe12:3456", 546, ""),
        ("unix", "/run/systemd/private", None, "systemd"),
        ("unix-dgram", "/run/systemd/journal/socket", None, "systemd"),
    ]
    assert set(rows[0]) == {"proto", "address", "port", "process"}
    # Established, TIME_WAIT, connected and unbound UDP, abstract and connected unix
    # sockets are not listeners.
    assert not {"10.0.0.5", "/run/dbus/system_bus_socket", "@/tmp/.X11-unix/X0"} & {
        r["address"] for r in rows
    }
    assert inventory.live_listeners(tmp_path / "no-proc") == []


@pytest.mark.skipif(sys.byteorder != "little", reason="the tables are a little-endian kernel's")
def test_collect_records_listeners_only_when_live(root: Path) -> None:
    write_proc(root / "proc")
    assert "listening" not in inventory.collect(root)
    inv = inventory.collect(root, live=True)
    assert inv["listening"] == inventory.live_listeners(root / "proc")
    assert {"proto": "tcp6", "address": "::", "port": 80, "process": "nginx"} in inv["listening"]
    assert json.loads(json.dumps(inv)) == inv


def test_the_module_stands_alone_loaded_by_path(root: Path, tmp_path: Path) -> None:
    """It is copied alone to a build machine and loaded there with importlib: standard
    library only, nothing of the goldsmith package."""
    source = Path(inventory.__file__)
    tree = ast.parse(source.read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert all(
        name.split(".")[0] in sys.stdlib_module_names or name == "__future__" for name in imported
    ), imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    alone = tmp_path / "upload/inventory.py"
    _write(alone, source.read_bytes())
    script = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.spec_from_file_location('inventory', sys.argv[1])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(json.dumps(module.collect(sys.argv[2])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, str(alone), str(root)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == inventory.collect(root)
