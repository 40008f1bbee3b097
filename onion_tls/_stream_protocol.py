"""The protocol between a stream pair and the transport (asyncio):
:class:`StreamProtocol`, our own version of asyncio's
``StreamReaderProtocol``, aware of layers.

It feeds the reader, answers flow control for ``drain()``, makes the writer
and gives it to ``client_connected_cb``.  It remembers *which* layer fed EOF
to the reader, and takes that EOF back once the layer is popped
(:mod:`onion_tls.streams` tells the rules).  The writer itself is
:mod:`onion_tls.streams`' ``StreamWriter``; this module knows it only as
:class:`Writer` and gets it from :meth:`StreamProtocol.make_writer`, which
``onion_tls.streams.StreamProtocol`` provides.

Imports: asyncio, :mod:`._log`, :mod:`._stream_reader`, :mod:`._transport`,
:mod:`._view` (the type), :mod:`.errors`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ._log import logger
from ._stream_reader import StreamReader, reopen
from ._transport import OnionTransport
from .errors import TruncatedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._view import TLSLayer

__all__ = ["StreamProtocol", "Writer"]


class Writer(Protocol):
    """What the protocol asks of the writer it makes."""

    @property
    def transport(self) -> OnionTransport: ...

    def start_tls(
        self,
        context: Any = None,
        *,
        server_side: bool | None = None,
        handshake_timeout: float | None = 60.0,
        shutdown_timeout: float | None = 30.0,
    ) -> asyncio.Future[TLSLayer]: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


W = TypeVar("W", bound=Writer)


class StreamProtocol(asyncio.Protocol, Generic[W], metaclass=abc.ABCMeta):
    """asyncio's StreamReaderProtocol, made aware of layers; its writer
    (``W``) comes from :meth:`make_writer`, which a subclass provides
    (:class:`onion_tls.streams.StreamProtocol`)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_connected_cb: Callable[[asyncio.StreamReader, W], Awaitable[None] | None]
        | None = None,
        *,
        server_ssl: Any = None,
        handshake_timeout: float | None = 60.0,
        shutdown_timeout: float | None = 30.0,
        tasks: set[asyncio.Task[None]] | None = None,
        accepted: bool | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.StreamReader | None = reader
        self._cb = client_connected_cb
        self._server_ssl = server_ssl
        self._handshake_timeout = handshake_timeout
        self._shutdown_timeout = shutdown_timeout
        self._tasks = tasks
        #: This end accepted the connection: the TLS server by default.
        self.server_side = accepted if accepted is not None else client_connected_cb is not None
        self._transport: OnionTransport | None = None
        self._writer: W | None = None
        #: The layer whose close_notify fed EOF to the reader (None: no EOF,
        #: or a final one).
        self._eof_layer: TLSLayer | None = None
        self._final_eof = False
        #: Done when the connection is lost (with its error): wait_closed().
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.closed.add_done_callback(_consume)
        #: connection_lost() has been called.
        self.lost = False
        self._paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @abc.abstractmethod
    def make_writer(
        self,
        transport: OnionTransport,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> W:
        """The writer of this connection (called by connection_made)."""

    # -- asyncio.Protocol ---------------------------------------------------

    @property
    def writer(self) -> W | None:
        """The writer, once connected (package-internal: for
        ``onion_tls.testing``'s in-memory stream pairs)."""
        return self._writer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport), "use onion_tls.wrap()"
        self._transport = transport
        reader = self._reader
        assert reader is not None
        reader.set_transport(transport)
        self._writer = self.make_writer(transport, reader, self._loop)
        if self._cb is not None:
            task = self._loop.create_task(self._serve(reader, self._writer))
            if self._tasks is not None:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            return
        self._reopen_if_popped()
        reader.feed_data(data)

    def eof_received(self) -> bool:
        reader = self._reader
        transport = self._transport
        self._reopen_if_popped()
        layers = transport.layers if transport is not None else ()
        if layers:
            # The peer's close_notify on the innermost layer: the end of
            # that session's data, not of the connection.  Keep it open: the
            # application answers with stop_tls() (or closes).
            self._eof_layer = layers[-1]
        else:
            self._eof_layer = None
            self._final_eof = True
        if reader is not None:
            reader.feed_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._eof_layer = None
        self._final_eof = True
        reader = self._reader
        if reader is not None:
            if exc is None:
                reader.feed_eof()
            elif isinstance(exc, TruncatedError) and isinstance(reader, StreamReader):
                reader.feed_truncation(exc)
            else:
                reader.set_exception(exc)
        if not self.closed.done():
            if exc is None:
                self.closed.set_result(None)
            else:
                self.closed.set_exception(exc)
        for waiter in self._drain_waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
        self._reader = None
        self._transport = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- layers ---------------------------------------------------------------

    def _reopen_if_popped(self) -> None:
        """If the layer that fed EOF to the reader is gone, take the EOF back:
        what comes next is the layer beneath's."""
        layer = self._eof_layer
        transport = self._transport
        if layer is None or self._final_eof or transport is None:
            return
        if layer in transport.layers:
            return
        self._eof_layer = None
        if self._reader is not None:
            reopen(self._reader)
        # If the layer beneath has ended too (its close_notify, or the
        # socket's EOF, came while the popped layer was above it), the chain
        # calls eof_received() for it right after the pop.

    def layer_popped(self, fut: asyncio.Future[TLSLayer]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._reopen_if_popped()

    # -- flow control ---------------------------------------------------------

    async def drain_helper(self) -> None:
        if self.lost:
            raise ConnectionResetError("Connection lost")
        if not self._paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)

    # -- server side ----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: W) -> None:
        assert self._cb is not None
        if self._server_ssl is not None:
            try:
                await writer.start_tls(
                    self._server_ssl,
                    server_side=True,
                    handshake_timeout=self._handshake_timeout,
                    shutdown_timeout=self._shutdown_timeout,
                )
            except Exception as exc:  # noqa: BLE001 - the connection is closed already
                logger.info("%s: handshake failed, connection dropped: %s", _peer(writer), exc)
                return
        try:
            res = self._cb(reader, writer)
            if res is not None:
                await res
        except Exception as exc:  # noqa: BLE001 - reported as asyncio does
            self._loop.call_exception_handler(
                {
                    "message": "Unhandled exception in client_connected_cb",
                    "exception": exc,
                    "transport": writer.transport,
                }
            )
            writer.transport.abort()


def _consume(fut: asyncio.Future[None]) -> None:
    # wait_closed() may never be called: don't report the error twice.
    if not fut.cancelled():
        fut.exception()


def _peer(writer: Writer) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
