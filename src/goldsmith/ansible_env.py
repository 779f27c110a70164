"""How goldsmith runs Ansible: the environment every ansible-playbook run gets.

Bakes, the dev loop and specs against any host all run Ansible the same way, so this
sits below all of them (it imports nothing of goldsmith's). ansible.cfg at the project
root says the same for a plain `ansible-playbook` run without goldsmith.
"""

from __future__ import annotations

from pathlib import Path

# Third-party roles and collections (goldsmith.requirements): committed for air-gapped
# builds in vendor/, else installed (not committed) in .galaxy/.
VENDOR_DIR = "vendor"
INSTALLED_DIR = ".galaxy"


def third_party_dir(root: Path) -> Path:
    """Where the project's third-party content is: vendor/ when it exists, else .galaxy/."""
    vendored = root / VENDOR_DIR
    return vendored if vendored.is_dir() else root / INSTALLED_DIR


def roles_path(root: Path) -> list[Path]:
    """The project's roles first, then the pinned standalone roles."""
    return [root / "roles", third_party_dir(root) / "roles"]


def collections_path(root: Path) -> Path:
    return third_party_dir(root) / "collections"


def ansible_env(root: Path) -> dict[str, str]:
    """The project's roles and pinned collections only (none from the Python install);
    no host key prompts, no colour, pipelining."""
    return {
        "ANSIBLE_ROLES_PATH": ":".join(str(p) for p in roles_path(root)),
        "ANSIBLE_COLLECTIONS_PATH": str(collections_path(root)),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
        "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
        "ANSIBLE_PIPELINING": "True",
    }
