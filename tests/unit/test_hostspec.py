"""Specs against any host: host URLs, inventories read by Ansible itself, roles per host.

Inventories are read by Ansible's own InventoryManager, so these tests prove goldsmith's
use of it (patterns Ansible supports, group_vars, templated connection variables, the
project's collections) rather than a re-implementation. The last tests run real specs
with testinfra's local backend on this machine, through the same path
`./run spec --inventory` takes, so the JUnit and the failure names are proved without a VM.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goldsmith import hostspec
from goldsmith.errors import GoldsmithError
from goldsmith.hostspec import SshAddress
from goldsmith.roles import resolve

# --- host URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssh://goldsmith@127.0.0.1:2222", SshAddress("127.0.0.1", "goldsmith", 2222)),
        ("ssh://admin@web-1.example.com", SshAddress("web-1.example.com", "admin")),
        ("ssh://web-1", SshAddress("web-1")),
        ("web-1", SshAddress("web-1")),
        ("admin@web-1", SshAddress("web-1", "admin")),
        ("web-1:2200", SshAddress("web-1", None, 2200)),
        ("ssh://root@[::1]:22", SshAddress("::1", "root", 22)),
        ("ssh://user@[::1]:2222", SshAddress("::1", "user", 2222)),
        ("[fe80::1]:2222", SshAddress("fe80::1", None, 2222)),
        ("::1", SshAddress("::1")),  # a bare IPv6 address: its colons are not a port
        ("ssh://first%2Elast@host/", SshAddress("host", "first.last")),
        ("  ssh://a@b:1  ", SshAddress("b", "a", 1)),
    ],
)
def test_host_urls_parse(text: str, expected: SshAddress) -> None:
    assert hostspec.parse_host_url(text) == expected


@pytest.mark.parametrize(
    ("address", "name", "url"),
    [
        (SshAddress("::1", "root", 22), "::1:22", "ssh://root@[::1]:22"),
        (SshAddress("web-1", None, 2200), "web-1:2200", "ssh://web-1:2200"),
        (SshAddress("10.0.0.5", "admin"), "10.0.0.5", "ssh://admin@10.0.0.5"),
    ],
)
def test_an_address_gives_testinfra_its_url(address: SshAddress, name: str, url: str) -> None:
    assert (address.name, address.url) == (name, url)
    assert hostspec.parse_host_url(address.url) == address


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://host", "scheme 'http' is not ssh"),
        ("ftp://user@host:21", "scheme 'ftp' is not ssh"),
        ("ssh://user@host:0", "port '0' is not a number from 1 to 65535"),
        ("ssh://user@host:65536", "port '65536' is not a number from 1 to 65535"),
        ("user@host:99999", "port '99999' is not a number from 1 to 65535"),
        ("ssh://user@host:ssh", "port 'ssh' is not a number from 1 to 65535"),
        ("host:-1", "port '-1' is not a number from 1 to 65535"),
        ("ssh://user@host:", "port '' is not a number from 1 to 65535"),
        ("ssh://user@[::1]:x", "port 'x' is not a number from 1 to 65535"),
        ("ssh://user:secret@host", "no passwords"),
        ("ssh://@host", "user '' is not a user name"),
        ("-oProxyCommand=x@host", "user '-oProxyCommand=x' is not a user name"),
        ("ssh://user@", "no host"),
        ("", "no host"),
        ("ssh://:22", "no host"),
        ("ssh://user@host/path", "a path, query or fragment"),
        ("ssh://host?x=1", "a path, query or fragment"),
        ("ssh://user@ho st", "host 'ho st' is not a host name or address"),
        ("-oProxyCommand=x", "host '-oProxyCommand=x' is not a host name or address"),
        ("ssh://[::1", "Invalid IPv6 URL"),
        ("ssh://user@fe80::1:22", "an IPv6 address goes in brackets"),
        ("ssh://[127.0.0.1]:22", "cannot be in brackets"),
    ],
)
def test_bad_host_urls_are_named(text: str, problem: str) -> None:
    with pytest.raises(GoldsmithError) as e:
        hostspec.parse_host_url(text)
    assert problem in str(e.value)
    assert str(e.value).startswith(f"--hosts: {text!r}: ")


def test_url_hosts_get_every_role_of_the_playbook(project) -> None:
    project.standard()
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    key = project.root / "id"
    hosts = hostspec.url_hosts("ssh://admin@10.0.0.1:2200, [fe80::1],web-2", role_map, key)
    assert [(h.name, h.url, h.key, h.roles) for h in hosts] == [
        ("10.0.0.1:2200", "ssh://admin@10.0.0.1:2200", key, ("common", "nginx")),
        ("fe80::1", "ssh://[fe80::1]", key, ("common", "nginx")),
        ("web-2", "ssh://web-2", key, ("common", "nginx")),
    ]


def test_url_hosts_refuse_none_and_twice(project) -> None:
    project.standard()
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError, match="--hosts: no host given"):
        hostspec.url_hosts(" , ", role_map, None)
    with pytest.raises(GoldsmithError, match="--hosts: web-1:22 is given twice"):
        hostspec.url_hosts("web-1:22,ssh://admin@web-1:22", role_map, None)


# --- inventories ------------------------------------------------------------------------

INVENTORY = """\
[web]
web1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=admin
web2 ansible_host=10.0.0.2
web[3:4]

[db]
db1

[canary]
web2

[prod:children]
web
db

[control]
ctl ansible_connection=local

[boxes]
box1 ansible_connection=community.docker.docker
"""
# Beside the inventory, as Ansible reads them: group vars, one templated from another.
DB_VARS = """\
ansible_user: postgres
ansible_host: "{{ inventory_hostname }}.{{ db_domain }}"
ansible_ssh_private_key_file: /keys/db.pem
db_domain: db.example.com
"""
EVERY_HOST = {"web1", "web2", "web3", "web4", "db1", "ctl", "box1"}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> hostspec.Inventory:
    folder = tmp_path_factory.mktemp("inventory")
    (folder / "inventory.ini").write_text(INVENTORY)
    (folder / "group_vars").mkdir()
    (folder / "group_vars/db.yml").write_text(DB_VARS)
    return hostspec.load_inventory(folder / "inventory.ini", folder)


def test_ansible_reads_hosts_ranges_and_children(inventory: hostspec.Inventory) -> None:
    assert set(hostspec.expand_pattern("all", inventory)) == EVERY_HOST
    assert hostspec.expand_pattern("web", inventory) == ["web1", "web2", "web3", "web4"]
    assert hostspec.expand_pattern("prod", inventory) == ["web1", "web2", "web3", "web4", "db1"]


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("all", EVERY_HOST),
        ("*", EVERY_HOST),
        ("web:db", {"web1", "web2", "web3", "web4", "db1"}),
        ("web,ctl", {"web1", "web2", "web3", "web4", "ctl"}),
        ("prod:!db", {"web1", "web2", "web3", "web4"}),
        ("prod:&canary", {"web2"}),
        ("!web", {"db1", "ctl", "box1"}),
        ("web*", {"web1", "web2", "web3", "web4"}),
        ("~db\\d", {"db1"}),
        ("db1", {"db1"}),
        ("nothing", set()),
        # Patterns the hand-written matcher goldsmith had before did not support:
        ("web:&prod", {"web1", "web2", "web3", "web4"}),
        ("web:!canary", {"web1", "web3", "web4"}),
        ("web:&prod:!canary", {"web1", "web3", "web4"}),
        ("~web[0-9]+", {"web1", "web2", "web3", "web4"}),
        ("~(web|db)[13]", {"web1", "web3", "db1"}),
        ("web[1:2]", {"web2", "web3"}),  # a subscript: the group's 2nd and 3rd hosts
        ("web[0]", {"web1"}),
        ("web[-1]", {"web4"}),
        ("web[2:]", {"web3", "web4"}),
        ("db1:web[0]", {"db1", "web1"}),
        ("w?b[1-2]*", {"web1", "web2"}),  # a glob: fnmatch's [1-2], not a subscript
        ("localhost", {"localhost"}),  # Ansible's implicit localhost
    ],
)
def test_play_patterns_expand_as_ansible_does(
    inventory: hostspec.Inventory, pattern: str, hosts: set[str]
) -> None:
    assert set(hostspec.expand_pattern(pattern, inventory)) == hosts


def test_a_pattern_ansible_refuses_is_named_with_the_file(inventory) -> None:
    with pytest.raises(GoldsmithError) as e:
        hostspec.expand_pattern("web[9]", inventory)
    assert f"{inventory.path}: hosts pattern 'web[9]': " in str(e.value)
    with pytest.raises(GoldsmithError, match=r"hosts pattern '\{\{ fleet \}\}' is templated"):
        hostspec.expand_pattern("{{ fleet }}", inventory)


def test_a_missing_inventory_is_named(project) -> None:
    with pytest.raises(GoldsmithError, match="--inventory: .*nope.ini does not exist"):
        hostspec.load_inventory(project.root / "nope.ini", project.root)


def test_an_inventory_ansible_cannot_read_is_named(project) -> None:
    bad = project.write("bad.ini", "[web\nweb1 ansible_port\n")
    with pytest.raises(GoldsmithError, match=f"--inventory: Ansible cannot read {bad} "):
        hostspec.load_inventory(bad, project.root)


TWO_PLAYS = """\
- name: Web servers
  hosts: web
  roles: [nginx]
- name: Database and canary servers
  hosts: db:canary
  roles: [common]
"""


def test_each_host_gets_the_specs_of_the_plays_it_is_in(project, inventory) -> None:
    project.standard()
    project.playbook("web", text=TWO_PLAYS)
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    key = Path("/keys/default")
    hosts = {h.name: h for h in hostspec.inventory_hosts(inventory, role_map, key)}
    assert set(hosts) == {"web1", "web2", "web3", "web4", "db1"}
    assert hosts["web1"].url == "ssh://admin@10.0.0.1:2222"
    assert hosts["web1"].roles == ("common", "nginx")  # nginx's meta dependency first
    assert hosts["web1"].key == key
    assert hosts["web2"].url == "ssh://10.0.0.2"
    assert hosts["web3"].url == "ssh://web3"  # no ansible_host: the inventory name
    # From group_vars/db.yml beside the inventory, its ansible_host templated by Ansible.
    assert hosts["db1"].url == "ssh://postgres@db1.db.example.com"
    assert hosts["db1"].key == Path("/keys/db.pem")
    assert hosts["db1"].roles == ("common",)


def test_a_local_connection_runs_on_this_machine(project, inventory) -> None:
    project.standard()
    project.playbook("web", text="- name: Control\n  hosts: ctl\n  roles: [common]\n")
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    [ctl] = hostspec.inventory_hosts(inventory, role_map, None)
    assert (ctl.name, ctl.url) == ("ctl", "local://")


def test_a_host_with_an_unsupported_connection_is_named(project, inventory) -> None:
    project.standard()
    project.playbook("web", text="- name: All\n  hosts: all\n  roles: [common]\n")
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError, match="host box1: ansible_connection 'community.docker"):
        hostspec.inventory_hosts(inventory, role_map, None)


def test_no_host_matching_any_play_is_an_error(project, inventory) -> None:
    project.standard()
    project.playbook("web", text="- name: Caches\n  hosts: cache\n  roles: [common]\n")
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError) as e:
        hostspec.inventory_hosts(inventory, role_map, None)
    assert f"{inventory.path}: no host matches the playbook's plays ('cache')" in str(e.value)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("odd1 ansible_port=ssh", "host odd1: ansible_port 'ssh' is not a number from 1 to 65535"),
        ("odd1 ansible_port=70000", "ansible_port '70000' is not a number"),
        ('odd1 ansible_host="{{ nowhere }}"', "host odd1: ansible_host '{{ nowhere }}': "),
    ],
)
def test_bad_connection_variables_are_named(project, line: str, problem: str) -> None:
    project.standard()
    project.playbook("web", text="- name: Odd\n  hosts: odd\n  roles: [common]\n")
    inv_file = project.write("odd.ini", f"[odd]\n{line}\n")
    inv = hostspec.load_inventory(inv_file, project.root)
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError) as e:
        hostspec.inventory_hosts(inv, role_map, None)
    assert str(e.value).startswith(f"{inv_file}: ") and problem in str(e.value)


# An inventory plugin in a collection of the project's own, as an aws_ec2 inventory would be.
FLEET_PLUGIN = '''\
DOCUMENTATION = """
name: fleet
short_description: A fixed fleet, for goldsmith's tests
description: Two web hosts, whatever the file says.
options:
  plugin:
    description: This plugin's name.
    required: true
    choices: [acme.fleet.fleet]
"""
from ansible.plugins.inventory import BaseInventoryPlugin


class InventoryModule(BaseInventoryPlugin):
    NAME = "acme.fleet.fleet"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(".fleet.yml")

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        inventory.add_group("web")
        for n in (1, 2):
            inventory.add_host(f"web{n}", group="web")
            inventory.set_variable(f"web{n}", "ansible_host", f"10.1.0.{n}")
'''
READ_FLEET = """\
import json, sys
from pathlib import Path
from goldsmith import hostspec
root = Path(sys.argv[1])
inv = hostspec.load_inventory(root / "prod.fleet.yml", root)
print(json.dumps(hostspec.expand_pattern("web[1]", inv)))
"""


def test_inventory_plugins_come_from_the_projects_collections(project) -> None:
    collection = project.root / ".galaxy/collections/ansible_collections/acme/fleet"
    (collection / "plugins/inventory").mkdir(parents=True)
    (collection / "plugins/inventory/fleet.py").write_text(FLEET_PLUGIN)
    project.write("prod.fleet.yml", "plugin: acme.fleet.fleet\n")
    # A fresh process: Ansible's collection loader is set once per process.
    proc = subprocess.run(
        [sys.executable, "-c", READ_FLEET, str(project.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["web2"]


# --- real specs, local backend ----------------------------------------------------------

LOCAL_INVENTORY = "[web]\nthis-machine ansible_connection=local\n"


def local_project(project, nginx_spec: str):
    project.standard()
    project.role("bare", spec=False)
    project.playbook("web", text="- name: Web\n  hosts: web\n  roles: [nginx, bare]\n")
    project.write("tests/spec/nginx/test_nginx.py", nginx_spec)
    return project.write("inventory.ini", LOCAL_INVENTORY)


def test_specs_run_against_an_inventory_host_and_write_junit(project, capsys) -> None:
    inv = local_project(
        project, "def test_python_is_here(host):\n    assert host.exists('python3')\n"
    )
    junit = project.root / "out/junit.xml"
    run = hostspec.run(project.root, "web", inventory=inv, sudo=False, junit=junit)
    assert run.uncovered == ("bare",)
    assert run.results["this-machine"].passed == 2  # common's spec and nginx's
    suites = ET.parse(junit).getroot()
    assert suites.tag == "testsuites"
    assert [s.get("name") for s in suites.iter("testsuite")] == ["this-machine"]
    assert "UNCOVERED: role 'bare'" in capsys.readouterr().out


def test_failing_specs_fail_naming_them(project) -> None:
    inv = local_project(
        project,
        "def test_nginx_is_installed(host):\n"
        "    assert host.package('no-such-package-x').is_installed\n",
    )
    with pytest.raises(GoldsmithError) as e:
        hostspec.run(project.root, "web", inventory=inv, sudo=False)
    assert "1 spec(s) failed" in str(e.value)
    assert "this-machine" in str(e.value) and "test_nginx_is_installed" in str(e.value)
    assert (project.root / "build/spec/web-junit.xml").is_file()


def test_hosts_or_inventory_exactly_one(project) -> None:
    project.standard()
    with pytest.raises(GoldsmithError, match="either --hosts"):
        hostspec.run(project.root, "web")
    with pytest.raises(GoldsmithError, match="either --hosts"):
        hostspec.run(project.root, "web", hosts="ssh://a@b", inventory=project.root / "x")
    with pytest.raises(GoldsmithError, match="--key: .*missing.pem does not exist"):
        hostspec.run(project.root, "web", hosts="ssh://a@b", key=project.root / "missing.pem")


def test_a_layered_image_is_checked_whole_its_parents_specs_first(project) -> None:
    """edge is layered on web: a host running edge ran web's playbook too, so its drift
    check runs web's specs (suite "HOST [web]") before edge's own."""
    inv = local_project(
        project, "def test_python_is_here(host):\n    assert host.exists('python3')\n"
    )
    project.role("edge")
    project.playbook("edge", text="- name: Edge\n  hosts: web\n  roles: [edge]\n")
    catalogue = project.root / "images.yml"
    catalogue.write_text(
        catalogue.read_text().replace(
            "\nimages:\n",
            "\nimages:\n  edge:\n    parent: web\n    playbook: playbooks/edge.yml\n"
            "    targets: [local]\n",
            1,
        )
    )
    junit = project.root / "out/junit.xml"
    run = hostspec.run(project.root, "edge", inventory=inv, sudo=False, junit=junit)
    assert run.uncovered == ("bare",)  # the parent layer's uncovered role is listed too
    assert run.results["this-machine [web]"].passed == 2
    assert run.results["this-machine"].passed == 1
    suites = [s.get("name") for s in ET.parse(junit).getroot().iter("testsuite")]
    assert suites == ["this-machine [web]", "this-machine"]
