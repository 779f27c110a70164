"""Spec of the `apt_ready` role: apt can install, and knows the security archive.

Checked on the live machine, before the seal removes the package lists again.
"""

from __future__ import annotations

import pytest

# No systemd unit: only what apt sees (see tests/spec/README.md).
UNITS: tuple[str, ...] = ()

# The source file apt_ready writes when the image's own sources lack the security archive.
_ADDED = "/etc/apt/sources.list.d/goldsmith-security.sources"


def test_package_lists_are_there(host):
    lists = host.check_output("find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*'")
    assert lists.splitlines(), "no package list: apt could not install anything"


def test_apt_sees_no_broken_dependency(host):
    result = host.run("apt-get check -q")
    assert result.rc == 0, result.stdout + result.stderr


def test_security_archive_is_a_package_origin(host, defaults):
    """Unattended security upgrades need apt to know the security archive as an origin.

    `apt-cache policy` prints each archive's release fields (n= codename, l= label), the
    fields base_unattended_upgrades_origins match on. (unattended-upgrade --dry-run says
    the same but takes minutes under emulation.)
    """
    if not defaults["apt_ready_add_security_archive"]:
        pytest.skip("apt_ready_add_security_archive is off: the image's own sources decide")
    codename = host.system_info.codename
    policy = host.check_output("apt-cache policy")
    origins = [line for line in policy.splitlines() if "release " in line]
    assert any(f"n={codename}-security" in o and "l=Debian-Security" in o for o in origins), policy


def test_the_security_archive_is_listed_once(host, defaults):
    """Added only where the image's own sources lack it: apt warns about duplicates."""
    suite = f"{host.system_info.codename}-security"
    found = host.check_output(
        f"grep -rlE '^[^#]*{suite}' /etc/apt/sources.list /etc/apt/sources.list.d || true"
    ).splitlines()
    if defaults["apt_ready_add_security_archive"]:
        assert len(found) == 1, found
    else:
        assert _ADDED not in found, f"{_ADDED} is there though adding the archive is off"
        assert len(found) <= 1, found
