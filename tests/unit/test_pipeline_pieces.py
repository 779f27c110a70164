"""The pipeline's pieces that only real bakes exercised before: fingerprint, outputs,
settings, the manifest, Packer's phase timings, JUnit merging, the work folder sweep."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from goldsmith import fingerprint, outputs, packer, spec, workdir
from goldsmith.catalogue import load
from goldsmith.errors import GoldsmithError
from goldsmith.roles import resolve
from goldsmith.settings import Settings
from goldsmith.targets import contract
from goldsmith.targets.local import Local

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"packer": "Packer v1.6.6", "ansible-core": "2.19.14"}


def copy_project(dest: Path) -> Path:
    for name in ("images.yml", "roles", "playbooks", "packer", "tests/spec"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def inputs_of(root: Path, image: str = "web") -> dict[str, str]:
    img = load(root / "images.yml").image(image)
    return fingerprint.inputs(img, resolve(img.playbook, root), root, "debian12-x", "local", TOOLS)


def test_fingerprint_is_the_same_in_any_folder(tmp_path: Path) -> None:
    a = inputs_of(copy_project(tmp_path / "a"))
    b = inputs_of(copy_project(tmp_path / "somewhere" / "else"))
    assert a == b and fingerprint.of(a) == fingerprint.of(b)
    assert "playbooks/web.yml" in a and "roles/nginx/tasks/main.yml" in a
    assert not any(str(tmp_path) in k for k in a)
    # The checkout goldsmith itself is installed from (editable) names its files alike.
    assert inputs_of(ROOT) == a
    assert "goldsmith/data/seal.sh" in a and not any(k.startswith("src/") for k in a)


def test_fingerprint_names_what_changed(tmp_path: Path) -> None:
    root = copy_project(tmp_path)
    before = inputs_of(root)
    with (root / "roles/nginx/defaults/main.yml").open("a") as f:
        f.write("# changed\n")
    (root / "tests/spec/nginx/test_new.py").write_text("def test_x(host):\n    pass\n")
    after = inputs_of(root)
    assert fingerprint.of(before) != fingerprint.of(after)
    assert fingerprint.changed(before, after) == [
        "roles/nginx/defaults/main.yml",
        "tests/spec/nginx/test_new.py",
    ]
    assert fingerprint.changed(None, after) is None
    # Another target or base is another fingerprint.
    img = load(root / "images.yml").image("web")
    rm = resolve(img.playbook, root)
    other = fingerprint.inputs(img, rm, root, "debian12-x", "twin", TOOLS)
    assert fingerprint.changed(after, other) == ["target"]


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "d" / "manifest.json"
    outputs.write_json(path, {"a": 1})
    outputs.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]


def test_read_proven_reports_corrupt_state_in_one_line(tmp_path: Path, capsys) -> None:
    d = outputs.target_dir(tmp_path, "web", "local")
    d.mkdir(parents=True)
    (d / "manifest.json").write_text('{"fingerprint": "ab')
    assert outputs.read_proven(tmp_path, "web", "local") is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "build/web/local/manifest.json is unreadable" in out[0]
    (d / "manifest.json").write_text(json.dumps({"fingerprint": "ab", "artifact": "web.qcow2"}))
    assert outputs.read_proven(tmp_path, "web", "local") is None
    assert "web.qcow2, which is missing" in capsys.readouterr().out
    (d / "web.qcow2").write_bytes(b"disk")
    proven = outputs.read_proven(tmp_path, "web", "local")
    assert proven is not None and proven.fingerprint == "ab"


def test_commit_swaps_whole_folders(tmp_path: Path) -> None:
    dest = tmp_path / "build/web/local"
    first = tmp_path / "stage1"
    first.mkdir()
    (first / "manifest.json").write_text("1")
    outputs.commit(first, dest)
    second = tmp_path / "stage2"
    second.mkdir()
    (second / "manifest.json").write_text("2")
    (second / "web.qcow2").write_text("disk")
    outputs.commit(second, dest)
    assert (dest / "manifest.json").read_text() == "2" and (dest / "web.qcow2").is_file()
    assert not first.exists() and not second.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["local"]


def test_second_build_of_an_image_fails_clearly(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from goldsmith import outputs\n"
        "with outputs.image_lock(Path(sys.argv[1]), 'web'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(30)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(GoldsmithError, match=rf"another build .* \(pid {holder.pid}\)"):
            with outputs.image_lock(tmp_path, "web"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with outputs.image_lock(tmp_path, "web"):  # a dead holder holds nothing
        pass


def test_settings_from_configuration() -> None:
    s = Settings.from_config(
        {"accelerator": "tcg", "publish": "0", "ami_wait_seconds": "60", "aws_ssh_cidrs": ""}
    )
    assert (s.accelerator, s.publish, s.ami_wait_seconds, s.aws_ssh_cidrs) == (
        "tcg",
        False,
        60,
        (),
    )
    with pytest.raises(GoldsmithError, match="goldsmith.accelerator='hvf'"):
        Settings.from_config({"accelerator": "hvf"})
    with pytest.raises(GoldsmithError, match="goldsmith.publsh: no such setting"):
        Settings.from_config({"publsh": False})
    with pytest.raises(GoldsmithError, match="ami_wait_seconds='soon': expected a whole number"):
        Settings.from_config({"ami_wait_seconds": "soon"})
    # The defaults are what Invoke's configuration holds (no lists: env overrides cast).
    assert Settings.from_config(Settings.defaults()) == Settings()


def test_manifest_has_one_shape(tmp_path: Path) -> None:
    cat = load(ROOT / "images.yml")
    img = cat.image("web")
    plan = contract.Plan(ROOT, cat, img, "local", resolve(img.playbook, ROOT))
    m = contract.manifest(
        plan,
        build_id="web-1",
        git={"sha": "abc", "dirty": False},
        fingerprint="f" * 64,
        inputs={"target": "local"},
        source=contract.Source("debian12-x", {"checksum": "none"}),
        artifact="web.qcow2",
    )
    assert m["image"] == "web" and m["target"] == "local" and m["artifact"] == "web.qcow2"
    assert m["base"] == {"name": "debian12", "kind": "debootstrap", "id": "debian12-x"} | {
        "checksum": "none"
    }
    assert "nginx" in m["roles"] and m["inputs"] == {"target": "local"}


def test_packer_phase_timings() -> None:
    """Each phase from the line that starts it to the next one's; a local bake's spec step
    reads the machine's listening sockets beside its specs' start, so its lines are spec
    time (goldsmith.spec.main)."""
    clock = iter([0.0, 10.0, 70.0, 80.0])
    t = packer.Timings(clock=lambda: next(clock))
    for line in (
        "==> goldsmith.qemu.local: Waiting for SSH to become available...",
        "==> goldsmith.qemu.local: Provisioning with Ansible...",
        "==> goldsmith.qemu.local: Running local shell script: /tmp/x",
        "    goldsmith.qemu.local: [listening] reading the sockets the machine listens on",
        "    goldsmith.qemu.local: [listening] 4 listening sockets read",
        "==> goldsmith.qemu.local: Gracefully halting virtual machine...",
    ):
        t.line(line)
    phases = t.finish()
    assert "listening" not in phases
    assert phases["provision"] == 60.0
    assert phases["spec"] == 10.0


def test_merge_junit(tmp_path: Path) -> None:
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    a.write_text('<testsuite name="spec"><testcase classname="x" name="ok"/></testsuite>')
    b.write_text(
        '<testsuites><testsuite name="hygiene"><testcase classname="h" name="bad">'
        "<failure/></testcase></testsuite></testsuites>"
    )
    out = tmp_path / "junit.xml"
    spec.merge_junit([a, b, tmp_path / "missing.xml"], out)
    result = spec.parse_junit(out)
    assert (result.passed, result.failed, result.failures) == (1, 1, ["h::bad"])
    assert 'name="hygiene"' in out.read_text()


def test_sweep_takes_dead_builds_and_leaves_live_ones(tmp_path: Path) -> None:
    live = workdir.create(tmp_path, "web-live")
    dead = workdir.create(tmp_path, "web-dead")
    child = subprocess.Popen(["true"])
    child.wait()
    dead.owner["pid"] = child.pid  # a process that is gone
    dead.record()
    (dead.path / "build_key").write_text("secret")
    found = dict(workdir.dead(tmp_path))
    assert list(found) == [dead.path]
    done = workdir.sweep_local(tmp_path, dead.path, found[dead.path])
    assert done == ["work folder .work-web-dead"]
    assert not dead.path.exists() and live.path.exists()
    assert oct(live.path.stat().st_mode & 0o777) == "0o700"
    # A reused pid is not the owner: its start time differs.
    live.owner["start"] = "1"
    live.record()
    assert [p for p, _ in workdir.dead(tmp_path)] == [live.path]
    assert workdir.alive({"pid": os.getpid(), "start": workdir._start_ticks(os.getpid())})


def test_preflight_rejects_a_region_botocore_does_not_know(tmp_path: Path) -> None:
    from goldsmith.targets import amazon

    root = copy_project(tmp_path)
    text = (root / "images.yml").read_text()
    assert "eu-central-1" in text
    (root / "images.yml").write_text(text.replace("eu-central-1", "eu-centrall-1", 1))
    cat = load(root / "images.yml")
    img = cat.image("base")
    plan = contract.Plan(root, cat, img, "aws", cat.role_map(img))
    with pytest.raises(GoldsmithError, match="'eu-centrall-1' is not an EC2 region botocore"):
        amazon.Amazon("aws").check(plan)
    ok = contract.Plan(
        ROOT,
        load(ROOT / "images.yml"),
        load(ROOT / "images.yml").image("base"),
        "aws",
        resolve(img.playbook, root),
    )
    amazon.Amazon("aws").check(ok)


def layer_web_on_base(root: Path) -> Path:
    """The copy's web layered on base: `parent: base`, and a playbook of nginx alone."""
    cat = root / "images.yml"
    text = cat.read_text()
    web = text.index("  web:\n")  # the last entry: it is replaced whole
    layered = "  web:\n    parent: base\n    playbook: playbooks/web.yml\n    targets: [local]\n"
    cat.write_text(text[:web] + layered)
    (root / "playbooks/web.yml").write_text(
        "---\n- name: Web\n  hosts: all\n  become: true\n  roles: [nginx]\n"
    )
    return root


def test_a_layered_image_is_fingerprinted_with_its_parent(tmp_path: Path) -> None:
    """web is layered on base: a change in nginx rebakes web only, one in base both."""
    from goldsmith import pipeline

    root = layer_web_on_base(copy_project(tmp_path))

    def fingerprints() -> dict[str, str]:
        return {r["image"]: r["fingerprint"] for r in pipeline.plan_all(root, target="local")}

    first = fingerprints()
    web = pipeline.plan(root, "web", "local")
    assert [x.image.name for x in web.layers] == ["base", "web"]
    inputs = pipeline.decide(web, Local(), pipeline.source_of(web, Local(), prepare=False)).inputs
    assert inputs["base"] == f"image base {first['base']}"
    # web's own playbook applies nginx, not base's roles again.
    assert "roles/nginx/tasks/main.yml" in inputs and "roles/base/tasks/main.yml" not in inputs

    with (root / "roles/nginx/tasks/main.yml").open("a") as f:
        f.write("# edited\n")
    after_nginx = fingerprints()
    assert after_nginx["base"] == first["base"] and after_nginx["web"] != first["web"]

    with (root / "roles/base/tasks/main.yml").open("a") as f:
        f.write("# edited\n")
    after_base = fingerprints()
    assert after_base["base"] != after_nginx["base"] and after_base["web"] != after_nginx["web"]

    # A bake of web needs base's proven build with base's current inputs.
    with pytest.raises(GoldsmithError, match=r"web is layered on base, which has no proven "):
        pipeline.source_of(web, Local(), prepare=True)


@pytest.mark.parametrize("jobs", [1, 2])
def test_build_all_orders_the_layers_and_skips_the_children_of_a_failure(
    tmp_path: Path, jobs: int
) -> None:
    """A parent that fails (here in pre-flight: a spec that does not load, so no VM starts)
    leaves its children unbuilt; with --jobs above 1 each bake is a process of its own."""
    from goldsmith import graph

    root = layer_web_on_base(copy_project(tmp_path))
    assert graph.order(load(root / "images.yml"), ["web"]) == ["base", "web"]
    (root / "tests/spec/base/test_broken.py").write_text("def test_x(host:\n    pass\n")
    outcomes = graph.build_all(root, ["web"], "local", jobs=jobs)
    assert [(o.image, o.state) for o in outcomes] == [("base", "failed"), ("web", "skipped")]
    assert "the specs do not load" in outcomes[0].detail
    assert outcomes[1].detail == "its parent base failed"
    assert not (root / "build/base").exists() and not (root / "build/web").exists()


def test_reusing_the_build_recorded_here_keeps_its_manifest(tmp_path: Path) -> None:
    """On aws/twin a reuse finds the proven AMI by tag. When the manifest here records
    that very build (a parent baked earlier in the same CI run, reused by its child's
    chain), it stays whole: timings, specs. Another build with the same inputs gets a
    reused record, which keeps the input hashes recorded here."""
    from goldsmith.targets import amazon

    root = copy_project(tmp_path)
    cat = load(root / "images.yml")
    img = cat.image("base")
    plan = contract.Plan(root, cat, img, "twin", cat.role_map(img), Settings(publish=False))
    twin = amazon.Amazon("twin")
    baked = {
        "image": "base",
        "fingerprint": "f" * 16,
        "build_id": "base-20261203T000000Z-1",
        "timings": {"total": 600.0},
        "specs": {"live": {"passed": 30}},
        "inputs": {"roles/base/tasks/main.yml": "abc"},
        "git": {"sha": "0" * 40},
    }
    path = outputs.target_dir(root, "base", "twin") / outputs.MANIFEST
    outputs.write_json(path, baked)
    proven = {
        "fingerprint": baked["fingerprint"],
        "build_id": baked["build_id"],
        "ami": "ami-0123456789abcdef0",
        "region": "eu-west-1",
        "git": baked["git"],
        "roles": ["base"],
    }
    assert twin.reuse(plan, proven, contract.Source("debian")) == path
    assert json.loads(path.read_text()) == baked

    other = proven | {"build_id": "base-20261203T010000Z-2", "ami": "ami-0fedcba987654321f"}
    twin.reuse(plan, other, contract.Source("debian"))
    record = json.loads(path.read_text())
    assert record["reused"] is True and record["ami"] == other["ami"]
    assert record["build_id"] == other["build_id"] and "timings" not in record
    assert record["inputs"] == baked["inputs"]
