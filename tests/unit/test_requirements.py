"""Third-party roles and collections: pins, the lock, resolution, specs, the fingerprint.

Real ansible-galaxy on collections the tests build (tests/galaxy_kit.py); no Galaxy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import galaxy_kit
import pytest
import yaml

from goldsmith import fingerprint, requirements, roles
from goldsmith.catalogue import load
from goldsmith.errors import GoldsmithError
from goldsmith.paths import venv_bin
from goldsmith.requirements import RequirementsError

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {"packer": "Packer v1.6.6", "ansible-core": "2.19.14"}


def copy_project(dest: Path) -> Path:
    for name in ("images.yml", "roles", "playbooks", "packer", "tests/spec", "ansible.cfg"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    return dest


def inputs_of(root: Path, image: str) -> dict[str, str]:
    img = load(root / "images.yml").image(image)
    return fingerprint.inputs(
        img, roles.resolve(img.playbook, root), root, "debian12-x", "local", TOOLS
    )


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with acme.common (tarball) and acme.web (folder) installed, lock written."""
    root = copy_project(tmp_path_factory.mktemp("acme"))
    galaxy_kit.add_acme(root)
    galaxy_kit.add_site_image(root)
    requirements.ensure(root)
    return root


@pytest.fixture
def project(acme: Path, tmp_path: Path) -> Path:
    """A copy of the acme project, installed content and lock included, to change."""
    shutil.copytree(acme, tmp_path / "p", symlinks=True)
    return tmp_path / "p"


def write_requirements(root: Path, text: str) -> None:
    (root / "requirements.yml").write_text(text)


# --- installing and the lock ---------------------------------------------------------------


def test_tarball_and_folder_install_and_the_lock_records_them(acme: Path) -> None:
    lock = yaml.safe_load((acme / "requirements.lock").read_text())
    assert set(lock["collections"]) == {"acme.common", "acme.web"}
    assert lock["collections"]["acme.common"]["version"] == "1.0.0"
    assert lock["collections"]["acme.web"]["dependencies"] == {"acme.common": ">=1.0.0"}
    installed = requirements.installed(acme)
    assert installed.folder == acme / ".galaxy"
    for name, entry in lock["collections"].items():
        assert entry["sha256"] == requirements.tree_sha(installed.collections[name].path)


def test_installed_as_the_lock_says_needs_no_source(project: Path) -> None:
    """Offline: with the lock's content installed, the tarball and folder are not needed."""
    shutil.rmtree(project / "thirdparty")
    content = requirements.ensure(project, write_lock=False)
    assert set(content.collections) == {"acme.common", "acme.web"}


def test_changed_installed_content_is_installed_again_and_checked(project: Path) -> None:
    site = project / ".galaxy/collections/ansible_collections/acme/web/roles/site"
    (site / "tasks/main.yml").write_text("---\n[]\n")
    requirements.ensure(project, write_lock=False)
    assert "acme.common.stamp" in (site / "tasks/main.yml").read_text()


def test_same_pin_other_content_is_refused(project: Path) -> None:
    (project / "thirdparty/acme/web/roles/site/defaults/main.yml").write_text("site_name: x\n")
    shutil.rmtree(project / ".galaxy")
    with pytest.raises(RequirementsError, match=r"collection acme.web 1.0.0: content differs"):
        requirements.ensure(project)


def test_a_stale_lock_is_an_error_when_locked_and_rewritten_when_not(project: Path) -> None:
    text = (project / "requirements.yml").read_text()
    write_requirements(project, text.replace("roles: []", "roles: []\n# a note\n"))
    requirements.ensure(project, write_lock=False)  # comments do not make it stale
    src = project / "thirdparty"
    bumped = galaxy_kit.build(galaxy_kit.acme_common(src / "new", "1.0.1"), src)
    write_requirements(project, text.replace("acme-common-1.0.0.tar.gz", bumped.name))
    with pytest.raises(RequirementsError, match=r"requirements.yml changed since requirements"):
        requirements.ensure(project, write_lock=False)
    requirements.ensure(project)
    lock = yaml.safe_load((project / "requirements.lock").read_text())
    assert lock["collections"]["acme.common"]["version"] == "1.0.1"


def test_content_no_longer_pinned_is_not_used(project: Path) -> None:
    (project / "requirements.yml").unlink()
    (project / "requirements.lock").unlink()
    assert requirements.ensure(project).collections == {}
    assert not (project / ".galaxy").exists()
    with pytest.raises(roles.RoleError, match="collection 'acme.web', which is not installed"):
        roles.resolve(project / "playbooks/site.yml", project)


def test_a_dependency_must_be_pinned_too(project: Path) -> None:
    write_requirements(project, "collections:\n  - name: thirdparty/acme/web\n    type: dir\n")
    with pytest.raises(
        RequirementsError, match=r"acme.web 1.0.0 needs acme.common >=1.0.0: not pinned"
    ):
        requirements.ensure(project)
    assert (project / ".galaxy/collections/ansible_collections/acme/common").is_dir()


def test_vendor_is_used_whole_and_must_match_the_lock(project: Path) -> None:
    requirements.vendor(project)
    assert (project / "vendor/collections/ansible_collections/acme/web/MANIFEST.json").is_file()
    shutil.rmtree(project / ".galaxy")
    shutil.rmtree(project / "thirdparty")  # air-gapped: only vendor/ and the lock
    assert requirements.installed(project).folder == project / "vendor"
    role_map = roles.resolve(project / "playbooks/site.yml", project)
    assert role_map.dirs["acme.web.site"].is_relative_to(project / "vendor")
    (project / "vendor/collections/ansible_collections/acme/web/README.md").write_text("x")
    with pytest.raises(RequirementsError, match=r"vendor/ does not match requirements.lock"):
        requirements.ensure(project)


def test_standalone_role_from_a_tarball(project: Path) -> None:
    role = project / "thirdparty/roles/acme_ntp"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks/main.yml").write_text("---\n- name: Noop\n  ansible.builtin.meta: noop\n")
    (role / "meta").mkdir()
    (role / "meta/main.yml").write_text(yaml.safe_dump(galaxy_kit.ROLE_META))
    subprocess.run(["tar", "czf", "acme_ntp.tar.gz", "acme_ntp"], cwd=role.parent, check=True)
    text = (project / "requirements.yml").read_text()
    write_requirements(
        project,
        text.replace(
            "roles: []", "roles:\n  - src: thirdparty/roles/acme_ntp.tar.gz\n    name: acme_ntp\n"
        ),
    )
    requirements.ensure(project)
    (project / "playbooks/ntp.yml").write_text(
        "---\n- name: Ntp\n  hosts: all\n  roles: [acme_ntp, acme.web.site]\n"
    )
    role_map = roles.resolve(project / "playbooks/ntp.yml", project)
    assert role_map.galaxy_roles == {"acme_ntp": ""}
    assert role_map.dirs["acme_ntp"] == project / ".galaxy/roles/acme_ntp"
    lock = yaml.safe_load((project / "requirements.lock").read_text())
    assert set(lock["roles"]) == {"acme_ntp"}


# --- pins ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "collections:\n  - community.general\n",
            r"requirements.yml:2: collections\[0\] "
            r"'community.general': no version; pin an exact one",
        ),
        (
            "collections:\n  - name: community.general\n    version: '>=8.0.0'\n",
            r"requirements.yml:2: collections\[0\] 'community.general': version '>=8.0.0' is a "
            r"range",
        ),
        (
            "collections:\n  - name: git+https://example.org/acme/web.git\n    version: main\n",
            r"collections\[0\] 'git\+https://example.org/acme/web.git': version 'main'; a git "
            r"source is pinned by a full 40-hex commit",
        ),
        (
            "roles:\n  - name: geerlingguy.ntp\n",
            r"requirements.yml:2: roles\[0\] "
            r"'geerlingguy.ntp': no version",
        ),
        (
            "roles:\n  - src: https://github.com/x/y.git\n    version: v1\n",
            r"roles\[0\] 'https://github.com/x/y.git': version 'v1'; a git source",
        ),
        ("collection:\n  - name: a.b\n", r"requirements.yml:1: unknown key 'collection'"),
    ],
)
def test_unpinned_requirement_is_named(tmp_path: Path, entry: str, message: str) -> None:
    write_requirements(tmp_path, entry)
    with pytest.raises(RequirementsError, match=message):
        requirements.read(tmp_path)


def test_pinned_requirements_pass(tmp_path: Path) -> None:
    write_requirements(
        tmp_path,
        "collections:\n  - name: community.general\n    version: 8.6.1\n"
        "  - name: ansible.posix\n    version: ==1.5.4\n"
        f"  - name: git+https://example.org/acme/web.git\n    version: {'a' * 40}\n"
        "roles:\n  - name: geerlingguy.ntp\n    version: 2.3.3\n",
    )
    reqs = requirements.read(tmp_path)
    assert [(r.source_type, r.version) for r in reqs] == [
        ("galaxy", "8.6.1"),
        ("galaxy", "1.5.4"),
        ("git", "a" * 40),
        ("galaxy", "2.3.3"),
    ]


def test_a_missing_tarball_is_named_when_it_must_be_installed(tmp_path: Path) -> None:
    write_requirements(tmp_path, "collections:\n  - name: gone/acme-x-1.0.0.tar.gz\n")
    with pytest.raises(
        RequirementsError,
        match=r"requirements.yml:2: .*gone/acme-x-1.0.0.tar.gz"
        r" does not exist",
    ):
        requirements.ensure(tmp_path)


# --- resolution and specs --------------------------------------------------------------------


def test_collection_role_resolves_with_its_dependency_across_collections(acme: Path) -> None:
    role_map = roles.resolve(acme / "playbooks/site.yml", acme)
    assert role_map.roles == ("acme.common.motd", "acme.web.site")
    assert role_map.collections == {"acme.common": "1.0.0", "acme.web": "1.0.0"}
    assert role_map.specs == {"acme.web.site": acme / "tests/spec/acme.web.site"}
    assert role_map.uncovered == ("acme.common.motd",)  # listed, never skipped
    assert roles.role_defaults("acme.web.site", acme) == {"site_name": "acme-site"}


def test_short_names_through_the_collections_keyword(project: Path) -> None:
    (project / "playbooks/short.yml").write_text(
        "---\n- name: Short\n  hosts: all\n  collections: [acme.web]\n  roles: [site]\n"
    )
    assert roles.resolve(project / "playbooks/short.yml", project).roles == (
        "acme.common.motd",
        "acme.web.site",
    )


def test_a_role_in_no_installed_collection_names_what_was_searched(project: Path) -> None:
    (project / "playbooks/bad.yml").write_text(
        "---\n- name: Bad\n  hosts: all\n  roles:\n    - acme.web.nosuch\n    - other.coll.x\n"
    )
    with pytest.raises(
        roles.RoleError,
        match=r"playbooks/bad.yml:5: role 'acme.web.nosuch' is not in collection acme.web "
        r"1.0.0 \(its roles: site\)",
    ):
        roles.resolve(project / "playbooks/bad.yml", project)
    (project / "playbooks/bad.yml").write_text(
        "---\n- name: Bad\n  hosts: all\n  roles:\n    - other.coll.x\n"
    )
    with pytest.raises(
        roles.RoleError,
        match=r"playbooks/bad.yml:5: collection 'other.coll', which is not installed "
        r"\(installed from requirements.yml: acme.common 1.0.0, acme.web 1.0.0\)",
    ):
        roles.resolve(project / "playbooks/bad.yml", project)


def test_a_module_from_a_collection_not_pinned_is_named(project: Path) -> None:
    (project / "roles/base/tasks/extra.yml").write_text(
        "---\n- name: Use an unpinned module\n  community.general.ufw:\n    state: enabled\n"
    )
    with pytest.raises(
        roles.RoleError,
        match=r"roles/base/tasks/extra.yml:3: 'community.general.ufw' is from collection "
        r"'community.general', which is not installed",
    ):
        roles.resolve(project / "playbooks/base.yml", project)
    # A lookup loop names its collection too (as devsec.hardening's os_hardening does).
    (project / "roles/base/tasks/extra.yml").write_text(
        "---\n- name: Loop\n  ansible.builtin.debug:\n    msg: x\n"
        "  with_community.general.flattened: [[1]]\n"
    )
    with pytest.raises(
        roles.RoleError,
        match=r"'with_community.general.flattened' is from "
        r"collection 'community.general', which",
    ):
        roles.resolve(project / "playbooks/base.yml", project)


# --- fingerprint and plain Ansible -------------------------------------------------------------


def test_bumping_a_collection_rebakes_the_images_that_use_it_and_no_other(project: Path) -> None:
    before_site, before_base = inputs_of(project, "site"), inputs_of(project, "base")
    assert "collection acme.common 1.0.0" in before_site
    assert not any(k.startswith("collection ") for k in before_base)
    src = project / "thirdparty"
    bumped = galaxy_kit.build(galaxy_kit.acme_common(src / "new", "1.0.1", motd="new"), src)
    text = (project / "requirements.yml").read_text()
    write_requirements(project, text.replace("acme-common-1.0.0.tar.gz", bumped.name))
    requirements.ensure(project)
    after_site, after_base = inputs_of(project, "site"), inputs_of(project, "base")
    assert fingerprint.of(after_site) != fingerprint.of(before_site)
    assert fingerprint.changed(before_site, after_site) == [
        "collection acme.common 1.0.0",
        "collection acme.common 1.0.1",
    ]
    assert after_base == before_base


def test_plain_ansible_playbook_finds_the_roles_and_collections(acme: Path) -> None:
    """ansible.cfg at the root: no goldsmith, no environment."""
    env = {"PATH": str(Path(venv_bin("python")).parent) + ":/usr/bin:/bin", "HOME": str(acme)}
    for playbook in ("playbooks/site.yml", "playbooks/web.yml"):
        proc = subprocess.run(
            [venv_bin("ansible-playbook"), "--syntax-check", playbook],
            cwd=acme,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_plan_of_the_real_project_needs_no_requirements(tmp_path: Path) -> None:
    """The project's own requirements.yml pins nothing: nothing installed, no lock needed."""
    root = copy_project(tmp_path / "p")
    shutil.copy(ROOT / "requirements.yml", root / "requirements.yml")
    content = requirements.ensure(root, write_lock=False)
    assert content.collections == {} and not (root / "requirements.lock").exists()
    with pytest.raises(GoldsmithError, match="is not in roles/"):
        (root / "playbooks/x.yml").write_text("---\n- hosts: all\n  roles: [nope]\n")
        roles.resolve(root / "playbooks/x.yml", root)
    assert json.loads(json.dumps(inputs_of(root, "base")))
