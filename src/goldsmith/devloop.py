"""The role developer's loop on a real VM, as Molecule gives, without a bake.

  up           boot `dev-<image>` from the image's base (an overlay; kept running); a
               layered image's from its parent's proven local build
  converge     ansible-playbook playbooks/<image>.yml against it
  verify       the specs of the playbook's roles against it, and of its parents'
               playbooks for a layered image (the VM is proven whole, as in a bake)
  idempotence  converge again (every layer's playbook, parents' first); fail listing
               every task that changed
  login / down

A dev VM is a goldsmith VM (goldsmith.vm) in .cache/vms/<name>/ with a `dev.json` that
records which catalogue image it is for, so commands find it by image name. Re-converging
costs Ansible's own time plus well under a second of goldsmith's: nothing is rebuilt, SSH
connections persist between runs (ControlPersist) and modules are piped (pipelining).

Idempotence exemption: tag a task `molecule-idempotence-notest` (as Molecule does) or
`goldsmith-idempotence-notest`. Like Molecule, the second converge skips tasks with either
tag (so they cannot notify handlers either); a change under an exempt tag is still not
counted if one shows up (a tag on a block or role is inherited by its tasks).

Specs against machines that are not dev VMs are goldsmith.hostspec's.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import base_disk, disk, requirements, setup, spec, tools, vm
from .ansible_env import CALLBACK_DIR, DEFAULT_STRATEGY, ansible_env
from .catalogue import Image, load
from .errors import GoldsmithError, ToolError
from .paths import build_dir, cache_dir, venv_bin
from .roles import RoleMap

# Guest ports a dev VM forwards to loopback besides SSH: the web image's nginx and
# node_exporter, so an engineer can curl them.
DEV_FORWARDS = (80, 9100)
# Tags that exempt a task from the idempotence check.
EXEMPT_TAGS = ("molecule-idempotence-notest", "goldsmith-idempotence-notest")
CALLBACK = "goldsmith_changes"
DEV_FILE = "dev.json"
_GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_SUBSCRIPT = re.compile(r"\[[0-9:-]*\]$")


# --- dev VMs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DevVM:
    """A dev VM and the catalogue image it is for."""

    machine: vm.VM
    image: str

    @property
    def name(self) -> str:
        return self.machine.name


def vm_name(image: str, name: str | None = None) -> str:
    """The VM an image's dev loop uses: `name` if given, else `dev-<image>`."""
    return name or f"dev-{image}"


def _image(root: Path, image: str) -> Image:
    return _layers(root, image)[-1][0]


def _layers(root: Path, image: str) -> list[tuple[Image, RoleMap]]:
    """The images whose playbooks made `image`'s VM (root ancestor first, `image` last),
    each with its playbook's roles and specs."""
    # The pinned roles and collections first: the catalogue resolves playbooks with them.
    requirements.ensure(root)
    catalogue = load(root / "images.yml")
    return [(i, catalogue.role_map(i)) for i in catalogue.layers(catalogue.image(image))]


def parent_disk(root: Path, img: Image) -> Path:
    """A layered image's dev VM boots from its parent's proven local build (baked first
    when there is none for the parent's current inputs), with a build login put back:
    a raw copy in .cache/layered/, one per parent fingerprint, shared by dev VMs."""
    from .pipeline import build  # the bake pipeline only when an image is layered

    assert img.parent is not None
    manifest_path = build(root, img.parent, "local")
    proven = json.loads(manifest_path.read_text())
    folder = cache_dir(root) / "layered"
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f"{img.parent}-{proven['fingerprint'][:16]}.raw"
    if not raw.is_file():
        for old in folder.glob(f"{img.parent}-*.raw"):
            old.unlink()  # a running VM keeps its open file; new VMs take the new build
        part = raw.with_suffix(".part")
        part.unlink(missing_ok=True)
        disk.with_build_access(manifest_path.parent / proven["artifact"], part)
        part.rename(raw)
    tools.log("dev", f"{img.name} is layered on {img.parent}: booting its proven build")
    return raw


def up(root: Path, image: str, name: str | None = None) -> DevVM:
    """Boot the dev VM for `image` from the image's base (built first if missing), or for
    a layered image from its parent's proven build (baked first if missing)."""
    img = _image(root, image)
    if img.base.kind != "debootstrap":
        raise GoldsmithError(
            f"images.yml: images.{image}.base is {img.base.name!r}, a {img.base.kind}: "
            "a dev VM boots a local (debootstrap) base; point the image at one to use the dev loop"
        )
    setup.ensure(root)
    base_path = parent_disk(root, img) if img.parent else base_disk.ensure(img.base, root)
    vname = vm_name(image, name)
    existing = _load(root, vname)
    if existing and existing.machine.running() and existing.image != image:
        raise GoldsmithError(
            f"VM {vname} is already up for image {existing.image!r}; "
            f"`./run down --name {vname}` first or pick another --name"
        )
    machine = vm.up(vname, base_path, root=root, forward=DEV_FORWARDS)
    (machine.dir / DEV_FILE).write_text(json.dumps({"image": image}) + "\n")
    for guest, host in sorted(machine.forwards.items()):
        tools.log("dev", f"guest port {guest} -> 127.0.0.1:{host}")
    return DevVM(machine, image)


def _load(root: Path, vname: str) -> DevVM | None:
    machine = vm.status(vname, root)
    dev_file = vm.vms_dir(root) / vname / DEV_FILE
    if machine is None or not dev_file.is_file():
        return None
    return DevVM(machine, json.loads(dev_file.read_text())["image"])


def dev_vms(root: Path) -> list[DevVM]:
    """Every dev VM recorded in .cache/vms/ (running or not)."""
    folder = vm.vms_dir(root)
    found = [_load(root, d.name) for d in sorted(folder.iterdir())] if folder.is_dir() else []
    return [d for d in found if d is not None]


def find(root: Path, image: str | None = None, name: str | None = None) -> DevVM:
    """The running dev VM for `image` (or called `name`; or the only one up)."""
    if image is None and name is None:
        running = [d for d in dev_vms(root) if d.machine.running()]
        if len(running) == 1:
            return running[0]
        if not running:
            raise GoldsmithError("no dev VM is up: `./run up --image NAME` first")
        names = ", ".join(f"{d.name} ({d.image})" for d in running)
        raise GoldsmithError(f"several dev VMs are up ({names}): say which with --image or --name")
    vname = vm_name(image or "", name)
    found = _load(root, vname)
    if found is None or not found.machine.running():
        hint = f"--image {image}" if image else f"--image IMAGE --name {vname}"
        raise GoldsmithError(f"dev VM {vname} is not up: `./run up {hint}` first")
    if image and found.image != image:
        raise GoldsmithError(f"VM {vname} is the dev VM of image {found.image!r}, not {image!r}")
    return found


def down(root: Path, image: str | None = None, name: str | None = None) -> bool:
    """Stop and remove a dev VM; False if there was none."""
    if image is None and name is None:
        dev = find(root)  # the only one up, else a clear error
        return vm.down(dev.name, root)
    return vm.down(vm_name(image or "", name), root)


def login_argv(dev: DevVM, command: str | None = None) -> list[str]:
    """The ssh command line that logs into `dev` (or runs `command` there)."""
    return dev.machine.ssh_argv(*([command] if command else []))


# --- converge and idempotence -----------------------------------------------------------


def play_groups(role_map: RoleMap) -> list[str]:
    """The groups to put the dev VM in so that every play selects it.

    Patterns are split as Ansible splits them. A group a play excludes (`!canary`) is left
    out, or that play would skip the VM; a subscript (`web[0]`) names its group; regexes
    and wildcards name none (the VM is then selected only if its name matches).
    """
    # Imported here: Ansible loads in a second, which only a converge needs to spend.
    from ansible.inventory.manager import split_host_pattern

    groups: list[str] = []
    for play in role_map.plays:
        for term in split_host_pattern(play.hosts or "all"):
            if term.startswith("!"):
                continue
            name = _SUBSCRIPT.sub("", term.lstrip("&"))
            if _GROUP.fullmatch(name) and name not in ("all", "ungrouped"):
                groups.append(name)
    return list(dict.fromkeys(groups))


def write_inventory(dev: DevVM, role_map: RoleMap) -> Path:
    """An inventory with the dev VM alone, in every group the playbook's plays name."""
    m = dev.machine
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": m.ssh_port,
        "ansible_user": m.user,
        "ansible_ssh_private_key_file": str(m.key),
        # The base's python3; no discovery round trip, no warning.
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    children = {g: {"hosts": {dev.name: None}} for g in play_groups(role_map)}
    data: dict = {"all": {"hosts": {dev.name: host}}}
    if children:
        data["all"]["children"] = children
    path = m.dir / "inventory.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dev_ansible_env(root: Path, strategy: str = DEFAULT_STRATEGY) -> dict[str, str]:
    """The build's Ansible settings, with SSH connections kept for a whole editing session."""
    env = ansible_env(root, strategy)
    env["ANSIBLE_SSH_ARGS"] = env["ANSIBLE_SSH_ARGS"].replace(
        "ControlPersist=60s", "ControlPersist=30m"
    )
    return env


def changes_env(changes_file: Path) -> dict[str, str]:
    """Environment that makes ansible-playbook record its changed tasks in `changes_file`."""
    return {
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": CALLBACK,
        "GOLDSMITH_CHANGES_FILE": str(changes_file),
    }


@dataclass
class Converge:
    """How long a converge took: Ansible's own time and the whole of it."""

    ansible_seconds: float
    total_seconds: float


def converge(
    root: Path,
    image: str | None = None,
    name: str | None = None,
    *,
    skip_tags: tuple[str, ...] = (),
    changes_file: Path | None = None,
    layer: tuple[Image, RoleMap] | None = None,
    strategy: str = DEFAULT_STRATEGY,
) -> Converge:
    """Run the image's playbook (or `layer`'s, one of its parents') against its dev VM."""
    started = time.monotonic()
    dev = find(root, image, name)
    img, role_map = layer or _layers(root, dev.image)[-1]
    inventory = write_inventory(dev, role_map)
    env = dev_ansible_env(root, strategy)
    if changes_file is not None:
        env.update(changes_env(changes_file))
    argv = [venv_bin("ansible-playbook"), "-i", str(inventory), str(img.playbook)]
    if skip_tags:
        argv += ["--skip-tags", ",".join(skip_tags)]
    playbook = img.playbook.relative_to(root) if img.playbook.is_relative_to(root) else img.playbook
    tools.log("converge", f"{playbook} -> {dev.name} ({dev.machine.url()})")
    t = time.monotonic()
    try:
        tools.run(argv, prefix="ansible", env=env, cwd=root)
    except ToolError as e:
        raise GoldsmithError(
            f"converge of {dev.name} failed: ansible-playbook exit code {e.code}"
        ) from None
    ansible_seconds = time.monotonic() - t
    result = Converge(round(ansible_seconds, 1), round(time.monotonic() - started, 1))
    tools.log(
        "converge",
        f"ansible-playbook ran {result.ansible_seconds:.1f}s; "
        f"goldsmith added {result.total_seconds - result.ansible_seconds:.1f}s",
    )
    return result


@dataclass(frozen=True)
class ChangedTask:
    """A task that reported a change, where a reviewer finds it."""

    host: str
    role: str | None
    task: str
    handler: bool = False
    tags: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"{self.role} : {self.task}" if self.role else self.task
        kind = "handler" if self.handler else "task"
        return f"{kind} [{where}] on {self.host}"


@dataclass
class Changes:
    """What the idempotence converge changed: counted, and exempted by tag."""

    changed: list[ChangedTask] = field(default_factory=list)
    exempt: list[ChangedTask] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)  # Ansible's own recap


def parse_changes(lines: list[str], exempt_tags: tuple[str, ...] = EXEMPT_TAGS) -> Changes:
    """Read the goldsmith_changes callback's JSON lines into changed and exempt tasks.

    Raises if the callback did not run (no start or stats event) or if Ansible's recap
    counts changes the callback did not see: an idempotence check must never pass blind.
    """
    events = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            raise GoldsmithError(f"changes record line {n} is not JSON: {line[:200]!r}") from None
    kinds = [e.get("event") for e in events]
    if "start" not in kinds or "stats" not in kinds:
        raise GoldsmithError(
            f"the {CALLBACK} callback recorded no complete run "
            f"(events: {', '.join(map(str, kinds)) or 'none'}); cannot tell what changed"
        )
    out = Changes()
    for e in events:
        if e["event"] == "stats":
            for host, n in e["changed"].items():
                out.counted[host] = out.counted.get(host, 0) + int(n)
        elif e["event"] == "changed":
            task = ChangedTask(
                host=e["host"],
                role=e.get("role"),
                task=e["task"],
                handler=bool(e.get("handler")),
                tags=tuple(e.get("tags") or ()),
            )
            (out.exempt if set(task.tags) & set(exempt_tags) else out.changed).append(task)
    seen: dict[str, int] = {}
    for t in out.changed + out.exempt:
        seen[t.host] = seen.get(t.host, 0) + 1
    for host, n in out.counted.items():
        if n > seen.get(host, 0):
            raise GoldsmithError(
                f"Ansible counted {n} change(s) on {host} but only {seen.get(host, 0)} "
                "were recorded; cannot tell which tasks changed"
            )
    return out


def idempotence(
    root: Path,
    image: str | None = None,
    name: str | None = None,
    strategy: str = DEFAULT_STRATEGY,
) -> Changes:
    """Converge again, every layer's playbook (a layered image's parents' first: the VM
    holds them all); raise listing every task that changed (exempt tags skipped)."""
    dev = find(root, image, name)
    changes_file = dev.machine.dir / "changes.jsonl"
    changes_file.unlink(missing_ok=True)
    tools.log(
        "idempotence", f"second converge of {dev.name}; exempt tags: {', '.join(EXEMPT_TAGS)}"
    )
    for layer in _layers(root, dev.image):
        converge(
            root,
            dev.image,
            dev.name,
            skip_tags=EXEMPT_TAGS,
            changes_file=changes_file,
            layer=layer,
            strategy=strategy,
        )
    lines = changes_file.read_text().splitlines() if changes_file.is_file() else []
    changes = parse_changes(lines)
    for t in changes.exempt:
        tools.log("idempotence", f"exempt (tagged): {t}")
    if changes.changed:
        raise GoldsmithError(
            f"idempotence: {len(changes.changed)} task(s) changed on the second converge "
            f"(tag a task {EXEMPT_TAGS[0]} to exempt it):\n  "
            + "\n  ".join(str(t) for t in changes.changed)
        )
    tools.log("idempotence", "passed: the second converge changed nothing")
    return changes


# --- specs ------------------------------------------------------------------------------


def verify(root: Path, image: str | None = None, name: str | None = None) -> spec.SpecResult:
    """Run the specs of the image's roles against its dev VM, after its parents' for a
    layered image (each read with its own playbook's vars); JUnit in build/dev/."""
    dev = find(root, image, name)
    layers = _layers(root, dev.image)
    for _, role_map in layers:
        spec.report_coverage(role_map)
    junit = build_dir(root) / "dev" / f"{dev.name}-junit.xml"
    result = spec.run_layers(
        [spec.Layer(i.name, m.playbook, list(m.specs.values())) for i, m in layers],
        hosts=dev.machine.url(),
        ssh_key=dev.machine.key,
        junit=junit,
        root=root,
        suite=f"verify-{dev.name}",
    )
    if result is None:
        raise GoldsmithError(f"{dev.image}: none of its roles has a spec in tests/spec/")
    _raise_failures(result, dev.name)
    tools.log("verify", f"{result.passed} passed; JUnit: {_rel(junit, root)}")
    return result


def _raise_failures(result: spec.SpecResult, what: str) -> None:
    if not result.ok:
        failures = result.failures or ["no spec passed"]
        raise GoldsmithError(f"{what}: {result.failed} spec(s) failed:\n  " + "\n  ".join(failures))


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
