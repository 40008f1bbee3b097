r"""Tools for testing code that stacks TLS layers, built on trustme.

* :class:`OnionCA` - one CA that issues a distinct server (and client)
  identity per depth and hands out ready contexts for either engine.
* :func:`memory_pair` - two onion stacks connected in memory (no sockets),
  with a :class:`MemoryPipe` you can let run by itself or step by hand, and
  a chunker to dribble the byte stream one byte (or any split) at a time.
* :func:`stream_pair` - the same with onion_tls streams on both ends
  (``asyncio.StreamReader`` + :class:`onion_tls.StreamWriter`), optionally
  with your server handler on one end.

The pytest plugin (:mod:`onion_tls.pytest_plugin`) exposes these as
fixtures: ``onion_ca``, ``onion_engine``, ``onion_pair``.

Example::

    async def test_two_layers(onion_ca):
        pair = await stream_pair()
        for depth in (1, 2):
            await pair.start_tls(onion_ca)
        pair.client.writer.write(b"ping\n")
        assert await pair.server.reader.readline() == b"ping\n"
        await pair.aclose()

Imports: :mod:`._transport`, :mod:`._view`, :mod:`.errors`,
:mod:`.streams` (for :func:`stream_pair`); trustme.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import trustme

from ._transport import OnionProtocol, OnionTransport
from .errors import OnionError

if TYPE_CHECKING:
    from OpenSSL import SSL

    from ._view import TLSLayer
    from .streams import ClientConnectedCallback, StreamWriter

__all__ = [
    "ENGINES",
    "Engine",
    "MemoryPipe",
    "MemoryTransport",
    "OnionCA",
    "OnionPair",
    "Stream",
    "StreamPair",
    "dribble",
    "memory_pair",
    "stream_pair",
]

Engine = Literal["pyopenssl", "stdlib"]
ENGINES: tuple[Engine, ...] = ("pyopenssl", "stdlib")

_VERSIONS = {
    "TLSv1.2": (ssl.TLSVersion.TLSv1_2, 0x0303),
    "TLSv1.3": (ssl.TLSVersion.TLSv1_3, 0x0304),
}


class OnionCA:
    """A trustme CA that issues one identity per layer depth.

    The server of depth ``d`` is ``layer{d}.onion.test`` (see
    :meth:`hostname`); clients of depth ``d`` present ``client{d}.onion.test``
    when mutual TLS is asked for.
    """

    def __init__(self, ca: trustme.CA | None = None) -> None:
        self.ca = ca if ca is not None else trustme.CA()
        self._servers: dict[str, trustme.LeafCert] = {}
        self._clients: dict[str, trustme.LeafCert] = {}

    @staticmethod
    def hostname(depth: int) -> str:
        """The server name of ``depth`` (what its certificate is for)."""
        return f"layer{depth}.onion.test"

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (PEM): what a peer must trust."""
        return bytes(self.ca.cert_pem.bytes())

    def write_ca_pem(self, path: str) -> None:
        """Write the CA certificate to ``path`` (for ``--cafile`` and the
        like)."""
        self.ca.cert_pem.write_to_path(path)

    def server_cert(self, depth: int) -> trustme.LeafCert:
        name = self.hostname(depth)
        if name not in self._servers:
            self._servers[name] = self.ca.issue_cert(name)
        return self._servers[name]

    def client_cert(self, depth: int) -> trustme.LeafCert:
        name = f"client{depth}.onion.test"
        if name not in self._clients:
            self._clients[name] = self.ca.issue_cert(name)
        return self._clients[name]

    def server_context(
        self,
        depth: int,
        engine: Engine = "pyopenssl",
        *,
        version: str | None = None,
        require_client_cert: bool = False,
        alpn: Iterable[str] | None = None,
    ) -> Any:
        """A server context presenting the identity of ``depth``."""
        cert = self.server_cert(depth)
        if engine == "stdlib":
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert.configure_cert(sctx)
            if require_client_cert:
                sctx.verify_mode = ssl.CERT_REQUIRED
                self.ca.configure_trust(sctx)
            if version is not None:
                sctx.minimum_version = sctx.maximum_version = _VERSIONS[version][0]
            if alpn is not None:
                sctx.set_alpn_protocols(list(alpn))
            return sctx
        from OpenSSL import SSL

        pctx = SSL.Context(SSL.TLS_METHOD)
        cert.configure_cert(pctx)
        if require_client_cert:
            self.ca.configure_trust(pctx)
            pctx.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1])
            )
        _pyopenssl_version(pctx, version)
        if alpn is not None:
            offered = [p.encode() for p in alpn]

            def select(conn: SSL.Connection, protos: list[bytes]) -> bytes:
                for p in offered:
                    if p in protos:
                        return p
                return b""

            pctx.set_alpn_select_callback(select)
        return pctx

    def client_context(
        self,
        engine: Engine = "pyopenssl",
        *,
        depth: int | None = None,
        version: str | None = None,
        alpn: Iterable[str] | None = None,
        trust: bool = True,
    ) -> Any:
        """A client context trusting this CA; with ``depth``, it also
        presents the client identity of that depth (mutual TLS)."""
        if engine == "stdlib":
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if trust:
                self.ca.configure_trust(sctx)
            if depth is not None:
                self.client_cert(depth).configure_cert(sctx)
            if version is not None:
                sctx.minimum_version = sctx.maximum_version = _VERSIONS[version][0]
            if alpn is not None:
                sctx.set_alpn_protocols(list(alpn))
            return sctx
        from OpenSSL import SSL

        pctx = SSL.Context(SSL.TLS_METHOD)
        if trust:
            self.ca.configure_trust(pctx)
        if depth is not None:
            self.client_cert(depth).configure_cert(pctx)
        _pyopenssl_version(pctx, version)
        if alpn is not None:
            pctx.set_alpn_protos([p.encode() for p in alpn])
        return pctx


def _pyopenssl_version(ctx: SSL.Context, version: str | None) -> None:
    if version is None:
        return
    from OpenSSL import SSL

    code = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}[version]
    ctx.set_min_proto_version(code)
    ctx.set_max_proto_version(code)


# -- in-memory transports -------------------------------------------------------


def _deliver(protocol: asyncio.BaseProtocol | None, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as an event loop would: through
    ``get_buffer``/``buffer_updated`` for a ``BufferedProtocol``."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif protocol is not None:
        protocol.data_received(data)  # type: ignore[attr-defined]


Chunker = Callable[[bytes], Iterable[bytes]]


def dribble(size: int = 1) -> Chunker:
    """A chunker that delivers the stream ``size`` bytes at a time."""

    def split(data: bytes) -> Iterable[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return split


class MemoryTransport(asyncio.Transport):
    """One end of a :class:`MemoryPipe`: behaves like a TCP socket transport
    (buffering, EOF, close after flush, abort as a reset, flow control)."""

    def __init__(self, pipe: MemoryPipe, name: str) -> None:
        super().__init__()
        self._pipe = pipe
        self.name = name
        self.protocol: asyncio.BaseProtocol | None = None
        self.peer: MemoryTransport
        self.outgoing: deque[bytes] = deque()
        self._out_size = 0
        self._closing = False
        self._eof_written = False
        self._eof_sent = False
        self._lost = False
        self._reading = True
        self._inbox: deque[bytes | None] = deque()
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._write_paused = False

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_written:
            raise RuntimeError("write() after write_eof()")
        if self._lost or not data:
            return
        data = bytes(data)
        self.outgoing.append(data)
        self._out_size += len(data)
        self._maybe_pause()
        self._pipe._kick()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_written or self._lost:
            return
        self._eof_written = True
        self._pipe._kick()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low
        self._maybe_pause()

    def _maybe_pause(self) -> None:
        proto = self.protocol
        if proto is None or self._lost:
            return
        if not self._write_paused and self._out_size > self._high:
            self._write_paused = True
            proto.pause_writing()
        elif self._write_paused and self._out_size <= self._low:
            self._write_paused = False
            proto.resume_writing()

    # reading
    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._pipe._kick()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # ending
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self._pipe._kick()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self.outgoing.clear()
        self._out_size = 0
        self._pipe._connection_lost(self, None)
        self._pipe._reset(self.peer)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "peername": ("memory", self.peer.name),
            "sockname": ("memory", self.name),
        }.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


class MemoryPipe:
    """Two :class:`MemoryTransport` ends joined back to back.

    With ``auto=True`` (the default) bytes move by themselves, on the event
    loop, like a socket pair.  With ``auto=False`` nothing moves until the
    test calls :meth:`step` or :meth:`pump`, so every interleaving can be
    chosen.  ``chunker`` cuts each write before delivery (see
    :func:`dribble`); ``coalesce`` joins everything pending into one read.

    ``close()`` is a full close, as on TCP: bytes written afterwards toward
    the closed end make it answer with a reset.  With ``half_close=True`` a
    closed end still takes (and drops) what is sent to it, like a peer that
    only shut down its writing side (``shutdown(SHUT_WR)``).
    """

    def __init__(
        self,
        *,
        auto: bool = True,
        chunker: Chunker | None = None,
        coalesce: bool = False,
        half_close: bool = False,
    ) -> None:
        self.half_close = half_close
        self.a = MemoryTransport(self, "a")
        self.b = MemoryTransport(self, "b")
        self.a.peer, self.b.peer = self.b, self.a
        self.auto = auto
        self.chunker = chunker
        self.coalesce = coalesce
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        #: Every byte that crossed the pipe, per direction.
        self.sent: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}

    def connect(self, proto_a: asyncio.BaseProtocol, proto_b: asyncio.BaseProtocol) -> None:
        self.a.protocol, self.b.protocol = proto_a, proto_b
        proto_a.connection_made(self.a)
        proto_b.connection_made(self.b)

    def _kick(self) -> None:
        if self.auto and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._auto_pump)

    def _auto_pump(self) -> None:
        self._scheduled = False
        self.pump()

    def step(self, src: MemoryTransport | None = None) -> bool:
        """Deliver one chunk from ``src`` (either end when None); returns
        False when nothing was pending."""
        ends = (src,) if src is not None else (self.a, self.b)
        return any(self._step_one(t) for t in ends)

    def pump(self, max_steps: int = 1_000_000) -> None:
        """Move bytes until nothing is pending (or receivers are paused)."""
        for _ in range(max_steps):
            if not self.step():
                return

    def _step_one(self, src: MemoryTransport) -> bool:
        if isinstance(src.protocol, OnionProtocol):
            # Like a turn of the loop: small writes an onion stack gathered
            # go out before the pipe moves bytes.
            src.protocol.send_gathered()
        dst = src.peer
        if src._lost:
            return False
        if src.outgoing and dst._lost:
            # The peer's socket is gone.  A closing socket is done once its
            # buffer is handed over; a live one gets the peer's RST.
            src.outgoing.clear()
            src._out_size = 0
            if self.half_close:
                src._maybe_pause()
                return True
            if src._closing:
                self._connection_lost(src, None)
            else:
                self._reset(src)
            return True
        if src.outgoing and dst._reading and not dst._lost:
            if self.coalesce:
                data = b"".join(src.outgoing)
                src.outgoing.clear()
            else:
                data = src.outgoing.popleft()
            src._out_size -= len(data)
            self.sent[src.name] += data
            src._maybe_pause()
            pieces = self.chunker(data) if self.chunker else (data,)
            for piece in pieces:
                if dst._lost:
                    break
                _deliver(dst.protocol, piece)
            return True
        if src.outgoing:
            return False
        if (src._eof_written or src._closing) and not src._eof_sent:
            src._eof_sent = True
            if not dst._lost:
                keep = dst.protocol.eof_received()  # type: ignore[union-attr]
                if not keep:
                    dst.close()
            if src._closing:
                self._connection_lost(src, None)
            return True
        if src._closing and src._eof_sent:
            # close() after write_eof(): the EOF has gone already.
            self._connection_lost(src, None)
            return True
        return False

    def _connection_lost(self, t: MemoryTransport, exc: Exception | None) -> None:
        if t._lost:
            return
        t._lost = True
        t._closing = True
        proto = t.protocol
        if proto is not None:
            self._loop.call_soon(proto.connection_lost, exc)
        self._kick()

    def _reset(self, t: MemoryTransport) -> None:
        t.outgoing.clear()
        t._out_size = 0
        self._connection_lost(t, ConnectionResetError("connection reset by peer (memory pipe)"))


class OnionPair:
    """Two onion stacks joined by a :class:`MemoryPipe`."""

    def __init__(self, pipe: MemoryPipe, client: OnionProtocol, server: OnionProtocol) -> None:
        self.pipe = pipe
        self.client_onion = client
        self.server_onion = server

    @property
    def client(self) -> OnionTransport:
        """The client application's transport."""
        return self.client_onion.transport

    @property
    def server(self) -> OnionTransport:
        return self.server_onion.transport

    @property
    def client_protocol(self) -> asyncio.BaseProtocol:
        return self.client.get_protocol()

    @property
    def server_protocol(self) -> asyncio.BaseProtocol:
        return self.server.get_protocol()

    async def start_tls(
        self,
        ca: OnionCA,
        depth: int | None = None,
        *,
        client_engine: Engine = "pyopenssl",
        server_engine: Engine = "pyopenssl",
        swap_roles: bool = False,
        version: str | None = None,
        mutual: bool = False,
    ) -> tuple[TLSLayer, TLSLayer]:
        """Push one layer on both sides and wait for both handshakes.

        Returns ``(client_side_layer, server_side_layer)``; with
        ``swap_roles`` the "client" application is the TLS server of this
        layer.
        """
        return await _push_both(
            ca,
            self.client,
            self.server,
            depth=len(self.client.layers) + 1 if depth is None else depth,
            client_engine=client_engine,
            server_engine=server_engine,
            swap_roles=swap_roles,
            version=version,
            mutual=mutual,
            alpn=None,
        )

    async def stop_tls(self) -> tuple[TLSLayer, TLSLayer]:
        """Pop the innermost layer on both sides (the client speaks first)."""
        fc = self.client.stop_tls()
        fs = self.server.stop_tls()
        return tuple(await asyncio.gather(fc, fs))  # type: ignore[return-value]


async def memory_pair(
    client_factory: Callable[[], asyncio.BaseProtocol],
    server_factory: Callable[[], asyncio.BaseProtocol],
    *,
    auto: bool = True,
    chunker: Chunker | None = None,
    coalesce: bool = False,
    half_close: bool = False,
) -> OnionPair:
    """Connect a client and a server application through two onion stacks
    over an in-memory pipe (see :class:`MemoryPipe` for the options)."""
    pipe = MemoryPipe(auto=auto, chunker=chunker, coalesce=coalesce, half_close=half_close)
    client = OnionProtocol(client_factory())
    server = OnionProtocol(server_factory())
    pipe.connect(client, server)
    return OnionPair(pipe, client, server)


class _TLSStarter(Protocol):
    # What both OnionTransport and StreamWriter offer.
    def start_tls(
        self, context: Any, *, server_side: bool = ..., server_hostname: str | None = ...
    ) -> asyncio.Future[TLSLayer]: ...


async def _push_both(
    ca: OnionCA,
    client: _TLSStarter,
    server: _TLSStarter,
    *,
    depth: int,
    client_engine: Engine,
    server_engine: Engine,
    swap_roles: bool,
    version: str | None,
    mutual: bool,
    alpn: Iterable[str] | None,
) -> tuple[TLSLayer, TLSLayer]:
    tls_client, tls_server = (server, client) if swap_roles else (client, server)
    sctx = ca.server_context(
        depth, server_engine, version=version, require_client_cert=mutual, alpn=alpn
    )
    cctx = ca.client_context(
        client_engine, version=version, depth=depth if mutual else None, alpn=alpn
    )
    fs = tls_server.start_tls(sctx, server_side=True)
    fc = tls_client.start_tls(cctx, server_side=False, server_hostname=ca.hostname(depth))
    lc, ls = await asyncio.gather(fc, fs)
    return (ls, lc) if swap_roles else (lc, ls)


# -- streams in memory ----------------------------------------------------------


class Stream(NamedTuple):
    """One end of a :class:`StreamPair`; unpacks as ``reader, writer``."""

    reader: asyncio.StreamReader
    writer: StreamWriter


class StreamPair:
    """Two onion_tls stream ends joined by a :class:`MemoryPipe`.

    ``client`` and ``server`` are :class:`Stream` tuples.  When the pair was
    made with a ``handler``, the server end belongs to it (it runs as
    :attr:`server_task`); :meth:`start_tls` still pushes the server side of
    each layer unless you let the handler do it.

    Use it as an async context manager, or call :meth:`aclose` at the end.
    """

    def __init__(
        self, pipe: MemoryPipe, client: Stream, server: Stream, task: asyncio.Task[None] | None
    ) -> None:
        self.pipe = pipe
        self.client = client
        self.server = server
        self.server_task = task

    async def start_tls(
        self,
        ca: OnionCA,
        depth: int | None = None,
        *,
        engine: Engine | None = None,
        client_engine: Engine = "pyopenssl",
        server_engine: Engine = "pyopenssl",
        swap_roles: bool = False,
        version: str | None = None,
        mutual: bool = False,
        alpn: Iterable[str] | None = None,
    ) -> tuple[TLSLayer, TLSLayer]:
        """Push one layer on both ends (the identity of ``depth``, by
        default the next depth) and wait for both handshakes.

        ``engine`` sets both ends' engine at once.  Returns ``(client_layer,
        server_layer)``; with ``swap_roles`` the client end is the TLS server
        of this layer.
        """
        if engine is not None:
            client_engine = server_engine = engine
        return await _push_both(
            ca,
            self.client.writer,
            self.server.writer,
            depth=len(self.client.writer.layers) + 1 if depth is None else depth,
            client_engine=client_engine,
            server_engine=server_engine,
            swap_roles=swap_roles,
            version=version,
            mutual=mutual,
            alpn=alpn,
        )

    async def stop_tls(self) -> tuple[TLSLayer, TLSLayer]:
        """Pop the innermost layer on both ends (the client speaks first)."""
        fc = self.client.writer.stop_tls()
        fs = self.server.writer.stop_tls()
        lc, ls = await asyncio.gather(fc, fs)
        return lc, ls

    async def aclose(self) -> None:
        """Close both ends (orderly: close_notify on every layer) and wait
        for the handler, if any, to return."""
        for end in (self.client, self.server):
            end.writer.close()
        for end in (self.client, self.server):
            try:
                await end.writer.wait_closed()
            except (ConnectionError, OnionError):
                pass
        if self.server_task is not None:
            await self.server_task

    async def __aenter__(self) -> StreamPair:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def stream_pair(
    handler: ClientConnectedCallback | None = None,
    *,
    auto: bool = True,
    chunker: Chunker | None = None,
    coalesce: bool = False,
    half_close: bool = False,
    limit: int = 2**16,
) -> _OpenPair:
    """Connect two onion_tls stream ends in memory (no sockets).

    Use either ``pair = await stream_pair(...)`` (then ``await
    pair.aclose()``) or ``async with stream_pair(...) as pair:``.

    Args:
      handler: optional; called as ``handler(reader, writer)`` with the
        server end, like a ``start_server`` callback.  When it returns, its
        writer is closed.
      auto, chunker, coalesce, half_close: see :class:`MemoryPipe`; e.g.
        ``chunker=dribble(1)`` delivers the stream one byte per read, and
        ``auto=False`` moves nothing until you call ``pair.pipe.step()``.
      limit: the readers' buffer limit.
    """
    return _OpenPair(
        handler,
        auto=auto,
        chunker=chunker,
        coalesce=coalesce,
        half_close=half_close,
        limit=limit,
    )


class _OpenPair:
    """What :func:`stream_pair` returns: awaitable, and an async context
    manager that closes the pair on exit."""

    def __init__(self, handler: ClientConnectedCallback | None, **kw: Any) -> None:
        self._handler = handler
        self._kw = kw
        self._pair: StreamPair | None = None

    def __await__(self) -> Generator[Any, None, StreamPair]:
        return self._open().__await__()

    async def __aenter__(self) -> StreamPair:
        self._pair = await self._open()
        return self._pair

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._pair is not None
        await self._pair.aclose()

    async def _open(self) -> StreamPair:
        from .streams import StreamProtocol

        kw = self._kw
        loop = asyncio.get_running_loop()
        pipe = MemoryPipe(
            auto=kw["auto"],
            chunker=kw["chunker"],
            coalesce=kw["coalesce"],
            half_close=kw["half_close"],
        )
        creader = asyncio.StreamReader(limit=kw["limit"], loop=loop)
        sreader = asyncio.StreamReader(limit=kw["limit"], loop=loop)
        cproto = StreamProtocol(creader)
        sproto = StreamProtocol(sreader, accepted=True)
        pipe.connect(OnionProtocol(cproto), OnionProtocol(sproto))
        assert cproto.writer is not None and sproto.writer is not None
        client = Stream(creader, cproto.writer)
        server = Stream(sreader, sproto.writer)
        task = None
        if self._handler is not None:
            task = loop.create_task(_run_handler(self._handler, server))
        return StreamPair(pipe, client, server, task)


async def _run_handler(handler: ClientConnectedCallback, end: Stream) -> None:
    try:
        res = handler(end.reader, end.writer)
        if res is not None:
            await res
    finally:
        end.writer.close()
