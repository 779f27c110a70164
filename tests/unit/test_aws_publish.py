"""goldsmith.aws.publish and report: a finished bake, published end to end (moto)."""

from __future__ import annotations

import json
from pathlib import Path

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
