"""The twin target end to end: Packer's amazon-ebs against moto, a local VM as the instance.

Every bake here is of a scratch project's tiny images (a converge under TCG costs
minutes per role): `mini`, and `kid` layered on it, through buildspec.yml as CodeBuild
would run it; the failure paths bake `mini` alone. What is checked is what a user sees:
the AWS CLI pointed at the twin, the build's files, and the processes left on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    add_kid_image,
    add_mini_image,
    invoke,
    qemu_processes,
    runnable,
)
from cve_kit import CVE_TRACKER

from goldsmith.aws import amis, buildspec, reaper, ssm, twin
from goldsmith.aws.clients import Aws
from goldsmith.catalogue import load
from goldsmith.paths import venv_bin

pytestmark = [
    pytest.mark.twin,
    pytest.mark.bake,
    pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed"),
]
MINI_REGIONS = ["eu-west-1", "eu-central-1"]
MINI_PARAM = "/goldsmith/mini/latest"
TCP = ("tcp", "tcp6")


@pytest.fixture(scope="module")
def twin_aws() -> Iterator[Aws]:
    """The project's twin: a running one is used (and left running), else one is started.

    Scratch projects share the project's .cache, so their builds find the same twin.
    """
    started = twin.running(ROOT) is None
    twin.up(ROOT)
    yield twin.admin_aws(ROOT)  # to look, as the account; builds run as the policy
    if started:
        twin.down(ROOT)


def aws_cli(region: str, *args: str) -> dict:
    """The AWS CLI (pip awscli) pointed at the twin, as a user would run it; parsed JSON."""
    env = {**os.environ, **twin.env(ROOT, region)}
    out = subprocess.run(
        [
            venv_bin("aws"),
            "--endpoint-url",
            env["AWS_ENDPOINT_URL"],
            "--region",
            region,
            "--output",
            "json",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def leftovers(aws: Aws, region: str, build_id: str, image: str) -> list[str]:
    """Anything of a build still in the twin: live instances, key pairs, Packer's groups.

    Packer's temporary key pairs and groups carry no tag: any such one that no live
    instance uses is a leak (one a concurrent bake on the same twin uses is not).
    """
    live = ["pending", "running", "stopping", "stopped"]
    found = [
        f"instance {i['InstanceId']}"
        for flt in ({f"tag:{amis.TAG_BUILD_ID}": [build_id]}, {f"tag:{amis.TAG_IMAGE}": [image]})
        for i in reaper.instances(aws, region, {**flt, "instance-state-name": live})
    ]
    in_use_groups, in_use_keys = set(), set()
    for i in reaper.instances(aws, region, {"instance-state-name": live}):
        in_use_groups.update(g["GroupName"] for g in i.get("SecurityGroups", []))
        in_use_keys.add(i.get("KeyName", ""))
    ec2 = aws.ec2(region)
    found += [
        f"key pair {k['KeyName']}"
        for k in ec2.describe_key_pairs()["KeyPairs"]
        if build_id in k["KeyName"]
        or (k["KeyName"].startswith("packer_") and k["KeyName"] not in in_use_keys)
    ]
    found += [
        f"security group {g['GroupName']}"
        for g in ec2.describe_security_groups()["SecurityGroups"]
        if g["GroupName"].startswith("packer_") and g["GroupName"] not in in_use_groups
    ]
    return found


def build_id_of(output: str, image: str = "mini|kid|web|base") -> str:
    """The build id a bake of `image` announced ("[build] mini: build mini-<time>-<pid> in
    ..."); the first one of any image by default."""
    found = re.search(rf"build ((?:{image})-\d{{8}}T\d{{6}}Z-\d+) in ", output)
    assert found, "the bake must announce its build id"
    return found.group(1)


def build_amis(aws: Aws, region: str, build_id: str) -> list[str]:
    flt = {f"tag:{amis.TAG_BUILD_ID}": [build_id]}
    return [i["ImageId"] for i in amis.describe_images(aws, region, owners=["self"], filters=flt)]


def vm_leftovers(root: Path, build_id: str) -> list[str]:
    stray = [p for p in qemu_processes() if build_id in p]
    stray += [str(p) for p in (root / ".cache" / "vms").glob(f"twin-{build_id}")]
    stray += [str(p) for p in (root / "build").glob(".work-*")]
    return stray


def add_pair(scratch: Path) -> None:
    """mini (its spec: /etc/mini says hello) and kid layered on it, both for the twin; kid
    shared with one account. The same inputs in every test, so mini is reused."""
    add_mini_image(
        scratch,
        "def test_marker_says_hello(host):\n"
        "    assert host.file('/etc/mini').content_string == 'hello\\n'\n",
        targets=("local", "twin"),
    )
    add_kid_image(scratch, targets=("local", "twin"), share_with=("111122223333",))


@pytest.fixture
def pointer_set(twin_aws: Aws) -> str:
    """/goldsmith/mini/latest pointing at a known AMI (the seeded Debian) in every region."""
    known = twin.DEBIAN_SEED[0]["ami_id"]
    for region in MINI_REGIONS:
        ssm.put_ami(twin_aws, region, MINI_PARAM, known)
    return known


def test_failing_spec_on_the_twin_registers_nothing_and_leaves_nothing(
    scratch: Path, twin_aws: Aws, pointer_set: str
) -> None:
    add_mini_image(
        scratch,
        "def test_marker_says_goodbye(host):\n"
        "    assert host.file('/etc/mini').content_string == 'goodbye\\n'\n",
        targets=("local", "twin"),
    )
    proc = invoke(scratch, "build", "--target", "twin", "--image", "mini")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "test_marker_says_goodbye" in out, "the error must name the failing spec"
    assert "no AMI registered" in out
    build_id = build_id_of(out)
    for region in MINI_REGIONS:
        assert build_amis(twin_aws, region, build_id) == [], f"an AMI was registered in {region}"
        assert leftovers(twin_aws, region, build_id, "mini") == []
        assert ssm.get_ami(twin_aws, region, MINI_PARAM) == pointer_set
    assert vm_leftovers(scratch, build_id) == []
    assert not (scratch / "build/mini/twin/manifest.json").exists()


def test_dirty_seal_fails_on_the_instance_and_registers_no_ami(
    scratch: Path, twin_aws: Aws, pointer_set: str
) -> None:
    """The live specs pass, but a role left AWS credentials in the SSH user's home.

    The twin logs in as the AMI's own user (aws ssh_username, `admin`), as EC2 does, so
    what a build leaves in that user's home is what would ship from AWS. The seal's
    self-check, its last step on the instance, fails Packer before the AMI is made.
    """
    add_mini_image(
        scratch,
        "def test_marker_says_hello(host):\n"
        "    assert host.file('/etc/mini').content_string == 'hello\\n'\n",
        targets=("local", "twin"),
    )
    with (scratch / "roles/mini/tasks/main.yml").open("a") as f:
        f.write(
            "- name: Make an AWS folder in the login user's home\n"
            "  ansible.builtin.file:\n"
            '    path: "/home/{{ ansible_user }}/.aws"\n'
            "    state: directory\n"
            '    mode: "0700"\n'
            "- name: Leave AWS credentials in the login user's home (the seal must catch it)\n"
            "  ansible.builtin.copy:\n"
            '    dest: "/home/{{ ansible_user }}/.aws/credentials"\n'
            '    content: "[default]\\naws_secret_access_key = x\\n"\n'
            '    mode: "0600"\n'
        )
    proc = invoke(scratch, "build", "--target", "twin", "--image", "mini")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the seal's self-check found 1 thing(s) left" in out
    assert "/home/admin/.aws/credentials (AWS credentials)" in out
    assert "no AMI registered" in out
    build_id = build_id_of(out)
    for region in MINI_REGIONS:
        assert build_amis(twin_aws, region, build_id) == [], f"an AMI is left in {region}"
        assert leftovers(twin_aws, region, build_id, "mini") == []
        assert ssm.get_ami(twin_aws, region, MINI_PARAM) == pointer_set
    snaps = twin_aws.ec2("eu-west-1").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{amis.TAG_BUILD_ID}", "Values": [build_id]}]
    )["Snapshots"]
    assert snaps == []
    assert vm_leftovers(scratch, build_id) == []


def test_buildspec_bakes_a_layered_pair_on_the_twin_and_publishes_it(
    scratch: Path, twin_aws: Aws
) -> None:
    """buildspec.yml's phases, in order, as CodeBuild runs them, for kid layered on mini
    (GOLDSMITH_IMAGES names the child first: parents still bake first). kid bakes from
    mini's AMI by id (Packer's filter is that id, owner self), its stand-in booted from
    the disk the twin kept behind that AMI; mini's spec runs on kid too. Then the AWS CLI
    looks at what was published. The checks (lint, unit tests) are `./run test`'s own
    first steps, so this build skips them (GOLDSMITH_CHECKS=0)."""
    add_pair(scratch)
    code = buildspec.run(
        ROOT / "buildspec.yml",
        {
            "GOLDSMITH_TARGET": "twin",
            "GOLDSMITH_IMAGES": "kid mini",
            "GOLDSMITH_CHECKS": "0",
            "GOLDSMITH_SKIP_PACKER_INSTALL": "1",
        },
        runnable(scratch),
    )
    assert code == 0
    out = {name: scratch / "build" / name / "twin" for name in ("mini", "kid")}
    mini, kid = (json.loads((out[n] / "manifest.json").read_text()) for n in ("mini", "kid"))
    assert mini["timings"]["total"] and kid["target"] == "twin"
    assert kid["base"]["source_ami"] == mini["ami"]
    assert kid["parent"]["image"] == "mini" and kid["parent"]["fingerprint"] == mini["fingerprint"]
    assert twin.disk_of(ROOT, mini["ami"]).is_file()
    assert kid["specs"]["live"]["passed"] == 2 and kid["specs"]["hygiene"]["failed"] == 0
    junit = (out["kid"] / "junit.xml").read_text()
    assert 'name="spec mini"' in junit and "<failure" not in junit
    settings = load(scratch / "images.yml").images["kid"].aws
    assert settings is not None and settings.share_with == ("111122223333",)
    for manifest in (mini, kid):
        build_id, image = manifest["build_id"], manifest["image"]
        assert not manifest.get("reused") and manifest["specs"]["hygiene"]["passed"] > 0
        # The seal read the inventory on the builder (as on EC2, where no disk can be
        # mounted), and the twin found it equal to the stand-in's sealed disk's.
        assert manifest["inventory"]["read"].endswith("the seal's read on the builder matches it")
        assert manifest["inventory"]["packages"] == len(manifest["packages"]) > 100
        # With what only the live machine shows: sshd listening on port 22.
        recorded = json.loads((out[image] / "inventory.json").read_text())
        sshd = [s for s in recorded["listening"] if s["port"] == 22 and s["proto"] in TCP]
        assert sshd and {s["process"] for s in sshd} == {"sshd"}, recorded["listening"]
        assert sorted(manifest["amis"]) == sorted(settings.regions)
        # Packer 1.6.6 cannot ask for IMDSv2; the guard required it on the (now gone)
        # builder, and Packer's first step, the gate, found it applied there.
        (builder,) = manifest["imdsv2"]["instances"]
        assert manifest["imdsv2"]["gated"] == [builder]
        found = aws_cli(
            settings.regions[0], "ec2", "describe-instances", "--instance-ids", builder
        )["Reservations"][0]["Instances"][0]
        assert found["MetadataOptions"]["HttpTokens"] == "required"
        assert {t["Key"]: t["Value"] for t in found["Tags"]}[amis.TAG_BUILD_ID] == build_id
        for region in settings.regions:
            ami = manifest["amis"][region]
            described = aws_cli(region, "ec2", "describe-images", "--image-ids", ami)["Images"]
            tags = {t["Key"]: t["Value"] for t in described[0]["Tags"]}
            assert tags[amis.TAG_IMAGE] == image
            assert tags[amis.TAG_BUILD_ID] == build_id
            assert tags[amis.TAG_FINGERPRINT] == manifest["fingerprint"]
            assert tags[amis.TAG_GIT_SHA] == manifest["git"]["sha"]
            assert tags[amis.TAG_ROLES].split(",") == manifest["roles"]
            perms = aws_cli(
                region,
                "ec2",
                "describe-image-attribute",
                "--image-id",
                ami,
                "--attribute",
                "launchPermission",
            )["LaunchPermissions"]
            shared = ["111122223333"] if image == "kid" else []
            assert sorted(p["UserId"] for p in perms) == shared
            # Encrypted with the region's own key (images.yml names it by alias): the AMI's
            # mapping and its snapshot say so, the key by ARN.
            key = aws_cli(region, "kms", "describe-key", "--key-id", settings.kms_key_for(region))
            (mapping,) = described[0]["BlockDeviceMappings"]
            assert mapping["Ebs"]["Encrypted"] is True
            (snapshot,) = aws_cli(
                region, "ec2", "describe-snapshots", "--snapshot-ids", mapping["Ebs"]["SnapshotId"]
            )["Snapshots"]
            assert snapshot["Encrypted"] is True
            assert snapshot["KmsKeyId"] == key["KeyMetadata"]["Arn"]
            assert key["KeyMetadata"]["Arn"].startswith(f"arn:aws:kms:{region}:")
            param = aws_cli(region, "ssm", "get-parameter", "--name", f"/goldsmith/{image}/latest")
            assert param["Parameter"]["Value"] == ami
            assert leftovers(twin_aws, region, build_id, image) == []
        assert (out[image] / "aws-report.md").read_text().count("| eu-") == len(settings.regions)
        assert vm_leftovers(scratch, build_id) == []
    # The parent baked first (its build id's time is earlier), though named second.
    assert mini["build_id"].split("-")[1] <= kid["build_id"].split("-")[1]


def test_the_cve_gate_fails_on_the_builder_and_registers_no_ami(
    scratch: Path, twin_aws: Aws
) -> None:
    """On EC2 no disk can be mounted, so the seal reads the inventory on the builder and
    the CVE gate runs on it before the AMI is made. kid gets a policy whose tracker marks
    base-files fixed in a version it does not have: Packer fails at the gate, naming both,
    and no AMI, instance or VM is left. mini, as the test above made it, is reused (when
    this test runs alone, it is baked first)."""
    add_pair(scratch)
    (scratch / "security").mkdir()
    (scratch / "security/tracker.json").write_text(json.dumps(CVE_TRACKER))
    catalogue = scratch / "images.yml"
    kid = "    playbook: playbooks/kid.yml\n"
    policy = "    vulnerabilities:\n      tracker: security/tracker.json\n      fail_on: high\n"
    catalogue.write_text(catalogue.read_text().replace(kid, kid + policy, 1))
    proc = invoke(scratch, "build", "--target", "twin", "--image", "kid")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the CVE gate failed" in out and "no AMI registered" in out
    assert "CVE-2099-0002 in base-files" in out
    # It failed in Packer, at the gate step on the inventory the seal read (not after).
    assert "goldsmith-seal: inventory read" in out
    build_id = build_id_of(out, "kid")  # (mini, baked first when no test above did)
    for region in MINI_REGIONS:
        assert build_amis(twin_aws, region, build_id) == [], f"an AMI is left in {region}"
        assert leftovers(twin_aws, region, build_id, "kid") == []
    assert not (scratch / "build/kid/twin/manifest.json").exists()
    assert vm_leftovers(scratch, build_id) == []


# Each removed where it first bites: Packer's launch, and goldsmith's IMDSv2 change on the
# launched builder (the guard stops Packer at once; nothing runs on the builder).
DENIED = {
    "ec2:RunInstances": "AWS denied Packer ec2:RunInstances, no AMI registered",
    "ec2:ModifyInstanceMetadataOptions": "stopped before anything ran on it",
}


@pytest.mark.parametrize("action", sorted(DENIED))
def test_a_bake_runs_as_the_repository_policy_and_fails_naming_a_missing_action(
    scratch: Path, twin_aws: Aws, action: str
) -> None:
    """The twin runs builds as the project's aws/policy.json (the CI role's policy). Without
    one action the bake needs, it fails where that action is denied, naming it, registers
    nothing and leaves nothing. (The same bake passes with the whole policy: the other
    tests of this module.)"""
    add_mini_image(
        scratch,
        "def test_marker_says_hello(host):\n"
        "    assert host.file('/etc/mini').content_string == 'hello\\n'\n",
        targets=("local", "twin"),
    )
    path = scratch / twin.POLICY_FILE
    policy = json.loads(path.read_text())
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        statement["Action"] = [a for a in actions if a != action]
    policy["Statement"] = [s for s in policy["Statement"] if s["Action"]]
    path.write_text(json.dumps(policy))
    # --force: the policy is not an input of the image, and an earlier test of this module
    # may have proven mini already (which would be reused, launching nothing).
    proc = invoke(scratch, "build", "--target", "twin", "--image", "mini", "--force")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert DENIED[action] in out and action in out
    if action == "ec2:RunInstances":
        assert "aws/policy.json" in out
    assert "TASK [mini :" not in out, "nothing may run on a builder without IMDSv2"
    build_id = build_id_of(out)
    for region in MINI_REGIONS:
        assert build_amis(twin_aws, region, build_id) == []
        assert leftovers(twin_aws, region, build_id, "mini") == []
    assert vm_leftovers(scratch, build_id) == []
