"""`./run report --bake`: the validation bake's reference (which commit, from the plan's
last proven build or --base-ref), its git worktree (made, shared, removed whatever
happens), the reuse of kept builds, and the report's image section, on small git
repositories written here.

No VM: where goldsmith.validate calls pipeline.build, these tests give it `bake_stand_in`,
which records a proven build folder as the pipeline would (the real fingerprint, an
inventory of the packages the project's roles declare). The real bake is
tests/integration/test_local_bake.py's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from review_kit import inv, pkg, run, write_build

from goldsmith import catalogue, outputs, validate
from goldsmith import report as pr_report
from goldsmith.errors import GoldsmithError
from goldsmith.tasks import review

if TYPE_CHECKING:
    from conftest import Project


def git(root: Path, *args: str) -> str:
    who = ["-c", "user.name=goldsmith", "-c", "user.email=goldsmith@example.invalid"]
    done = subprocess.run(
        ["git", *who, *args], cwd=root, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


KID = """\
  kid:
    parent: web
    playbook: playbooks/kid.yml
    targets: [local]
"""


@pytest.fixture
def repo(project: Project, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The standard project with `kid` layered on web, in git: commit `before` (nginx
    declares nginx), then `after` (it declares curl too). build/ and .cache/ are ignored,
    as in the real project."""
    project.standard()
    project.role("kid")
    project.playbook("kid", "kid")
    project.catalogue(project.CATALOGUE + KID)
    project.write(".gitignore", "build/\n.cache/\n")
    defaults = project.root / "roles/nginx/defaults/main.yml"
    defaults.parent.mkdir(parents=True, exist_ok=True)
    defaults.write_text("nginx_packages: [nginx]\n")
    monkeypatch.setenv("GOLDSMITH_ROOT", str(project.root))
    monkeypatch.chdir(project.root)
    git(project.root, "init", "-q", "-b", "main")
    before = commit(project.root, "before")
    defaults.write_text("nginx_packages: [nginx, curl]\n")
    after = commit(project.root, "after")
    return {"root": project.root, "before": before, "after": after}


class Stand_in:
    """pipeline.build's stand-in: records a proven local build of `image` in `project`
    (its real fingerprint; packages: those every role's defaults declare) and each call."""

    def __init__(self, fail: BaseException | None = None, fail_in: str = "") -> None:
        self.calls: list[tuple[Path, str]] = []
        self.fail, self.fail_in = fail, fail_in
        self.seen: list[dict[str, Any]] = []  # what the project held at each call

    def __call__(self, project: Path, image: str, target: str, *, settings: Any) -> Path:
        assert target == "local"
        self.calls.append((project, image))
        disks = {p.name: p.stat().st_ino for p in project.glob("build/*/local/*.qcow2")}
        self.seen.append({"parents": sorted(n.removesuffix(".qcow2") for n in disks), **disks})
        if self.fail is not None and self.fail_in in str(project):
            raise self.fail
        _, fp = validate._fingerprint(project, image, settings, None)
        names = []
        for f in sorted(project.glob("roles/*/defaults/main.yml")):
            for key, value in (yaml.safe_load(f.read_text()) or {}).items():
                names += value if key.endswith("_packages") else []
        folder = outputs.target_dir(project, image, "local")
        build_id = f"{image}-{len(self.calls)}"
        sha = git(project, "rev-parse", "HEAD")
        write_build(folder, image, build_id, inv(*[pkg(n, "1.0") for n in names]), sha=sha)
        manifest = json.loads((folder / "manifest.json").read_text()) | {"fingerprint": fp}
        outputs.write_json(folder / "manifest.json", manifest)
        return folder / "manifest.json"


def row(image: str, target: str, sha: str | None, **last: Any) -> dict[str, Any]:
    """A plan row (pipeline.plan_all's) that would rebake, its last build from `sha`."""
    build = {"build_id": f"{image}-published", "git": {"sha": sha, "dirty": False}} | last
    label = f"{last['ami']} in {last['region']}" if "ami" in last else f"build {image}-published"
    return {
        "image": image,
        "target": target,
        "fingerprint": "9" * 64,
        "action": "rebake",
        "last": label if sha is not None else None,
        "last_build": build if sha is not None else None,
        "changed": ["roles/nginx/defaults/main.yml"],
    }


def nothing_left(root: Path) -> None:
    assert not list((root / "build").glob(".work-*")), "a work folder outlived the run"
    assert git(root, "worktree", "list").count("\n") == 0, git(root, "worktree", "list")


def test_the_reference_is_baked_in_a_worktree_of_the_published_builds_commit(
    repo: dict[str, Any],
) -> None:
    root = repo["root"]
    aws = row("web", "aws", repo["before"], ami="ami-0abc", region="eu-west-1")
    bake = Stand_in()
    found = validate.run(root, [aws], bake=bake)

    v = found[("web", "aws")]
    # First the reference, in a worktree of the AMI's commit; then the checkout itself.
    (tree, ref_image), (here, new_image) = bake.calls
    assert (ref_image, new_image) == ("web", "web") and here == root
    assert tree.name == f"ref-{repo['before'][:12]}" and tree.parent.name.startswith(
        ".work-validate-"
    )
    assert v.reference is not None and v.reference.commit == repo["before"]
    assert v.reference.source == "published"
    assert v.reference.describe() == (
        "the commit the last proven aws build, ami-0abc in eu-west-1 (build web-published), "
        "was baked from"
    )
    assert v.how == f"baked in a worktree of {repo['before'][:12]} (build web-1)"
    result = v.comparison
    assert result is not None
    assert result.diff.to_dict()["packages"]["added"] == {
        "curl": result.diff.to_dict()["packages"]["added"]["curl"]
    }
    assert not result.diff.to_dict()["packages"]["removed"]
    nothing_left(root)

    # The report: the image's section says what was baked, what the reference stands
    # for, and shows the comparison; the JSON says the same.
    cat = catalogue.load(root / "images.yml")
    doc = pr_report.collect(root, cat, [aws], git={"sha": repo["after"]}, validations=found)
    md = doc.to_markdown()
    assert "was baked locally for validation" in md
    web = md.split("## web (aws): rebake")[1]
    assert "- Baked locally for validation in this run (build web-2); last proven aws " in web
    assert "build: ami-0abc in eu-west-1." in web
    assert (
        f"- Reference: a local bake of commit `{repo['before'][:12]}`, the commit the last "
        "proven aws build, ami-0abc in eu-west-1 (build web-published), was baked from; baked "
        f"in a worktree of {repo['before'][:12]} (build web-1)." in web
    )
    assert (
        "- Specs: 12 passed, 0 failed, 1 skipped; hygiene 15 passed, 0 failed (build web-2)" in web
    )
    assert (
        f"### web (local): reference: local bake of {repo['before'][:12]} → this change: "
        "local build web-2" in web
    )
    assert "- added `curl` 1.0" in web and "`nginx`" not in web
    (entry,) = json.loads(doc.to_json())["images"]
    assert entry["validation"]["reference"]["commit"] == repo["before"]
    assert entry["validation"]["reference"]["stands_for"]["ami"] == "ami-0abc"
    assert list(entry["validation"]["changes"]["packages"]["added"]) == ["curl"]
    assert entry["changes"]["new"]["build_id"] == "web-2" and entry["specs_build"] == "web-2"


def test_a_local_build_kept_here_with_the_references_fingerprint_is_reused(
    repo: dict[str, Any],
) -> None:
    """The reference's fingerprint is computed in its worktree; the build of `before`
    kept in this checkout has it (the folder does not count), so nothing is baked there."""
    root = repo["root"]
    git(root, "checkout", "-q", repo["before"])
    Stand_in()(root, "web", "local", settings=None)  # the proven local build of `before`
    git(root, "checkout", "-q", "main")
    bake = Stand_in()
    found = validate.run(root, [row("web", "local", repo["before"])], bake=bake)
    v = found[("web", "local")]
    assert bake.calls == [(root, "web")]  # only the change's own bake
    assert v.how == "reused the local build web-1 kept in build/web/local/ (same fingerprint)"
    assert v.comparison is not None and list(v.comparison.diff.to_dict()["packages"]["added"]) == [
        "curl"
    ]
    nothing_left(root)


def test_the_same_inputs_are_baked_once_and_show_no_change(repo: dict[str, Any]) -> None:
    root = repo["root"]
    bake = Stand_in()
    found = validate.run(
        root, [row("web", "aws", repo["after"], ami="ami-1", region="r")], bake=bake
    )
    v = found[("web", "aws")]
    assert bake.calls == [(root, "web")]
    assert v.how.startswith("the same inputs as this change")
    assert v.comparison is not None and v.comparison.diff.empty


def test_a_layered_references_parent_is_borrowed_not_baked_again(repo: dict[str, Any]) -> None:
    """kid changes (its role gains a package); web, its parent, is the same at both commits
    and proven here: the worktree gets web's build by hard links and bakes kid alone."""
    root = repo["root"]
    Stand_in()(root, "web", "local", settings=None)
    kid = root / "roles/kid/defaults/main.yml"
    kid.parent.mkdir(parents=True, exist_ok=True)
    kid.write_text("kid_packages: [jq]\n")
    commit(root, "kid gains jq")
    bake = Stand_in()
    found = validate.run(root, [row("kid", "local", repo["after"])], bake=bake)
    (tree, image), (here, _) = bake.calls
    assert image == "kid" and here == root
    assert bake.seen[0]["parents"] == ["web"]  # web's build was there before kid's bake
    # lent by a hard link (same filesystem): the worktree's web.qcow2 is this project's
    assert bake.seen[0]["web.qcow2"] == (root / "build/web/local/web.qcow2").stat().st_ino
    v = found[("kid", "local")]
    assert "on its parent's build kept here (web (build web-1))" in v.how
    assert v.comparison is not None
    assert list(v.comparison.diff.to_dict()["packages"]["added"]) == ["jq"]
    nothing_left(root)


def test_images_without_local_and_new_images_are_lines_not_errors(repo: dict[str, Any]) -> None:
    root = repo["root"]
    text = (root / "images.yml").read_text().replace(KID, "")  # kid's parent is web
    web = "targets: [local, aws, twin]\n    aws:\n      <<"
    (root / "images.yml").write_text(text.replace(web, "targets: [aws, twin]\n    aws:\n      <<"))
    bake = Stand_in()
    rows = [row("web", "aws", repo["before"]), row("base", "aws", None)]
    found = validate.run(root, rows, bake=bake)
    assert found[("web", "aws")].none == (
        "cannot be baked for validation: images.web.targets lists aws, twin, not local "
        "(a validation bake is local)"
    )
    base = found[("base", "aws")]
    assert bake.calls == [(root, "base")]  # baked (its specs), nothing to compare with
    assert base.missing.startswith("base has no proven aws build to compare with (a new image)")
    cat = catalogue.load(root / "images.yml")
    md = pr_report.collect(root, cat, rows, git={"sha": "x"}, validations=found).to_markdown()
    assert (
        "- Baked locally for validation in this run (build base-1); last proven aws build: none."
        in md
    )
    assert "- Not baked in this run, cannot be baked for validation: images.web.targets" in md
    assert "Changes: nothing to compare (base has no proven aws build to compare with" in md


@pytest.mark.parametrize(
    ("last", "says"),
    [
        ({"dirty": True}, "with uncommitted changes, which that commit does not reproduce"),
        ({"sha": "unknown"}, "records no commit (it was baked outside a git checkout)"),
        ({"sha": "1" * 40}, "which this clone does not have (a shallow clone"),
    ],
)
def test_a_reference_that_cannot_be_baked_is_an_error_before_any_bake_unless_base_ref(
    repo: dict[str, Any], last: dict[str, Any], says: str
) -> None:
    root = repo["root"]
    web = row("web", "local", repo["before"])
    web["last_build"]["git"] |= last
    bake = Stand_in()
    with pytest.raises(GoldsmithError, match="give --base-ref REF") as err:
        validate.run(root, [web], bake=bake)
    assert says in str(err.value) and "web (local): its last proven build" in str(err.value)
    assert bake.calls == []
    nothing_left(root)
    # With --base-ref, that commit is the reference, and the report says why.
    found = validate.run(root, [web], bake=bake, base_ref="main~1")
    ref = found[("web", "local")].reference
    assert ref is not None and ref.commit == repo["before"] and ref.source == "base-ref"
    assert says in ref.note and ref.note.endswith("--base-ref main~1 is baked instead")
    assert ref.describe() == "--base-ref main~1"


def test_an_unknown_base_ref_is_an_error_before_anything(repo: dict[str, Any]) -> None:
    bake = Stand_in()
    with pytest.raises(GoldsmithError, match="git cannot resolve 'no-such-ref'"):
        validate.run(repo["root"], [row("web", "local", None)], bake=bake, base_ref="no-such-ref")
    assert bake.calls == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(1)])
def test_an_interrupted_validation_leaves_no_worktree_and_no_work_folder(
    repo: dict[str, Any], stop: BaseException
) -> None:
    root = repo["root"]
    bake = Stand_in(fail=stop, fail_in="ref-")
    with pytest.raises(type(stop)):
        validate.run(root, [row("web", "local", repo["before"])], bake=bake)
    assert len(bake.calls) == 1
    nothing_left(root)
    assert not (root / "build/web").exists()


def test_a_failed_bake_is_in_the_report_and_the_task_exits_1(
    repo: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The task with the real plan: web's local build of `before` is proven here; the
    change's bake fails (a spec, say): the report is written, says so, and the exit is 1."""
    root = repo["root"]
    git(root, "checkout", "-q", repo["before"])
    Stand_in()(root, "web", "local", settings=None)
    git(root, "checkout", "-q", "main")

    def failing(project: Path, image: str, target: str, *, settings: Any) -> Path:
        raise GoldsmithError(f"{image}: 1 spec failed, no image written")

    from goldsmith import pipeline

    monkeypatch.setattr(pipeline, "build", failing)
    code, out, message = run(review.report, capsys, target="local", bake=True)
    assert code == 1
    assert message.startswith("error: validation bake failed:\n  ")
    assert "\n  the validation bake of web (local) failed: web: 1 spec failed" in message
    md = (root / "build/report/pr-report.md").read_text()
    web = md.split("## web (local): rebake")[1].split("\n## ")[0]
    assert "- The validation bake failed; last proven build: build/web/local/web.qcow2" in web
    assert "- Validation FAILED: the validation bake of web (local) failed: web: 1 spec" in web
    assert "| web | local | rebake | bake failed |" in md
    assert "- Specs: the validation bake failed before its specs passed (see above)." in web
    # The reference was reused (the build kept here), so no worktree was ever made.
    assert f"- Reference: a local bake of commit `{repo['before'][:12]}`" in web
    nothing_left(root)


def test_worktrees_share_the_cache_and_go_whatever_state_they_are_in(
    tmp_path: Path,
) -> None:
    """A project in a subfolder of its repository: the worktree's project is that subfolder;
    .cache is the project's; close() removes a worktree with changes in it."""
    top = tmp_path / "repo"
    (top / "infra").mkdir(parents=True)
    (top / "infra/images.yml").write_text("images: {}\n")
    git(top, "init", "-q", "-b", "main")
    first = commit(top, "first")
    (top / "infra/images.yml").write_text("images: {a: 1}\n")
    commit(top, "second")
    root = top / "infra"
    folder = root / "build/.work-validate-x"
    folder.mkdir(parents=True)
    trees = validate.Worktrees(root, folder)
    project = trees.project(first)
    assert project == folder / f"ref-{first[:12]}" / "infra"
    assert (project / "images.yml").read_text() == "images: {}\n"
    assert (project / ".cache").resolve() == (root / ".cache").resolve()
    assert trees.project(first) == project  # one worktree per commit
    (project / "images.yml").write_text("edited\n")
    (project / "build").mkdir()
    assert trees.close() == []
    assert not (folder / f"ref-{first[:12]}").exists()
    assert git(top, "worktree", "list").count("\n") == 0
    assert (root / ".cache").is_dir()  # the shared cache is the project's: it stays


def test_worktrees_need_git(tmp_path: Path) -> None:
    with pytest.raises(GoldsmithError, match="is not in a git checkout"):
        validate.Worktrees(tmp_path, tmp_path / "w")


def test_two_targets_with_one_reference_share_its_bake_and_the_changes_bake(
    repo: dict[str, Any],
) -> None:
    """web's AMI and its local build were both baked from `before`: one reference bake,
    one bake of the change, and both rows show the same comparison."""
    root = repo["root"]
    rows = [
        row("web", "local", repo["before"]),
        row("web", "aws", repo["before"], ami="ami-0abc", region="eu-west-1"),
    ]
    bake = Stand_in()
    found = validate.run(root, rows, bake=bake)
    assert [image for _, image in bake.calls] == ["web", "web"]
    assert bake.calls[1][0] == root
    for v in found.values():
        assert v.comparison is not None and v.how.endswith("(build web-1)")
        assert list(v.comparison.diff.to_dict()["packages"]["added"]) == ["curl"]
    nothing_left(root)
