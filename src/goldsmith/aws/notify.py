"""Build results to an SNS topic or an EventBridge event bus: published, failed, pruned.

images.yml names the target by its ARN (`aws.notify`, or the top-level
`notifications.notify`); the ARN's service picks how it is sent. A subscriber (a mail
address, a chat hook, a queue, an EventBridge rule) gets one small JSON document per
event: what happened, to which image and build, where (region: AMI), and why. On SNS it
is the message; on EventBridge it is the event's detail, with source `goldsmith` and a
detail type per event (DETAIL_TYPES).

A notification is news about a build, never part of it: one that cannot be sent (the
topic or bus is gone, the role may not send to it) is logged as a warning and the
build's result stands.
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
SOURCE = "goldsmith"  # an EventBridge event's source
DETAIL_TYPES = {
    "published": "goldsmith image published",
    "failed": "goldsmith build failed",
    "pruned": "goldsmith images pruned",
}
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
            "source": SOURCE,
            "event": self.event,
            "image": self.image,
            "build_id": self.build_id,
            "regions": dict(sorted(self.amis.items())),
            "reason": self.reason,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def subject(self) -> str:
        return f"goldsmith: {self.image} {self.event} ({self.build_id})"[:SUBJECT_MAX]


def target_of(arn: str) -> tuple[str, str]:
    """(service, region) of a notification target: an SNS topic ARN
    (arn:aws:sns:REGION:ACCOUNT:NAME) or an EventBridge event bus ARN
    (arn:aws:events:REGION:ACCOUNT:event-bus/NAME)."""
    parts = arn.split(":")
    if len(parts) == 6 and parts[0] == "arn" and parts[3]:
        if parts[2] == "sns" and parts[5]:
            return "sns", parts[3]
        if parts[2] == "events" and parts[5].startswith("event-bus/") and parts[5][10:]:
            return "events", parts[3]
    raise GoldsmithError(f"{arn!r} is neither an SNS topic ARN nor an EventBridge event bus ARN")


def send(aws: Aws, target: str, event: Event) -> bool:
    """Send `event` to `target`, an SNS topic or an EventBridge event bus by its ARN (""
    sends nothing); whether it was sent.

    Never raises for AWS's refusal: a failure is a warning naming the target and the cause.
    """
    if not target:
        return False
    if event.event not in EVENTS:
        raise GoldsmithError(f"unknown notification event {event.event!r} ({', '.join(EVENTS)})")
    try:
        service, region = target_of(target)
        _SENDERS[service](aws.client(service, region), target, event)
    except GoldsmithError as err:
        log("notify", f"warning: {event.event} of {event.build_id} not sent to {target}: {err}")
        return False
    log("notify", f"{event.event} of {event.build_id} sent to {target}")
    return True


def _publish(sns: Any, topic: str, event: Event) -> None:
    sns.publish(
        TopicArn=topic,
        Subject=event.subject(),
        Message=json.dumps(event.message(), sort_keys=True),
        MessageAttributes={
            "event": {"DataType": "String", "StringValue": event.event},
            "image": {"DataType": "String", "StringValue": event.image},
        },
    )


def _put_event(events: Any, bus: str, event: Event) -> None:
    answer = events.put_events(
        Entries=[
            {
                "Source": SOURCE,
                "DetailType": DETAIL_TYPES[event.event],
                "Detail": json.dumps(event.message(), sort_keys=True),
                "EventBusName": bus,
            }
        ]
    )
    # PutEvents answers 200 for entries it refused: each says why in its own entry.
    if answer.get("FailedEntryCount"):
        entry = (answer.get("Entries") or [{}])[0]
        code = entry.get("ErrorCode", "unknown error")
        raise GoldsmithError(
            f"EventBridge refused the event ({code})"
            + (f": {entry['ErrorMessage']}" if entry.get("ErrorMessage") else "")
        )


_SENDERS: dict[str, Callable[[Any, str, Event], None]] = {"sns": _publish, "events": _put_event}


def published(result: PublishResult) -> Event:
    """The news of a publish: the AMI of each region, and the pointer that moved."""
    amis = {region: r.ami_id for region, r in result.regions.items()}
    pointers = sorted({r.ssm_parameter for r in result.regions.values()})
    reason = f"published; {', '.join(pointers)} points at it" if pointers else "published"
    return Event("published", result.image, result.build_id, amis, reason)


def build_failed(aws: Callable[[], Aws], topic: str, image: str, build_id: str, where: str) -> bool:
    """Tell `topic` (an SNS topic or an event bus) that bake `build_id` failed; whether it
    was sent. Never raises.

    Called from a target's cleanup while the bake's failure is still being raised: its
    message is the reason. `aws` makes the client only when there is a target (the twin
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
