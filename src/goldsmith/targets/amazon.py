"""The `aws` target (real EC2) and the `twin` target (moto plus a local stand-in VM).

Both bake through Packer's amazon-ebs source; what they add to the pipeline's order:

1. `source`: the source AMI is looked up (a read, no resource): a wrong filter fails
   before anything is created. On the twin, the stand-in VM's disk (the image's local
   base) is made ready too.
2. `last_proven`: an AMI of this image whose `goldsmith:fingerprint` tag matches is reused.
3. `start`: the build id, target and regions are in the work folder's owner record
   before anything is created in AWS, so whoever finds the folder of a killed build can
   reap it (`./run sweep`); then the per-build key pair, and on the twin the stand-in VM,
   logging in as the aws settings' `ssh_username`, as on EC2.
4. `during_packer`: the IMDSv2 guard, which stops Packer at once if IMDSv2 cannot be
   required; Packer's first provisioner is the gate, which waits until it is applied
   (Packer 1.6.6 has no `metadata_options`; see goldsmith.aws.imds).
5. `prove_seal`: on AWS, the seal's own last step checks the sealed machine and fails
   Packer (so no AMI) when anything is left; on the twin, the stand-in powers itself off
   and its disk is checked offline with the hygiene spec as well.
6. `cleanup`: the reaper removes the key pair, a leaked instance, Packer's temporary
   group (reached through the tagged instance), and a failed build's AMIs and snapshots
   (one CreateImage left pending and untagged too); the stand-in VM is stopped.
7. `after_commit`: publish (copies, sharing, SSM) from the recorded manifest, unless the
   `publish` setting is off (CI publishes in post_build with `./run aws.publish`).
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import base_disk, disk, outputs, tools, vm
from ..aws import amis, imds, keys, notify, packer_vars, publish, reaper, report, twin
from ..aws.clients import Aws
from ..catalogue import AwsSettings
from ..errors import GoldsmithError
from ..paths import venv_bin
from . import live
from .contract import Bake, Plan, SealProof, Source, manifest
from .local import gate_or_fail, prove_on_disk

PACKER_BUILD_NAME = "aws"  # the source's name, as Packer's manifest records it
# The stand-in VM powers itself off at the end of the seal; under TCG that takes seconds.
POWEROFF_TIMEOUT_S = 180.0
IMDS_GATE_RECORD = "imdsv2-gate.json"  # in the work folder: what the gate checked


def settings_of(plan: Plan) -> AwsSettings:
    if plan.image.aws is None:
        raise GoldsmithError(
            f"{plan.catalogue.path.name}: images.{plan.image.name} has target {plan.target!r} "
            "but no 'aws' section (source_ami, regions, ...)"
        )
    return plan.image.aws


def check_regions(plan: Plan) -> None:
    """Every region must be one botocore knows for EC2 (a typo fails here, not at publish)."""
    import botocore.session

    known = set(botocore.session.get_session().get_available_regions("ec2"))
    known |= set(botocore.session.get_session().get_available_regions("ec2", "aws-us-gov"))
    known |= set(botocore.session.get_session().get_available_regions("ec2", "aws-cn"))
    for region in settings_of(plan).regions:
        if region not in known:
            raise GoldsmithError(
                f"{plan.catalogue.path.name}: images.{plan.image.name}.aws.regions: "
                f"{region!r} is not an EC2 region botocore knows"
            )


class Amazon:
    packer_only = "goldsmith.amazon-ebs.aws"
    what = "no AMI registered"

    def __init__(self, name: str) -> None:
        self.name = name
        self.on_twin = name == "twin"

    # -- before anything is created ------------------------------------------------------

    def check(self, plan: Plan) -> None:
        settings_of(plan)
        check_regions(plan)
        if self.on_twin and plan.image.base.kind != "debootstrap":
            raise GoldsmithError(
                f"images.yml: images.{plan.image.name}.base is {plan.image.base.name!r} (kind "
                f"{plan.image.base.kind!r}); the twin target boots its stand-in machine from "
                "a base built here (kind debootstrap)"
            )

    def aws(self, root: Path) -> Aws:
        return twin.aws(root) if self.on_twin else Aws()

    @contextmanager
    def session(self, plan: Plan) -> Iterator[None]:
        if not self.on_twin:
            yield
            return
        started = twin.running(plan.root) is None
        twin.up(plan.root)
        try:
            for layer in plan.layers:
                twin.ensure_keys(plan.root, settings_of(layer).kms_key_ids)
            yield
        finally:
            if started:
                twin.down(plan.root)
                tools.log(
                    "twin",
                    "the twin was started for this build and is stopped again; "
                    "keep one up with `./run twin.up` to look at the AMIs",
                )

    def region(self, plan: Plan) -> str:
        return settings_of(plan).regions[0]

    def source(self, plan: Plan, prepare: bool = True) -> Source:
        settings, region = settings_of(plan), self.region(plan)
        stand_in = None
        if self.on_twin:
            disk_of = base_disk.ensure if prepare else base_disk.image_path
            stand_in = disk_of(plan.image.base, plan.root)
        found = amis.find_source_ami(
            self.aws(plan.root),
            region,
            list(settings.source_ami_owners),
            settings.source_ami_name,
        )
        base_id = found["ImageId"] + (f"+{stand_in.parent.name}" if stand_in else "")
        details = {"source_ami": found["ImageId"], "source_ami_name": found.get("Name", "")}
        return Source(base_id, details, disk=stand_in)

    def from_parent(self, plan: Plan, proven: dict[str, Any] | None) -> Source:
        """The parent's proven AMI in the build region, by its id (never a filter); on the
        twin, the stand-in boots from the disk the twin kept behind that AMI."""
        assert plan.parent is not None
        if proven is None:
            return Source("", {})
        ami, parent = proven["ami"], plan.parent.image.name
        stand_in = None
        if self.on_twin:
            stand_in = twin.disk_of(plan.root, ami)
            if not stand_in.is_file():
                raise GoldsmithError(
                    f"{plan.image.name}: the twin holds {parent}'s AMI {ami} but not the disk "
                    f"behind it (it was baked before the twin kept disks): rebake {parent} "
                    f"with `./run build --image {parent} --target twin --force`"
                )
        return Source("", {"source_ami": ami, "source_ami_name": parent}, disk=stand_in)

    def last_proven(self, plan: Plan, fingerprint: str | None) -> dict[str, Any] | None:
        """The newest available AMI of this image with `fingerprint` (found by its tags)."""
        region = self.region(plan)
        flt = {f"tag:{amis.TAG_IMAGE}": [plan.image.name]}
        if fingerprint:
            flt[f"tag:{amis.TAG_FINGERPRINT}"] = [fingerprint]
        found = [
            i
            for i in amis.describe_images(self.aws(plan.root), region, owners=["self"], filters=flt)
            # A copy made by publish carries the same tags; reuse the original.
            if i.get("State") == "available" and amis.TAG_SOURCE_AMI not in amis.tags_of(i)
        ]
        if not found:
            return None
        ami = max(found, key=lambda i: i.get("CreationDate", ""))
        tags = amis.tags_of(ami)
        return {
            "fingerprint": tags.get(amis.TAG_FINGERPRINT, ""),
            "build_id": tags.get(amis.TAG_BUILD_ID, "unknown"),
            "git": {"sha": tags.get(amis.TAG_GIT_SHA, "unknown")},
            "roles": [r for r in tags.get(amis.TAG_ROLES, "").split(",") if r],
            "region": region,
            "ami": ami["ImageId"],
            "artifact_label": f"{ami['ImageId']} in {region}",
        }

    def reuse(self, plan: Plan, proven: dict[str, Any], source: Source) -> Path:
        tools.log(
            "build",
            f"{plan.image.name}: inputs unchanged (fingerprint {proven['fingerprint'][:12]}); "
            f"reusing {proven['ami']} in {proven['region']} (--force to rebake)",
        )
        path = outputs.target_dir(plan.root, plan.image.name, self.name) / outputs.MANIFEST
        old = outputs.read_proven(plan.root, plan.image.name, self.name, quiet=True)
        if (
            old
            and old.fingerprint == proven["fingerprint"]
            and old.manifest.get("build_id") == proven["build_id"]
        ):
            # This very build is recorded here already (a parent just baked in the same
            # CI run, say): its manifest, with timings, specs and copies, stays as it is.
            self.after_commit(plan, path)
            return path
        run = f"reused-{proven['build_id']}"
        record = manifest(
            plan,
            build_id=proven["build_id"],
            git=proven["git"],
            fingerprint=proven["fingerprint"],
            inputs={},
            source=source,
            roles=proven["roles"],
            reused=True,
            region=proven["region"],
            ami=proven["ami"],
            # In the shape of Packer's manifest, so publishing reads every build the same way.
            packer_manifest={
                "builds": [
                    {
                        "name": PACKER_BUILD_NAME,
                        "builder_type": amis.AMAZON_EBS,
                        "artifact_id": f"{proven['region']}:{proven['ami']}",
                        "packer_run_uuid": run,
                        "custom_data": {"reused": "true"},
                    }
                ],
                "last_run_uuid": run,
            },
        )
        # A proven build with these inputs recorded here before keeps its input record.
        if old and old.fingerprint == proven["fingerprint"]:
            record["inputs"] = old.manifest.get("inputs", {})
        outputs.write_json(path, record)
        self.after_commit(plan, path)
        return path

    def build_user(self, plan: Plan) -> str:
        # The twin's stand-in logs in as the AMI's user, so the twin proves what AWS runs.
        return settings_of(plan).ssh_username

    # -- the build ------------------------------------------------------------------------

    def start(self, bake: Bake) -> None:
        plan, region = bake.plan, self.region(bake.plan)
        settings = settings_of(plan)
        bake.state["provenance"] = amis.Provenance(
            plan.image.name,
            bake.git["sha"],
            bake.fingerprint,
            bake.build_id,
            tuple(plan.role_map.roles),
        )
        bake.work.record(regions=list(dict.fromkeys([region, *settings.regions])))
        tools.log("build", f"{plan.image.name}: build {bake.build_id} in {region} ({self.name})")
        bake.state["keypair"] = keys.import_build_key(
            self.aws(plan.root),
            region,
            bake.build_id,
            bake.public_key,
            tags=bake.state["provenance"].tags(),
        )
        if self.on_twin:
            name = f"twin-{bake.build_id}"
            bake.work.record(vms=[name])
            t = time.monotonic()
            # The AMI's user exists before the build on EC2 (cloud-init made it), so the
            # seal keeps it: on the stand-in too, or the twin would not prove what ships.
            boot = bake.source.disk
            if plan.parent is not None:
                # The parent's sealed disk: its build login goes back into a copy.
                boot = disk.with_build_access(boot, bake.work.path / "parent.raw")
            bake.state["machine"] = vm.up(
                name,
                boot,
                root=plan.root,
                key=bake.key,
                user=bake.build_user,
                image_user=True,
            )
            bake.timings["stand_in_boot"] = round(time.monotonic() - t, 1)

    def packer_vars(self, bake: Bake) -> dict[str, Any]:
        plan = bake.plan
        machine = bake.state.get("machine")
        values = packer_vars.packer_vars(
            settings_of(plan),
            bake.state["provenance"],
            region=self.region(plan),
            endpoint=twin.endpoint(plan.root) if self.on_twin else "",
            ssh_host="127.0.0.1" if machine else "",
            ssh_port=machine.ssh_port if machine else 22,
            keypair_name=bake.state["keypair"],
            private_key_file=str(bake.key),
            ssh_source_cidrs=list(plan.settings.aws_ssh_cidrs) or None,
            source_ami=bake.source.details.get("source_ami", "") if plan.parent else "",
        )
        values["aws_imds_gate_command"] = (
            shlex.join(
                [
                    str(venv_bin("python")),
                    "-m",
                    "goldsmith.aws.imds",
                    "gate",
                    "--region",
                    self.region(plan),
                    "--record",
                    str(bake.work.path / IMDS_GATE_RECORD),
                    "--instance-id",
                ]
            )
            + ' "$GOLDSMITH_INSTANCE_ID"'
        )
        values["aws_inventory_script"] = str(live.script())
        values["aws_inventory_path"] = str(bake.work.path / live.INVENTORY_FILE)
        values["aws_inventory_gate_command"] = live.gate_command(
            plan.catalogue.path,
            plan.image.name,
            bake.work.path,
            plan.cve_tracker if plan.image.vulnerabilities is not None else None,
        )
        if self.on_twin:
            # The seal powers the stand-in off, as EC2's stop would, so its disk is clean
            # to inspect (once the build has fetched the inventory the seal wrote).
            values["aws_seal_environment"] = ["GOLDSMITH_SEAL_POWEROFF=1"]
        return values

    def packer_env(self, bake: Bake) -> dict[str, str] | None:
        return twin.env(bake.plan.root, self.region(bake.plan)) if self.on_twin else None

    @contextmanager
    def during_packer(self, bake: Bake) -> Iterator[None]:
        packer_runs: list[subprocess.Popen] = []
        bake.state["on_packer_start"] = packer_runs.append

        def stop_packer() -> None:
            # Packer's own interrupt: it terminates the builder and cleans up, then fails.
            for proc in packer_runs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)

        guard = imds.Imdsv2Guard(
            self.aws(bake.plan.root),
            self.region(bake.plan),
            bake.build_id,
            key_name=bake.state["keypair"],
            stop_build=stop_packer,
        )
        try:
            with guard:
                yield
        except GoldsmithError:
            # Packer failed because the guard stopped it (however Packer's own output
            # reads, the gate's denial included): the guard's reason is the build's.
            if guard.error is not None:
                raise guard.failure() from None
            # Or the CVE gate on what the seal read there failed it (the gate's own words).
            reason = live.failure(bake.work.path)
            if reason is not None:
                raise GoldsmithError(reason) from None
            raise
        gated = imds.gated(bake.work.path / IMDS_GATE_RECORD)
        guard.check(gated)
        bake.state["imdsv2"] = guard.as_dict(gated)

    def collect(self, bake: Bake) -> dict[str, Any]:
        packer_manifest = json.loads((bake.work.path / "packer-manifest.json").read_text())
        # A manifest without this run's AMI is a failed build.
        built = amis.parse_manifest(packer_manifest, "Packer's manifest", PACKER_BUILD_NAME)
        bake.state["ami"] = built.source_ami
        # (The pipeline records Packer's manifest itself, with machine paths reduced.)
        return {
            "region": self.region(bake.plan),
            "ami": built.source_ami,
            "imdsv2": bake.state.get("imdsv2", {}),
        }

    def prove_seal(self, bake: Bake) -> SealProof:
        machine = bake.state.get("machine")
        # What the seal read on the builder; Packer's gate step has passed on it.
        found = live.read(bake.work.path / live.INVENTORY_FILE)
        if machine is None:
            # Real EC2: no disk at hand. The seal's last root step checked the sealed
            # machine and failed Packer (so no AMI) if anything was left; then it read the
            # inventory, and the CVE gate passed on it before the AMI was made.
            plan = bake.plan
            gate = gate_or_fail(
                plan.image.name, plan.image.vulnerabilities, plan.cve_tracker, found, self.what
            )
            packages = {p["name"]: p["version"] for p in found["packages"].values()}
            how = "the seal's self-check on the instance; inventory read there after it"
            read = "on the builder by the seal, after its self-check"
            return SealProof(None, packages, how, found, gate, inventory_read=read)
        deadline = time.monotonic() + POWEROFF_TIMEOUT_S
        while machine.running() and time.monotonic() < deadline:
            time.sleep(1)
        if machine.running():
            raise GoldsmithError(
                f"{bake.plan.image.name}: the stand-in VM did not power off within "
                f"{POWEROFF_TIMEOUT_S:.0f}s of the seal; see {machine.dir / 'serial.log'}"
            )
        proof = prove_on_disk(
            bake, machine.dir / "disk.qcow2", "no AMI published", build_user_kept=True
        )
        proof.how = "the seal's self-check, and the hygiene spec on the stand-in's disk"
        # The twin proves the road a real build takes: the inventory the seal read on the
        # builder is the one its sealed disk gives.
        differ = live.differences(found, proof.inventory or {})
        if differ:
            raise GoldsmithError(
                f"{bake.plan.image.name}: the inventory the seal read on the builder differs "
                f"from its sealed disk's in {', '.join(differ)} (see "
                f"{bake.work.path / live.INVENTORY_FILE}), {self.what}"
            )
        proof.inventory_read += "; the seal's read on the builder matches it"
        if proof.inventory is not None and "listening" in found:
            # What a disk cannot show: the sockets the sealed machine was listening on.
            proof.inventory["listening"] = found["listening"]
        if plan_has_children(bake.plan):
            # What the AMI holds, for the images layered on it (standalone: no backing file).
            kept = twin.disk_of(bake.plan.root, bake.state["ami"])
            kept.parent.mkdir(parents=True, exist_ok=True)
            tools.run(
                ["qemu-img", "convert", "-O", "qcow2", machine.dir / "disk.qcow2", kept],
                prefix="twin",
            )
            bake.state["kept_disk"] = kept
        return proof

    def cleanup(self, bake: Bake, failed: bool) -> list[str]:
        problems = []
        try:
            # No instance, key pair or temporary group stays; a failed build's AMIs go too.
            reaper.reap(
                self.aws(bake.plan.root), [self.region(bake.plan)], bake.build_id, images=failed
            )
        except Exception as err:  # noqa: BLE001 - reported, and the rest still runs
            problems.append(
                f"AWS resources of {bake.build_id}: {err} (retry: ./run aws.reap --image "
                f"{bake.plan.image.name} --target {self.name} --build-id {bake.build_id} "
                f"{'--failed' if failed else ''})".strip()
            )
        if failed:  # subscribers hear of it; one that cannot be told is only a warning
            topic, image = settings_of(bake.plan).notify, bake.plan.image.name
            where = f"{self.name} build in {self.region(bake.plan)}"
            notify.build_failed(
                lambda: self.aws(bake.plan.root), topic, image, bake.build_id, where
            )
        for name in bake.work.owner.get("vms", []):
            vm.down(name, bake.plan.root)
        if failed and bake.state.get("kept_disk"):
            bake.state["kept_disk"].unlink(missing_ok=True)
        return problems

    def after_commit(self, plan: Plan, manifest_path: Path) -> None:
        data = json.loads(manifest_path.read_text())
        if not plan.settings.publish:
            tools.log(
                "build",
                f"{plan.image.name}: not published (setting goldsmith.publish is off); publish "
                f"it with `./run aws.publish --image {plan.image.name} --target {self.name}`",
            )
            return
        try:
            publish_manifest(
                self.aws(plan.root),
                settings_of(plan),
                manifest_path,
                plan.root,
                wait=amis.Wait(timeout_s=plan.settings.ami_wait_seconds),
            )
        except GoldsmithError as err:
            raise GoldsmithError(
                f"{plan.image.name}: {data['ami']} passed its specs but publishing failed: "
                f"{err}\nfinish it with `./run aws.publish --image {plan.image.name} "
                f"--target {self.name}`"
            ) from None

    def sweep(self, root: Path, owner: dict[str, Any]) -> list[str]:
        build_id, regions = owner.get("build_id"), owner.get("regions") or []
        if not build_id or not regions:
            return []
        if self.on_twin and twin.running(root) is None:
            return []  # the twin is gone, and everything it held went with it
        try:
            done = reaper.reap(
                self.aws(root), regions, build_id, images=not owner.get("proven", False)
            )
        except GoldsmithError as err:
            return [f"AWS resources of {build_id}: {err}"]
        return [] if done.empty() else [f"AWS: {done.summary()}"]


def plan_has_children(plan: Plan) -> bool:
    """Whether an image of the catalogue is layered on this one for this target."""
    return any(plan.target in c.targets for c in plan.catalogue.children(plan.image.name))


def publish_manifest(
    aws: Aws,
    settings: AwsSettings,
    path: Path,
    root: Path,
    wait: amis.Wait | None = None,
) -> publish.PublishResult:
    """Publish the AMI of goldsmith's build manifest at `path`; record the result beside it.

    Writes aws-report.md/json next to the manifest and adds the AMI id of every region
    (`amis`) and the SSM parameter to the manifest. Idempotent: run it again to finish a
    publish that failed half-way.
    """
    provenance, built = publish.from_build_manifest(path)
    result = publish.publish(
        aws,
        built,
        provenance,
        regions=list(settings.regions),
        share_with=list(settings.share_with),
        ssm_parameter=settings.ssm_parameter,
        encrypted=settings.encrypt_boot,
        kms_key_ids=settings.kms_key_ids,
        wait=wait or amis.Wait(),
    )
    notify.send(aws, settings.notify, notify.published(result))
    md, _ = report.write(result, path.parent)
    data = json.loads(path.read_text())
    data["amis"] = {region: r.ami_id for region, r in sorted(result.regions.items())}
    data["ssm_parameter"] = next(iter(result.regions.values())).ssm_parameter
    outputs.write_json(path, data)
    where = md.relative_to(root) if md.is_relative_to(root) else md
    tools.log(
        "publish",
        f"{provenance.image}: "
        + ", ".join(f"{r} {a}" for r, a in data["amis"].items())
        + f"; report {where}",
    )
    return result
