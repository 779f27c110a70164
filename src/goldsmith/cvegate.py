"""A vulnerability gate: an image's packages against Debian's security tracker data.

The tracker data is the JSON the Debian security tracker serves at /tracker/data/json:
{source package: {CVE id: {"releases": {release: {"status", "fixed_version",
"urgency", ...}}}}}. It is keyed on SOURCE packages, so an installed binary package is
looked up by its source and compared by its source version (binNMUs such as `+b1` do not
change the source version).

- A fix that exists but is not installed is a finding: the release's status is
  "resolved" and its fixed_version is newer (in Debian's version order) than the
  installed source version. A finding at or above the policy's severity fails the gate.
- A CVE still "open" or "undetermined" for the release has no fix to install: it is
  reported apart and fails (at or above the severity) only with `fail_on_open: true`.

Debian urgencies map to severities (a trailing `*`, which the tracker adds to urgencies
it derived from NVD scores, is ignored):

    unimportant                          -> negligible
    low                                  -> low
    medium                               -> medium
    high                                 -> high
    not yet assigned, or anything else   -> medium (unknown is neither ignored by a
                                            medium gate nor blocking a high one)

The policy, as images.yml holds it:

    fail_on: high          # negligible | low | medium | high | never (default: high)
    release: bookworm      # default: the image's own codename (etc/os-release)
    fail_on_open: false
    allow:                 # accepted risks; an entry past `expires` allows nothing
      - {id: CVE-2024-1234, package: openssl, reason: "...", expires: 2025-06-30}

An allow entry matches a finding by id and, when `package` is given, by source or binary
package name; it allows through its `expires` day.
"""

from __future__ import annotations

import datetime as dt
import difflib
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from .errors import GoldsmithError

__all__ = [
    "SEVERITIES",
    "Allow",
    "Finding",
    "GateResult",
    "POLICY_KEYS",
    "Policy",
    "check",
    "load_tracker",
    "parse_policy",
    "severity",
]

SEVERITIES = ("negligible", "low", "medium", "high")
_URGENCY = {"unimportant": "negligible", "low": "low", "medium": "medium", "high": "high"}
_ID = re.compile(r"^(CVE-\d{4}-\d{4,}|TEMP-\d+-[0-9A-Fa-f]+|DSA-\d+-\d+|DLA-\d+-\d+)$")
# The keys of a policy (images.yml may add its own, such as `tracker`).
POLICY_KEYS = ("fail_on", "release", "fail_on_open", "allow")
_ALLOW_KEYS = ("id", "package", "reason", "expires")


def severity(urgency: str) -> str:
    """The severity of a Debian urgency (see the module docstring for the mapping)."""
    return _URGENCY.get(urgency.strip().rstrip("*").strip(), "medium")


@dataclass(frozen=True)
class Allow:
    """An accepted risk: `id` (in `package`, or any package) until the end of `expires`."""

    id: str
    reason: str
    expires: dt.date
    package: str = ""

    def matches(self, finding: Finding) -> bool:
        if self.id != finding.cve:
            return False
        return not self.package or self.package in (finding.package, *finding.binaries)


@dataclass(frozen=True)
class Policy:
    fail_on: str = "high"
    release: str = ""
    fail_on_open: bool = False
    allow: tuple[Allow, ...] = ()


@dataclass(frozen=True)
class Finding:
    """One CVE of one installed source package.

    `package` and `version` are the source package and its installed version (what the
    tracker keys on); `binaries` are the installed packages built from it.
    """

    package: str
    version: str
    binaries: tuple[str, ...]
    cve: str
    fixed_version: str  # "" when the CVE is open
    urgency: str
    status: str

    @property
    def severity(self) -> str:
        return severity(self.urgency)

    def line(self) -> str:
        fix = f"fixed in {self.fixed_version}" if self.fixed_version else self.status
        bins = ", ".join(self.binaries)
        return (
            f"{self.cve} in {self.package} {self.version} ({bins}): {fix}, "
            f"urgency {self.urgency} ({self.severity})"
        )


@dataclass(frozen=True)
class GateResult:
    """What the gate found; `ok` is False when anything is in `failures`."""

    release: str
    fail_on: str
    failures: list[Finding] = field(default_factory=list)
    allowed: list[tuple[Finding, Allow]] = field(default_factory=list)
    below: list[Finding] = field(default_factory=list)  # fixed, under the threshold
    open: list[Finding] = field(default_factory=list)  # no fix yet, not failing
    expired: list[Allow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_markdown(self, limit: int = 30) -> str:
        """The verdict, then a list per kind of finding (at most `limit` lines of the
        findings under the threshold and of the open ones, most severe first)."""
        verdict = "passed" if self.ok else f"FAILED ({len(self.failures)})"
        out = [f"## CVE gate ({self.release}, fail on {self.fail_on}): {verdict}", ""]

        def part(heading: str, lines: list[str], cap: int | None = None) -> None:
            if not lines:
                return
            out.extend([f"### {heading} ({len(lines)})", ""])
            out.extend(f"- {line}" for line in lines[:cap])
            if cap is not None and len(lines) > cap:
                out.append(f"- … and {len(lines) - cap} more")
            out.append("")

        def worst_first(findings: list[Finding]) -> list[str]:
            ranked = sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))
            return [f.line() for f in ranked]

        part("Fixed but not installed", [f.line() for f in self.failures])
        part(
            "Allowed by the policy",
            [f"{f.line()}; allowed until {a.expires}: {a.reason}" for f, a in self.allowed],
        )
        part(
            "Expired allow entries (they allow nothing)",
            [
                f"{a.id}{f' ({a.package})' if a.package else ''}: expired {a.expires}, {a.reason}"
                for a in self.expired
            ],
        )
        part("Fixed but not installed, under the threshold", worst_first(self.below), limit)
        part("Open (no fix in the release yet)", worst_first(self.open), limit)
        return "\n".join(out)


def load_tracker(path: Path) -> dict[str, Any]:
    """The tracker data at `path` (JSON, or gzip'd JSON); GoldsmithError if unreadable."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        data = json.loads(raw)
    except (OSError, EOFError, ValueError) as err:
        raise GoldsmithError(f"{path}: cannot read the security tracker data: {err}") from None
    if not isinstance(data, dict):
        raise GoldsmithError(f"{path}: not security tracker data (no mapping of packages)")
    return data


def parse_policy(raw: Any, where: str) -> Policy:
    """The policy in `raw` (a mapping as images.yml holds it; None for the defaults).

    `where` names the mapping in errors ("images.base.vulnerabilities").
    """
    if raw is None:
        return Policy()
    if not isinstance(raw, dict):
        raise GoldsmithError(f"{_at(where, raw)}: expected a mapping, got {raw!r}")
    _no_unknown(raw, POLICY_KEYS, where)
    fail_on = raw.get("fail_on", "high")
    if fail_on not in (*SEVERITIES, "never"):
        raise GoldsmithError(
            f"{_at(where, raw)}: fail_on: {fail_on!r} is not one of "
            f"{', '.join((*SEVERITIES, 'never'))}"
        )
    release = raw.get("release", "")
    if not isinstance(release, str) or (release and not release.isalnum()):
        raise GoldsmithError(f"{_at(where, raw)}: release: {release!r} is not a release name")
    fail_on_open = raw.get("fail_on_open", False)
    if not isinstance(fail_on_open, bool):
        raise GoldsmithError(
            f"{_at(where, raw)}: fail_on_open: {fail_on_open!r} is not true or false"
        )
    entries = raw.get("allow") or []
    if not isinstance(entries, list):
        raise GoldsmithError(f"{_at(where, raw)}: allow: expected a list, got {entries!r}")
    allow = tuple(_allow(e, f"{where}.allow[{i}]") for i, e in enumerate(entries))
    return Policy(str(fail_on), str(release), fail_on_open, allow)


def _at(where: str, node: object) -> str:
    line = getattr(node, "line", 0)
    return f"{where} (line {line})" if line else where


def _no_unknown(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GoldsmithError(
                f"{_at(where, raw)}: unknown key {key!r}{hint}; known: {', '.join(known)}"
            )


def _allow(entry: Any, where: str) -> Allow:
    if not isinstance(entry, dict):
        raise GoldsmithError(f"{where}: expected a mapping with id, reason, expires")
    _no_unknown(entry, _ALLOW_KEYS, where)
    at = _at(where, entry)
    for key in ("id", "reason", "expires"):
        if entry.get(key) in (None, ""):
            raise GoldsmithError(f"{at}: {key} is required")
    cve = entry["id"]
    if not isinstance(cve, str) or not _ID.match(cve):
        raise GoldsmithError(f"{at}: id: {cve!r} is not a CVE id (CVE-YYYY-NNNN)")
    if not isinstance(entry["reason"], str) or not entry["reason"].strip():
        raise GoldsmithError(f"{at}: reason: {entry['reason']!r} is not a sentence")
    expires = entry["expires"]
    if isinstance(expires, dt.datetime):
        expires = expires.date()
    elif not isinstance(expires, dt.date):
        try:
            expires = dt.date.fromisoformat(str(expires))
        except ValueError:
            raise GoldsmithError(f"{at}: expires: {expires!r} is not a date (YYYY-MM-DD)") from None
    package = entry.get("package") or ""
    if not isinstance(package, str):
        raise GoldsmithError(f"{at}: package: {package!r} is not a package name")
    return Allow(id=cve, reason=entry["reason"].strip(), expires=expires, package=package)


def check(
    inventory: dict[str, Any], tracker: dict[str, Any], policy: Policy, today: dt.date
) -> GateResult:
    """Check `inventory`'s packages against `tracker` under `policy`, on the day `today`."""
    release = policy.release or (inventory.get("os") or {}).get("codename", "")
    if not release:
        raise GoldsmithError(
            "the CVE gate needs a release: set `release:` in its policy "
            "(the image's etc/os-release names none)"
        )
    sources: dict[tuple[str, str], list[str]] = {}
    for pkg in inventory["packages"].values():
        key = (pkg["source"], pkg["source_version"])
        sources.setdefault(key, []).append(pkg["name"])

    live = [a for a in policy.allow if a.expires >= today]
    result = GateResult(
        release=release,
        fail_on=policy.fail_on,
        expired=[a for a in policy.allow if a.expires < today],
    )
    threshold = SEVERITIES.index(policy.fail_on) if policy.fail_on in SEVERITIES else None
    for (source, installed), binaries in sorted(sources.items()):
        for cve, entry in sorted((tracker.get(source) or {}).items()):
            info = ((entry or {}).get("releases") or {}).get(release)
            if not info:
                continue
            status = info.get("status", "")
            fixed = info.get("fixed_version") or ""
            if status == "resolved":
                if not fixed or not _newer(fixed, installed):
                    continue
            elif status not in ("open", "undetermined"):
                continue
            finding = Finding(
                package=source,
                version=installed,
                binaries=tuple(sorted(set(binaries))),
                cve=cve,
                fixed_version=fixed if status == "resolved" else "",
                urgency=str(info.get("urgency") or "not yet assigned"),
                status=status,
            )
            allowed_by = next((a for a in live if a.matches(finding)), None)
            severe = threshold is not None and SEVERITIES.index(finding.severity) >= threshold
            if allowed_by is not None:
                result.allowed.append((finding, allowed_by))
            elif status != "resolved":
                fails = severe and policy.fail_on_open
                (result.failures if fails else result.open).append(finding)
            elif severe:
                result.failures.append(finding)
            else:
                result.below.append(finding)
    return result


def _newer(fixed: str, installed: str) -> bool:
    try:
        return Version(fixed) > Version(installed)
    except ValueError:
        return False
