"""A build's work folder, and the sweep of what dead builds left behind.

Every build works in `build/.work-<build id>/` (its private key, Packer's template and
output, the raw copy of a disk being checked). The folder's `owner.json` names the
process that owns it (pid and the kernel's start time of that pid, so a reused pid is
not mistaken for the owner) and what it started outside the folder (stand-in VMs, the
cloud region). A build killed with SIGKILL cannot clean up; the next build sweeps: any
work folder whose owner is dead loses its qemu processes, mounts, loop devices and VMs,
then the folder itself. A folder whose owner is alive is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import tools, vm
from .paths import build_dir

PREFIX = ".work-"
OWNER = "owner.json"
# A folder without an owner record is being created, or was left by a crash right then.
UNOWNED_GRACE_S = 60.0


def _start_ticks(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rindex(")") + 2 :].split()[19]


def alive(owner: dict[str, Any]) -> bool:
    pid = owner.get("pid")
    return isinstance(pid, int) and _start_ticks(pid) == owner.get("start")


@dataclass
class WorkDir:
    """The work folder of one running build."""

    path: Path
    owner: dict[str, Any] = field(default_factory=dict)

    def record(self, **facts: Any) -> None:
        """Add facts the sweep needs (a VM name, a region) before the thing exists."""
        for k, v in facts.items():
            if isinstance(v, list):
                self.owner.setdefault(k, [])
                self.owner[k] += [x for x in v if x not in self.owner[k]]
            else:
                self.owner[k] = v
        tmp = self.path / f".{OWNER}.tmp"
        tmp.write_text(json.dumps(self.owner, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path / OWNER)


def create(root: Path, build_id: str, **facts: Any) -> WorkDir:
    """Make build/.work-<build_id>/ (mode 0700: it holds a private key), owned by us."""
    build_dir(root).mkdir(parents=True, exist_ok=True)
    path = build_dir(root) / f"{PREFIX}{build_id}"
    path.mkdir(mode=0o700)
    pid = os.getpid()
    wd = WorkDir(path, {"pid": pid, "start": _start_ticks(pid), "build_id": build_id})
    wd.record(**facts)
    return wd


def kill_qemu(marker: str) -> list[int]:
    """SIGKILL every qemu whose command line names `marker` (a work or VM folder)."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except ProcessLookupError:
                pass
    return killed


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if point == path or point.is_relative_to(path):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def loops_under(path: Path) -> list[str]:
    """Loop devices whose backing file is below `path` (deleted or not)."""
    try:
        out = json.loads(tools.capture(["losetup", "--json", "--list"]) or "{}")
    except Exception:  # noqa: BLE001 - no losetup, no loop devices to sweep
        return []
    devices = []
    for dev in out.get("loopdevices", []):
        back = (dev.get("back-file") or "").removesuffix(" (deleted)")
        if back and Path(back).is_relative_to(path):
            devices.append(dev["name"])
    return devices


def release(path: Path) -> list[str]:
    """Stop qemu, unmount and detach loop devices under `path`; say what was done."""
    done = [f"qemu pid {pid}" for pid in kill_qemu(str(path))]
    if done:
        time.sleep(0.5)
    for mnt in mounts_under(path):
        tools.run(["umount", "--lazy", mnt], prefix="sweep", check=False, quiet=True)
        done.append(f"mount {mnt.name}")
    for loop in loops_under(path):
        tools.run(["losetup", "-d", loop], prefix="sweep", check=False, quiet=True)
        done.append(f"loop device {loop}")
    return done


def dead(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Work folders whose owner is dead, with their owner records."""
    d = build_dir(root)
    if not d.is_dir():
        return
    for path in sorted(d.glob(f"{PREFIX}*")):
        try:
            owner = json.loads((path / OWNER).read_text())
        except (OSError, ValueError):
            try:
                age = time.time() - path.stat().st_mtime
            except OSError:
                continue
            if age < UNOWNED_GRACE_S:
                continue
            owner = {}
        if owner and alive(owner):
            continue
        yield path, owner


def sweep_local(root: Path, path: Path, owner: dict[str, Any]) -> list[str]:
    """What is on this machine: qemu, mounts, loop devices, stand-in VMs, the folder."""
    done = release(path)
    for name in owner.get("vms", []):
        if vm.down(name, root):
            done.append(f"VM {name}")
    shutil.rmtree(path, ignore_errors=True)
    done.append(f"work folder {path.name}")
    return done
