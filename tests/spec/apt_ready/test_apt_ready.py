"""Spec of the `apt_ready` role: apt can install, and knows the security archive.

Checked on the live machine, before the seal removes the package lists again.
"""

from __future__ import annotations


def test_package_lists_are_there(host):
    lists = host.check_output("find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*'")
    assert lists.splitlines(), "no package list: apt could not install anything"


def test_apt_sees_no_broken_dependency(host):
    assert host.run("apt-get check -q").rc == 0


def test_security_archive_is_a_package_origin(host):
    """Unattended security upgrades need apt to know the security archive as an origin.

    `apt-cache policy` prints each archive's release fields (n= codename, l= label), the
    fields base_unattended_upgrades_origins match on. (unattended-upgrade --dry-run says
    the same but takes minutes under emulation.)
    """
    codename = host.system_info.codename
    policy = host.check_output("apt-cache policy")
    origins = [line for line in policy.splitlines() if "release " in line]
    assert any(f"n={codename}-security" in o and "l=Debian-Security" in o for o in origins), policy


def test_the_security_archive_is_listed_once(host):
    """Added only where the image's own sources lack it: apt warns about duplicates."""
    suite = f"{host.system_info.codename}-security"
    found = host.check_output(
        f"grep -rlE '^[^#]*{suite}' /etc/apt/sources.list /etc/apt/sources.list.d || true"
    )
    assert len(found.splitlines()) == 1, found
