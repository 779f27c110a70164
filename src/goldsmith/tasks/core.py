"""The tasks every user starts with: setup, base, build, lint, test, bench."""

from __future__ import annotations

import os
import sys

from invoke import task

from .. import base as base_images
from .. import setup as system_setup
from ..catalogue import load
from ..paths import project_root
from . import user_errors


@task
@user_errors
def setup(c):
    """Install the system tools goldsmith needs (apt; needs root) and the pinned collections."""
    system_setup.ensure(project_root())


@task(help={"name": "base to build (a key of `bases` in images.yml); default: all built here"})
@user_errors
def base(c, name=None):
    """Build the local base image(s) from Debian's packages; cached by their definition's hash."""
    root = project_root()
    catalogue = load(root / "images.yml")
    names = [name] if name else [n for n, b in catalogue.bases.items() if b.kind == "debootstrap"]
    for n in names:
        if n not in catalogue.bases:
            raise_unknown = f"images.yml: bases: no base named {n!r} ({', '.join(catalogue.bases)})"
            from ..errors import GoldsmithError

            raise GoldsmithError(raise_unknown)
        system_setup.ensure(root)
        path = base_images.ensure(catalogue.bases[n], root)
        print(path.relative_to(root))


@task(
    help={
        "image": "image to bake (a key of `images` in images.yml); default: base",
        "target": "local (qcow2 on this machine), aws (AMIs) or twin (AMIs in a local moto)",
        "force": "rebake even when the inputs' fingerprint matches the last build",
    }
)
@user_errors
def build(c, image="base", target="local", force=False):
    """Bake an image: pre-flight, bake with Packer, prove with specs, seal, record the manifest."""
    from ..build import build as do_build

    manifest = do_build(project_root(), image, target=target, force=force)
    print(f"manifest: {manifest.relative_to(project_root())}")


@task
@user_errors
def lint(c):
    """yamllint, ansible-lint (production), ruff, packer fmt/validate, playbook syntax: no VM."""
    from ..lint import lint as do_lint

    do_lint(project_root())


@task(
    help={
        "fast": "unit tests only (seconds): no lint, no bake",
        "k": "only tests matching this pytest -k expression",
    }
)
@user_errors
def test(c, fast=False, k=None):
    """The whole suite: lint, unit tests, and real bakes (local image, AWS twin)."""
    root = project_root()
    if not fast:
        system_setup.ensure(root)
        lint(c)
    paths = ["tests/unit"] if fast else ["tests/unit", "tests/integration"]
    argv = [sys.executable, "-m", "pytest", *paths, "-v", "-rfEs", "--color=no"]
    if k:
        argv += ["-k", k]
    os.chdir(root)
    result = c.run(" ".join(argv), warn=True, pty=False)
    if result.exited != 0:
        from invoke import Exit

        raise Exit(f"tests failed (pytest exit code {result.exited})", code=result.exited)


@task(help={"image": "image to bake for the benchmark (default: base)"})
@user_errors
def bench(c, image="base"):
    """Benchmark a bake here: phases, shares, reuse and sizes, appended to bench/results.jsonl."""
    from ..bench import run

    run(project_root(), image)
