"""Spec of the `ssh_hardening` role, read from the SSH server's effective configuration.

`sshd -T` prints what the server really applies (sshd_config, every drop-in, defaults),
so a drop-in that another file overrides fails here. That these specs run at all over
SSH with the build user's key proves that key logins still work.
"""

from __future__ import annotations

import pytest

# The unit these checks rely on (see tests/spec/README.md).
UNITS = ("ssh.service",)


@pytest.fixture(scope="module")
def sshd(host) -> dict[str, str]:
    """The effective sshd configuration, keyword (lower case) -> value."""
    out = host.check_output("/usr/sbin/sshd -T")
    config: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, value)
    return config


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def test_ssh_server_is_enabled_and_running(host):
    ssh = host.service("ssh")
    assert ssh.is_enabled
    assert ssh.is_running


def test_ssh_port_answers_with_an_ssh_banner(host):
    banner = host.check_output("timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/22; head -c 7 <&3'")
    assert banner == "SSH-2.0"


def test_root_cannot_log_in(sshd, defaults):
    assert sshd["permitrootlogin"] == defaults["ssh_hardening_permit_root_login"]


def test_password_logins_are_off(sshd, defaults):
    password = defaults["ssh_hardening_password_authentication"]
    kbd_interactive = defaults["ssh_hardening_kbd_interactive_authentication"]
    assert sshd["passwordauthentication"] == _yes_no(password)
    assert sshd["kbdinteractiveauthentication"] == _yes_no(kbd_interactive)
    assert sshd["permitemptypasswords"] == "no"


def test_key_logins_stay_on(sshd):
    assert sshd["pubkeyauthentication"] == "yes"
    assert ".ssh/authorized_keys" in sshd["authorizedkeysfile"].split()


def test_x11_forwarding_and_auth_tries(sshd, defaults):
    assert sshd["x11forwarding"] == _yes_no(defaults["ssh_hardening_x11_forwarding"])
    assert int(sshd["maxauthtries"]) == defaults["ssh_hardening_max_auth_tries"]


@pytest.mark.parametrize(
    ("keyword", "variable"),
    [
        ("ciphers", "ssh_hardening_ciphers"),
        ("macs", "ssh_hardening_macs"),
        ("kexalgorithms", "ssh_hardening_kex_algorithms"),
    ],
)
def test_only_modern_algorithms_are_offered(sshd, defaults, keyword, variable):
    assert sshd[keyword].split(",") == defaults[variable]


def test_no_weak_algorithm_is_offered(sshd):
    offered = ",".join(sshd[k] for k in ("ciphers", "macs", "kexalgorithms")).split(",")
    markers = ("cbc", "sha1", "md5", "arcfour", "3des", "group1-", "group14-")
    weak = [a for a in offered if any(m in a for m in markers)]
    assert not weak, f"weak algorithms offered: {weak}"


def test_hardening_drop_in_is_root_owned_and_not_writable_by_others(host):
    dropin = host.file("/etc/ssh/sshd_config.d/00-hardening.conf")
    assert dropin.is_file
    assert dropin.user == "root"
    assert dropin.mode == 0o644


def test_sshd_config_is_not_writable_by_others(host):
    config = host.file("/etc/ssh/sshd_config")
    assert config.user == "root"
    assert config.mode & 0o022 == 0
