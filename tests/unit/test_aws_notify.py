"""goldsmith.aws.notify: build results reach an SNS topic; one that cannot be sent warns (moto)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from aws_builds import REGIONS, WEST, bake_and_publish, provenance

from goldsmith.aws import notify, publish
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError


def subscribed_queue(aws: Aws, name: str = "goldsmith-builds") -> tuple[str, Callable[[], list]]:
    """A topic with an SQS queue subscribed; (topic ARN, a reader of what arrived)."""
    sns, sqs = aws.client("sns", WEST), aws.client("sqs", WEST)
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName="builds")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])

    def received() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(json.loads(m["Body"])["Message"]) for m in got]

    return topic, received


def test_published_reaches_the_topic(aws: Aws) -> None:
    topic, received = subscribed_queue(aws)
    amis_ = bake_and_publish(aws, 1)
    result = publish.PublishResult("web", provenance(1).build_id, "s", "f", [], WEST, "", "")
    for region, ami_id in amis_.items():
        result.regions[region] = publish.RegionResult(ami_id, [], [], "/goldsmith/web/latest", None)
    assert notify.send(aws, topic, notify.published(result))
    [message] = received()
    assert message["event"] == "published" and message["build_id"] == provenance(1).build_id
    assert message["regions"] == amis_
    assert message["reason"] == "published; /goldsmith/web/latest points at it"


def test_a_failed_bake_is_told_with_its_error(aws: Aws) -> None:
    topic, received = subscribed_queue(aws)
    try:
        raise GoldsmithError("web: 2 specs failed")
    except GoldsmithError:  # (a target's cleanup runs while the failure is raised)
        assert notify.build_failed(lambda: aws, topic, "web", "web-1", "twin build in eu-west-1")
    [message] = received()
    assert message["event"] == "failed" and message["image"] == "web"
    assert message["reason"] == "twin build in eu-west-1: web: 2 specs failed"


def test_no_topic_sends_nothing_and_makes_no_client() -> None:
    def no_client() -> Aws:
        raise AssertionError("no client without a topic")

    assert not notify.build_failed(no_client, "", "web", "web-1", "aws build")


def test_a_missing_topic_is_a_warning(aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    missing = "arn:aws:sns:eu-west-1:123456789012:goldsmith-nobody"
    assert not notify.send(aws, missing, notify.Event("pruned", "web", "web-1"))
    out = capsys.readouterr().out
    assert f"warning: pruned of web-1 not sent to {missing}" in out
    # The twin gone by the time a failed bake is told: a warning too.
    assert not notify.build_failed(_gone, missing, "web", "web-1", "twin build")


def _gone() -> Aws:
    raise GoldsmithError("the AWS twin is not running")


def test_the_ci_role_may_publish_only_to_goldsmith_topics(
    aws: Aws, as_policy: Callable[[dict[str, Any]], Aws], repo_policy: Callable[..., dict]
) -> None:
    topic, received = subscribed_queue(aws)
    event = notify.Event("pruned", "web", "web-1", {r: "ami-1" for r in REGIONS}, "old")
    assert notify.send(as_policy(repo_policy()), topic, event)
    assert received()[0]["regions"] == {r: "ami-1" for r in REGIONS}
    assert not notify.send(as_policy(repo_policy(without="sns:Publish")), topic, event)
