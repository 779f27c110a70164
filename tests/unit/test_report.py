"""A pull request's report and `diff --against-ref`, on build folders written here: the
plan's reasons, the specs and uncovered roles, the changes against the replaced build,
the SBOM and the CVE gate, in markdown and in JSON; the build proven as of a git ref."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from review_kit import as_project_root, inv, pkg, run, write_build

from goldsmith import catalogue, pipeline
from goldsmith import report as pr_report
from goldsmith.targets.local import Local
from goldsmith.tasks import review

if TYPE_CHECKING:
    from conftest import Project


OLD = inv(pkg("openssl", "3.0.13-1~deb12u1"))
NEW = inv(pkg("openssl", "3.0.13-1~deb12u1"), pkg("nginx", "1.22.1-9"))
GATE = {
    "ok": True,
    "policy": "images.base.vulnerabilities",
    "fail_on": "high",
    "release": "bookworm",
    "allowed": ["CVE-2024-0001"],
    "below_threshold": 3,
    "open": 0,
    "expired_allows": [],
    "report": "cve-report.md",
}


def reviewed_project(project: Project) -> catalogue.Catalogue:
    """The standard project, base with a CVE policy, web applying a role without a spec."""
    project.standard()
    project.role("motd", spec=False)
    project.playbook("web", "nginx", "motd")
    project.catalogue(
        project.CATALOGUE.replace(
            "    playbook: playbooks/base.yml\n    targets: [local, aws, twin]\n",
            "    playbook: playbooks/base.yml\n    targets: [local, aws, twin]\n"
            "    vulnerabilities: {fail_on: high}\n",
            1,
        )
    )
    return catalogue.load(project.root / "images.yml")


ROWS = [
    {
        "image": "base",
        "target": "local",
        "fingerprint": "1" * 64,
        "action": "rebake",
        "last": "build/base/local/base.qcow2 (build base-2)",
        "last_fingerprint": "base-2".ljust(64, "0"),
        "changed": ["roles/common/tasks/main.yml"],
    },
    {
        "image": "web",
        "target": "local",
        "fingerprint": "2" * 64,
        "action": "rebake",
        "last": None,
        "last_fingerprint": None,
        "changed": None,
        "note": "no proven build yet",
    },
]


def test_the_report_has_plan_specs_uncovered_roles_changes_sbom_and_gate(
    project: Project,
) -> None:
    cat = reviewed_project(project)
    out = project.root / "build/base/local"
    write_build(out / "previous", "base", "base-1", OLD)
    write_build(out, "base", "base-2", NEW, cve_gate=GATE, cve_gate_reason=None)
    git = {"sha": "a" * 40, "dirty": False}
    report = pr_report.collect(project.root, cat, ROWS, git=git)
    md = report.to_markdown()

    assert md.startswith("# goldsmith: what this change does to the images\n")
    assert "Commit `aaaaaaaaaaaa`. Plan: would rebake base, web." in md
    assert "| base | local | rebake | 12 passed | — | 2 components (CycloneDX 1.6 JSON) " in md
    assert "| web | local | rebake | — | motd | none (no build recorded here) " in md
    base, web = md.split("## base (local): rebake")[1].split("## web (local): rebake")
    # base: the plan's reason, the build kept here, its specs, its changes, SBOM and gate.
    assert "- Not baked in this run; last proven build: build/base/local/base.qcow2" in base
    assert "- Changed inputs: `roles/common/tasks/main.yml`." in base
    assert "- Build recorded here: base-2 (2026-12-04T18:00:00Z, commit `ffffffffffff`" in base
    assert "- Specs: 12 passed, 0 failed, 1 skipped; hygiene 15 passed, 0 failed" in base
    assert "- Uncovered roles: none." in base
    assert "- SBOM: 2 components (CycloneDX 1.6 JSON)." in base
    assert (
        "- CVE gate: passed (images.base.vulnerabilities, fail on high, release bookworm); "
        "allowed by the policy: CVE-2024-0001; 3 below the threshold." in base
    )
    old, new = "build base-1 (build/base/local/previous)", "build base-2 (build/base/local)"
    assert f"### base (local): {old} → {new}" in base  # the comparison, one level down
    assert "- added `nginx` 1.22.1-9" in base and "openssl" not in base
    # web: nothing baked, nothing recorded; its uncovered role and its gate without a build.
    assert "- Not baked in this run; last proven build: none." in web
    assert "- Plan note: no proven build yet" in web
    assert "- Specs: no build recorded here (the specs run inside a bake)." in web
    assert "- Uncovered roles: `motd` (no tests/spec/motd/)." in web
    assert "- CVE gate: no policy." in web
    assert "Changes: nothing to compare (no build recorded here to compare)." in web

    # The JSON twin: the same facts.
    data = json.loads(report.to_json())
    assert data["git"] == git and data["rebake"] == ["base", "web"]
    facts = {e["image"]: e for e in data["images"]}
    b, w = facts["base"], facts["web"]
    assert b["plan"]["changed"] == ["roles/common/tasks/main.yml"]
    assert b["status"].startswith("not baked in this run; last proven build: build/base/local")
    assert b["build"]["build_id"] == "base-2" and b["build"]["current"] is False
    assert b["specs"]["live"]["passed"] == 12 and b["uncovered_roles"] == []
    assert b["changes"]["changed"] is True
    assert b["changes"]["old"]["build_id"] == "base-1"
    assert list(b["changes"]["changes"]["packages"]["added"]) == ["nginx"]
    assert b["sbom"]["components"] == 2 and b["cve_gate"]["allowed"] == ["CVE-2024-0001"]
    assert w["status"] == "not baked in this run; last proven build: none"
    assert w["build"] is None and w["specs"] is None and w["uncovered_roles"] == ["motd"]
    assert "none" in w["changes"] and w["cve_gate"] == {"none": "no policy"}


def test_a_build_without_a_previous_one_has_nothing_to_compare(project: Project) -> None:
    cat = reviewed_project(project)
    write_build(project.root / "build/base/local", "base", "base-2", NEW)
    report = pr_report.collect(project.root, cat, ROWS[:1], git={"sha": "unknown"})
    md = report.to_markdown()
    assert "Changes: nothing to compare (base (local) has no previous proven build" in md
    assert "- Specs: 12 passed" in md and "- SBOM: 2 components" in md
    # A policy in images.yml, but the build recorded before it: the gate did not run.
    assert "- CVE gate: images.yml gives this image no policy." in md
    (b,) = json.loads(report.to_json())["images"]
    assert "has no previous proven build" in b["changes"]["none"]
    assert report.diffs == {}


@pytest.fixture
def at_root(project: Project, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The standard project as the tasks' project root."""
    return as_project_root(project, monkeypatch)


def test_the_task_plans_for_real_and_writes_both_files_where_nothing_was_baked(
    at_root: Path, capsys
) -> None:
    """base's build recorded the inputs it was baked from; a role edited since is the
    plan's reason to rebake. web was never baked: a validation run's view of it."""
    p = pipeline.plan(at_root, "base", "local")
    d = pipeline.decide(p, Local(), pipeline.source_of(p, Local(), prepare=False))
    out = at_root / "build/base/local"
    write_build(out, "base", "base-2", NEW, fingerprint=d.fingerprint, inputs=d.inputs)
    with (at_root / "roles/common/tasks/main.yml").open("a") as f:
        f.write("# edited\n")

    code, stdout, _ = run(review.report, capsys, target="local")
    assert code == 0
    assert stdout.strip() == "build/report/pr-report.md and build/report/pr-report.json"
    md = (at_root / "build/report/pr-report.md").read_text()
    assert "## base (local): rebake" in md
    assert "- Changed inputs: `roles/common/tasks/main.yml`." in md
    assert "- Not baked in this run; last proven build: build/base/local/base.qcow2" in md
    assert "## web (local): rebake" in md and "## lab (local): rebake" in md
    assert md.count("- Not baked in this run; last proven build: none.") == 2
    data = json.loads((at_root / "build/report/pr-report.json").read_text())
    assert [(e["image"], e["target"]) for e in data["images"]] == [
        ("base", "local"),
        ("web", "local"),
        ("lab", "local"),
    ]
    assert data["images"][0]["plan"]["changed"] == ["roles/common/tasks/main.yml"]

    # Unchanged inputs: nothing to rebake, and the report says what is proven.
    (at_root / "roles/common/tasks/main.yml").write_text(
        "- name: Say common\n  ansible.builtin.debug:\n    msg: common\n"
    )
    code, _, _ = run(review.report, capsys, target="local", output="elsewhere/r.md")
    assert code == 0
    md = (at_root / "elsewhere/r.md").read_text()
    assert "- Proven with these inputs: build/base/local/base.qcow2 (build base-2)" in md
    assert json.loads((at_root / "elsewhere/r.json").read_text())["rebake"] == ["lab", "web"]


def test_report_user_errors_exit_1(at_root: Path, capsys) -> None:
    code, _, message = run(review.report, capsys, target="gcp")
    assert code == 1 and "--target 'gcp': choose one of" in message
    code, _, message = run(review.report, capsys, output="report.json")
    assert code == 1 and "--output names the markdown file" in message
    code, _, message = run(review.report, capsys, base_ref="no-such-ref")
    assert code == 1 and "git cannot resolve 'no-such-ref'" in message


# --- the build proven as of a git ref ---------------------------------------------------------


def git(root: Path, *args: str) -> str:
    who = ["-c", "user.name=goldsmith", "-c", "user.email=goldsmith@example.invalid"]
    done = subprocess.run(
        ["git", *who, *args], cwd=root, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def history(at_root: Path) -> dict[str, str]:
    """Commits first → baked-1 → baked-2 → later; base's builds of baked-1 (previous/)
    and baked-2 (the proven one) are kept here, nginx added in between."""
    git(at_root, "init", "-q", "-b", "main")
    shas = {}
    for name in ("first", "baked-1", "baked-2", "later"):
        git(at_root, "commit", "-q", "--allow-empty", "-m", name)
        git(at_root, "tag", name)
        shas[name] = git(at_root, "rev-parse", "HEAD")
    out = at_root / "build/base/local"
    write_build(out / "previous", "base", "base-1", OLD, sha=shas["baked-1"])
    write_build(out, "base", "base-2", NEW, sha=shas["baked-2"])
    return shas


def test_against_ref_finds_the_build_of_that_commit_or_the_newest_before_it(
    history: dict[str, str], at_root: Path, capsys
) -> None:
    code, out, _ = run(review.diff, capsys, image="base", against_ref="baked-1")
    assert code == 0
    old = "build base-1 at baked-1 (build/base/local/previous)"
    assert out.startswith(f"## base (local): {old} → build base-2 (build/base/local)")
    assert "- added `nginx` 1.22.1-9" in out
    # `later` has no build of its own: the newest before it is baked-2's, the proven one.
    code, out, _ = run(review.diff, capsys, image="base", against_ref="later", format="json")
    data = json.loads(out)
    assert code == 0 and data["changed"] is False and data["old"]["build_id"] == "base-2"
    later = f"build base-2 at {history['baked-2'][:12]}, 1 commit(s) before later"
    assert data["old"]["label"] == f"{later} (build/base/local)"
    # The report compares with the same build when given a base ref.
    cat = catalogue.load(at_root / "images.yml")
    report = pr_report.collect(at_root, cat, ROWS[:1], git={"sha": "x"}, base_ref="baked-1")
    assert "Changes are against the build proven as of `baked-1`." in report.to_markdown()
    (b,) = json.loads(report.to_json())["images"]
    assert b["changes"]["old"]["label"] == old
    assert list(b["changes"]["changes"]["packages"]["added"]) == ["nginx"]


def test_against_ref_without_a_build_kept_for_it_exits_2_and_says_why(
    history: dict[str, str], capsys
) -> None:
    code, _, message = run(review.diff, capsys, image="base", against_ref="first")
    assert code == 2
    b1, b2 = history["baked-1"][:12], history["baked-2"][:12]
    assert message == (
        f"nothing to compare: no build of base (local) baked from first "
        f"({history['first'][:12]}) or a commit before it is recorded here: build/base/local/ "
        f"holds builds of {b2}, {b1} (only the proven build and the one it replaced are "
        "kept, on this machine or in its CI cache)"
    )
    code, _, message = run(review.diff, capsys, image="base", against_ref="nope")
    assert code == 1 and "git cannot resolve 'nope' to a commit" in message
    code, _, message = run(review.diff, capsys, image="base", against_ref="main", against="x")
    assert code == 1 and message == "error: give --against or --against-ref, not both"
