"""Shared test protocols and connection helpers for the core test suite.

* :class:`Recorder` - an application protocol that records everything the
  onion transport tells it, with awaitable reads (no sleep-polling).
* :func:`connect` - an async context manager giving a connected
  :class:`Pair` of onion stacks, either in memory (:func:`memory_pair`) or
  over real 127.0.0.1 loopback sockets; on exit both ends are torn down and
  every transport is closed, so no test leaks an unclosed transport.
* :func:`ctx` / :func:`start_layer` - contexts and one-layer handshakes with a
  per-depth choice of engine, version, roles and mutual TLS.

Waiting is bounded by ``WAIT`` seconds only to turn a hang into a readable
failure; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from cryptography import x509

from onion_tls import OnionProtocol, OnionTransport, TLSLayer
from onion_tls.testing import Chunker, Engine, MemoryPipe, OnionCA, OnionPair, memory_pair

WAIT = 10.0
KINDS = ("memory", "loopback")
Kind = Literal["memory", "loopback"]


class Recorder(asyncio.Protocol):
    """Records data, EOFs, losses and flow-control calls in order.

    ``eof_result`` is what ``eof_received()`` returns (``None``: keep the
    connection open while a TLS layer is left, like the smoke tests).
    ``on_data`` (if set) is called from inside ``data_received`` with the
    chunk, after it was recorded.
    """

    def __init__(self) -> None:
        self.transport: OnionTransport
        self.data = bytearray()
        self.chunks: list[bytes] = []
        self.at_depth: list[tuple[int, bytes]] = []
        self.events: list[tuple[Any, ...]] = []
        self.eofs = 0
        self.lost: list[BaseException | None] = []
        self.eof_result: bool | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], None] | None = None
        self.made = False
        self._waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        assert not self.made, "connection_made called twice"
        self.transport = transport
        self.made = True
        self._notify()

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        assert data, "data_received(b'')"
        assert not self.lost, "data_received after connection_lost"
        self.data += data
        self.chunks.append(data)
        #: (number of layers at delivery, data): which depth the data came through
        self.at_depth.append((len(self.transport.layers), data))
        self.events.append(("data", data, len(self.transport.layers)))
        if self.on_data is not None:
            self.on_data(data)
        self._notify()

    def eof_received(self) -> bool | None:
        assert not self.lost, "eof_received after connection_lost"
        self.eofs += 1
        self.events.append(("eof", len(self.transport.layers)))
        if self.on_eof is not None:
            self.on_eof()
        self._notify()
        if self.eof_result is None:
            return bool(self.transport.layers)
        return self.eof_result

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.events.append(("lost", exc))
        self._notify()

    def pause_writing(self) -> None:
        self.events.append(("pause_writing",))
        self._notify()

    def resume_writing(self) -> None:
        self.events.append(("resume_writing",))
        self._notify()

    # -- waiting ----------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        """Wait until ``predicate()`` holds, re-checking after every event."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(fut)
                    await fut
        except TimeoutError:
            raise AssertionError(
                f"gave up waiting for {what}; data={bytes(self.data[-200:])!r} "
                f"events={self.summary()}"
            ) from None

    async def read_exactly(self, n: int) -> bytes:
        await self.wait_for(lambda: len(self.data) >= n, f"{n} bytes")
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def expect(self, expected: bytes) -> None:
        got = await self.read_exactly(len(expected))
        assert got == expected, f"expected {expected[:100]!r}..., got {got[:100]!r}..."

    async def wait_eof(self, count: int = 1) -> None:
        await self.wait_for(lambda: self.eofs >= count, f"eof_received #{count}")

    async def wait_lost(self) -> BaseException | None:
        await self.wait_for(lambda: bool(self.lost), "connection_lost")
        return self.lost[0]

    def received_at(self, depth: int) -> bytes:
        """Everything delivered while ``depth`` layers were stacked."""
        return b"".join(data for d, data in self.at_depth if d == depth)

    def transcript(self) -> list[tuple[Any, ...]]:
        """What the application saw, independent of chunking: data merged
        per depth run, EOFs (with the depth they came at) and the loss."""
        out: list[tuple[Any, ...]] = []
        for ev in self.events:
            if ev[0] == "data":
                if out and out[-1][0] == "data" and out[-1][2] == ev[2]:
                    out[-1] = ("data", out[-1][1] + ev[1], ev[2])
                else:
                    out.append(ev)
            elif ev[0] == "lost":
                exc = ev[1]
                out.append(("lost", None if exc is None else (type(exc), str(exc))))
            elif ev[0] == "eof":
                out.append(ev)
        return out

    def summary(self) -> list[Any]:
        out: list[Any] = []
        for ev in self.events:
            if ev[0] == "data":
                out.append(("data", len(ev[1]), ev[2]))
            else:
                out.append(ev)
        return out


class Pair(OnionPair):
    """Two connected onion stacks (in memory or over loopback sockets)."""

    def __init__(
        self,
        kind: Kind,
        pipe: MemoryPipe | None,
        client: OnionProtocol,
        server: OnionProtocol,
        listener: asyncio.Server | None = None,
    ) -> None:
        super().__init__(pipe, client, server)  # type: ignore[arg-type]
        self.kind = kind
        self.listener = listener

    @property
    def c(self) -> Recorder:
        proto = self.client.get_protocol()
        assert isinstance(proto, Recorder)
        return proto

    @property
    def s(self) -> Recorder:
        proto = self.server.get_protocol()
        assert isinstance(proto, Recorder)
        return proto

    async def teardown(self) -> None:
        """Abort whatever is still open and wait for both connection_lost."""
        for onion in (self.client_onion, self.server_onion):
            if not onion._lost:
                onion.transport.abort()
        for rec in (self.c, self.s):
            await rec.wait_lost()
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()
        # let the socket transports finish closing
        for _ in range(3):
            await asyncio.sleep(0)


async def loopback_pair(
    client_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    server_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
) -> Pair:
    """Connect two onion stacks over a real 127.0.0.1 TCP connection."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[OnionProtocol] = loop.create_future()

    def server_side() -> OnionProtocol:
        onion = OnionProtocol(server_factory())
        assert not accepted.done(), "a second connection reached the test listener"
        accepted.set_result(onion)
        return onion

    listener = await loop.create_server(server_side, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: OnionProtocol(client_factory()), "127.0.0.1", port
    )
    async with asyncio.timeout(WAIT):
        server = await accepted
    # the server's connection_made runs in the accept callback
    rec = server.transport.get_protocol()
    if isinstance(rec, Recorder):
        await rec.wait_for(lambda: rec.made, "server connection_made")
    return Pair("loopback", None, client, server, listener)


@contextlib.asynccontextmanager
async def connect(
    kind: Kind,
    client_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    server_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    *,
    auto: bool = True,
    chunker: Chunker | None = None,
    coalesce: bool = False,
) -> AsyncIterator[Pair]:
    """A connected :class:`Pair`; torn down (and checked closed) on exit."""
    if kind == "memory":
        mp = await memory_pair(
            client_factory, server_factory, auto=auto, chunker=chunker, coalesce=coalesce
        )
        pair = Pair("memory", mp.pipe, mp.client_onion, mp.server_onion)
    else:
        assert auto and chunker is None and not coalesce, "memory-only options"
        pair = await loopback_pair(client_factory, server_factory)
    try:
        yield pair
    finally:
        if pair.pipe is not None and not pair.pipe.auto:
            pair.pipe.auto = True
            pair.pipe._kick()
        await pair.teardown()


# -- contexts and layers ------------------------------------------------------


def ctx(
    ca: OnionCA,
    engine: Engine,
    *,
    server: bool,
    depth: int,
    version: str | None = None,
    mutual: bool = False,
    alpn: list[str] | None = None,
) -> Any:
    if server:
        return ca.server_context(
            depth, engine, version=version, require_client_cert=mutual, alpn=alpn
        )
    return ca.client_context(engine, version=version, depth=depth if mutual else None, alpn=alpn)


async def start_layer(
    pair: Pair,
    ca: OnionCA,
    depth: int,
    *,
    client_engine: Engine = "pyopenssl",
    server_engine: Engine = "pyopenssl",
    swap_roles: bool = False,
    version: str | None = None,
    mutual: bool = False,
) -> tuple[TLSLayer, TLSLayer]:
    """Push one layer on both sides; returns (client app's view, server
    app's view).  With ``swap_roles`` the client application is the TLS
    server of this layer."""
    return await asyncio.wait_for(
        pair.start_tls(
            ca,
            depth,
            client_engine=client_engine,
            server_engine=server_engine,
            swap_roles=swap_roles,
            version=version,
            mutual=mutual,
        ),
        WAIT,
    )


def san(cert: x509.Certificate | None) -> list[str]:
    assert cert is not None, "no peer certificate"
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


async def settle(rounds: int = 20) -> None:
    """Let call_soon callbacks (memory pipe pumps, flushes) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def engines_for(mode: str, depth: int) -> tuple[Engine, Engine]:
    """(TLS client engine, TLS server engine) of a layer for a test mode."""
    if mode == "pyopenssl":
        return "pyopenssl", "pyopenssl"
    if mode == "stdlib":
        return "stdlib", "stdlib"
    # mixed: the engines alternate per depth and differ across the wire
    return ("pyopenssl", "stdlib") if depth % 2 else ("stdlib", "pyopenssl")


ENGINE_MODES = ("pyopenssl", "stdlib", "mixed")
#: (TLS client engine, TLS server engine)
ENGINE_PAIRS: list[tuple[Engine, Engine]] = [
    ("pyopenssl", "pyopenssl"),
    ("stdlib", "stdlib"),
    ("pyopenssl", "stdlib"),
    ("stdlib", "pyopenssl"),
]
ENGINE_PAIR_IDS = ["pp", "ss", "ps", "sp"]

__all__ = [
    "ENGINE_MODES",
    "ENGINE_PAIRS",
    "ENGINE_PAIR_IDS",
    "KINDS",
    "WAIT",
    "ManualTLS",
    "Pair",
    "Recorder",
    "connect",
    "ctx",
    "engines_for",
    "loopback_pair",
    "san",
    "settle",
    "start_layer",
]


class ManualTLS:
    """A hand-driven TLS endpoint (``ssl.SSLObject``) whose ciphertext
    travels as application data of an onion transport ``rec.transport`` (at
    whatever depth that transport is).  It lets a test do what a well-behaved
    onion peer never does: send bytes right after its close_notify, send
    garbage after the handshake, vanish mid-shutdown."""

    def __init__(
        self,
        rec: Recorder,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.rec = rec
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.plaintext = bytearray()
        self.peer_closed = False

    def take(self) -> bytes:
        """Ciphertext produced so far (not sent)."""
        return self.outgoing.read()

    def send(self, extra: bytes = b"") -> None:
        data = self.take() + extra
        if data:
            self.rec.transport.write(data)

    def _feed(self) -> None:
        if self.rec.data:
            self.incoming.write(bytes(self.rec.data))
            self.rec.data.clear()

    async def _more(self) -> None:
        await self.rec.wait_for(lambda: bool(self.rec.data), "bytes for the manual TLS peer")
        self._feed()

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self.send()
                await self._more()
            else:
                self.send()
                return

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.take()

    def close_notify(self) -> bytes:
        """Our close_notify, as bytes (not sent)."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        return self.take()

    def pump_reads(self) -> None:
        """Decrypt whatever has arrived."""
        self._feed()
        while True:
            try:
                data = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                return
            if not data:
                self.peer_closed = True
                return
            self.plaintext += data

    async def read_until_close_notify(self) -> bytes:
        """Application data up to the peer's close_notify (which must come)."""
        while True:
            self.pump_reads()
            if self.peer_closed:
                return bytes(self.plaintext)
            await self._more()
