"""One bake, end to end, for every target: plan, pre-flight, sweep, fingerprint, bake,
prove, seal, record, publish.

    plan()       load images.yml, check the request, resolve the playbook (once)
    preflight()  what needs no machine: playbook syntax, specs collect, the target's checks
    build()      the whole road; returns the path of the recorded manifest

Nothing is started (no VM, no cloud resource) before pre-flight passes. The target
(goldsmith.targets) supplies only what differs between local, aws and twin; this module
owns the build id, the work folder and its key, the Packer run, the order of the checks,
the manifest, the atomic commit of build/<image>/<target>/ and the cleanup. A failed or
interrupted build leaves the last proven build in place and nothing else behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import (
    base_disk,
    cvegate,
    fingerprint,
    outputs,
    packer,
    requirements,
    sbom,
    setup,
    spec,
    targets,
    tools,
    vm,
    workdir,
)
from .ansible_env import ansible_env, profile, timings_env
from .catalogue import Catalogue, Vulnerabilities, load
from .errors import GoldsmithError, ToolError
from .paths import venv_bin
from .settings import Settings
from .targets.contract import Bake, Plan, SealProof, Source, Target, manifest


class Interrupted(GoldsmithError):
    """Ctrl-C or SIGTERM: the build was stopped; the message says what cleanup achieved."""


def plan(
    root: Path,
    image_name: str,
    target: str,
    settings: Settings | None = None,
    catalogue: Catalogue | None = None,
) -> Plan:
    """Load the catalogue and check the request; raises before anything is started.

    A layered image's plan carries its parent's (`Plan.parent`), on the same target.
    """
    catalogue = catalogue or load(root / "images.yml")
    image = catalogue.image(image_name)
    if target not in targets.names():
        raise GoldsmithError(
            f"unknown target {target!r}: choose one of {', '.join(targets.names())}"
        )
    if target not in image.targets:
        raise GoldsmithError(
            f"{catalogue.path.name}: images.{image.name}.targets does not list {target!r} "
            f"(it lists {', '.join(image.targets)})"
        )
    settings = settings or Settings()
    parent = plan(root, image.parent, target, settings, catalogue) if image.parent else None
    return Plan(root, catalogue, image, target, catalogue.role_map(image), settings, parent)


def preflight(p: Plan, target: Target) -> None:
    """Checks that need no machine: the playbook's syntax, the specs load, the target's needs."""
    tools.log(
        "preflight", f"ansible-playbook --syntax-check {p.image.playbook.relative_to(p.root)}"
    )
    tools.run(
        [venv_bin("ansible-playbook"), "--syntax-check", "-i", "localhost,", p.image.playbook],
        prefix="preflight",
        env=ansible_env(p.root),
        cwd=p.root,
    )
    spec.report_coverage(p.role_map)
    if p.parent:
        names = " -> ".join(layer.image.name for layer in p.layers)
        tools.log("preflight", f"layered: {names}; the parents' specs run on this image too")
    tools.log("preflight", "the specs load (pytest --collect-only)")
    specs = {d for layer in p.layers for d in layer.role_map.specs.values()}
    spec.collect([*sorted(specs), spec.hygiene_dir(p.root)], p.root)
    for d in sorted(specs):
        spec.declared(d)  # what a spec declares it relies on: a bad value fails here
    check_tracker(p)
    target.check(p)


def check_tracker(p: Plan) -> None:
    """An image with a CVE gate has its tracker data at hand before anything starts."""
    vulns = p.image.vulnerabilities
    if vulns is None:
        return
    tracker = p.cve_tracker
    if tracker is None:
        raise GoldsmithError(
            f"{p.catalogue.path.name}: {vulns.where} names no tracker: set its `tracker:` "
            "(a file in the project) or the cve_tracker setting "
            "(INVOKE_GOLDSMITH_CVE_TRACKER=path/to/tracker.json)"
        )
    if not tracker.is_file():
        setting = "the cve_tracker setting" if p.settings.cve_tracker else f"{vulns.where}.tracker"
        raise GoldsmithError(
            f"{p.image.name}: the CVE gate's tracker data {tracker} ({setting}) does not "
            "exist: download it (https://security-tracker.debian.org/tracker/data/json) "
            "or point the setting at a copy"
        )
    tools.log("preflight", f"CVE gate: {vulns.where}, tracker {tracker.name}")


def git_state(root: Path) -> dict[str, Any]:
    """The checkout's sha and whether it is dirty ("unknown" and dirty outside git)."""
    try:
        sha = tools.capture(["git", "-C", str(root), "rev-parse", "HEAD"]).strip()
        dirty = bool(tools.capture(["git", "-C", str(root), "status", "--porcelain"]).strip())
        return {"sha": sha, "dirty": dirty}
    except (GoldsmithError, OSError):
        return {"sha": "unknown", "dirty": True}


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so every cleanup still runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep(root: Path) -> list[str]:
    """Clean up after builds of this project that died (SIGKILL, a lost machine): their
    qemu, mounts, loop devices, stand-in VMs, cloud resources and work folders."""
    done: list[str] = []
    for path, owner in workdir.dead(root):
        what = owner.get("build_id", path.name)
        tools.log("sweep", f"{what}: its build is gone (pid {owner.get('pid', '?')}); cleaning up")
        found = []
        target_name = owner.get("target")
        if target_name in targets.names():
            found += targets.get(target_name).sweep(root, owner)
        found += workdir.sweep_local(root, path, owner)
        for item in found:
            tools.log("sweep", f"{what}: removed {item}")
        done += [f"{what}: {item}" for item in found]
    return done


@dataclass
class Decision:
    """What a build of an image for a target would do, and why."""

    image: str
    target: str
    fingerprint: str
    inputs: dict[str, str]
    last: dict[str, Any] | None  # the last proven build's manifest (any fingerprint)
    reusable: dict[str, Any] | None  # the proven build with this fingerprint, if any
    changed: list[str] | None  # inputs changed since `last` (None: cannot tell)

    @property
    def action(self) -> str:
        return "reuse" if self.reusable else "rebake"


def source_of(p: Plan, target: Target, prepare: bool = True) -> Source:
    """What the build machine of `p` boots from. A layered image's is its parent's proven
    build on the same target, named by the parent's fingerprint, so the child's
    fingerprint covers the parent's inputs: a change in a parent's role rebakes both.
    With `prepare` (a bake) that build must exist; planning only needs the fingerprint."""
    if p.parent is None:
        return target.source(p, prepare)
    parent = p.parent
    d = decide(parent, target, source_of(parent, target, prepare=False))
    if prepare and d.reusable is None:
        raise GoldsmithError(
            f"{p.image.name} is layered on {parent.image.name}, which has no proven "
            f"{p.target} build with its current inputs (fingerprint {d.fingerprint[:16]}): "
            f"./run build --image {parent.image.name} --target {p.target}"
        )
    source = target.from_parent(p, d.reusable)
    source.id = f"image {parent.image.name} {d.fingerprint}"
    source.parent = {"image": parent.image.name, "fingerprint": d.fingerprint}
    if d.reusable:
        source.parent["build_id"] = d.reusable.get("build_id", "")
    return source


def decide(p: Plan, target: Target, source: Source) -> Decision:
    inputs = fingerprint.inputs(p.image, p.role_map, p.root, source.id, p.target)
    fp = fingerprint.of(inputs)
    last = target.last_proven(p, None)
    reusable = None
    if last is not None:
        reusable = last if last.get("fingerprint") == fp else target.last_proven(p, fp)
    recorded = outputs.read_proven(p.root, p.image.name, p.target, quiet=True)
    old_inputs = (recorded.manifest.get("inputs") if recorded else None) or None
    return Decision(
        p.image.name, p.target, fp, inputs, last, reusable, fingerprint.changed(old_inputs, inputs)
    )


def build(
    root: Path,
    image_name: str,
    target: str = "local",
    force: bool = False,
    settings: Settings | None = None,
) -> Path:
    """Bake `image_name` for `target` (or reuse its proven build); return its manifest path."""
    started = time.monotonic()
    settings = settings or Settings()
    # Third-party roles and collections first: resolving the playbook needs them.
    requirements.ensure(root, write_lock=not settings.requirements_locked)
    p = plan(root, image_name, target, settings)
    t = targets.get(target)
    for layer in p.layers:
        preflight(layer, t)
    setup.ensure(root)
    with terminate_as_interrupt():
        sweep(root)
        # A layered image bakes from its parent's proven build: the ancestors first, each
        # reused when its inputs are unchanged (`force` rebakes only the image asked for).
        # One target session for the chain (a twin started here holds the parent's AMI).
        with t.session(p):
            parents_s = 0.0
            for layer in p.layers[:-1]:
                t0 = time.monotonic()
                _build_one(layer, t, False, t0)
                parents_s += time.monotonic() - t0
            # The image's own total leaves its parents' builds out (their manifests
            # have theirs).
            return _build_one(p, t, force, started + parents_s)


def _build_one(p: Plan, t: Target, force: bool, started: float) -> Path:
    with outputs.image_lock(p.root, p.image.name):
        s0 = time.monotonic()
        source = source_of(p, t)
        base_s = round(time.monotonic() - s0, 1)
        d = decide(p, t, source)
        if not force and d.reusable:
            return t.reuse(p, d.reusable, source)
        if d.changed:
            tools.log("build", f"{p.image.name}: inputs changed: {', '.join(d.changed[:8])}")
        return _bake(p, t, source, d, started, {"base": base_s})


def shared_vars(bake: Bake) -> dict[str, Any]:
    """The build's variables every source shares (packer/variables.pkr.hcl)."""
    p = bake.plan
    layers = spec.write_layers(
        bake.work.path / "spec-layers.json",
        [
            spec.Layer(x.image.name, x.role_map.playbook, list(x.role_map.specs.values()))
            for x in p.layers
        ],
    )
    spec_cmd = [sys.executable, "-m", "goldsmith.spec", "live", "--layers", str(layers)]
    spec_cmd += ["--junit", str(bake.live_junit), "--key", str(bake.key), "--root", str(p.root)]
    if p.target == "local":
        # Its inventory comes from the sealed disk: the live machine's sockets are read here.
        spec_cmd += ["--listening", str(bake.live_listening)]
    return {
        "image_name": p.image.name,
        "git_sha": bake.git["sha"],
        "build_id": bake.build_id,
        "fingerprint": bake.fingerprint,
        "roles": ",".join(p.role_map.roles),
        "playbook": str(p.image.playbook),
        "ansible_playbook": venv_bin("ansible-playbook"),
        "ansible_env_vars": [
            f"{k}={v}"
            for k, v in {
                **ansible_env(p.root, p.settings.ansible_strategy),
                **timings_env(bake.ansible_timings),
            }.items()
        ],
        "spec_command": shlex.join(spec_cmd),
        "seal_script": str(base_disk.DATA / "seal.sh"),
        "build_user": bake.build_user,
        "ssh_private_key_file": str(bake.key),
        "manifest_path": str(bake.work.path / "packer-manifest.json"),
    }


SEAL_LEFT = "goldsmith-seal: LEFT:"  # how seal.sh's self-check names a leftover
# How AWS (and the twin) words a denied call in the error Packer prints.
AWS_DENIED = re.compile(r"is not authorized to perform: ([a-z0-9-]+:[A-Za-z0-9]+)")


def run_packer(bake: Bake, target: Target, template: Path, var_file: Path) -> dict[str, float]:
    """`packer build` of the target's source; return its phase timings.

    When Packer fails because specs failed, or because the seal's self-check found
    something left on the machine, the error names each failing spec or leftover and
    says what was not made; any other Packer failure is raised as it is.
    """
    phases = packer.Timings()
    left: list[str] = []
    denied: list[str] = []

    def line(text: str) -> None:
        phases.line(text)
        if SEAL_LEFT in text:
            left.append(text.split(SEAL_LEFT, 1)[1].strip())
        found = AWS_DENIED.search(text)
        if found and found.group(1) not in denied:
            denied.append(found.group(1))

    try:
        packer.build(
            template,
            var_file,
            only=target.packer_only,
            cwd=bake.plan.root,
            env=target.packer_env(bake),
            on_line=line,
            stop_grace=bake.plan.settings.packer_stop_seconds(target.name),
            on_start=bake.state.get("on_packer_start"),
        )
    except ToolError:
        live = spec.parse_junit(bake.live_junit)
        if live.failures:
            raise GoldsmithError(
                f"{bake.plan.image.name}: {live.failed} spec(s) failed, {target.what}:\n  "
                + "\n  ".join(live.failures)
            ) from None
        if left:
            raise _seal_left(bake, target, left) from None
        if denied:
            raise GoldsmithError(
                f"{bake.plan.image.name}: AWS denied Packer {', '.join(denied)}, {target.what}: "
                "the role or user running goldsmith needs that IAM permission (CI's role has "
                "the policy in aws/policy.json)"
            ) from None
        raise
    if left:
        # A local build seals in Packer's shutdown command, whose exit status Packer
        # does not check: the self-check's findings fail the build here instead.
        raise _seal_left(bake, target, left)
    return phases.finish()


def _seal_left(bake: Bake, target: Target, left: list[str]) -> GoldsmithError:
    return GoldsmithError(
        f"{bake.plan.image.name}: the seal's self-check found {len(left)} thing(s) "
        f"left on the machine, {target.what}:\n  " + "\n  ".join(left)
    )


def record_review(p: Plan, proof: SealProof, staged: Path, build_id: str) -> dict[str, Any]:
    """Write what a reviewer reads into the staged output (inventory.json, sbom.cdx.json,
    cve-report.md) and return the manifest's fields naming them (each file with its
    sha256), or saying why there is none."""
    fields: dict[str, Any] = {}
    if proof.inventory is None:
        why = f"no disk of the {p.target} build to read (the seal was proven by {proof.how})"
        fields |= {"inventory": None, "inventory_reason": why}
        fields |= {"sbom": None, "sbom_reason": why}
    else:
        written = outputs.write_json(staged / outputs.INVENTORY, proof.inventory)
        fields["inventory"] = {
            "file": outputs.INVENTORY,
            "sha256": written,
            "format": proof.inventory.get("format"),
            "packages": len(proof.inventory.get("packages") or {}),
            "read": proof.inventory_read,
        }
        doc = sbom.to_cyclonedx(proof.inventory, p.image.name, build_id)
        outputs.write_atomic(staged / outputs.SBOM, doc)
        fields["sbom"] = {
            "file": outputs.SBOM,
            "sha256": outputs.sha256_text(doc),
            "format": "CycloneDX 1.6 JSON",
        }
    vulns, gate = p.image.vulnerabilities, proof.gate
    if vulns is None:
        fields |= {"cve_gate": None, "cve_gate_reason": "images.yml gives this image no policy"}
    elif gate is None:
        fields |= {
            "cve_gate": None,
            "cve_gate_reason": f"not run: {fields.get('inventory_reason')}",
        }
    else:
        tracker = p.cve_tracker
        assert tracker is not None
        report = gate.to_markdown() + "\n"
        outputs.write_atomic(staged / outputs.CVE_REPORT, report)
        fields["cve_gate"] = {
            "ok": gate.ok,
            "policy": vulns.where,
            "tracker": str(tracker.relative_to(p.root))
            if tracker.is_relative_to(p.root)
            else tracker.name,
            "tracker_sha256": outputs.sha256_file(tracker),
            "release": gate.release,
            "fail_on": gate.fail_on,
            "allowed": sorted({f.cve for f, _ in gate.allowed}),
            "below_threshold": len(gate.below),
            "open": len(gate.open),
            "expired_allows": sorted({a.id for a in gate.expired}),
            "report": outputs.CVE_REPORT,
            "report_sha256": outputs.sha256_text(report),
        }
    return fields


def _packer_manifest(path: Path) -> dict[str, Any]:
    """Packer's own manifest, with the build's temporary paths reduced to file names."""
    data = json.loads(path.read_text())
    for b in data.get("builds", []):
        for f in b.get("files") or []:
            f["name"] = Path(f["name"]).name
    return data


def _bake(
    p: Plan, target: Target, source: Source, d: Decision, started: float, timings: dict
) -> Path:
    image, root = p.image, p.root
    build_id = f"{image.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    work = workdir.create(root, build_id, image=image.name, target=p.target)
    dest = outputs.target_dir(root, image.name, p.target)
    bake: Bake | None = None
    failed, interrupted = True, False
    try:
        key = work.path / "build_key"
        public = vm.make_key(key)
        staged = work.path / "result"
        staged.mkdir()
        bake = Bake(
            plan=p,
            source=source,
            fingerprint=d.fingerprint,
            inputs=d.inputs,
            build_id=build_id,
            git=git_state(root),
            work=work,
            key=key,
            public_key=public,
            build_user=target.build_user(p),
            staged=staged,
            timings=timings,
        )
        target.start(bake)
        values = {**shared_vars(bake), **target.packer_vars(bake)}
        template = packer.template_dir(root, work.path / "packer")
        var_file = packer.write_vars(values, work.path / "build.pkrvars.hcl")
        packer.init(template)
        packer.validate(template, var_file, only=target.packer_only)
        tools.log("phase", f"bake {image.name} for {p.target} ({build_id})")
        with target.during_packer(bake):
            bake.timings.update(run_packer(bake, target, template, var_file))
        fields = target.collect(bake)
        t = time.monotonic()
        proof = target.prove_seal(bake)
        bake.timings["hygiene"] = round(time.monotonic() - t, 1)
        live = spec.parse_junit(bake.live_junit)
        spec.merge_junit([bake.live_junit, bake.hygiene_junit], staged / outputs.JUNIT)
        bake.timings["total"] = round(time.monotonic() - started, 1)
        specs = {"live": live.as_dict()}
        timed = bake.ansible_timings
        provision = {"strategy": p.settings.ansible_strategy}
        provision |= profile(timed.read_text().splitlines() if timed.is_file() else [])
        if proof.hygiene is not None:
            specs["hygiene"] = proof.hygiene.as_dict()
        record = manifest(
            p,
            build_id=build_id,
            git=bake.git,
            fingerprint=d.fingerprint,
            inputs=d.inputs,
            source=source,
            timings=bake.timings,
            provision=provision,
            specs=specs,
            seal_proof=proof.how,
            tools=fingerprint.tool_versions(),
            **fields,
            packer_manifest=_packer_manifest(work.path / "packer-manifest.json"),
        )
        if proof.packages is not None:
            record["packages"] = proof.packages
        record |= record_review(p, proof, staged, build_id)
        outputs.write_json(staged / outputs.MANIFEST, record)
        with tools.shielded():
            outputs.keep_previous(dest, staged)
            outputs.commit(staged, dest)
            work.record(proven=True)
        failed = False
        tools.log(
            "build",
            f"{image.name}: {live.passed} specs passed"
            + (f", {proof.hygiene.passed} hygiene checks" if proof.hygiene else "")
            + f"; recorded {dest.relative_to(root)}/ in {bake.timings['total']:.0f}s",
        )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        with tools.shielded():
            problems = target.cleanup(bake, failed) if bake is not None else []
            workdir.release(work.path)
            shutil.rmtree(work.path, ignore_errors=True)
            if work.path.exists():
                problems.append(f"work folder {work.path.relative_to(root)}")
            if workdir.kill_qemu(str(work.path)):
                problems.append("a qemu process (killed late)")
            for problem in problems:
                tools.log("cleanup", f"could not remove: {problem}")
    if interrupted:
        # The build is over and cleaned up: a Ctrl-C pressed again now (cleanup can take
        # less than a second) would only turn the exit status 130 into a death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if problems:
            raise Interrupted(
                "interrupted; nothing was recorded, but these were left behind: "
                + "; ".join(problems)
                + " (`./run sweep` retries)"
            )
        raise Interrupted(
            "interrupted; cleaned up (no VM, mount, work folder or cloud resource of this build "
            f"is left) and nothing was recorded; {dest.relative_to(root)}/ is unchanged"
        )
    target.after_commit(p, dest / outputs.MANIFEST)
    return dest / outputs.MANIFEST


def plan_all(
    root: Path,
    *,
    image: str | None = None,
    target: str | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """For every image (and each of its targets): fingerprint, last proven build, decision.

    Builds nothing; it installs requirements.yml's pinned roles and collections when they
    are not (the fingerprint covers their content). A target that cannot be asked (the
    twin is not running, no AWS credentials) says so in `note` and counts as "rebake".
    """
    locked = (settings or Settings()).requirements_locked
    requirements.ensure(root, write_lock=not locked)
    catalogue = load(root / "images.yml")
    names = [catalogue.image(image).name] if image else list(catalogue.images)
    rows = []
    for name in names:
        wanted = [target] if target else list(catalogue.images[name].targets)
        for tname in wanted:
            p = plan(root, name, tname, settings)
            t = targets.get(tname)
            row: dict[str, Any] = {"image": name, "target": tname}
            try:
                d = decide(p, t, source_of(p, t, prepare=False))
            except GoldsmithError as err:
                row |= {"fingerprint": "", "action": "rebake", "last": None, "note": str(err)}
                rows.append(row)
                continue
            last = d.last or {}
            label = last.get("artifact_label")
            if last and not label:
                where = outputs.target_dir(root, name, tname).relative_to(root)
                label = f"{where}/{last.get('artifact', '')} (build {last.get('build_id')})"
            row |= {
                "fingerprint": d.fingerprint,
                "action": d.action,
                "last": label,
                "last_fingerprint": last.get("fingerprint"),
                # What the last proven build was baked from and where it is (an AMI's
                # tags, a manifest): a validation bake's reference (goldsmith.validate).
                "last_build": {k: last.get(k) for k in ("build_id", "git", "ami", "region")}
                if last
                else None,
                "changed": d.changed,
            }
            if d.last is None:
                row["note"] = "no proven build yet"
            elif d.action == "rebake" and d.changed is None:
                row["note"] = "no input record to compare with: every input counts as changed"
            rows.append(row)
    return rows


def list_images(root: Path, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every image of the catalogue: what it starts from (its parent, or its base), its
    targets, and its last proven build per target (None where there is none)."""
    locked = (settings or Settings()).requirements_locked
    requirements.ensure(root, write_lock=not locked)
    catalogue = load(root / "images.yml")
    rows = []
    for name, image in catalogue.images.items():
        rows.append(
            {
                "image": name,
                "parent": image.parent,
                "base": None if image.parent else image.base.name,
                "targets": list(image.targets),
                "cve_gate": image.vulnerabilities is not None,
                "builds": {t: outputs.summary(root, name, t) for t in image.targets},
            }
        )
    return rows


def cve_check(
    root: Path,
    image: str,
    target: str,
    settings: Settings | None = None,
    tracker: Path | None = None,
    today: dt.date | None = None,
) -> tuple[str, cvegate.GateResult]:
    """The CVE gate again, on the inventory of the image's proven build: with fresh tracker
    data (`tracker`, else the cve_tracker setting, else images.yml's), under the image's
    policy (the default one, fail on high, when it has none). Returns (policy, result)."""
    catalogue = load(root / "images.yml")
    img = catalogue.image(image)
    vulns = img.vulnerabilities or Vulnerabilities(cvegate.Policy(), None, "the default policy")
    settings = settings or Settings()
    if tracker is not None:
        settings = dataclasses.replace(settings, cve_tracker=str(tracker))
    img = dataclasses.replace(img, vulnerabilities=vulns)
    p = Plan(root, catalogue, img, target, catalogue.role_map(img), settings)
    found = outputs.recorded(root, image, target).inventory
    check_tracker(p)
    assert p.cve_tracker is not None
    data = cvegate.load_tracker(p.cve_tracker)
    return vulns.where, cvegate.check(
        found, data, vulns.policy, today or dt.datetime.now(dt.UTC).date()
    )
