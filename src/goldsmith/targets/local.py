"""The local target: a QEMU VM on this machine, a bootable qcow2 in build/<image>/local/."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

from .. import base_disk, cvegate, disk, inventory, outputs, spec, sshready, tools, vm
from ..catalogue import Vulnerabilities
from ..errors import GoldsmithError
from .contract import Bake, Plan, SealProof, Source, nothing


def gate_or_fail(
    image: str,
    vulnerabilities: Vulnerabilities | None,
    tracker: Path | None,
    found: dict[str, Any],
    nothing_made: str,
    today: dt.date | None = None,
) -> cvegate.GateResult | None:
    """The CVE gate on the inventory `found`; None when the image has no policy.

    Raises, naming each package and CVE, when the gate fails (`nothing_made` says what
    the failed build did not make), so it takes the road of a failed hygiene spec.
    """
    if vulnerabilities is None:
        return None
    if tracker is None:
        raise GoldsmithError(
            f"{image}: {vulnerabilities.where} names no tracker: set its `tracker:` or the "
            "cve_tracker setting (INVOKE_GOLDSMITH_CVE_TRACKER=path/to/tracker.json)"
        )
    data = cvegate.load_tracker(tracker)
    result = cvegate.check(found, data, vulnerabilities.policy, today or _utc_today())
    if not result.ok:
        raise GoldsmithError(
            f"{image}: the CVE gate failed ({len(result.failures)} vulnerabilit"
            f"{'y' if len(result.failures) == 1 else 'ies'} at or above {result.fail_on} "
            f"in {result.release}), {nothing_made}:\n  "
            + "\n  ".join(f.line() for f in result.failures)
            + f"\nupgrade the package, or accept the risk in images.yml "
            f"({vulnerabilities.where}.allow: id, package, reason, expires)"
        )
    return result


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def prove_on_disk(
    bake: Bake, disk_image: Path, nothing_made: str, build_user_kept: bool = False
) -> SealProof:
    """Mount `disk_image` read-only, run the hygiene spec on it (testinfra chroot) and
    take its inventory; then the image's CVE gate, if it has one, on that inventory.

    `build_user_kept`: the build user is the image's own (an AMI's), which the seal
    keeps without its login; else it was made for the build and must be gone.
    """
    plan = bake.plan
    tools.log("phase", "prove the seal on the sealed disk")
    with disk.mounted_readonly(disk_image, bake.work.path) as mnt:
        hygiene = spec.run(
            [spec.hygiene_dir(plan.root)],
            hosts=str(mnt),
            connection="chroot",
            junit=bake.hygiene_junit,
            root=plan.root,
            suite="hygiene",
            extra_env={
                "GOLDSMITH_HYGIENE": "sealed",
                "GOLDSMITH_BUILD_USER": bake.build_user,
                "GOLDSMITH_BUILD_USER_KEPT": "1" if build_user_kept else "0",
            },
        )
        packages = disk.packages(mnt)
        found = inventory.collect(mnt)
    if not hygiene.ok:
        raise GoldsmithError(
            f"{plan.image.name}: the sealed disk failed its hygiene spec, {nothing_made}:\n  "
            + "\n  ".join(hygiene.failures)
        )
    if plan.image.vulnerabilities is not None:
        tracker = plan.cve_tracker
        shown = (
            tracker.relative_to(plan.root)
            if tracker and tracker.is_relative_to(plan.root)
            else tracker
        )
        tools.log("phase", f"CVE gate: {len(found['packages'])} packages against {shown}")
    gate = gate_or_fail(
        plan.image.name, plan.image.vulnerabilities, plan.cve_tracker, found, nothing_made
    )
    how = "hygiene spec on the sealed disk (read-only mount)"
    return SealProof(hygiene, packages, how, inventory=found, gate=gate)


def read_listening(bake: Bake, nothing_made: str) -> list[dict[str, Any]]:
    """The listening sockets the spec step read off the live machine (a list, as
    inventory.live_listeners gives it); GoldsmithError if they were not read."""
    path = bake.live_listening
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GoldsmithError(
            f"{bake.plan.image.name}: the live machine's listening sockets were not read "
            f"({path.name}: {err}), {nothing_made}"
        ) from None
    if not isinstance(found, list):
        raise GoldsmithError(
            f"{bake.plan.image.name}: {path.name} holds no list of sockets, {nothing_made}"
        )
    return found


class Local:
    name = "local"
    packer_only = "goldsmith.qemu.local"
    what = "no image written"

    def check(self, plan: Plan) -> None:
        pass

    def session(self, plan: Plan):
        return nothing()

    def source(self, plan: Plan, prepare: bool = True) -> Source:
        base = plan.image.base
        if base.kind == "debootstrap":
            path = (base_disk.ensure if prepare else base_disk.image_path)(base, plan.root)
            return Source(path.parent.name, {"checksum": "none"}, disk=path)
        return Source(base.checksum, {"url": base.url, "checksum": base.checksum})

    def from_parent(self, plan: Plan, proven: dict[str, Any] | None) -> Source:
        assert plan.parent is not None
        if proven is None:
            return Source("", {})
        d = outputs.target_dir(plan.root, plan.parent.image.name, self.name)
        return Source("", {"parent_artifact": proven["artifact"]}, disk=d / proven["artifact"])

    def last_proven(self, plan: Plan, fingerprint: str | None) -> dict[str, Any] | None:
        proven = outputs.read_proven(plan.root, plan.image.name, self.name)
        if proven is None or (fingerprint and proven.fingerprint != fingerprint):
            return None
        return proven.manifest

    def reuse(self, plan: Plan, proven: dict[str, Any], source: Source) -> Path:
        d = outputs.target_dir(plan.root, plan.image.name, self.name)
        tools.log(
            "build",
            f"{plan.image.name}: inputs unchanged (fingerprint {proven['fingerprint'][:12]}); "
            f"reusing {(d / proven['artifact']).relative_to(plan.root)} (--force to rebake)",
        )
        return d / outputs.MANIFEST

    def build_user(self, plan: Plan) -> str:
        return vm.BUILD_USER

    def start(self, bake: Bake) -> None:
        if bake.plan.parent is not None and bake.source.disk is not None:
            # The parent's sealed disk has no build login: a copy gets the credential unit
            # back (the seal takes it out again); the parent's own file is not touched.
            tools.log("build", f"{bake.plan.image.name}: from {bake.source.disk.name}, layered")
            bake.state["boot_disk"] = disk.with_build_access(
                bake.source.disk, bake.work.path / "parent.raw"
            )

    def packer_vars(self, bake: Bake) -> dict[str, Any]:
        plan, src = bake.plan, bake.source
        local_disk = bake.state.get("boot_disk") or src.disk
        values: dict[str, Any] = {
            "base_image": str(local_disk) if local_disk else src.details["url"],
            "base_checksum": src.details.get("checksum", "none"),
            "build_credential": vm.smbios_credential(bake.public_key, bake.build_user),
            "accelerator": vm.accelerator(
                plan.root,
                local_disk,
                forced=plan.settings.accelerator,
            ),
            "output_directory": str(bake.work.path / "output"),
            "ssh_host_port": vm.free_port(),
            "disk_size": plan.image.base.disk_size or "4G",
        }
        if plan.image.base.kind == "cloud-image":
            from .. import cloudinit

            port = vm.free_port()
            seed = cloudinit.write_seed(
                bake.work.path / "seed", bake.public_key, plan.image.name, bake.build_user
            )
            values |= {
                "http_directory": str(seed),
                "http_port": port,
                "cloud_init_seed": cloudinit.smbios_seed(port),
            }
        bake.state["accelerator"] = values["accelerator"]
        # Packer's own connection waits for the machine's SSH server, not for its next
        # try five seconds on (goldsmith.sshready).
        proxy = sshready.ReadyProxy(values["ssh_host_port"])
        bake.state["ssh_ready_proxy"] = proxy
        values["ssh_proxy_host"], values["ssh_proxy_port"] = "127.0.0.1", proxy.port
        return values

    def packer_env(self, bake: Bake) -> dict[str, str] | None:
        return None

    def during_packer(self, bake: Bake):
        proxy = bake.state.get("ssh_ready_proxy")
        return proxy.serving() if proxy else nothing()

    def collect(self, bake: Bake) -> dict[str, Any]:
        name = f"{bake.plan.image.name}.qcow2"
        baked = bake.work.path / "output" / name
        if not baked.is_file():
            raise GoldsmithError(f"{bake.plan.image.name}: Packer finished without writing {name}")
        bake.state["disk"] = baked
        return {"artifact": name, "accelerator": bake.state.get("accelerator", "")}

    def prove_seal(self, bake: Bake) -> SealProof:
        proof = prove_on_disk(bake, bake.state["disk"], self.what)
        if proof.inventory is not None:
            # What a disk cannot show: the sockets the live machine listened on, read
            # before any spec restarted a service (goldsmith.spec.main).
            proof.inventory["listening"] = read_listening(bake, self.what)
            proof.inventory_read += (
                "; listening sockets read on the live machine before any spec restarted a service"
            )
        # Only a proven disk goes into the staged output.
        t = time.monotonic()
        shutil.move(str(bake.state["disk"]), bake.staged / bake.state["disk"].name)
        bake.timings["stage"] = round(time.monotonic() - t, 1)
        return proof

    def cleanup(self, bake: Bake, failed: bool) -> list[str]:
        proxy = bake.state.get("ssh_ready_proxy")
        if proxy:
            proxy.close()
        return []

    def after_commit(self, plan: Plan, manifest_path: Path) -> None:
        m = outputs.read_proven(plan.root, plan.image.name, self.name)
        if m and m.artifact:
            tools.log(
                "build",
                f"{plan.image.name}: wrote {m.artifact.relative_to(plan.root)} "
                f"({m.artifact.stat().st_size / 2**20:.0f} MiB)",
            )

    def sweep(self, root: Path, owner: dict[str, Any]) -> list[str]:
        return []
