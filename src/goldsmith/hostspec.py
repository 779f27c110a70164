"""The specs of an image against any reachable host (after ansible_spec): a drift check.

Each play's hosts pattern picks hosts from an Ansible inventory, and each host gets the
specs of the roles of the plays it is in (meta dependencies included). With explicit
`ssh://` hosts every role of the playbook applies to every host. A role without a spec is
listed as uncovered.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import spec, tools
from .ansible_env import ansible_env
from .catalogue import load
from .errors import GoldsmithError, ToolError
from .paths import build_dir, venv_bin
from .roles import RoleMap, resolve


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


@dataclass(frozen=True)
class Host:
    """One host specs run against: a testinfra host URL and the roles whose specs apply."""

    name: str
    url: str
    key: Path | None
    roles: tuple[str, ...]


_PORT_RE = re.compile(r"^[0-9]{1,5}$")


def parse_host_url(text: str) -> tuple[str | None, str, int | None]:
    """`ssh://[user@]host[:port]` -> (user, host, port); a clear error otherwise."""
    usage = "expected ssh://user@host[:port]"
    raw = text.strip()
    if not raw.startswith("ssh://"):
        raise GoldsmithError(f"--hosts: {text!r} is not an SSH URL ({usage})")
    parts = urlsplit(raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise GoldsmithError(f"--hosts: {text!r} has a path or query ({usage})")
    netloc = parts.netloc
    user = None
    if "@" in netloc:
        user_part, netloc = netloc.rsplit("@", 1)
        user = unquote(user_part)
        if not user or ":" in user:
            raise GoldsmithError(
                f"--hosts: {text!r}: bad user {user_part!r} (no passwords; {usage})"
            )
    port_text = ""
    if netloc.startswith("["):  # IPv6: [::1]:22
        host, _, rest = netloc[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise GoldsmithError(f"--hosts: {text!r}: bad host ({usage})")
        port_text = rest[1:]
    else:
        host, _, port_text = netloc.partition(":")
    if not host or not re.fullmatch(r"[A-Za-z0-9_.:%-]+", host):
        raise GoldsmithError(f"--hosts: {text!r}: no host or a bad one ({usage})")
    port = None
    if port_text or netloc.endswith(":"):
        if not _PORT_RE.match(port_text) or not 0 < int(port_text) < 65536:
            raise GoldsmithError(f"--hosts: {text!r}: port {port_text!r} is not 1-65535")
        port = int(port_text)
    return user, host, port


def _url(user: str | None, host: str, port: int | None) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"ssh://{user + '@' if user else ''}{h}{':' + str(port) if port else ''}"


def host_targets(hosts: str, role_map: RoleMap, key: Path | None) -> list[Host]:
    """Targets for explicit URLs (comma-separated): every role of the playbook on each."""
    targets = []
    for text in [h for h in hosts.split(",") if h.strip()]:
        user, host, port = parse_host_url(text)
        name = f"{host}:{port}" if port else host
        targets.append(Host(name, _url(user, host, port), key, role_map.roles))
    if not targets:
        raise GoldsmithError("--hosts: no host given")
    return targets


@dataclass
class Inventory:
    """An Ansible inventory as `ansible-inventory --list` gives it."""

    path: Path
    hosts: list[str]  # in inventory order
    hostvars: dict[str, dict]
    groups: dict[str, list[str]]  # group -> every host in it or its children


def load_inventory(path: Path, root: Path) -> Inventory:
    """Read `path` with the real `ansible-inventory --list` (any format, plugins, vars)."""
    if not path.exists():
        raise GoldsmithError(f"--inventory: {path} does not exist")
    try:
        out = tools.capture(
            [venv_bin("ansible-inventory"), "-i", str(path), "--list"],
            env={**os.environ, **ansible_env(root)},
            cwd=root,
        )
    except ToolError as e:
        raise GoldsmithError(f"--inventory: ansible-inventory cannot read {path}: {e}") from None
    data = json.loads(out)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}

    def members(group: str, chain: tuple[str, ...] = ()) -> list[str]:
        if group in groups:
            return groups[group]
        node = data.get(group, {})
        found = list(node.get("hosts", []))
        for child in node.get("children", []):
            if child not in chain:
                found.extend(members(child, (*chain, group)))
        groups[group] = list(dict.fromkeys(found))
        return groups[group]

    order = members("all")
    for group in data:
        if group != "_meta":
            members(group)
    for h in hostvars:  # hosts only in _meta (rare) still count
        if h not in order:
            order.append(h)
    groups["all"] = order
    return Inventory(path, order, hostvars, groups)


def _split_pattern(pattern: str) -> list[str]:
    # Ansible splits on commas, else on colons (a bare IPv6 address has too many colons).
    if "," in pattern:
        terms = pattern.split(",")
    elif pattern.count(":") > 1 and not any(c in pattern for c in "!&"):
        terms = [pattern]
    else:
        terms = pattern.split(":")
    return [t.strip() for t in terms if t.strip()]


def _match_term(term: str, inv: Inventory, pattern: str) -> list[str]:
    if term in ("all", "*"):
        return list(inv.hosts)
    if "[" in term and term.endswith("]") and not term.startswith("~"):
        raise GoldsmithError(
            f"hosts pattern {pattern!r}: subscripts ({term!r}) are not supported; "
            "name the group or hosts"
        )
    if term in inv.groups:
        return list(inv.groups[term])
    if term in inv.hostvars:
        return [term]
    if term.startswith("~"):
        regex = re.compile(term[1:])
        match = regex.match
    else:
        regex = re.compile(fnmatch.translate(term))
        match = regex.match
    found: list[str] = []
    for group, hosts in inv.groups.items():
        if match(group):
            found.extend(hosts)
    found.extend(h for h in inv.hosts if match(h))
    return list(dict.fromkeys(found))


def expand_pattern(pattern: str, inv: Inventory) -> list[str]:
    """The hosts a play's `hosts:` pattern selects (unions, `&` intersections, `!` exclusions)."""
    terms = _split_pattern(pattern)
    plain = [t for t in terms if t[0] not in "&!"]
    inter = [t[1:] for t in terms if t[0] == "&"]
    excl = [t[1:] for t in terms if t[0] == "!"]
    selected: set[str] = set()
    for t in plain or (["all"] if inter or excl else []):
        selected |= set(_match_term(t, inv, pattern))
    for t in inter:
        selected &= set(_match_term(t, inv, pattern))
    for t in excl:
        selected -= set(_match_term(t, inv, pattern))
    return [h for h in inv.hosts if h in selected]


_SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh")


def inventory_targets(inv: Inventory, role_map: RoleMap, key: Path | None) -> list[Host]:
    """Each host the playbook's plays select, with the roles of the plays it is in."""
    roles_of: dict[str, list[str]] = {}
    for play in role_map.plays:
        for h in expand_pattern(play.hosts or "all", inv):
            roles_of.setdefault(h, []).extend(play.roles)
    targets = []
    for h in inv.hosts:
        if h not in roles_of:
            continue
        hv = inv.hostvars.get(h, {})
        for var, value in hv.items():
            if var.startswith("ansible_") and isinstance(value, str) and "{{" in value:
                raise GoldsmithError(
                    f"{inv.path}: host {h}: {var} is templated ({value!r}); "
                    "goldsmith needs literal connection variables"
                )
        connection = str(hv.get("ansible_connection", "ssh"))
        host_key = hv.get("ansible_ssh_private_key_file") or hv.get("ansible_private_key_file")
        if connection in ("local", "ansible.builtin.local"):
            url = "local://"
        elif connection in _SSH_CONNECTIONS:
            port = hv.get("ansible_port", hv.get("ansible_ssh_port"))
            user = hv.get("ansible_user", hv.get("ansible_ssh_user"))
            try:
                port_num = int(port) if port is not None else None
            except (TypeError, ValueError):
                raise GoldsmithError(
                    f"{inv.path}: host {h}: ansible_port {port!r} is not a number"
                ) from None
            url = _url(user, str(hv.get("ansible_host", h)), port_num)
        else:
            raise GoldsmithError(
                f"{inv.path}: host {h}: ansible_connection {connection!r} is not supported "
                "(specs run over ssh or locally)"
            )
        targets.append(
            Host(
                h,
                url,
                Path(host_key).expanduser() if host_key else key,
                tuple(dict.fromkeys(roles_of[h])),
            )
        )
    if not targets:
        patterns = ", ".join(repr(p.hosts) for p in role_map.plays)
        raise GoldsmithError(f"{inv.path}: no host matches the playbook's plays ({patterns})")
    return targets


@dataclass
class SpecRun:
    """The result of specs against hosts: per host, merged JUnit, uncovered roles."""

    junit: Path
    results: dict[str, spec.SpecResult]
    uncovered: tuple[str, ...]

    @property
    def failures(self) -> list[str]:
        return [
            f"{host}: {f}"
            for host, r in self.results.items()
            for f in (r.failures or ([] if r.ok else ["no spec passed"]))
        ]


def spec_hosts(
    root: Path,
    image: str,
    *,
    hosts: str | None = None,
    inventory: Path | None = None,
    key: Path | None = None,
    sudo: bool = True,
    junit: Path | None = None,
) -> SpecRun:
    """Run the specs of `image`'s roles against `hosts` or an inventory's hosts."""
    if bool(hosts) == bool(inventory):
        raise GoldsmithError("give either --hosts ssh://user@host[:port] or --inventory FILE")
    if key is not None and not key.is_file():
        raise GoldsmithError(f"--key: {key} does not exist")
    img = load(root / "images.yml").image(image)
    role_map = resolve(img.playbook, root)
    spec.report_coverage(role_map)
    if inventory is not None:
        targets = inventory_targets(load_inventory(inventory, root), role_map, key)
    else:
        targets = host_targets(hosts or "", role_map, key)
    junit = junit or build_dir(root) / "spec" / f"{image}-junit.xml"
    results: dict[str, spec.SpecResult] = {}
    with tempfile.TemporaryDirectory(prefix="goldsmith-spec-") as tmp:
        parts = []
        for i, t in enumerate(targets):
            paths = [role_map.specs[r] for r in t.roles if r in role_map.specs]
            if not paths:
                tools.log("spec", f"{t.name}: none of its roles ({', '.join(t.roles)}) has a spec")
                continue
            covered = [r for r in t.roles if r in role_map.specs]
            tools.log("spec", f"{t.name} ({t.url}): specs of {', '.join(covered)}")
            part = Path(tmp) / f"{i}.xml"
            results[t.name] = spec.run(
                paths,
                hosts=t.url,
                junit=part,
                root=root,
                ssh_key=t.key,
                sudo=sudo,
                suite=t.name,
                playbook=role_map.playbook,
            )
            parts.append(part)
        if not results:
            raise GoldsmithError(f"{image}: none of its roles has a spec in tests/spec/")
        spec.merge_junit(parts, junit)
    run = SpecRun(junit, results, role_map.uncovered)
    tools.log("spec", f"JUnit: {_rel(junit, root)}")
    if run.failures:
        raise GoldsmithError(
            f"{image}: {len(run.failures)} spec(s) failed:\n  " + "\n  ".join(run.failures)
        )
    passed = sum(r.passed for r in results.values())
    tools.log("spec", f"{passed} passed on {len(results)} host(s)")
    return run
