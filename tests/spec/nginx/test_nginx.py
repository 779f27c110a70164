"""Spec of the `nginx` role: the web server answers, its health endpoint says ok."""

from __future__ import annotations

import pytest


@pytest.fixture
def base_url(defaults) -> str:
    return f"http://127.0.0.1:{defaults['nginx_port']}"


@pytest.fixture
def health(http_get, base_url, defaults) -> dict:
    return http_get(base_url + defaults["nginx_health_path"])


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


def test_distribution_default_site_is_gone(host, http_get, base_url):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    page = http_get(base_url + "/")
    assert "Welcome to nginx" not in page["body"]


def test_unknown_path_is_not_found(http_get, base_url):
    assert http_get(base_url + "/no-such-page")["status"] == 404


def test_configuration_is_valid(host):
    assert host.run("nginx -t").rc == 0
