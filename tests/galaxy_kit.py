"""Collections the tests build themselves, with `ansible-galaxy collection build`.

Two collections, as a platform team's third-party content looks:

    acme.common  role `motd` (writes /etc/acme-motd from its default `motd_text`) and a
                 module `acme.common.stamp` (writes a text to a file, idempotent)
    acme.web     role `site`: a meta dependency on acme.common.motd (another collection's
                 role) and a task using acme.common.stamp; galaxy.yml depends on
                 acme.common >=1.0.0
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import yaml

from goldsmith.paths import venv_bin

STAMP_MODULE = '''\
#!/usr/bin/python
DOCUMENTATION = r"""
module: stamp
short_description: Write a text to a file
options:
  path: {type: path, required: true, description: the file}
  text: {type: str, required: true, description: its content}
"""
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True},
                       "text": {"type": "str", "required": True}},
        supports_check_mode=True,
    )
    path, text = module.params["path"], module.params["text"] + "\\n"
    try:
        with open(path) as f:
            changed = f.read() != text
    except FileNotFoundError:
        changed = True
    if changed and not module.check_mode:
        with open(path, "w") as f:
            f.write(text)
    module.exit_json(changed=changed, path=path)


if __name__ == "__main__":
    main()
'''

ROLE_META = {
    "galaxy_info": {
        "author": "acme",
        "description": "a test role",
        "license": "MIT",
        "min_ansible_version": "2.15",
        "platforms": [{"name": "Debian", "versions": ["bookworm"]}],
    }
}


def _write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def collection_source(
    where: Path,
    namespace: str,
    name: str,
    version: str,
    files: dict[str, str],
    dependencies: dict[str, str] | None = None,
) -> Path:
    """A collection's source folder (galaxy.yml and `files`) at where/<namespace>/<name>."""
    folder = where / namespace / name
    galaxy = {
        "namespace": namespace,
        "name": name,
        "version": version,
        "readme": "README.md",
        "authors": ["acme"],
        "license": ["MIT"],
        "dependencies": dependencies or {},
        "build_ignore": [],
    }
    _write(folder, {"galaxy.yml": yaml.safe_dump(galaxy), "README.md": f"{namespace}.{name}\n"})
    _write(folder, {"meta/runtime.yml": "requires_ansible: '>=2.15.0'\n", **files})
    return folder


def build(source: Path, out: Path) -> Path:
    """`ansible-galaxy collection build`: the tarball's path."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            venv_bin("ansible-galaxy"),
            "collection",
            "build",
            "--force",
            "--output-path",
            out,
            source,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    info = yaml.safe_load((source / "galaxy.yml").read_text())
    return out / f"{info['namespace']}-{info['name']}-{info['version']}.tar.gz"


def acme_common(
    where: Path, version: str = "1.0.0", motd: str = "built from reviewed code"
) -> Path:
    return collection_source(
        where,
        "acme",
        "common",
        version,
        {
            "plugins/modules/stamp.py": STAMP_MODULE,
            "roles/motd/meta/main.yml": yaml.safe_dump(ROLE_META),
            "roles/motd/defaults/main.yml": f"---\nmotd_text: {motd!r}\n",
            "roles/motd/tasks/main.yml": """\
                ---
                - name: Write the message of the day
                  ansible.builtin.copy:
                    dest: /etc/acme-motd
                    content: "{{ motd_text }}\\n"
                    mode: "0644"
                """,
        },
    )


def acme_web(where: Path, version: str = "1.0.0") -> Path:
    meta = {**ROLE_META, "dependencies": ["acme.common.motd"]}
    return collection_source(
        where,
        "acme",
        "web",
        version,
        {
            "roles/site/meta/main.yml": yaml.safe_dump(meta),
            "roles/site/defaults/main.yml": "---\nsite_name: acme-site\n",
            "roles/site/tasks/main.yml": """\
                ---
                - name: Stamp the site name with acme.common's module
                  acme.common.stamp:
                    path: /etc/acme-site
                    text: "{{ site_name }}"
                """,
        },
        dependencies={"acme.common": ">=1.0.0"},
    )


def add_acme(project: Path, common_version: str = "1.0.0") -> Path:
    """acme.common as a tarball and acme.web as a folder in `project`/thirdparty/, both in
    its requirements.yml; returns the tarball."""
    src = project / "thirdparty"
    tarball = build(acme_common(src / "src", common_version), src)
    acme_web(src)
    (project / "requirements.yml").write_text(
        "---\ncollections:\n"
        f"  - name: thirdparty/{tarball.name}\n    type: file\n"
        "  - name: thirdparty/acme/web\n    type: dir\n"
        "roles: []\n"
    )
    return tarball


SITE_PLAYBOOK = """\
---
- name: Site
  hosts: all
  become: true
  roles:
    - acme.web.site
"""

SITE_SPEC = '''\
"""acme.web.site (a pinned collection's role): its stamp, and its dependency's motd."""


def test_site_name_is_stamped(host, defaults):
    assert host.file("/etc/acme-site").content_string == defaults["site_name"] + "\\n"


def test_motd_from_the_other_collection(host):
    assert host.file("/etc/acme-motd").content_string.strip()
'''


def add_site_image(project: Path) -> None:
    """An image `site` whose playbook applies acme.web.site, with a spec for that role."""
    (project / "playbooks/site.yml").write_text(SITE_PLAYBOOK)
    spec = project / "tests/spec/acme.web.site"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "test_site.py").write_text(SITE_SPEC)
    entry = (
        "\nimages:\n  site:\n    base: debian12\n    playbook: playbooks/site.yml\n"
        "    targets: [local]\n"
    )
    text = (project / "images.yml").read_text()
    (project / "images.yml").write_text(text.replace("\nimages:\n", entry, 1))
