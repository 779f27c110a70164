"""What a reviewer asks of proven builds: `list`, `diff`, `cve`, and a pull request's `report`.

Thin: arguments in, goldsmith.outputs, goldsmith.pipeline, goldsmith.report and (the
report's validation bake) goldsmith.validate do the work.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from invoke import Exit, task

from .. import outputs, targets
from .. import report as pr_report
from ..catalogue import load
from ..paths import project_root
from .common import require_image, settings, user_errors

FORMATS = ("markdown", "json")


@task(name="list", help={"json": "print JSON (one object per image) instead of a table"})
@user_errors
def list_(c, json_=False):
    """Each image: its parent (or base), its targets, its last proven build per target."""
    from ..pipeline import list_images

    root = project_root()
    with contextlib.redirect_stdout(sys.stderr):
        rows = list_images(root, settings(c))
    if json_:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return
    for r in rows:
        start = f"parent {r['parent']}" if r["parent"] else f"base {r['base']}"
        gate = ", CVE gate" if r["cve_gate"] else ""
        print(f"{r['image']:<12} {start}; targets {', '.join(r['targets'])}{gate}")
        for t, b in r["builds"].items():
            last = (
                f"{b['build_id']}  {b['recorded']}  fingerprint {b['fingerprint']}"
                if b
                else "no proven build"
            )
            print(f"{'':<12} {t:<6} {last}")


@task(
    help={
        "image": "image whose proven build is compared (a key of `images` in images.yml)",
        "target": f"whose build: {', '.join(targets.names())} (default local)",
        "against": "compare with this manifest.json, inventory.json or build folder instead "
        "of the build the proven one replaced (build/<image>/<target>/previous/)",
        "against_ref": "compare with the build that was proven as of this git ref (a "
        "branch, tag or sha): the kept build baked from its commit or the newest one "
        "before it; only builds kept here (the proven one, previous/) are seen",
        "format": "markdown (for a pull request, default) or json (for machines)",
        "fail_on_change": "exit with 1 when anything changed (a CI step that gates on it)",
    }
)
@user_errors
def diff(
    c,
    image=None,
    target="local",
    against=None,
    against_ref=None,
    format="markdown",
    fail_on_change=False,
):
    """What changed between two proven builds of an image (markdown or JSON).

    Packages, kernels, enabled units, sockets, users, groups, SUID/SGID files and files
    under /etc. Exit 0 (1 with --fail-on-change and a change), 2 with nothing to compare.
    """
    root = project_root()
    name = require_image(load(root / "images.yml"), image, "diff")
    if format not in FORMATS:
        raise Exit(f"error: --format {format!r}: choose one of {', '.join(FORMATS)}", code=1)
    if against and against_ref:
        raise Exit("error: give --against or --against-ref, not both", code=1)
    where = Path(against).expanduser() if against else None
    try:
        if against_ref:
            result = outputs.compare_at_ref(root, name, target, against_ref)
        else:
            result = outputs.compare(root, name, target, where)
    except outputs.NothingToCompare as err:
        raise Exit(f"nothing to compare: {err}", code=2) from None
    sys.stdout.write(result.to_json() if format == "json" else result.to_markdown())
    if fail_on_change and not result.diff.empty:
        raise Exit(code=1)


@task(
    help={
        "image": "image whose proven build is checked (a key of `images` in images.yml)",
        "target": f"whose build: {', '.join(targets.names())} (default local)",
        "tracker": "the security tracker data (JSON) to check against; default: the "
        "cve_tracker setting, else the image's vulnerabilities.tracker",
    }
)
@user_errors
def cve(c, image=None, target="local", tracker=None):
    """The CVE gate again on a proven build's inventory, with fresh tracker data.

    No bake: the inventory the build recorded is checked; the report is markdown, and
    the exit code 1 when the gate fails.
    """
    from ..pipeline import cve_check

    root = project_root()
    name = require_image(load(root / "images.yml"), image, "cve")
    where = Path(tracker).expanduser().resolve() if tracker else None
    try:
        policy, result = cve_check(root, name, target, settings(c), where)
    except outputs.NothingToCompare as err:
        raise Exit(f"error: {err}", code=1) from None
    print(f"policy: {policy}")
    print(result.to_markdown())
    if not result.ok:
        raise Exit(code=1)


@task(
    help={
        "target": f"only this target: {', '.join(targets.names())} (default: every target "
        "of each image); CI passes its own",
        "base_ref": "compare each build with the one proven as of this git ref (a branch, "
        "tag or sha) instead of the build it replaced (previous/); with --bake, the commit "
        "whose local bake is the reference where the plan's last proven build gives none "
        "(e.g. origin/main, the merge base)",
        "output": "the markdown file to write (default build/report/pr-report.md); the "
        "JSON twin goes beside it, named .json",
        "bake": "validation bake: bake each image the plan would rebake locally (the "
        "checkout; its specs run in the bake) and compare it with a local bake of the "
        "commit its last proven build was baked from (in a temporary git worktree, or a "
        "local build kept here with its fingerprint); publishes nothing, needs no cloud "
        "permission beyond the plan's",
    }
)
@user_errors
def report(c, target=None, base_ref=None, output=None, bake=False):
    """One markdown report (and its JSON twin) for a pull request's validation run.

    Per image: what would rebake and why (the plan), the last proven build, its specs,
    roles without specs, changes against the build it replaced, SBOM and CVE gate.
    Without --bake it bakes nothing and works where nothing was baked. With --bake each
    image that would rebake is baked locally and compared with a local bake of the
    commit its last proven build came from; exit 1 when a validation bake failed (the
    report says which and why).
    """
    from ..pipeline import git_state

    root = project_root()
    if target is not None and target not in targets.names():
        raise Exit(
            f"error: --target {target!r}: choose one of {', '.join(targets.names())}", code=1
        )
    markdown = Path(output).expanduser() if output else pr_report.default_path(root)
    if markdown.suffix == ".json":
        raise Exit("error: --output names the markdown file; the JSON goes beside it", code=1)
    if base_ref:
        outputs.ref_commit(root, base_ref)  # a ref git does not know is the caller's error
    catalogue = load(root / "images.yml")
    validations = None
    with contextlib.redirect_stdout(sys.stderr):
        rows = pr_report.plan_rows(root, catalogue, target, settings(c))
        git = git_state(root)  # before the bakes write build/ (untracked in some checkouts)
        if bake:
            from .. import validate

            validations = validate.run(root, rows, settings=settings(c), base_ref=base_ref)
    doc = pr_report.collect(
        root, catalogue, rows, git=git, base_ref=base_ref, validations=validations
    )
    written = doc.write(markdown)
    print(" and ".join(str(p.relative_to(root) if p.is_relative_to(root) else p) for p in written))
    failed = list(dict.fromkeys(err for v in (validations or {}).values() for err in v.errors))
    if failed:
        raise Exit("error: " + "\n  ".join(["validation bake failed:", *failed]), code=1)
