"""Several images in one command: the layers in order, independent images side by side.

`./run build --all` (or several `--image`) bakes the images asked for and the images
they are layered on: an image starts once its parent's build is proven (baked, or reused
when its inputs are unchanged). With `jobs` above 1, up to that many bakes run at once,
each in a process of its own (a bake owns its signals, work folder and image lock), its
lines prefixed with the image's name. When a bake fails, the images layered on it are
not built; the others go on, and the command fails at the end naming each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import pipeline, tools
from .catalogue import Catalogue, load
from .errors import GoldsmithError
from .settings import Settings


def order(catalogue: Catalogue, names: list[str]) -> list[str]:
    """`names` and their ancestors, every parent before its children (catalogue order
    otherwise)."""
    wanted: set[str] = set()
    for name in names:
        image = catalogue.image(name)
        wanted |= {image.name, *(a.name for a in catalogue.ancestors(image))}
    out: list[str] = []

    def visit(name: str) -> None:
        if name in out:
            return
        parent = catalogue.images[name].parent
        if parent:
            visit(parent)
        out.append(name)

    for name in catalogue.images:
        if name in wanted:
            visit(name)
    return out


@dataclass
class Outcome:
    image: str
    state: str  # "proven", "failed", "skipped"
    detail: str  # the manifest's path, the error, or why it was skipped


def build_all(
    root: Path,
    names: list[str],
    target: str,
    *,
    force: bool = False,
    jobs: int = 1,
    settings: Settings | None = None,
) -> list[Outcome]:
    """Bake `names` (and their ancestors) for `target`; `force` rebakes `names` only."""
    if jobs < 1:
        raise GoldsmithError(f"--jobs {jobs}: at least 1")
    settings = settings or Settings()
    catalogue = load(root / "images.yml")
    todo = order(catalogue, names)
    for name in todo:
        if target not in catalogue.images[name].targets:
            raise GoldsmithError(
                f"images.yml: images.{name}.targets does not list {target!r} "
                f"(it lists {', '.join(catalogue.images[name].targets)})"
            )
    tools.log("build", f"{target}: {' -> '.join(todo)} (up to {jobs} at once)")
    run = _Runner(root, catalogue, target, force, set(names), jobs, settings)
    return run.go(todo)


class _Runner:
    def __init__(self, root, catalogue, target, force, forced, jobs, settings) -> None:
        self.root, self.catalogue, self.target = root, catalogue, target
        self.force, self.forced, self.jobs, self.settings = force, forced, jobs, settings
        self.outcomes: dict[str, Outcome] = {}

    def _parent_state(self, name: str) -> str | None:
        parent = self.catalogue.images[name].parent
        if parent is None:
            return "proven"
        return self.outcomes[parent].state if parent in self.outcomes else None

    def go(self, todo: list[str]) -> list[Outcome]:
        if self.jobs == 1:
            for name in todo:
                self._one_in_process(name)
            return [self.outcomes[n] for n in todo]
        running: dict[str, subprocess.Popen] = {}
        pending = list(todo)
        try:
            while pending or running:
                for name in list(pending):
                    state = self._parent_state(name)
                    if state in ("failed", "skipped"):
                        parent = self.catalogue.images[name].parent
                        self.outcomes[name] = Outcome(
                            name, "skipped", f"its parent {parent} {state}"
                        )
                        pending.remove(name)
                    elif state == "proven" and len(running) < self.jobs:
                        running[name] = self._start(name)
                        pending.remove(name)
                for name, proc in list(running.items()):
                    if proc.poll() is not None:
                        self._finished(name, proc)
                        del running[name]
                time.sleep(0.5)
        except KeyboardInterrupt:
            # The terminal's Ctrl-C reached every bake too: each cleans up after itself.
            for proc in running.values():
                proc.wait()
            raise
        return [self.outcomes[n] for n in todo]

    def _forced(self, name: str) -> bool:
        return self.force and name in self.forced

    def _one_in_process(self, name: str) -> None:
        state = self._parent_state(name)
        if state != "proven":
            parent = self.catalogue.images[name].parent
            self.outcomes[name] = Outcome(name, "skipped", f"its parent {parent} {state}")
            return
        try:
            path = pipeline.build(
                self.root, name, self.target, force=self._forced(name), settings=self.settings
            )
            self.outcomes[name] = Outcome(name, "proven", str(path.relative_to(self.root)))
        except pipeline.Interrupted:
            raise
        except GoldsmithError as e:
            tools.log("build", f"{name}: FAILED: {e}")
            self.outcomes[name] = Outcome(name, "failed", str(e).splitlines()[0])

    def _start(self, name: str) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-m",
            "goldsmith.graph",
            name,
            self.target,
            "--root",
            str(self.root),
        ]
        argv += ["--settings", json.dumps(asdict(self.settings))]
        if self._forced(name):
            argv.append("--force")
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # its lines as they come
        )
        proc.lines = []  # type: ignore[attr-defined]

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                proc.lines.append(line)  # type: ignore[attr-defined]
                sys.stdout.write(f"[{name}] {line}")
                sys.stdout.flush()

        proc.pump = threading.Thread(target=pump, daemon=True)  # type: ignore[attr-defined]
        proc.pump.start()  # type: ignore[attr-defined]
        return proc

    def _finished(self, name: str, proc: subprocess.Popen) -> None:
        proc.pump.join()  # type: ignore[attr-defined]
        lines = proc.lines  # type: ignore[attr-defined]
        if proc.returncode == 0:
            manifest = next(
                (
                    ln.split(":", 1)[1].strip()
                    for ln in reversed(lines)
                    if ln.startswith("manifest:")
                ),
                "",
            )
            self.outcomes[name] = Outcome(name, "proven", manifest)
        else:
            error = next((ln.strip() for ln in lines if ln.startswith("error: ")), "")
            self.outcomes[name] = Outcome(name, "failed", error or f"exit code {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    """`python -m goldsmith.graph IMAGE TARGET`: one bake of a graph run, in its own process."""
    p = argparse.ArgumentParser(prog="python -m goldsmith.graph")
    p.add_argument("image")
    p.add_argument("target")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    values = json.loads(args.settings)
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    try:
        path = pipeline.build(args.root, args.image, args.target, args.force, settings)
    except GoldsmithError as e:
        print(f"error: {e}", flush=True)
        return 130 if isinstance(e, pipeline.Interrupted) else 1
    except KeyboardInterrupt:
        print("error: interrupted", flush=True)
        return 130
    print(f"manifest: {path.relative_to(args.root)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
