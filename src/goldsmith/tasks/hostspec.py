"""`spec`: the specs of an image's roles against any reachable host.

Thin: arguments in, goldsmith.hostspec does the work.
"""

from __future__ import annotations

from pathlib import Path

from invoke import task

from ..catalogue import load
from ..paths import project_root
from .common import require_image, user_errors


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


@task(
    auto_shortflags=False,  # -h would shadow --help
    help={
        "image": "image whose roles' specs run (a key of `images` in images.yml; required)",
        "hosts": "[ssh://][user@]host[:port] ([::1] for IPv6), comma-separated; every role applies",
        "inventory": "an Ansible inventory: each play's hosts pattern picks its hosts",
        "key": "SSH private key (hosts without ansible_ssh_private_key_file)",
        "sudo": "run the checks with sudo (default); --no-sudo to run as the SSH user",
        "junit": "JUnit file to write (default: build/spec/<image>-junit.xml)",
    },
)
@user_errors
def spec(c, image=None, hosts=None, inventory=None, key=None, sudo=True, junit=None):
    """Run the specs of an image's roles against any reachable host (drift check)."""
    # Imported here: it loads Ansible, which `./run --list` and `--help` do not need.
    from .. import hostspec

    root = project_root()
    hostspec.run(
        root,
        require_image(load(root / "images.yml"), image, "spec"),
        hosts=hosts,
        inventory=_path(inventory),
        key=_path(key),
        sudo=sudo,
        junit=_path(junit),
    )
