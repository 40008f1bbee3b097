"""The asyncio adapter: :class:`OnionProtocol` and :class:`OnionTransport`.

The event loop talks to :class:`OnionProtocol` (an ``asyncio.Protocol`` over
the raw socket transport); the application talks to :class:`OnionTransport`
(the full ``asyncio.Transport`` API plus ``start_tls``/``stop_tls``).  Both
are thin: the layer logic lives in the sans-IO chain (:mod:`._chain`), and
the adapter's other jobs in a module each:

* :mod:`._ops` - the futures and timers of ``start_tls``/``stop_tls``;
* :mod:`._deliver` - handing data and EOFs to the application protocol;
* :mod:`._gather` - small writes of one turn of the loop leave together;
* :mod:`._flow` - flow control: the write membrane, reading kept in step;
* :mod:`._buffers` - the scratch buffer lent to the loop for one read.

What is left here is the wiring: the loop's callbacks, the chain's hooks
(:class:`~onion_tls._chain.ChainHooks`), and what the transport asks for.
:class:`OnionTransport` only calls :class:`OnionProtocol`'s package-internal
methods (plain names, documented as such), never its fields.

Imports: asyncio; :mod:`._buffers`, :mod:`._log`, :mod:`._engines`,
:mod:`._layer`, :mod:`._view`, :mod:`._chain`, :mod:`._deliver`,
:mod:`._flow`, :mod:`._gather`, :mod:`._ops`, :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from . import _buffers
from ._chain import Chain
from ._deliver import AppDelivery
from ._engines import new_engine
from ._flow import ReadSync, WriteFlow
from ._gather import WriteGatherer
from ._log import logger
from ._ops import LayerOps, check_timeout
from ._view import TLSLayer
from .errors import LayerStateError, OnionError, TLSTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._layer import Layer

__all__ = ["OnionProtocol", "OnionTransport", "wrap"]

# After a fatal error we close the socket so the alert can leave; if the
# peer does not read it, the socket is aborted after this long.
_ALERT_GRACE = 2.0
# How long close() waits for the close_notify alerts (and what was written
# before them) to leave, by default, as asyncio's ssl_shutdown_timeout.
_SHUTDOWN_TIMEOUT = 30.0
# Writes after close() are dropped; from this many on, each is logged
# (asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES).
_LOG_WRITES_AFTER_CLOSE = 5


class OnionProtocol(asyncio.Protocol, asyncio.BufferedProtocol):
    """The protocol the event loop sees; it owns the layer chain.

    ``OnionProtocol(app_protocol)`` wraps any ``asyncio.Protocol`` or
    ``asyncio.BufferedProtocol``; :func:`wrap` builds a factory of these for
    ``loop.create_connection`` and ``loop.create_server``.

    It reads the socket as a ``BufferedProtocol``, into a scratch buffer lent
    for the duration of one read (:mod:`._buffers`): no allocation per read,
    and no read buffer held by an idle connection.  ``data_received`` works
    too, for transports that deliver bytes.
    """

    def __init__(self, app_protocol: asyncio.BaseProtocol) -> None:
        self._app = AppDelivery(app_protocol)
        self._raw: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost = False
        self._chain = Chain(self)
        self._ops = LayerOps(self._chain.fail)
        self._write_flow = WriteFlow()
        self._read_sync = ReadSync()
        self._gather = WriteGatherer(
            self._chain, self._write_flow, self.buffered_size, self._update_app_writing
        )
        self._read_loan = _buffers.Loan()
        self._flush_scheduled = False
        #: Aborts the socket: after a fatal error (the alert had its time to
        #: leave) or when close() takes longer than the shutdown timeout.
        self._grace: asyncio.TimerHandle | None = None
        self._writes_after_close = 0
        #: What the application talks to.
        self.transport = OnionTransport(self, self._chain, self._gather)

    # -- asyncio.Protocol: what the event loop calls -----------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._gather.attach(self._loop)
        self._app.protocol.connection_made(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_loan.lend()

    def buffer_updated(self, nbytes: int) -> None:
        self._read_loan.filled(nbytes, self._chain.feed)
        self._after_chain_change()

    def data_received(self, data: bytes) -> None:
        self._chain.feed(data)
        self._after_chain_change()

    def eof_received(self) -> bool:
        self._read_loan.drop()
        self._chain.feed_eof()
        # The chain closes the socket itself when it should.
        return not self._chain.ended

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._read_loan.drop()
        self._gather.stop()
        self._cancel_grace()
        # Clean or not is the chain's verdict; data decrypted before the
        # end still reaches the application first.
        err = self._chain.connection_lost(exc)
        if err is None and self._ops.busy:
            err = OnionError("the connection was closed while a layer was changing")
        self._ops.fail_all(err)
        try:
            self._app.protocol.connection_lost(err)  # type: ignore[arg-type]
        finally:
            self._raw = None

    def pause_writing(self) -> None:
        self._write_flow.raw_paused = True
        self._update_app_writing()

    def resume_writing(self) -> None:
        self._write_flow.raw_paused = False
        self._update_app_writing()

    # -- ChainHooks: what the chain asks of the world ---------------------------

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw
        if raw is not None and not self._lost:
            raw.write(data)

    def deliver_data(self, data: bytes | bytearray | memoryview) -> None:
        self._app.data(data, self._chain)

    def app_buffer(self, size: int) -> memoryview | None:
        return self._app.buffer(size)

    def app_buffer_filled(self, nbytes: int) -> None:
        self._app.filled(nbytes)

    def deliver_eof(self) -> bool | None:
        keep_open = self._app.eof()
        # The chain may close the connection now (a false answer): what the
        # application wrote this turn goes first.
        self._gather.flush()
        return keep_open

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None and not self._lost:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._lost:
            self._chain.flush_deliveries()
            self._after_chain_change()

    def handshake_done(self, layer: Layer) -> None:
        self._ops.handshake_done(layer)

    def layer_abandoned(self, layer: Layer, exc: OnionError) -> None:
        self._ops.abandoned(layer, exc)

    def layer_popped(self, layer: Layer) -> None:
        self._ops.popped(layer)

    def failed(self, exc: OnionError) -> None:
        logger.debug("failed: %s", exc)
        self._gather.stop()
        self._ops.fail_all(exc)
        raw = self._raw
        if raw is None or self._lost:
            return
        self._cancel_grace()
        if isinstance(exc, TLSTimeoutError) or self._loop is None:
            raw.abort()
            return
        raw.close()  # lets the alert leave first
        self._grace = self._loop.call_later(_ALERT_GRACE, raw.abort)

    def close_raw(self) -> None:
        raw = self._raw
        if raw is not None and not self._lost:
            raw.close()

    # -- timers -----------------------------------------------------------------

    def _cancel_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def _close_timeout(self, timeout: float) -> None:
        self._grace = None
        self._chain.fail(
            TLSTimeoutError(
                f"close() did not finish within {timeout:g} s (the peer does not take "
                "the data or the close_notify alerts): the connection was aborted (timeout)"
            )
        )

    # -- flow control -------------------------------------------------------------

    def _after_chain_change(self) -> None:
        self._update_app_writing()
        self.sync_reading()

    def _update_app_writing(self) -> None:
        queued = self._chain.queued_size() + self._gather.size()
        paused = self._write_flow.update(queued, lost=self._lost)
        if paused is not None:
            self._write_flow.tell(paused, self._app.protocol, self._loop, self.transport)

    # -- package-internal: what OnionTransport asks for ----------------------------
    #
    # Plain names so that OnionTransport never touches this class's fields;
    # not part of the public API (DESIGN.md lists OnionProtocol's), and
    # named so as not to clash with what a subclass adds.

    @property
    def layer_chain(self) -> Chain:
        """The sans-IO chain of this connection (package-internal: for the
        test suite and tools that look inside; applications use
        :attr:`OnionTransport.layers`)."""
        return self._chain

    @property
    def raw_transport(self) -> asyncio.Transport | None:
        """The raw transport: None before connection_made() and after
        connection_lost() (kept during it, so the application may still ask
        for its extra info)."""
        return self._raw

    @property
    def connection_gone(self) -> bool:
        """connection_lost() has been called."""
        return self._lost

    @property
    def app_protocol(self) -> asyncio.BaseProtocol:
        return self._app.protocol

    def set_app_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app.set_protocol(protocol)

    def gathered_size(self) -> int:
        """Bytes of small writes gathered this turn, not yet in the chain."""
        return self._gather.size()

    def buffered_size(self) -> int:
        """Bytes written by the application and not yet taken by the kernel."""
        raw = self._raw
        size = 0 if raw is None or self._lost else raw.get_write_buffer_size()
        return size + self._chain.queued_size() + self._gather.size()

    def send_gathered(self) -> None:
        """What the application wrote this turn goes into the chain now
        (``onion_tls.testing``'s pipe does this before moving bytes, as a
        turn of the loop would)."""
        self._gather.flush()

    def sync_reading(self) -> None:
        """Pause or resume the raw transport's reading as the chain wants."""
        raw = self._raw
        if raw is None or self._lost or raw.is_closing():
            return
        self._read_sync.sync(raw, self._chain.wants_input())

    def set_write_limits(self, high: int | None, low: int | None) -> None:
        high, low = self._write_flow.set_limits(high, low)
        self._gather.limits_changed()
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)
        self._update_app_writing()

    def write_limits(self) -> tuple[int, int]:
        return (self._write_flow.low, self._write_flow.high)

    def app_write(self, data: bytes) -> None:
        """An application write that :meth:`WriteGatherer.try_append` did not take."""
        if self._chain.finishing or self._lost:
            self._write_after_close()
        else:
            self._gather.write(data)
        self._update_app_writing()

    def deliver_waiting(self) -> None:
        chain = self._chain
        if not chain.in_app_call:
            chain.flush_deliveries()
            self._after_chain_change()

    def push_layer(
        self,
        context: object,
        server_side: bool,
        server_hostname: str | None,
        initial_bytes: bytes | bytearray | memoryview,
        session: object | None,
        handshake_timeout: float | None,
        shutdown_timeout: float | None,
    ) -> asyncio.Future[TLSLayer]:
        loop = self._require_loop()
        timeout = check_timeout("handshake_timeout", handshake_timeout)
        close_timeout = check_timeout("shutdown_timeout", shutdown_timeout)
        self._gather.flush()  # written before the new layer: outside it
        if server_side and server_hostname:
            raise ValueError("server_hostname is only meaningful with server_side=False")
        engine = new_engine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
            depth=self._chain.next_depth(),
        )
        fut = self._ops.start(
            loop, self._chain, engine, bytes(initial_bytes), timeout, close_timeout
        )
        self._after_chain_change()
        return fut

    def pop_layer(self, timeout: float | None) -> asyncio.Future[TLSLayer]:
        chain = self._chain
        if self._lost and self._loop is not None:
            popped = chain.pop_after_end()
            if popped is not None:
                done: asyncio.Future[TLSLayer] = self._loop.create_future()
                done.set_result(popped.view)
                return done
        loop = self._require_loop()
        t = check_timeout("timeout", timeout)
        self._gather.flush()  # written before the stop: inside the layer
        fut, begun = self._ops.stop(loop, chain, t)
        if begun:
            self._after_chain_change()
        return fut

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._raw is None:
            raise LayerStateError("the transport is not connected")
        return self._loop

    def abort_connection(self) -> None:
        self._gather.stop()
        self._chain.abort()  # nothing more is sent or delivered
        self._ops.fail_all(OnionError("the connection was aborted"))
        raw = self._raw
        if raw is not None and not self._lost:
            raw.abort()

    def close_connection(self) -> None:
        chain = self._chain
        if self._raw is None or self._lost or chain.finishing:
            return
        self._gather.flush()
        self._gather.stop()
        timeout = self._ops.close_timeout(chain.layers())
        if timeout is not None and self._loop is not None:
            # Bounded (DESIGN rule 13): then the socket is aborted.
            self._grace = self._loop.call_later(timeout, self._close_timeout, timeout)
        chain.close()
        self._after_chain_change()

    def _write_after_close(self) -> None:
        self._writes_after_close += 1
        if self._writes_after_close == _LOG_WRITES_AFTER_CLOSE:
            logger.warning(
                "%d writes after close(), abort() or the loss of the connection were "
                "dropped (as asyncio's transports do); further ones are dropped silently",
                self._writes_after_close,
            )


class OnionTransport(asyncio.Transport):
    """The transport the application protocol is given.

    It stays the same object for the life of the connection, whatever layers
    are pushed and popped under it.
    """

    def __init__(self, protocol: OnionProtocol, chain: Chain, gather: WriteGatherer) -> None:
        super().__init__()
        self._p = protocol
        self._chain = chain
        self._gather = gather

    def __repr__(self) -> str:
        depth = len(self._chain.layers())
        return f"<OnionTransport depth={depth}{' closing' if self.is_closing() else ''}>"

    # -- layers -------------------------------------------------------------

    def start_tls(
        self,
        context: Any,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        initial_bytes: bytes | bytearray | memoryview = b"",
        session: object | None = None,
        handshake_timeout: float | None = 60.0,
        shutdown_timeout: float | None = _SHUTDOWN_TIMEOUT,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Future[TLSLayer]:
        """Push a new innermost TLS layer, now, and start its handshake.

        Args:
          context: an ``ssl.SSLContext`` or an ``OpenSSL.SSL.Context``; it
            chooses the engine of this layer.
          server_side: be the TLS server of this layer.
          server_hostname: (client) the name sent as SNI and checked against
            the server's certificate.
          initial_bytes: bytes already received that belong to this layer
            (a ClientHello pipelined after ``STARTTLS``).  Nothing else
            already received is ever fed to the new layer.
          session: an earlier layer's ``TLSLayer.session`` to resume.
          handshake_timeout: seconds, or None for no limit.
          shutdown_timeout: seconds :meth:`close` waits, while this layer
            is on, for the close_notify alerts (and what was written before
            them) to leave before it aborts the socket; or None for no limit.
            close() uses the smallest of its layers'.
          ssl_handshake_timeout, ssl_shutdown_timeout: asyncio's names for
            the two timeouts; None (their default) keeps the above.

        Returns:
          A future that resolves with the layer's :class:`TLSLayer` when its
          handshake is done, or fails with :class:`HandshakeError`.  Writes
          made meanwhile are sent inside the new layer once it is up.
          Cancelling the future does not stop the handshake.

        Raises:
          LayerStateError: the connection is closing, or a stop is pending.
        """
        return self._p.push_layer(
            context,
            server_side,
            server_hostname,
            initial_bytes,
            session,
            handshake_timeout if ssl_handshake_timeout is None else ssl_handshake_timeout,
            shutdown_timeout if ssl_shutdown_timeout is None else ssl_shutdown_timeout,
        )

    def stop_tls(self, *, timeout: float | None = 30.0) -> asyncio.Future[TLSLayer]:
        """Send close_notify on the innermost layer, now, and pop it when the
        peer's close_notify arrives.

        Application data the peer sent before its close_notify is delivered;
        what follows it is delivered through the layer beneath.  Writes made
        meanwhile are sent through the layer beneath after the pop.

        Returns:
          A future resolving with the popped :class:`TLSLayer`; it fails with
          :class:`TLSTimeoutError` when the peer does not answer in time.
          Calling stop_tls() again while the pop is pending returns a new
          future for the same pop; cancelling one does not stop the pop.

        Raises:
          LayerStateError: there is no layer, or the connection is closing.
        """
        return self._p.pop_layer(timeout)

    @property
    def layers(self) -> tuple[TLSLayer, ...]:
        """The current layers, outermost first; ``()`` when plaintext."""
        return tuple(layer.view for layer in self._chain.layers())

    # -- asyncio.BaseTransport ----------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "layers":
            return self.layers
        if name in _LAYER_KEYS:
            layer = self._chain.innermost()
            if layer is not None:
                value = _LAYER_KEYS[name](layer)
                return default if value is None else value
        raw = self._p.raw_transport
        if raw is None:
            return default
        return raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._p.connection_gone or self._chain.finishing

    def close(self) -> None:
        """Flush held writes, send close_notify on every layer from the
        innermost out, then close the socket.

        Bounded in time: after the smallest ``shutdown_timeout`` of the
        layers (30 s by default) the socket is aborted and
        ``connection_lost`` gets a :class:`TLSTimeoutError`.  A handshake
        still running is abandoned at once (its future fails with
        :class:`HandshakeError`).  Writes after close() are dropped, as
        asyncio does (logged after a few).
        """
        self._p.close_connection()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._p.set_app_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._p.app_protocol

    # -- asyncio.ReadTransport -----------------------------------------------

    def is_reading(self) -> bool:
        return not self._chain.delivery_paused and not self.is_closing()

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol (handshakes and shutdowns
        keep reading what they need, up to a bound)."""
        self._chain.pause_delivery()
        self._p.sync_reading()

    def resume_reading(self) -> None:
        self._chain.resume_delivery()
        self._p.sync_reading()

    def deliver_waiting(self) -> None:
        """Hand the protocol, now, the data that waits for it (decrypted
        while it was inside a call into this transport), unless reading is
        paused.  Not part of asyncio's API: :meth:`StreamWriter.take_buffered
        <onion_tls.StreamWriter.take_buffered>` uses it."""
        self._p.deliver_waiting()

    # -- asyncio.WriteTransport ----------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._p.set_write_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._p.write_limits()

    def get_write_buffer_size(self) -> int:
        return self._p.buffered_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is bytes and self._gather.try_append(data):
            return  # the common case of a small write in a busy turn: gathered
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._p.app_write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._gather.flush()
        if self._chain.layers():
            raise LayerStateError(
                "TLS has no half-close: use stop_tls() to unwrap or close() to end"
            )
        raw = self._p.raw_transport
        if raw is not None:
            raw.write_eof()

    def can_write_eof(self) -> bool:
        raw = self._p.raw_transport
        return not self._chain.layers() and raw is not None and raw.can_write_eof()

    def abort(self) -> None:
        """Close at once: nothing more is sent, not even close_notify."""
        self._p.abort_connection()


def _cipher(layer: Layer) -> object:
    return layer.engine.cipher()


_LAYER_KEYS: dict[str, Callable[[Layer], object]] = {
    "ssl_object": lambda layer: layer.engine.ssl_object,
    "peercert": lambda layer: layer.engine.peercert(),
    "cipher": _cipher,
    "compression": lambda layer: layer.engine.compression(),
    "sslcontext": lambda layer: layer.engine.context,
    "ssl_version": lambda layer: layer.engine.version(),
    "tls_layer": lambda layer: layer.view,
}


def wrap(protocol_factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], OnionProtocol]:
    """Turn a protocol factory into one for ``loop.create_connection`` /
    ``loop.create_server`` whose protocols can stack TLS layers."""

    def factory() -> OnionProtocol:
        return OnionProtocol(protocol_factory())

    return factory
