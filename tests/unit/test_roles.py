"""Role resolution: which roles a playbook applies, in order, and which specs prove them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from goldsmith import roles
from goldsmith.roles import Play, RoleError

if TYPE_CHECKING:
    from conftest import Project


def test_roles_and_specs_of_a_simple_playbook(project: Project) -> None:
    project.role("common")
    project.role("nginx")
    pb = project.playbook("web", "common", "nginx")
    rm = roles.resolve(pb, project.root)
    assert rm.playbook == pb
    assert rm.plays == (Play(hosts="all", roles=("common", "nginx")),)
    assert rm.roles == ("common", "nginx")
    assert rm.specs == {
        "common": project.root / "tests/spec/common",
        "nginx": project.root / "tests/spec/nginx",
    }
    assert rm.uncovered == ()


def test_relative_playbook_path_is_under_root(project: Project) -> None:
    project.role("common")
    project.playbook("web", "common")
    rm = roles.resolve(project.root / "playbooks/web.yml", project.root)
    assert roles.resolve(Path("playbooks/web.yml"), project.root) == rm


def test_nested_dependencies_come_first_and_once(project: Project) -> None:
    project.role("base")
    project.role("tls", deps=("base",))
    project.role("proxy", deps=("tls", "base"))
    project.role("nginx", deps=("proxy",))
    project.role("app", deps=("tls",))
    pb = project.playbook("web", "nginx", "app")
    rm = roles.resolve(pb, project.root)
    assert rm.roles == ("base", "tls", "proxy", "nginx", "app")


def test_role_references_as_mappings(project: Project) -> None:
    for name in ("a", "b", "c"):
        project.role(name)
    pb = project.playbook(
        "web",
        text="""\
        - hosts: web
          roles:
            - role: a
              tags: [a]
            - name: b
            - c
        """,
    )
    assert roles.resolve(pb, project.root).plays == (Play(hosts="web", roles=("a", "b", "c")),)


def test_include_and_import_role_in_tasks(project: Project) -> None:
    for name in ("early", "main", "blocked", "late", "legacy"):
        project.role(name)
    project.role("dep")
    project.role("included", deps=("dep",))
    pb = project.playbook(
        "web",
        text="""\
        - name: Web
          hosts: [web, db]
          post_tasks:
            - name: Late
              ansible.builtin.include_role:
                name: late
          tasks:
            - name: Included
              ansible.builtin.include_role:
                name: included
            - name: In a block
              block:
                - name: Blocked
                  import_role:
                    name: blocked
              rescue:
                - name: Old form
                  include_role: name=legacy
          roles:
            - main
          pre_tasks:
            - name: Early
              ansible.builtin.import_role:
                name: early
        """,
    )
    rm = roles.resolve(pb, project.root)
    # Ansible's order: pre_tasks, roles, tasks, post_tasks; dependencies before their role.
    assert rm.plays == (
        Play(
            hosts="web,db",
            roles=("early", "main", "dep", "included", "blocked", "legacy", "late"),
        ),
    )


def test_roles_included_by_a_role_and_by_task_files(project: Project) -> None:
    project.role("helper")
    project.role("other")
    project.role(
        "app",
        tasks="""\
        - name: Use the helper
          ansible.builtin.include_role:
            name: helper
        """,
    )
    project.write(
        "playbooks/tasks/extra.yml",
        """\
        - name: Other
          ansible.builtin.import_role:
            name: other
        """,
    )
    pb = project.playbook(
        "web",
        text="""\
        - hosts: all
          roles: [app]
          tasks:
            - name: Extra
              ansible.builtin.import_tasks: tasks/extra.yml
        """,
    )
    assert roles.resolve(pb, project.root).roles == ("app", "helper", "other")


def test_import_playbook_is_relative_to_the_playbook(project: Project) -> None:
    project.role("common")
    project.role("nginx")
    project.playbook("base", "common")
    pb = project.playbook(
        "web",
        text="""\
        - ansible.builtin.import_playbook: base.yml
        - hosts: web
          roles: [nginx, common]
        """,
    )
    rm = roles.resolve(pb, project.root)
    assert rm.plays == (
        Play(hosts="all", roles=("common",)),
        Play(hosts="web", roles=("nginx", "common")),
    )
    assert rm.roles == ("common", "nginx")


def test_import_playbook_cycle(project: Project) -> None:
    project.playbook("a", text="- import_playbook: b.yml\n")
    pb = project.playbook("b", text="- import_playbook: a.yml\n")
    with pytest.raises(RoleError, match=r"import_playbook cycle: playbooks/b.yml -> "
                       r"playbooks/a.yml -> playbooks/b.yml"):  # fmt: skip
        roles.resolve(pb, project.root)


def test_unknown_role_names_playbook_line_and_role(project: Project) -> None:
    project.role("common")
    pb = project.playbook("web", "common", "haproxy")
    with pytest.raises(RoleError) as err:
        roles.resolve(pb, project.root)
    line = project.line("playbooks/web.yml", "haproxy")
    assert str(err.value).startswith(f"playbooks/web.yml:{line}: role 'haproxy' is not in roles/")
    assert "(roles there: common)" in str(err.value)


def test_unknown_dependency_names_the_meta_file(project: Project) -> None:
    project.role("nginx", deps=("tls",))
    pb = project.playbook("web", "nginx")
    with pytest.raises(RoleError, match=r"roles/nginx/meta/main.yml:2: role 'tls' is not in"):
        roles.resolve(pb, project.root)


def test_dependency_cycle(project: Project) -> None:
    project.role("a", deps=("b",))
    project.role("b", deps=("c",))
    project.role("c", deps=("a",))
    pb = project.playbook("web", "a")
    with pytest.raises(RoleError) as err:
        roles.resolve(pb, project.root)
    assert "role dependency cycle: a -> b -> c -> a" in str(err.value)
    assert str(err.value).startswith("roles/c/meta/main.yml:2:")


def test_role_including_itself_is_a_cycle(project: Project) -> None:
    project.role(
        "loop",
        tasks="- name: Again\n  ansible.builtin.include_role:\n    name: loop\n",
    )
    with pytest.raises(RoleError, match="role dependency cycle: loop -> loop"):
        roles.resolve(project.playbook("web", "loop"), project.root)


def test_templated_role_name_is_refused(project: Project) -> None:
    pb = project.playbook(
        "web",
        text="""\
        - hosts: all
          tasks:
            - name: Dynamic
              ansible.builtin.include_role:
                name: "{{ which }}"
        """,
    )
    with pytest.raises(RoleError, match=r"playbooks/web.yml:5: .*templated role name"):
        roles.resolve(pb, project.root)


def test_role_without_spec_is_uncovered(project: Project) -> None:
    project.role("common")
    project.role("nospec", spec=False)
    project.role("emptyspec", spec=False)
    project.write("tests/spec/emptyspec/helpers.py", "X = 1\n")
    pb = project.playbook("web", "common", "nospec", "emptyspec")
    rm = roles.resolve(pb, project.root)
    assert rm.roles == ("common", "nospec", "emptyspec")
    assert list(rm.specs) == ["common"]
    assert rm.uncovered == ("nospec", "emptyspec")


def test_missing_and_broken_playbooks(project: Project) -> None:
    with pytest.raises(RoleError, match="playbooks/none.yml: the playbook does not exist"):
        roles.resolve(project.root / "playbooks/none.yml", project.root)
    project.write("playbooks/bad.yml", "- hosts: all\n  roles: [a\n")
    with pytest.raises(RoleError, match=r"playbooks/bad.yml:3: not valid YAML"):
        roles.resolve(project.root / "playbooks/bad.yml", project.root)
    project.write("playbooks/map.yml", "hosts: all\n")
    with pytest.raises(RoleError, match="must be a list of plays"):
        roles.resolve(project.root / "playbooks/map.yml", project.root)


def test_ansible_tags_are_read(project: Project) -> None:
    project.role("common")
    pb = project.playbook(
        "web",
        text="""\
        - hosts: all
          vars:
            secret: !unsafe "{{ not a template }}"
          roles: [common]
        """,
    )
    assert roles.resolve(pb, project.root).roles == ("common",)


def test_role_defaults(project: Project) -> None:
    project.role(
        "nginx",
        defaults="""\
        # The port nginx listens on.
        nginx_port: 8080
        nginx_sites: [default]
        nginx_banner: !unsafe "{{ raw }}"
        """,
    )
    project.role("bare")
    assert roles.role_defaults("nginx", project.root) == {
        "nginx_port": 8080,
        "nginx_sites": ["default"],
        "nginx_banner": "{{ raw }}",
    }
    assert roles.role_defaults("bare", project.root) == {}
    assert roles.role_defaults("absent", project.root) == {}
    project.write("roles/bad/defaults/main.yml", "- a list\n")
    with pytest.raises(RoleError, match="roles/bad/defaults/main.yml: role defaults must be"):
        roles.role_defaults("bad", project.root)


# The project's own roles keep the conventions the README's Roles section describes.

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_ROLES = sorted(p.name for p in (PROJECT_ROOT / "roles").iterdir() if p.is_dir())


def _tasks(items: list) -> Iterator[dict]:
    """Every task in a task file, the ones inside blocks included."""
    for task in items or []:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key) or [])


@pytest.mark.parametrize(
    "playbook", sorted((PROJECT_ROOT / "playbooks").glob("*.yml")), ids=lambda p: p.name
)
def test_every_role_the_projects_playbooks_apply_has_a_spec(playbook: Path) -> None:
    uncovered = roles.resolve(playbook, PROJECT_ROOT).uncovered
    assert uncovered == (), f"roles without tests/spec/<role>/test_*.py: {uncovered}"


@pytest.mark.parametrize("role", PROJECT_ROLES)
def test_os_names_reach_the_role_through_its_defaults(role: str) -> None:
    """vars/<OS>.yml outranks play vars: only `__` names there, each read by a default."""
    defaults = roles.role_defaults(role, PROJECT_ROOT)
    for vars_file in sorted((PROJECT_ROOT / "roles" / role / "vars").glob("*.yml")):
        for name in yaml.safe_load(vars_file.read_text()) or {}:
            assert name.startswith(f"__{role}_"), f"{vars_file.name}: {name}"
            assert defaults.get(name[2:]) == f"{{{{ {name} }}}}", f"defaults lack {name[2:]}"


@pytest.mark.parametrize("role", PROJECT_ROLES)
def test_roles_that_install_packages_get_fresh_lists_from_apt_ready(role: str) -> None:
    """Package lists are apt_ready's job, once per play; the others only install."""
    role_dir = PROJECT_ROOT / "roles" / role
    installs = [
        task["ansible.builtin.apt"]
        for task_file in sorted((role_dir / "tasks").glob("*.yml"))
        for task in _tasks(yaml.safe_load(task_file.read_text()))
        if "ansible.builtin.apt" in task
    ]
    if role == "apt_ready" or not installs:
        return
    meta = yaml.safe_load((role_dir / "meta" / "main.yml").read_text()) or {}
    deps = [d if isinstance(d, str) else d.get("role") for d in meta.get("dependencies") or []]
    assert "apt_ready" in deps, f"{role} installs packages: list apt_ready in meta/main.yml"
    refreshes = any(i.get("update_cache") or i.get("cache_valid_time") for i in installs)
    assert not refreshes, f"{role} refreshes the package lists itself: apt_ready does that"
