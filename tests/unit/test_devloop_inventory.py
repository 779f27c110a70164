"""The dev VM's inventory: every play of the image's playbook selects the VM.

Checked with Ansible's own inventory manager, as ansible-playbook would select hosts,
on the inventory file the dev loop writes (no VM is booted: its address is only data).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader

from goldsmith import devloop, vm
from goldsmith.roles import resolve

PLAYS = [
    "web",
    "web:&prod",
    "prod:!canary",
    "db,cache",
    "web[0]",
    "all",
    "dev-*",  # a wildcard that names the VM itself
]


def dev_vm(folder: Path) -> devloop.DevVM:
    machine = vm.VM(name="dev-web", dir=folder, image="base.qcow2", ssh_port=2222)
    return devloop.DevVM(machine, "web")


def test_every_play_selects_the_dev_vm(project, tmp_path: Path) -> None:
    project.standard()
    plays = [{"name": f"Play {p}", "hosts": p, "roles": ["common"]} for p in PLAYS]
    project.write("playbooks/web.yml", yaml.safe_dump(plays, sort_keys=False))
    role_map = resolve(project.root / "playbooks/web.yml", project.root)
    assert devloop.play_groups(role_map) == ["web", "prod", "db", "cache"]

    path = devloop.write_inventory(dev_vm(tmp_path), role_map)
    inventory = InventoryManager(DataLoader(), sources=[str(path)])
    selected = {p: [h.name for h in inventory.get_hosts(p)] for p in PLAYS}
    assert selected == {p: ["dev-web"] for p in PLAYS}
    host = inventory.get_host("dev-web").vars
    assert (host["ansible_host"], host["ansible_port"]) == ("127.0.0.1", 2222)
    assert host["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    # An excluded group is not one the VM joins, or `prod:!canary` would skip it.
    assert "canary" not in inventory.groups
