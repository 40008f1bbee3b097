"""Two onion stacks joined in memory, ready to push layers on:
:class:`OnionPair` / :func:`memory_pair` (protocols on both ends) and
:class:`StreamPair` / :func:`stream_pair` (onion_tls streams on both ends,
optionally with a server handler).

Imports: :mod:`._ca`, :mod:`._memory`; :mod:`onion_tls._transport`,
:mod:`onion_tls.errors`, :mod:`onion_tls.streams` (for :func:`stream_pair`),
:mod:`onion_tls._view` (types only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .._transport import OnionProtocol, OnionTransport
from ..errors import OnionError
from ._ca import Engine, OnionCA
from ._memory import Chunker, MemoryPipe

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import ClientConnectedCallback, StreamWriter

__all__ = ["OnionPair", "Stream", "StreamPair", "memory_pair", "stream_pair"]


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
        from ..streams import StreamProtocol

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
