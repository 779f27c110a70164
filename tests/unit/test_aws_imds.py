"""goldsmith.aws.imds: IMDSv2 is required on this build's builder, and only on it, applied
before anything runs there; a denied change stops the build at once (moto, with the
twin's EC2 behaviour: a change is "pending" before it is "applied")."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from goldsmith.aws import amis, imds, twin_moto
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

WEST = "eu-west-1"
BUILD = "web-20261123T120000Z-4242"
# The twin's own: a metadata options change is "pending" this long before "applied".
TWIN_PENDING_S = twin_moto.METADATA_PENDING_S
# Every other test here waits through a shorter pending change (the wait is the same).
SHORT_PENDING_S = 0.2


@pytest.fixture(autouse=True)
def _short_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twin_moto, "METADATA_PENDING_S", SHORT_PENDING_S)


def launch(aws: Aws, build_id: str = "", key_name: str = "") -> str:
    """An instance as Packer launches it: tagged with the build id, IMDSv1 allowed."""
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    extra: dict[str, Any] = {}
    if build_id:
        tags = [{"Key": amis.TAG_BUILD_ID, "Value": build_id}]
        extra["TagSpecifications"] = [{"ResourceType": "instance", "Tags": tags}]
    if key_name:
        ec2.create_key_pair(KeyName=key_name)
        extra["KeyName"] = key_name
    return str(
        ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1, **extra)["Instances"][0][
            "InstanceId"
        ]
    )


def options(aws: Aws, instance_id: str) -> dict[str, Any]:
    return imds.options_of(aws, WEST, instance_id)


def test_requires_imdsv2_on_this_builds_instance_only_and_waits_until_applied(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(twin_moto, "METADATA_PENDING_S", TWIN_PENDING_S)  # the twin's full wait
    ours, other = launch(aws, BUILD), launch(aws, "base-20261123T120000Z-1")
    assert options(aws, ours)["HttpTokens"] == "optional"
    guard = imds.Imdsv2Guard(aws, WEST, BUILD, interval_s=0.1)
    started = time.monotonic()
    assert guard.poll_once() == [ours]
    # Recorded only once EC2 says applied: the twin keeps a change pending for a second.
    assert time.monotonic() - started >= TWIN_PENDING_S
    assert {"HttpTokens": "required", "State": "applied"}.items() <= options(aws, ours).items()
    assert options(aws, other)["HttpTokens"] == "optional"
    assert guard.poll_once() == []  # guarded already: no second call
    guard.check()
    assert list(guard.as_dict()["instances"]) == [ours]


def test_the_builder_is_found_by_its_key_pair_before_its_tags_show(aws: Aws) -> None:
    """Tag filters are eventually consistent on EC2; the build's own key pair names the
    builder too (an instance launched without tags stands for one whose tags lag)."""
    ours = launch(aws, key_name="goldsmith-" + BUILD)
    guard = imds.Imdsv2Guard(aws, WEST, BUILD, key_name="goldsmith-" + BUILD, interval_s=0.1)
    assert guard.poll_once() == [ours]
    assert options(aws, ours)["HttpTokens"] == "required"


def test_guard_thread_finds_an_instance_launched_after_it_started(aws: Aws) -> None:
    with imds.Imdsv2Guard(aws, WEST, BUILD, interval_s=0.05) as guard:
        ours = launch(aws, BUILD)
        deadline = time.monotonic() + 10
        while ours not in guard.enforced and time.monotonic() < deadline:
            time.sleep(0.05)
    assert options(aws, ours)["HttpTokens"] == "required"
    guard.check()


def test_a_build_whose_builder_was_never_seen_fails(aws: Aws) -> None:
    guard = imds.Imdsv2Guard(aws, WEST, BUILD)
    assert guard.poll_once() == []
    with pytest.raises(GoldsmithError, match=f"goldsmith:build-id={BUILD}"):
        guard.check()
    guard.check(gated=["i-0123456789abcdef0"])  # the gate checked it: no error


def test_a_denied_change_stops_the_build_at_once_naming_the_permission(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict[str, Any]],
) -> None:
    """The build runs as the repository's policy without ec2:ModifyInstanceMetadataOptions:
    EC2 (moto enforcing IAM) denies the change, and the guard stops Packer at once."""
    builder = as_policy(repo_policy(without="ec2:ModifyInstanceMetadataOptions"))
    ours = launch(aws, BUILD)
    stopped: list[float] = []
    with imds.Imdsv2Guard(
        builder, WEST, BUILD, interval_s=0.05, stop_build=lambda: stopped.append(time.monotonic())
    ) as guard:
        deadline = time.monotonic() + 10
        while not stopped and time.monotonic() < deadline:
            time.sleep(0.05)
    assert stopped, "the guard must stop the build when the change is denied"
    assert options(aws, ours)["HttpTokens"] == "optional"
    with pytest.raises(GoldsmithError, match="ec2:ModifyInstanceMetadataOptions") as err:
        guard.check()
    assert "stopped before anything ran on it" in str(err.value)


def test_the_repository_policy_lets_the_guard_work(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict[str, Any]],
) -> None:
    builder = as_policy(repo_policy())
    ours = launch(aws, BUILD)
    assert imds.Imdsv2Guard(builder, WEST, BUILD, interval_s=0.1).poll_once() == [ours]


def test_the_gate_requires_imdsv2_by_instance_id_and_records_it(
    aws: Aws, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Packer's first provisioner: no filter, the instance id Packer gives (build.ID)."""
    ours = launch(aws)  # no tags at all: the gate does not need them
    record = tmp_path / "gate.json"
    argv = ["gate", "--region", WEST, "--instance-id", ours, "--record", str(record)]
    assert imds.main(argv) == 0
    assert {"HttpTokens": "required", "State": "applied"}.items() <= options(aws, ours).items()
    assert json.loads(record.read_text()) == {"instance_id": ours, "changed_here": True}
    assert imds.gated(record) == [ours]
    assert imds.main(argv) == 0  # again: already required, nothing to change
    assert "already required and applied" in capsys.readouterr().out
    assert imds.gated(tmp_path / "missing.json") == []


def test_the_gate_fails_when_packer_gives_no_instance(
    aws: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    assert imds.main(["gate", "--region", WEST, "--instance-id", ""]) == 2
    assert "build.ID" in capsys.readouterr().err


def test_the_gate_fails_on_a_denied_change(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    builder = as_policy(repo_policy(without="ec2:ModifyInstanceMetadataOptions"))
    ours = launch(aws)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", builder.access_key or "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", builder.secret_key or "")
    assert imds.main(["gate", "--region", WEST, "--instance-id", ours]) == 1
    assert "ec2:ModifyInstanceMetadataOptions" in capsys.readouterr().err
    assert options(aws, ours)["HttpTokens"] == "optional"
