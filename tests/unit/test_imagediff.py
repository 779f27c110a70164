"""imagediff.diff between two hand-written inventories."""

from __future__ import annotations

import copy
import json
from typing import Any

from goldsmith import imagediff


def _pkg(name: str, version: str, source: str = "", arch: str = "amd64") -> dict[str, str]:
    return {
        "name": name,
        "version": version,
        "architecture": arch,
        "source": source or name,
        "source_version": version,
    }


OLD: dict[str, Any] = {
    "format": 1,
    "os": {"id": "debian", "version_id": "12", "codename": "bookworm"},
    "packages": {
        "curl": _pkg("curl", "7.88.1-10+deb12u5"),
        "libssl3": _pkg("libssl3", "3.0.11-1~deb12u2", "openssl"),
        "nano": _pkg("nano", "7.2-1"),
        "tzdata": _pkg("tzdata", "2024a-0+deb12u1", arch="all"),
        "vim": _pkg("vim", "2:9.0.1378-2"),
    },
    "units": {
        "ssh.service": {"wanted_by": ["multi-user.target.wants"], "file": "/lib/ssh.service"},
        "cron.service": {"wanted_by": ["multi-user.target.wants"], "file": "/lib/cron.service"},
    },
    "sockets": [{"unit": "ssh.socket", "type": "stream", "listen": "22"}],
    "users": {"root": {"uid": 0, "gid": 0, "home": "/root", "shell": "/bin/bash"}},
    "groups": {"sudo": {"gid": 27, "members": ["alice"]}},
    "setid": [{"path": "/usr/bin/sudo", "mode": "4755", "owner": "root", "group": "root"}],
    "kernels": ["6.1.0-18-amd64"],
    "etc": {"etc/hostname": "a" * 64, "etc/motd": "b" * 64, "etc/localtime": "-> /x"},
}


def _new() -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    p = new["packages"]
    # 3.0.13-1~deb12u1 > 3.0.11-1~deb12u2; 10 > 9 numerically though "10" < "9" as text.
    p["libssl3"] = _pkg("libssl3", "3.0.13-1~deb12u1", "openssl")
    p["tzdata"] = _pkg("tzdata", "2024a-0+deb12u1~1", arch="all")  # ~ sorts before: a downgrade
    p["vim"] = _pkg("vim", "2:10.0-1")
    del p["nano"]
    p["jq"] = _pkg("jq", "1.6-2.1")
    new["units"]["nginx.service"] = {"wanted_by": ["multi-user.target.wants"], "file": "/l/n"}
    del new["units"]["cron.service"]
    new["sockets"].append({"unit": "nginx.socket", "type": "stream", "listen": "0.0.0.0:80"})
    new["users"]["root"]["shell"] = "/usr/sbin/nologin"
    new["users"]["www-data"] = {"uid": 33, "gid": 33, "home": "/var/www", "shell": "/bin/false"}
    new["groups"]["sudo"]["members"] = ["alice", "bob"]
    new["setid"] = []
    new["kernels"] = ["6.1.0-21-amd64"]
    new["etc"]["etc/motd"] = "c" * 64
    del new["etc"]["etc/hostname"]
    new["etc"]["etc/nginx/nginx.conf"] = "d" * 64
    return new


def test_identical_inventories_make_an_empty_diff_and_a_one_line_report() -> None:
    d = imagediff.diff(OLD, copy.deepcopy(OLD))
    assert d.empty
    assert d.to_markdown("base: 1 → 2") == "## base: 1 → 2: no change\n"
    assert json.loads(d.to_json()) == {}


def test_packages_compare_by_debian_version_order() -> None:
    d = imagediff.diff(OLD, _new())
    pk = d.sections["packages"]
    assert list(pk.added) == ["jq"]
    assert list(pk.removed) == ["nano"]
    assert d.upgraded == {
        "libssl3": ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
        "vim": ("2:9.0.1378-2", "2:10.0-1"),
    }
    assert d.downgraded == {"tzdata": ("2024a-0+deb12u1", "2024a-0+deb12u1~1")}


def test_every_kind_of_change_is_found() -> None:
    s = imagediff.diff(OLD, _new()).sections
    assert list(s["units"].added) == ["nginx.service"]
    assert list(s["units"].removed) == ["cron.service"]
    assert list(s["sockets"].added) == ["nginx.socket stream 0.0.0.0:80"]
    assert s["users"].changed["root"][1]["shell"] == "/usr/sbin/nologin"
    assert list(s["users"].added) == ["www-data"]
    old_sudo, new_sudo = s["groups"].changed["sudo"]
    assert (old_sudo["members"], new_sudo["members"]) == (["alice"], ["alice", "bob"])
    assert list(s["setid"].removed) == ["/usr/bin/sudo"]
    assert (list(s["kernels"].added), list(s["kernels"].removed)) == (
        ["6.1.0-21-amd64"],
        ["6.1.0-18-amd64"],
    )
    assert list(s["etc"].changed) == ["etc/motd"]
    assert list(s["etc"].removed) == ["etc/hostname"]
    assert list(s["etc"].added) == ["etc/nginx/nginx.conf"]


def test_a_setid_mode_change_is_a_change_not_a_removal_and_addition() -> None:
    new = copy.deepcopy(OLD)
    new["setid"][0]["mode"] = "4711"
    s = imagediff.diff(OLD, new).sections["setid"]
    assert not s.added and not s.removed
    assert s.changed["/usr/bin/sudo"][1]["mode"] == "4711"


def test_markdown_has_a_section_per_changed_kind_only() -> None:
    new = copy.deepcopy(OLD)
    new["packages"]["libssl3"] = _pkg("libssl3", "3.0.13-1~deb12u1", "openssl")
    new["kernels"] = ["6.1.0-21-amd64"]
    md = imagediff.diff(OLD, new).to_markdown("base")
    assert md.startswith("## base\n")
    assert "### Packages (1 changed)" in md
    assert "- upgraded `libssl3` 3.0.11-1~deb12u2 → 3.0.13-1~deb12u1\n" in md
    assert "### Kernels (1 added, 1 removed)" in md
    assert "- added `6.1.0-21-amd64`" in md
    for heading in ("Enabled units", "Users", "Groups", "SUID", "/etc", "sockets"):
        assert heading not in md


def test_markdown_caps_long_sections_and_json_keeps_everything() -> None:
    new = copy.deepcopy(OLD)
    new["etc"].update({f"etc/many/{i:03}": "e" * 64 for i in range(120)})
    d = imagediff.diff(OLD, new)
    md = d.to_markdown("base", limit=50)
    assert md.count("- added `etc/many/") == 50
    assert "- … and 70 more" in md
    assert len(json.loads(d.to_json())["etc"]["added"]) == 120


def test_json_names_upgrades_and_downgrades() -> None:
    data = json.loads(imagediff.diff(OLD, _new()).to_json())
    assert data["packages"]["upgraded"]["vim"] == ["2:9.0.1378-2", "2:10.0-1"]
    assert list(data["packages"]["downgraded"]) == ["tzdata"]
    assert data["packages"]["changed"]["vim"]["new"]["version"] == "2:10.0-1"
    assert "os" not in data and "format" not in data


def _v2(**kinds: Any) -> dict[str, Any]:
    """OLD as a format 2 inventory: masked units, and the live machine's listeners."""
    inv = copy.deepcopy(OLD) | {"format": 2, "masked": ["apt-daily.timer", "rpcbind.socket"]}
    inv["listening"] = [
        {"proto": "tcp", "address": "0.0.0.0", "port": 22, "process": "sshd"},
        {"proto": "tcp6", "address": "::", "port": 22, "process": "sshd"},
        {"proto": "udp", "address": "0.0.0.0", "port": 68, "process": "dhclient"},
        {"proto": "unix", "address": "/run/app.sock", "port": None, "process": "app"},
    ]
    return inv | kinds


def test_masked_and_unmasked_units_in_markdown_and_json() -> None:
    new = _v2(masked=["apt-daily.timer", "systemd-networkd.service"])
    d = imagediff.diff(_v2(), new)
    s = d.sections["masked"]
    assert (list(s.added), list(s.removed)) == (["systemd-networkd.service"], ["rpcbind.socket"])
    md = d.to_markdown("base")
    assert "### Masked units (1 masked, 1 unmasked)\n" in md
    assert "- masked `systemd-networkd.service`\n" in md
    assert "- unmasked `rpcbind.socket`\n" in md
    data = json.loads(d.to_json())["masked"]
    assert data["masked"] == ["systemd-networkd.service"]
    assert data["unmasked"] == ["rpcbind.socket"]


def test_sockets_of_the_new_listen_types_are_compared() -> None:
    new = _v2()
    new["sockets"] = [
        {"unit": "ssh.socket", "type": "stream", "listen": "22"},
        {"unit": "uevent.socket", "type": "netlink", "listen": "kobject-uevent 1"},
        {"unit": "app.socket", "type": "fifo", "listen": "/run/app.fifo"},
    ]
    d = imagediff.diff(_v2(), new)
    assert list(d.sections["sockets"].added) == [
        "app.socket fifo /run/app.fifo",
        "uevent.socket netlink kobject-uevent 1",
    ]
    md = d.to_markdown("base")
    assert "- added `uevent.socket netlink kobject-uevent 1`\n" in md
    added = json.loads(d.to_json())["sockets"]["added"]
    assert added["app.socket fifo /run/app.fifo"]["type"] == "fifo"


def test_listening_ports_opened_closed_and_changed_owner() -> None:
    new = _v2()
    new["listening"] = [
        {"proto": "tcp", "address": "0.0.0.0", "port": 22, "process": "systemd"},  # now a socket
        {"proto": "tcp6", "address": "::", "port": 80, "process": "nginx"},
        {"proto": "udp", "address": "0.0.0.0", "port": 68, "process": "dhclient"},
    ]
    d = imagediff.diff(_v2(), new)
    s = d.sections["listening"]
    assert list(s.added) == ["tcp6 [::]:80"]
    assert list(s.removed) == ["tcp6 [::]:22", "unix /run/app.sock"]
    assert s.changed == {"tcp 0.0.0.0:22": ("sshd", "systemd")}
    md = d.to_markdown("web")
    assert "### Ports listening on the live machine (1 opened, 2 closed, 1 changed)\n" in md
    assert "- opened `tcp6 [::]:80` (nginx)\n" in md
    assert "- closed `unix /run/app.sock` (app)\n" in md
    assert "- changed `tcp 0.0.0.0:22` sshd → systemd\n" in md
    data = json.loads(d.to_json())["listening"]
    assert data["opened"] == ["tcp6 [::]:80"]
    assert data["closed"] == ["tcp6 [::]:22", "unix /run/app.sock"]
    assert data["changed"]["tcp 0.0.0.0:22"] == {"old": "sshd", "new": "systemd"}


def test_a_format_1_inventory_compares_with_a_format_2_one() -> None:
    """Format 1 has no `masked` and no `listening`: a missing kind is empty, and ports are
    compared only when both sides recorded them."""
    new = _v2()
    d = imagediff.diff(OLD, new)
    assert list(d.sections["masked"].added) == ["apt-daily.timer", "rpcbind.socket"]
    assert d.sections["listening"].empty
    assert imagediff.diff(new, OLD).sections["listening"].empty
    assert "listening" not in json.loads(d.to_json())
    assert "Ports listening" not in d.to_markdown("base")
    assert imagediff.diff(OLD, copy.deepcopy(OLD)).empty
