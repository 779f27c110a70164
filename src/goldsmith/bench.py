"""The project's benchmark: what a bake costs here, against what the same work costs raw.

Figures on these machines are noisy, so one run measures everything it compares, side by
side, and records ratios, which hold better than absolute seconds:

- the image as the project bakes it (`--force`; a layered image from its parent's proven
  build), then the same build asked for again: the no-op decision (reuse);
- a layered image baked from scratch as well: its whole stack (the parents' playbooks,
  then its own) on the root base disk, in a throwaway copy of the project, so nothing of
  the project's builds is touched: derived vs scratch;
- the floor: the root base disk booted as a build boots it, one `apt-get update` and one
  `apt-get install` of exactly the packages the scratch bake added, locale-gen, power off,
  the disk written as a qcow2. No Ansible, no specs, no seal: what any bake of this image
  must at least cost here. The bake/floor ratio compares the from-scratch bake with it.

Each run appends one JSON object to bench/results.jsonl, with what the machine was.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from . import base_disk, disk, fingerprint, pipeline, tools, vm
from .catalogue import Catalogue, Image, load
from .errors import GoldsmithError
from .paths import cache_dir
from .settings import Settings

# Copied into the throwaway project of a from-scratch bake (what a build reads).
PROJECT_FILES = ("images.yml", "roles", "playbooks", "packer", "tests/spec", "ansible.cfg")
PROJECT_LINKS = ("requirements.yml", "requirements.lock", ".galaxy", "vendor")


def run(root: Path, image: str, settings: Settings | None = None) -> dict[str, Any]:
    """Bake `image` (forced), ask again (reuse), bake it from scratch when it is layered,
    do the floor; append the figures to bench/results.jsonl and return them."""
    settings = settings or Settings()
    catalogue = load(root / "images.yml")
    img = catalogue.image(image)
    t = time.monotonic()
    base_path = base_disk.ensure(img.base, root)
    base_cached_s = round(time.monotonic() - t, 2)

    manifest_path = pipeline.build(root, image, target="local", force=True, settings=settings)
    manifest = json.loads(manifest_path.read_text())
    t = time.monotonic()
    pipeline.build(root, image, target="local", force=False, settings=settings)
    reuse_s = round(time.monotonic() - t, 2)

    scratch = manifest
    if img.parent is not None:
        scratch = from_scratch(root, catalogue, img, settings)
    added = added_packages(root, base_path, scratch["packages"])
    floor_s = floor(root, base_path, added)

    timings = manifest["timings"]
    total = timings["total"]
    scratch_total = scratch["timings"]["total"]
    qcow2 = manifest_path.parent / manifest["artifact"]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "image": image,
        "parent": img.parent,
        "git_sha": manifest["git"]["sha"],
        "machine": {
            "cores": os.cpu_count(),
            "accelerator": manifest.get("accelerator")
            or vm.accelerator(root, base_path, forced=settings.accelerator),
            **fingerprint.tool_versions(),
            "ansible_strategy": settings.ansible_strategy,
        },
        "bake_seconds": total,
        "phases_seconds": timings,
        "phase_share_of_bake": shares(timings),
        # Where provisioning went, per role, in the layered bake and the scratch one.
        "provision_seconds_by_role": manifest.get("provision", {}).get("by_role"),
        "scratch_provision_seconds_by_role": scratch.get("provision", {}).get("by_role"),
        "spec_share_of_bake": round(timings.get("spec", 0) / total, 3) if total else None,
        "reuse_seconds": reuse_s,
        "reuse_vs_bake_ratio": round(reuse_s / total, 4) if total else None,
        "scratch_bake_seconds": scratch_total,
        "scratch_phases_seconds": scratch["timings"],
        "derived_vs_scratch_ratio": round(total / scratch_total, 3) if img.parent else None,
        "floor_seconds": floor_s,
        "floor_packages": len(added),
        "bake_vs_floor_ratio": round(scratch_total / floor_s["total"], 3),
        "base_cached_seconds": base_cached_s,
        "image_mib": round(qcow2.stat().st_size / 2**20, 1),
        "base_mib": round(base_path.stat().st_size / 2**20, 1),
        "packages": len(manifest["packages"]),
        "specs_passed": manifest["specs"]["live"]["passed"],
    }
    out = root / "bench" / "results.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result, sort_keys=True) + "\n")
    tools.log("bench", json.dumps(result, indent=2, sort_keys=True))
    tools.log("bench", f"appended to {out.relative_to(root)}")
    return result


def shares(timings: dict[str, float]) -> dict[str, float]:
    total = timings.get("total") or 0
    return {k: round(v / total, 3) for k, v in timings.items() if k != "total" and total}


def flattened(catalogue: Catalogue, image: Image) -> tuple[dict[str, Any], list[Any]]:
    """`image` as if it were not layered: its images.yml entry on its root base, and one
    playbook holding its layers' plays, root ancestor first (the work a scratch bake does).
    Returns (the catalogue's data with that entry, the plays)."""
    data = yaml.safe_load(catalogue.path.read_text())
    plays: list[Any] = []
    for layer in catalogue.layers(image):
        plays += yaml.safe_load(layer.playbook.read_text()) or []
    data["images"][image.name] = {
        "base": image.base.name,
        "playbook": f"playbooks/{image.name}.scratch.yml",
        "targets": ["local"],
    }
    return data, plays


def from_scratch(
    root: Path, catalogue: Catalogue, image: Image, settings: Settings
) -> dict[str, Any]:
    """Bake `image`'s whole stack from its root base in a throwaway copy of the project
    (sharing its .cache, so the base disk is the same file); return that manifest."""
    data, plays = flattened(catalogue, image)
    (root / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=root / "build") as tmp:
        copy = Path(tmp)
        for name in PROJECT_FILES:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, copy / name, symlinks=True)
            elif src.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, copy / name)
        for name in PROJECT_LINKS:
            if (root / name).exists():
                (copy / name).symlink_to(root / name)
        (copy / ".cache").symlink_to(cache_dir(root))
        (copy / "images.yml").write_text(yaml.safe_dump(data, sort_keys=False))
        (copy / "playbooks" / f"{image.name}.scratch.yml").write_text(
            yaml.safe_dump(plays, sort_keys=False)
        )
        tools.log("bench", f"{image.name} from scratch: its layers' playbooks on {image.base.name}")
        path = pipeline.build(copy, image.name, target="local", force=True, settings=settings)
        return json.loads(path.read_text())


def added_packages(root: Path, base_path: Path, packages: dict[str, str]) -> list[str]:
    """The packages of `packages` (an image's) that the base disk at `base_path` lacks."""
    (root / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-", dir=root / "build") as tmp:
        with disk.mounted_readonly(base_path, Path(tmp)) as mnt:
            on_base = disk.packages(mnt)
    return sorted(set(packages) - set(on_base))


def floor_command(packages: list[str]) -> str:
    """The floor's apt work, as root on the machine: the lists, the packages (exactly
    these: what the bake pulled in is all named, recommends included), the locale."""
    return (
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; "
        "apt-get install -y -qq --no-install-recommends "
        + " ".join(shlex.quote(p) for p in packages)
        + " >/dev/null; sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen; "
        "locale-gen >/dev/null"
    )


def floor(root: Path, base_path: Path, packages: list[str]) -> dict[str, float]:
    """The raw cost of the apt work on the base disk: boot to SSH, apt, power off, write
    the qcow2 (seconds per phase and the total). Nothing is kept."""
    name = f"bench-floor-{os.getpid()}"
    tools.log("bench", f"the floor: {len(packages)} packages on {base_path.name}, raw")
    t = [time.monotonic()]
    with vm.booted(name, base_path, root=root) as machine:
        t.append(time.monotonic())
        machine.ssh("sudo", "sh", "-c", floor_command(packages))
        t.append(time.monotonic())
        machine.ssh("sudo", "systemctl", "poweroff", check=False)
        deadline = time.monotonic() + 300
        while machine.running() and time.monotonic() < deadline:
            time.sleep(0.5)
        if machine.running():
            # Its disk would be copied while still written: not a floor worth recording.
            raise GoldsmithError(f"the floor's VM {name} did not power off within 300 s")
        t.append(time.monotonic())
        with tempfile.TemporaryDirectory(prefix=".bench-", dir=root / "build") as tmp:
            tools.capture(
                ["qemu-img", "convert", "-O", "qcow2", machine.dir / "disk.qcow2", Path(tmp) / "o"]
            )
        t.append(time.monotonic())
    names = ("boot_to_ssh", "apt_work", "poweroff", "write_qcow2")
    out = {n: round(b - a, 1) for n, a, b in zip(names, t, t[1:], strict=False)}
    out["total"] = round(t[-1] - t[0], 1)
    return out
