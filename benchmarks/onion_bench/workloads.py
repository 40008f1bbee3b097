"""What runs inside the onion_tls and asyncio worker processes: the client
and server applications, how each of the two (onion_tls, asyncio's own TLS)
serves and connects through its layers, the measurements themselves, and
the server and client sides the harness drives.  (The other peers live in
``peer_twisted.py``, ``peer_trio.py`` and ``peer_sslsocket.py``.)

Only onion_tls's public API is used (``onion_tls.wrap``, the transport's
``start_tls``/``set_protocol``, ``onion_tls.testing.OnionCA``).
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from onion_tls import wrap
from onion_tls.testing import OnionCA

from .cells import IDLE_DEPTH, Cell, hostname
from .common import (
    BATCH,
    CLOSE_TIMEOUT,
    ECHO_WINDOW,
    HOST,
    MAX_HANDSHAKES,
    PING,
    READ_BUFFER,
    Meter,
    pyopenssl_context,
    rss,
    stdlib_context,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["AsyncioClient", "AsyncioServer", "Kit", "write_certs"]

_IDLE_CONCURRENCY = 16


# -- certificates and contexts ----------------------------------------------------


def write_certs(directory: Path, depths: int) -> None:
    """A trustme CA and a server identity per depth, as PEM files."""
    ca = OnionCA()
    ca.ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for depth in range(1, depths + 1):
        leaf = ca.server_cert(depth)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"server{depth}.pem"))


# -- what the measurements run over -------------------------------------------------


class _Client(asyncio.BaseProtocol):
    """The client's application: counts what arrives, follows flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.paused = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something arrives, writing resumes, or the connection ends."""
        if self.lost.done():
            raise ConnectionError("the connection was lost during the measurement")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


class _PlainClient(_Client, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self._wake()


class _BufferedClient(_Client, asyncio.BufferedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self._view = memoryview(bytearray(READ_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self._wake()


class _Pinger(_Client):
    """The pingpong client's application: each answer that arrives sends the
    next byte from the receive callback, until the deadline; then it wakes
    :meth:`wait` with ``finished`` set."""

    deadline = 0.0  # set when the measurement starts
    finished = False

    def _answered(self) -> None:
        if time.perf_counter() < self.deadline:
            assert self.transport is not None
            self.transport.write(PING)
        else:
            self.finished = True
            self._wake()


class _PingPlain(_Pinger, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self._answered()


class _PingBuffered(_Pinger, _BufferedClient):
    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self._answered()


class _Server(asyncio.BaseProtocol):
    """The server's application.  With asyncio's ``start_tls`` the protocol
    can receive data before it is given its transport: echo keeps it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's TLS transport is not an asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)
        for data in self._early:
            self.transport.write(data)
        self._early.clear()

    def eof_received(self) -> bool:
        return False

    def _send(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
        else:
            self.transport.write(data)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class _SinkPlain(_Server, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if data[-1] == 1:
            self._send(b"K")


class _SinkBuffered(_Server, asyncio.BufferedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._buf[nbytes - 1] == 1:
            self._send(b"K")


class _EchoPlain(_Server, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self._send(data)


class _EchoBuffered(_SinkBuffered):
    def buffer_updated(self, nbytes: int) -> None:
        self._send(bytes(self._view[:nbytes]))


class _Idle(_Server, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


_SERVER_APPS: dict[str, Callable[[], _Server]] = {
    "sink/plain": _SinkPlain,
    "sink/buffered": _SinkBuffered,
    "echo/plain": _EchoPlain,
    "echo/buffered": _EchoBuffered,
    # pingpong: the 1 byte that arrives is written back at once
    "pingpong/plain": _EchoPlain,
    "pingpong/buffered": _EchoBuffered,
    "handshake/plain": _Idle,
    "idle/plain": _Idle,
}


class _Setup(asyncio.Protocol):
    """Carries a client connection through its layers: counts the ``R``
    bytes the server sends when it is ready for the next ClientHello."""

    def __init__(self, first: tuple[Any, str] | None = None) -> None:
        self.transport: Any = None
        self.readies = 0
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._first = first
        #: onion_tls: the first layer's start_tls() future.
        self.started: asyncio.Future[Any] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self._first is not None:
            # As asyncio's create_connection(ssl=) does: the ClientHello
            # leaves as soon as the TCP connection is made.
            ctx, hostname = self._first
            self.started = transport.start_tls(ctx, server_hostname=hostname)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.readies += data.count(b"R")
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def ready(self, count: int) -> None:
        while self.readies < count:
            if self.lost:
                raise ConnectionError("the server closed the connection during setup")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class Kit:
    """Contexts, listeners and connections for one implementation."""

    def __init__(self, impl: str, engine: str, certs: Path, depths: int) -> None:
        self.impl = impl
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle: list[tuple[asyncio.Transport, _Client]] = []
        onion_pyopenssl = impl == "onion_tls" and engine == "pyopenssl"
        make = pyopenssl_context if onion_pyopenssl else stdlib_context
        # ssl.SSLContext or OpenSSL.SSL.Context
        self.client_ctx: Any = make(certs, None)
        self.server_ctx: dict[int, Any] = {d: make(certs, d) for d in range(1, depths + 1)}

    # servers

    async def serve(self, listener: str) -> asyncio.Server:
        kind, app, depth_text = listener.split("/")
        depth = int(depth_text)
        factory = _SERVER_APPS[f"{kind}/{app}"]
        loop = asyncio.get_running_loop()
        if self.impl == "asyncio":

            def make_asyncio() -> asyncio.BaseProtocol:
                if depth == 1:
                    return factory()
                return _AsyncioClimb(self, depth, factory)

            server: asyncio.Server = await loop.create_server(
                make_asyncio, HOST, 0, ssl=self.server_ctx[1], backlog=1024
            )
            return server

        return await loop.create_server(
            wrap(lambda: _OnionClimb(self, depth, factory)), HOST, 0, backlog=1024
        )

    # clients

    async def connect(self, port: int, depth: int, app: _Client) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        ctx = self.client_ctx
        if self.impl == "asyncio":
            assert isinstance(ctx, ssl.SSLContext)
            proto: asyncio.BaseProtocol = app if depth == 1 else _Setup()
            transport, _ = await loop.create_connection(
                lambda: proto, HOST, port, ssl=ctx, server_hostname=hostname(1)
            )
            for d in range(2, depth + 1):
                assert isinstance(proto, _Setup)
                await proto.ready(1)  # a new _Setup per layer
                proto = app if d == depth else _Setup()
                new = await loop.start_tls(transport, proto, ctx, server_hostname=hostname(d))
                assert new is not None
                transport = new
            if depth > 1:
                app.connection_made(transport)
            return transport

        setup = _Setup(first=(ctx, hostname(1)))
        await loop.create_connection(wrap(lambda: setup), HOST, port)
        onion = setup.transport
        assert setup.started is not None
        await setup.started
        for d in range(2, depth + 1):
            await setup.ready(d - 1)
            await onion.start_tls(ctx, server_hostname=hostname(d))
        onion.set_protocol(app)
        app.connection_made(onion)
        return onion  # type: ignore[no-any-return]

    async def close(self, transport: asyncio.Transport, app: _Client) -> None:
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(app.lost), CLOSE_TIMEOUT)
        except TimeoutError:
            transport.abort()


class _AsyncioClimb(asyncio.Protocol):
    """asyncio server, depth > 1: after each handshake, send ``R`` inside
    the new layer and start the next one with ``loop.start_tls``."""

    def __init__(self, kit: Kit, depth: int, factory: Callable[[], _Server]) -> None:
        self._kit, self._depth, self._factory = kit, depth, factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        task = asyncio.get_running_loop().create_task(self._climb(transport))  # type: ignore[arg-type]
        self._kit.tasks.add(task)
        task.add_done_callback(self._kit.tasks.discard)

    def eof_received(self) -> bool:
        return False

    async def _climb(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        app = self._factory()
        for d in range(2, self._depth + 1):
            proto = app if d == self._depth else asyncio.Protocol()
            # write and start_tls run in one callback: the client's next
            # ClientHello cannot come before the new layer is in place.
            transport.write(b"R")
            try:
                new = await loop.start_tls(
                    transport, proto, self._kit.server_ctx[d], server_side=True
                )
            except (OSError, ssl.SSLError, ConnectionError, TimeoutError):
                transport.abort()
                return
            assert new is not None
            transport = new
        app.connection_made(transport)


class _OnionClimb(asyncio.Protocol):
    """onion_tls server: push every layer; ``R`` inside each but the last."""

    def __init__(self, kit: Kit, depth: int, factory: Callable[[], _Server]) -> None:
        self._kit, self._depth, self._factory = kit, depth, factory
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._push(1)

    def eof_received(self) -> bool:
        return False

    def _push(self, depth: int) -> None:
        t = self._transport
        fut = t.start_tls(self._kit.server_ctx[depth], server_side=True)
        if depth == self._depth:
            # From now on what arrives is the application's.
            app = self._factory()
            t.set_protocol(app)
            app.connection_made(t)
            fut.add_done_callback(lambda f: None)
        else:
            fut.add_done_callback(lambda f: self._next(f, depth))

    def _next(self, fut: asyncio.Future[Any], depth: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self._transport.write(b"R")
        self._push(depth + 1)


# -- the measurements (client side) ------------------------------------------------


def _new_app(app: str) -> _Client:
    return _BufferedClient() if app == "buffered" else _PlainClient()


def _cipher_of(transport: asyncio.BaseTransport) -> str:
    cipher = transport.get_extra_info("cipher")
    return str(cipher[0]) if cipher else "?"


async def _sink(kit: Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    app = _new_app(cell.app)
    t = await kit.connect(port, cell.depth, app)
    cipher = _cipher_of(t)
    size = cell.size
    chunk = bytes(size)
    batch = max(1, BATCH // size)
    sent = 0
    meter = Meter()
    deadline = meter.start + seconds
    while True:
        for _ in range(batch):
            t.write(chunk)
        sent += batch * size
        if time.perf_counter() >= deadline:
            break
        if app.paused:
            while app.paused:
                await app.wait()
        else:
            await asyncio.sleep(0)
    t.write(bytes(size - 1) + b"\x01")
    sent += size
    while app.received < 1:
        await app.wait()
    result = meter.rate(sent, cipher)
    await kit.close(t, app)
    return result


async def _echo(kit: Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    app = _new_app(cell.app)
    t = await kit.connect(port, cell.depth, app)
    cipher = _cipher_of(t)
    size = cell.size
    chunk = bytes(size)
    batch = max(1, BATCH // size)
    sent = 0
    meter = Meter()
    deadline = meter.start + seconds
    while time.perf_counter() < deadline:
        n = 0
        while n < batch and not app.paused and sent - app.received < ECHO_WINDOW:
            t.write(chunk)
            sent += size
            n += 1
        if n < batch:
            await app.wait()
        else:
            await asyncio.sleep(0)
    while app.received < sent:
        await app.wait()
    result = meter.rate(sent, cipher)
    await kit.close(t, app)
    return result


async def _pingpong(kit: Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    app: _Pinger = _PingBuffered() if cell.app == "buffered" else _PingPlain()
    t = await kit.connect(port, cell.depth, app)
    cipher = _cipher_of(t)
    meter = Meter()
    app.deadline = meter.start + seconds
    t.write(PING)  # the application's callback sends the next ones
    while not app.finished:
        await app.wait()
    result = meter.round_trips(app.received, cipher)
    await kit.close(t, app)
    return result


async def _handshakes(kit: Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    count = 0
    busy = 0.0
    cipher = "?"
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while count < 3 or (time.perf_counter() < end and count < MAX_HANDSHAKES):
        app = _PlainClient()
        t0 = time.perf_counter()
        t = await kit.connect(port, cell.depth, app)
        busy += time.perf_counter() - t0
        count += 1
        cipher = _cipher_of(t)
        await kit.close(t, app)
    cpu = time.process_time() - cpu
    return {"value": count / busy, "cipher": cipher, "cpu": cpu, "work": count}


async def idle_open(kit: Kit, port: int, count: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(_IDLE_CONCURRENCY)

    async def one() -> None:
        async with limit:
            app = _PlainClient()
            t = await kit.connect(port, IDLE_DEPTH, app)
            kit.idle.append((t, app))

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(0.3)  # late session tickets and the like
    gc.collect()
    return {"rss": rss(), "open": len(kit.idle)}


async def idle_close(kit: Kit) -> dict[str, Any]:
    idle, kit.idle = kit.idle, []
    for t, _ in idle:
        t.close()
    try:
        await asyncio.wait_for(asyncio.gather(*(app.lost for _, app in idle)), 30.0)
    except TimeoutError:
        for t, _ in idle:
            t.abort()
    return {"closed": len(idle)}


MEASURE = {"sink": _sink, "echo": _echo, "pingpong": _pingpong, "handshake": _handshakes}


# -- the sides the harness drives ------------------------------------------------------


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop  # optional: only when installed

        return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)
    return asyncio.new_event_loop


class AsyncioServer:
    """The server side of onion_tls or asyncio's TLS, on the spec's loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._kit = Kit(spec["impl"], spec["engine"], Path(spec["certs"]), spec["depths"])
        self._loop_name = spec["loop"]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None

    def run(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        with asyncio.Runner(loop_factory=_loop_factory(self._loop_name)) as runner:
            runner.run(self._main(listeners, ready))

    async def _main(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        servers = {name: await self._kit.serve(name) for name in listeners}
        ready({name: s.sockets[0].getsockname()[1] for name, s in servers.items()})
        await self._stopped
        for server in servers.values():
            server.close()

    def stop(self) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None:
            return

        def done() -> None:
            if not stopped.done():
                stopped.set_result(None)

        loop.call_soon_threadsafe(done)


class AsyncioClient:
    """The client side of onion_tls or asyncio's TLS: one loop for the
    worker's life (the idle connections outlive a command)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._kit = Kit(spec["impl"], spec["engine"], Path(spec["certs"]), spec["depths"])
        self._runner = asyncio.Runner(loop_factory=_loop_factory(spec["loop"]))

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        what = cmd["cmd"]
        coro: Coroutine[Any, Any, dict[str, Any]]
        if what == "run":
            cell = Cell(**cmd["cell"])
            coro = MEASURE[cell.kind](self._kit, cmd["port"], cell, cmd["seconds"])
        elif what == "idle_open":
            coro = idle_open(self._kit, cmd["port"], cmd["count"])
        elif what == "idle_close":
            coro = idle_close(self._kit)
        else:
            coro = _rss_now()
        return self._runner.run(coro)


async def _rss_now() -> dict[str, Any]:
    gc.collect()
    return {"rss": rss()}
