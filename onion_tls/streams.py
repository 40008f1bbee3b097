"""Streams, mirroring asyncio's: :func:`open_connection`, :func:`start_server`
and a :class:`StreamWriter` that can push and pop TLS layers.

Theory of operation
-------------------

The reader is a plain ``asyncio.StreamReader``; the writer is this module's
:class:`StreamWriter`.  Between them and the :class:`~onion_tls.OnionTransport`
sits :class:`StreamProtocol`, our own version of asyncio's
``StreamReaderProtocol``: it feeds the reader, answers flow control for
``drain()``, and gives the writer to ``client_connected_cb``.

Two rules make one reader last across layer changes:

* **A layer's EOF is not the stream's end.**  A close_notify from the peer
  on the innermost layer feeds EOF to the reader (``read()`` returns
  ``b""``, ``readline()`` returns what is left), because the data of that
  session is complete.  The protocol remembers *which* layer the EOF came
  from.  Once that layer has been popped (``await writer.stop_tls()``), the
  EOF is taken back and the same reader goes on with the bytes of the layer
  beneath.  A plaintext EOF, or connection loss, is final.  The pop is
  noticed at the first of: the stop future's callback, the next bytes
  delivered (the bytes that followed the close_notify arrive right after the
  pop, before the future's callbacks run), the next EOF.

* **Bytes already in the reader are never fed to a new layer implicitly.**
  ``start_tls`` refuses while the reader holds unread bytes: they arrived
  before the upgrade, so they are either plaintext that must not be taken as
  protected (injected commands, the STARTTLS class of bugs) or the start of
  the peer's handshake (a pipelined ClientHello).  Only the application can
  tell, so it says: ``start_tls(..., initial_bytes=writer.take_buffered())``
  feeds them to the new layer; ``writer.take_buffered()`` alone discards
  them.

``StreamReader`` has no public way to take its buffer or to clear its EOF
flag; the two helpers that do (:func:`_take_buffer`, :func:`_reopen`) touch
``_buffer``/``_eof``, which are the same on Python 3.11 to 3.13, and a test
checks they still exist.

Imports: asyncio, :mod:`._log`, :mod:`._transport`, :mod:`._view`,
:mod:`.errors`.  :class:`StreamProtocol` (not in ``__all__``) is
package-internal: :mod:`onion_tls.testing` builds stream pairs with it.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl
import warnings
from typing import TYPE_CHECKING, Any

from ._log import logger
from ._transport import OnionProtocol, OnionTransport
from .errors import LayerStateError, TruncatedError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from ._view import TLSLayer

    ClientConnectedCallback = Callable[
        [asyncio.StreamReader, "StreamWriter"], Awaitable[None] | None
    ]

__all__ = ["StreamWriter", "open_connection", "start_server"]


_DEFAULT_LIMIT = 2**16  # 64 KiB, as asyncio


# -- the two places that reach into StreamReader ------------------------------


def _take_buffer(reader: asyncio.StreamReader) -> bytes:
    """Remove and return the bytes ``reader`` holds unread."""
    buf: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buf)
    buf.clear()
    reader._maybe_resume_transport()  # type: ignore[attr-defined]
    return data


def _buffered_size(reader: asyncio.StreamReader) -> int:
    return len(reader._buffer)  # type: ignore[attr-defined]


def _reopen(reader: asyncio.StreamReader) -> None:
    """Take back an EOF fed by a layer that has since been popped."""
    reader._eof = False  # type: ignore[attr-defined]


class _StreamReader(asyncio.StreamReader):
    """asyncio's ``StreamReader``, with one difference: a truncation (the
    connection ended inside a TLS layer without its close_notify) is raised
    where the EOF would have been returned, so that everything received and
    verified before it can still be read (``read(n)`` returns it and then
    raises :class:`~onion_tls.TruncatedError` instead of ``b""``;
    ``readexactly``/``readuntil`` raise it instead of
    ``IncompleteReadError``; ``readline`` returns a last partial line first)."""

    _truncation: TruncatedError | None = None
    _eof_means_partial = False

    def feed_truncation(self, exc: TruncatedError) -> None:
        self._truncation = exc
        self.feed_eof()

    def _check_truncation(self) -> None:
        if self._truncation is not None:
            raise self._truncation

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            # (asyncio's read(-1) calls read(limit) in a loop: through this
            # class it would raise at the end instead of returning the data)
            blocks = []
            while block := await super().read(_DEFAULT_LIMIT):
                blocks.append(block)
            data = b"".join(blocks)
        else:
            data = await super().read(n)
        if not data and n != 0:
            self._check_truncation()
        return data

    async def readline(self) -> bytes:
        # asyncio's readline() calls readuntil() and returns the partial
        # line of an IncompleteReadError: keep that for the last line.
        self._eof_means_partial = True
        try:
            line = await super().readline()
        finally:
            self._eof_means_partial = False
        if not line:
            self._check_truncation()
        return line

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError as exc:
            if self._truncation is not None and not self._eof_means_partial:
                raise self._truncation from exc
            raise

    async def readexactly(self, n: int) -> bytes:
        try:
            return await super().readexactly(n)
        except asyncio.IncompleteReadError as exc:
            if self._truncation is not None:
                raise self._truncation from exc
            raise


# -- the protocol -------------------------------------------------------------


class StreamProtocol(asyncio.Protocol):
    """asyncio's StreamReaderProtocol, made aware of layers."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        client_connected_cb: ClientConnectedCallback | None = None,
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
        self._writer: StreamWriter | None = None
        #: The layer whose close_notify fed EOF to the reader (None: no EOF,
        #: or a final one).
        self._eof_layer: TLSLayer | None = None
        self._final_eof = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._closed.add_done_callback(_consume)
        self._lost = False
        self._paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    # -- asyncio.Protocol ---------------------------------------------------

    @property
    def writer(self) -> StreamWriter | None:
        """The writer, once connected (package-internal: for
        ``onion_tls.testing``'s in-memory stream pairs)."""
        return self._writer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport), "use onion_tls.wrap()"
        self._transport = transport
        reader = self._reader
        assert reader is not None
        reader.set_transport(transport)
        self._writer = StreamWriter(transport, self, reader, self._loop)
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
        self._lost = True
        self._eof_layer = None
        self._final_eof = True
        reader = self._reader
        if reader is not None:
            if exc is None:
                reader.feed_eof()
            elif isinstance(exc, TruncatedError) and isinstance(reader, _StreamReader):
                reader.feed_truncation(exc)
            else:
                reader.set_exception(exc)
        if not self._closed.done():
            if exc is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(exc)
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
            _reopen(self._reader)
        # If the layer beneath has ended too (its close_notify, or the
        # socket's EOF, came while the popped layer was above it), the chain
        # calls eof_received() for it right after the pop.

    def _layer_popped(self, fut: asyncio.Future[TLSLayer]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._reopen_if_popped()

    # -- flow control ---------------------------------------------------------

    async def _drain_helper(self) -> None:
        if self._lost:
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

    async def _serve(self, reader: asyncio.StreamReader, writer: StreamWriter) -> None:
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


def _peer(writer: StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


# -- the writer ---------------------------------------------------------------


class StreamWriter:
    """asyncio's ``StreamWriter``, plus TLS layers.

    Everything asyncio's writer offers works the same (``write``,
    ``writelines``, ``drain``, ``close``, ``wait_closed``, ``is_closing``,
    ``can_write_eof``, ``write_eof``, ``get_extra_info``, ``transport``).
    On top of it: :meth:`start_tls`, :meth:`stop_tls`, :attr:`layers` and
    :meth:`take_buffered`.  Instances come from :func:`open_connection` and
    :func:`start_server`.
    """

    def __init__(
        self,
        transport: OnionTransport,
        protocol: StreamProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._reader = reader
        self._loop = loop

    def __repr__(self) -> str:
        return f"<onion_tls.StreamWriter transport={self._transport!r} reader={self._reader!r}>"

    @property
    def transport(self) -> OnionTransport:
        """The :class:`~onion_tls.OnionTransport`: the same object whatever
        layers come and go."""
        return self._transport

    # -- layers ---------------------------------------------------------------

    @property
    def layers(self) -> tuple[TLSLayer, ...]:
        """The current TLS layers, outermost first; ``()`` when plaintext."""
        return self._transport.layers

    def take_buffered(self) -> bytes:
        """Remove and return the bytes the reader holds but the application
        has not read yet.

        Use it at an upgrade: pass the result as ``start_tls(initial_bytes=...)``
        when those bytes belong to the new layer (a ClientHello that arrived
        right behind ``STARTTLS``), or drop it (plaintext sent before the
        upgrade, which must not be taken as protected).
        """
        data = _take_buffer(self._reader)
        # Reading was paused with more data waiting in the onion (the reader
        # was full): that data arrived before the upgrade too.  Hand it over
        # now, so that the caller's start_tls() finds nothing left behind.
        # (Taking the reader's buffer resumed reading, if it was paused.)
        self._transport.deliver_waiting()
        while more := _take_buffer(self._reader):
            data += more
            self._transport.deliver_waiting()
        return data

    def start_tls(
        self,
        context: Any = None,
        *,
        sslcontext: Any = None,
        server_side: bool | None = None,
        server_hostname: str | None = None,
        initial_bytes: bytes | bytearray | memoryview | None = None,
        session: object | None = None,
        handshake_timeout: float | None = 60.0,
        shutdown_timeout: float | None = 30.0,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Future[TLSLayer]:
        """Push a new innermost TLS layer, now, and start its handshake.

        The layer is spliced in when this method is *called*, not when its
        result is awaited, so the very next byte either way belongs to it.
        Writes made before the handshake ends are sent inside the new layer.

        Args:
          context: an ``ssl.SSLContext`` or an ``OpenSSL.SSL.Context``; it
            chooses the engine.  ``sslcontext=`` (asyncio's name) works too.
          server_side: be the TLS server of this layer.  By default, the
            side that accepted the connection (:func:`start_server`) is the
            server, as with asyncio's ``StreamWriter.start_tls``.
          server_hostname: (client) SNI, and the name the certificate must
            match.
          initial_bytes: bytes already received that belong to this layer,
            usually ``writer.take_buffered()``.
          session: a ``TLSLayer.session`` to resume.
          handshake_timeout: seconds, or None for no limit.
          shutdown_timeout: how long :meth:`close` waits for the
            close_notify alerts to leave while this layer is on (the
            smallest of the layers' counts), or None for no limit.
          ssl_handshake_timeout, ssl_shutdown_timeout: asyncio's names
            (``StreamWriter.start_tls`` of Python 3.11+); None keeps the
            above.

        Returns:
          A future (await it) for the layer's :class:`~onion_tls.TLSLayer`,
          once the handshake is done; it fails with
          :class:`~onion_tls.HandshakeError`.

        Raises:
          LayerStateError: the reader holds unread bytes (see
            :meth:`take_buffered`), a stop is pending, or the connection is
            closing.
        """
        if (context is None) == (sslcontext is None):
            raise TypeError("start_tls() takes one context (context or sslcontext)")
        if context is None:
            context = sslcontext
        pending = _buffered_size(self._reader)
        if pending:
            raise LayerStateError(
                f"the reader holds {pending} unread byte(s) that arrived before this "
                "start_tls(); they are never fed to a new layer implicitly. Pass "
                "initial_bytes=writer.take_buffered() if they belong to the new layer "
                "(a pipelined ClientHello), or call writer.take_buffered() to drop them "
                "(plaintext sent before the upgrade)"
            )
        if server_side is None:
            server_side = self._protocol.server_side
        return self._transport.start_tls(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            initial_bytes=initial_bytes if initial_bytes is not None else b"",
            session=session,
            handshake_timeout=handshake_timeout,
            shutdown_timeout=shutdown_timeout,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    def stop_tls(self, *, timeout: float | None = 30.0) -> asyncio.Future[TLSLayer]:
        """Send close_notify on the innermost layer, now; the future resolves
        with the popped :class:`~onion_tls.TLSLayer` once the peer's
        close_notify has come.

        Data the peer sent inside the layer stays readable; after the pop the
        reader goes on with the bytes of the layer beneath, even if it had
        reached the EOF of the popped layer.
        """
        fut = self._transport.stop_tls(timeout=timeout)
        if fut.done():
            # The peer had closed first: the pop is already done, and an
            # await of a done future does not yield, so reopen the reader now.
            self._protocol._layer_popped(fut)
        else:
            # Runs before the awaiting task resumes (callbacks run in order).
            fut.add_done_callback(self._protocol._layer_popped)
        return fut

    # -- asyncio.StreamWriter -----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._transport.writelines(data)

    def write_eof(self) -> None:
        """Half-close (plaintext only: TLS has no half-close, use
        :meth:`stop_tls` or :meth:`close`)."""
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        """Orderly close: close_notify on every layer, innermost first, then
        the socket."""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed; raises what ended it, if it
        was an error."""
        await self._protocol._closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    async def drain(self) -> None:
        """Wait until the buffered bytes (inside the layers and in the socket)
        are below the low-water mark; raises if the connection failed."""
        exc = self._reader.exception()
        if exc is not None:
            raise exc
        if self._transport.is_closing():
            # Let connection_lost() run, so a write loop sees the error.
            await asyncio.sleep(0)
        await self._protocol._drain_helper()

    def __del__(self) -> None:
        # As asyncio's StreamWriter (3.11.5+): an unclosed writer is a leak.
        try:
            transport = self._transport
            loop = self._loop
        except AttributeError:  # pragma: no cover - failed constructor
            return
        if transport.is_closing() or self._protocol._lost:
            return
        if loop.is_closed():
            warnings.warn("loop is closed", ResourceWarning, stacklevel=1)
        else:
            self.close()
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)


# -- opening and serving ------------------------------------------------------


def _client_context(ssl: Any) -> Any:
    if ssl is True:
        return _ssl.create_default_context()
    return ssl


async def open_connection(
    host: str | None = None,
    port: int | None = None,
    *,
    ssl: Any = None,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = 60.0,
    ssl_shutdown_timeout: float | None = 30.0,
    session: object | None = None,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, StreamWriter]:
    """Connect and return ``(reader, writer)``, like
    ``asyncio.open_connection``.

    Args:
      host, port: where to connect (passed to ``loop.create_connection``).
      ssl: ``None``/``False`` for plaintext; an ``ssl.SSLContext``, an
        ``OpenSSL.SSL.Context`` or ``True`` (a default stdlib context) to
        push layer 1 before returning.
      server_hostname: SNI and the name to check for layer 1; by default
        ``host``.
      ssl_handshake_timeout: seconds for layer 1's handshake.
      ssl_shutdown_timeout: seconds close() waits for layer 1's
        close_notify to leave before it aborts.
      session: a ``TLSLayer.session`` to resume for layer 1.
      limit: the reader's buffer limit.
      **kwds: passed on to ``loop.create_connection`` (``family``,
        ``local_addr``, ``sock``, ...).

    Raises:
      HandshakeError: layer 1's handshake failed; the connection is closed.
    """
    loop = asyncio.get_running_loop()
    reader = _StreamReader(limit=limit, loop=loop)

    def factory() -> OnionProtocol:
        return OnionProtocol(StreamProtocol(reader))

    # (typeshed splits host/port and sock= into two overloads)
    _, onion = await loop.create_connection(factory, host, port, **kwds)  # type: ignore[arg-type]
    app = onion.transport.get_protocol()
    assert isinstance(app, StreamProtocol) and app._writer is not None
    writer = app._writer
    context = _client_context(ssl)
    if context:
        if server_hostname is None:
            server_hostname = host
        try:
            await writer.start_tls(
                context,
                server_side=False,
                server_hostname=server_hostname,
                handshake_timeout=ssl_handshake_timeout,
                shutdown_timeout=ssl_shutdown_timeout,
                session=session,
            )
        except BaseException:
            writer.transport.abort()
            raise
    return reader, writer


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    ssl: Any = None,
    ssl_handshake_timeout: float | None = 60.0,
    ssl_shutdown_timeout: float | None = 30.0,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> asyncio.Server:
    """Serve, like ``asyncio.start_server``: ``client_connected_cb(reader,
    writer)`` is called (a coroutine is run as a task) for each connection.

    With ``ssl`` (an ``ssl.SSLContext`` or an ``OpenSSL.SSL.Context``), each
    connection starts with layer 1's handshake, server side; the callback is
    called once it is done, and connections whose handshake fails are closed
    without calling it (logged under ``onion_tls`` at INFO).

    An exception escaping the callback goes to the loop's exception handler
    and aborts that connection (as asyncio does from Python 3.12).
    ``**kwds`` go to ``loop.create_server``.
    """
    loop = asyncio.get_running_loop()
    if ssl is True:
        raise ValueError("ssl=True needs a certificate: pass a server context")
    tasks: set[asyncio.Task[None]] = set()

    def factory() -> OnionProtocol:
        reader = _StreamReader(limit=limit, loop=loop)
        proto = StreamProtocol(
            reader,
            client_connected_cb,
            server_ssl=ssl or None,
            handshake_timeout=ssl_handshake_timeout,
            shutdown_timeout=ssl_shutdown_timeout,
            tasks=tasks,
        )
        return OnionProtocol(proto)

    # The server holds the factory, the factory holds ``tasks``: the
    # handler tasks live as long as the server (asyncio keeps only weak
    # references to tasks).
    return await loop.create_server(factory, host, port, **kwds)
