"""goldsmith.aws.publish and report: a finished bake, published end to end (moto)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from goldsmith.aws import amis, publish, report, ssm
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

WEST, CENTRAL = "eu-west-1", "eu-central-1"
PROV = amis.Provenance("web", "c0ffee" * 6 + "abcd", "9" * 64, "build-7", ("base", "nginx"))


def packer_build(aws: Aws, tmp_path: Path) -> tuple[str, Path]:
    """A tagged AMI in eu-west-1 and the manifest Packer writes for it."""
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ami = ec2.create_image(InstanceId=inst, Name="goldsmith-web-1")["ImageId"]
    amis.tag_image(aws, WEST, amis.describe_image(aws, WEST, ami), PROV.tags())
    path = tmp_path / "manifest.json"
    path.write_text(
        json.dumps(
            {
                "builds": [
                    {
                        "name": "aws",
                        "builder_type": "amazon-ebs",
                        "artifact_id": f"{WEST}:{ami}",
                        "packer_run_uuid": "run-9",
                        "files": None,
                        "build_time": 1,
                    }
                ],
                "last_run_uuid": "run-9",
            }
        )
    )
    return ami, path


def test_publish_copies_shares_and_points_ssm_everywhere(aws: Aws, tmp_path: Path) -> None:
    ami, manifest = packer_build(aws, tmp_path)
    result = publish.publish(
        aws,
        manifest,
        PROV,
        regions=[WEST, CENTRAL],
        share_with=["111122223333"],
        ssm_parameter="/goldsmith/{image}/latest",
        wait=amis.Wait(60, 1),
    )
    assert set(result.regions) == {WEST, CENTRAL}
    assert result.regions[WEST].ami_id == ami
    for region, r in result.regions.items():
        assert ssm.get_ami(aws, region, "/goldsmith/web/latest") == r.ami_id
        assert amis.launch_permissions(aws, region, r.ami_id) == ["111122223333"]
        tags = amis.tags_of(amis.describe_image(aws, region, r.ami_id))
        assert tags[amis.TAG_GIT_SHA] == PROV.git_sha and tags[amis.TAG_ROLES] == "base,nginx"
        assert r.ssm_previous is None
    assert result.packer_run_uuid == "run-9"


def test_publish_again_moves_nothing_and_remembers_previous(aws: Aws, tmp_path: Path) -> None:
    _, manifest = packer_build(aws, tmp_path)
    kw = dict(
        regions=[CENTRAL],
        share_with=[],
        ssm_parameter="/goldsmith/{image}/latest",
        wait=amis.Wait(60, 1),
    )
    first = publish.publish(aws, manifest, PROV, **kw)
    second = publish.publish(aws, manifest, PROV, **kw)
    assert second.regions[CENTRAL].ami_id == first.regions[CENTRAL].ami_id
    assert second.regions[CENTRAL].ssm_previous == first.regions[CENTRAL].ami_id


def test_bad_ssm_template_fails_before_anything_is_copied(aws: Aws, tmp_path: Path) -> None:
    _, manifest = packer_build(aws, tmp_path)
    with pytest.raises(GoldsmithError, match="ssm_parameter"):
        publish.publish(
            aws, manifest, PROV, regions=[CENTRAL], share_with=[], ssm_parameter="latest-{image}"
        )
    assert list(amis.describe_images(aws, CENTRAL, owners=["self"])) == []


def test_report_markdown_and_json(aws: Aws, tmp_path: Path) -> None:
    ami, manifest = packer_build(aws, tmp_path)
    result = publish.publish(
        aws,
        manifest,
        PROV,
        regions=[WEST, CENTRAL],
        share_with=["111122223333"],
        ssm_parameter="/goldsmith/{image}/latest",
        wait=amis.Wait(60, 1),
    )
    md, js = report.write(result, tmp_path / "build" / "web")
    text = md.read_text()
    assert f"| {WEST} | `{ami}` |" in text
    assert f"| {CENTRAL} | `{result.regions[CENTRAL].ami_id}` |" in text
    assert PROV.git_sha in text and "`nginx`" in text
    data = json.loads(js.read_text())
    assert data["regions"][CENTRAL]["ami_id"] == result.regions[CENTRAL].ami_id
    assert data["regions"][WEST]["shared_with"] == ["111122223333"]
    assert data["build_id"] == "build-7"


def test_build_manifest_gives_provenance_and_the_embedded_packer_manifest(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    packer_manifest = {
        "builds": [
            {
                "name": "aws",
                "builder_type": "amazon-ebs",
                "packer_run_uuid": "r",
                "artifact_id": "eu-west-1:ami-0abc",
            }
        ],
        "last_run_uuid": "r",
    }
    data = {
        "image": "web",
        "target": "twin",
        "build_id": "b",
        "git": {"sha": "s", "dirty": False},
        "fingerprint": "f",
        "roles": ["base", "nginx"],
        "packer_manifest": packer_manifest,
    }
    path.write_text(json.dumps(data))
    prov, built = publish.from_build_manifest(path)
    assert prov == amis.Provenance("web", "s", "f", "b", ("base", "nginx"))
    assert built.amis == {WEST: "ami-0abc"}
    path.write_text(json.dumps({**data, "target": "local"}))
    with pytest.raises(GoldsmithError, match="target is 'local'; only aws and twin"):
        publish.from_build_manifest(path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "fingerprint"}))
    with pytest.raises(GoldsmithError, match="manifest.json: key 'fingerprint' is missing"):
        publish.from_build_manifest(path)


# --- the pointer only moves forward, in every region together ---------------------------

PARAM = "/goldsmith/{image}/latest"
OLD = amis.Provenance("web", "a" * 40, "1" * 64, "web-20261204T120000Z-11", ("nginx",))
NEW = amis.Provenance("web", "b" * 40, "2" * 64, "web-20261204T130000Z-22", ("nginx",))


def baked(aws: Aws, prov: amis.Provenance) -> amis.Built:
    """What Packer leaves in eu-west-1 for build `prov`: a tagged AMI."""
    ec2 = aws.ec2(WEST)
    source = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)["Instances"][0]
    ami = ec2.create_image(InstanceId=inst["InstanceId"], Name=prov.build_id)["ImageId"]
    amis.tag_image(aws, WEST, amis.describe_image(aws, WEST, ami), prov.tags())
    return amis.Built(amis={WEST: ami}, run_uuid=prov.build_id, build_name="aws")


def publish_to_both(aws: Aws, built: amis.Built, prov: amis.Provenance) -> publish.PublishResult:
    return publish.publish(
        aws,
        built,
        prov,
        regions=[WEST, CENTRAL],
        share_with=[],
        ssm_parameter=PARAM,
        wait=amis.Wait(60, 1),
    )


def pointers(aws: Aws) -> dict[str, str | None]:
    return {r: ssm.get_ami(aws, r, "/goldsmith/web/latest") for r in (WEST, CENTRAL)}


def test_an_older_build_never_replaces_a_newer_one(aws: Aws) -> None:
    old, new = baked(aws, OLD), baked(aws, NEW)
    newer = publish_to_both(aws, new, NEW)
    before = pointers(aws)
    assert before == {r: newer.regions[r].ami_id for r in (WEST, CENTRAL)}
    with pytest.raises(publish.PointerIsNewer) as err:
        publish_to_both(aws, old, OLD)
    message = str(err.value)
    assert "image 'web' build web-20261204T120000Z-11 (built 2026-12-04 12:00:00 UTC)" in message
    for region in (WEST, CENTRAL):
        assert f"in {region} it points at {before[region]}" in message
    assert "build web-20261204T130000Z-22, built 2026-12-04 13:00:00 UTC" in message
    assert pointers(aws) == before
    # Refused before copying: no copy of the old build was made.
    flt = {f"tag:{amis.TAG_BUILD_ID}": [OLD.build_id]}
    assert list(amis.describe_images(aws, CENTRAL, owners=["self"], filters=flt)) == []


def test_a_newer_build_moves_the_pointer_everywhere(aws: Aws) -> None:
    old, new = baked(aws, OLD), baked(aws, NEW)
    first = publish_to_both(aws, old, OLD)
    second = publish_to_both(aws, new, NEW)
    for region in (WEST, CENTRAL):
        assert second.regions[region].ssm_previous == first.regions[region].ami_id
        assert pointers(aws)[region] == second.regions[region].ami_id


def test_a_newer_publish_landing_during_the_copies_wins(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs again after the copies, just before the first write."""
    old, new = baked(aws, OLD), baked(aws, NEW)
    copy = amis.copy_to_regions

    def copy_while_newer_lands(*args, **kwargs):  # type: ignore[no-untyped-def]
        images = copy(*args, **kwargs)
        monkeypatch.setattr(amis, "copy_to_regions", copy)
        publish_to_both(aws, new, NEW)
        return images

    monkeypatch.setattr(amis, "copy_to_regions", copy_while_newer_lands)
    with pytest.raises(publish.PointerIsNewer, match="eu-central-1"):
        publish_to_both(aws, old, OLD)
    for region, ami in pointers(aws).items():
        image = amis.describe_image(aws, region, ami)  # type: ignore[arg-type]
        assert amis.tags_of(image)[amis.TAG_BUILD_ID] == NEW.build_id


def test_a_copy_that_fails_in_one_region_moves_no_pointer(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.ec2.models import ec2_backends

    old, new = baked(aws, OLD), baked(aws, NEW)
    publish_to_both(aws, old, OLD)
    before = pointers(aws)
    start = amis.start_copy

    def copy_then_fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        ami_id = start(*args, **kwargs)
        ec2_backends["123456789012"][CENTRAL].amis[ami_id].state = "failed"
        return ami_id

    monkeypatch.setattr(amis, "start_copy", copy_then_fail)
    with pytest.raises(GoldsmithError, match=r"AMI ami-\w+ in eu-central-1 failed"):
        publish_to_both(aws, new, NEW)
    assert pointers(aws) == before


def test_a_failed_write_puts_the_moved_regions_back(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = baked(aws, OLD), baked(aws, NEW)
    publish_to_both(aws, old, OLD)
    before = pointers(aws)
    put = ssm.put_ami

    def put_but_not_in_central(aws_, region, name, ami_id, description=""):  # type: ignore[no-untyped-def]
        if region == CENTRAL and "restored" not in description:
            raise GoldsmithError("AWS ssm:PutParameter failed in eu-central-1 (Throttled)")
        return put(aws_, region, name, ami_id, description)

    monkeypatch.setattr(ssm, "put_ami", put_but_not_in_central)
    with pytest.raises(GoldsmithError, match="put back on its previous AMI in eu-west-1"):
        publish_to_both(aws, new, NEW)
    assert pointers(aws) == before


def test_a_pointer_goldsmith_cannot_date_is_replaced(aws: Aws) -> None:
    """Set by hand, or at an AMI of no goldsmith build: nothing says it is newer."""
    foreign = aws.ec2(WEST).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ssm.put_ami(aws, WEST, "/goldsmith/web/latest", foreign)
    result = publish_to_both(aws, baked(aws, OLD), OLD)
    assert result.regions[WEST].ssm_previous == foreign
    assert pointers(aws)[WEST] == result.regions[WEST].ami_id


def test_a_build_that_cannot_be_dated_never_replaces_a_dated_one(aws: Aws) -> None:
    publish_to_both(aws, baked(aws, NEW), NEW)
    before = pointers(aws)
    undated = amis.Provenance("web", "c" * 40, "3" * 64, "hand-made", ("nginx",))
    with pytest.raises(publish.PointerIsNewer, match=r"build hand-made \(built an unknown time\)"):
        publish_to_both(aws, baked(aws, undated), undated)
    assert pointers(aws) == before


# --- as the CI role: the repository's policy, enforced ------------------------------------


def test_publish_runs_with_the_repository_policy_alone(
    aws: Aws, as_policy: Callable[[dict[str, Any]], Aws], repo_policy: Callable[..., dict]
) -> None:
    built = baked(aws, NEW)  # Packer's part (made as the root here)
    ci = as_policy(repo_policy())
    result = publish_to_both(ci, built, NEW)
    assert pointers(aws) == {r: result.regions[r].ami_id for r in (WEST, CENTRAL)}


@pytest.mark.parametrize("action", ["ec2:CopyImage", "ssm:PutParameter", "ssm:GetParameter"])
def test_a_policy_without_an_action_publish_needs_fails_naming_it(
    aws: Aws,
    as_policy: Callable[[dict[str, Any]], Aws],
    repo_policy: Callable[..., dict],
    action: str,
) -> None:
    built = baked(aws, NEW)
    ci = as_policy(repo_policy(without=action))
    with pytest.raises(GoldsmithError, match=f"needs the IAM permission '{action}'"):
        publish_to_both(ci, built, NEW)
    assert pointers(aws) == {WEST: None, CENTRAL: None}
