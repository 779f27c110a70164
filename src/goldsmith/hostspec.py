"""The specs of an image against any reachable host (after ansible_spec): a drift check.

Hosts come either as SSH URLs (`--hosts`), where every role of the playbook applies to
every host, or from an Ansible inventory (`--inventory`), where each play's `hosts:`
pattern picks its hosts and each host gets the specs of the roles of the plays it is in
(meta dependencies included). A role without a spec is listed as uncovered.

The inventory is read by Ansible itself (its InventoryManager and VariableManager, in
this process), so every inventory and pattern ansible-playbook accepts means the same
here: any format or inventory plugin, group_vars and host_vars, `all`, `&`, `!`,
wildcards, `~regex`, `[1:2]` subscripts, `:children`, templated connection variables.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar
from ansible.utils.collection_loader import AnsibleCollectionConfig
from ansible.utils.path import unfrackpath
from ansible.vars.manager import VariableManager

from . import requirements, spec, tools
from .ansible_env import ansible_env
from .catalogue import load
from .errors import GoldsmithError
from .paths import build_dir
from .roles import RoleMap

# --- hosts and SSH URLs -----------------------------------------------------------------


@dataclass(frozen=True)
class SshAddress:
    """Where a host's SSH server answers, as `--hosts` or an inventory's variables say."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def name(self) -> str:
        """How logs and the JUnit suite name the host: `host`, or `host:port`."""
        return f"{self.host}:{self.port}" if self.port else self.host

    @property
    def url(self) -> str:
        """The testinfra host URL; an IPv6 address in brackets, as URLs need."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"ssh://{user}{host}{port}"


@dataclass(frozen=True)
class Host:
    """One host specs run against: a testinfra host URL and the roles whose specs apply."""

    name: str
    url: str
    key: Path | None
    roles: tuple[str, ...]


HOSTS_USAGE = "expected [ssh://][user@]host[:port], an IPv6 address in brackets"
# A DNS name or an IPv4 address (as ssh and Ansible take them); IPv6 is checked apart.
# Neither a host nor a user may start with '-': ssh would read it as an option.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
_USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")  # POSIX's portable names


def parse_host_url(text: str) -> SshAddress:
    """`[ssh://][user@]host[:port]` (IPv6 as `[::1]`) -> an SshAddress; a clear error otherwise.

    urlsplit does the splitting; what it lets through but ssh would choke on (an empty
    user, a password, a path, a port out of range, a host with spaces) is refused here,
    naming the value, so a typo fails before any connection is tried.
    """
    raw = text.strip()
    if _is_ipv6(raw):  # a bare IPv6 address: its colons are not a port
        return SshAddress(raw)
    try:
        parts = urlsplit(raw if "://" in raw else f"ssh://{raw}")
    except ValueError as e:  # e.g. an unclosed '['
        raise _bad_host(text, str(e)) from None
    if parts.scheme != "ssh":
        raise _bad_host(text, f"scheme {parts.scheme!r} is not ssh")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _bad_host(text, "a path, query or fragment is not part of a host")
    return SshAddress(_url_host(parts, text), _url_user(parts, text), _url_port(parts, text))


def _bad_host(text: str, problem: str) -> GoldsmithError:
    return GoldsmithError(f"--hosts: {text!r}: {problem} ({HOSTS_USAGE})")


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _url_user(parts: SplitResult, text: str) -> str | None:
    if parts.password is not None:
        raise _bad_host(text, "no passwords in host URLs (use --key or the SSH agent)")
    if parts.username is None:
        return None
    user = unquote(parts.username)
    if not _USER_NAME.fullmatch(user):
        raise _bad_host(text, f"user {user!r} is not a user name")
    return user


def _url_host(parts: SplitResult, text: str) -> str:
    hostinfo = parts.netloc.rpartition("@")[2]
    host = parts.hostname or ""
    if hostinfo.startswith("["):
        if not _is_ipv6(host):
            raise _bad_host(text, f"[{host}] is not an IPv6 address")
        return host
    if hostinfo.count(":") > 1:
        raise _bad_host(text, "an IPv6 address goes in brackets, as in ssh://user@[::1]:22")
    if not host:
        raise _bad_host(text, "no host")
    if not _HOST_NAME.fullmatch(host):
        as_given = hostinfo.partition(":")[0]  # urlsplit's hostname is lowercased
        raise _bad_host(text, f"host {as_given!r} is not a host name or address")
    return host


def _url_port(parts: SplitResult, text: str) -> int | None:
    hostinfo = parts.netloc.rpartition("@")[2]
    after_host = hostinfo.rpartition("]")[2] if hostinfo.startswith("[") else hostinfo
    _, colon, port_text = after_host.partition(":")
    if not colon:
        return None
    try:
        port = parts.port
    except ValueError:  # not digits, or above 65535
        port = None
    if port is None or not 0 < port < 65536:
        raise _bad_host(text, f"port {port_text!r} is not a number from 1 to 65535")
    return port


def url_hosts(hosts: str, role_map: RoleMap, key: Path | None) -> list[Host]:
    """Hosts from `--hosts` (comma-separated URLs): every role of the playbook on each."""
    found: dict[str, Host] = {}
    for text in (h for h in hosts.split(",") if h.strip()):
        address = parse_host_url(text)
        if address.name in found:
            raise GoldsmithError(f"--hosts: {address.name} is given twice")
        found[address.name] = Host(address.name, address.url, key, role_map.roles)
    if not found:
        raise GoldsmithError(f"--hosts: no host given ({HOSTS_USAGE})")
    return list(found.values())


# --- inventories ------------------------------------------------------------------------


class _InventoryManager(InventoryManager):
    """Ansible's inventory manager, remembering which sources a plugin could read.

    Ansible only warns when no plugin reads a source (and then offers an inventory of an
    implicit localhost); goldsmith makes that an error naming the file.
    """

    def __init__(self, loader: DataLoader, source: str) -> None:
        self.parsed: dict[str, bool] = {}
        super().__init__(loader, sources=[source])

    def parse_source(self, source: str, cache: bool = False) -> bool:
        self.parsed[source] = super().parse_source(source, cache=cache)
        return self.parsed[source]


@dataclass
class Inventory:
    """An inventory as Ansible reads it, and the file it came from (for messages)."""

    path: Path
    loader: DataLoader
    manager: InventoryManager
    variables: VariableManager


def _init_collections(root: Path) -> None:
    """Let inventory plugins come from the project's collections, as in its Ansible runs.

    Ansible's collection loader is installed once per process: the first project to read
    an inventory decides where collections are found (the CLI reads one project).
    """
    if AnsibleCollectionConfig.collection_finder is None:
        paths = ansible_env(root)["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)
        init_plugin_loader(paths)


def load_inventory(path: Path, root: Path) -> Inventory:
    """Read `path` as ansible-playbook would: any format, plugin, group_vars, host_vars."""
    if not path.exists():
        raise GoldsmithError(f"--inventory: {path} does not exist")
    _init_collections(root)
    source = unfrackpath(str(path), follow=False)
    loader = DataLoader()
    try:
        manager = _InventoryManager(loader, source)
    except AnsibleError as e:
        raise GoldsmithError(f"--inventory: Ansible cannot read {path}: {e.message}") from None
    if not manager.parsed.get(source):
        raise GoldsmithError(
            f"--inventory: Ansible cannot read {path} as an inventory "
            "(its reasons are in the warnings above)"
        )
    return Inventory(path, loader, manager, VariableManager(loader=loader, inventory=manager))


def expand_pattern(pattern: str, inv: Inventory) -> list[str]:
    """The hosts a play's `hosts:` pattern selects, in Ansible's order, as Ansible selects them."""
    if "{{" in pattern:
        raise GoldsmithError(
            f"hosts pattern {pattern!r} is templated: goldsmith cannot tell which hosts of "
            f"{inv.path} it means"
        )
    try:
        return [h.name for h in inv.manager.get_hosts(pattern)]
    except AnsibleError as e:
        raise GoldsmithError(f"{inv.path}: hosts pattern {pattern!r}: {e.message}") from None


# Ansible's own names of each connection variable, the preferred first.
_ADDRESS_VARS = ("ansible_host", "ansible_ssh_host")
_PORT_VARS = ("ansible_port", "ansible_ssh_port")
_USER_VARS = ("ansible_user", "ansible_ssh_user")
_KEY_VARS = ("ansible_ssh_private_key_file", "ansible_private_key_file")
_SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh", "ansible.builtin.ssh")
_LOCAL_CONNECTIONS = ("local", "ansible.builtin.local")


class _HostVars:
    """One host's variables as a play would see them, connection variables templated."""

    def __init__(self, inv: Inventory, name: str) -> None:
        self.inv = inv
        self.name = name
        self.values = inv.variables.get_vars(
            host=inv.manager.get_host(name), include_hostvars=False
        )
        self.templar = Templar(loader=inv.loader, variables=self.values)

    def get(self, names: tuple[str, ...]) -> str | None:
        """The first of `names` the host has, templated as Ansible would; None if none is set."""
        var = next((n for n in names if self.values.get(n) is not None), None)
        if var is None:
            return None
        try:
            return str(self.templar.template(self.values[var]))
        except AnsibleError as e:
            raise GoldsmithError(
                f"{self.inv.path}: host {self.name}: {var} {str(self.values[var])!r}: {e.message}"
            ) from None

    def port(self) -> int | None:
        text = self.get(_PORT_VARS)
        if text is None:
            return None
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise GoldsmithError(
                f"{self.inv.path}: host {self.name}: ansible_port {text!r} "
                "is not a number from 1 to 65535"
            )
        return int(text)


def _inventory_host(inv: Inventory, name: str, roles: tuple[str, ...], key: Path | None) -> Host:
    """`name`'s testinfra URL and key from its connection variables (`--key` as fallback)."""
    hv = _HostVars(inv, name)
    connection = hv.get(("ansible_connection",)) or "ssh"
    host_key = hv.get(_KEY_VARS)
    if connection in _LOCAL_CONNECTIONS:
        url = "local://"
    elif connection in _SSH_CONNECTIONS:
        url = SshAddress(hv.get(_ADDRESS_VARS) or name, hv.get(_USER_VARS), hv.port()).url
    else:
        raise GoldsmithError(
            f"{inv.path}: host {name}: ansible_connection {connection!r} is not supported "
            "(specs run over ssh or locally)"
        )
    return Host(name, url, Path(host_key).expanduser() if host_key else key, roles)


def inventory_hosts(inv: Inventory, role_map: RoleMap, key: Path | None) -> list[Host]:
    """Each host the playbook's plays select, with the roles of the plays it is in."""
    roles_of: dict[str, list[str]] = {}
    for play in role_map.plays:
        selected = expand_pattern(play.hosts or "all", inv)
        if not selected:
            tools.log("spec", f"hosts pattern {play.hosts!r} selects no host of {inv.path}")
        for name in selected:
            roles_of.setdefault(name, []).extend(play.roles)
    if not roles_of:
        patterns = ", ".join(repr(p.hosts) for p in role_map.plays)
        raise GoldsmithError(f"{inv.path}: no host matches the playbook's plays ({patterns})")
    return [
        _inventory_host(inv, name, tuple(dict.fromkeys(roles)), key)
        for name, roles in roles_of.items()
    ]


# --- running the specs ------------------------------------------------------------------


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


def run(
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
    requirements.ensure(root)  # the pinned roles and collections the playbook applies
    catalogue = load(root / "images.yml")
    # A layered image's hosts are proven whole: its parents' specs, then its own.
    layers = [(i.name, catalogue.role_map(i)) for i in catalogue.layers(catalogue.image(image))]
    inv = load_inventory(inventory, root) if inventory is not None else None
    junit = junit or build_dir(root) / "spec" / f"{image}-junit.xml"
    results: dict[str, spec.SpecResult] = {}
    with tempfile.TemporaryDirectory(prefix="goldsmith-spec-") as tmp:
        parts: list[Path] = []
        for layer, role_map in layers:
            spec.report_coverage(role_map)
            if inv is not None:
                selected = inventory_hosts(inv, role_map, key)
            else:
                selected = url_hosts(hosts or "", role_map, key)
            label = "" if layer == image else f" [{layer}]"
            results |= _run_each(selected, role_map, root, sudo, Path(tmp), label, parts)
        if results:
            spec.merge_junit(parts, junit)
    if not results:
        raise GoldsmithError(f"{image}: none of its roles has a spec in tests/spec/")
    uncovered = tuple(dict.fromkeys(r for _, m in layers for r in m.uncovered))
    outcome = SpecRun(junit, results, uncovered)
    tools.log("spec", f"JUnit: {junit.relative_to(root) if junit.is_relative_to(root) else junit}")
    if outcome.failures:
        raise GoldsmithError(
            f"{image}: {len(outcome.failures)} spec(s) failed:\n  " + "\n  ".join(outcome.failures)
        )
    passed = sum(r.passed for r in results.values())
    tools.log("spec", f"{passed} passed on {len(results)} host(s)")
    return outcome


def _run_each(
    selected: list[Host],
    role_map: RoleMap,
    root: Path,
    sudo: bool,
    tmp: Path,
    label: str,
    parts: list[Path],
) -> dict[str, spec.SpecResult]:
    """Each host's specs of one playbook's roles, one pytest run per host, the JUnit
    suite named after the host (and `label`, a parent layer); the JUnit files go to
    `parts`."""
    results: dict[str, spec.SpecResult] = {}
    for host in selected:
        covered = [r for r in host.roles if r in role_map.specs]
        name = f"{host.name}{label}"
        if not covered:
            roles = ", ".join(host.roles)
            tools.log("spec", f"{name}: none of its roles ({roles}) has a spec")
            continue
        tools.log("spec", f"{name} ({host.url}): specs of {', '.join(covered)}")
        part = tmp / f"{len(parts)}.xml"
        results[name] = spec.run(
            [role_map.specs[r] for r in covered],
            hosts=host.url,
            junit=part,
            root=root,
            ssh_key=host.key,
            sudo=sudo,
            suite=name,
            playbook=role_map.playbook,
        )
        parts.append(part)
    return results
