"""Spec of the `node_exporter` role: Prometheus can scrape the machine."""

from __future__ import annotations

import pytest

# The unit these checks rely on (see tests/spec/README.md).
UNITS = ("prometheus-node-exporter.service",)


@pytest.fixture(scope="module")
def address(defaults) -> str:
    """Where to reach the exporter from inside the machine."""
    return defaults["node_exporter_listen_address"] or "127.0.0.1"


def test_exporter_is_enabled_and_running(host):
    exporter = host.service("prometheus-node-exporter")
    assert exporter.is_enabled
    assert exporter.is_running


def test_exporter_listens_on_the_configured_port(host, defaults):
    listen = defaults["node_exporter_listen_address"] or "0.0.0.0"
    port = defaults["node_exporter_port"]
    sockets = [str(s) for s in host.socket.get_listening_sockets()]
    expected = {f"tcp://{listen}:{port}"}
    if not defaults["node_exporter_listen_address"]:
        expected.add(f"tcp://:::{port}")  # every address, IPv6 socket serving IPv4 too
    assert expected & set(sockets), f"nothing listens on {expected}: {sockets}"


def test_metrics_answer_over_http(http_get, defaults, address):
    answer = http_get(f"http://{address}:{defaults['node_exporter_port']}/metrics")
    assert answer["status"] == 200
    assert "node_exporter_build_info" in answer["body"]
    assert "node_cpu_seconds_total" in answer["body"]
