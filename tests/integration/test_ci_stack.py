"""`./run ci.deploy --target twin` as a user runs it, checked with the AWS CLI (seconds).

The twin is started for this test in a project of its own (not the repository's .cache),
so a twin the bakes use is never touched. moto's CloudFormation skips what it does not
model (the CodeBuild projects, the bucket and topic policies); the test checks the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, invoke

from goldsmith.aws import twin
from goldsmith.paths import venv_bin

pytestmark = [pytest.mark.twin]


@pytest.fixture
def ci_project(tmp_path: Path) -> Iterator[Path]:
    """The project's catalogue, roles, playbooks and aws/ (template and policy), with a
    twin of its own."""
    for name in ("images.yml", "roles", "playbooks", "aws"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    twin.up(tmp_path)
    yield tmp_path
    twin.down(tmp_path)


def aws_cli(root: Path, region: str, *args: str) -> dict:
    """The AWS CLI pointed at the twin as its account's root (who deployed the stack;
    `twin.env` is a build's identity, which may not read CloudFormation); parsed JSON."""
    env = {**os.environ, **twin.FAKE_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}
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


def test_ci_deploy_on_the_twin_creates_the_stack(ci_project: Path) -> None:
    proc = invoke(ci_project, "ci.deploy", "--target", "twin", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "goldsmith-ci in eu-west-1: created (CREATE_COMPLETE)" in proc.stdout
    assert "goldsmith-ci in eu-central-1: created (CREATE_COMPLETE)" in proc.stdout

    (found,) = aws_cli(ci_project, "eu-west-1", "cloudformation", "describe-stacks",
                       "--stack-name", "goldsmith-ci")["Stacks"]  # fmt: skip
    assert found["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in found["Outputs"]}
    role = outputs["BuildRoleArn"].rsplit("/", 1)[1]
    assert (
        aws_cli(ci_project, "eu-west-1", "iam", "get-role", "--role-name", role)["Role"]["Arn"]
        == (outputs["BuildRoleArn"])
    )
    buckets = aws_cli(ci_project, "eu-west-1", "s3api", "list-buckets")["Buckets"]
    assert outputs["ArtifactBucketName"] in [b["Name"] for b in buckets]
    topics = aws_cli(ci_project, "eu-west-1", "sns", "list-topics")["Topics"]
    assert outputs["BuildResultsTopicArn"] in [t["TopicArn"] for t in topics]
    # The image's other region has the key behind images.yml's alias.
    aliases = aws_cli(ci_project, "eu-central-1", "kms", "list-aliases")["Aliases"]
    assert "alias/goldsmith-ami" in [a["AliasName"] for a in aliases]

    # Deploying again changes nothing and is no error.
    again = invoke(ci_project, "ci.deploy", "--target", "twin", timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "goldsmith-ci in eu-west-1: unchanged" in again.stdout
