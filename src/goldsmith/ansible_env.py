"""How goldsmith runs Ansible: the environment every ansible-playbook run gets.

Bakes, the dev loop and specs against any host all run Ansible the same way, so this
sits below all of them (it imports nothing of goldsmith's).
"""

from __future__ import annotations

from pathlib import Path


def ansible_env(root: Path) -> dict[str, str]:
    """The project's roles and collections; no host key prompts, no colour, pipelining."""
    return {
        "ANSIBLE_ROLES_PATH": str(root / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(root / ".ansible" / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s "
        "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
        "ANSIBLE_PIPELINING": "True",
    }
