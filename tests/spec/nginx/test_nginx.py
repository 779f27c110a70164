"""Spec of the `nginx` role: the web server answers, its health endpoint says ok."""

from __future__ import annotations

import json

import pytest


def _get(host, port: int, path: str) -> dict:
    """GET http://127.0.0.1:<port><path> from inside the machine: status, headers, body."""
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        f"url = 'http://127.0.0.1:{port}{path}'\n"
        "try:\n"
        "    r = urllib.request.urlopen(url, timeout=10)\n"
        "except urllib.error.HTTPError as e:\n"
        "    r = e\n"
        "answer = {'status': r.status, 'headers': dict(r.headers), 'body': r.read().decode()}\n"
        "json.dump(answer, sys.stdout)\n"
    )
    return json.loads(host.check_output(f"python3 -c {_quote(script)}"))


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def health(host, defaults) -> dict:
    return _get(host, defaults["nginx_port"], defaults["nginx_health_path"])


def test_nginx_is_enabled_and_running(host):
    nginx = host.service("nginx")
    assert nginx.is_enabled
    assert nginx.is_running


def test_nginx_listens_on_the_configured_port(host, defaults):
    assert host.socket(f"tcp://0.0.0.0:{defaults['nginx_port']}").is_listening


def test_health_endpoint_answers_ok(health, defaults):
    assert health["status"] == 200
    assert health["body"].strip() == defaults["nginx_health_body"]
    assert health["headers"]["Content-Type"].startswith("text/plain")


def test_server_header_hides_the_version(health):
    assert health["headers"]["Server"] == "nginx"


def test_distribution_default_site_is_gone(host, defaults):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    page = _get(host, defaults["nginx_port"], "/")
    assert "Welcome to nginx" not in page["body"]


def test_unknown_path_is_not_found(host, defaults):
    assert _get(host, defaults["nginx_port"], "/no-such-page")["status"] == 404


def test_configuration_is_valid(host):
    assert host.run("nginx -t").rc == 0
