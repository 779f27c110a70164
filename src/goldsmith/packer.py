"""Packer: the template folder for this Packer version, its variables, and the run.

packer/ holds one build over several sources. Plugin pins (`required_plugins`) live in
packer/plugins/: Packer >= 1.7 needs them (and `packer init`), Packer 1.6 rejects the
block, so they are copied in only where the running Packer understands them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import tools
from .errors import GoldsmithError
from .paths import venv_bin
from .vm import BUILD_USER

# Lines of Packer's output that start a phase of the bake, for per-phase timings.
PHASES = [
    (re.compile(r"Starting VM|Launching a source|Creating temporary keypair"), "boot"),
    (re.compile(r"Provisioning with Ansible"), "provision"),
    # A local bake's spec step reads the live machine's sockets too, beside the specs'
    # start (goldsmith.spec.main): that is spec time.
    (re.compile(r"Running local shell script"), "spec"),
    (re.compile(r"Uploading .*goldsmith-seal|Provisioning with shell script"), "seal"),
    (re.compile(r"Converting hard drive|Creating AMI|Creating the AMI"), "save"),
]


def version() -> tuple[int, ...]:
    tools.require("packer")
    out = tools.capture(["packer", "version"]).strip()
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise GoldsmithError(f"cannot read Packer's version from {out!r}")
    return tuple(int(x) for x in m.groups())


def template_dir(root: Path, dest: Path) -> Path:
    """Copy packer/ into `dest` as this Packer version needs it."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted((root / "packer").glob("*.pkr.hcl")):
        shutil.copy(f, dest / f.name)
    if version() >= (1, 7, 0):
        for f in sorted((root / "packer" / "plugins").glob("*.pkr.hcl")):
            shutil.copy(f, dest / f.name)
    return dest


def write_vars(values: Mapping[str, object], path: Path) -> Path:
    """A .pkrvars.hcl file; JSON literals are valid HCL for strings, numbers, bools and lists."""
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in sorted(values.items())))
    return path


def init(template: Path) -> None:
    """`packer init` where Packer has it (>= 1.7), so pinned plugins are installed."""
    if version() >= (1, 7, 0):
        tools.run(["packer", "init", template], prefix="packer")


def validate(template: Path, var_file: Path, only: str | None = None) -> None:
    argv = ["packer", "validate", f"-var-file={var_file}"]
    if only:
        argv.append(f"-only={only}")
    tools.run([*argv, template], prefix="packer-validate")


def validate_all(root: Path) -> None:
    """`packer validate` of the template for every image in the catalogue (lint, pre-flight)."""
    import tempfile

    from .catalogue import load

    catalogue = load(root / "images.yml")
    with tempfile.TemporaryDirectory(prefix="goldsmith-validate-") as tmp:
        template = template_dir(root, Path(tmp) / "packer")
        for image in catalogue.images.values():
            values = {
                "playbook": str(image.playbook),
                "image_name": image.name,
                "ansible_playbook": venv_bin("ansible-playbook"),
                "seal_script": str(Path(__file__).parent / "data" / "seal.sh"),
                "build_user": BUILD_USER,
            }
            validate(template, write_vars(values, Path(tmp) / f"{image.name}.pkrvars.hcl"))


@dataclass
class Timings:
    """Seconds spent in each phase of a Packer build, read from its output as it streams."""

    clock: Callable[[], float] = time.monotonic
    phases: dict[str, float] = field(default_factory=dict)
    _current: str = "start"
    _since: float = 0.0

    def __post_init__(self) -> None:
        self._since = self.clock()

    def line(self, text: str) -> None:
        for pattern, phase in PHASES:
            if pattern.search(text) and phase != self._current:
                self._switch(phase)
                tools.log("phase", phase)
                return

    def _switch(self, phase: str) -> None:
        now = self.clock()
        self.phases[self._current] = self.phases.get(self._current, 0) + now - self._since
        self._current, self._since = phase, now

    def finish(self) -> dict[str, float]:
        self._switch("done")
        return {k: round(v, 1) for k, v in self.phases.items() if k not in ("done",)}


def build(
    template: Path,
    var_file: Path,
    *,
    only: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    stop_grace: float = 30.0,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> None:
    """`packer build` of one source; raises ToolError when Packer fails.

    Packer lives no longer than goldsmith (it is sent SIGTERM if goldsmith dies) and is
    given `stop_grace` seconds to clean up when stopped. `on_start` is given the Packer
    process as soon as it runs (a target may have to stop it from another thread).
    """
    argv = [
        "packer",
        "build",
        "-color=false",
        "-on-error=cleanup",
        f"-only={only}",
        f"-var-file={var_file}",
        template,
    ]
    tools.run(
        argv,
        prefix="packer",
        env={
            "PACKER_NO_COLOR": "1",
            "CHECKPOINT_DISABLE": "1",
            "PACKER_CACHE_DIR": str(cwd / ".cache" / "packer"),
            **(env or {}),
        },
        cwd=cwd,
        on_line=on_line,
        stop_grace=stop_grace,
        die_with_us=True,
        on_start=on_start,
    )
