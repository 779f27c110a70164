"""What changed between two builds of an image, from their inventories (`inventory.collect`).

`diff(old, new)` compares kind by kind (packages, kernels, units, masked units, sockets,
ports listening on the live machine, users, groups, SUID/SGID files, files under etc/); a
package whose version changed is an upgrade or a downgrade by Debian's version ordering
(epochs, `~`, revisions), not by string order.

Inventories of format 1 (before `masked` and `listening`) compare too: a missing kind is
empty. `listening` is compared only when both sides have it (an inventory taken without
the live machine has none, which says nothing about its ports).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from debian.debian_support import Version

__all__ = ["KINDS", "Diff", "Section", "diff"]

# The kinds compared, in the order a report shows them, with their headings.
KINDS = {
    "packages": "Packages",
    "kernels": "Kernels",
    "units": "Enabled units",
    "masked": "Masked units",
    "sockets": "Listening sockets",
    "listening": "Ports listening on the live machine",
    "users": "Users",
    "groups": "Groups",
    "setid": "SUID/SGID files",
    "etc": "Files under /etc",
}


# What an added and a removed entry of a kind are called, where not "added" and "removed".
VERBS = {"masked": ("masked", "unmasked"), "listening": ("opened", "closed")}
ONLY_WHEN_BOTH = ("listening",)  # kinds compared only when both inventories record them


@dataclass(frozen=True)
class Section:
    """The changes of one kind: entries by key, as the inventories record them."""

    added: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key: (old, new)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


@dataclass(frozen=True)
class Diff:
    """Changes between two inventories, one `Section` per kind of KINDS."""

    sections: dict[str, Section]

    @property
    def empty(self) -> bool:
        return all(s.empty for s in self.sections.values())

    @property
    def upgraded(self) -> dict[str, tuple[str, str]]:
        """Packages whose version went up: {key: (old version, new version)}."""
        return self._versions(lambda old, new: new > old)

    @property
    def downgraded(self) -> dict[str, tuple[str, str]]:
        """Packages whose version went down: {key: (old version, new version)}."""
        return self._versions(lambda old, new: new < old)

    def _versions(self, keep: Any) -> dict[str, tuple[str, str]]:
        out = {}
        for key, (old, new) in self.sections["packages"].changed.items():
            if keep(Version(old["version"]), Version(new["version"])):
                out[key] = (old["version"], new["version"])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: {kind: {added, removed, changed: {key: {old, new}}}}, plus
        `upgraded` and `downgraded` for packages, and the keys added and removed under the
        kind's own words (VERBS: masked and unmasked units, opened and closed ports);
        kinds without changes are left out."""
        out: dict[str, Any] = {}
        for kind, s in self.sections.items():
            if s.empty:
                continue
            out[kind] = {
                "added": s.added,
                "removed": s.removed,
                "changed": {k: {"old": o, "new": n} for k, (o, n) in s.changed.items()},
            }
            if kind in VERBS:
                added, removed = VERBS[kind]
                out[kind] |= {added: list(s.added), removed: list(s.removed)}
        if "packages" in out:
            out["packages"]["upgraded"] = {k: list(v) for k, v in self.upgraded.items()}
            out["packages"]["downgraded"] = {k: list(v) for k, v in self.downgraded.items()}
        return out

    def to_json(self) -> str:
        """`to_dict()` as JSON text, keys sorted."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_markdown(self, title: str, limit: int = 50) -> str:
        """A section per kind with changes, at most `limit` lines each (the JSON has all);
        one line saying so when nothing changed."""
        if self.empty:
            return f"## {title}: no change\n"
        out = [f"## {title}", ""]
        for kind, heading in KINDS.items():
            s = self.sections.get(kind)
            if s is None or s.empty:
                continue
            lines = self._lines(kind, s)
            added, removed = VERBS.get(kind, ("added", "removed"))
            counts = ", ".join(
                f"{n} {word}"
                for n, word in (
                    (len(s.added), added),
                    (len(s.removed), removed),
                    (len(s.changed), "changed"),
                )
                if n
            )
            out.append(f"### {heading} ({counts})")
            out.append("")
            out += lines[:limit]
            if len(lines) > limit:
                out.append(f"- … and {len(lines) - limit} more")
            out.append("")
        return "\n".join(out)

    def _lines(self, kind: str, s: Section) -> list[str]:
        show = _SHOW.get(kind, _show_plain)
        added, removed = VERBS.get(kind, ("added", "removed"))
        lines = [f"- {added} `{k}`{show(v)}" for k, v in s.added.items()]
        lines += [f"- {removed} `{k}`{show(v)}" for k, v in s.removed.items()]
        if kind == "packages":
            up, down = self.upgraded, self.downgraded
            for key, (old, new) in s.changed.items():
                verb = "upgraded" if key in up else "downgraded" if key in down else "changed"
                rest = {k: v for k, v in old.items() if k not in ("version", "source_version")}
                other = _fields(rest, {k: new.get(k) for k in rest})
                line = f"- {verb} `{key}` {old['version']} → {new['version']}"
                lines.append(f"{line} ({other})" if other else line)
        else:
            lines += [f"- changed `{k}` {_fields(o, n)}" for k, (o, n) in s.changed.items()]
        return lines


def diff(old: dict[str, Any], new: dict[str, Any]) -> Diff:
    """The changes from inventory `old` to inventory `new`."""
    sections = {}
    for kind in KINDS:
        if kind in ONLY_WHEN_BOTH and (kind not in old or kind not in new):
            sections[kind] = Section()
            continue
        a, b = _keyed(kind, old.get(kind)), _keyed(kind, new.get(kind))
        sections[kind] = Section(
            added={k: b[k] for k in sorted(b.keys() - a.keys())},
            removed={k: a[k] for k in sorted(a.keys() - b.keys())},
            changed={k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k]},
        )
    return Diff(sections)


def _keyed(kind: str, value: Any) -> dict[str, Any]:
    """An inventory's kind as a mapping, so lists compare by what identifies an entry."""
    if value is None:
        return {}
    if kind in ("kernels", "masked"):
        return {v: v for v in value}
    if kind == "sockets":
        return {f"{s['unit']} {s['type']} {s['listen']}": s for s in value}
    if kind == "listening":
        return {_endpoint(s): s["process"] for s in value}
    if kind == "setid":
        return {s["path"]: {k: v for k, v in s.items() if k != "path"} for s in value}
    return dict(value)


def _endpoint(socket: dict[str, Any]) -> str:
    """A listener as `tcp 0.0.0.0:22`, `tcp6 [::]:80` or `unix /run/x.sock`."""
    address, port = socket["address"], socket.get("port")
    if port is None:
        return f"{socket['proto']} {address}"
    return f"{socket['proto']} {f'[{address}]' if ':' in address else address}:{port}"


def _show_plain(value: Any) -> str:
    if isinstance(value, dict):
        return " (" + ", ".join(f"{k} {_short(v)}" for k, v in value.items()) + ")"
    return ""


_SHOW = {
    "packages": lambda p: f" {p['version']}",
    "units": lambda u: f" ({', '.join(u['wanted_by'])})",
    "kernels": lambda v: "",
    "masked": lambda v: "",
    "sockets": lambda s: "",
    "listening": lambda process: f" ({process})" if process else "",
    "etc": lambda h: f" {h}" if h.startswith("->") else "",
}


def _fields(old: Any, new: Any) -> str:
    """What differs between two entries: `field old → new`, for the fields that changed."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        return ", ".join(f"{k} {_short(old.get(k))} → {_short(new.get(k))}" for k in keys)
    return f"{_short(old)} → {_short(new)}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str) and len(value) == 64 and value.isalnum():
        return value[:12]  # a SHA-256: enough to tell two apart
    return str(value)
