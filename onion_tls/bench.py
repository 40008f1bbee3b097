"""``python -m onion_tls bench``: onion_tls against asyncio's own TLS, side by side.

What runs
---------

For each event loop (asyncio, and uvloop when it is installed) the driver
(this process) starts four worker processes: a server and a client for
onion_tls, and a server and a client for asyncio's own TLS
(``loop.create_connection(ssl=)`` / ``loop.create_server(ssl=)`` for the first
layer, nested ``loop.start_tls`` for the layers inside it).  Servers and
clients talk over 127.0.0.1.  Every cell of the table is measured for both
implementations one right after the other, and the rounds alternate which
one goes first, so both see the same machine load; the table shows the
median of the rounds and the ratio onion_tls / asyncio.

Cells, at every depth asked for:

* ``sink``: the client writes zeros (64 KiB or 1 KiB per ``write()``, with
  the transport's flow control) for ``--seconds``, then one last write ending
  in a 1 byte; the server's application counts nothing but answers ``K``
  when a chunk ends in that byte.  Rate: bytes written / time to the ``K``.
* ``echo``: the server's application writes back every byte it receives; the
  client keeps at most 1 MiB in flight.  Rate: bytes echoed / time.
* ``plain`` / ``buffered``: the receiving applications are an
  ``asyncio.Protocol`` or an ``asyncio.BufferedProtocol`` (256 KiB buffer).
* ``handshake``: connect and establish every layer, one connection at a
  time; the rate is connections per second of establishing (closing is not
  timed).

Every layer is TLS 1.3 with TLS_AES_256_GCM_SHA384 (the cipher each
connection negotiated is checked).  Before each nested layer the server sends
one byte ``R`` inside the layer just made, then starts the next layer; the
client waits for it before its ClientHello.  Both implementations do the
same, so neither races the other's ``start_tls``.

Memory: each worker reports its peak RSS; separately, fresh workers open
``--idle`` connections at depth 2 (plain application, no traffic) and report
the RSS they grew by, per connection, after a warm-up of 20 connections.

Everything is bounded: each cell runs for ``--seconds`` (plus the time to
drain), each request to a worker has a time limit, and a worker that misses
it is killed and its cell reported as failed.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import gc
import json
import os
import queue
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = ["DESCRIPTION", "add_arguments", "main", "run"]

DESCRIPTION = (
    "Measure onion_tls against asyncio's own TLS (create_connection(ssl=) + nested "
    "start_tls) side by side: throughput (sink, echo; 64 KiB and 1 KiB writes; "
    "Protocol and BufferedProtocol apps), handshakes/s, peak and idle memory, at "
    "depths 1-3, on asyncio and uvloop, server and client in separate processes."
)

_HOST = "127.0.0.1"
_IMPLS = ("onion_tls", "asyncio")
_KINDS = ("sink", "echo")
_SIZES = (64 * 1024, 1024)
_APPS = ("plain", "buffered")
_READ_BUFFER = 256 * 1024  # a BufferedProtocol application's buffer
_BATCH = 256 * 1024  # bytes written per loop iteration before yielding
_ECHO_WINDOW = 1024 * 1024  # bytes in flight in the echo cells
_MAX_HANDSHAKES = 5000  # per handshake cell
_IDLE_DEPTH = 2
_IDLE_WARMUP = 20
_IDLE_CONCURRENCY = 16
_CIPHER = "TLS_AES_256_GCM_SHA384"
_GROUP = "X25519"
_MB = 1e6


# -- cells -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload at one depth."""

    kind: str  # "sink", "echo" or "handshake"
    size: int  # bytes per write (0 for handshakes)
    app: str  # "plain" or "buffered"
    depth: int

    @property
    def name(self) -> str:
        if self.kind == "handshake":
            return "handshake"
        return f"{self.kind}-{self.size // 1024}k-{self.app}"

    @property
    def listener(self) -> str:
        """The server listener this cell connects to."""
        app = "plain" if self.kind == "handshake" else self.app
        return f"{self.kind}/{app}/{self.depth}"

    @property
    def unit(self) -> str:
        return "conn/s" if self.kind == "handshake" else "MB/s"

    @property
    def cost_unit(self) -> str:
        """CPU time of client and server together, per connection or byte."""
        return "ms/conn" if self.kind == "handshake" else "ns/B"

    @property
    def cost_scale(self) -> float:
        return 1e3 if self.kind == "handshake" else 1e9


def build_cells(depths: Iterable[int], only: Sequence[str] = ()) -> list[Cell]:
    cells = []
    for depth in depths:
        for kind in _KINDS:
            for size in _SIZES:
                for app in _APPS:
                    cells.append(Cell(kind, size, app, depth))
        cells.append(Cell("handshake", 0, "plain", depth))
    if only:
        cells = [c for c in cells if any(fnmatch.fnmatch(c.name, p) for p in only)]
    return cells


def _hostname(depth: int) -> str:
    return f"layer{depth}.onion.test"


# -- certificates and contexts ----------------------------------------------------


def _write_certs(directory: Path, depths: int) -> None:
    """A trustme CA and a server identity per depth, as PEM files."""
    from .testing import OnionCA

    ca = OnionCA()
    ca.ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    for depth in range(1, depths + 1):
        leaf = ca.server_cert(depth)
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"server{depth}.pem"))


def _stdlib_context(certs: Path, depth: int | None) -> ssl.SSLContext:
    """A TLS 1.3 context: a server's for ``depth``, or a client's (None)."""
    if depth is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(certs / "ca.pem"))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs / f"server{depth}.pem"))
    # The ssl module cannot choose TLS 1.3 suites; OpenSSL's default order
    # puts TLS_AES_256_GCM_SHA384 first (checked per connection).
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _pyopenssl_context(certs: Path, depth: int | None) -> object:
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(_CIPHER.encode())
    _same_key_exchange(ctx)
    if depth is None:
        ctx.load_verify_locations(str(certs / "ca.pem"))
        ctx.set_verify(SSL.VERIFY_PEER)
    else:
        pem = str(certs / f"server{depth}.pem")
        ctx.use_certificate_chain_file(pem)
        ctx.use_privatekey_file(pem)
    return ctx


def _same_key_exchange(ctx: Any) -> None:
    """X25519, as the ssl module's OpenSSL picks: pyOpenSSL runs on the
    OpenSSL that ``cryptography`` bundles, whose default (OpenSSL >= 3.5) is
    the hybrid X25519MLKEM768, which costs more per handshake; the bench
    compares the layering, not the key exchanges.  pyOpenSSL has no public
    call for it; skipped if its binding lacks the function."""
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - another pyOpenSSL
        return
    set_list = getattr(lib, "SSL_CTX_set1_curves_list", None)
    native = getattr(ctx, "_context", None)
    if set_list is not None and native is not None:
        set_list(native, _GROUP.encode())


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
        self._view = memoryview(bytearray(_READ_BUFFER))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self._wake()


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
        self._buf = bytearray(_READ_BUFFER)
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


class _Kit:
    """Contexts, listeners and connections for one implementation."""

    def __init__(self, impl: str, engine: str, certs: Path, depths: int) -> None:
        self.impl = impl
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle: list[tuple[asyncio.Transport, _Client]] = []
        onion_pyopenssl = impl == "onion_tls" and engine == "pyopenssl"
        make = _pyopenssl_context if onion_pyopenssl else _stdlib_context
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
                make_asyncio, _HOST, 0, ssl=self.server_ctx[1], backlog=1024
            )
            return server

        from ._transport import wrap

        return await loop.create_server(
            wrap(lambda: _OnionClimb(self, depth, factory)), _HOST, 0, backlog=1024
        )

    # clients

    async def connect(self, port: int, depth: int, app: _Client) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        ctx = self.client_ctx
        if self.impl == "asyncio":
            assert isinstance(ctx, ssl.SSLContext)
            proto: asyncio.BaseProtocol = app if depth == 1 else _Setup()
            transport, _ = await loop.create_connection(
                lambda: proto, _HOST, port, ssl=ctx, server_hostname=_hostname(1)
            )
            for d in range(2, depth + 1):
                assert isinstance(proto, _Setup)
                await proto.ready(1)  # a new _Setup per layer
                proto = app if d == depth else _Setup()
                new = await loop.start_tls(transport, proto, ctx, server_hostname=_hostname(d))
                assert new is not None
                transport = new
            if depth > 1:
                app.connection_made(transport)
            return transport

        from ._transport import wrap

        setup = _Setup(first=(ctx, _hostname(1)))
        await loop.create_connection(wrap(lambda: setup), _HOST, port)
        onion = setup.transport
        assert setup.started is not None
        await setup.started
        for d in range(2, depth + 1):
            await setup.ready(d - 1)
            await onion.start_tls(ctx, server_hostname=_hostname(d))
        onion.set_protocol(app)
        app.connection_made(onion)
        return onion  # type: ignore[no-any-return]

    async def close(self, transport: asyncio.Transport, app: _Client) -> None:
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(app.lost), 5.0)
        except TimeoutError:
            transport.abort()


class _AsyncioClimb(asyncio.Protocol):
    """asyncio server, depth > 1: after each handshake, send ``R`` inside
    the new layer and start the next one with ``loop.start_tls``."""

    def __init__(self, kit: _Kit, depth: int, factory: Callable[[], _Server]) -> None:
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

    def __init__(self, kit: _Kit, depth: int, factory: Callable[[], _Server]) -> None:
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


async def _sink(kit: _Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    app = _new_app(cell.app)
    t = await kit.connect(port, cell.depth, app)
    cipher = _cipher_of(t)
    size = cell.size
    chunk = bytes(size)
    batch = max(1, _BATCH // size)
    sent = 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
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
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    await kit.close(t, app)
    return {"value": sent / elapsed / _MB, "cipher": cipher, "cpu": cpu, "work": sent}


async def _echo(kit: _Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    app = _new_app(cell.app)
    t = await kit.connect(port, cell.depth, app)
    cipher = _cipher_of(t)
    size = cell.size
    chunk = bytes(size)
    batch = max(1, _BATCH // size)
    sent = 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        n = 0
        while n < batch and not app.paused and sent - app.received < _ECHO_WINDOW:
            t.write(chunk)
            sent += size
            n += 1
        if n < batch:
            await app.wait()
        else:
            await asyncio.sleep(0)
    while app.received < sent:
        await app.wait()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    await kit.close(t, app)
    return {"value": sent / elapsed / _MB, "cipher": cipher, "cpu": cpu, "work": sent}


async def _handshakes(kit: _Kit, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
    count = 0
    busy = 0.0
    cipher = "?"
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while count < 3 or (time.perf_counter() < end and count < _MAX_HANDSHAKES):
        app = _PlainClient()
        t0 = time.perf_counter()
        t = await kit.connect(port, cell.depth, app)
        busy += time.perf_counter() - t0
        count += 1
        cipher = _cipher_of(t)
        await kit.close(t, app)
    cpu = time.process_time() - cpu
    return {"value": count / busy, "cipher": cipher, "cpu": cpu, "work": count}


async def _idle_open(kit: _Kit, port: int, count: int) -> dict[str, Any]:
    limit = asyncio.Semaphore(_IDLE_CONCURRENCY)

    async def one() -> None:
        async with limit:
            app = _PlainClient()
            t = await kit.connect(port, _IDLE_DEPTH, app)
            kit.idle.append((t, app))

    await asyncio.gather(*(one() for _ in range(count)))
    await asyncio.sleep(0.3)  # late session tickets and the like
    gc.collect()
    return {"rss": _rss(), "open": len(kit.idle)}


async def _idle_close(kit: _Kit) -> dict[str, Any]:
    idle, kit.idle = kit.idle, []
    for t, _ in idle:
        t.close()
    try:
        await asyncio.wait_for(asyncio.gather(*(app.lost for _, app in idle)), 30.0)
    except TimeoutError:
        for t, _ in idle:
            t.abort()
    return {"closed": len(idle)}


_MEASURE = {"sink": _sink, "echo": _echo, "handshake": _handshakes}


# -- worker processes ----------------------------------------------------------------


def _rss() -> int:
    """Resident memory now, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss()


def _peak_rss() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _raise_fd_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop  # optional: only when installed

        return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)
    return asyncio.new_event_loop


def _worker(spec: dict[str, Any]) -> None:
    """A server or client process; commands on stdin, JSON lines on stdout."""
    _raise_fd_limit()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    kit_args = (spec["impl"], spec["engine"], Path(spec["certs"]), spec["depths"])
    with asyncio.Runner(loop_factory=_loop_factory(spec["loop"])) as runner:
        if spec["role"] == "server":
            runner.run(_server_main(_Kit(*kit_args), spec["listeners"]))
        else:
            _client_main(runner, _Kit(*kit_args))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
        _emit({"peak_rss": _peak_rss()})
        # Whatever connections are left die with the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _server_main(kit: _Kit, listeners: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = {name: await kit.serve(name) for name in listeners}
    ports = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"ports": ports})
    while True:
        line = await reader.readline()
        cmd = json.loads(line).get("cmd") if line else "quit"
        if cmd == "quit":
            break
        if cmd == "cpu":
            _emit({"cpu": time.process_time()})
            continue
        gc.collect()
        _emit({"rss": _rss()})
    for server in servers.values():
        server.close()


def _client_main(runner: asyncio.Runner, kit: _Kit) -> None:
    _emit({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "quit":
            break
        try:
            if what == "run":
                cell = Cell(**cmd["cell"])
                coro = _MEASURE[cell.kind](kit, cmd["port"], cell, cmd["seconds"])
            elif what == "idle_open":
                coro = _idle_open(kit, cmd["port"], cmd["count"])
            elif what == "idle_close":
                coro = _idle_close(kit)
            else:
                coro = _rss_now()
            result = runner.run(coro)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result = {"error": f"{type(exc).__name__}: {exc}"}
        _emit(result)


async def _rss_now() -> dict[str, Any]:
    gc.collect()
    return {"rss": _rss()}


class WorkerError(Exception):
    pass


class _Worker:
    """A worker process seen from the driver."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.spec = spec
        self.label = f"{spec['impl']} {spec['role']} ({spec['loop']})"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onion_tls.bench", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.label}: no answer within {timeout:g} s") from None
        if line is None:
            raise WorkerError(f"{self.label}: exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerError(f"{self.label}: {exc}") from None
        return self.receive(timeout)

    def stop(self) -> int | None:
        """Ask the worker to quit; return its peak RSS if it says."""
        peak = None
        try:
            answer = self.request({"cmd": "quit"}, 30.0)
            peak = answer.get("peak_rss")
        except WorkerError:
            pass
        self.kill()
        return peak

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


# -- the driver ------------------------------------------------------------------


@dataclass
class _Options:
    depths: list[int]
    seconds: float
    rounds: int
    engine: str
    loops: list[str]
    idle: int
    only: list[str]
    profile: str | None
    quick: bool


@dataclass
class _LoopResult:
    values: dict[tuple[Cell, str], list[float]]
    costs: dict[tuple[Cell, str], list[float]]  # CPU (client + server) per unit of work
    errors: dict[tuple[Cell, str], str]
    ciphers: set[str]
    peak: dict[tuple[str, str], int | None]  # (impl, role)
    idle: dict[tuple[str, str], float | str]  # (impl, role) -> bytes/conn or error


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONTRACEMALLOC"):
        env.pop(name, None)
    return env


def _start(
    opts: _Options, certs: Path, impl: str, loop: str, listeners: list[str], tag: str
) -> tuple[_Worker, _Worker, dict[str, int]]:
    env = _worker_env()
    base = {
        "impl": impl,
        "loop": loop,
        "engine": opts.engine,
        "certs": str(certs),
        "depths": max(max(opts.depths), _IDLE_DEPTH),
    }
    specs = []
    for role in ("server", "client"):
        spec = dict(base, role=role, listeners=listeners)
        if opts.profile and impl == "onion_tls":
            spec["profile"] = str(Path(opts.profile) / f"{tag}-{role}-{loop}.prof")
        specs.append(spec)
    server = _Worker(specs[0], env)
    try:
        ports = server.receive(60.0)["ports"]
        client = _Worker(specs[1], env)
        client.receive(60.0)
    except WorkerError:
        server.kill()
        raise
    return server, client, ports


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _bench_loop(opts: _Options, certs: Path, loop: str, cells: list[Cell]) -> _LoopResult:
    listeners = sorted({c.listener for c in cells})
    res = _LoopResult({}, {}, {}, set(), {}, {})
    workers: dict[str, tuple[_Worker, _Worker, dict[str, int]]] = {}
    limit = 60.0 + 5 * opts.seconds
    try:
        if cells:
            for impl in _IMPLS:
                workers[impl] = _start(opts, certs, impl, loop, listeners, "throughput")
        for rnd in range(opts.rounds):
            for i, cell in enumerate(cells):
                order = _IMPLS if (rnd + i) % 2 == 0 else _IMPLS[::-1]
                shown = []
                for impl in order:
                    key = (cell, impl)
                    if key in res.errors:
                        continue
                    server, client, ports = workers[impl]
                    cmd = {
                        "cmd": "run",
                        "cell": cell.__dict__,
                        "port": ports[cell.listener],
                        "seconds": opts.seconds,
                    }
                    try:
                        before = server.request({"cmd": "cpu"}, limit)["cpu"]
                        answer = client.request(cmd, limit)
                        server_cpu = server.request({"cmd": "cpu"}, limit)["cpu"] - before
                    except WorkerError as exc:
                        answer = {"error": str(exc)}
                        client.kill()
                        server.kill()
                        workers[impl] = _start(opts, certs, impl, loop, listeners, "throughput")
                    if "error" in answer:
                        res.errors[key] = answer["error"]
                        shown.append(f"{impl} failed: {answer['error']}")
                        continue
                    res.values.setdefault(key, []).append(answer["value"])
                    res.ciphers.add(answer["cipher"])
                    scale = cell.cost_scale / answer["work"]
                    cost = (answer["cpu"] + server_cpu) * scale
                    res.costs.setdefault(key, []).append(cost)
                    shown.append(
                        f"{impl} {answer['value']:.1f} ({cost:.2f} {cell.cost_unit}: client "
                        f"{answer['cpu'] * scale:.2f} + server {server_cpu * scale:.2f})"
                    )
                _progress(
                    f"[{loop} {rnd + 1}/{opts.rounds}] {cell.name} depth {cell.depth} "
                    f"({cell.unit}): " + ", ".join(shown)
                )
    finally:
        for impl, (server, client, _) in workers.items():
            res.peak[(impl, "client")] = client.stop()
            res.peak[(impl, "server")] = server.stop()
    if opts.idle > 0:
        for impl in _IMPLS:
            _idle_memory(opts, certs, loop, impl, res)
    return res


def _idle_memory(opts: _Options, certs: Path, loop: str, impl: str, res: _LoopResult) -> None:
    listener = f"idle/plain/{_IDLE_DEPTH}"
    try:
        server, client, ports = _start(opts, certs, impl, loop, [listener], "idle")
    except WorkerError as exc:
        res.idle[(impl, "client")] = res.idle[(impl, "server")] = str(exc)
        return
    port = ports[listener]
    limit = 120.0 + opts.idle / 20
    try:
        client.request({"cmd": "idle_open", "port": port, "count": _IDLE_WARMUP}, limit)
        base_c = client.request({"cmd": "rss"}, limit)["rss"]
        base_s = server.request({"cmd": "rss"}, limit)["rss"]
        answer = client.request({"cmd": "idle_open", "port": port, "count": opts.idle}, limit)
        if "error" in answer:
            raise WorkerError(answer["error"])
        time.sleep(0.3)
        top_s = server.request({"cmd": "rss"}, limit)["rss"]
        per_client = (answer["rss"] - base_c) / opts.idle
        per_server = (top_s - base_s) / opts.idle
        res.idle[(impl, "client")] = per_client
        res.idle[(impl, "server")] = per_server
        client.request({"cmd": "idle_close"}, limit)
        _progress(
            f"[{loop}] idle depth-{_IDLE_DEPTH} x{opts.idle} {impl}: "
            f"client {per_client / 1024:.1f} KiB/conn, server {per_server / 1024:.1f} KiB/conn"
        )
    except (WorkerError, KeyError) as exc:
        for role in ("client", "server"):
            res.idle.setdefault((impl, role), str(exc))
    finally:
        client.stop()
        server.stop()


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "conn/s" or value >= 100 else f"{value:.1f}"


def _table(opts: _Options, cells: list[Cell], results: dict[str, _LoopResult]) -> str:
    import platform

    from OpenSSL import SSL

    lines = []
    versions = [f"Python {platform.python_version()}", ssl.OPENSSL_VERSION]
    try:
        import uvloop

        versions.append(f"uvloop {getattr(uvloop, '__version__', '?')}")
    except ImportError:
        pass
    versions.append(f"pyOpenSSL {SSL.__version__}" if hasattr(SSL, "__version__") else "")
    ciphers = sorted(set().union(*(r.ciphers for r in results.values())))
    lines.append("onion_tls bench: onion_tls / asyncio's own TLS, same run, interleaved")
    lines.append("  " + ", ".join(v for v in versions if v) + f"; {os.cpu_count()} CPUs")
    lines.append(
        f"  onion_tls engine {opts.engine}; TLS 1.3, negotiated: {', '.join(ciphers) or '?'}, "
        f"key exchange {_GROUP}; 127.0.0.1, server and client in separate processes"
    )
    lines.append(
        f"  median of {opts.rounds} round(s) of {opts.seconds:g} s per cell; "
        "payload MB/s (10^6 B/s); handshake = connections/s with every layer"
    )
    lines.append(
        "  CPU cost: client + server CPU time per payload byte (ns/B) or per connection (ms/conn);"
    )
    lines.append(
        "  its ratio is asyncio / onion_tls (above 1: onion_tls is cheaper); it "
        "depends less on other load"
    )
    depths = sorted({c.depth for c in cells})
    names = list(dict.fromkeys(c.name for c in cells))
    by_key = {(c.name, c.depth): c for c in cells}

    def block(title: str, data: dict[tuple[Cell, str], list[float]], cost: bool) -> None:
        head = f"{title:<22}"
        sub = f"{'':<22}"
        for d in depths:
            head += f"| {'depth ' + str(d):<25}"
            sub += f"| {'onion':>8} {'asyncio':>8} {'ratio':>6} "
        lines.append(head)
        lines.append(sub)
        for name in names:
            row = f"{name:<22}"
            for d in depths:
                cell = by_key.get((name, d))
                if cell is None:
                    row += f"| {'':<25}"
                    continue
                meds: list[float | None] = []
                for impl in _IMPLS:
                    vals = data.get((cell, impl))
                    meds.append(statistics.median(vals) if vals else None)
                ours, theirs = meds
                if cost:  # lower is better: the ratio says how much cheaper
                    ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
                    cols = " ".join(f"{v:>8.2f}" if v else f"{'-':>8}" for v in meds)
                else:
                    ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
                    cols = f"{_fmt(ours, cell.unit):>8} {_fmt(theirs, cell.unit):>8}"
                row += f"| {cols} {ratio:>6} "
            lines.append(row)

    for loop, res in results.items():
        lines.append("")
        block("loop " + loop, res.values, cost=False)
        lines.append("")
        block("CPU cost, " + loop, res.costs, cost=True)
        for (cell, impl), err in sorted(res.errors.items(), key=lambda kv: str(kv[0])):
            lines.append(f"  ! {cell.name} depth {cell.depth} {impl}: {err}")
        lines.append("")
        lines.append(f"{'memory (' + loop + ')':<38}{'onion':>10} {'asyncio':>10} {'ratio':>7}")
        for role in ("server", "client"):
            peaks = [res.peak.get((impl, role)) for impl in _IMPLS]
            ours_p, theirs_p = peaks
            ratio = f"{ours_p / theirs_p:.2f}x" if ours_p and theirs_p else "-"
            cols = " ".join(f"{p / 2**20:>10.1f}" if p else f"{'-':>10}" for p in peaks)
            lines.append(f"  {'peak RSS, MiB, ' + role:<36}{cols} {ratio:>7}")
        if opts.idle > 0:
            for role in ("server", "client"):
                idle = [res.idle.get((impl, role)) for impl in _IMPLS]
                label = f"idle depth-{_IDLE_DEPTH} KiB/conn (x{opts.idle}), {role}"
                cols = " ".join(
                    f"{v / 1024:>10.1f}" if isinstance(v, float) else f"{'error':>10}" for v in idle
                )
                a, b = idle
                ratio = (
                    f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b else "-"
                )
                lines.append(f"  {label:<36}{cols} {ratio:>7}")
                for impl, v in zip(_IMPLS, idle, strict=True):
                    if isinstance(v, str):
                        lines.append(f"  ! idle {impl} {role}: {v}")
    unexpected = [c for c in ciphers if c != _CIPHER]
    if unexpected:
        lines.append(f"\n! negotiated {', '.join(unexpected)}, not only {_CIPHER}")
    return "\n".join(lines)


def _parse_depths(text: str) -> list[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad depths {text!r}: use e.g. 1-3 or 1,3") from None
        if not 1 <= first <= last <= 8:
            raise argparse.ArgumentTypeError(f"depths must be within 1-8, not {part!r}")
        out.update(range(first, last + 1))
    return sorted(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m onion_tls bench``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round per cell and few idle connections (a smoke run)",
    )
    parser.add_argument(
        "--depths",
        type=_parse_depths,
        default=[1, 2, 3],
        help="layer depths to measure, e.g. 1-3 or 1,3 (default 1-3)",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per cell (default 1, quick 0.2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)"
    )
    parser.add_argument(
        "--engine",
        choices=("pyopenssl", "stdlib"),
        default="pyopenssl",
        help="onion_tls TLS engine for every layer (default pyopenssl)",
    )
    parser.add_argument(
        "--loops",
        default=None,
        help="event loops, comma separated: asyncio,uvloop (default: both if uvloop is installed)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=None,
        help="idle depth-2 connections for the memory figure (default 1000, quick 100; 0: skip)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only cells whose name matches (e.g. 'sink-64k-*', 'handshake'); repeatable",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="run the onion_tls workers under cProfile and write DIR/*.prof",
    )


def _options(args: argparse.Namespace) -> _Options:
    quick = bool(args.quick)
    if args.loops:
        loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    else:
        loops = ["asyncio"]
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            loops.append("uvloop")
    for name in loops:
        if name not in ("asyncio", "uvloop"):
            raise SystemExit(f"unknown loop {name!r}: use asyncio or uvloop")
    seconds = args.seconds if args.seconds is not None else (0.2 if quick else 1.0)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    idle = args.idle if args.idle is not None else (100 if quick else 1000)
    if seconds <= 0 or rounds < 1 or idle < 0:
        raise SystemExit("--seconds must be > 0, --rounds >= 1, --idle >= 0")
    return _Options(
        depths=list(args.depths),
        seconds=seconds,
        rounds=rounds,
        engine=args.engine,
        loops=loops,
        idle=idle,
        only=list(args.only),
        profile=args.profile,
        quick=quick,
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the benchmark the parsed ``args`` describe; print the table."""
    opts = _options(args)
    if "uvloop" in opts.loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install uvloop)") from None
    if opts.profile:
        Path(opts.profile).mkdir(parents=True, exist_ok=True)
    cells = build_cells(opts.depths, opts.only)
    results: dict[str, _LoopResult] = {}
    with tempfile.TemporaryDirectory(prefix="onion-bench-") as tmp:
        certs = Path(tmp)
        _write_certs(certs, max(max(opts.depths), _IDLE_DEPTH))
        for loop in opts.loops:
            results[loop] = _bench_loop(opts, certs, loop, cells)
    print(_table(opts, cells, results), file=out or sys.stdout, flush=True)
    failed = any(r.errors for r in results.values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m onion_tls bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    sys.exit(main())
