"""images.yml's retention and notification settings, checked when the catalogue loads."""

from __future__ import annotations

from typing import Any

import pytest

from goldsmith.aws import notify
from goldsmith.catalogue import CatalogueError, Retention, load

TOPIC = "arn:aws:sns:eu-west-1:123456789012:goldsmith-builds"
BUS = "arn:aws:events:eu-west-1:123456789012:event-bus/goldsmith-builds"


def with_web_aws(project: Any, extra: str, top: str = "") -> Any:
    """The standard catalogue with `extra` lines added to web's aws section."""
    project.standard()
    text = project.CATALOGUE.replace(
        "      kms_key_id: alias/goldsmith-ami\n",
        "      kms_key_id: alias/goldsmith-ami\n" + extra,
    )
    project.catalogue(top + text)
    return project


def test_retention_and_topic_are_read(project: Any) -> None:
    with_web_aws(
        project, f"      retention: {{keep: 3, max_age_days: 30}}\n      notify: {TOPIC}\n"
    )
    images = load(project.root / "images.yml").images
    assert images["web"].aws.retention == Retention(keep=3, max_age_days=30)
    assert images["web"].aws.notify == TOPIC
    assert images["base"].aws.retention is None and images["base"].aws.notify == ""


def test_the_top_level_topic_is_every_images_unless_its_own(project: Any) -> None:
    own = TOPIC.replace("builds", "web")
    with_web_aws(project, f"      notify: {own}\n", top=f"notifications:\n  notify: {TOPIC}\n")
    images = load(project.root / "images.yml").images
    assert images["base"].aws.notify == TOPIC and images["web"].aws.notify == own


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (
            "      retention: {keep: 0}\n",
            "images.web.aws.retention.keep: must be a whole number of at least 1, not '0'",
        ),
        (
            "      retention: {max_age_days: ten}\n",
            "retention.max_age_days: must be a whole number of at least 1, not 'ten'",
        ),
        (
            "      retention: {keep: true}\n",
            "retention.keep: must be a whole number of at least 1, not 'true'",
        ),
        ("      retention: {kep: 2}\n", "retention.kep: unknown key (did you mean 'keep'?)"),
        ("      retention: {}\n", "images.web.aws.retention: names no rule"),
        (
            "      notify: goldsmith-builds\n",
            "images.web.aws.notify: 'goldsmith-builds' is not an SNS topic ARN",
        ),
    ],
)
def test_a_bad_value_is_named_with_file_key_and_value(
    project: Any, extra: str, problem: str
) -> None:
    with_web_aws(project, extra)
    with pytest.raises(CatalogueError) as err:
        load(project.root / "images.yml")
    assert "images.yml:" in str(err.value) and problem in str(err.value)


def test_an_event_bus_is_a_notification_target_too(project: Any) -> None:
    with_web_aws(project, f"      notify: {BUS}\n", top=f"notifications:\n  notify: {TOPIC}\n")
    images = load(project.root / "images.yml").images
    assert images["web"].aws.notify == BUS and images["base"].aws.notify == TOPIC
    with_web_aws(project, "", top=f"notifications:\n  notify: {BUS}\n")
    images = load(project.root / "images.yml").images
    assert images["web"].aws.notify == BUS and images["base"].aws.notify == BUS
    # What the catalogue accepts, the sender knows how to send.
    assert notify.target_of(BUS) == ("events", "eu-west-1")
    assert notify.target_of(TOPIC) == ("sns", "eu-west-1")


@pytest.mark.parametrize(
    "value",
    [
        "arn:aws:events:eu-west-1:123456789012:rule/goldsmith-builds",
        "arn:aws:events:eu-west-1:123456789012:event-bus/",
        "arn:aws:events:eu-west-1:goldsmith:event-bus/goldsmith-builds",
        "arn:aws:events::123456789012:event-bus/goldsmith-builds",
        "arn:aws:sqs:eu-west-1:123456789012:goldsmith-builds",
    ],
)
@pytest.mark.parametrize("where", ["image", "top"])
def test_a_bad_notification_arn_is_named_with_file_line_key_and_value(
    project: Any, value: str, where: str
) -> None:
    if where == "image":
        with_web_aws(project, f"      notify: {value}\n")
        key = "images.web.aws.notify"
    else:
        with_web_aws(project, "", top=f"notifications:\n  notify: {value}\n")
        key = "notifications.notify"
    with pytest.raises(CatalogueError) as err:
        load(project.root / "images.yml")
    line = project.line("images.yml", value)
    assert (
        f"images.yml:{line}: {key}: {value!r} is not an SNS topic ARN like "
        "'arn:aws:sns:eu-west-1:123456789012:goldsmith-builds' or an EventBridge event bus "
        "ARN like 'arn:aws:events:eu-west-1:123456789012:event-bus/goldsmith-builds'"
    ) in str(err.value)
