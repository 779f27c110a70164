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


# --- EventBridge -------------------------------------------------------------------------------


def bus_to_queue(aws: Aws, name: str = "goldsmith-builds") -> tuple[str, Callable[[], list]]:
    """An event bus whose rule sends goldsmith's events to an SQS queue; (bus ARN, a reader
    of the events that arrived)."""
    events, sqs = aws.client("events", WEST), aws.client("sqs", WEST)
    bus = events.create_event_bus(Name=name)["EventBusArn"]
    queue = sqs.create_queue(QueueName="bus-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    events.put_rule(
        Name="goldsmith-results", EventBusName=name, EventPattern='{"source": ["goldsmith"]}'
    )
    events.put_targets(
        Rule="goldsmith-results",
        EventBusName=name,
        Targets=[{"Id": "queue", "Arn": arn["QueueArn"]}],
    )

    def received() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"]) for m in got]

    return bus, received


def test_an_event_bus_gets_each_result_with_its_detail_type(aws: Aws) -> None:
    bus, received = bus_to_queue(aws)
    assert bus.startswith("arn:aws:events:eu-west-1:") and bus.endswith(
        ":event-bus/goldsmith-builds"
    )
    event = notify.Event("published", "web", "web-1", {WEST: "ami-1"}, "published")
    assert notify.send(aws, bus, event)
    try:
        raise GoldsmithError("web: 2 specs failed")
    except GoldsmithError:
        assert notify.build_failed(lambda: aws, bus, "web", "web-2", "twin build in eu-west-1")
    assert notify.send(aws, bus, notify.Event("pruned", "web", "web-0", {WEST: "ami-0"}, "old"))
    got = received()
    assert [(e["source"], e["detail-type"]) for e in got] == [
        ("goldsmith", "goldsmith image published"),
        ("goldsmith", "goldsmith build failed"),
        ("goldsmith", "goldsmith images pruned"),
    ]
    published, failed, pruned = (e["detail"] for e in got)
    # The detail is the message SNS subscribers get.
    assert published == event.message() | {"at": published["at"]}
    assert published["regions"] == {WEST: "ami-1"} and published["event"] == "published"
    assert failed["reason"] == "twin build in eu-west-1: web: 2 specs failed"
    assert pruned["build_id"] == "web-0" and pruned["event"] == "pruned"


def test_a_missing_bus_or_a_refused_event_is_a_warning(
    aws: Aws, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = "arn:aws:events:eu-west-1:123456789012:event-bus/goldsmith-nobody"
    assert not notify.send(aws, missing, notify.Event("pruned", "web", "web-1"))
    assert f"warning: pruned of web-1 not sent to {missing}" in capsys.readouterr().out
    # AWS answers 200 for an entry it refused; the entry says why.
    bus, received = bus_to_queue(aws)
    refused = {
        "FailedEntryCount": 1,
        "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}],
    }
    monkeypatch.setattr(aws.client("events", WEST).raw, "put_events", lambda **_: refused)
    assert not notify.send(aws, bus, notify.Event("failed", "web", "web-2"))
    out = capsys.readouterr().out
    assert f"warning: failed of web-2 not sent to {bus}: " in out
    assert "EventBridge refused the event (InternalFailure): try again" in out
    assert received() == []


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:events:eu-west-1:123456789012:rule/goldsmith",
        "arn:aws:events:eu-west-1:123456789012:event-bus/",
        "arn:aws:sqs:eu-west-1:123456789012:goldsmith",
        "goldsmith-builds",
    ],
)
def test_a_target_that_is_neither_a_topic_nor_a_bus_is_a_warning(
    aws: Aws, arn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not notify.send(aws, arn, notify.Event("pruned", "web", "web-1"))
    assert "neither an SNS topic ARN nor an EventBridge event bus ARN" in capsys.readouterr().out


def _detail(event: dict[str, Any]) -> dict[str, Any]:
    return event["detail"]


@pytest.mark.parametrize(
    ("target", "message", "action", "resource"),
    [
        (subscribed_queue, dict, "sns:Publish", "arn:aws:sns:*:*:goldsmith-*"),
        (bus_to_queue, _detail, "events:PutEvents", "arn:aws:events:*:*:event-bus/goldsmith*"),
    ],
)
def test_the_ci_role_may_send_only_to_goldsmith_topics_and_buses(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
    target: Callable[[Aws], tuple[str, Callable[[], list]]],
    message: Callable[[dict[str, Any]], dict[str, Any]],
    action: str,
    resource: str,
) -> None:
    arn, received = target(aws)
    event = notify.Event("pruned", "web", "web-1", {r: "ami-1" for r in REGIONS}, "old")
    assert notify.send(as_policy(repo_policy()), arn, event)
    assert message(received()[0])["regions"] == {r: "ami-1" for r in REGIONS}
    assert not notify.send(as_policy(repo_policy(without=action)), arn, event)
    # The statement names goldsmith's own only (moto decides by action; AWS by resource).
    [statement] = [s for s in repo_policy()["Statement"] if action in s["Action"]]
    assert statement["Resource"] == resource
