"""What the bake pipeline hands a target, and what a target must answer.

The pipeline (goldsmith.pipeline) owns everything every bake does: the build id, the
work folder and its key, the Packer run, the specs, the seal proof's place in the order,
the manifest, the atomic commit of the outputs and the cleanup. A target supplies only
what differs: where the machine comes from (`source`), what Packer needs to reach it
(`packer_vars`), where the artifact goes (`collect`), how the seal is proven on what
ships (`prove_seal`), what to clean up and how to publish. This module sits below both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..catalogue import Catalogue, Image
from ..cvegate import GateResult
from ..roles import RoleMap
from ..settings import Settings
from ..spec import SpecResult
from ..workdir import WorkDir


@dataclass
class Plan:
    """Everything decided before anything starts: the request, checked."""

    root: Path
    catalogue: Catalogue
    image: Image
    target: str
    role_map: RoleMap  # the playbook, resolved once for the whole build
    settings: Settings = field(default_factory=Settings)
    parent: Plan | None = None  # a layered image's parent, on the same target

    @property
    def layers(self) -> list[Plan]:
        """The plans whose playbooks made the image: root ancestor first, this one last."""
        return [*(self.parent.layers if self.parent else []), self]

    @property
    def cve_tracker(self) -> Path | None:
        """The tracker data the image's CVE gate reads: the `cve_tracker` setting (relative
        to the project), else images.yml's `tracker`; None without a gate or without either."""
        if self.image.vulnerabilities is None:
            return None
        if self.settings.cve_tracker:
            return self.root / Path(self.settings.cve_tracker).expanduser()
        return self.image.vulnerabilities.tracker


@dataclass
class Source:
    """What the build machine boots from: a stable id for the fingerprint, and details."""

    id: str
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest
    disk: Path | None = None  # a local disk it boots from (not recorded: machine-specific)
    # A layered image's parent build: image, fingerprint, build id (recorded as "parent").
    parent: dict[str, Any] | None = None


@dataclass
class Bake:
    """One running build, as the pipeline and its target share it."""

    plan: Plan
    source: Source
    fingerprint: str
    inputs: dict[str, str]
    build_id: str
    git: dict[str, Any]
    work: WorkDir
    key: Path
    public_key: str
    build_user: str
    staged: Path  # the folder that becomes build/<image>/<target>/ when proven
    timings: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # the target's own

    @property
    def live_junit(self) -> Path:
        return self.work.path / "junit-spec.xml"

    @property
    def ansible_timings(self) -> Path:
        """Each provisioning task's time (ansible_env.timings_env), for the manifest."""
        return self.work.path / "ansible-timings.jsonl"

    @property
    def hygiene_junit(self) -> Path:
        return self.work.path / "junit-hygiene.xml"

    @property
    def live_listening(self) -> Path:
        """The sockets the live machine listened on before its specs ran (a local bake,
        whose inventory is read from its sealed disk, which cannot show them)."""
        return self.work.path / "listening-live.json"


@dataclass
class SealProof:
    """The hygiene checks on what ships (None where no disk is at hand) and its packages.

    `inventory` (goldsmith.inventory) and `gate` (the CVE gate's result, when the image
    has a policy) come from the same disk; both None where no disk is at hand.
    """

    hygiene: SpecResult | None
    packages: dict[str, str] | None
    how: str
    inventory: dict[str, Any] | None = None
    gate: GateResult | None = None
    inventory_read: str = "from the sealed disk, offline"  # where the inventory was read


class Target(Protocol):
    name: str
    packer_only: str  # the Packer source this target builds with
    what: str  # what a failed build did not make ("no image written")

    def check(self, plan: Plan) -> None:
        """Pre-flight: what this target needs from the catalogue, checked; creates nothing."""

    def session(self, plan: Plan) -> AbstractContextManager[None]:
        """Held for the whole build (the twin is started here when none is running)."""

    def source(self, plan: Plan, prepare: bool = True) -> Source:
        """Find what the machine boots from (with `prepare`, build a local base disk it
        needs); creates no cloud resource."""

    def from_parent(self, plan: Plan, proven: dict[str, Any] | None) -> Source:
        """A layered image's source: its parent's proven build on this target (`proven`,
        its manifest; None when planning only). The pipeline sets `id` and `parent`."""

    def last_proven(self, plan: Plan, fingerprint: str | None) -> dict[str, Any] | None:
        """The manifest of the last proven build (with that fingerprint, if given)."""

    def reuse(self, plan: Plan, proven: dict[str, Any], source: Source) -> Path:
        """Record (and publish) a reused build; return its manifest path."""

    def build_user(self, plan: Plan) -> str:
        """The user the build logs in as."""

    def start(self, bake: Bake) -> None:
        """Create what the build needs outside Packer (record it in the work folder first)."""

    def packer_vars(self, bake: Bake) -> dict[str, Any]:
        """This target's Packer variables (the shared ones come from the pipeline)."""

    def packer_env(self, bake: Bake) -> dict[str, str] | None:
        """Extra environment for Packer."""

    def during_packer(self, bake: Bake) -> AbstractContextManager[None]:
        """Held while Packer runs (the IMDSv2 guard on AWS)."""

    def collect(self, bake: Bake) -> dict[str, Any]:
        """After Packer: move or find the artifact; return its manifest fields."""

    def prove_seal(self, bake: Bake) -> SealProof:
        """Prove the seal on what ships; raise if it does not hold."""

    def cleanup(self, bake: Bake, failed: bool) -> list[str]:
        """Remove what `start` and Packer left; return what could not be removed."""

    def after_commit(self, plan: Plan, manifest_path: Path) -> None:
        """Once the build is proven and recorded (publish on AWS)."""

    def sweep(self, root: Path, owner: dict[str, Any]) -> list[str]:
        """Remove what a dead build of this target left outside this machine."""


@contextmanager
def nothing() -> Iterator[None]:
    yield


def manifest(
    plan: Plan,
    *,
    build_id: str,
    git: dict[str, Any],
    fingerprint: str,
    inputs: dict[str, str],
    source: Source,
    roles: list[str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The one manifest shape every target writes (target fields added as `fields`)."""
    image = plan.image
    return {
        "image": image.name,
        "target": plan.target,
        "build_id": build_id,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "base": {"name": image.base.name, "kind": image.base.kind, "id": source.id}
        | source.details,
        **({"parent": source.parent} if source.parent else {}),
        "roles": list(plan.role_map.roles if roles is None else roles),
        "uncovered_roles": list(plan.role_map.uncovered),
        # Pinned third-party content the image uses, with the versions installed.
        "collections": dict(plan.role_map.collections),
        "galaxy_roles": dict(plan.role_map.galaxy_roles),
        **fields,
    }
