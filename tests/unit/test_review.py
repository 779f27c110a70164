"""What a reviewer gets from a build, without a bake: the CVE gate's policy in images.yml,
the gate on a bake's road, the files recorded beside the manifest, the previous build
kept, and the `list`, `diff` and `cve` tasks on build folders written here."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from review_kit import as_project_root, inv, pkg, run, write_build

from goldsmith import catalogue, cvegate, fingerprint, outputs, pipeline
from goldsmith.catalogue import CatalogueError, Vulnerabilities
from goldsmith.errors import GoldsmithError
from goldsmith.settings import Settings
from goldsmith.targets import contract
from goldsmith.targets.local import gate_or_fail
from goldsmith.tasks import review

if TYPE_CHECKING:
    from conftest import Project

TRACKER = Path(__file__).parent / "fixtures" / "tracker-small.json"
TODAY = dt.date(2026, 12, 4)


OLD_OPENSSL = inv(pkg("openssl", "3.0.11-1~deb12u2"), pkg("libssl3", "3.0.11-1~deb12u2", "openssl"))


# --- the policy in images.yml ---------------------------------------------------------------

POLICY = """\
vulnerabilities:
  tracker: security/tracker.json
  fail_on: high
  allow:
    - {id: CVE-2024-0001, package: openssl, reason: "backport tested", expires: 2027-01-31}

images:
"""


def with_policy(project: Project, text: str = POLICY) -> catalogue.Catalogue:
    project.standard()
    project.catalogue(project.CATALOGUE.replace("images:\n", text, 1))
    return catalogue.load(project.root / "images.yml")


def test_a_shared_policy_applies_to_every_image_an_own_one_replaces_it(project: Project) -> None:
    project.standard()
    cat_text = project.CATALOGUE.replace("images:\n", POLICY, 1).replace(
        "    playbook: playbooks/base.yml\n    targets: [local]\n",
        "    playbook: playbooks/base.yml\n    targets: [local]\n"
        "    vulnerabilities: {fail_on: medium, release: jammy}\n",
    )
    cat_text = cat_text.replace(
        "    playbook: playbooks/web.yml\n",
        "    playbook: playbooks/web.yml\n    vulnerabilities: false\n",
    )
    project.catalogue(cat_text)
    cat = catalogue.load(project.root / "images.yml")

    base = cat.image("base").vulnerabilities
    assert base is not None and base.where == "vulnerabilities"
    assert base.tracker == project.root.resolve() / "security/tracker.json"
    assert base.policy.fail_on == "high"
    (allow,) = base.policy.allow
    assert (allow.id, allow.package, allow.expires) == (
        "CVE-2024-0001",
        "openssl",
        dt.date(2027, 1, 31),
    )
    lab = cat.image("lab").vulnerabilities
    assert lab is not None and lab.where == "images.lab.vulnerabilities"
    assert (lab.policy.fail_on, lab.policy.release, lab.tracker) == ("medium", "jammy", None)
    assert cat.image("web").vulnerabilities is None  # `false`: no gate for this image


def test_without_a_policy_an_image_has_no_gate(project: Project) -> None:
    project.standard()
    cat = catalogue.load(project.root / "images.yml")
    assert all(i.vulnerabilities is None for i in cat.images.values())


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("fail_on: high", "fail_on: hgh", "vulnerabilities: fail_on: 'hgh' is not one of"),
        (
            "fail_on: high",
            "fail_on_opn: true",
            "vulnerabilities.fail_on_opn: unknown key (did you mean 'fail_on_open'?)",
        ),
        (
            "fail_on: high",
            "release: [bookworm]",
            "vulnerabilities: release: ['bookworm'] is not a release name",
        ),
        (
            "tracker: security/tracker.json",
            "tracker: /srv/tracker.json",
            "'/srv/tracker.json' must be relative to the project",
        ),
        (
            "expires: 2027-01-31",
            "expires: soon",
            "vulnerabilities.allow[0]: expires: 'soon' is not a date",
        ),
        (
            "id: CVE-2024-0001",
            "id: openssl-bug",
            "vulnerabilities.allow[0]: id: 'openssl-bug' is not a CVE id",
        ),
        ('reason: "backport tested", ', "", "vulnerabilities.allow[0]: reason is required"),
    ],
)
def test_a_bad_policy_fails_at_load_naming_file_line_key_and_value(
    project: Project, old: str, new: str, expected: str
) -> None:
    assert old in POLICY
    with pytest.raises(CatalogueError) as err:
        with_policy(project, POLICY.replace(old, new))
    message = str(err.value)
    assert expected in message
    needle = new.split(":")[0].strip() or "- {id"
    line = project.line("images.yml", needle)
    assert f"images.yml:{line}: " in message, message


def test_an_allow_entry_is_reported_on_its_own_line(project: Project) -> None:
    text = POLICY.replace(
        "expires: 2027-01-31}\n",
        'expires: 2027-01-31}\n    - {id: CVE-2024-0002, reason: "x", expires: never}\n',
    )
    with pytest.raises(CatalogueError) as err:
        with_policy(project, text)
    line = project.line("images.yml", "CVE-2024-0002")
    assert f"images.yml:{line}: vulnerabilities.allow[1]: expires" in str(err.value)


def test_the_policy_is_an_input_of_the_fingerprint(project: Project) -> None:
    def entry(cat: catalogue.Catalogue) -> str:
        img = cat.image("base")
        tools = {"packer": "Packer v1.6.6"}
        return fingerprint.inputs(img, cat.role_map(img), project.root, "b", "local", tools)[
            "catalogue entry"
        ]

    strict = entry(with_policy(project))
    loose = entry(with_policy(project, POLICY.replace("fail_on: high", "fail_on: never")))
    assert strict != loose


# --- the gate on a bake's road ----------------------------------------------------------------


def vulns(**policy: Any) -> Vulnerabilities:
    return Vulnerabilities(
        cvegate.parse_policy(policy or None, "x"), TRACKER, "images.base.vulnerabilities"
    )


def test_gate_or_fail_fails_naming_the_package_and_the_cve() -> None:
    with pytest.raises(GoldsmithError) as err:
        gate_or_fail("base", vulns(), TRACKER, OLD_OPENSSL, "no image written", TODAY)
    message = str(err.value)
    assert message.startswith("base: the CVE gate failed")
    assert "no image written" in message
    assert "CVE-2024-0001 in openssl 3.0.11-1~deb12u2 (libssl3, openssl)" in message
    assert "images.base.vulnerabilities.allow" in message


def test_gate_or_fail_passes_with_an_allow_entry_and_reports_it() -> None:
    allow = [
        {"id": "CVE-2024-0001", "package": "openssl", "reason": "backport", "expires": "2027-01-01"}
    ]
    result = gate_or_fail("base", vulns(allow=allow), TRACKER, OLD_OPENSSL, "-", TODAY)
    assert result is not None and result.ok
    assert [f.cve for f, _ in result.allowed] == ["CVE-2024-0001"]
    assert "Allowed by the policy" in result.to_markdown()


def test_gate_or_fail_without_a_policy_is_no_gate_and_without_a_tracker_an_error() -> None:
    assert gate_or_fail("base", None, None, OLD_OPENSSL, "-", TODAY) is None
    with pytest.raises(
        GoldsmithError, match="names no tracker: set its `tracker:` or the cve_tracker"
    ):
        gate_or_fail("base", vulns(), None, OLD_OPENSSL, "-", TODAY)


def plan_of(project: Project, text: str | None = None, **settings: Any) -> contract.Plan:
    cat = with_policy(project, text) if text else catalogue.load(project.root / "images.yml")
    img = cat.image("base")
    return contract.Plan(project.root, cat, img, "local", cat.role_map(img), Settings(**settings))


def test_preflight_wants_the_tracker_at_hand_and_the_setting_overrides_images_yml(
    project: Project,
) -> None:
    p = plan_of(project, POLICY)
    with pytest.raises(
        GoldsmithError,
        match=r"tracker data .*security/tracker.json \(vulnerabilities.tracker\) does not exist",
    ):
        pipeline.check_tracker(p)
    (project.root / "security").mkdir()
    (project.root / "security/tracker.json").write_text("{}")
    pipeline.check_tracker(p)
    over = plan_of(project, POLICY, cve_tracker="fresh.json")
    assert over.cve_tracker == project.root / "fresh.json"
    with pytest.raises(
        GoldsmithError, match=r"fresh.json \(the cve_tracker setting\) does not exist"
    ):
        pipeline.check_tracker(over)
    assert Settings.from_config({"cve_tracker": "/data/t.json"}).cve_tracker == "/data/t.json"
    # On aws the gate runs on the builder's live inventory: it needs the tracker too.
    with pytest.raises(GoldsmithError, match=r"fresh.json \(the cve_tracker setting\)"):
        pipeline.check_tracker(dataclasses.replace(over, target="aws"))


def test_record_review_writes_inventory_sbom_and_report_beside_the_manifest(
    project: Project, tmp_path: Path
) -> None:
    p = plan_of(project, POLICY, cve_tracker=str(TRACKER))
    found = inv(pkg("openssl", "3.0.13-1~deb12u1"))
    gate = gate_or_fail("base", p.image.vulnerabilities, p.cve_tracker, found, "-", TODAY)
    proof = contract.SealProof(None, {"openssl": "3.0.13-1~deb12u1"}, "how", found, gate)
    staged = tmp_path / "staged"
    staged.mkdir()
    fields = pipeline.record_review(p, proof, staged, "base-1")

    assert sorted(f.name for f in staged.iterdir()) == [
        "cve-report.md",
        "inventory.json",
        "sbom.cdx.json",
    ]
    assert json.loads((staged / "inventory.json").read_text()) == found
    assert fields["inventory"] == {
        "file": "inventory.json",
        "sha256": outputs.sha256_file(staged / "inventory.json"),
        "format": 1,
        "packages": 1,
        "read": "from the sealed disk, offline",
    }
    assert fields["sbom"]["sha256"] == outputs.sha256_file(staged / "sbom.cdx.json")
    assert json.loads((staged / "sbom.cdx.json").read_text())["specVersion"] == "1.6"
    g = fields["cve_gate"]
    assert g["ok"] is True and g["policy"] == "vulnerabilities" and g["report"] == "cve-report.md"
    assert g["tracker_sha256"] == outputs.sha256_file(TRACKER)
    assert g["report_sha256"] == outputs.sha256_file(staged / "cve-report.md")
    assert "CVE gate (bookworm, fail on high): passed" in (staged / "cve-report.md").read_text()


def test_record_review_without_a_disk_or_a_policy_says_why(
    project: Project, tmp_path: Path
) -> None:
    project.standard()
    p = plan_of(project)
    aws = contract.SealProof(None, None, "the seal's self-check on the instance")
    staged = tmp_path / "staged"
    staged.mkdir()
    fields = pipeline.record_review(p, aws, staged, "base-1")
    assert fields["inventory"] is None and fields["sbom"] is None
    assert "no disk of the local build to read" in fields["inventory_reason"]
    assert fields["cve_gate"] is None and "no policy" in fields["cve_gate_reason"]
    assert list(staged.iterdir()) == []


# --- the previous build, and the tasks ---------------------------------------------------------


def test_a_commit_keeps_one_generation_of_the_previous_build(tmp_path: Path) -> None:
    dest = tmp_path / "build/base/local"
    for n in (1, 2, 3):
        staged = write_build(tmp_path / f"staged{n}", "base", f"base-{n}", inv(pkg("p", f"{n}.0")))
        outputs.keep_previous(dest, staged)
        outputs.commit(staged, dest)
    assert json.loads((dest / "manifest.json").read_text())["build_id"] == "base-3"
    previous = json.loads((dest / "previous/manifest.json").read_text())
    assert previous["build_id"] == "base-2"
    assert (dest / "previous/inventory.json").is_file()
    assert sorted(p.name for p in (dest / "previous").iterdir()) == [
        "inventory.json",
        "manifest.json",
    ]


@pytest.fixture
def built(project: Project, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The standard project with base's build and the one before it, nginx added."""
    root = as_project_root(project, monkeypatch)
    out = root / "build/base/local"
    write_build(out / "previous", "base", "base-1", inv(pkg("openssl", "3.0.11-1~deb12u2")))
    new = inv(pkg("openssl", "3.0.13-1~deb12u1"), pkg("nginx", "1.22.1-9"))
    write_build(out, "base", "base-2", new)
    return root


def test_diff_against_the_previous_build_in_markdown_and_json(built: Path, capsys) -> None:
    code, out, _ = run(review.diff, capsys, image="base")
    assert code == 0
    old, new = "build base-1 (build/base/local/previous)", "build base-2 (build/base/local)"
    assert out.startswith(f"## base (local): {old} → {new}")
    assert "- added `nginx` 1.22.1-9" in out
    assert "- upgraded `openssl` 3.0.11-1~deb12u2 → 3.0.13-1~deb12u1" in out
    code, out, _ = run(review.diff, capsys, image="base", format="json", fail_on_change=True)
    assert code == 1
    data = json.loads(out)
    assert data["changed"] is True and data["old"]["build_id"] == "base-1"
    assert data["new"]["build_id"] == "base-2"
    assert list(data["changes"]["packages"]["added"]) == ["nginx"]
    assert data["changes"]["packages"]["upgraded"] == {
        "openssl": ["3.0.11-1~deb12u2", "3.0.13-1~deb12u1"]
    }


def test_diff_with_no_change_exits_0_even_with_fail_on_change(built: Path, capsys) -> None:
    current = built / "build/base/local/inventory.json"
    code, out, _ = run(review.diff, capsys, image="base", against=str(current), fail_on_change=True)
    assert code == 0 and "no change" in out
    code, out, _ = run(review.diff, capsys, image="base", against=str(current), format="json")
    assert code == 0 and json.loads(out)["changed"] is False and json.loads(out)["changes"] == {}


def test_diff_against_a_manifest_or_a_build_folder(built: Path, capsys, tmp_path: Path) -> None:
    other = write_build(
        tmp_path / "elsewhere", "base", "base-0", inv(pkg("openssl", "3.0.13-1~deb12u1"))
    )
    for against in (other / "manifest.json", other):
        code, out, _ = run(review.diff, capsys, image="base", against=str(against))
        assert code == 0 and "build base-0" in out and "- added `nginx`" in out
        assert "openssl" not in out


def test_diff_with_nothing_to_compare_exits_2_and_says_why(built: Path, capsys) -> None:
    out = built / "build/base/local"
    (out / "previous/inventory.json").unlink()
    write_build(out / "previous", "base", "base-1", None)
    code, _, message = run(review.diff, capsys, image="base")
    assert (
        code == 2
        and message
        == "nothing to compare: build base-1 (build/base/local/previous) has no inventory: no disk"
    )
    for name in ("manifest.json", "base.qcow2"):
        (out / "previous" / name).unlink()
    code, _, message = run(review.diff, capsys, image="base")
    assert code == 2 and "has no previous proven build" in message and "--against" in message
    code, _, message = run(review.diff, capsys, image="web")
    assert code == 2 and "web has no proven local build" in message


def test_diff_user_errors_exit_1(built: Path, capsys) -> None:
    code, _, message = run(review.diff, capsys, image="base", format="yaml")
    assert code == 1 and "choose one of markdown, json" in message
    code, _, message = run(review.diff, capsys, image="nope")
    assert code == 1 and "no image named 'nope'" in message
    code, _, message = run(review.diff, capsys, image="base", against="missing.json")
    assert code == 1 and "missing.json: no such file" in message
    (built / "build/base/local/inventory.json").write_text("{}\n")  # edited after the build
    code, _, message = run(review.diff, capsys, image="base")
    assert code == 1 and message == (
        "error: build base-2 (build/base/local): inventory.json is not the file its manifest "
        "records (another sha256): it was changed after the build"
    )


def test_list_shows_parent_or_base_targets_and_last_builds(built: Path, capsys) -> None:
    code, out, _ = run(review.list_, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "base         base debian12; targets local, aws, twin"
    assert lines[1].split() == [
        "local",
        "base-2",
        "2026-12-04T18:00:00Z",
        "fingerprint",
        "base-2000000",
    ]
    assert lines[2].split() == ["aws", "no", "proven", "build"]
    code, out, _ = run(review.list_, capsys, json_=True)
    rows = {r["image"]: r for r in json.loads(out)}
    assert set(rows) == {"base", "web", "lab"}
    assert rows["base"]["builds"]["local"]["build_id"] == "base-2"
    assert rows["base"]["builds"]["local"]["previous"] is True
    assert rows["lab"]["base"] == "jammy" and rows["lab"]["builds"] == {"local": None}
    assert rows["web"]["cve_gate"] is False


LAYERED = """\
bases:
  debian12: {kind: debootstrap, suite: bookworm}
images:
  base: {base: debian12, playbook: playbooks/base.yml, targets: [local]}
  web: {parent: base, playbook: playbooks/web.yml, targets: [local]}
"""


def test_list_names_a_layered_images_parent(project: Project, monkeypatch, capsys) -> None:
    project.standard()
    project.catalogue(LAYERED)
    monkeypatch.setenv("GOLDSMITH_ROOT", str(project.root))
    code, out, _ = run(review.list_, capsys)
    assert code == 0
    assert "web          parent base; targets local" in out.splitlines()
    rows = {r["image"]: r for r in pipeline.list_images(project.root)}
    assert rows["web"]["parent"] == "base" and rows["web"]["base"] is None


def test_cve_task_rechecks_a_proven_build_with_fresh_tracker_data(built: Path, capsys) -> None:
    out = built / "build/base/local"
    write_build(out, "base", "base-2", OLD_OPENSSL)
    code, stdout, _ = run(review.cve, capsys, image="base", tracker=str(TRACKER))
    assert code == 1
    assert "policy: the default policy" in stdout
    assert "CVE-2024-0001 in openssl 3.0.11-1~deb12u2" in stdout
    code, _, message = run(review.cve, capsys, image="base")
    assert code == 1 and "names no tracker" in message
