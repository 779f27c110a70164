"""`./run ci.deploy --target twin` as a user runs it, checked with the AWS CLI (seconds).

The twin is started for this test in a project of its own (not the repository's .cache),
so a twin the bakes use is never touched. moto's CloudFormation skips what it does not
model (the CodeBuild projects, the bucket and topic policies); the test checks the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import invoke, twin_cli

pytestmark = [pytest.mark.twin]


def test_ci_deploy_on_the_twin_creates_the_stack(twin_project: Path) -> None:
    proc = invoke(twin_project, "ci.deploy", "--target", "twin", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "goldsmith-ci in eu-west-1: created (CREATE_COMPLETE)" in proc.stdout
    assert "goldsmith-ci in eu-central-1: created (CREATE_COMPLETE)" in proc.stdout

    def cli(region: str, *args: str) -> dict:
        # As the twin's root, who deployed the stack (a build's identity may not read it).
        return twin_cli(twin_project, region, *args, as_root=True)

    (found,) = cli(
        "eu-west-1", "cloudformation", "describe-stacks", "--stack-name", "goldsmith-ci"
    )["Stacks"]
    assert found["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in found["Outputs"]}
    role = outputs["BuildRoleArn"].rsplit("/", 1)[1]
    assert (
        cli("eu-west-1", "iam", "get-role", "--role-name", role)["Role"]["Arn"]
        == (outputs["BuildRoleArn"])
    )
    buckets = cli("eu-west-1", "s3api", "list-buckets")["Buckets"]
    assert outputs["ArtifactBucketName"] in [b["Name"] for b in buckets]
    topics = cli("eu-west-1", "sns", "list-topics")["Topics"]
    assert outputs["BuildResultsTopicArn"] in [t["TopicArn"] for t in topics]
    # The image's other region has the key behind images.yml's alias.
    aliases = cli("eu-central-1", "kms", "list-aliases")["Aliases"]
    assert "alias/goldsmith-ami" in [a["AliasName"] for a in aliases]

    # Deploying again changes nothing and is no error.
    again = invoke(twin_project, "ci.deploy", "--target", "twin", timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "goldsmith-ci in eu-west-1: unchanged" in again.stdout
