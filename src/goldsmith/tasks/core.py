"""The tasks every user starts with: setup, vendor, base, build, plan, sweep, lint, test, bench."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading

from invoke import Exit, task

from .. import base_disk, requirements, targets
from .. import setup as system_setup
from ..catalogue import load
from ..errors import GoldsmithError
from ..paths import project_root
from .common import settings, user_errors


@task
@user_errors
def setup(c):
    """Install the system tools (apt; needs root) and requirements.yml's pinned roles and
    collections; writes requirements.lock when requirements.yml changed."""
    root = project_root()
    system_setup.ensure(root)
    requirements.ensure(root, write_lock=not settings(c).requirements_locked)


@task
@user_errors
def vendor(c):
    """Install requirements.yml afresh into vendor/ to commit: builds then never need Galaxy."""
    root = project_root()
    content = requirements.vendor(root)
    print(f"vendor/: {content.describe()} (commit vendor/ and requirements.lock)")


@task(help={"name": "base to build (a key of `bases` in images.yml); default: all built here"})
@user_errors
def base(c, name=None):
    """Build the local base disk(s) from Debian's packages; cached by their definition's hash."""
    root = project_root()
    catalogue = load(root / "images.yml")
    names = [name] if name else [n for n, b in catalogue.bases.items() if b.kind == "debootstrap"]
    for n in names:
        if n not in catalogue.bases:
            raise GoldsmithError(
                f"images.yml: bases: no base named {n!r} ({', '.join(catalogue.bases)})"
            )
        system_setup.ensure(root)
        path = base_disk.ensure(catalogue.bases[n], root)
        print(path.relative_to(root))


@task(
    iterable=["image"],
    help={
        "image": "image to bake (a key of `images` in images.yml; again for several); "
        "default: base. The images it is layered on are baked first (or reused)",
        "all": "every image of the catalogue with this target, parents before children",
        "target": f"where to bake: {', '.join(targets.names())} (default local)",
        "force": "rebake the images named even when their inputs' fingerprint matches the "
        "last proven build",
        "jobs": "with several images: how many bakes run at once (default 1)",
    },
)
@user_errors
def build(c, image=None, all_=False, target="local", force=False, jobs=1):
    """Bake an image: pre-flight, bake with Packer, prove with specs, seal, record the manifest."""
    root = project_root()
    names = list(image or [])
    if all_:
        catalogue = load(root / "images.yml")
        names = [n for n, i in catalogue.images.items() if target in i.targets]
    elif not names:
        names = ["base"]
    if len(names) == 1 and int(jobs) == 1:
        from ..pipeline import build as bake

        manifest = bake(root, names[0], target=target, force=force, settings=settings(c))
        print(f"manifest: {manifest.relative_to(root)}")
        return
    from ..graph import build_all

    outcomes = build_all(root, names, target, force=force, jobs=int(jobs), settings=settings(c))
    for o in outcomes:
        print(f"{o.image:<12} {o.state:<8} {o.detail}")
    bad = [o.image for o in outcomes if o.state != "proven"]
    if bad:
        raise Exit(f"error: not proven: {', '.join(bad)}", code=1)


@task(
    help={
        "image": "only this image (default: every image)",
        "target": "only this target (default: every target of each image)",
        "json": "print JSON (one object per image and target) instead of text",
        "rebake_only": "print only the names of images that would be rebaked (for CI)",
    }
)
@user_errors
def plan(c, image=None, target=None, json_=False, rebake_only=False):
    """What a build would do: each image's fingerprint, its last proven build, reuse or rebake."""
    from ..pipeline import plan_all

    root = project_root()
    # Progress (installing pinned collections, say) goes to stderr: stdout is the answer,
    # which --json and --rebake-only callers parse.
    with contextlib.redirect_stdout(sys.stderr):
        rows = plan_all(root, image=image, target=target, settings=settings(c))
    if rebake_only:
        print(" ".join(dict.fromkeys(r["image"] for r in rows if r["action"] != "reuse")))
    elif json_:
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for r in rows:
            print(
                f"{r['image']:<12} {r['target']:<6} {r['fingerprint'][:16]}  {r['action']:<7} "
                f"last proven: {r['last'] or 'none'}"
            )
            if r.get("changed"):
                print(f"{'':<20} changed: {', '.join(r['changed'])}")
            if r.get("note"):
                print(f"{'':<20} {r['note']}")


@task
@user_errors
def sweep(c):
    """Clean up after builds that died (SIGKILL, a lost CI job): VMs, mounts, cloud leftovers."""
    from ..pipeline import sweep as do_sweep

    done = do_sweep(project_root())
    print(f"swept {len(done)} leftover(s)" if done else "nothing to sweep")


@task
@user_errors
def lint(c):
    """yamllint, ansible-lint (production), ruff, packer fmt/validate, playbook syntax: no VM."""
    from ..lint import lint as do_lint

    do_lint(project_root())


@task(
    help={
        "fast": "unit tests only (no lint, no bake)",
        "k": "only tests matching this pytest -k expression",
    }
)
@user_errors
def test(c, fast=False, k=None):
    """The whole suite: lint, unit tests, and real bakes (local image, AWS twin)."""
    root = project_root()
    if not fast:
        system_setup.ensure(root)
        lint(c)
    common = ["-v", "-rfEs", "--color=no"] + (["-k", k] if k else [])
    # Unit tests on every core (each test owns its folders).
    runs = {"unit": {"unit": ["tests/unit", "-n", "auto", *common]}}
    if not fast:
        # The bakes in two lanes side by side, each its own pytest session (a TCG guest
        # keeps about one core busy): the dev loop (marked base_lane: it bakes base first),
        # and the rest (one-role images, the twin, then the tests of base's build, which
        # wait for the other lane's bake). A lane runs its tests one after the other.
        slow = ["--durations=0", "--durations-min=30"]  # where a lane's time goes
        runs["integration"] = {
            "base lane": ["tests/integration", "-m", "base_lane", *slow, *common],
            "other lane": ["tests/integration", "-m", "not base_lane", *slow, *common],
        }
    failed = []
    for lanes in runs.values():
        for lane, code in run_lanes(root, lanes).items():
            # 5: -k selected nothing in this lane, which is not a failure of the suite.
            if code not in (0, 5) or (code == 5 and not k):
                failed.append(f"{lane} (pytest exit code {code})")
    if failed:
        raise Exit(f"tests failed: {', '.join(failed)}", code=1)


def run_lanes(root, lanes: dict[str, list[str]]) -> dict[str, int]:
    """Run pytest once per lane (name: arguments), side by side; with several lanes each
    output line starts with its lane's name. Returns each lane's exit code."""
    if len(lanes) == 1:
        ((name, args),) = lanes.items()
        return {name: subprocess.run([sys.executable, "-m", "pytest", *args], cwd=root).returncode}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", *args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        for name, args in lanes.items()
    }

    def relay(name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"{name} | {line}")
            sys.stdout.flush()

    threads = [threading.Thread(target=relay, args=item) for item in procs.items()]
    for t in threads:
        t.start()
    try:
        codes = {name: p.wait() for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait()
        for t in threads:
            t.join()
    return codes


@task(help={"image": "image to bake for the benchmark (default: base)"})
@user_errors
def bench(c, image="base"):
    """Benchmark a bake against the floor (raw apt work) and, if layered, against a bake from
    scratch, in one run; appended to bench/results.jsonl (see bench/README.md)."""
    from ..bench import run

    run(project_root(), image, settings(c))
