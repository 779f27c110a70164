"""goldsmith.aws.twin: a real moto server on loopback, started, reused and stopped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from goldsmith.aws import amis, twin
from goldsmith.aws.clients import Aws
from goldsmith.errors import GoldsmithError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "images.yml").write_text("bases: {}\nimages: {}\n")
    (tmp_path / "aws").mkdir()
    shutil.copy(PROJECT_ROOT / twin.POLICY_FILE, tmp_path / twin.POLICY_FILE)
    yield tmp_path
    twin.down(tmp_path)


def test_up_reuse_down(root: Path) -> None:
    first = twin.up(root)
    assert first.endpoint.startswith("http://127.0.0.1:")
    assert twin.up(root) == first  # reused, not a second server
    assert (twin.state_dir(root) / "moto.pid").read_text().strip() == str(first.pid)
    assert twin.endpoint(root) == first.endpoint
    assert twin.down(root) is True
    assert twin.running(root) is None
    assert (
        not Path(f"/proc/{first.pid}").exists()
        or b"moto" not in Path(f"/proc/{first.pid}/cmdline").read_bytes()
    )
    with pytest.raises(GoldsmithError, match=r"twin is not running.*\./run twin.up"):
        twin.aws(root)
    with pytest.raises(GoldsmithError, match="twin is not running"):
        twin.endpoint(root)
    assert twin.down(root) is False


def test_catalogue_source_filter_finds_debian_in_every_region(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin.up(root)
    for k, v in twin.env(root).items():
        monkeypatch.setenv(k, v)
    aws = Aws()
    assert aws.endpoint_url == twin.endpoint(root)
    newest = max(twin.DEBIAN_SEED, key=lambda a: a["creation_date"])
    for region in ("eu-west-1", "eu-central-1", "us-east-1"):
        found = amis.find_source_ami(aws, region, ["136693071363"], "debian-12-amd64-*")
        assert found["ImageId"] == newest["ami_id"]
        assert found["OwnerId"] == "136693071363"
    # moto's own public images are still there for other filters.
    assert list(amis.describe_images(aws, "eu-west-1", owners=["099720109477"]))


def test_stale_pid_file_is_ignored(root: Path) -> None:
    d = twin.state_dir(root)
    d.mkdir(parents=True)
    (d / "moto.pid").write_text("999999\n")
    (d / "moto.port").write_text("1\n")
    assert twin.running(root) is None
    t = twin.up(root)
    assert t.pid != 999999 and twin.running(root) == t


def test_reset_forgets_state_but_keeps_the_seed(root: Path) -> None:
    twin.up(root)
    before = twin.builder(root)
    twin.admin_aws(root).ec2("eu-west-1").create_key_pair(KeyName="packer_x")
    twin.reset(root)
    # IAM is reset too: the builder is made again, with a new key, on first use.
    aws = twin.aws(root)
    assert twin.builder(root) != before
    assert aws.ec2("eu-west-1").describe_key_pairs()["KeyPairs"] == []
    assert amis.find_source_ami(aws, "eu-west-1", ["136693071363"], "debian-12-amd64-*")


def test_builds_on_the_twin_run_as_the_repository_policy(root: Path) -> None:
    """The builder may do what aws/policy.json allows and nothing else; the root may."""
    twin.up(root)
    builder, admin = twin.aws(root), twin.admin_aws(root)
    assert builder.ec2("eu-west-1").describe_key_pairs()["KeyPairs"] == []
    with pytest.raises(GoldsmithError, match="ec2:CreateKeyPair"):
        builder.ec2("eu-west-1").create_key_pair(KeyName="packer_y")
    with pytest.raises(GoldsmithError, match="iam:CreateUser"):
        builder.client("iam", "us-east-1").create_user(UserName="intruder")
    admin.ec2("eu-west-1").create_key_pair(KeyName="packer_y")
    audit = (twin.state_dir(root) / "iam-audit.jsonl").read_text().splitlines()
    assert '"action": "ec2:CreateKeyPair", "allowed": false' in "\n".join(audit)
    assert '"action": "ec2:DescribeKeyPairs", "allowed": true' in "\n".join(audit)


def test_a_project_without_a_policy_cannot_build_on_the_twin(root: Path) -> None:
    twin.up(root)
    (root / twin.POLICY_FILE).unlink()
    with pytest.raises(GoldsmithError, match="aws/policy.json: missing"):
        twin.aws(root)


def test_the_images_key_aliases_are_made_once_per_region_on_the_twin(root: Path) -> None:
    """The twin is an empty account: the aliases images.yml names are made there (on AWS
    the account holds them); a key named by id, or AWS's own aws/ebs, is not made."""
    twin.up(root)
    keys = {
        "eu-west-1": "alias/goldsmith-ami",
        "eu-central-1": "arn:aws:kms:eu-central-1:123456789012:alias/goldsmith-ami",
        "us-east-1": "alias/aws/ebs",
        "eu-north-1": "1234abcd-12ab-34cd-56ef-1234567890ab",
    }
    made = twin.ensure_keys(root, keys)
    assert made == ["eu-central-1:alias/goldsmith-ami", "eu-west-1:alias/goldsmith-ami"]
    assert twin.ensure_keys(root, keys) == []  # there already
    aws = twin.admin_aws(root)
    for region in ("eu-west-1", "eu-central-1"):
        key = aws.client("kms", region).describe_key(KeyId="alias/goldsmith-ami")["KeyMetadata"]
        assert key["Arn"].startswith(f"arn:aws:kms:{region}:")
    names = [a["AliasName"] for a in aws.client("kms", "eu-north-1").list_aliases()["Aliases"]]
    assert "alias/goldsmith-ami" not in names
