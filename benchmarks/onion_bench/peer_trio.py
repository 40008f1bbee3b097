"""trio's ``SSLStream`` over a ``trio.SocketStream``; a layer inside another
is an ``SSLStream`` over the ``SSLStream`` outside it.  trio has no
buffered-protocol notion (``receive_some`` returns ``bytes``): plain cells
only.

* contexts: the ``ssl.SSLContext`` objects asyncio's TLS uses;
* server: per connection, a handshake per layer, ``R`` sent inside each but
  the last; sink answers ``K`` when a ``receive_some`` ends in the 1 byte,
  echo and pingpong ``send_all`` back what they received, handshake reads
  until EOF;
* client sink: ``send_all`` of every chunk (trio's flow control: it
  returns once the transport took the bytes), then ``receive_some`` of the
  ``K``;
* client pingpong: ``send_all`` of 1 byte, ``receive_some`` of the answer,
  in a loop (the server's echo answers; ``SocketStream`` sets TCP_NODELAY);
* client echo: a writer task (at most 1 MiB in flight) and a reader task;
* client handshake: ``open_tcp_stream`` and a ``do_handshake`` per layer;
* each command is one ``trio.run``.
"""

from __future__ import annotations

import functools
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

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

__all__ = ["TrioClient", "TrioServer"]

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError)


class TrioServer:
    def __init__(self, spec: dict[str, Any]) -> None:
        certs = Path(spec["certs"])
        self._ctx = {d: stdlib_context(certs, d) for d in range(1, spec["depths"] + 1)}
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

    def run(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        trio.run(self._main, listeners, ready)

    async def _main(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._scope = nursery.cancel_scope
            ports = {}
            for name in listeners:
                kind, _, depth = name.split("/")
                sockets = await trio.open_tcp_listeners(0, host=HOST, backlog=1024)
                ports[name] = sockets[0].socket.getsockname()[1]
                handler = functools.partial(self._handle, kind, int(depth))
                nursery.start_soon(trio.serve_listeners, handler, sockets)
            ready(ports)

    def stop(self) -> None:
        token, scope = self._token, self._scope
        if token is not None and scope is not None:
            token.run_sync_soon(scope.cancel)

    async def _handle(self, kind: str, depth: int, stream: trio.SocketStream) -> None:
        s: trio.abc.Stream = stream
        try:
            for d in range(1, depth + 1):
                tls = trio.SSLStream(s, self._ctx[d], server_side=True)
                await tls.do_handshake()
                if d < depth:
                    await tls.send_all(b"R")
                s = tls
            if kind == "sink":
                while data := await s.receive_some(READ_BUFFER):
                    if data[-1] == 1:
                        await s.send_all(b"K")
            elif kind in ("echo", "pingpong"):
                while data := await s.receive_some(READ_BUFFER):
                    await s.send_all(data)
            else:
                while await s.receive_some(READ_BUFFER):
                    pass
        except _GONE:
            pass  # the client went away; the next connection is served anyway
        finally:
            await trio.aclose_forcefully(s)


class _Progress:
    """The echo client's reader wakes its writer."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def set(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        self.event = trio.Event()
        await self.event.wait()


class TrioClient:
    def __init__(self, spec: dict[str, Any]) -> None:
        self._ctx = stdlib_context(Path(spec["certs"]), None)

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] != "run":
            return {"error": f"the trio peer does not run {cmd['cmd']}"}
        cell = Cell(**cmd["cell"])
        measure = {
            "sink": self._sink,
            "echo": self._echo,
            "pingpong": self._pingpong,
            "handshake": self._handshakes,
        }
        return trio.run(measure[cell.kind], cmd["port"], cell, cmd["seconds"])

    async def _connect(self, port: int, depth: int) -> trio.SSLStream[Any]:
        s: trio.abc.Stream = await trio.open_tcp_stream(HOST, port)
        for d in range(1, depth + 1):
            if d > 1 and await s.receive_some(1) != b"R":
                raise ConnectionError("the server closed the connection during setup")
            tls = trio.SSLStream(s, self._ctx, server_hostname=hostname(d))
            await tls.do_handshake()
            s = tls
        assert isinstance(s, trio.SSLStream)
        return s

    async def _close(self, s: trio.abc.Stream) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            try:
                await s.aclose()
            except _GONE:
                pass
        await trio.aclose_forcefully(s)

    async def _sink(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        s = await self._connect(port, cell.depth)
        cipher = _cipher_of(s)
        size = cell.size
        chunk = bytes(size)
        batch = max(1, BATCH // size)
        sent = 0
        meter = Meter()
        deadline = meter.start + seconds
        while True:
            for _ in range(batch):
                await s.send_all(chunk)
            sent += batch * size
            if time.perf_counter() >= deadline:
                break
        await s.send_all(bytes(size - 1) + b"\x01")
        sent += size
        if not await s.receive_some(READ_BUFFER):
            raise ConnectionError("the server closed the connection during the measurement")
        result = meter.rate(sent, cipher)
        await self._close(s)
        return result

    async def _echo(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        s = await self._connect(port, cell.depth)
        cipher = _cipher_of(s)
        size = cell.size
        chunk = bytes(size)
        batch = max(1, BATCH // size)
        sent = received = 0
        writing = True
        progress = _Progress()
        meter = Meter()
        deadline = meter.start + seconds

        async def reader() -> None:
            nonlocal received
            while writing or received < sent:
                data = await s.receive_some(READ_BUFFER)
                if not data:
                    raise ConnectionError("the server closed the connection during echo")
                received += len(data)
                progress.set()
            nursery.cancel_scope.cancel()  # (the writer is done too)

        async def writer() -> None:
            nonlocal sent, writing
            while time.perf_counter() < deadline:
                for _ in range(batch):
                    while sent - received >= ECHO_WINDOW:
                        await progress.wait()
                    await s.send_all(chunk)
                    sent += size
            writing = False
            if received >= sent:  # the reader may be waiting for nothing
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
        result = meter.rate(sent, cipher)
        await self._close(s)
        return result

    async def _pingpong(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        s = await self._connect(port, cell.depth)
        cipher = _cipher_of(s)
        trips = 0
        meter = Meter()
        deadline = meter.start + seconds
        while True:
            await s.send_all(PING)
            if not await s.receive_some(READ_BUFFER):
                raise ConnectionError("the server closed the connection during pingpong")
            trips += 1
            if time.perf_counter() >= deadline:
                break
        result = meter.round_trips(trips, cipher)
        await self._close(s)
        return result

    async def _handshakes(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        count = 0
        busy = 0.0
        cipher = "?"
        cpu = time.process_time()
        end = time.perf_counter() + seconds
        while count < 3 or (time.perf_counter() < end and count < MAX_HANDSHAKES):
            t0 = time.perf_counter()
            s = await self._connect(port, cell.depth)
            busy += time.perf_counter() - t0
            count += 1
            cipher = _cipher_of(s)
            await self._close(s)
        cpu = time.process_time() - cpu
        return {"value": count / busy, "cipher": cipher, "cpu": cpu, "work": count}


def _cipher_of(s: trio.SSLStream[Any]) -> str:
    cipher = s.cipher()
    return str(cipher[0]) if cipher else "?"
