"""Shared fixtures of the testinfra specs.

A spec lives in tests/spec/<role>/ and reads the values it checks from that role's
roles/<role>/defaults/main.yml, the same values the role applies, so a changed default
needs no spec edit. The role is the name of the folder the test file is in.
"""

from __future__ import annotations

import json
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


def load_defaults(role: str, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """roles/<role>/defaults/main.yml as a dict; a clear error naming file and key if unusable."""
    path = root / "roles" / role / "defaults" / "main.yml"
    if not path.is_file():
        raise SpecDefaultsError(
            f"{path}: no defaults for role {role!r} (is the spec folder named after a role?)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecDefaultsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise SpecDefaultsError(f"{path}: expected a mapping of variables, got {kind}")
    for key, value in data.items():
        # A templated default is only known on the target; a spec would compare against
        # the template text and pass or fail by accident.
        if "{{" in yaml.safe_dump(value):
            raise SpecDefaultsError(
                f"{path}: key {key!r} is templated ({value!r}); specs need literal defaults"
            )
    return data


@pytest.fixture(scope="module")
def role(request: pytest.FixtureRequest) -> str:
    """The role whose spec folder the requesting test lives in."""
    return role_of(Path(str(request.path)))


@pytest.fixture(scope="module")
def defaults(role: str) -> dict[str, Any]:
    """The role's defaults/main.yml: the values the spec expects on the machine."""
    return load_defaults(role)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sealed: a hygiene check that only proves something on a sealed disk"
    )


# Run on the machine with its own python3 (Ansible needs it there anyway), so a spec
# checks what a client on the machine sees, without curl or a forwarded port.
_HTTP_GET = """
import json, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError as e:
    r = e
answer = {"status": r.status, "headers": dict(r.headers), "body": r.read().decode()}
json.dump(answer, sys.stdout)
"""


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture
def http_get(host) -> Callable[[str], dict[str, Any]]:
    """GET a URL from inside the machine: {"status", "headers", "body"} (4xx/5xx included)."""

    def get(url: str) -> dict[str, Any]:
        out = host.check_output(f"python3 -c {_sh_quote(_HTTP_GET)} {_sh_quote(url)}")
        return json.loads(out)

    return get
