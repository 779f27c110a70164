"""The catalogue: a valid images.yml loads; every kind of bad input names file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from goldsmith import catalogue
from goldsmith.catalogue import CatalogueError

if TYPE_CHECKING:
    from conftest import Project

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def broken(project: Project, old: str, new: str, count: int = 1) -> str:
    """Load the standard project with `old` replaced by `new` in the catalogue; the error."""
    assert old in project.CATALOGUE, old
    project.standard()
    project.catalogue(project.CATALOGUE.replace(old, new, count))
    with pytest.raises(CatalogueError) as err:
        catalogue.load(project.root / "images.yml")
    return str(err.value)


def test_valid_catalogue_loads(project: Project) -> None:
    project.standard()
    cat = catalogue.load(project.root / "images.yml")

    assert set(cat.bases) == {"debian12", "jammy"}
    assert cat.bases["debian12"] == catalogue.Base(
        name="debian12", kind="debootstrap", suite="bookworm",
        mirror="http://deb.debian.org/debian", disk_size="4G", url="", checksum="",
    )  # fmt: skip
    assert cat.bases["jammy"].kind == "cloud-image"
    assert cat.bases["jammy"].checksum.startswith("file:https://")

    web = cat.image("web")
    assert web.base is cat.bases["debian12"]
    assert web.playbook == (project.root / "playbooks/web.yml").resolve()
    assert web.playbook.is_absolute()
    assert web.targets == ("local", "aws", "twin")
    assert web.aws is not None
    # The merge key brings the anchor's settings; the key written after it wins.
    assert web.aws.regions == ("eu-west-1", "eu-central-1")
    assert web.aws.source_ami_owners == ("136693071363",)
    assert web.aws.source_ami_name == "debian-12-amd64-*"
    assert web.aws.share_with == ("111122223333",)
    assert web.aws.ssm_parameter == "/goldsmith/web/latest"
    assert web.aws.encrypt_boot is True and web.aws.spot is False
    assert cat.image("base").aws.share_with == ()
    assert cat.image("base").aws.ssm_parameter == "/goldsmith/base/latest"
    assert cat.image("lab").aws is None
    assert cat.image("lab").base.name == "jammy"


def test_misspelt_key_is_named_with_a_suggestion_and_its_line(project: Project) -> None:
    msg = broken(project, "    playbook: playbooks/web.yml", "    playbok: playbooks/web.yml")
    line = project.line("images.yml", "playbok:")
    assert f"images.yml:{line}: images.web.playbok: unknown key (did you mean 'playbook'?)" in msg
    # ... and the key it should have been is missing, reported at the image.
    assert f"images.yml:{project.line('images.yml', '  web:')}: images.web: missing " in msg
    assert "'playbook'" in msg


def test_the_file_is_named(project: Project) -> None:
    msg = broken(project, "targets: [local]", "targets: [local, lokal]")
    assert msg.startswith(str(project.root / "images.yml") + ":")
    assert "images.lab.targets[1]: unknown target 'lokal' (did you mean 'local'?)" in msg


def test_every_problem_is_reported_at_once(project: Project) -> None:
    project.standard()
    text = (
        project.CATALOGUE.replace("suite: bookworm", "suite: 12")
        .replace("instance_type: t3.small", "instance_type: small")
        .replace('share_with: ["111122223333"]', 'share_with: ["1111"]')
        .replace("base: jammy", "base: focal")
    )
    project.catalogue(text)
    with pytest.raises(CatalogueError) as err:
        catalogue.load(project.root / "images.yml")
    lines = str(err.value).splitlines()
    assert len(lines) == 5, lines
    # Sorted by line; a value in an anchor is reported for each image that uses it.
    assert [p.path for p in err.value.problems] == [
        "bases.debian12.suite",
        "images.base.aws.instance_type",
        "images.web.aws.instance_type",
        "images.web.aws.share_with[0]",
        "images.lab.base",
    ]
    assert "must be a string, not a number '12' (quote it: \"12\")" in lines[0]
    assert "no base called 'focal'" in lines[4]
    assert "bases: debian12, jammy" in lines[4]


def test_unknown_role_names_playbook_and_role(project: Project) -> None:
    project.standard()
    project.playbook("web", "nginx", "haproxy")
    with pytest.raises(CatalogueError) as err:
        catalogue.load(project.root / "images.yml")
    msg = str(err.value)
    line = project.line("images.yml", "playbook: playbooks/web.yml")
    assert f"images.yml:{line}: images.web.playbook: " in msg
    pb_line = project.line("playbooks/web.yml", "- haproxy")
    assert f"playbooks/web.yml:{pb_line}: role 'haproxy' is not in roles/" in msg


def test_missing_playbook(project: Project) -> None:
    msg = broken(project, "playbook: playbooks/web.yml", "playbook: playbooks/webb.yml")
    line = project.line("images.yml", "playbooks/webb.yml")
    assert (
        f"images.yml:{line}: images.web.playbook: playbook 'playbooks/webb.yml' does not exist"
        in msg
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('["12345"]', "'12345' is not an AWS account id (12 digits, quoted)"),
        ("[111122223333]", 'account id 111122223333 must be a quoted string: "111122223333"'),
        ('["11112222333a"]', "'11112222333a' is not an AWS account id"),
    ],
)
def test_bad_account_id(project: Project, value: str, expected: str) -> None:
    msg = broken(project, 'share_with: ["111122223333"]', f"share_with: {value}")
    line = project.line("images.yml", f"share_with: {value}")
    assert f"images.yml:{line}: images.web.aws.share_with[0]: {expected}" in msg


def test_source_ami_owner_may_be_an_alias(project: Project) -> None:
    project.standard()
    project.catalogue(project.CATALOGUE.replace('owners: ["136693071363"]', "owners: [amazon]"))
    assert catalogue.load(project.root / "images.yml").image("web").aws.source_ami_owners == (
        "amazon",
    )


def test_error_in_an_anchor_is_reported_where_it_is_written(project: Project) -> None:
    msg = broken(project, "regions: [eu-west-1, eu-central-1]", "regions: [eu-west-1, Frankfurt]")
    line = project.line("images.yml", "regions:")
    # Both images use the anchor: each is named, at the line where the value is.
    assert f"images.yml:{line}: images.base.aws.regions[1]: 'Frankfurt' is not an AWS region" in msg
    assert f"images.yml:{line}: images.web.aws.regions[1]: 'Frankfurt'" in msg


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("regions: [eu-west-1, eu-central-1]", "regions: []", "images.base.aws.regions",
         "must list at least one value"),
        ("regions: [eu-west-1, eu-central-1]", "regions: eu-west-1", "images.base.aws.regions",
         "must be a list, not a string"),
        ("regions: [eu-west-1, eu-central-1]", "regions: [eu-west-1, eu-west-1]",
         "images.base.aws.regions[1]", "'eu-west-1' is listed twice"),
        ("ssm_parameter: /goldsmith/{image}/latest", "ssm_parameter: goldsmith/{image}",
         "images.base.aws.ssm_parameter", "must start with '/'"),
        ("ssm_parameter: /goldsmith/{image}/latest", "ssm_parameter: /goldsmith/{name}",
         "images.base.aws.ssm_parameter", "{image} is the only placeholder"),
        ("encrypt_boot: true", "encrypt_boot: maybe", "images.base.aws.encrypt_boot",
         "must be true or false, not 'maybe'"),
        ("kms_key_id: \"\"", "kms_key_id: mykey", "images.base.aws.kms_key_id",
         "'mykey' is not a KMS key id"),
        ("    targets: [local]\n", "    targets: [local, aws]\n", "images.lab",
         "missing required key 'aws' (the image has target aws)"),
        ("base: debian12", "base: debain12", "images.base.base",
         "no base called 'debain12' (did you mean 'debian12'?)"),
        ("disk_size: 4G", "disk_size: 4096", "bases.debian12.disk_size",
         "must be a string, not a number"),
        ("disk_size: 4G", "disk_size: 4 GB", "bases.debian12.disk_size",
         "'4 GB' is not a size with a unit"),
        ("kind: debootstrap", "kind: debootstarp", "bases.debian12.kind",
         "unknown kind 'debootstarp' (did you mean 'debootstrap'?)"),
        ("    checksum: file:", "    suite: jammy\n    sum: file:", "bases.jammy",
         "missing required key 'checksum'"),
        ("    checksum: file:", "    suite: jammy\n    checksum: file:", "bases.jammy.suite",
         "only for kind 'debootstrap'; this base is kind 'cloud-image'"),
        ("    checksum: file:https", "    checksum: sha256:abc\n    x: file:https",
         "bases.jammy.checksum", "'sha256:abc' is not 'sha256:<hex>'"),
        ("images:\n", "image:\n", "image", "unknown key (did you mean 'images'?)"),
        ("bases:\n", "base:\n", "base", "unknown key (did you mean 'bases'?)"),
        ("    kind: debootstrap\n", "", "bases.debian12", "missing required key 'kind'"),
        ("    kind: debootstrap\n", "    suite2: x\n", "bases.debian12.suite2",
         "unknown key (did you mean 'suite'?)"),
        ("  lab:\n", "  Lab:\n", "images.Lab", "name 'Lab' must be lower-case"),
    ],
)  # fmt: skip
def test_bad_values_are_named(
    project: Project, old: str, new: str, path: str, expected: str
) -> None:
    msg = broken(project, old, new)
    assert any(f": {path}: " in line and expected in line for line in msg.splitlines()), msg


def test_duplicate_key_is_an_error(project: Project) -> None:
    msg = broken(project, "      spot: false\n", "      spot: false\n      spot: true\n")
    first = project.line("images.yml", "spot: false")
    second = project.line("images.yml", "spot: true")
    assert (
        f"images.yml:{second}: images.base.aws.spot: duplicate key (first at line {first})" in msg
    )


def test_unreadable_yaml_reports_the_line(project: Project) -> None:
    msg = broken(project, "    targets: [local]\n", "    targets: [local\n")
    # The parser notices at the end of the file, and says what it was reading.
    assert "images.yml:" in msg and "not valid YAML" in msg
    project.catalogue("bases:\n  a: b\n   c: d\n")
    with pytest.raises(CatalogueError) as err:
        catalogue.load(project.root / "images.yml")
    assert "images.yml:3: not valid YAML" in str(err.value)


def test_empty_and_non_mapping_catalogues(project: Project) -> None:
    project.catalogue("")
    with pytest.raises(CatalogueError, match="images.yml:1: the catalogue is empty"):
        catalogue.load(project.root / "images.yml")
    project.catalogue("- web\n")
    with pytest.raises(CatalogueError, match="must be a mapping of 'bases' and 'images'"):
        catalogue.load(project.root / "images.yml")


def test_unknown_image_lists_known_names(project: Project) -> None:
    cat = catalogue.load(project.standard().root / "images.yml")
    with pytest.raises(CatalogueError) as err:
        cat.image("webb")
    msg = str(err.value)
    assert f"images.yml:{project.line('images.yml', 'images:')}: images.webb: no such image" in msg
    assert "(did you mean 'web'?)" in msg
    assert "images in the catalogue: base, lab, web" in msg


def test_playbook_with_role_cycle_is_reported(project: Project) -> None:
    project.standard()
    project.role("common", deps=("nginx",))
    with pytest.raises(CatalogueError, match=r"role dependency cycle: nginx -> common -> nginx"):
        catalogue.load(project.root / "images.yml")


def test_real_catalogue_loads() -> None:
    """The project's own images.yml is valid, and every role its playbooks apply exists."""
    cat = catalogue.load(PROJECT_ROOT / "images.yml")
    assert cat.images, "the catalogue declares no images"
    for image in cat.images.values():
        assert image.playbook.is_file()
        assert image.playbook.is_relative_to(PROJECT_ROOT)


def test_load_accepts_a_relative_path(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.standard()
    monkeypatch.chdir(project.root)
    cat = catalogue.load(Path("images.yml"))
    assert cat.image("web").playbook == (project.root / "playbooks/web.yml").resolve()
    project.catalogue(project.CATALOGUE.replace("playbook: playbooks/web.yml", "playbok: x"))
    with pytest.raises(CatalogueError) as err:
        catalogue.load(Path("images.yml"))
    # A person reads the path they typed, not the machine's absolute one.
    assert str(err.value).startswith("images.yml:")


# --- layered images ----------------------------------------------------------------------

LAYERED = """\
bases:
  debian12:
    kind: debootstrap
    suite: bookworm
x-aws: &aws
  ssh_username: admin
  instance_type: t3.small
  regions: [eu-west-1]
  ssm_parameter: /goldsmith/{image}/latest
images:
  base:
    base: debian12
    playbook: playbooks/base.yml
    targets: [local, twin]
    aws:
      <<: *aws
      source_ami: {owners: ["136693071363"], name: "debian-12-amd64-*"}
  web:
    parent: base
    playbook: playbooks/web.yml
    targets: [local, twin]
    aws: *aws
  edge:
    parent: web
    playbook: playbooks/web.yml
    targets: [local]
"""


def layered(project: Project, old: str = "", new: str = "") -> catalogue.Catalogue:
    project.standard()
    assert old in LAYERED
    project.catalogue(LAYERED.replace(old, new, 1))
    return catalogue.load(project.root / "images.yml")


def layered_error(project: Project, old: str, new: str) -> str:
    with pytest.raises(CatalogueError) as err:
        layered(project, old, new)
    return str(err.value)


def test_a_layered_image_has_its_root_ancestors_base_and_its_chain(project: Project) -> None:
    cat = layered(project)
    edge = cat.image("edge")
    assert edge.parent == "web" and cat.image("web").parent == "base"
    assert edge.base is cat.bases["debian12"]
    assert [i.name for i in cat.layers(edge)] == ["base", "web", "edge"]
    assert [i.name for i in cat.children("base")] == ["web"]
    # No source filter: the parent's AMI is the source.
    assert cat.image("web").aws.source_ami_owners == ()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    parent: base\n",
            "    parent: bsae\n",
            "images.yml:19: images.web.parent: no image called 'bsae' (did you mean 'base'?)",
        ),
        (
            "    parent: base\n",
            "    parent: base\n    base: debian12\n",
            "images.yml:19: images.web.parent: an image names a base or a parent image, not both",
        ),
        (
            "    parent: base\n",
            "    parent: edge\n",
            "images.yml:19: images.web.parent: parent images form a cycle: web -> edge -> web",
        ),
        (
            "    targets: [local, twin]\n    aws: *aws\n",
            "    targets: [local, aws]\n    aws: *aws\n",
            "images.yml:19: images.web.parent: target(s) aws of 'web' are not targets of its "
            "parent 'base' (it lists local, twin)",
        ),
        (
            "    aws: *aws\n",
            "    aws:\n      <<: *aws\n      source_ami: {owners: [self], name: x}\n",
            "images.web.aws.source_ami: a layered image's AMI starts from its parent's proven "
            "AMI, never a filter",
        ),
        (
            "    parent: base\n",
            "",
            "images.web: missing required key 'base' (or 'parent', an image)",
        ),
    ],
)
def test_a_bad_parent_is_named_with_its_line(
    project: Project, old: str, new: str, message: str
) -> None:
    assert message in layered_error(project, old, new)


# --- KMS keys: one per region, and none of them aws/ebs when the AMI is shared -----------

WEB_KEY = "      kms_key_id: alias/goldsmith-ami\n"
MRK_ARN = "arn:aws:kms:eu-west-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef"


def web_keys(project: Project, value: str) -> catalogue.AwsSettings:
    """The standard catalogue with web's kms_key_id set to `value` (YAML); web's settings."""
    project.standard()
    project.catalogue(project.CATALOGUE.replace(WEB_KEY, f"      kms_key_id: {value}\n"))
    settings = catalogue.load(project.root / "images.yml").image("web").aws
    assert settings is not None
    return settings


def test_an_alias_names_the_key_of_that_name_in_every_region(project: Project) -> None:
    settings = web_keys(project, "alias/goldsmith-ami")
    assert settings.kms_key_ids == {
        "eu-west-1": "alias/goldsmith-ami",
        "eu-central-1": "alias/goldsmith-ami",
    }
    assert settings.kms_key_for("eu-central-1") == "alias/goldsmith-ami"


def test_a_multi_region_key_arn_names_its_replica_in_every_region(project: Project) -> None:
    settings = web_keys(project, MRK_ARN)
    assert settings.kms_key_ids["eu-west-1"] == MRK_ARN
    assert settings.kms_key_ids["eu-central-1"] == MRK_ARN.replace("eu-west-1", "eu-central-1")


def test_a_key_per_region(project: Project) -> None:
    settings = web_keys(
        project,
        "\n        eu-west-1: arn:aws:kms:eu-west-1:123456789012:key/"
        "0b1c2d3e-0000-4000-8000-000000000001\n        eu-central-1: alias/central",
    )
    assert settings.kms_key_ids == {
        "eu-west-1": "arn:aws:kms:eu-west-1:123456789012:key/0b1c2d3e-0000-4000-8000-000000000001",
        "eu-central-1": "alias/central",
    }


def test_unshared_image_without_a_key_uses_the_default(project: Project) -> None:
    project.standard()
    base = catalogue.load(project.root / "images.yml").image("base").aws
    assert base is not None and base.kms_key_ids == {} and base.kms_key_for("eu-west-1") == ""


@pytest.mark.parametrize(
    ("value", "path", "expected"),
    [
        ("\n        eu-west-1: alias/west", "images.web.aws.kms_key_id",
         "no key for region 'eu-central-1': once any region has a KMS key, every region"),
        ("\n        eu-west-1: alias/w\n        eu-central-1: alias/c\n        us-east-1: alias/u",
         "images.web.aws.kms_key_id.us-east-1", "'us-east-1' is not one of the image's regions"),
        ("\n        eu-west-1: alias/west\n        eu-central-1: ''",
         "images.web.aws.kms_key_id.eu-central-1", "must not be empty"),
        ("\n        eu-west-1: alias/west\n        eu-central-1: " + MRK_ARN,
         "images.web.aws.kms_key_id.eu-central-1",
         f"'{MRK_ARN}' is a key in eu-west-1, not in eu-central-1"),
        ("0b1c2d3e-0000-4000-8000-000000000001", "images.web.aws.kms_key_id",
         "'0b1c2d3e-0000-4000-8000-000000000001' is a key of one region only, and the image "
         "is copied to eu-west-1, eu-central-1"),
        ("arn:aws:kms:eu-west-1:123456789012:key/0b1c2d3e-0000-4000-8000-000000000001",
         "images.web.aws.kms_key_id", "is a key of one region only"),
        ("[alias/a]", "images.web.aws.kms_key_id",
         "must be a KMS key or a mapping of region to key, not a list"),
        ('""', "images.web.aws.share_with",
         "sharing with 111122223333 needs a customer-managed KMS key, but kms_key_id is '' "
         "(the default aws/ebs key): another account cannot launch an AMI encrypted with the "
         "owner's default EBS key"),
        ("alias/aws/ebs", "images.web.aws.share_with",
         "but kms_key_id is 'alias/aws/ebs' in eu-central-1, eu-west-1"),
        ("\n        eu-west-1: alias/west\n        eu-central-1: "
         "arn:aws:kms:eu-central-1:123456789012:alias/aws/ebs", "images.web.aws.share_with",
         "kms_key_id is 'arn:aws:kms:eu-central-1:123456789012:alias/aws/ebs' in eu-central-1"),
    ],
)  # fmt: skip
def test_bad_kms_keys_are_named(project: Project, value: str, path: str, expected: str) -> None:
    msg = broken(project, WEB_KEY, f"      kms_key_id: {value}\n")
    assert any(
        line.split(":")[0].endswith("images.yml") and f": {path}: " in line and expected in line
        for line in msg.splitlines()
    ), msg


def test_sharing_without_any_key_is_refused_at_share_with(project: Project) -> None:
    msg = broken(project, WEB_KEY, "")
    line = project.line("images.yml", 'share_with: ["111122223333"]')
    assert f"images.yml:{line}: images.web.aws.share_with: " in msg, msg
    assert "but kms_key_id is '' (the default aws/ebs key)" in msg  # the anchor's value


def test_a_key_with_encryption_off_is_an_error(project: Project) -> None:
    msg = broken(project, WEB_KEY, WEB_KEY + "      encrypt_boot: false\n")
    assert "images.web.aws.kms_key_id: a KMS key is set but encrypt_boot is false" in msg
