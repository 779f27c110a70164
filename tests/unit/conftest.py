"""Throwaway goldsmith projects, written into tmp_path by each test; an in-process moto."""

from __future__ import annotations

import functools
import json
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from moto import mock_aws

from goldsmith.aws import twin_moto
from goldsmith.aws.clients import Aws
from goldsmith.aws.twin import DEBIAN_OWNER, seeded_amis

T = TypeVar("T")

# Amazon's images the in-process moto keeps (tests take "the newest of Amazon's").
SMALL_AMAZON_AMIS = 8

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# A valid catalogue for the project `Project.standard()` writes; tests break one thing in it.
CATALOGUE = """\
bases:
  debian12:
    kind: debootstrap
    suite: bookworm
    mirror: http://deb.debian.org/debian
    disk_size: 4G
  jammy:
    kind: cloud-image
    url: https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img
    checksum: file:https://cloud-images.ubuntu.com/jammy/current/SHA256SUMS

images:
  base:
    base: debian12
    playbook: playbooks/base.yml
    targets: [local, aws, twin]
    aws: &aws
      source_ami:
        owners: ["136693071363"]
        name: "debian-12-amd64-*"
      ssh_username: admin
      instance_type: t3.small
      regions: [eu-west-1, eu-central-1]
      share_with: []
      ssm_parameter: /goldsmith/{image}/latest
      encrypt_boot: true
      kms_key_id: ""
      spot: false
  web:
    base: debian12
    playbook: playbooks/web.yml
    targets: [local, aws, twin]
    aws:
      <<: *aws
      share_with: ["111122223333"]
      kms_key_id: alias/goldsmith-ami
  lab:
    base: jammy
    playbook: playbooks/base.yml
    targets: [local]
"""

PLAY = """\
- name: {name}
  hosts: all
  become: true
  roles:
{roles}
"""


class Project:
    """A goldsmith project in a temporary folder: catalogue, playbooks, roles, specs."""

    # Tests reach these through the fixture: importing conftest would clash with other suites'.
    CATALOGUE = CATALOGUE
    REAL_ROOT = PROJECT_ROOT

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def role(
        self,
        name: str,
        tasks: str | None = None,
        deps: tuple[str, ...] = (),
        spec: bool = True,
        defaults: str | None = None,
    ) -> Path:
        """A role with a task (or `tasks`), meta dependencies `deps`, and a spec if `spec`."""
        role = self.root / "roles" / name
        self.write(
            f"roles/{name}/tasks/main.yml",
            tasks or f"- name: Say {name}\n  ansible.builtin.debug:\n    msg: {name}\n",
        )
        if deps:
            self.write(
                f"roles/{name}/meta/main.yml",
                "dependencies:\n" + "".join(f"  - role: {d}\n" for d in deps),
            )
        if defaults is not None:
            self.write(f"roles/{name}/defaults/main.yml", defaults)
        if spec:
            self.write(f"tests/spec/{name}/test_{name}.py", "def test_it(host):\n    assert host\n")
        return role

    def playbook(self, name: str, *roles: str, text: str | None = None) -> Path:
        """playbooks/<name>.yml applying `roles` in one play (or the given `text`)."""
        body = text or PLAY.format(name=name, roles="".join(f"    - {r}\n" for r in roles))
        return self.write(f"playbooks/{name}.yml", body)

    def catalogue(self, text: str = CATALOGUE) -> Path:
        return self.write("images.yml", text)

    def standard(self) -> Project:
        """Roles, playbooks and catalogue for which CATALOGUE is valid."""
        self.role("common")
        self.role("nginx", deps=("common",))
        self.playbook("base", "common")
        self.playbook("web", "nginx")
        self.catalogue()
        return self

    def line(self, rel: str, needle: str, nth: int = 1) -> int:
        """The 1-based line number of the `nth` line of `rel` containing `needle`."""
        text = (self.root / rel).read_text().splitlines()
        hits = [i for i, line in enumerate(text, 1) if needle in line]
        assert len(hits) >= nth, f"{needle!r} is not {nth} times in {rel}"
        return hits[nth - 1]

    def lint_config(self) -> None:
        """The real project's lint configuration, so tests prove that configuration."""
        for name in (".yamllint", ".ansible-lint"):
            shutil.copy(PROJECT_ROOT / name, self.root / name)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _shared_botocore_models() -> Iterator[None]:
    """botocore reads its JSON models (EC2's runs to megabytes) afresh for every session,
    and goldsmith makes one per `Aws`: hundreds per worker. The sessions' loaders share
    one cache here, as one session's clients share theirs; every model is still
    botocore's own, read once per worker."""
    import botocore.loaders
    import botocore.session

    caches: dict[str | None, dict[Any, Any]] = {}

    def create_loader(search_path_string: str | None = None) -> botocore.loaders.Loader:
        loader = botocore.loaders.create_loader(search_path_string)
        loader._cache = caches.setdefault(search_path_string, {})
        return loader

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(botocore.session, "create_loader", create_loader)
        yield


@pytest.fixture(scope="session")
def _small_ami_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """moto loads its whole public AMI catalogue into every region a test touches (seconds
    each); the unit tests need a few of Amazon's images and the Debian seeds, so moto gets
    the twin's catalogue cut down to those, as the twin itself gets it: $MOTO_AMIS_PATH."""
    import moto.ec2.models.amis as moto_amis

    amis = seeded_amis()
    small = [a for a in amis if a.get("owner_id") != DEBIAN_OWNER][:SMALL_AMAZON_AMIS]
    small += [a for a in amis if a.get("owner_id") == DEBIAN_OWNER]
    path = tmp_path_factory.mktemp("moto") / "amis.json"
    path.write_text(json.dumps(small))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_AMIS_PATH", str(path))
        # A copy: moto parses the dates in place, and the twin's seeds must stay JSON.
        mp.setattr(moto_amis, "AMIS", json.loads(path.read_text()))
        # moto answering as the twin's does: encrypted, tagged copies (see twin_moto).
        twin_moto.install(functools.partial(mp.setattr, raising=False))  # (some are new)
        yield


def _fake_aws_environment(mp: pytest.MonkeyPatch) -> None:
    mp.delenv("AWS_ENDPOINT_URL", raising=False)
    mp.delenv("AWS_PROFILE", raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, _small_ami_catalogue: None) -> Iterator[Aws]:
    """In-process moto: every boto3 call the package makes, against a fresh fake AWS."""
    _fake_aws_environment(monkeypatch)
    with mock_aws():
        yield Aws()


@pytest.fixture(scope="session")
def moto_once(_small_ami_catalogue: None) -> Callable[[Callable[[Aws], T]], tuple[Any, T]]:
    """`moto_once(make)`: run `make(aws)` once in a fresh in-process moto of its own and
    return (moto's state then, what `make` returned). A module makes its shared AWS state
    so (builds, say) and each test takes a fresh copy of it with
    `aws_builds.restore_moto_state` after `aws` started its moto."""
    from aws_builds import moto_state

    def once(make: Callable[[Aws], T]) -> tuple[Any, T]:
        with pytest.MonkeyPatch.context() as mp:
            _fake_aws_environment(mp)
            with mock_aws():
                made = make(Aws())
                return moto_state(), made

    return once


@pytest.fixture
def as_policy(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], Aws]:
    """An `Aws` signed as a new IAM user whose only policy is the given document, with
    moto enforcing IAM (as the twin's server does); `aws` stays the account's root."""
    from moto import settings

    iam = aws.client("iam", "us-east-1")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    made: list[int] = []

    def principal(document: dict[str, Any]) -> Aws:
        name = f"builder-{len(made)}"
        made.append(1)
        arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))["Policy"]
        iam.create_user(UserName=name)
        iam.attach_user_policy(UserName=name, PolicyArn=arn["Arn"])
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Aws(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])

    return principal


@pytest.fixture
def repo_policy() -> Callable[..., dict[str, Any]]:
    """aws/policy.json as a document, less one action when `without=` names one."""
    return _repository_policy


def _repository_policy(without: str = "") -> dict[str, Any]:
    document = json.loads((PROJECT_ROOT / "aws" / "policy.json").read_text())
    for statement in document["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        statement["Action"] = [a for a in actions if a != without]
    document["Statement"] = [s for s in document["Statement"] if s["Action"]]
    return document
