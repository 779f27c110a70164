"""The role developer's loop (up, converge, verify, idempotence, login, down) and `spec`.

Thin: arguments in, goldsmith.dev does the work.
"""

from __future__ import annotations

import os
from pathlib import Path

from invoke import task

from .. import dev as dev_loop
from ..paths import project_root
from .common import user_errors

IMAGE_HELP = "image (a key of `images` in images.yml); default: the only dev VM up"
NAME_HELP = "dev VM name (default: dev-<image>)"


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


@task(
    help={
        "image": "image whose base the dev VM boots (a key of `images` in images.yml)",
        "name": NAME_HELP,
    }
)
@user_errors
def up(c, image, name=None):
    """Boot a dev VM from the image's base and keep it running (SSH, ports 80 and 9100)."""
    dev = dev_loop.up(project_root(), image, name)
    print(f"{dev.name}: {dev.machine.url()} (key {dev.machine.key})")


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def converge(c, image=None, name=None):
    """Run the image's playbook against its dev VM (no rebuild: seconds over Ansible's time)."""
    dev_loop.converge(project_root(), image, name)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def verify(c, image=None, name=None):
    """Run the specs of the image's roles against its dev VM; JUnit in build/dev/."""
    dev_loop.verify(project_root(), image, name)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def idempotence(c, image=None, name=None):
    """Converge again and fail listing every task that changed.

    Tasks tagged molecule-idempotence-notest or goldsmith-idempotence-notest are exempt.
    """
    dev_loop.idempotence(project_root(), image, name)


@task(
    help={
        "image": IMAGE_HELP,
        "name": NAME_HELP,
        "command": "run this command on the VM instead of opening a shell",
    }
)
@user_errors
def login(c, image=None, name=None, command=None):
    """Open an SSH session on the dev VM (as the goldsmith user, with sudo)."""
    argv = dev_loop.login_argv(dev_loop.find(project_root(), image, name), command)
    os.execvp(argv[0], argv)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def down(c, image=None, name=None):
    """Stop the dev VM and remove its state."""
    if not dev_loop.down(project_root(), image, name):
        print("no such dev VM: nothing to stop")


@task(
    auto_shortflags=False,  # -h would shadow --help
    help={
        "image": "image whose roles' specs run (a key of `images` in images.yml)",
        "hosts": "ssh://user@host[:port], comma-separated for several; every role applies",
        "inventory": "an Ansible inventory: each play's hosts pattern picks its hosts",
        "key": "SSH private key (hosts without ansible_ssh_private_key_file)",
        "sudo": "run the checks with sudo (default); --no-sudo to run as the SSH user",
        "junit": "JUnit file to write (default: build/spec/<image>-junit.xml)",
    },
)
@user_errors
def spec(c, image, hosts=None, inventory=None, key=None, sudo=True, junit=None):
    """Run the specs of an image's roles against any reachable host (drift check)."""
    dev_loop.spec_hosts(
        project_root(),
        image,
        hosts=hosts,
        inventory=_path(inventory),
        key=_path(key),
        sudo=sudo,
        junit=_path(junit),
    )
