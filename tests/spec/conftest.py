"""Shared fixtures of the testinfra specs.

A spec lives in tests/spec/<role>/ (a third-party role's in tests/spec/<its full name>/)
and reads the values it checks from that role's defaults/main.yml, with what the image's
playbook sets for the role on top (play `vars:` and the role entry's `vars:`; the playbook
is GOLDSMITH_PLAYBOOK, which every goldsmith spec run sets): the same values the role
applies, so a changed default or playbook needs no spec edit. The role is the name of the
folder the test file is in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/spec/conftest.py -> the project root (no absolute path, no cwd assumption).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SpecDefaultsError(Exception):
    """A role's defaults cannot be read as plain values a spec can compare with."""


def role_of(test_file: Path) -> str:
    """The role a spec proves: the name of the folder its test file is in."""
    return test_file.parent.name


class Expected(dict):
    """A role's values; reading a templated one (known only on the machine) is an error.

    A spec comparing with the template text would pass or fail by accident. Templated
    values a spec does not read (e.g. OS names taken from vars/<OS>.yml) are fine.
    """

    def __init__(self, data: dict[str, Any], source: str) -> None:
        super().__init__(data)
        self.source = source

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if "{{" in yaml.safe_dump(value):
            raise SpecDefaultsError(
                f"{self.source}: key {key!r} is templated ({value!r}); specs need literal values"
            )
        return value


def _read_mapping(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecDefaultsError(f"{path}: not valid YAML: {e}") from e


def load_defaults(role: str, root: Path = PROJECT_ROOT) -> Expected:
    """The role's defaults/main.yml; a clear error naming the file if it is unusable.

    A project role's is roles/<role>/; a pinned third-party role's (its spec folder named
    by the role's full name, e.g. tests/spec/namespace.collection.role/) is where
    requirements.yml installed it, found the way goldsmith resolves playbooks.
    """
    path = root / "roles" / role / "defaults" / "main.yml"
    if not path.parent.parent.is_dir() and "." in role:
        from goldsmith.roles import RoleError, role_dir

        try:
            path = role_dir(role, root) / "defaults" / "main.yml"
        except RoleError as e:
            raise SpecDefaultsError(str(e)) from None
    if not path.is_file():
        raise SpecDefaultsError(
            f"{path}: no defaults for role {role!r} (is the spec folder named after a role?)"
        )
    data = _read_mapping(path) or {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise SpecDefaultsError(f"{path}: expected a mapping of variables, got {kind}")
    return Expected(data, str(path))


def playbook_vars(role: str, playbook: Path) -> dict[str, Any]:
    """What `playbook` sets for `role`: each applying play's `vars:`, then the entry's own."""
    from goldsmith.roles import playbook_vars as of_plays

    return of_plays(_read_mapping(playbook) or [], role)


def expected(role: str, root: Path = PROJECT_ROOT) -> Expected:
    """The role's defaults with what the image's playbook (GOLDSMITH_PLAYBOOK) sets."""
    values = load_defaults(role, root)
    source = values.source
    playbook = os.environ.get("GOLDSMITH_PLAYBOOK", "").strip()
    if playbook:
        path = Path(playbook) if Path(playbook).is_absolute() else root / playbook
        if not path.is_file():
            raise SpecDefaultsError(f"GOLDSMITH_PLAYBOOK={playbook}: no such playbook")
        values.update(playbook_vars(role, path))
        source = f"{source} with {playbook}"
    return Expected(dict(values), source)


@pytest.fixture(scope="module")
def role(request: pytest.FixtureRequest) -> str:
    """The role whose spec folder the requesting test lives in."""
    return role_of(Path(str(request.path)))


@pytest.fixture(scope="module")
def defaults(role: str) -> Expected:
    """The values the spec expects on the machine: defaults, and the playbook's on top."""
    return expected(role)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sealed: a hygiene check that only proves something on a sealed disk"
    )


# Run on the machine with its own python3 (Ansible needs it there anyway), so a spec
# checks what a client on the machine sees, without curl or a forwarded port. One python3
# gets every URL it is given (a python3 start is most of a second in an emulated guest).
_HTTP_GET = """
import json, sys, urllib.error, urllib.request
answers = []
for url in sys.argv[1:]:
    try:
        r = urllib.request.urlopen(url, timeout=10)
    except urllib.error.HTTPError as e:
        r = e
    answers.append({"status": r.status, "headers": dict(r.headers), "body": r.read().decode()})
json.dump(answers, sys.stdout)
"""


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def http_get_all(host, urls: list[str]) -> list[dict[str, Any]]:
    """GET each URL from inside the machine, one after the other, by one python3 on it:
    [{"status", "headers", "body"}, ...] in the order of `urls` (4xx/5xx included)."""
    out = host.check_output(f"python3 -c {_sh_quote(_HTTP_GET)} {' '.join(map(_sh_quote, urls))}")
    answers = json.loads(out)
    assert len(answers) == len(urls), answers
    return answers


@pytest.fixture
def http_get(host) -> Callable[[str], dict[str, Any]]:
    """GET a URL from inside the machine: {"status", "headers", "body"} (4xx/5xx included)."""

    def get(url: str) -> dict[str, Any]:
        return http_get_all(host, [url])[0]

    return get


def dpkg_installed(host, names: list[str]) -> dict[str, bool]:
    """Whether each package is installed, by one `dpkg-query -W` for them all (a dpkg-query
    start is a few tenths of a second in an emulated guest): installed as testinfra's
    `host.package(name).is_installed` decides it, a wanted state of install or hold and
    the state "ok installed"."""
    fields = "${binary:Package}\\t${Package}\\t${Status}\\n"
    query = f"dpkg-query -f '{fields}' -W " + " ".join(["%s"] * len(names))
    result = host.run_expect([0, 1], query, *names)
    installed = dict.fromkeys(names, False)
    for line in result.stdout.splitlines():
        qualified, name, status = line.split("\t")
        words = status.split()
        ok = words[:1] in (["install"], ["hold"]) and words[1:3] == ["ok", "installed"]
        for key in {qualified, name} & set(names):
            installed[key] = installed[key] or ok
    return installed
