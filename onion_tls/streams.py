"""Streams, mirroring asyncio's: :func:`open_connection`, :func:`start_server`
and a :class:`StreamWriter` that can push and pop TLS layers.

Theory of operation
-------------------

The reader is an ``asyncio.StreamReader`` (:mod:`._stream_reader`'s, which
raises a truncation where the EOF would be); the writer is this module's
:class:`StreamWriter`.  Between them and the :class:`~onion_tls.OnionTransport`
sits :class:`StreamProtocol` (:mod:`._stream_protocol`), our own version of
asyncio's ``StreamReaderProtocol``: it feeds the reader, answers flow
control for ``drain()``, and gives the writer to ``client_connected_cb``.

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

Only :mod:`._stream_reader` reaches into a ``StreamReader`` (to take its
buffer, to clear its EOF flag).

Imports: asyncio, :mod:`._stream_protocol`, :mod:`._stream_reader`,
:mod:`._transport`, :mod:`._view`, :mod:`.errors`.  :class:`StreamProtocol`
(not in ``__all__``) is package-internal: :mod:`onion_tls.testing` builds
stream pairs with it.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import warnings
from typing import TYPE_CHECKING, Any

from . import _stream_protocol
from ._stream_reader import DEFAULT_LIMIT, StreamReader, buffered_size, take_buffer
from ._transport import OnionProtocol, OnionTransport
from .errors import LayerStateError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence

    from ._view import TLSLayer

    ClientConnectedCallback = Callable[
        [asyncio.StreamReader, "StreamWriter"], Awaitable[None] | None
    ]

__all__ = ["StreamWriter", "open_connection", "start_server"]


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
        data = take_buffer(self._reader)
        # Reading was paused with more data waiting in the onion (the reader
        # was full): that data arrived before the upgrade too.  Hand it over
        # now, so that the caller's start_tls() finds nothing left behind.
        # (Taking the reader's buffer resumed reading, if it was paused.)
        self._transport.deliver_waiting()
        while more := take_buffer(self._reader):
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
        pending = buffered_size(self._reader)
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
            self._protocol.layer_popped(fut)
        else:
            # Runs before the awaiting task resumes (callbacks run in order).
            fut.add_done_callback(self._protocol.layer_popped)
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
        await self._protocol.closed

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
        await self._protocol.drain_helper()

    def __del__(self) -> None:
        # As asyncio's StreamWriter (3.11.5+): an unclosed writer is a leak.
        try:
            transport = self._transport
            loop = self._loop
        except AttributeError:  # pragma: no cover - failed constructor
            return
        if transport.is_closing() or self._protocol.lost:
            return
        if loop.is_closed():
            warnings.warn("loop is closed", ResourceWarning, stacklevel=1)
        else:
            self.close()
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)


class StreamProtocol(_stream_protocol.StreamProtocol[StreamWriter]):
    """The stream protocol whose writer is this module's :class:`StreamWriter`
    (package-internal: :mod:`onion_tls.testing` builds stream pairs with it)."""

    def make_writer(
        self,
        transport: OnionTransport,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
    ) -> StreamWriter:
        return StreamWriter(transport, self, reader, loop)


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
    limit: int = DEFAULT_LIMIT,
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
    reader = StreamReader(limit=limit, loop=loop)

    def factory() -> OnionProtocol:
        return OnionProtocol(StreamProtocol(reader))

    # (typeshed splits host/port and sock= into two overloads)
    _, onion = await loop.create_connection(factory, host, port, **kwds)  # type: ignore[arg-type]
    app = onion.transport.get_protocol()
    assert isinstance(app, StreamProtocol) and app.writer is not None
    writer = app.writer
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
    limit: int = DEFAULT_LIMIT,
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
        reader = StreamReader(limit=limit, loop=loop)
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
