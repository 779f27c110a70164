"""cvegate: the policy, and an inventory checked against a small tracker fixture."""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from pathlib import Path
from typing import Any

import pytest

from goldsmith import cvegate, yamlfile
from goldsmith.errors import GoldsmithError

FIXTURES = Path(__file__).parent / "fixtures"
TRACKER = FIXTURES / "tracker-small.json"
TODAY = dt.date(2026, 3, 1)


def _pkg(name: str, version: str, source: str, source_version: str = "") -> dict[str, str]:
    return {
        "name": name,
        "version": version,
        "architecture": "amd64",
        "source": source,
        "source_version": source_version or version,
    }


INVENTORY: dict[str, Any] = {
    "os": {"id": "debian", "version_id": "12", "codename": "bookworm"},
    "packages": {
        # Two binaries of the source openssl, installed at 3.0.11-1~deb12u2.
        "libssl3": _pkg("libssl3", "3.0.11-1~deb12u2", "openssl"),
        "openssl": _pkg("openssl", "3.0.11-1~deb12u2", "openssl"),
        "libc6": _pkg("libc6", "2.36-9+deb12u10", "glibc"),
        "jq": _pkg("jq", "1.6-2.1", "jq"),
    },
}


def _check(policy: dict[str, Any] | None = None, today: dt.date = TODAY) -> cvegate.GateResult:
    tracker = cvegate.load_tracker(TRACKER)
    return cvegate.check(INVENTORY, tracker, cvegate.parse_policy(policy, "images.yml"), today)


def test_a_fixed_high_cve_not_installed_fails_naming_package_and_cve() -> None:
    result = _check()
    assert not result.ok
    assert [(f.package, f.cve) for f in result.failures] == [("openssl", "CVE-2024-0001")]
    f = result.failures[0]
    assert (f.version, f.fixed_version, f.urgency) == (
        "3.0.11-1~deb12u2",
        "3.0.13-1~deb12u1",
        "high",
    )
    assert f.binaries == ("libssl3", "openssl")
    md = result.to_markdown()
    assert "FAILED" in md
    assert "CVE-2024-0001 in openssl 3.0.11-1~deb12u2 (libssl3, openssl)" in md
    assert "fixed in 3.0.13-1~deb12u1" in md


def test_an_allow_entry_passes_the_gate_and_is_reported_with_its_reason() -> None:
    policy = {
        "allow": [
            {
                "id": "CVE-2024-0001",
                "package": "openssl",
                "reason": "only reachable through the TLS server, which this image has not",
                "expires": "2026-06-30",
            }
        ]
    }
    result = _check(policy)
    assert result.ok
    assert [(f.cve, a.reason) for f, a in result.allowed] == [
        ("CVE-2024-0001", "only reachable through the TLS server, which this image has not")
    ]
    md = result.to_markdown()
    assert "passed" in md
    assert "allowed until 2026-06-30: only reachable through the TLS server" in md


def test_an_expired_allow_entry_fails_again_and_is_reported_as_expired() -> None:
    policy = {
        "allow": [
            {"id": "CVE-2024-0001", "reason": "waiting for 12.6", "expires": dt.date(2026, 2, 28)}
        ]
    }
    assert _check(policy, today=dt.date(2026, 2, 28)).ok  # allows through its last day
    result = _check(policy, today=TODAY)
    assert not result.ok
    assert [f.cve for f in result.failures] == ["CVE-2024-0001"]
    assert not result.allowed
    assert [a.id for a in result.expired] == ["CVE-2024-0001"]
    assert "expired 2026-02-28, waiting for 12.6" in result.to_markdown()


def test_an_allow_entry_for_another_package_does_not_allow() -> None:
    policy = {
        "allow": [
            {"id": "CVE-2024-0001", "package": "curl", "reason": "x", "expires": "2099-01-01"}
        ]
    }
    assert not _check(policy).ok


def test_versions_compare_in_debian_order_and_fixed_0_means_never_affected() -> None:
    result = _check({"fail_on": "negligible"})
    cves = {f.cve for f in result.failures}
    # glibc's deb12u10 is newer than the fix in deb12u4 (as text it sorts before);
    # CVE-2024-0010 has fixed_version 0; CVE-2023-0002 was fixed before the installed one.
    assert cves == {"CVE-2024-0001", "CVE-2024-0003"}


def test_the_tracker_is_keyed_on_source_packages_only() -> None:
    # "libssl3" has an entry in the fixture, but it is a binary package name.
    assert "CVE-2024-0099" not in {f.cve for f in _check({"fail_on": "low"}).failures}


def test_below_the_threshold_and_open_cves_are_reported_but_do_not_fail() -> None:
    allow = [{"id": "CVE-2024-0001", "reason": "r", "expires": "2099-01-01"}]
    result = _check({"fail_on": "high", "allow": allow})
    assert result.ok
    assert [(f.cve, f.severity) for f in result.below] == [("CVE-2024-0003", "low")]
    assert [(f.cve, f.status) for f in result.open] == [("CVE-2024-0004", "open")]
    md = result.to_markdown()
    assert "### Open (no fix in the release yet) (1)" in md
    assert "CVE-2024-0004" in md
    # fail_on low makes the low one fail; fail_on_open makes the open high one fail.
    assert [f.cve for f in _check({"fail_on": "low", "allow": allow}).failures] == ["CVE-2024-0003"]
    open_fails = _check({"fail_on_open": True, "allow": allow}).failures
    assert [f.cve for f in open_fails] == ["CVE-2024-0004"]


def test_fail_on_never_reports_without_failing() -> None:
    result = _check({"fail_on": "never"})
    assert result.ok
    assert {f.cve for f in result.below} == {"CVE-2024-0001", "CVE-2024-0003"}


def test_the_release_comes_from_the_policy_or_the_image() -> None:
    # trixie's fix (3.1.0-1) is also newer than the installed version.
    assert [f.fixed_version for f in _check({"release": "trixie"}).failures] == ["3.1.0-1"]
    assert _check({"release": "bullseye"}).ok  # no data for that release
    inventory = dict(INVENTORY, os={})
    with pytest.raises(GoldsmithError, match="needs a release"):
        cvegate.check(inventory, {}, cvegate.Policy(), TODAY)


def test_urgency_maps_to_severity() -> None:
    assert [cvegate.severity(u) for u in ("unimportant", "low", "medium**", "high")] == [
        "negligible",
        "low",
        "medium",
        "high",
    ]
    assert cvegate.severity("not yet assigned") == "medium"


def test_tracker_data_may_be_gzipped(tmp_path: Path) -> None:
    gz = tmp_path / "tracker.json.gz"
    with open(TRACKER, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert cvegate.load_tracker(gz) == cvegate.load_tracker(TRACKER)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GoldsmithError, match="bad.json: cannot read the security tracker data"):
        cvegate.load_tracker(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"fail_on": "hgih"}, "images.yml: fail_on: 'hgih' is not one of negligible, low"),
        ({"fial_on": "high"}, r"unknown key 'fial_on' \(did you mean 'fail_on'\?\)"),
        ({"fail_on_open": "yes"}, "fail_on_open: 'yes' is not true or false"),
        ({"allow": {"id": "CVE-2024-1"}}, "allow: expected a list"),
        ({"allow": [{"id": "CVE-2024-0001", "expires": "2026-01-01"}]}, r"allow\[0\]: reason"),
        ({"allow": [{"id": "CVE-2024-0001", "reason": "r"}]}, r"allow\[0\]: expires is required"),
        (
            {"allow": [{"id": "CVE-2024-0001", "reason": "r", "expires": "soon"}]},
            r"allow\[0\]: expires: 'soon' is not a date",
        ),
        (
            {"allow": [{"id": "cve-24", "reason": "r", "expires": "2026-01-01"}]},
            r"allow\[0\]: id: 'cve-24' is not a CVE id",
        ),
        ("high", "expected a mapping"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_key_and_value(raw: Any, message: str) -> None:
    with pytest.raises(GoldsmithError, match=message):
        cvegate.parse_policy(raw, "images.yml")


def test_a_policy_read_from_yaml_names_the_line_and_takes_yaml_dates(tmp_path: Path) -> None:
    path = tmp_path / "images.yml"
    path.write_text(
        "images:\n  base:\n    cve_gate:\n      fail_on: medium\n      allow:\n"
        "        - id: CVE-2024-0001\n          reason: accepted\n          expires: 2026-06-30\n"
        "        - id: CVE-2024-0002\n          reason: accepted\n          expires: next June\n"
    )
    raw = yamlfile.load(path, tmp_path)["images"]["base"]["cve_gate"]
    with pytest.raises(GoldsmithError, match=r"cve_gate.allow\[1\] \(line 9\): expires"):
        cvegate.parse_policy(raw, "images.yml: images.base.cve_gate")
    raw["allow"].pop()
    policy = cvegate.parse_policy(raw, "images.yml: images.base.cve_gate")
    assert policy.fail_on == "medium"
    assert policy.allow[0].expires == dt.date(2026, 6, 30)
