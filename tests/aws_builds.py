"""Proven web builds, made as a bake and a publish make them (prune and promote tests)."""

from __future__ import annotations

import copy
import copyreg
from typing import Any

import pytest
from moto.core.base_backend import BackendDict
from moto.ssm.models import ParameterDict

from goldsmith.aws import amis, publish
from goldsmith.aws.clients import Aws

WEST, CENTRAL = "eu-west-1", "eu-central-1"
REGIONS = [WEST, CENTRAL]
PARAM = "/goldsmith/{image}/latest"
LATEST = "/goldsmith/web/latest"


def provenance(day: int) -> amis.Provenance:
    """Build `day` of December 2026 (a later day is a newer build)."""
    return amis.Provenance(
        "web",
        f"{day:02d}" * 20,
        f"{day:02d}" * 32,
        f"web-202612{day:02d}T100000Z-{day}",
        ("nginx",),
    )


def bake_and_publish(aws: Aws, day: int, regions: list[str] = REGIONS) -> dict[str, str]:
    """CreateImage from a builder in eu-west-1, tagged with the provenance (Packer's part),
    then published to `regions` (copies, tags, `latest`); {region: AMI}."""
    prov = provenance(day)
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=inst, Name=prov.build_id)["ImageId"]
    ec2.terminate_instances(InstanceIds=[inst])
    amis.tag_image(aws, WEST, amis.describe_image(aws, WEST, ami), prov.tags())
    built = amis.Built(amis={WEST: ami}, run_uuid=prov.build_id, build_name="aws")
    result = publish.publish(
        aws,
        built,
        prov,
        regions=regions,
        share_with=[],
        ssm_parameter=PARAM,
        wait=amis.Wait(60, 1),
    )
    return {r: x.ami_id for r, x in result.regions.items()}


def snapshots(aws: Aws, region: str, ami_id: str) -> list[str]:
    return amis.snapshots_of(amis.describe_image(aws, region, ami_id))


def snapshot_exists(aws: Aws, region: str, snapshot: str) -> bool:
    found = aws.ec2(region).describe_snapshots(OwnerIds=["self"])["Snapshots"]
    return any(s["SnapshotId"] == snapshot for s in found)


def model_deprecation(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every deprecation and deregistration, in the order moto served them (the twin's
    moto has EnableImageDeprecation: goldsmith.aws.twin_moto)."""
    from moto.ec2.responses.amis import AmisResponse

    calls: list[tuple[str, str]] = []
    deprecate, deregister = AmisResponse.enable_image_deprecation, AmisResponse.deregister_image

    def enable_image_deprecation(self: Any) -> Any:
        calls.append(("deprecate", self._get_param("ImageId")))
        return deprecate(self)

    def deregister_image(self: Any) -> Any:
        calls.append(("deregister", self._get_param("ImageId")))
        return deregister(self)

    monkeypatch.setattr(AmisResponse, "enable_image_deprecation", enable_image_deprecation)
    monkeypatch.setattr(AmisResponse, "deregister_image", deregister_image)
    return calls


# --- builds made once per module: moto's state kept, and given to each test afresh --------

MotoState = tuple[list[BackendDict], list[dict[str, dict[str, Any]]]]


def _reduce_parameter_dict(params: ParameterDict) -> tuple[Any, ...]:
    # moto's SSM parameters: a defaultdict whose __init__ takes the account and region.
    state = dict(params.__dict__)
    return (
        ParameterDict,
        (params.account_id, params.region_name),
        state,
        None,
        iter(params.items()),
    )


copyreg.pickle(ParameterDict, _reduce_parameter_dict)


def moto_state() -> MotoState:
    """A deep copy of everything the in-process moto holds now: every service's backend
    in every account and region (the backends refer to each other, so one copy)."""
    services = list(BackendDict._instances)
    held = [{acct: dict(regional) for acct, regional in bd.items()} for bd in services]
    return services, copy.deepcopy(held)


def restore_moto_state(state: MotoState) -> None:
    """The in-process moto holds a fresh copy of `state`, as if its calls had just been
    made, and nothing else (each test gets its own copy to change)."""
    services, held = state
    BackendDict.reset()
    for bd, accounts in zip(services, copy.deepcopy(held), strict=True):
        for account_id, regions in accounts.items():
            dict.update(bd[account_id], regions)
