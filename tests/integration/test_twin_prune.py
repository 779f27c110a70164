"""`./run aws.prune --image web --target twin --keep 2` as a user runs it (seconds).

Five proven web builds are made through the API as the twin's root, as a bake and a
publish leave them (an AMI made from an instance, tagged, copied to the other region,
`latest` moved); no Packer and no VM. One is used by a launch template. The prune runs
as builds do on the twin: as the IAM user whose only policy is aws/policy.json. The
result is checked with the AWS CLI. The twin is this test's own (a temporary project).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aws_builds import CENTRAL, WEST, bake_and_publish, provenance
from conftest import invoke, twin_cli

from goldsmith.aws import amis, twin

pytestmark = [pytest.mark.twin]


def images(project: Path, region: str) -> list[dict]:
    """The account's own AMIs in `region`, with the AWS CLI as a build's identity."""
    return list(twin_cli(project, region, "ec2", "describe-images", "--owners", "self")["Images"])


def test_prune_keeps_the_newest_two_and_the_one_in_use(twin_project: Path) -> None:
    root = twin.admin_aws(twin_project)
    builds = {day: bake_and_publish(root, day) for day in (1, 2, 3, 4, 5)}
    snapshots = {
        (day, region): amis.snapshots_of(amis.describe_image(root, region, ami))
        for day, found in builds.items()
        for region, ami in found.items()
    }
    root.ec2(CENTRAL).create_launch_template(
        LaunchTemplateName="web-fleet", LaunchTemplateData={"ImageId": builds[2][CENTRAL]}
    )

    dry = invoke(twin_project, "aws.prune", "--image", "web", "--target", "twin", "--keep", "2")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr
    rows = {provenance(d).build_id: d for d in builds}
    table = {
        rows[line.split()[0]]: line
        for line in dry.stdout.splitlines()
        if line.split()[:1] and line.split()[0] in rows
    }
    assert "newest proven build" in table[5] and "within keep 2" in table[4]
    assert " prune " in table[3] and "beyond keep 2 (#3)" in table[3]
    assert "launch template web-fleet v1 (eu-central-1)" in table[2] and " keep " in table[2]
    assert " prune " in table[1] and "beyond keep 2 (#5)" in table[1]
    assert "dry run: nothing changed; 2 build(s) would be pruned" in dry.stdout
    assert len(images(twin_project, WEST)) == 5

    done = invoke(
        twin_project, "aws.prune", "--image", "web", "--target", "twin", "--keep", "2", "--apply"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "2 build(s) retired" in done.stdout and "4 deregistered" in done.stdout
    for region in (WEST, CENTRAL):
        left = {i["ImageId"] for i in images(twin_project, region)}
        assert left == {builds[d][region] for d in (2, 4, 5)}, region
        found = twin_cli(twin_project, region, "ec2", "describe-snapshots", "--owner-ids", "self")
        snaps = {s["SnapshotId"] for s in found["Snapshots"]}
        for day in builds:
            assert (set(snapshots[day, region]) <= snaps) == (day in (2, 4, 5)), (day, region)
