"""A SOCKS5 proxy for Packer's own SSH connection that answers once the guest's SSH
server does: a local bake's boot ends when the machine is up, not at Packer's next try.

Packer 1.6 waits for SSH by trying to connect, and after a failed try it sleeps five
seconds before the next (helper/communicator/step_connect_ssh.go). A machine under
emulation is up about 20 s after it starts, so its boot took 21.8 s or 28.6 s by where
that moment fell between two tries. Packer can reach the machine through a SOCKS5 proxy
(`ssh_proxy_host`/`ssh_proxy_port`) and waits for the proxy's answer, so this one holds
each connection request until the machine's SSH server sends its greeting (it tries
every quarter of a second), then answers and joins the two connections, the greeting
first. Only the machine's forwarded port on the loopback address is served.

Ansible and the specs connect to the machine directly; only Packer's connection (its
file uploads and the seal) goes through here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

# How often the machine's SSH port is tried while it is not up, and how long one try
# waits for the server's greeting.
RETRY = 0.25
GREETING_WAIT = 2.0
# Packer gives up after its ssh_timeout (10 minutes, packer/source.qemu.pkr.hcl).
GIVE_UP = 600.0

_SUCCEEDED, _FAILED, _NOT_ALLOWED = 0, 1, 2


class ReadyProxy:
    """A SOCKS5 proxy on 127.0.0.1 (an ephemeral port, `port`) to 127.0.0.1:`target` only.
    Bound when made; `serving()` runs it for the length of a `with` block."""

    def __init__(self, target: int, give_up: float = GIVE_UP) -> None:
        self.target = target
        self.give_up = give_up
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def serving(self) -> Iterator[ReadyProxy]:
        accept = threading.Thread(target=self._accept, name="ssh-ready", daemon=True)
        accept.start()
        try:
            yield self
        finally:
            self.close()
            accept.join(timeout=5)

    def close(self) -> None:
        """Stop: no new connection, every open one closed."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._open:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._open.clear()

    def _keep(self, s: socket.socket) -> socket.socket:
        with self._lock:
            if self._stop.is_set():
                s.close()
                raise OSError("the proxy is stopping")
            self._open.add(s)
        return s

    def _accept(self) -> None:
        self._listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = None
        try:
            self._keep(client)
            client.settimeout(30)
            port = self._handshake(client)
            if port != self.target:
                client.sendall(_reply(_NOT_ALLOWED))
                return
            ready = self._await_ssh()
            if ready is None:
                client.sendall(_reply(_FAILED))
                return
            server, greeting = ready
            client.settimeout(None)
            client.sendall(_reply(_SUCCEEDED) + greeting)
            back = threading.Thread(target=_pipe, args=(server, client), daemon=True)
            back.start()
            _pipe(client, server)
            back.join()
        except (OSError, ValueError):
            pass
        finally:
            self._forget(client, *([server] if server else []))

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            for s in sockets:
                self._open.discard(s)
                s.close()

    def _handshake(self, client: socket.socket) -> int:
        """Read the client's SOCKS5 greeting and CONNECT request; the port asked for, or
        -1 for anything but 127.0.0.1 (or another address)."""
        version, n = _recv(client, 2)
        if version != 5:
            raise ValueError("not SOCKS5")
        _recv(client, n)
        client.sendall(b"\x05\x00")  # no authentication
        version, command, _, kind = _recv(client, 4)
        if version != 5 or command != 1:
            client.sendall(_reply(7))  # command not supported
            raise ValueError("not a CONNECT")
        if kind == 1:
            host = socket.inet_ntoa(bytes(_recv(client, 4)))
        elif kind == 3:
            host = bytes(_recv(client, _recv(client, 1)[0])).decode("ascii", "replace")
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, bytes(_recv(client, 16)))
        else:
            raise ValueError("unknown address type")
        (port,) = struct.unpack("!H", bytes(_recv(client, 2)))
        return port if host in ("127.0.0.1", "localhost") else -1

    def _await_ssh(self) -> tuple[socket.socket, bytes] | None:
        """A connection to the machine's SSH server and the greeting it sent, once it
        sends one; None when the proxy stops or gives up first."""
        deadline = time.monotonic() + self.give_up
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                server = self._keep(socket.create_connection(("127.0.0.1", self.target), 1))
            except OSError:
                time.sleep(RETRY)
                continue
            try:
                server.settimeout(GREETING_WAIT)
                greeting = server.recv(256)
                if greeting.startswith(b"SSH-"):
                    server.settimeout(None)
                    return server, greeting
            except OSError:
                pass
            self._forget(server)
            time.sleep(RETRY)
        return None


def _recv(s: socket.socket, n: int) -> bytearray:
    data = bytearray()
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ValueError("the client closed the connection")
        data += chunk
    return data


def _reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy `src` to `dst` until `src` ends, then end `dst`'s writing side."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
