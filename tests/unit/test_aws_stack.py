"""The CI stack: aws/ci-stack.yml rendered with aws/policy.json, linted, deployed on moto.

moto's CloudFormation creates what it models (IAM roles and managed policies, the S3
bucket with its encryption, the log group, the SNS topic, the EventBridge rule, the KMS
key and alias) and skips, with a warning, what it does not: AWS::CodeBuild::Project,
AWS::S3::BucketPolicy and AWS::SNS::TopicPolicy. Nothing here asserts on those; cfn-lint
checks them against CloudFormation's own schemas instead.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from goldsmith.aws import stack
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError
from goldsmith.paths import venv_bin

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
# moto warns about each resource type it skips (see the module's docstring).
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS::")


def project(tmp_path: Path, policy: dict | None = None) -> Path:
    """A project with the real template, images.yml, roles and playbooks, and either the
    real aws/policy.json or `policy`."""
    for name in ("images.yml", "roles", "playbooks"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "aws").mkdir()
    shutil.copy(ROOT / stack.TEMPLATE, tmp_path / stack.TEMPLATE)
    if policy is None:
        shutil.copy(ROOT / stack.POLICY, tmp_path / stack.POLICY)
    else:
        (tmp_path / stack.POLICY).write_text(json.dumps(policy))
    return tmp_path


def test_render_inserts_exactly_the_policy_file_once() -> None:
    rendered = stack.render(ROOT)
    policy = json.loads((ROOT / stack.POLICY).read_text())
    assert rendered["Resources"][stack.POLICY_RESOURCE]["Properties"]["PolicyDocument"] == policy
    # The template itself holds no copy: only the placeholder, and it is gone once rendered.
    text = (ROOT / stack.TEMPLATE).read_text()
    assert text.count(stack.PLACEHOLDER) == 1
    assert stack.PLACEHOLDER not in json.dumps(rendered)
    # Everything else is the template as written (short-form functions in long form).
    role = rendered["Resources"]["BuildRole"]
    assert role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"][0] == {
        "Fn::GetAtt": ["ArtifactBucket", "Arn"]
    }
    assert rendered["Resources"][stack.POLICY_RESOURCE]["Properties"]["Roles"] == [
        {"Ref": "BuildRole"}
    ]


def test_a_missing_or_wrong_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    root = project(tmp_path, policy={"Statement": []})
    with pytest.raises(GoldsmithError, match="aws/policy.json: not an IAM policy document"):
        stack.render(root)
    (root / stack.POLICY).unlink()
    with pytest.raises(GoldsmithError, match="aws/policy.json: missing"):
        stack.render(root)


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv_bin("cfn-lint"), "--", str(path)], capture_output=True, text=True, check=False
    )


def test_cfn_lint_is_clean_on_the_rendered_template_and_fails_on_a_warning(
    tmp_path: Path,
) -> None:
    clean = stack.write_rendered(ROOT, tmp_path / "ci.json")
    proc = cfn_lint(clean)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A warning (an unused parameter, W2001) fails the check too.
    template = json.loads(clean.read_text())
    template["Parameters"]["Unused"] = {"Type": "String", "Default": "x"}
    warned = tmp_path / "warned.json"
    warned.write_text(json.dumps(template))
    proc = cfn_lint(warned)
    assert proc.returncode != 0 and "W2001" in proc.stdout


def test_deploy_creates_what_moto_models(tmp_path: Path, aws: Aws) -> None:
    root = project(tmp_path)
    done = stack.deploy(
        aws, REGION, "goldsmith-ci", root, stack.catalogue_parameters(root), poll_s=0.05
    )
    assert (done.action, done.status) == ("created", "CREATE_COMPLETE")
    out = done.outputs
    # The build role has aws/policy.json attached as a managed policy, and the basics.
    iam = aws.client("iam", REGION)
    role = out["BuildRoleArn"].rsplit("/", 1)[1]
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    documents = []
    for p in attached:
        version = iam.get_policy(PolicyArn=p["PolicyArn"])["Policy"]["DefaultVersionId"]
        doc = iam.get_policy_version(PolicyArn=p["PolicyArn"], VersionId=version)
        documents.append(doc["PolicyVersion"]["Document"])
    assert json.loads((root / stack.POLICY).read_text()) in documents
    assert len(attached) == 2  # the build policy and CodeBuild's basics
    trust = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "codebuild.amazonaws.com"}
    # The pull requests' role has the basics only: it cannot bake.
    validation = out["ValidationRoleArn"].rsplit("/", 1)[1]
    assert [
        p["PolicyName"]
        for p in iam.list_attached_role_policies(RoleName=validation)["AttachedPolicies"]
    ] == [a["PolicyName"] for a in attached if "BuildPolicy" not in a["PolicyName"]]
    # The artifact bucket is encrypted.
    s3 = aws.client("s3", REGION)
    rules = s3.get_bucket_encryption(Bucket=out["ArtifactBucketName"])[
        "ServerSideEncryptionConfiguration"
    ]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # The log group keeps logs for the template's retention.
    logs = aws.client("logs", REGION)
    groups = logs.describe_log_groups(logGroupNamePrefix=out["BuildLogGroupName"])["logGroups"]
    assert [(g["logGroupName"], g["retentionInDays"]) for g in groups] == [
        ("/aws/codebuild/goldsmith-ci", 90)
    ]
    # The topic exists and the rule routes the projects' finished builds to it.
    sns = aws.client("sns", REGION)
    assert out["BuildResultsTopicArn"] in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    events = aws.client("events", REGION)
    (rule,) = events.list_rules()["Rules"]
    pattern = json.loads(rule["EventPattern"])
    assert pattern["detail"]["build-status"] == ["SUCCEEDED", "FAILED", "STOPPED"]
    assert pattern["detail"]["project-name"] == ["goldsmith-ci-pr", "goldsmith-ci-main"]
    targets = events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    assert [t["Arn"] for t in targets] == [out["BuildResultsTopicArn"]]
    # The AMI key behind images.yml's alias; shared accounts may use it.
    kms = aws.client("kms", REGION)
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    key_id = aliases["alias/goldsmith-ami"]
    assert out["ImageKeyArn"].endswith(key_id)
    policy = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
    # moto keeps a key policy made by CloudFormation as the template's object, not JSON.
    policy = json.loads(policy) if isinstance(policy, str) else policy
    principals = [s["Principal"]["AWS"] for s in policy["Statement"]]
    assert principals == ["arn:aws:iam::123456789012:root", ["111122223333"]]


def test_other_regions_get_the_key_only_and_a_redeploy_changes_nothing(
    tmp_path: Path, aws: Aws
) -> None:
    root = project(tmp_path)
    params = stack.catalogue_parameters(root)
    regions = stack.image_regions(root)
    assert regions == ["eu-west-1", "eu-central-1"]
    first = stack.deploy_all(lambda _r: aws, regions, "goldsmith-ci", root, params)
    assert [(d.region, d.action) for d in first] == [
        ("eu-west-1", "created"),
        ("eu-central-1", "created"),
    ]
    assert set(first[1].outputs) == {"ImageKeyArn", "ImageKeyAlias"}
    # IAM is global: the roles were made once, by the build region's stack.
    assert len(aws.client("iam", REGION).list_roles()["Roles"]) == 2
    again = stack.deploy_all(lambda _r: aws, regions, "goldsmith-ci", root, params)
    assert [d.action for d in again] == ["unchanged", "unchanged"]
    assert again[0].outputs == first[0].outputs


def test_a_failing_create_is_a_clear_error(tmp_path: Path, aws: Aws) -> None:
    # IAM refuses the policy (an action without its service prefix). On AWS the stack
    # rolls back and its events name the resource; moto refuses it within CreateStack.
    root = project(
        tmp_path,
        policy={
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "DescribeImages", "Resource": "*"}],
        },
    )
    with pytest.raises(stack.StackError) as err:
        stack.deploy(aws, REGION, "goldsmith-ci", root, {"BuildRegion": REGION}, poll_s=0.05)
    assert "stack goldsmith-ci in eu-west-1: create refused" in str(err.value)
    assert "MalformedPolicyDocument" in str(err.value)


class _Events:
    """describe_stack_events as CloudFormation answers it (newest first), for the part of a
    failed create moto does not model: a rollback whose events name the failed resources."""

    def __init__(self, events: list[dict]) -> None:
        self.events = events

    def get_paginator(self, _name: str) -> _Events:
        return self

    def paginate(self, **_kwargs: str) -> list[dict]:
        return [{"StackEvents": list(reversed(copy.deepcopy(self.events)))}]


def test_a_rolled_back_create_names_each_failed_resource_and_its_reason() -> None:
    def event(t: int, logical: str, status: str, reason: str = "") -> dict:
        return {
            "EventId": f"e{t}",
            "Timestamp": t,
            "StackName": "goldsmith-ci",
            "LogicalResourceId": logical,
            "ResourceType": "AWS::IAM::ManagedPolicy" if logical == "BuildPolicy" else "AWS::X",
            "ResourceStatus": status,
            "ResourceStatusReason": reason,
        }

    cfn = _Events(
        [
            event(1, "goldsmith-ci", "CREATE_IN_PROGRESS", "User Initiated"),
            event(2, "BuildPolicy", "CREATE_FAILED", "MalformedPolicyDocument: bad action"),
            event(3, "ArtifactBucket", "CREATE_FAILED", "Resource creation cancelled"),
            event(4, "goldsmith-ci", "ROLLBACK_COMPLETE"),
        ]
    )
    assert stack._failures(cfn, "id", since=None) == (
        "BuildPolicy (AWS::IAM::ManagedPolicy): MalformedPolicyDocument: bad action"
    )
    # Events of an earlier deployment are not this one's failures.
    assert stack._failures(cfn, "id", since=2) == ""
