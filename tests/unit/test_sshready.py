"""goldsmith.sshready: Packer's SSH connection is answered once the machine's SSH server
greets, not at Packer's next try. A real SOCKS5 exchange over real sockets, with a
stand-in SSH server that comes up late."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from goldsmith import sshready


class LateServer:
    """On a free port: refuses connections for `delay` seconds, then greets like an SSH
    server and echoes what it gets."""

    def __init__(self, delay: float) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.up_at = 0.0
        self.connections = 0
        threading.Thread(target=self._run, args=(delay,), daemon=True).start()

    def _run(self, delay: float) -> None:
        time.sleep(delay)
        listener = socket.create_server(("127.0.0.1", self.port))
        self.up_at = time.monotonic()
        while True:
            conn, _ = listener.accept()
            self.connections += 1
            conn.sendall(b"SSH-2.0-Late\r\n")
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)


def socks_connect(proxy_port: int, port: int, host: bytes = b"\x7f\x00\x00\x01") -> socket.socket:
    """A SOCKS5 CONNECT as Packer's client sends it (no authentication, an IPv4 address)."""
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + host + struct.pack("!H", port))
    return s


def read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_the_answer_waits_for_the_server_greeting_which_comes_through_first() -> None:
    server = LateServer(delay=0.8)
    proxy = sshready.ReadyProxy(server.port)
    with proxy.serving():
        start = time.monotonic()
        client = socks_connect(proxy.port, server.port)
        reply = read_exactly(client, 10)
        answered = time.monotonic()
        assert reply[:2] == b"\x05\x00", reply
        assert server.up_at and answered >= server.up_at, "answered before the server was up"
        assert answered - server.up_at < 1.0, "answered long after the server was up"
        assert answered - start >= 0.8
        assert read_exactly(client, 14) == b"SSH-2.0-Late\r\n"
        client.sendall(b"hello")
        assert read_exactly(client, 5) == b"hello"
        client.close()
        # Once up, a second request is answered at once.
        t = time.monotonic()
        again = socks_connect(proxy.port, server.port)
        assert read_exactly(again, 10)[:2] == b"\x05\x00" and time.monotonic() - t < 1.0
        again.close()


def test_only_the_machines_port_on_the_loopback_is_served() -> None:
    server = LateServer(delay=0)
    proxy = sshready.ReadyProxy(server.port)
    with proxy.serving():
        other = socks_connect(proxy.port, server.port + 1)
        assert read_exactly(other, 10)[:2] == b"\x05\x02"
        elsewhere = socks_connect(proxy.port, server.port, host=b"\x0a\x00\x00\x01")
        assert read_exactly(elsewhere, 10)[:2] == b"\x05\x02"
    assert server.connections == 0


def test_a_machine_that_never_answers_is_a_failed_request_and_closing_ends_it_all() -> None:
    server = LateServer(delay=3600)
    proxy = sshready.ReadyProxy(server.port, give_up=0.5)
    with proxy.serving():
        client = socks_connect(proxy.port, server.port)
        assert read_exactly(client, 10)[:2] == b"\x05\x01"
        waiting = socks_connect(proxy.port, server.port)
        time.sleep(0.1)
    # The proxy stopped: the waiting request is closed, nothing listens any more.
    waiting.settimeout(5)
    assert waiting.recv(10) in (b"", b"\x05\x01" + bytes(8))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
