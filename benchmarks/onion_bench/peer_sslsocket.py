"""The C path: a blocking ``ssl.SSLSocket`` client and server, depth 1 only.
The ssl module does TLS and socket I/O in C, so this is the ceiling a
Python TLS stack can approach on this machine, not a peer.

* server: one thread per connection; ``plain`` receives with ``recv()``
  (a new ``bytes`` per record), ``buffered`` with ``recv_into()`` one
  256 KiB buffer; sink answers ``K`` when a read ends in the 1 byte, echo
  and pingpong send back what they read (``sendall``), handshake reads until
  EOF;
* client sink: ``sendall`` of every chunk, then ``recv`` of the ``K``;
* client echo: a non-blocking socket and ``select``: write chunks while
  less than 1 MiB is in flight, read (``recv_into``) whatever arrived;
* client pingpong: ``sendall`` of 1 byte, ``recv`` (``recv_into`` when
  buffered) of the answer, in a loop; TCP_NODELAY on both sockets;
* client handshake: ``create_connection`` + ``wrap_socket`` (the handshake
  is done when it returns), then close.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cells import Cell, hostname
from .common import (
    BATCH,
    CLOSE_TIMEOUT,
    ECHO_WINDOW,
    HOST,
    MAX_HANDSHAKES,
    PING,
    READ_BUFFER,
    Meter,
    stdlib_context,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SocketClient", "SocketServer"]

_TIMEOUT = 60.0  # a blocking call that takes longer has hung


class SocketServer:
    def __init__(self, spec: dict[str, Any]) -> None:
        self._ctx = stdlib_context(Path(spec["certs"]), 1)
        self._stopped = threading.Event()

    def run(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        ports = {}
        for name in listeners:
            kind, app, depth = name.split("/")
            if depth != "1":
                raise ValueError(f"ssl.SSLSocket serves depth 1 only, not {name}")
            sock = socket.create_server((HOST, 0), backlog=1024)
            ports[name] = sock.getsockname()[1]
            threading.Thread(target=self._accept, args=(sock, kind, app), daemon=True).start()
        ready(ports)
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    def _accept(self, sock: socket.socket, kind: str, app: str) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._serve, args=(conn, kind, app), daemon=True).start()

    def _serve(self, conn: socket.socket, kind: str, app: str) -> None:
        conn.settimeout(_TIMEOUT)
        if kind == "pingpong":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                if app == "buffered":
                    _serve_buffered(tls, kind)
                else:
                    _serve_plain(tls, kind)
        except (OSError, ValueError):
            pass  # the client went away; the next connection is served anyway
        finally:
            conn.close()


def _serve_plain(tls: ssl.SSLSocket, kind: str) -> None:
    while data := tls.recv(READ_BUFFER):
        if kind in ("echo", "pingpong"):
            tls.sendall(data)
        elif kind == "sink" and data[-1] == 1:
            tls.sendall(b"K")


def _serve_buffered(tls: ssl.SSLSocket, kind: str) -> None:
    buf = bytearray(READ_BUFFER)
    view = memoryview(buf)
    while nbytes := tls.recv_into(view):
        if kind in ("echo", "pingpong"):
            tls.sendall(view[:nbytes])
        elif kind == "sink" and buf[nbytes - 1] == 1:
            tls.sendall(b"K")


class SocketClient:
    def __init__(self, spec: dict[str, Any]) -> None:
        self._ctx = stdlib_context(Path(spec["certs"]), None)

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] != "run":
            return {"error": f"ssl.SSLSocket does not run {cmd['cmd']}"}
        cell = Cell(**cmd["cell"])
        if cell.depth != 1:
            return {"error": "ssl.SSLSocket runs depth 1 only"}
        run = {
            "sink": self._sink,
            "echo": self._echo,
            "pingpong": self._pingpong,
            "handshake": self._handshakes,
        }[cell.kind]
        return run(cmd["port"], cell, cmd["seconds"])

    def _connect(self, port: int, nodelay: bool = False) -> ssl.SSLSocket:
        sock = socket.create_connection((HOST, port), timeout=_TIMEOUT)
        try:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return self._ctx.wrap_socket(sock, server_hostname=hostname(1))
        except BaseException:
            sock.close()
            raise

    def _sink(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        tls = self._connect(port)
        with tls:
            cipher = _cipher_of(tls)
            size = cell.size
            chunk = bytes(size)
            batch = max(1, BATCH // size)
            sent = 0
            meter = Meter()
            deadline = meter.start + seconds
            while True:
                for _ in range(batch):
                    tls.sendall(chunk)
                sent += batch * size
                if time.perf_counter() >= deadline:
                    break
            tls.sendall(bytes(size - 1) + b"\x01")
            sent += size
            if tls.recv(1) != b"K":
                raise ConnectionError("the server closed the connection during the measurement")
            result = meter.rate(sent, cipher)
        return result

    def _echo(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        tls = self._connect(port)
        with tls:
            cipher = _cipher_of(tls)
            tls.setblocking(False)
            size = cell.size
            chunk = bytes(size)
            batch = max(1, BATCH // size)
            view = memoryview(bytearray(READ_BUFFER))
            sent = received = 0
            writing = True
            meter = Meter()
            deadline = meter.start + seconds
            stall = meter.start + _TIMEOUT
            while writing or received < sent:
                now = time.perf_counter()
                writing = writing and now < deadline
                progress = blocked = False
                n = 0
                while writing and n < batch and sent - received < ECHO_WINDOW:
                    try:
                        tls.send(chunk)  # all of it, or SSLWantWriteError
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        blocked = True
                        break
                    sent += size
                    n += 1
                    progress = True
                while True:  # everything readable now, the SSL object's buffer too
                    try:
                        nbytes = tls.recv_into(view)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    if not nbytes:
                        raise ConnectionError("the server closed the connection during echo")
                    received += nbytes
                    progress = True
                if progress:
                    stall = now + _TIMEOUT
                    continue
                if now > stall:
                    raise TimeoutError(f"echo: nothing moved for {_TIMEOUT:g} s")
                select.select([tls], [tls] if blocked else [], [], 1.0)
            result = meter.rate(sent, cipher)
        return result

    def _pingpong(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        tls = self._connect(port, nodelay=True)
        with tls:
            cipher = _cipher_of(tls)
            view = memoryview(bytearray(READ_BUFFER))
            buffered = cell.app == "buffered"
            trips = 0
            meter = Meter()
            deadline = meter.start + seconds
            while True:
                tls.sendall(PING)
                if not (tls.recv_into(view) if buffered else tls.recv(READ_BUFFER)):
                    raise ConnectionError("the server closed the connection during pingpong")
                trips += 1
                if time.perf_counter() >= deadline:
                    break
            result = meter.round_trips(trips, cipher)
        return result

    def _handshakes(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        count = 0
        busy = 0.0
        cipher = "?"
        cpu = time.process_time()
        end = time.perf_counter() + seconds
        while count < 3 or (time.perf_counter() < end and count < MAX_HANDSHAKES):
            t0 = time.perf_counter()
            tls = self._connect(port)
            busy += time.perf_counter() - t0
            count += 1
            cipher = _cipher_of(tls)
            tls.settimeout(CLOSE_TIMEOUT)
            tls.close()
        cpu = time.process_time() - cpu
        return {"value": count / busy, "cipher": cipher, "cpu": cpu, "work": count}


def _cipher_of(tls: ssl.SSLSocket) -> str:
    cipher = tls.cipher()
    return str(cipher[0]) if cipher else "?"
