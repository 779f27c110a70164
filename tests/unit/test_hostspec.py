"""Specs against any host: host URLs, inventory expansion (real ansible-inventory), mapping.

The last tests run real specs with testinfra's local backend on this machine, through the
same path `./run spec --inventory` takes, so the JUnit and the failure names are proved
without a VM.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from goldsmith import hostspec
from goldsmith.errors import GoldsmithError
from goldsmith.roles import resolve

# --- host URLs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ssh://goldsmith@127.0.0.1:2222", ("goldsmith", "127.0.0.1", 2222)),
        ("ssh://admin@web-1.example.com", ("admin", "web-1.example.com", None)),
        ("ssh://web-1", (None, "web-1", None)),
        ("ssh://root@[::1]:22", ("root", "::1", 22)),
        ("  ssh://a@b:1  ", ("a", "b", 1)),
    ],
)
def test_host_urls_parse(text: str, expected: tuple) -> None:
    assert hostspec.parse_host_url(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("goldsmith@127.0.0.1:22", "is not an SSH URL"),
        ("http://host", "is not an SSH URL"),
        ("ssh://user@host:0", "port '0' is not 1-65535"),
        ("ssh://user@host:65536", "port '65536' is not 1-65535"),
        ("ssh://user@host:ssh", "port 'ssh' is not 1-65535"),
        ("ssh://user@host:", "port '' is not 1-65535"),
        ("ssh://user:secret@host", "bad user"),
        ("ssh://@host", "bad user"),
        ("ssh://user@", "no host"),
        ("ssh://user@host/path", "has a path"),
        ("ssh://user@ho st", "no host or a bad one"),
    ],
)
def test_bad_host_urls_are_named(text: str, problem: str) -> None:
    with pytest.raises(GoldsmithError) as e:
        hostspec.parse_host_url(text)
    assert problem in str(e.value) and repr(text) in str(e.value)


def test_explicit_hosts_get_every_role_of_the_playbook(project) -> None:
    project.standard()
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    key = project.root / "id"
    targets = hostspec.host_targets("ssh://admin@10.0.0.1:2200, ssh://[fe80::1]", role_map, key)
    assert [(t.name, t.url, t.key, t.roles) for t in targets] == [
        ("10.0.0.1:2200", "ssh://admin@10.0.0.1:2200", key, ("common", "nginx")),
        ("fe80::1", "ssh://[fe80::1]", key, ("common", "nginx")),
    ]


# --- inventories ------------------------------------------------------------------------

INVENTORY = """\
[web]
web1 ansible_host=10.0.0.1 ansible_port=2222 ansible_user=admin
web2 ansible_host=10.0.0.2

[db]
db1 ansible_ssh_private_key_file=/keys/db.pem ansible_user=postgres

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


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> hostspec.Inventory:
    """Read once per module: ansible-inventory takes seconds to start."""
    folder = tmp_path_factory.mktemp("inventory")
    (folder / "inventory.ini").write_text(INVENTORY)
    return hostspec.load_inventory(folder / "inventory.ini", folder)


def test_ansible_inventory_reads_hosts_groups_and_children(inventory: hostspec.Inventory) -> None:
    assert sorted(inventory.hosts) == ["box1", "ctl", "db1", "web1", "web2"]
    assert len(set(inventory.hosts)) == len(inventory.hosts)
    assert inventory.groups["prod"] == ["web1", "web2", "db1"]
    assert inventory.hostvars["web1"]["ansible_port"] == 2222


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("web", {"web1", "web2"}),
        ("prod", {"web1", "web2", "db1"}),
        ("all", {"web1", "web2", "db1", "ctl", "box1"}),
        ("*", {"web1", "web2", "db1", "ctl", "box1"}),
        ("web:db", {"web1", "web2", "db1"}),
        ("web,ctl", {"web1", "web2", "ctl"}),
        ("prod:!db", {"web1", "web2"}),
        ("prod:&canary", {"web2"}),
        ("!web", {"db1", "ctl", "box1"}),
        ("web*", {"web1", "web2"}),
        ("~db\\d", {"db1"}),
        ("db1", {"db1"}),
        ("nothing", set()),
    ],
)
def test_play_patterns_expand_as_ansible_does(
    inventory: hostspec.Inventory, pattern: str, hosts: set[str]
) -> None:
    assert set(hostspec.expand_pattern(pattern, inventory)) == hosts


def test_subscript_patterns_are_refused_clearly(inventory: hostspec.Inventory) -> None:
    with pytest.raises(GoldsmithError, match=r"subscripts \('web\[0\]'\) are not supported"):
        hostspec.expand_pattern("web[0]", inventory)


def test_a_missing_inventory_is_named(project) -> None:
    with pytest.raises(GoldsmithError, match="nope.ini does not exist"):
        hostspec.load_inventory(project.root / "nope.ini", project.root)


TWO_PLAYS = """\
- name: Web servers
  hosts: web
  roles: [nginx]
- name: Database servers
  hosts: db:!canary
  roles: [common]
"""


def test_each_host_gets_the_specs_of_the_plays_it_is_in(project, inventory) -> None:
    project.standard()
    project.playbook("web", text=TWO_PLAYS)
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    key = Path("/keys/default")
    targets = {t.name: t for t in hostspec.inventory_targets(inventory, role_map, key)}
    assert set(targets) == {"web1", "web2", "db1"}
    assert targets["web1"].url == "ssh://admin@10.0.0.1:2222"
    assert targets["web1"].roles == ("common", "nginx")  # nginx's meta dependency first
    assert targets["web1"].key == key
    assert targets["web2"].url == "ssh://10.0.0.2"
    assert targets["db1"].url == "ssh://postgres@db1"  # no ansible_host: the inventory name
    assert targets["db1"].key == Path("/keys/db.pem")
    assert targets["db1"].roles == ("common",)


def test_a_host_with_an_unsupported_connection_is_named(project, inventory) -> None:
    project.standard()
    project.playbook("web", text="- name: All\n  hosts: all\n  roles: [common]\n")
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError, match="host box1: ansible_connection 'community.docker"):
        hostspec.inventory_targets(inventory, role_map, None)


def test_no_host_matching_any_play_is_an_error(project, inventory) -> None:
    project.standard()
    project.playbook("web", text="- name: Caches\n  hosts: cache\n  roles: [common]\n")
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    with pytest.raises(GoldsmithError, match="no host matches the playbook's plays \\('cache'\\)"):
        hostspec.inventory_targets(inventory, role_map, None)


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
    run = hostspec.spec_hosts(project.root, "web", inventory=inv, sudo=False, junit=junit)
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
        hostspec.spec_hosts(project.root, "web", inventory=inv, sudo=False)
    assert "1 spec(s) failed" in str(e.value)
    assert "this-machine" in str(e.value) and "test_nginx_is_installed" in str(e.value)
    assert (project.root / "build/spec/web-junit.xml").is_file()


def test_hosts_or_inventory_exactly_one(project) -> None:
    project.standard()
    with pytest.raises(GoldsmithError, match="either --hosts"):
        hostspec.spec_hosts(project.root, "web")
    with pytest.raises(GoldsmithError, match="either --hosts"):
        hostspec.spec_hosts(project.root, "web", hosts="ssh://a@b", inventory=project.root / "x")
    with pytest.raises(GoldsmithError, match="--key: .*missing.pem does not exist"):
        hostspec.spec_hosts(
            project.root, "web", hosts="ssh://a@b", key=project.root / "missing.pem"
        )
