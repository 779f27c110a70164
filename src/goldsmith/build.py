"""One build, end to end: validate, pre-flight, fingerprint, bake, prove, seal, record.

Nothing is started (no VM, no cloud resource) before the catalogue and the pre-flight
checks pass. A failing spec fails the build: nothing is written to the output path.
Ctrl-C, SIGTERM or any failure leaves no VM and no temporary folder behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import base as base_images
from . import disk, fingerprint, packer, setup, spec, tools, vm
from .ansible_env import ansible_env
from .catalogue import Catalogue, Image, load
from .errors import GoldsmithError, ToolError
from .paths import build_dir, venv_bin
from .roles import RoleMap, resolve

TARGETS = ("local", "aws", "twin")


@dataclass
class Plan:
    """Everything decided before anything starts."""

    root: Path
    catalogue: Catalogue
    image: Image
    target: str
    role_map: RoleMap

    @property
    def out_dir(self) -> Path:
        return build_dir(self.root) / self.image.name


def plan(root: Path, image_name: str, target: str) -> Plan:
    """Load the catalogue and check the request; raises before anything is started."""
    catalogue = load(root / "images.yml")
    image = catalogue.image(image_name)
    if target not in TARGETS:
        raise GoldsmithError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    if target not in image.targets:
        raise GoldsmithError(
            f"{catalogue.path.name}: images.{image.name}.targets does not list {target!r} "
            f"(it lists {', '.join(image.targets)})"
        )
    return Plan(root, catalogue, image, target, resolve(image.playbook, root))


def preflight(p: Plan) -> None:
    """Checks that need no machine: the playbook's syntax (roles, argument specs load)."""
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


def git_state(root: Path) -> tuple[str, bool]:
    """(sha, dirty) of the project checkout; ("unknown", True) outside git."""
    try:
        sha = tools.capture(["git", "-C", str(root), "rev-parse", "HEAD"]).strip()
        dirty = bool(tools.capture(["git", "-C", str(root), "status", "--porcelain"]).strip())
        return sha, dirty
    except (GoldsmithError, OSError):
        return "unknown", True


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so every cleanup still runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def kill_strays(marker: str) -> None:
    """Kill any qemu whose command line names `marker` (our temp folder)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and marker in cmdline:
            tools.log("cleanup", f"stopping leftover qemu (pid {proc.name})")
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def build(root: Path, image_name: str, target: str = "local", force: bool = False) -> Path:
    """Bake `image_name` for `target`; return the path of its manifest."""
    started = time.monotonic()
    p = plan(root, image_name, target)
    preflight(p)
    setup.ensure(root)
    with terminate_as_interrupt():
        if target == "local":
            return bake_local(p, force=force, started=started)
        from .aws.build import bake_aws  # the AWS path needs boto3 and the twin

        return bake_aws(p, force=force, started=started)


def shared_vars(
    p: Plan,
    sha: str,
    build_id: str,
    fp: str,
    key: Path,
    live_junit: Path,
    work: Path,
    build_user: str = vm.BUILD_USER,
) -> dict[str, Any]:
    """The build's variables every source shares (packer/variables.pkr.hcl)."""
    image, root = p.image, p.root
    spec_cmd = shlex.join(
        [
            sys.executable,
            "-m",
            "goldsmith.spec",
            "live",
            "--playbook",
            str(image.playbook),
            "--junit",
            str(live_junit),
            "--key",
            str(key),
            "--root",
            str(root),
        ]
    )
    return {
        "image_name": image.name,
        "git_sha": sha,
        "build_id": build_id,
        "fingerprint": fp,
        "roles": ",".join(p.role_map.roles),
        "playbook": str(image.playbook),
        "ansible_playbook": venv_bin("ansible-playbook"),
        "ansible_env_vars": [f"{k}={v}" for k, v in ansible_env(root).items()],
        "spec_command": spec_cmd,
        "seal_script": str(base_images.DATA / "seal.sh"),
        "build_user": build_user,
        "ssh_private_key_file": str(key),
        "manifest_path": str(work / "packer-manifest.json"),
    }


def run_packer(
    image_name: str,
    template: Path,
    var_file: Path,
    *,
    only: str,
    root: Path,
    live_junit: Path,
    nothing: str,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """`packer build` of one source; return its phase timings.

    When Packer fails because specs failed, the error names each failing spec and says
    what was not made (`nothing`); any other Packer failure is raised as it is.
    """
    phases = packer.Timings()
    try:
        packer.build(template, var_file, only=only, cwd=root, env=env, on_line=phases.line)
    except ToolError:
        live = spec.parse_junit(live_junit)
        if live.failures:
            raise GoldsmithError(
                f"{image_name}: {live.failed} spec(s) failed, {nothing}:\n  "
                + "\n  ".join(live.failures)
            ) from None
        raise
    return phases.finish()


def bake_local(p: Plan, *, force: bool, started: float) -> Path:
    image, root = p.image, p.root
    timings: dict[str, float] = {}
    t = time.monotonic()
    if image.base.kind == "debootstrap":
        base_path = base_images.ensure(image.base, root)
        base_url, base_checksum, base_id = str(base_path), "none", base_path.parent.name
    else:
        base_url, base_checksum, base_id = image.base.url, image.base.checksum, image.base.checksum
    timings["base"] = round(time.monotonic() - t, 1)

    fp = fingerprint.compute(image, p.role_map, root, base_id, p.target)
    out_dir = p.out_dir
    qcow2, manifest_path, junit = (
        out_dir / f"{image.name}.qcow2",
        out_dir / "manifest.json",
        out_dir / "junit.xml",
    )
    if not force and qcow2.is_file() and manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old.get("fingerprint") == fp:
            tools.log(
                "build",
                f"{image.name}: inputs unchanged (fingerprint {fp[:12]}); "
                f"reusing {qcow2.relative_to(root)} (--force to rebake)",
            )
            return manifest_path
    # The output path shows the last build: a failed build must not leave an old image there.
    for f in (qcow2, manifest_path, junit):
        f.unlink(missing_ok=True)

    sha, dirty = git_state(root)
    build_id = f"{image.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    build_dir(root).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".work-{image.name}-", dir=build_dir(root)))
    try:
        key = work / "build_key"
        public = vm.make_key(key)
        live_junit = work / "junit-spec.xml"
        values = {
            **shared_vars(p, sha, build_id, fp, key, live_junit, work),
            "base_image": base_url,
            "base_checksum": base_checksum,
            "build_credential": vm.smbios_credential(public),
            **cloud_seed(image, work, public),
            "accelerator": vm.accelerator(
                root, Path(base_url) if base_checksum == "none" else None
            ),
            "output_directory": str(work / "output"),
            "ssh_host_port": vm.free_port(),
            "disk_size": image.base.disk_size or "4G",
        }
        template = packer.template_dir(root, work / "packer")
        var_file = packer.write_vars(values, work / "build.pkrvars.hcl")
        packer.init(template)
        packer.validate(template, var_file, only="goldsmith.qemu.local")
        tools.log("phase", f"bake {image.name} ({values['accelerator']})")
        timings.update(
            run_packer(
                image.name,
                template,
                var_file,
                only="goldsmith.qemu.local",
                root=root,
                live_junit=live_junit,
                nothing="no image written",
            )
        )
        baked = work / "output" / f"{image.name}.qcow2"
        if not baked.is_file():
            raise GoldsmithError(f"{image.name}: Packer finished without writing {baked.name}")

        t = time.monotonic()
        tools.log("phase", "prove the seal on the output disk")
        hygiene_junit = work / "junit-hygiene.xml"
        with disk.mounted_readonly(baked, work) as mnt:
            hygiene = spec.run(
                [spec.hygiene_dir(root)],
                hosts=str(mnt),
                connection="chroot",
                junit=hygiene_junit,
                root=root,
                suite="hygiene",
                extra_env={"GOLDSMITH_SEALED": "1"},
            )
            packages = disk.packages(mnt)
        timings["hygiene"] = round(time.monotonic() - t, 1)
        if not hygiene.ok:
            raise GoldsmithError(
                f"{image.name}: the sealed disk failed its hygiene spec, no image written:\n  "
                + "\n  ".join(hygiene.failures)
            )
        live = spec.parse_junit(live_junit)
        out_dir.mkdir(parents=True, exist_ok=True)
        spec.merge_junit([live_junit, hygiene_junit], junit)
        timings["total"] = round(time.monotonic() - started, 1)
        manifest = {
            "image": image.name,
            "target": "local",
            "build_id": build_id,
            "git": {"sha": sha, "dirty": dirty},
            "fingerprint": fp,
            "base": {"name": image.base.name, "kind": image.base.kind, "id": base_id},
            "artifact": f"{image.name}.qcow2",
            "roles": list(p.role_map.roles),
            "uncovered_roles": list(p.role_map.uncovered),
            "packages": packages,
            "timings": timings,
            "specs": {"live": live.as_dict(), "hygiene": hygiene.as_dict()},
            "tools": fingerprint.tool_versions(),
            "packer_manifest": _packer_manifest(work / "packer-manifest.json"),
        }
        shutil.move(str(baked), qcow2)
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tools.log(
            "build",
            f"{image.name}: {live.passed} specs and {hygiene.passed} hygiene "
            f"checks passed; wrote {qcow2.relative_to(root)} "
            f"({qcow2.stat().st_size / 2**20:.0f} MiB) in {timings['total']:.0f}s",
        )
        return manifest_path
    finally:
        kill_strays(str(work))
        shutil.rmtree(work, ignore_errors=True)


def cloud_seed(image: Image, work: Path, public_key: str) -> dict[str, object]:
    """Packer variables that hand the build key to a cloud image's cloud-init (else none)."""
    if image.base.kind != "cloud-image":
        return {}
    from . import cloudinit

    port = vm.free_port()
    seed = cloudinit.write_seed(work / "seed", public_key, image.name)
    return {
        "http_directory": str(seed),
        "http_port": port,
        "cloud_init_seed": cloudinit.smbios_seed(port),
    }


def _packer_manifest(path: Path) -> dict:
    """Packer's own manifest, with the build's temporary paths reduced to file names."""
    data = json.loads(path.read_text())
    for b in data.get("builds", []):
        for f in b.get("files") or []:
            f["name"] = Path(f["name"]).name
    return data
