"""The project's benchmark: what a bake costs here, measured, written to bench/.

Figures on these machines are noisy, so the benchmark reports each run's phases side by
side and ratios between them (e.g. how much of a bake is Ansible, how much is specs),
which hold better than absolute seconds. Results are appended to bench/results.jsonl,
one JSON object per run, with what the machine was (cores, accelerator, tool versions).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import base_disk, fingerprint, pipeline, tools, vm
from .catalogue import load
from .settings import Settings


def run(root: Path, image: str, settings: Settings | None = None) -> dict:
    """Bake `image` from scratch (--force), time the cached-base path, record size and phases."""
    catalogue = load(root / "images.yml")
    img = catalogue.image(image)
    t = time.monotonic()
    base_path = base_disk.ensure(img.base, root)
    base_cached_s = round(time.monotonic() - t, 2)
    manifest_path = pipeline.build(root, image, target="local", force=True, settings=settings)
    manifest = json.loads(manifest_path.read_text())
    timings = manifest["timings"]
    t = time.monotonic()
    pipeline.build(root, image, target="local", force=False, settings=settings)
    reuse_s = round(time.monotonic() - t, 2)
    qcow2 = manifest_path.parent / manifest["artifact"]
    total = timings["total"]
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "image": image,
        "git_sha": manifest["git"]["sha"],
        "machine": {
            "cores": os.cpu_count(),
            "accelerator": manifest.get("accelerator")
            or vm.accelerator(root, base_path, forced=(settings or Settings()).accelerator),
            **fingerprint.tool_versions(),
        },
        "bake_seconds": total,
        "phases_seconds": timings,
        "phase_share_of_bake": {
            k: round(v / total, 3) for k, v in timings.items() if k not in ("total",) and total
        },
        "reuse_seconds": reuse_s,
        "reuse_vs_bake_ratio": round(reuse_s / total, 4) if total else None,
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
