"""Bake an AMI: the `aws` target (real EC2) and the `twin` target (moto plus a local VM).

The same Packer build as the local target (playbook, live specs, seal) runs through the
amazon-ebs source. Order of a bake, and why:

1. Everything that needs no AWS resource first: the source AMI is looked up (a read),
   the inputs fingerprinted; an AMI of this image with the same fingerprint is reused.
2. build/<image>/build-id is written before anything is created in AWS, so a job killed
   at any later point can be cleaned up by that id (buildspec post_build, `aws.reap`).
3. The per-build key pair is imported (tagged with the build id); on the twin, the
   stand-in VM boots from the image's local base with that key.
4. `packer build -only=goldsmith.amazon-ebs.aws`. A failing spec fails Packer before it
   creates an image. Meanwhile the IMDSv2 guard requires IMDSv2 on the builder instance
   (Packer 1.6.6 has no `metadata_options`); a builder it could not guard fails the build.
5. Twin only: the seal powers the stand-in VM off (as EC2's stop would); its disk is
   then mounted read-only and the hygiene spec proves the seal on it. A failure there
   deregisters what Packer registered.
6. Always: the reaper deletes what the build left (key pair, leaked instance, Packer's
   temporary group; and the build's AMIs when it failed), the VM is stopped, the
   temporary folder removed.
7. The manifest is written, then published (copies, sharing, SSM) from that manifest,
   so a publish that fails half-way is finished later with `invoke aws.publish`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import base as base_images
from .. import disk, fingerprint, packer, spec, tools, vm
from ..build import Plan, git_state, kill_strays, run_packer, shared_vars
from ..catalogue import AwsSettings, Image
from ..errors import GoldsmithError
from ..paths import build_dir
from . import amis, imds, keys, packer_vars, publish, reaper, report, twin
from .clients import Aws

ONLY = "goldsmith.amazon-ebs.aws"
PACKER_BUILD_NAME = "aws"  # the source's name, as Packer's manifest records it
TWIN_BUILD_USER = vm.BUILD_USER  # the stand-in VM's credential unit makes this user
# The stand-in VM powers itself off at the end of the seal; under TCG that takes seconds.
POWEROFF_TIMEOUT_S = 180.0


def bake_aws(p: Plan, *, force: bool, started: float) -> Path:
    """Bake `p.image` as an AMI on AWS or on the twin; publish it; return its manifest path.

    On the twin, a running twin is used; otherwise one is started for this build and
    stopped when it ends (its AMIs go with it: leave one up with `invoke twin.up` to
    look at the result).
    """
    settings = p.image.aws
    if settings is None:
        raise GoldsmithError(
            f"{p.catalogue.path.name}: images.{p.image.name} has target {p.target!r} "
            "but no 'aws' section (source_ami, regions, ...)"
        )
    if p.target != "twin":
        return _bake(p, settings, Aws(), force=force, started=started)
    started_twin = twin.running(p.root) is None
    twin.up(p.root)
    try:
        return _bake(p, settings, twin.aws(p.root), force=force, started=started)
    finally:
        if started_twin:
            twin.down(p.root)
            tools.log(
                "twin",
                "the twin was started for this build and is stopped again; "
                "keep one up with `invoke twin.up` to look at the AMIs",
            )


def _bake(p: Plan, settings: AwsSettings, aws: Aws, *, force: bool, started: float) -> Path:
    image, root, on_twin = p.image, p.root, p.target == "twin"
    region = settings.regions[0]
    out_dir = p.out_dir
    manifest_path, junit = out_dir / "manifest.json", out_dir / "junit.xml"
    timings: dict[str, float] = {}

    t = time.monotonic()
    stand_in = _stand_in_base(image, root) if on_twin else None
    # A read, no resource yet: a wrong source filter fails here, before anything is created.
    source = amis.find_source_ami(
        aws, region, list(settings.source_ami_owners), settings.source_ami_name
    )
    base_id = source["ImageId"] + (f"+{stand_in.parent.name}" if stand_in else "")
    timings["base"] = round(time.monotonic() - t, 1)
    fp = fingerprint.compute(image, p.role_map, root, base_id, p.target)

    if not force:
        reused = _reusable(aws, region, image.name, fp)
        if reused is not None:
            tools.log(
                "build",
                f"{image.name}: inputs unchanged (fingerprint {fp[:12]}); reusing "
                f"{reused['ImageId']} in {region} (--force to rebake)",
            )
            # This run creates nothing: a stale build id must not lead a clean-up after a
            # failed publish to the AMI being reused.
            (out_dir / "build-id").unlink(missing_ok=True)
            manifest = _reused_manifest(p, reused, region, fp, base_id, source["ImageId"])
            return _record_and_publish(p, settings, aws, manifest, manifest_path)

    # The output folder shows the last build: a failed build must not leave an old result.
    for f in (manifest_path, junit, out_dir / report.MARKDOWN, out_dir / report.JSON):
        f.unlink(missing_ok=True)
    sha, dirty = git_state(root)
    build_id = f"{image.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    provenance = amis.Provenance(image.name, sha, fp, build_id, tuple(p.role_map.roles))
    out_dir.mkdir(parents=True, exist_ok=True)
    # Before anything touches AWS: whoever cleans up after a killed job needs this id.
    (out_dir / "build-id").write_text(build_id + "\n")
    tools.log("build", f"{image.name}: build {build_id} in {region} ({p.target})")

    work = Path(tempfile.mkdtemp(prefix=f".work-{image.name}-", dir=build_dir(root)))
    vm_name = f"twin-{build_id}"
    failed = True
    try:
        key = work / "build_key"
        public = vm.make_key(key)
        keypair = keys.import_build_key(aws, region, build_id, public, tags=provenance.tags())
        machine = None
        if stand_in is not None:
            t = time.monotonic()
            machine = vm.up(vm_name, stand_in, root=root, key=key)
            timings["stand_in_boot"] = round(time.monotonic() - t, 1)
        live_junit = work / "junit-spec.xml"
        build_user = TWIN_BUILD_USER if on_twin else settings.ssh_username
        values = shared_vars(p, sha, build_id, fp, key, live_junit, work, build_user)
        aws_values = packer_vars.packer_vars(
            settings,
            provenance,
            region=region,
            endpoint=twin.endpoint(root) if on_twin else "",
            ssh_host="127.0.0.1" if machine else "",
            ssh_port=machine.ssh_port if machine else 22,
            keypair_name=keypair,
            private_key_file=str(key),
        )
        if on_twin:
            # The stand-in's user is the one its credential unit made; and the seal
            # powers it off, as EC2's stop would, so its disk is clean to inspect.
            aws_values["aws_ssh_username"] = TWIN_BUILD_USER
            aws_values["aws_seal_environment"] = ["GOLDSMITH_SEAL_POWEROFF=1"]
        template = packer.template_dir(root, work / "packer")
        var_file = packer.write_vars({**values, **aws_values}, work / "build.pkrvars.hcl")
        packer.init(template)
        packer.validate(template, var_file, only=ONLY)
        tools.log("phase", f"bake {image.name} on {p.target} ({region})")
        # Packer 1.6.6 has no metadata_options: the guard requires IMDSv2 on the builder.
        guard = imds.Imdsv2Guard(aws, region, build_id)
        with guard:
            phase_times = run_packer(
                image.name,
                template,
                var_file,
                only=ONLY,
                root=root,
                live_junit=live_junit,
                nothing="no AMI registered",
                env=twin.env(root, region) if on_twin else None,
            )
        guard.check()
        timings.update(phase_times)
        packer_manifest = json.loads((work / "packer-manifest.json").read_text())
        # Read it now: a manifest without this run's AMI is a failed build.
        built = amis.parse_manifest(packer_manifest, "Packer's manifest", PACKER_BUILD_NAME)

        parts, checks, packages = [live_junit], {}, None
        if machine is not None:
            t = time.monotonic()
            hygiene, packages = _prove_seal(machine, work, root, image.name)
            timings["hygiene"] = round(time.monotonic() - t, 1)
            parts.append(hygiene.junit)
            checks["hygiene"] = hygiene.as_dict()
        live = spec.parse_junit(live_junit)
        spec.merge_junit(parts, junit)
        timings["total"] = round(time.monotonic() - started, 1)
        manifest: dict[str, Any] = {
            "image": image.name,
            "target": p.target,
            "build_id": build_id,
            "git": {"sha": sha, "dirty": dirty},
            "fingerprint": fp,
            "base": {
                "name": image.base.name,
                "kind": image.base.kind,
                "id": base_id,
                "source_ami": source["ImageId"],
                "source_ami_name": source.get("Name", ""),
            },
            "region": region,
            "ami": built.source_ami,
            "roles": list(p.role_map.roles),
            "uncovered_roles": list(p.role_map.uncovered),
            "timings": timings,
            "specs": {"live": live.as_dict(), **checks},
            "imdsv2": guard.as_dict(),
            "tools": fingerprint.tool_versions(),
            "packer_manifest": packer_manifest,
        }
        if packages is not None:
            manifest["packages"] = packages
        failed = False
    finally:
        try:
            # Whatever happened: no instance, key pair or temporary group stays; a failed
            # build's AMI and snapshots go too.
            reaper.reap(aws, [region], build_id, images=failed)
        finally:
            vm.down(vm_name, root)
            kill_strays(str(work))
            shutil.rmtree(work, ignore_errors=True)
    tools.log(
        "build",
        f"{image.name}: {live.passed} specs passed"
        + (f", {checks['hygiene']['passed']} hygiene checks on the sealed disk" if checks else "")
        + f"; {built.source_ami} in {region} in {timings['total']:.0f}s",
    )
    return _record_and_publish(p, settings, aws, manifest, manifest_path)


def _stand_in_base(image: Image, root: Path) -> Path:
    """The disk the twin's stand-in VM boots from: the image's local base."""
    if image.base.kind != "debootstrap":
        raise GoldsmithError(
            f"images.yml: images.{image.name}.base is {image.base.name!r} (kind "
            f"{image.base.kind!r}); the twin target boots its stand-in machine from a base "
            "built here (kind debootstrap)"
        )
    return base_images.ensure(image.base, root)


def _prove_seal(
    machine: vm.VM, work: Path, root: Path, image_name: str
) -> tuple[spec.SpecResult, dict[str, str]]:
    """Wait for the sealed stand-in to power off, then run the hygiene spec on its disk."""
    tools.log("phase", "prove the seal on the stand-in's disk")
    deadline = time.monotonic() + POWEROFF_TIMEOUT_S
    while machine.running() and time.monotonic() < deadline:
        time.sleep(1)
    if machine.running():
        raise GoldsmithError(
            f"{image_name}: the stand-in VM did not power off within "
            f"{POWEROFF_TIMEOUT_S:.0f}s of the seal; see {machine.dir / 'serial.log'}"
        )
    junit = work / "junit-hygiene.xml"
    with disk.mounted_readonly(machine.dir / "disk.qcow2", work) as mnt:
        hygiene = spec.run(
            [spec.hygiene_dir(root)],
            hosts=str(mnt),
            connection="chroot",
            junit=junit,
            root=root,
            suite="hygiene",
            extra_env={"GOLDSMITH_SEALED": "1", "GOLDSMITH_HYGIENE": "sealed"},
        )
        packages = disk.packages(mnt)
    if not hygiene.ok:
        raise GoldsmithError(
            f"{image_name}: the sealed disk failed its hygiene spec, no AMI published:\n  "
            + "\n  ".join(hygiene.failures)
        )
    return hygiene, packages


def _reusable(aws: Aws, region: str, image_name: str, fp: str) -> dict[str, Any] | None:
    """An available AMI of this image built from the same inputs (found by its tags)."""
    flt = {f"tag:{amis.TAG_FINGERPRINT}": [fp], f"tag:{amis.TAG_IMAGE}": [image_name]}
    found = [
        i
        for i in amis.describe_images(aws, region, owners=["self"], filters=flt)
        # A copy made by publish carries the same tags; reuse the original.
        if i.get("State") == "available" and amis.TAG_SOURCE_AMI not in amis.tags_of(i)
    ]
    return max(found, key=lambda i: i.get("CreationDate", "")) if found else None


def _reused_manifest(
    p: Plan, ami: dict[str, Any], region: str, fp: str, base_id: str, source_ami: str
) -> dict[str, Any]:
    """The manifest of an AMI reused by fingerprint: its provenance is the original build's."""
    tags = amis.tags_of(ami)
    build_id = tags.get(amis.TAG_BUILD_ID, "unknown")
    run = f"reused-{build_id}"
    return {
        "image": p.image.name,
        "target": p.target,
        "build_id": build_id,
        "reused": True,
        "git": {"sha": tags.get(amis.TAG_GIT_SHA, "unknown")},
        "fingerprint": fp,
        "base": {
            "name": p.image.base.name,
            "kind": p.image.base.kind,
            "id": base_id,
            "source_ami": source_ami,
        },
        "region": region,
        "ami": ami["ImageId"],
        "roles": [r for r in tags.get(amis.TAG_ROLES, "").split(",") if r],
        # In the shape of Packer's manifest, so publishing reads every build the same way.
        "packer_manifest": {
            "builds": [
                {
                    "name": PACKER_BUILD_NAME,
                    "builder_type": amis.AMAZON_EBS,
                    "artifact_id": f"{region}:{ami['ImageId']}",
                    "packer_run_uuid": run,
                    "custom_data": {"reused": "true"},
                }
            ],
            "last_run_uuid": run,
        },
    }


def _record_and_publish(
    p: Plan, settings: AwsSettings, aws: Aws, manifest: dict[str, Any], path: Path
) -> Path:
    """Write the manifest; publish from it unless $GOLDSMITH_PUBLISH=0 (CI publishes later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, manifest)
    if os.environ.get("GOLDSMITH_PUBLISH", "1").strip() == "0":
        tools.log(
            "build",
            f"{p.image.name}: not published ($GOLDSMITH_PUBLISH=0); publish it with "
            f"`invoke aws.publish --image {p.image.name} --target {p.target}`",
        )
        return path
    try:
        publish_manifest(aws, settings, path, p.root)
    except GoldsmithError as err:
        raise GoldsmithError(
            f"{p.image.name}: {manifest['ami']} passed its specs but publishing failed: {err}\n"
            f"finish it with `invoke aws.publish --image {p.image.name} --target {p.target}`"
        ) from None
    return path


def publish_manifest(
    aws: Aws, settings: AwsSettings, path: Path, root: Path
) -> publish.PublishResult:
    """Publish the AMI of goldsmith's build manifest at `path`; record the result beside it.

    Writes aws-report.md/json next to the manifest and adds the AMI id of every region
    (`amis`) and the SSM parameter to the manifest. Idempotent: run it again to finish a
    publish that failed half-way.
    """
    provenance, built = publish.from_build_manifest(path)
    kms = {built.source_region: settings.kms_key_id} if settings.kms_key_id else {}
    result = publish.publish(
        aws,
        built,
        provenance,
        regions=list(settings.regions),
        share_with=list(settings.share_with),
        ssm_parameter=settings.ssm_parameter,
        encrypted=settings.encrypt_boot,
        kms_key_ids=kms,
        wait=amis.Wait.from_env(),
    )
    md, _ = report.write(result, path.parent)
    manifest = json.loads(path.read_text())
    manifest["amis"] = {region: r.ami_id for region, r in sorted(result.regions.items())}
    manifest["ssm_parameter"] = next(iter(result.regions.values())).ssm_parameter
    _write(path, manifest)
    where = md.relative_to(root) if md.is_relative_to(root) else md
    tools.log(
        "publish",
        f"{provenance.image}: "
        + ", ".join(f"{r} {a}" for r, a in manifest["amis"].items())
        + f"; report {where}",
    )
    return result


def _write(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
