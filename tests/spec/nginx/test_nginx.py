"""Spec of the `nginx` role: the web server answers, its health endpoint says ok."""

from __future__ import annotations

import pytest
from conftest import http_get_all

# The unit these checks rely on (see tests/spec/README.md).
UNITS = ("nginx.service",)


@pytest.fixture(scope="module")
def base_url(defaults) -> str:
    return f"http://127.0.0.1:{defaults['nginx_port']}"


@pytest.fixture(scope="module")
def pages(host, base_url, defaults) -> dict[str, dict]:
    """The answers to the paths the spec asks for, from inside the machine: path ->
    {"status", "headers", "body"}, all got by one python3 on the machine."""
    paths = [defaults["nginx_health_path"], "/", "/no-such-page"]
    return dict(zip(paths, http_get_all(host, [base_url + p for p in paths]), strict=True))


@pytest.fixture(scope="module")
def health(pages, defaults) -> dict:
    return pages[defaults["nginx_health_path"]]


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


def test_distribution_default_site_is_gone(host, pages):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    page = pages["/"]
    assert "Welcome to nginx" not in page["body"]


def test_unknown_path_is_not_found(pages):
    assert pages["/no-such-page"]["status"] == 404


def test_configuration_is_valid(host):
    assert host.run("nginx -t").rc == 0
