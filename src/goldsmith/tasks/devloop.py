"""The role developer's loop: up, converge, verify, idempotence, login, down.

Thin: arguments in, goldsmith.devloop does the work.
"""

from __future__ import annotations

import os

from invoke import task

from .. import devloop
from ..catalogue import load
from ..paths import project_root
from .common import require_image, settings, user_errors

IMAGE_HELP = "image (a key of `images` in images.yml); default: the only dev VM up"
NAME_HELP = "dev VM name (default: dev-<image>)"


@task(
    help={
        "image": "image whose base the dev VM boots (a key of `images` in images.yml; required)",
        "name": NAME_HELP,
    }
)
@user_errors
def up(c, image=None, name=None):
    """Boot a dev VM from the image's base and keep it running (SSH, ports 80 and 9100)."""
    root = project_root()
    dev = devloop.up(root, require_image(load(root / "images.yml"), image, "up"), name)
    print(f"{dev.name}: {dev.machine.url()} (key {dev.machine.key})")


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def converge(c, image=None, name=None):
    """Run the image's playbook against its dev VM (no rebuild: seconds over Ansible's time)."""
    devloop.converge(project_root(), image, name, strategy=settings(c).ansible_strategy)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def verify(c, image=None, name=None):
    """Run the specs of the image's roles against its dev VM; JUnit in build/dev/."""
    devloop.verify(project_root(), image, name)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def idempotence(c, image=None, name=None):
    """Converge again and fail listing every task that changed.

    Tasks tagged molecule-idempotence-notest or goldsmith-idempotence-notest are exempt.
    """
    devloop.idempotence(project_root(), image, name, strategy=settings(c).ansible_strategy)


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
    argv = devloop.login_argv(devloop.find(project_root(), image, name), command)
    os.execvp(argv[0], argv)


@task(help={"image": IMAGE_HELP, "name": NAME_HELP})
@user_errors
def down(c, image=None, name=None):
    """Stop the dev VM and remove its state."""
    if not devloop.down(project_root(), image, name):
        print("no such dev VM: nothing to stop")
