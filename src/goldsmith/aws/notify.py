"""Build results to an SNS topic: published, failed, pruned.

images.yml names the topic (`aws.notify`, or the top-level `notifications.notify`); a
subscriber (a mail address, a chat hook, a queue) gets one small JSON document per
event: what happened, to which image and build, where (region: AMI), and why.

A notification is news about a build, never part of it: one that cannot be sent (the
topic is gone, the role may not publish to it) is logged as a warning and the build's
result stands.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import GoldsmithError
from ..tools import log
from .clients import Aws
from .publish import PublishResult

EVENTS = ("published", "failed", "pruned")
SUBJECT_MAX = 100  # SNS's limit on a subject
REASON_MAX = 2000  # a failure's message can be long (a Packer log tail): its start is enough


@dataclass(frozen=True)
class Event:
    """One build result, as subscribers receive it."""

    event: str  # one of EVENTS
    image: str
    build_id: str
    amis: Mapping[str, str] = field(default_factory=dict)  # {region: AMI}
    reason: str = ""

    def message(self) -> dict[str, Any]:
        return {
            "source": "goldsmith",
            "event": self.event,
            "image": self.image,
            "build_id": self.build_id,
            "regions": dict(sorted(self.amis.items())),
            "reason": self.reason,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def subject(self) -> str:
        return f"goldsmith: {self.image} {self.event} ({self.build_id})"[:SUBJECT_MAX]


def topic_region(topic: str) -> str:
    """The region of an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)."""
    parts = topic.split(":")
    if len(parts) != 6 or parts[2] != "sns" or not parts[3]:
        raise GoldsmithError(f"{topic!r} is not an SNS topic ARN")
    return parts[3]


def send(aws: Aws, topic: str, event: Event) -> bool:
    """Publish `event` to `topic` ("" sends nothing); whether it was sent.

    Never raises for AWS's refusal: a failure is a warning naming the topic and the cause.
    """
    if not topic:
        return False
    if event.event not in EVENTS:
        raise GoldsmithError(f"unknown notification event {event.event!r} ({', '.join(EVENTS)})")
    try:
        aws.client("sns", topic_region(topic)).publish(
            TopicArn=topic,
            Subject=event.subject(),
            Message=json.dumps(event.message(), sort_keys=True),
            MessageAttributes={
                "event": {"DataType": "String", "StringValue": event.event},
                "image": {"DataType": "String", "StringValue": event.image},
            },
        )
    except GoldsmithError as err:
        log("notify", f"warning: {event.event} of {event.build_id} not sent to {topic}: {err}")
        return False
    log("notify", f"{event.event} of {event.build_id} sent to {topic}")
    return True


def published(result: PublishResult) -> Event:
    """The news of a publish: the AMI of each region, and the pointer that moved."""
    amis = {region: r.ami_id for region, r in result.regions.items()}
    pointers = sorted({r.ssm_parameter for r in result.regions.values()})
    reason = f"published; {', '.join(pointers)} points at it" if pointers else "published"
    return Event("published", result.image, result.build_id, amis, reason)


def build_failed(aws: Callable[[], Aws], topic: str, image: str, build_id: str, where: str) -> bool:
    """Tell `topic` that bake `build_id` failed; whether it was sent. Never raises.

    Called from a target's cleanup while the bake's failure is still being raised: its
    message is the reason. `aws` makes the client only when there is a topic (the twin
    may be gone by then: a warning, like any notification that cannot be sent).
    """
    if not topic:
        return False
    error = sys.exc_info()[1]
    reason = str(error) if isinstance(error, GoldsmithError) else repr(error) if error else ""
    reason = f"{where}: " + (reason or "the bake failed or was interrupted")
    try:
        client = aws()
    except GoldsmithError as err:
        log("notify", f"warning: failed of {build_id} not sent to {topic}: {err}")
        return False
    return send(client, topic, Event("failed", image, build_id, {}, reason[:REASON_MAX]))
