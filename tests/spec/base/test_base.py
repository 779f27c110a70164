"""Spec of the `base` role: what every machine's users rely on.

The clock is kept in sync, the time zone and locale are the configured ones, the
essential packages are there, and security updates are installed unattended.
"""

from __future__ import annotations

import re

import pytest
from conftest import dpkg_installed

# The units these checks rely on (see tests/spec/README.md).
UNITS = ("systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer")


@pytest.fixture(scope="module")
def installed(host, defaults) -> dict[str, bool]:
    """Whether each package the spec checks is installed (one query for all)."""
    return dpkg_installed(host, [*defaults["base_packages"], "unattended-upgrades"])


@pytest.fixture(scope="module")
def timedate(host) -> dict[str, str]:
    """What timedatectl says of the clock: one `timedatectl show` for the spec."""
    out = host.check_output("timedatectl show --property=NTP --property=Timezone")
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def apt_config(host) -> str:
    """apt's effective configuration (`apt-config dump`), read once for the spec."""
    return host.check_output("apt-config dump")


def test_essential_packages_are_installed(installed, defaults):
    missing = [p for p in defaults["base_packages"] if not installed[p]]
    assert not missing, f"packages not installed: {missing}"


def test_time_sync_service_is_enabled_and_running(host, defaults):
    timesyncd = host.service("systemd-timesyncd")
    wanted = defaults["base_time_sync_enabled"]
    assert timesyncd.is_enabled == wanted
    assert timesyncd.is_running == wanted


def test_clock_synchronization_is_on(timedate, defaults):
    assert timedate["NTP"] == ("yes" if defaults["base_time_sync_enabled"] else "no")


def test_time_zone_is_the_configured_one(host, timedate, defaults):
    zone = defaults["base_timezone"]
    assert timedate["Timezone"] == zone
    assert host.file("/etc/timezone").content_string.strip() == zone
    # Aliases such as UTC -> Etc/UTC resolve to the same zone file.
    resolved = host.check_output(f"readlink -f /etc/localtime /usr/share/zoneinfo/{zone}")
    localtime, zone_file = resolved.splitlines()
    assert localtime == zone_file


def _normalized(locale: str) -> str:
    """`locale -a` spells en_US.UTF-8 as en_US.utf8."""
    name, _, charset = locale.partition(".")
    return f"{name}.{charset.lower().replace('-', '')}" if charset else name


def test_configured_locales_are_generated(host, defaults):
    available = set(host.check_output("locale -a").split())
    missing = [loc for loc in defaults["base_locales"] if _normalized(loc) not in available]
    assert not missing, f"locales not generated: {missing} (available: {sorted(available)})"


def test_login_shells_get_the_default_locale(host, defaults):
    wanted = defaults["base_locale_default"]
    env = host.file("/etc/default/locale")
    assert env.mode == 0o644
    assert re.search(rf"^LANG={re.escape(wanted)}$", env.content_string, re.M)
    # What a login shell sees, through PAM's pam_env (as an SSH login would).
    lang = host.check_output("env -i bash -lc 'set -a; . /etc/default/locale; locale 2>&1'")
    assert f"LANG={wanted}" in lang
    assert "Cannot set" not in lang, lang


def test_unattended_upgrades_run_daily(host, installed, apt_config, defaults):
    assert installed["unattended-upgrades"]
    dump = apt_config
    on = "1" if defaults["base_unattended_upgrades_enabled"] else "0"
    assert f'APT::Periodic::Update-Package-Lists "{on}";' in dump
    assert f'APT::Periodic::Unattended-Upgrade "{on}";' in dump
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert host.service(timer).is_enabled, f"{timer} is not enabled"
        assert host.service(timer).is_running, f"{timer} is not active"


def test_unattended_upgrades_take_the_configured_origins_only(apt_config, defaults):
    dump = apt_config
    patterns = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$', dump, re.M)
    assert patterns == defaults["base_unattended_upgrades_origins"]
