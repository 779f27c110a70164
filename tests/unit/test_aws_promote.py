"""goldsmith.aws.promote: a channel moves to a proven build, forward only, everywhere (moto)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from aws_builds import (
    CENTRAL,
    LATEST,
    REGIONS,
    WEST,
    bake_and_publish,
    provenance,
    restore_moto_state,
)

from goldsmith.aws import amis, promote, publish, ssm
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

STABLE = "/goldsmith/web/stable"


@pytest.fixture(scope="module")
def _baked(moto_once: Callable[..., Any]) -> tuple[Any, dict[int, dict[str, str]]]:
    """The three builds, baked and published once for the module (moto's state kept)."""
    return moto_once(lambda aws: {day: bake_and_publish(aws, day) for day in (1, 2, 3)})


@pytest.fixture
def builds(aws: Aws, _baked: tuple[Any, dict[int, dict[str, str]]]) -> dict[int, dict[str, str]]:
    """Three proven, published web builds: {day: {region: AMI}}; latest is day 3's."""
    state, builds = _baked
    restore_moto_state(state)
    return copy.deepcopy(builds)


def to_stable(aws: Aws, build: int | None = None, force: bool = False) -> promote.Promoted:
    return promote.promote(
        aws,
        "web",
        REGIONS,
        "stable",
        latest=LATEST,
        build_id=provenance(build).build_id if build else None,
        force=force,
    )


def stable(aws: Aws) -> dict[str, str | None]:
    return {r: ssm.get_ami(aws, r, STABLE) for r in REGIONS}


def test_promote_latest_then_forward(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    first = to_stable(aws, 2)
    assert stable(aws) == builds[2] and first.previous == {WEST: None, CENTRAL: None}
    second = to_stable(aws)  # the build latest points at
    assert second.build_id == provenance(3).build_id and stable(aws) == builds[3]
    assert second.previous == builds[2]
    assert "was " + builds[2][WEST] in second.summary()


def test_backwards_is_refused_unless_forced(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    to_stable(aws, 3)
    with pytest.raises(publish.PointerIsNewer) as err:
        to_stable(aws, 1)
    message = str(err.value)
    assert f"refusing to promote to stable image 'web' build {provenance(1).build_id}" in message
    assert f"in {CENTRAL} it points at {builds[3][CENTRAL]}" in message
    assert "pass --force to move it back on purpose" in message
    assert stable(aws) == builds[3]
    done = to_stable(aws, 1, force=True)
    assert done.forced and stable(aws) == builds[1]


def test_all_regions_or_none(
    aws: Aws, builds: dict[int, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    to_stable(aws, 1)
    put = ssm.put_ami

    def put_but_not_in_central(aws_, region, name, ami_id, description=""):  # type: ignore[no-untyped-def]
        if region == CENTRAL and "restored" not in description:
            raise GoldsmithError("AWS ssm:PutParameter failed in eu-central-1 (Throttled)")
        return put(aws_, region, name, ami_id, description)

    monkeypatch.setattr(ssm, "put_ami", put_but_not_in_central)
    with pytest.raises(GoldsmithError, match="put back on its previous AMI in eu-west-1"):
        to_stable(aws, 2)
    assert stable(aws) == builds[1]


def test_a_build_missing_in_a_region_moves_nothing(
    aws: Aws, builds: dict[int, dict[str, str]]
) -> None:
    bake_and_publish(aws, 4, regions=[WEST])
    with pytest.raises(GoldsmithError, match="has no available AMI in eu-central-1: publish it"):
        to_stable(aws, 4)
    with pytest.raises(GoldsmithError, match="no AMI of image 'web' carries build id 'nope'"):
        promote.promote(aws, "web", REGIONS, "stable", latest=LATEST, build_id="nope")
    assert stable(aws) == {WEST: None, CENTRAL: None}


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ("latest", "'latest' is publish's own pointer"),
        ("Stable", "lowercase letters, digits and single dashes"),
        ("prod--eu", "lowercase letters, digits and single dashes"),
        ("", "lowercase letters"),
    ],
)
def test_channel_names(channel: str, message: str) -> None:
    with pytest.raises(GoldsmithError, match=message):
        promote.channel_parameter("web", channel)
    assert promote.channel_parameter("web", "prod-eu2") == "/goldsmith/web/prod-eu2"


def test_latest_must_agree_across_regions(aws: Aws, builds: dict[int, dict[str, str]]) -> None:
    ssm.put_ami(aws, CENTRAL, LATEST, builds[2][CENTRAL])
    with pytest.raises(GoldsmithError, match="points at different builds"):
        to_stable(aws)


# --- as the CI role: the repository's policy, enforced ------------------------------------


def test_promote_runs_with_the_repository_policy_alone(
    aws: Aws,
    builds: dict[int, dict[str, str]],
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
) -> None:
    to_stable(as_policy(repo_policy()))
    assert stable(aws) == builds[3]
    tags = amis.tags_of(amis.describe_image(aws, CENTRAL, builds[3][CENTRAL]))
    assert tags[amis.TAG_BUILD_ID] == provenance(3).build_id


@pytest.mark.parametrize("action", ["ssm:PutParameter", "ssm:GetParameter", "ec2:DescribeImages"])
def test_a_policy_without_an_action_promote_needs_fails_naming_it(
    aws: Aws,
    builds: dict[int, dict[str, str]],
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
    action: str,
) -> None:
    with pytest.raises(GoldsmithError, match=f"needs the IAM permission '{action}'"):
        to_stable(as_policy(repo_policy(without=action)))
    assert stable(aws) == {WEST: None, CENTRAL: None}
