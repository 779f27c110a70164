"""The amazon-ebs source against the AWS twin, with Packer really talking to moto.

No machine answers SSH here, so the template copy uses `communicator = "none"`; every
AWS step Packer takes (source AMI filter, key pair, security group, run, stop, create
image, tags, cleanup) really happens against the twin, then goldsmith publishes. The full
bake with the stand-in VM is the twin target's own test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from goldsmith.aws import amis, keys, publish, reaper, ssm, twin
from goldsmith.aws.clients import Aws

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ["eu-west-1", "eu-central-1"]
PARAM = "/goldsmith/{image}/latest"
pytestmark = [
    pytest.mark.twin,
    pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed"),
]


@pytest.fixture(scope="module")
def twin_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("twin-project")
    (root / "images.yml").write_text("bases: {}\nimages: {}\n")
    # Packer and publish run as the repository's policy, as goldsmith's builds do.
    (root / "aws").mkdir()
    shutil.copy(ROOT / twin.POLICY_FILE, root / twin.POLICY_FILE)
    twin.up(root)
    yield root
    twin.down(root)


def template(tmp_path: Path, provisioner: str) -> Path:
    d = tmp_path / "packer"
    d.mkdir()
    shutil.copy(ROOT / "packer" / "variables.aws.pkr.hcl", d)
    source = (ROOT / "packer" / "source.aws.pkr.hcl").read_text()
    source, n = re.subn(r'communicator\s*=\s*"ssh"', 'communicator = "none"', source)
    assert n == 1, "the source's communicator line moved; update this test"
    (d / "source.aws.pkr.hcl").write_text(source)
    (d / "build.pkr.hcl").write_text(
        'build {\n  sources = ["source.amazon-ebs.aws"]\n'
        f'  provisioner "shell-local" {{\n    inline = ["{provisioner}"]\n  }}\n'
        '  post-processor "manifest" {\n    output = "manifest.json"\n  }\n}\n'
    )
    return d


def packer_build(root: Path, d: Path, build_id: str) -> int:
    """Packer as goldsmith runs it: as the twin's builder (the repository's policy), with
    the build's own imported key pair (the policy has no ec2:CreateKeyPair)."""
    env = twin.env(root)
    key = d / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    name = keys.import_build_key(
        twin.aws(root), "eu-west-1", build_id, key.with_suffix(".pub").read_text()
    )
    argv = [
        "packer",
        "build",
        "-var",
        f"aws_ssh_keypair_name={name}",
        "-var",
        f"aws_ssh_private_key_file={key}",
        "-var",
        f"aws_endpoint_ec2={env['AWS_ENDPOINT_URL']}",
        "-var",
        "aws_image=web",
        "-var",
        f"aws_build_id={build_id}",
        "-var",
        "aws_roles=base,nginx",
        "-var",
        "aws_git_sha=0123456",
        ".",
    ]
    try:
        return subprocess.run(argv, cwd=d, env={**os.environ, **env}).returncode
    finally:
        keys.delete_build_key(twin.aws(root), "eu-west-1", build_id)


def leftovers(aws: Aws, region: str, build_id: str) -> list[str]:
    found = [
        i["InstanceId"]
        for i in reaper.instances(
            aws,
            region,
            {f"tag:{amis.TAG_BUILD_ID}": [build_id], "instance-state-name": reaper.LIVE_STATES},
        )
    ]
    ec2 = aws.ec2(region)
    found += [
        k["KeyName"]
        for k in ec2.describe_key_pairs()["KeyPairs"]
        if k["KeyName"].startswith("packer_")
    ]
    found += [
        g["GroupName"]
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith("packer_")
    ]
    return found


def test_bake_and_publish_against_the_twin(twin_root: Path, tmp_path: Path) -> None:
    d = template(tmp_path, "echo specs passed")
    assert packer_build(twin_root, d, "ok-1") == 0
    aws = twin.aws(twin_root)
    built = amis.read_manifest(d / "manifest.json")
    source = amis.describe_image(aws, "eu-west-1", built.source_ami)
    newest_debian = max(twin.DEBIAN_SEED, key=lambda a: a["creation_date"])["ami_id"]
    assert amis.tags_of(source)[amis.TAG_BUILD_ID] == "ok-1"
    assert not leftovers(aws, "eu-west-1", "ok-1")
    prov = amis.Provenance("web", "0123456", "f" * 64, "ok-1", ("base", "nginx"))
    result = publish.publish(
        aws,
        built,
        prov,
        regions=REGIONS,
        share_with=["111122223333"],
        ssm_parameter=PARAM,
        wait=amis.Wait(60, 1),
    )
    for region in REGIONS:
        ami = result.regions[region].ami_id
        image = amis.describe_image(aws, region, ami)
        assert amis.tags_of(image)[amis.TAG_ROLES] == "base,nginx"
        assert amis.launch_permissions(aws, region, ami) == ["111122223333"]
        assert ssm.get_ami(aws, region, "/goldsmith/web/latest") == ami
    # Packer really used the catalogue's filter: the builder came from the newest Debian.
    instances = list(reaper.instances(aws, "eu-west-1", {f"tag:{amis.TAG_BUILD_ID}": ["ok-1"]}))
    assert {i["ImageId"] for i in instances} == {newest_debian}


def test_failed_spec_leaves_nothing_and_moves_no_pointer(twin_root: Path, tmp_path: Path) -> None:
    aws = twin.aws(twin_root)
    before = ssm.get_ami(aws, "eu-west-1", "/goldsmith/web/latest")
    d = template(tmp_path, "exit 1")
    assert packer_build(twin_root, d, "bad-1") != 0
    assert not (d / "manifest.json").exists()
    flt = {f"tag:{amis.TAG_BUILD_ID}": ["bad-1"]}
    assert list(amis.describe_images(aws, "eu-west-1", owners=["self"], filters=flt)) == []
    assert not leftovers(aws, "eu-west-1", "bad-1")
    assert ssm.get_ami(aws, "eu-west-1", "/goldsmith/web/latest") == before
