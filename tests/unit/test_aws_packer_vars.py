"""goldsmith.aws.packer_vars: the -var values of the amazon-ebs source, checked by Packer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from goldsmith.aws import amis, packer_vars
from goldsmith.errors import GoldsmithError
from goldsmith.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = SimpleNamespace(
    source_ami_owners=("136693071363",),
    source_ami_name="debian-12-amd64-*",
    ssh_username="admin",
    instance_type="t3.small",
    encrypt_boot=True,
    kms_key_for=lambda region: "",
    spot=False,
)
PROV = amis.Provenance("web", "abc", "f" * 64, "b1", ("base", "nginx"))


def test_twin_values() -> None:
    v = packer_vars.packer_vars(
        SETTINGS,
        PROV,
        region="eu-west-1",
        endpoint="http://127.0.0.1:5000",
        ssh_host="127.0.0.1",
        ssh_port=2222,
        keypair_name="goldsmith-b1",
        private_key_file="build/web/id_ed25519",
    )
    assert v["aws_source_ami_owners"] == ["136693071363"]
    assert v["aws_ssh_source_cidrs"] == ["127.0.0.1/32"]
    assert (v["aws_encrypt_boot"], v["aws_spot"]) == (True, False)
    assert (v["aws_ssh_port"], v["aws_roles"], v["aws_build_id"]) == (2222, "base,nginx", "b1")


def test_real_aws_cidrs_from_the_setting() -> None:
    """The aws_ssh_cidrs setting reaches the template; a bad CIDR fails when settings load."""
    v = packer_vars.packer_vars(
        SETTINGS, PROV, region="eu-west-1", ssh_source_cidrs=["10.0.0.0/16", "203.0.113.7/32"]
    )
    assert v["aws_ssh_source_cidrs"] == ["10.0.0.0/16", "203.0.113.7/32"]
    assert v["aws_endpoint_ec2"] == ""
    s = Settings.from_config({"aws_ssh_cidrs": "10.0.0.0/16, 203.0.113.7/32"})
    assert s.aws_ssh_cidrs == ("10.0.0.0/16", "203.0.113.7/32")
    with pytest.raises(GoldsmithError, match="aws_ssh_cidrs: 'everyone' is not a CIDR"):
        Settings.from_config({"aws_ssh_cidrs": "everyone"})


def test_the_build_regions_kms_key_encrypts_the_launch_volume() -> None:
    keys = {"eu-west-1": "alias/west", "eu-central-1": "alias/central"}
    settings = SimpleNamespace(**{**vars(SETTINGS), "kms_key_for": keys.get})
    v = packer_vars.packer_vars(settings, PROV, region="eu-central-1", ssh_source_cidrs=[])
    assert (v["aws_encrypt_boot"], v["aws_kms_key_id"]) == (True, "alias/central")


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")
@pytest.mark.parametrize(("spot", "kms"), [(False, ""), (True, ""), (False, "alias/goldsmith-ami")])
def test_packer_accepts_the_source_with_these_values(tmp_path: Path, spot: bool, kms: str) -> None:
    for f in ("variables.aws.pkr.hcl", "source.aws.pkr.hcl"):
        shutil.copy(ROOT / "packer" / f, tmp_path / f)
    (tmp_path / "build.pkr.hcl").write_text('build {\n  sources = ["source.amazon-ebs.aws"]\n}\n')
    settings = SimpleNamespace(
        **{**vars(SETTINGS), "spot": spot, "kms_key_for": lambda region: kms}
    )
    v = packer_vars.packer_vars(
        settings, PROV, region="eu-west-1", ssh_source_cidrs=["10.1.2.3/32"]
    )
    # The way goldsmith.packer passes them: a .pkrvars.hcl of JSON literals.
    (tmp_path / "aws.pkrvars.hcl").write_text(
        "".join(f"{k} = {json.dumps(x)}\n" for k, x in v.items())
    )
    cmd = ["packer", "validate", "-var-file=aws.pkrvars.hcl", "."]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_builder_terminates_on_shutdown_and_everything_carries_the_build_id() -> None:
    """A builder Packer lost terminates if shut down; everything it makes is tagged at once.

    (`packer validate` of this source, on-demand and spot, is the test above.)
    """
    source = (ROOT / "packer" / "source.aws.pkr.hcl").read_text()
    settings = dict(re.findall(r"^\s*(\w+)\s*=\s*(.+?)\s*$", source, flags=re.MULTILINE))
    assert settings["shutdown_behavior"] == '"terminate"'
    for tagged in ("tags", "snapshot_tags", "run_tags", "run_volume_tags"):
        assert settings[tagged] == "local.aws_tags", tagged
    assert '"goldsmith:build-id"    = var.aws_build_id' in source
