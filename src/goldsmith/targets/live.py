"""The inventory and CVE gate of a cloud build, taken on the live builder by the seal.

On EC2 there is no disk goldsmith can mount before the AMI exists, so what a reviewer
reads (goldsmith.inventory) is read on the builder itself, at the end of the seal:

1. Packer uploads goldsmith's inventory module (pure standard library) beside the seal.
2. The seal, as root, after its self-check has passed, loads it by path and writes the
   machine's inventory to `REMOTE_DIR` (/run is a tmpfs: nothing of it is in the image),
   owned by the build user, then removes the module.
3. Packer downloads the JSON over the build's own connection (`INVENTORY_FILE` in the
   work folder) and removes it there; on the twin that lets the stand-in power off.
4. A local step, `python -m goldsmith.targets.live gate`, runs the image's CVE gate on it:
   a failing gate fails Packer there, before the builder is stopped, so no AMI is made.

The seal's self-check has removed everything of the build by then, so the inventory is
of what ships. The twin takes the same road, and checks the result against its
stand-in's sealed disk too.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from .. import catalogue, inventory, tools
from ..errors import GoldsmithError
from ..paths import venv_bin
from .local import gate_or_fail

REMOTE_DIR = "/run/goldsmith-inventory"
REMOTE_SCRIPT = "/tmp/goldsmith-inventory.py"  # where Packer uploads the module
INVENTORY_FILE = "inventory-live.json"  # in the work folder
GATE_RECORD = "cve-gate-live.json"  # in the work folder: the gate step's verdict
NOTHING_MADE = "no AMI registered"


def script() -> Path:
    """The module the builder runs (it imports nothing of goldsmith)."""
    return Path(inventory.__file__)


def gate_command(catalogue_path: Path, image: str, work: Path, tracker: Path | None) -> str:
    """The shell-local step after the download: the CVE gate on the live inventory."""
    argv = [
        str(venv_bin("python")),
        "-m",
        "goldsmith.targets.live",
        "gate",
        "--catalogue",
        str(catalogue_path),
        "--image",
        image,
        "--inventory",
        str(work / INVENTORY_FILE),
        "--record",
        str(work / GATE_RECORD),
    ]
    if tracker is not None:
        argv += ["--tracker", str(tracker)]
    return shlex.join(argv)


def read(path: Path) -> dict[str, Any]:
    """The inventory the seal wrote, checked to be one (a build fails on anything else)."""
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise GoldsmithError(
            f"the builder's inventory was not fetched ({path.name} is missing), {NOTHING_MADE}"
        ) from None
    except json.JSONDecodeError as err:
        raise GoldsmithError(
            f"the builder's inventory ({path.name}) is not JSON: {err}, {NOTHING_MADE}"
        ) from None
    if not isinstance(found, dict) or not found.get("packages"):
        raise GoldsmithError(
            f"the builder's inventory ({path.name}) lists no packages, {NOTHING_MADE}"
        )
    if found.get("format") != inventory.FORMAT:
        raise GoldsmithError(
            f"the builder's inventory ({path.name}) has format {found.get('format')!r}, "
            f"this goldsmith writes {inventory.FORMAT}, {NOTHING_MADE}"
        )
    return found


def differences(live: dict[str, Any], on_disk: dict[str, Any]) -> list[str]:
    """The parts of two inventories of one build that differ (keys only one side can
    have, such as the live machine's listening sockets, are not compared)."""
    return sorted(k for k in set(live) & set(on_disk) if live[k] != on_disk[k])


def failure(work: Path) -> str | None:
    """Why the gate step failed the build (None: it did not run, or it passed)."""
    try:
        record = json.loads((work / GATE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return None if record.get("ok") else str(record.get("error") or "the CVE gate failed")


def gate(args: argparse.Namespace) -> int:
    record = Path(args.record)
    try:
        found = read(Path(args.inventory))
        img = catalogue.load(Path(args.catalogue)).image(args.image)
        tracker = Path(args.tracker) if args.tracker else None
        result = gate_or_fail(img.name, img.vulnerabilities, tracker, found, NOTHING_MADE)
    except GoldsmithError as err:
        record.write_text(json.dumps({"ok": False, "error": str(err)}))
        raise
    record.write_text(json.dumps({"ok": True}))
    packages = len(found["packages"])
    if result is None:
        tools.log("gate", f"{img.name}: {packages} packages read on the builder; no CVE policy")
    else:
        tools.log(
            "gate",
            f"{img.name}: CVE gate passed on the builder's {packages} packages "
            f"({result.release}, fail on {result.fail_on}; {len(result.allowed)} allowed)",
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m goldsmith.targets.live")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gate", help="the CVE gate on the inventory the builder's seal wrote")
    g.add_argument("--catalogue", required=True, help="images.yml")
    g.add_argument("--image", required=True)
    g.add_argument("--inventory", required=True, help="the fetched inventory JSON")
    g.add_argument("--tracker", help="the tracker data the gate reads")
    g.add_argument("--record", required=True, help="where the verdict is written (JSON)")
    args = p.parse_args(argv)
    try:
        return gate(args)
    except GoldsmithError as err:
        print(f"goldsmith: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
