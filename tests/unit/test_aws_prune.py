"""goldsmith.aws.prune: old builds retired in every region, never one in use (moto)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_builds import (
    CENTRAL,
    REGIONS,
    WEST,
    bake_and_publish,
    model_deprecation,
    provenance,
    restore_moto_state,
    snapshot_exists,
    snapshots,
)

from goldsmith.aws import amis, prune, ssm
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

DAYS = [1, 2, 3, 4, 5]  # five builds, one a day; the 5th is the newest


@pytest.fixture
def deprecations(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    return model_deprecation(monkeypatch)


@pytest.fixture(scope="module")
def _baked(moto_once: Callable[..., Any]) -> tuple[Any, dict[int, dict[str, str]]]:
    """The five builds, baked and published once for the module (moto's state kept)."""
    return moto_once(lambda aws: {day: bake_and_publish(aws, day) for day in DAYS})


@pytest.fixture
def builds(aws: Aws, _baked: tuple[Any, dict[int, dict[str, str]]]) -> dict[int, dict[str, str]]:
    """Five proven, published web builds: {day: {region: AMI}}, in this test's moto."""
    state, builds = _baked
    restore_moto_state(state)
    return copy.deepcopy(builds)


def launch_template(aws: Aws, region: str, ami_id: str, name: str = "web-lt") -> str:
    """A launch template whose second (not default) version names `ami_id`."""
    ec2 = aws.ec2(region)
    other = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    lt = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": other})
    ec2.create_launch_template_version(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": ami_id}
    )
    return str(lt["LaunchTemplate"]["LaunchTemplateId"])


def verdicts(aws: Aws, rules: prune.Rules) -> dict[int, prune.Verdict]:
    found = prune.plan(aws, "web", REGIONS, rules)
    by_id = {provenance(d).build_id: d for d in DAYS}
    return {by_id[v.build.build_id]: v for v in found}


def exists(aws: Aws, region: str, ami_id: str) -> bool:
    return amis.find_image(aws, region, ami_id) is not None


def test_dry_run_says_what_and_why_and_apply_keeps_newest_and_used(
    aws: Aws, builds: dict[int, dict[str, str]], deprecations: list[tuple[str, str]]
) -> None:
    launch_template(aws, CENTRAL, builds[3][CENTRAL])  # the copy, in the other region
    kept_snapshots = {d: snapshots(aws, CENTRAL, builds[d][CENTRAL]) for d in DAYS}
    plan = verdicts(aws, prune.Rules(keep=2))
    assert {d: v.action for d, v in plan.items()} == {
        5: "keep",
        4: "keep",
        3: "keep",
        2: "prune",
        1: "prune",
    }
    assert plan[5].reasons[0] == "newest proven build"
    assert "within keep 2 (#2)" in plan[4].reasons
    assert f"launch template web-lt v2 ({CENTRAL})" in plan[3].reasons[0]
    assert plan[3].reasons[-1] == "otherwise pruned: beyond keep 2 (#3)"
    assert plan[1].reasons == ["beyond keep 2 (#5)"]
    text = prune.table(list(plan.values()))
    assert provenance(2).build_id in text and f"{WEST}:{builds[2][WEST]}" in text
    # A dry run changes nothing.
    assert all(exists(aws, r, a) for d in DAYS for r, a in builds[d].items())
    assert deprecations == []

    done = prune.apply(aws, "web", list(plan.values()))
    assert done.failed == []
    assert sorted(done.builds) == [provenance(1).build_id, provenance(2).build_id]
    for day in DAYS:
        for region, ami_id in builds[day].items():
            assert exists(aws, region, ami_id) == (day >= 3), (day, region)
    for day in (1, 2):
        for snapshot in kept_snapshots[day]:
            assert not snapshot_exists(aws, CENTRAL, snapshot)
        for ami_id in builds[day].values():
            # Deprecated first, in every region, and only then deregistered.
            assert deprecations.index(("deprecate", ami_id)) < deprecations.index(
                ("deregister", ami_id)
            )
        first_deregistration = min(
            deprecations.index(("deregister", a)) for a in builds[day].values()
        )
        assert all(
            deprecations.index(("deprecate", a)) < first_deregistration
            for a in builds[day].values()
        )
    for day in (3, 4, 5):
        assert all(snapshot_exists(aws, CENTRAL, s) for s in kept_snapshots[day])
    assert len(done.snapshots) == 4 and "4 deregistered" in done.summary()


def test_each_use_keeps_a_build(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    """keep 1: only the newest stays by rule; every other build stays for one reason."""
    ec2w, ec2c = aws.ec2(WEST), aws.ec2(CENTRAL)
    ec2w.run_instances(ImageId=builds[4][WEST], MinCount=1, MaxCount=1)
    stopped = ec2c.run_instances(ImageId=builds[3][CENTRAL], MinCount=1, MaxCount=1)
    ec2c.stop_instances(InstanceIds=[stopped["Instances"][0]["InstanceId"]])
    ssm.put_ami(aws, WEST, "/goldsmith/web/stable", builds[2][WEST])
    ec2w.create_tags(Resources=[builds[1][WEST]], Tags=[{"Key": prune.TAG_KEEP, "Value": "audit"}])
    plan = verdicts(aws, prune.Rules(keep=1))
    assert [v.action for v in plan.values()] == ["keep"] * 5
    assert "running" in plan[4].reasons[0] and "instance" in plan[4].reasons[0]
    assert "stopped" in plan[3].reasons[0]
    assert f"SSM /goldsmith/web/stable ({WEST})" in plan[2].reasons[0]
    assert plan[1].reasons[0] == "excluded (tag goldsmith:keep='audit')"
    assert "latest" in plan[5].reasons[1]  # (the newest: latest points at it too)


def test_auto_scaling_groups_keep_their_builds(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    lt = launch_template(aws, WEST, builds[2][WEST], name="asg-lt")
    scaling = aws.client("autoscaling", WEST)
    scaling.create_auto_scaling_group(
        AutoScalingGroupName="web-asg",
        LaunchTemplate={"LaunchTemplateId": lt, "Version": "$Latest"},
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[f"{WEST}a"],
    )
    scaling.create_launch_configuration(
        LaunchConfigurationName="web-lc", ImageId=builds[1][WEST], InstanceType="t3.small"
    )
    scaling.create_auto_scaling_group(
        AutoScalingGroupName="old-asg",
        LaunchConfigurationName="web-lc",
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[f"{WEST}a"],
    )
    plan = verdicts(aws, prune.Rules(keep=2))
    assert f"auto scaling group web-asg ({WEST})" in plan[2].reasons[0]
    assert plan[1].reasons[0] == f"in use by auto scaling group old-asg ({WEST})"
    assert plan[3].action == "prune"


def test_max_age_and_keep_together(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    """keep N is a floor under max age: a build goes when it is both old and beyond N."""
    now = datetime(2026, 12, 6, 6, tzinfo=UTC)
    found = prune.judge(
        prune.find_builds(aws, "web", REGIONS), {}, prune.Rules(keep=2, max_age_days=3), now
    )
    assert [v.action for v in found] == ["keep", "keep", "keep", "prune", "prune"]
    assert found[2].reasons == ["beyond keep 2 (#3)", "younger than 3 days (built 2.8 days ago)"]
    assert found[3].reasons == ["beyond keep 2 (#4)", "older than 3 days (built 3.8 days ago)"]
    only_age = prune.judge(
        prune.find_builds(aws, "web", REGIONS), {}, prune.Rules(max_age_days=1), now
    )
    assert [v.action for v in only_age] == ["keep", "prune", "prune", "prune", "prune"]


def test_no_rule_is_a_clear_error() -> None:
    with pytest.raises(GoldsmithError, match="no retention rule: give --keep N or --max-age"):
        prune.Rules()
    with pytest.raises(GoldsmithError, match="keep must be at least 1, not 0"):
        prune.Rules(keep=0)


def test_a_build_goes_in_every_region_or_says_what_was_left(
    aws: Aws, builds: dict[int, dict[str, str]], deprecations: list[tuple[str, str]]
) -> None:
    plan = prune.plan(aws, "web", REGIONS, prune.Rules(keep=4))
    doomed = builds[1]
    # The copy in eu-central-1 vanished meanwhile (a person deregistered it): fine.
    aws.ec2(CENTRAL).deregister_image(ImageId=doomed[CENTRAL])
    done = prune.apply(aws, "web", plan)
    assert done.failed == [] and done.builds == [provenance(1).build_id]
    assert not exists(aws, WEST, doomed[WEST])


def test_prune_notifies_the_topic(
    aws: Aws, builds: dict[int, dict[str, str]], deprecations: list[tuple[str, str]]
) -> None:
    sns, sqs = aws.client("sns", WEST), aws.client("sqs", WEST)
    topic = sns.create_topic(Name="goldsmith-builds")["TopicArn"]
    queue = sqs.create_queue(QueueName="builds")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])
    prune.apply(aws, "web", prune.plan(aws, "web", REGIONS, prune.Rules(keep=4)), topic=topic)
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    message = json.loads(json.loads(got[0]["Body"])["Message"])
    assert message["event"] == "pruned" and message["image"] == "web"
    assert message["build_id"] == provenance(1).build_id
    assert message["regions"] == builds[1]
    assert message["reason"] == "beyond keep 4 (#5)"


# --- as the CI role: the repository's policy, enforced ------------------------------------


def users_of_every_kind(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    """A launch template and an auto scaling group with a launch configuration on build 1,
    so the prune reads every kind of user (a pointer under /goldsmith/ is `latest`)."""
    launch_template(aws, WEST, builds[1][WEST])
    scaling = aws.client("autoscaling", WEST)
    scaling.create_launch_configuration(
        LaunchConfigurationName="web-lc", ImageId=builds[1][WEST], InstanceType="t3.small"
    )
    scaling.create_auto_scaling_group(
        AutoScalingGroupName="web-asg",
        LaunchConfigurationName="web-lc",
        MinSize=0,
        MaxSize=0,
        AvailabilityZones=[f"{WEST}a"],
    )


def test_prune_runs_with_the_repository_policy_alone(
    aws: Aws,
    builds: dict[int, dict[str, str]],
    deprecations: list[tuple[str, str]],
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
) -> None:
    users_of_every_kind(aws, builds)
    ci = as_policy(repo_policy())
    done = prune.apply(ci, "web", prune.plan(ci, "web", REGIONS, prune.Rules(keep=2)))
    assert done.failed == []
    assert sorted(done.builds) == [provenance(2).build_id, provenance(3).build_id]
    assert exists(aws, WEST, builds[1][WEST]) and not exists(aws, CENTRAL, builds[3][CENTRAL])


@pytest.mark.parametrize(
    "action",
    [
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeLaunchTemplateVersions",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeLaunchConfigurations",
        "ssm:GetParametersByPath",
        "ec2:EnableImageDeprecation",
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
    ],
)
def test_a_policy_without_an_action_prune_needs_fails_naming_it(
    aws: Aws,
    builds: dict[int, dict[str, str]],
    deprecations: list[tuple[str, str]],
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
    action: str,
) -> None:
    users_of_every_kind(aws, builds)
    ci = as_policy(repo_policy(without=action))
    try:
        done = prune.apply(ci, "web", prune.plan(ci, "web", REGIONS, prune.Rules(keep=2)))
    except GoldsmithError as err:  # denied while finding builds and users: nothing done
        message = str(err)
        assert deprecations == []
    else:  # denied while retiring: each build says what was not done
        message = "\n".join(done.failed)
        assert len(done.failed) >= 2 and "not done:" in done.summary()
    assert f"needs the IAM permission '{action}'" in message
    if action == "ec2:EnableImageDeprecation":
        assert "nothing of it was deregistered" in message
        assert all(exists(aws, r, a) for d in DAYS for r, a in builds[d].items())
    if action == "ec2:DeleteSnapshot":
        assert not exists(aws, WEST, builds[2][WEST])  # deregistered, and said so
        assert "snapshot snap-" in message
