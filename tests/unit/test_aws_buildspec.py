"""buildspec.yml and the runner that plays it as CodeBuild does."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from goldsmith import report
from goldsmith.aws import buildspec
from goldsmith.catalogue import load as load_catalogue
from goldsmith.errors import GoldsmithError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "buildspec.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_runner_keeps_one_shell_and_runs_post_build_after_a_failed_build(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        """\
        version: 0.2
        env:
          variables:
            GREETING: from-env
            OVERRIDDEN: no
        phases:
          install:
            commands:
              - SHARED=set-in-install
          pre_build:
            commands:
              - echo "$SHARED $GREETING $OVERRIDDEN" > pre.txt
          build:
            commands:
              - |
                echo building > build.txt
                false
              - echo not-reached > skipped.txt
          post_build:
            commands:
              - echo "succeeding=$CODEBUILD_BUILD_SUCCEEDING" > post.txt
        """,
    )
    rc = buildspec.run(spec, {"OVERRIDDEN": "yes"}, tmp_path)
    assert rc != 0
    assert (tmp_path / "pre.txt").read_text().split() == ["set-in-install", "from-env", "yes"]
    assert (tmp_path / "build.txt").exists()
    assert not (tmp_path / "skipped.txt").exists()
    assert (tmp_path / "post.txt").read_text().strip() == "succeeding=0"


def test_failed_pre_build_stops_everything(tmp_path: Path) -> None:
    spec = write(
        tmp_path,
        """\
        version: 0.2
        phases:
          pre_build:
            commands: ["false"]
          build:
            commands: ["touch build.txt"]
          post_build:
            commands: ["touch post.txt"]
        """,
    )
    assert buildspec.run(spec, {}, tmp_path) != 0
    assert not (tmp_path / "build.txt").exists() and not (tmp_path / "post.txt").exists()


def test_passing_buildspec_exits_zero(tmp_path: Path) -> None:
    spec = write(tmp_path, "version: 0.2\nphases:\n  build:\n    commands: ['true']\n")
    assert buildspec.run(spec, {}, tmp_path) == 0


def test_bad_buildspec_is_a_clear_error(tmp_path: Path) -> None:
    spec = write(tmp_path, "version: 0.1\nphases: {}\n")
    with pytest.raises(GoldsmithError, match="key 'version' must be 0.2"):
        buildspec.load(spec)
    spec = write(tmp_path, "version: 0.2\nphases:\n  deploy:\n    commands: []\n")
    with pytest.raises(GoldsmithError, match="phases.deploy is not a CodeBuild phase"):
        buildspec.load(spec)


def test_project_buildspec_matches_the_catalogue_and_reports_junit() -> None:
    spec = buildspec.load(ROOT / "buildspec.yml")
    catalogue = load_catalogue(ROOT / "images.yml")
    # The build graph: checks once, then a build per AMI image after its parent's build.
    graph = {b["identifier"]: b for b in spec["batch"]["build-graph"]}
    assert graph["checks"]["env"]["variables"] == {"GOLDSMITH_BAKE": "0"}
    aws_images = {n for n, i in catalogue.images.items() if "aws" in i.targets}
    assert set(graph) == aws_images | {"checks"}
    for name in aws_images:
        node = graph[name]
        assert node["env"]["variables"] == {"GOLDSMITH_IMAGES": name, "GOLDSMITH_CHECKS": "0"}
        assert node["depend-on"] == [catalogue.images[name].parent or "checks"]
    reports = {r["file-format"]: r for r in spec["reports"].values()}
    assert set(reports) == {"JUNITXML"}
    files = [f for r in spec["reports"].values() for f in r["files"]]
    assert "build/*/*/junit.xml" in files and "build/junit-unit.xml" in files
    text = yaml.safe_dump(spec["phases"])
    for needed in (
        "./run lint",
        "--junitxml=build/junit-unit.xml",
        "./run build --target",
        "./run plan",
        "./run aws.publish",
        "./run sweep",
    ):
        assert needed in text


# The Packer every test and DESIGN.md prove (Debian bookworm's).
PROVEN_PACKER = "1.6.6"


def test_ci_installs_the_proven_packer_from_its_checked_release_zip() -> None:
    spec = buildspec.load(ROOT / "buildspec.yml")
    variables = spec["env"]["variables"]
    assert variables["PACKER_VERSION"] == PROVEN_PACKER
    assert re.fullmatch(r"[0-9a-f]{64}", variables["PACKER_SHA256"])
    install = "\n".join(spec["phases"]["install"]["commands"])
    assert "https://releases.hashicorp.com/packer/$PACKER_VERSION/" in install
    assert "packer_${PACKER_VERSION}_linux_amd64.zip" in install
    assert '"$PACKER_SHA256  /tmp/$zip" | sha256sum --check --strict -' in install
    assert "apt.releases.hashicorp.com" not in install
    # Checked before it is unpacked: the checksum line comes first.
    assert install.index("sha256sum --check") < install.index("unzip")


@pytest.mark.parametrize(("says", "passes"), [("Packer v1.6.6", True), ("Packer v1.11.2", False)])
def test_a_packer_other_than_the_pinned_one_stops_the_build(
    tmp_path: Path, says: str, passes: bool
) -> None:
    """The install phase's version gate, run as CodeBuild would with a stand-in `packer`."""
    spec = buildspec.load(ROOT / "buildspec.yml")
    gate = [c for c in spec["phases"]["install"]["commands"] if "packer version" in c]
    assert len(gate) == 1, "buildspec.yml: one install command checks `packer version`"
    fake = tmp_path / "bin" / "packer"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{says}'\necho 'Your version of Packer is out of date!'\n")
    fake.chmod(0o755)
    mini = {
        "version": 0.2,
        "env": {"variables": {"PACKER_VERSION": spec["env"]["variables"]["PACKER_VERSION"]}},
        "phases": {"install": {"commands": gate}, "build": {"commands": ["touch built"]}},
    }
    path = tmp_path / "buildspec.yml"
    path.write_text(yaml.safe_dump(mini))
    rc = buildspec.run(path, {"PATH": f"{fake.parent}:{os.environ['PATH']}"}, tmp_path)
    assert (rc == 0) is passes
    assert (tmp_path / "built").exists() is passes


@pytest.mark.parametrize(
    ("mode", "bakes", "validate_bake"),
    [
        ("validate", False, "1"),
        ("validate", False, "0"),
        ("release", True, "1"),
        ("relase", None, "1"),
        ("validate", None, "yes"),
    ],
)
def test_a_validation_build_lints_tests_and_plans_but_never_bakes_or_publishes(
    tmp_path: Path, mode: str, bakes: bool | None, validate_bake: str
) -> None:
    """The real phases (install's Packer steps left out) with stand-ins for `./run` and the
    venv's python that record how they were called; the CI stack's pr project sets
    GOLDSMITH_MODE=validate. A mode that is neither stops the build before anything runs,
    and so does a GOLDSMITH_VALIDATE_BAKE that is neither 1 nor 0. A validation build's
    report bakes locally (`--bake`) unless GOLDSMITH_VALIDATE_BAKE is 0; it never runs
    `build` for the target nor publishes."""
    spec = buildspec.load(ROOT / "buildspec.yml")
    calls = tmp_path / "calls.txt"
    record = f'#!/bin/sh\necho "$0 $*" >> {calls}\n'
    (tmp_path / "run").write_text(record)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(record + 'case "$*" in *goldsmith.aws.ci\\ images*) echo base web;; esac\n')
    for f in (tmp_path / "run", python):
        f.chmod(0o755)
    gate = [c for c in spec["phases"]["install"]["commands"] if "GOLDSMITH_MODE" in c]
    assert len(gate) == 1, "buildspec.yml: the first install command checks GOLDSMITH_MODE"
    assert spec["phases"]["install"]["commands"][0] == gate[0]
    mini = {
        "version": 0.2,
        "env": spec["env"],
        "phases": {"install": {"commands": gate}}
        | {p: spec["phases"][p] for p in ("pre_build", "build", "post_build")},
    }
    path = tmp_path / "buildspec.yml"
    path.write_text(yaml.safe_dump(mini))
    env = {"GOLDSMITH_MODE": mode, "CODEBUILD_BUILD_SUCCEEDING": "1"}
    rc = buildspec.run(path, env | {"GOLDSMITH_VALIDATE_BAKE": validate_bake}, tmp_path)
    ran = calls.read_text().splitlines() if calls.exists() else []
    if bakes is None:
        assert rc != 0 and ran == []
        return
    assert rc == 0
    run = [line.split(" ", 1)[1] for line in ran if line.startswith("./run ")]
    assert run[0] == "lint"
    assert any("pytest tests/unit" in line for line in ran)
    assert "plan --image base --target aws" in run and "plan --image web --target aws" in run
    built = [c for c in run if c.startswith("build ")]
    published = [c for c in run if c.startswith("aws.publish ")]
    reported = [c for c in run if c.startswith("report")]
    if bakes:
        assert built == ["build --target aws --image base", "build --target aws --image web"]
        assert published == [
            "aws.publish --image base --target aws",
            "aws.publish --image web --target aws",
        ]
        assert reported == []
    else:
        assert built == [] and published == []
        # The pull request's report, once, after the plan of every image: with its local
        # validation bakes by default (buildspec.yml's GOLDSMITH_VALIDATE_BAKE is 1).
        wanted = "report --target aws" + (" --bake" if validate_bake == "1" else "")
        assert reported == [wanted]
        assert run.index(wanted) > run.index("plan --image web --target aws")
        assert run[-1] == "sweep"  # post_build still sweeps what a killed bake left


def test_the_pull_request_report_is_an_artifact() -> None:
    """What `./run report` writes by default is in the build's artifacts."""
    spec = buildspec.load(ROOT / "buildspec.yml")
    files = spec["artifacts"]["files"]
    assert "build/report/pr-report.md" in files and "build/report/pr-report.json" in files
    assert report.default_path(ROOT) == ROOT / "build/report/pr-report.md"
    assert report.default_path(ROOT).with_suffix(".json") == ROOT / "build/report/pr-report.json"


def test_the_pull_request_project_and_buildspec_agree_on_the_validation_bake() -> None:
    """The CI stack's pr project: the variables it sets are buildspec.yml's (validate mode,
    the bake on by default, as buildspec.yml's own default); a local bake needs root with
    loop devices and mounts (privileged mode) and the published AMI's commit (a full
    clone), and no AWS permission the plan did not already have: its role still has
    only ec2:DescribeImages (the plan's, and the reference's commit tag) and the report's
    s3:PutObject."""
    from goldsmith.aws import stack

    spec = buildspec.load(ROOT / "buildspec.yml")
    template = stack.render(ROOT)
    project = template["Resources"]["PullRequestProject"]["Properties"]
    env = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
    assert set(env) <= set(spec["env"]["variables"])
    assert env["GOLDSMITH_MODE"] == "validate"
    assert env["GOLDSMITH_VALIDATE_BAKE"] == {"Ref": "ValidationBake"}
    parameter = template["Parameters"]["ValidationBake"]
    assert parameter["Default"] == spec["env"]["variables"]["GOLDSMITH_VALIDATE_BAKE"] == "1"
    assert sorted(parameter["AllowedValues"]) == ["0", "1"]
    assert project["Environment"]["PrivilegedMode"] is True
    assert project["Source"]["GitCloneDepth"] == 0
    assert project["TimeoutInMinutes"] == {"Ref": "ValidationTimeoutMinutes"}
    role = template["Resources"]["ValidationRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    actions = []
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            action = statement["Action"]
            actions += [action] if isinstance(action, str) else action
    assert sorted(actions) == ["ec2:DescribeImages", "s3:PutObject"]
    # Attached to the pr role elsewhere in the template: CodeBuild's basics, nothing else.
    attached = [
        name
        for name, r in template["Resources"].items()
        if r["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy")
        and {"Ref": "ValidationRole"} in r["Properties"].get("Roles", [])
    ]
    assert attached == ["CodeBuildBasicsPolicy"]
