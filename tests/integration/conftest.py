"""Fixtures for real builds: throwaway projects that share the real project's base cache."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def qemu_processes(*projects: Path) -> list[str]:
    """Running qemu command lines; with `projects`, only those whose disks live in one of them."""
    out = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    return [line for line in lines if not projects or any(str(p) in line for p in projects)]


def invoke(root: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run goldsmith's tasks as a user would, in `root`; output is kept for the assertions."""
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(ROOT), *args],
        cwd=root,
        env={**os.environ, "GOLDSMITH_ROOT": str(root)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    sys.stdout.write(proc.stdout[-20000:])
    sys.stderr.write(proc.stderr[-5000:])
    return proc


@pytest.fixture(scope="session")
def proven_base() -> Iterator[Path]:
    """`./run build --image base` in the real project, for the whole suite: the dev loop's
    web VM and the base tests start from it. On a fresh clone it bakes; where base is
    already proven with the same inputs it is reused (the reuse is a test too).

    `./run test` runs two lanes, each a pytest session: a lane that needs base while the
    other lane bakes it waits for that bake (a lock held for the length of the build)
    instead of failing on the image's build lock, then reuses what it proved."""
    lock_path = ROOT / ".cache" / "test-proven-base.lock"
    lock_path.parent.mkdir(exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = invoke(ROOT, "build", "--image", "base")
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    yield ROOT / "build" / "base" / "local"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start from the proven base run last in their lane (in file order among
    themselves): in the lane that does not bake base, the one-role bakes run first while
    the other lane bakes it."""
    items.sort(key=lambda item: "proven_base" in getattr(item, "fixturenames", ()))


def vm_processes(*names: str) -> list[str]:
    """qemu processes of the real project's VMs called `names`.

    Matched by their state folder, not their name: another checkout running this suite
    at the same time has VMs with the same names.
    """
    from goldsmith import vm

    folders = [f"{vm.vms_dir(ROOT) / n}/" for n in names]
    return [p for p in qemu_processes() if any(f in p for f in folders)]


def copy_project(dest: Path) -> Path:
    """A copy of the project's catalogue, roles, playbooks, specs, Packer templates and
    AWS policy at
    `dest`, sharing the real project's .cache (the base disk is built once for the suite).
    The .cache folder is made first: the other lane may not have made it yet."""
    for name in ("images.yml", "roles", "playbooks", "packer", "tests/spec", "aws"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    (ROOT / ".cache").mkdir(exist_ok=True)
    (dest / ".cache").symlink_to(ROOT / ".cache")
    return dest


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A copy of the project to break on purpose (see copy_project)."""
    return copy_project(tmp_path)


def mini_aws(project: Path, layered: bool = False, share_with: tuple[str, ...] = ()) -> str:
    """The aws section a mini image gets for the twin target: the project's own `base`
    image's (its source filter, two regions so copies really happen, the SSM path); a
    layered image's without the source filter (its parent's AMI is its source)."""
    aws = yaml.safe_load((project / "images.yml").read_text())["images"]["base"]["aws"]
    aws["share_with"] = list(share_with)
    if layered:
        aws.pop("source_ami")
    return textwrap.indent(yaml.safe_dump({"aws": aws}, sort_keys=False), "    ")


def _add_one_role_image(
    project: Path,
    name: str,
    *,
    start: str,
    task: str,
    marker: str,
    spec_body: str,
    targets: tuple[str, ...],
    share_with: tuple[str, ...] = (),
) -> None:
    """Image `name` starting from `start` ("base: X" or "parent: Y"): role `name` writes
    `marker` to /etc/<name> (task `task`), with its spec and playbook; an aws section
    when a target needs one."""
    (project / f"roles/{name}/tasks").mkdir(parents=True)
    (project / f"roles/{name}/tasks/main.yml").write_text(
        f"---\n- name: {task}\n  ansible.builtin.copy:\n"
        f'    dest: /etc/{name}\n    content: "{marker}\\n"\n    mode: "0644"\n'
    )
    (project / f"playbooks/{name}.yml").write_text(
        f"---\n- name: {name.capitalize()}\n  hosts: all\n  become: true\n  roles: [{name}]\n"
    )
    (project / f"tests/spec/{name}").mkdir(parents=True)
    (project / f"tests/spec/{name}/test_{name}.py").write_text(spec_body)
    entry = (
        f"\nimages:\n  {name}:\n    {start}\n    playbook: playbooks/{name}.yml\n"
        f"    targets: [{', '.join(targets)}]\n"
    )
    if {"twin", "aws"} & set(targets):
        entry += mini_aws(project, layered=start.startswith("parent:"), share_with=share_with)
    text = (project / "images.yml").read_text()
    (project / "images.yml").write_text(text.replace("\nimages:\n", entry, 1))


def add_mini_image(project: Path, spec_body: str, targets: tuple[str, ...] = ("local",)) -> None:
    """A one-role image that bakes in about a minute, for tests of the bake's failure paths.

    With "twin" (or "aws") in `targets` it also gets an aws section.
    """
    _add_one_role_image(
        project,
        "mini",
        start="base: debian12",
        task="Write the marker file",
        marker="hello",
        spec_body=spec_body,
        targets=targets,
    )


KID_SPEC = (
    "def test_kid_marker(host):\n    assert host.file('/etc/kid').content_string == 'layered\\n'\n"
)


def add_kid_image(
    project: Path, targets: tuple[str, ...] = ("local",), share_with: tuple[str, ...] = ()
) -> None:
    """`kid`, layered on `mini` (add_mini_image first): one role writing /etc/kid, and its
    spec. mini's spec runs on kid too, so kid is proven whole. `share_with`: the accounts
    its AMI is shared with (aws targets)."""
    _add_one_role_image(
        project,
        "kid",
        start="parent: mini",
        task="Write the layer's marker file",
        marker="layered",
        spec_body=KID_SPEC,
        targets=targets,
        share_with=share_with,
    )


def runnable(project: Path) -> Path:
    """Give a scratch project the real one's `./run` and `.venv`, as buildspec.yml calls
    them: `./run` runs goldsmith's tasks with the scratch project as the root."""
    run = project / "run"
    run.write_text(
        "#!/bin/sh\n"
        'cd "$(dirname "$0")"\n'
        f'GOLDSMITH_ROOT="$PWD" exec {sys.executable} -m invoke -r {ROOT} "$@"\n'
    )
    run.chmod(0o755)
    (project / ".venv").symlink_to(ROOT / ".venv")
    return project


@pytest.fixture
def twin_project(tmp_path: Path) -> Iterator[Path]:
    """The project's catalogue, roles, playbooks and aws/ (CI stack and policy) in a
    temporary project with a twin of its own (the bakes' twin is never touched)."""
    from goldsmith.aws import twin

    for name in ("images.yml", "roles", "playbooks", "aws"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    twin.up(tmp_path)
    yield tmp_path
    twin.down(tmp_path)


def twin_cli(root: Path, region: str, *args: str, as_root: bool = False) -> dict:
    """The AWS CLI pointed at `root`'s twin, as a user runs it: as a build's identity (the
    project's aws/policy.json), or as the twin's account root; parsed JSON."""
    from goldsmith.aws import twin
    from goldsmith.paths import venv_bin

    who = {**twin.FAKE_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"} if as_root else {}
    env = {**os.environ, **twin.env(root, region), **who}
    out = subprocess.run(
        [venv_bin("aws"), "--endpoint-url", twin.endpoint(root), "--region", region]
        + ["--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"aws {' '.join(args)}: {out.stderr}"
    return json.loads(out.stdout)
