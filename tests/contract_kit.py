"""What an outside acceptance tester builds from DESIGN.md alone.

Only the public API is used: ``onion_tls.wrap``, ``OnionTransport`` methods,
``TLSLayer`` attributes, the error classes.  Contexts are built the way a user
builds them (``ssl.create_default_context()``, ``ssl.SSLContext`` +
trustme, ``OpenSSL.SSL.Context(TLS_METHOD)`` + trustme, with or without
``set_verify``).  Connections are real 127.0.0.1 sockets, optionally through
a tapping TCP proxy that records (and may dribble) every byte.

Black box on purpose: nothing from ``onion_tls.testing``, the library's
underscore modules or the suite's own kit (``tests/helpers.py``) is used, so
:class:`PKI` (beside ``OnionCA``) and :class:`App` (beside the kit's
``Recorder``) are deliberate duplicates: they are what a tester who has
only the contract would write.

Waiting is bounded by ``WAIT`` only to turn a hang into a readable failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import trustme
from OpenSSL import SSL

import onion_tls

WAIT = 10.0
ENGINES = ("pyopenssl", "stdlib")
# (client engine, server engine); pyopenssl-nv: OpenSSL context without set_verify
CLIENT_KINDS = ("pyopenssl", "pyopenssl-nv", "stdlib")
HOST = "onion.test"


class PKI:
    """A trustme CA and contexts built like a user builds them."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self._leaves: dict[str, trustme.LeafCert] = {}

    def leaf(self, name: str) -> trustme.LeafCert:
        if name not in self._leaves:
            self._leaves[name] = self.ca.issue_cert(name)
        return self._leaves[name]

    def server(
        self,
        engine: str,
        name: str = HOST,
        *,
        version: str | None = None,
        alpn: list[str] | None = None,
        want_client_cert: bool = False,
    ) -> Any:
        cert = self.leaf(name)
        if engine == "stdlib":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert.configure_cert(ctx)
            if version:
                v = getattr(ssl.TLSVersion, version.replace(".", "_"))
                ctx.minimum_version = ctx.maximum_version = v
            if alpn:
                ctx.set_alpn_protocols(alpn)
            if want_client_cert:
                ctx.verify_mode = ssl.CERT_REQUIRED
                self.ca.configure_trust(ctx)
            return ctx
        pctx = SSL.Context(SSL.TLS_METHOD)
        cert.configure_cert(pctx)
        if version:
            code = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}[version]
            pctx.set_min_proto_version(code)
            pctx.set_max_proto_version(code)
        if alpn:
            offered = [p.encode() for p in alpn]
            pctx.set_alpn_select_callback(
                lambda conn, protos: next((p for p in offered if p in protos), b"")
            )
        if want_client_cert:
            self.ca.configure_trust(pctx)
            pctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT)
        return pctx

    def client(
        self,
        engine: str,
        *,
        trust: bool = True,
        version: str | None = None,
        alpn: list[str] | None = None,
        cert_name: str | None = None,
    ) -> Any:
        if engine == "stdlib":
            ctx = ssl.create_default_context()
            if trust:
                self.ca.configure_trust(ctx)
            if version:
                v = getattr(ssl.TLSVersion, version.replace(".", "_"))
                ctx.minimum_version = ctx.maximum_version = v
            if alpn:
                ctx.set_alpn_protocols(alpn)
            if cert_name:
                self.leaf(cert_name).configure_cert(ctx)
            return ctx
        pctx = SSL.Context(SSL.TLS_METHOD)
        if trust:
            self.ca.configure_trust(pctx)
        if engine == "pyopenssl":
            pctx.set_verify(SSL.VERIFY_PEER)
        if version:
            code = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}[version]
            pctx.set_min_proto_version(code)
            pctx.set_max_proto_version(code)
        if alpn:
            pctx.set_alpn_protos([p.encode() for p in alpn])
        if cert_name:
            self.leaf(cert_name).configure_cert(pctx)
        return pctx


def engine_name(kind: str) -> str:
    return "stdlib" if kind == "stdlib" else "pyopenssl"


class App(asyncio.Protocol):
    """A plain asyncio protocol, as an outsider writes one, that records
    everything.  ``on_data`` / ``on_eof`` let a test act from inside the
    callbacks (STARTTLS)."""

    def __init__(self) -> None:
        self.transport: onion_tls.OnionTransport | None = None
        self.data = bytearray()
        self.received: list[tuple[int, bytes]] = []  # (len(layers) at delivery, data)
        self.eofs: list[int] = []  # len(layers) at each eof_received
        self.lost: list[BaseException | None] = []
        self.pauses = 0
        self.resumes = 0
        self.eof_return: bool | None = False
        self.on_data: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], bool | None] | None = None
        self._event: asyncio.Event | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.transport is None, "connection_made twice"
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport
        self._poke()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        assert not self.lost, "data_received after connection_lost"
        assert isinstance(data, bytes) and data
        self.data += data
        self.received.append((len(self.transport.layers), data))
        if self.on_data is not None:
            self.on_data(data)
        self._poke()

    def eof_received(self) -> bool | None:
        assert self.transport is not None
        assert not self.lost, "eof_received after connection_lost"
        self.eofs.append(len(self.transport.layers))
        result = self.on_eof() if self.on_eof is not None else self.eof_return
        self._poke()
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        assert not self.lost, f"connection_lost called twice: {self.lost!r} then {exc!r}"
        self.lost.append(exc)
        self._poke()

    def pause_writing(self) -> None:
        self.pauses += 1
        self._poke()

    def resume_writing(self) -> None:
        self.resumes += 1
        self._poke()

    # waiting
    def _poke(self) -> None:
        if self._event is not None:
            self._event.set()

    @property
    def t(self) -> onion_tls.OnionTransport:
        assert self.transport is not None
        return self.transport

    async def until(self, pred: Callable[[], bool], what: str = "condition") -> None:
        if self._event is None:
            self._event = asyncio.Event()
        try:
            async with asyncio.timeout(WAIT):
                while not pred():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}: data={bytes(self.data)!r} "
                f"eofs={self.eofs} lost={self.lost!r}"
            ) from None

    async def read(self, n: int) -> bytes:
        await self.until(lambda: len(self.data) >= n, f"{n} bytes")
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def expect(self, expected: bytes) -> None:
        got = await self.read(len(expected))
        assert got == expected

    async def wait_lost(self) -> BaseException | None:
        await self.until(lambda: bool(self.lost), "connection_lost")
        return self.lost[0]

    def data_at(self, depth: int) -> bytes:
        return b"".join(d for n, d in self.received if n == depth)


class Tap:
    """A TCP proxy on 127.0.0.1 that records every byte each way and can
    re-chunk the stream (``dribble``: forward one byte per write, yielding
    to the loop between writes)."""

    def __init__(self, target_port: int, dribble: int = 0) -> None:
        self.target_port = target_port
        self.dribble = dribble
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._transports: list[asyncio.BaseTransport] = []
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        return _TapSide(self, self.c2s, first=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for t in self._transports:
            t.abort()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.sleep(0)


class _TapSide(asyncio.Protocol):
    def __init__(self, tap: Tap, record: bytearray, first: bool) -> None:
        self.tap = tap
        self.record = record
        self.first = first
        self.peer: _TapSide | None = None
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.connected = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.tap._transports.append(transport)
        if self.first:
            self.tap._tasks.append(asyncio.ensure_future(self._dial()))

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        _, other = await loop.create_connection(
            lambda: _TapSide(self.tap, self.tap.s2c, first=False),
            "127.0.0.1",
            self.tap.target_port,
        )
        assert isinstance(other, _TapSide)
        self.peer, other.peer = other, self
        # each side forwards what it receives to the other side's transport
        self.tap._tasks.append(asyncio.ensure_future(self._pump()))
        self.tap._tasks.append(asyncio.ensure_future(other._pump()))
        self.connected.set()
        other.connected.set()

    async def _pump(self) -> None:
        await self.connected.wait()
        assert self.peer is not None
        while True:
            item = await self.queue.get()
            out = self.peer.transport
            assert out is not None
            if item is None:
                if not out.is_closing():
                    if out.can_write_eof():
                        out.write_eof()
                    else:  # pragma: no cover
                        out.close()
                return
            if self.tap.dribble:
                step = self.tap.dribble
                for i in range(0, len(item), step):
                    if out.is_closing():
                        return
                    out.write(item[i : i + step])
                    await asyncio.sleep(0)
            else:
                out.write(item)

    def data_received(self, data: bytes) -> None:
        self.record += data
        self.queue.put_nowait(data)

    def eof_received(self) -> bool:
        self.queue.put_nowait(None)
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.queue.put_nowait(None)


class Conn:
    """One loopback connection between two onion-wrapped apps."""

    def __init__(self, client: App, server: App, tap: Tap | None) -> None:
        self.c = client
        self.s = server
        self.tap = tap


@contextlib.asynccontextmanager
async def loopback(
    client_app: Callable[[], asyncio.BaseProtocol] = App,
    server_app: Callable[[], asyncio.BaseProtocol] = App,
    *,
    tap: bool = False,
    dribble: int = 0,
) -> AsyncIterator[Conn]:
    """A client app and a server app, each under onion_tls.wrap(), over a
    real 127.0.0.1 TCP connection (optionally through a :class:`Tap`)."""
    loop = asyncio.get_running_loop()
    servers: list[Any] = []

    def make_server() -> asyncio.BaseProtocol:
        servers.append(server_app())
        return servers[-1]

    srv = await loop.create_server(onion_tls.wrap(make_server), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    proxy: Tap | None = None
    if tap or dribble:
        proxy = Tap(port, dribble)
        await proxy.start()
        port = proxy.port
    apps: list[Any] = []
    try:
        _, onion = await loop.create_connection(onion_tls.wrap(client_app), "127.0.0.1", port)
        assert isinstance(onion, onion_tls.OnionProtocol)
        client = onion.transport.get_protocol()
        apps.append(client)
        async with asyncio.timeout(WAIT):
            while not servers or getattr(servers[0], "transport", None) is None:
                await asyncio.sleep(0.001)
        apps.append(servers[0])
        yield Conn(client, servers[0], proxy)
    finally:
        for app in apps:
            t = getattr(app, "transport", None)
            if t is not None and not getattr(app, "lost", [None]):
                t.abort()
        for app in apps:
            t = getattr(app, "transport", None)
            # (an app the test replaced with set_protocol() is told nothing more)
            if isinstance(app, App) and (t is None or t.get_protocol() is app):
                await app.wait_lost()
        if proxy is not None:
            await proxy.close()
        srv.close()
        await srv.wait_closed()


async def both(*futs: Any) -> list[Any]:
    """Await several start/stop futures, bounded."""
    async with asyncio.timeout(WAIT):
        return list(await asyncio.gather(*futs))


async def handshake(
    conn: Conn,
    pki: PKI,
    client_kind: str = "pyopenssl",
    server_engine: str = "pyopenssl",
    *,
    name: str = HOST,
    **server_kw: Any,
) -> tuple[onion_tls.TLSLayer, onion_tls.TLSLayer]:
    """Push one layer on both ends (client app = TLS client) and wait."""
    fs = conn.s.t.start_tls(pki.server(server_engine, name, **server_kw), server_side=True)
    fc = conn.c.t.start_tls(pki.client(client_kind), server_hostname=name)
    lc, ls = await both(fc, fs)
    return lc, ls


async def poll(pred: Callable[[], bool], what: str = "condition") -> None:
    """For conditions no protocol callback announces (socket buffers)."""
    try:
        async with asyncio.timeout(WAIT):
            while not pred():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def settle(rounds: int = 20) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


class RawPeer:
    """The other end written by hand, independent of onion_tls: plain TCP
    (asyncio streams) carrying one stdlib ``ssl.SSLObject`` over two
    ``MemoryBIO``s, stepped explicitly so a test can put any bytes on the
    wire in any order (data, close_notify and plaintext in one segment)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.raw_in = bytearray()  # every byte received
        self.tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.plain = bytearray()
        self.eof = False

    async def recv(self) -> bytes:
        async with asyncio.timeout(WAIT):
            data = await self.reader.read(65536)
        self.raw_in += data
        if not data:
            self.eof = True
        return data

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def begin(self, ctx: ssl.SSLContext, server_side: bool, hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=hostname
        )

    def pending_out(self) -> bytes:
        return self._out.read()

    async def handshake(
        self, ctx: ssl.SSLContext, server_side: bool, hostname: str | None = None
    ) -> None:
        self.begin(ctx, server_side, hostname)
        assert self.tls is not None
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send(self.pending_out())
                data = await self.recv()
                if not data:
                    raise ConnectionError("EOF during handshake") from None
                self._in.write(data)
            except ssl.SSLError:
                self.send(self.pending_out())
                raise
        self.send(self.pending_out())

    def encrypt(self, data: bytes) -> bytes:
        assert self.tls is not None
        self.tls.write(data)
        return self.pending_out()

    def close_notify(self) -> bytes:
        assert self.tls is not None
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        return self.pending_out()

    def _drain_tls(self) -> bool:
        """Decrypt what is buffered; True once the peer's close_notify came."""
        assert self.tls is not None
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return False
            except ssl.SSLZeroReturnError:
                return True
            if not chunk:
                return True
            self.plain += chunk

    async def read_plain(self, n: int) -> bytes:
        while len(self.plain) < n:
            if self._drain_tls() or len(self.plain) >= n:
                break
            data = await self.recv()
            if not data:
                break
            self._in.write(data)
        out = bytes(self.plain[:n])
        del self.plain[:n]
        return out

    async def until_close_notify(self) -> None:
        """Read until the peer's close_notify on this session; then finish
        our own shutdown state (unwrap) if we spoke first."""
        while not self._drain_tls():
            data = await self.recv()
            if not data:
                raise ConnectionError("EOF before close_notify")
            self._in.write(data)

    def leftover(self) -> bytes:
        """Bytes received after the session's close_notify (not yet read)."""
        return self._in.read()

    async def read_to_eof(self) -> bytes:
        start = len(self.raw_in)
        while not self.eof:
            try:
                await self.recv()
            except ConnectionResetError:
                self.eof = True
        return bytes(self.raw_in[start:])

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_peer(
    app: Callable[[], App] = App, *, onion_is_client: bool
) -> AsyncIterator[tuple[App, RawPeer]]:
    """An onion-wrapped app connected over loopback to a :class:`RawPeer`."""
    loop = asyncio.get_running_loop()
    peers: asyncio.Future[RawPeer] = loop.create_future()
    apps: list[App] = []

    def make() -> App:
        apps.append(app())
        return apps[-1]

    if onion_is_client:
        srv = await asyncio.start_server(
            lambda r, w: peers.set_result(RawPeer(r, w)), "127.0.0.1", 0
        )
        port = srv.sockets[0].getsockname()[1]
        await loop.create_connection(onion_tls.wrap(make), "127.0.0.1", port)
    else:
        srv = await loop.create_server(onion_tls.wrap(make), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        peers.set_result(RawPeer(r, w))
    async with asyncio.timeout(WAIT):
        peer = await peers
        while not apps or apps[0].transport is None:
            await asyncio.sleep(0.001)
    try:
        yield apps[0], peer
    finally:
        if not apps[0].lost:
            apps[0].t.abort()
        await apps[0].wait_lost()
        await peer.aclose()
        srv.close()
        await srv.wait_closed()
