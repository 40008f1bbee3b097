"""The asyncio adapter: :class:`OnionProtocol` and :class:`OnionTransport`.

The event loop talks to :class:`OnionProtocol` (an ``asyncio.Protocol`` over
the raw socket transport); the application talks to :class:`OnionTransport`
(the full ``asyncio.Transport`` API plus ``start_tls``/``stop_tls``).  Both
are thin: the layer logic lives in the sans-IO chain (:mod:`._chain`).  What
lives here is what needs the event loop: futures, timers, scheduling of
deliveries, and flow control.

Flow control (writing) is one membrane: the application is paused while the
raw transport is paused *or* the plaintext queued inside the chain is above
the high-water mark, and resumed when neither holds.  Flow control (reading):
``pause_reading`` stops deliveries to the application at once; the raw
transport is paused too, except while a handshake or shutdown needs the
peer's bytes.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from . import _buffers
from ._chain import Chain
from ._engines import new_engine
from ._layer import Layer
from ._log import logger
from ._view import TLSLayer
from .errors import (
    HandshakeError,
    HandshakeTimeoutError,
    LayerStateError,
    OnionError,
    TLSTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["OnionProtocol", "OnionTransport", "wrap"]

_DEFAULT_HIGH = 64 * 1024
# Gathering small writes (layers only): a write of less than this...
_GATHER_SMALL = 32 * 1024
# ...that follows another write in the same turn of the event loop waits
# with the others, to be encrypted at once, at the end of the turn or when
# this many bytes (or the high-water mark) are waiting.
_GATHER_MAX = 64 * 1024
# After a fatal error we close the socket so the alert can leave; if the
# peer does not read it, the socket is aborted after this long.
_ALERT_GRACE = 2.0
# How long close() waits for the close_notify alerts (and what was written
# before them) to leave, by default, as asyncio's ssl_shutdown_timeout.
_SHUTDOWN_TIMEOUT = 30.0
# Writes after close() are dropped; from this many on, each is logged
# (asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES).
_LOG_WRITES_AFTER_CLOSE = 5


class _Op:
    """A handshake or a pop under way: its layer, its timer, and the futures
    handed to callers.  A waiter cancelled by its caller does not cancel the
    operation: the others (and later callers) still get its outcome."""

    __slots__ = ("layer", "timer", "waiters")

    def __init__(self, layer: Layer, waiter: asyncio.Future[TLSLayer]) -> None:
        self.layer = layer
        self.waiters = [waiter]
        self.timer: asyncio.TimerHandle | None = None

    def resolve(self, view: TLSLayer) -> None:
        self._end()
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(view)

    def reject(self, exc: BaseException) -> None:
        self._end()
        for fut in self.waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A failed start/stop future is always accompanied by connection_lost(exc),
    # so an un-awaited one must not also be logged as "never retrieved".
    if not fut.cancelled():
        fut.exception()


def _check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")
    return float(value)


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
        self._app: asyncio.BaseProtocol = app_protocol
        self._buffered = isinstance(app_protocol, asyncio.BufferedProtocol)
        self._raw: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chain = Chain(self)
        #: What the application talks to.
        self.transport = OnionTransport(self)
        self._starts: dict[Layer, _Op] = {}
        self._stop: _Op | None = None
        #: shutdown_timeout of each layer (close() waits the smallest).
        self._shutdown_timeouts: dict[Layer, float | None] = {}
        self._lost = False
        self._flush_scheduled = False
        #: Aborts the socket: after a fatal error (the alert had its time to
        #: leave) or when close() takes longer than the shutdown timeout.
        self._grace: asyncio.TimerHandle | None = None
        self._writes_after_close = 0
        # flow control
        self._high = _DEFAULT_HIGH
        self._low = _DEFAULT_HIGH // 4
        self._raw_write_paused = False
        self._queue_over = False
        self._app_write_paused = False
        self._raw_read_paused = False
        self._rbuf: bytearray | None = None
        #: Small writes made since the first write of this turn of the loop
        #: (None: no write yet this turn, the next one goes out at once).
        self._gather: bytearray | None = None
        #: Bytes the next write may have to be gathered without any check
        #: (below _GATHER_SMALL and below the flush point).
        self._gather_room = 0

    # -- asyncio.Protocol: what the event loop calls -----------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._app.connection_made(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        # A memoryview, not the bytearray: a caller that fills it in pieces
        # (asyncio's own TLS writes into ``buf[offset:]``) must write into it.
        buf = self._rbuf
        if buf is None:
            buf = self._rbuf = _buffers.take()
        return memoryview(buf)

    def buffer_updated(self, nbytes: int) -> None:
        buf = self._rbuf
        if buf is None:  # pragma: no cover - the loop always asks first
            raise RuntimeError("buffer_updated() without get_buffer()")
        self._rbuf = None
        try:
            with memoryview(buf) as view:
                self._chain.feed(view[:nbytes])
        finally:
            _buffers.give(buf)
        self._after_chain_change()

    def data_received(self, data: bytes) -> None:
        self._chain.feed(data)
        self._after_chain_change()

    def eof_received(self) -> bool:
        self._drop_read_buffer()
        self._chain.feed_eof()
        # The chain closes the socket itself when it should.
        return not self._chain.ended

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._drop_read_buffer()
        self._stop_gathering()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        # Clean or not is the chain's verdict; data decrypted before the
        # end still reaches the application first.
        err = self._chain.connection_lost(exc)
        if err is None and (self._starts or self._stop is not None):
            err = OnionError("the connection was closed while a layer was changing")
        self._fail_futures(err)
        app = self._app
        try:
            app.connection_lost(err)  # type: ignore[arg-type]
        finally:
            self._raw = None

    def _drop_read_buffer(self) -> None:
        buf, self._rbuf = self._rbuf, None
        if buf is not None:
            _buffers.give(buf)

    def pause_writing(self) -> None:
        self._raw_write_paused = True
        self._update_app_writing()

    def resume_writing(self) -> None:
        self._raw_write_paused = False
        self._update_app_writing()

    # -- ChainHooks: what the chain asks of the world ---------------------------

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        raw = self._raw
        if raw is not None and not self._lost:
            raw.write(data)

    def deliver_data(self, data: bytes | bytearray | memoryview) -> None:
        app = self._app
        if not self._buffered:
            app.data_received(data if type(data) is bytes else bytes(data))  # type: ignore[attr-defined]
            return
        view = memoryview(data)
        chain = self._chain
        while view:
            if chain.delivery_paused:
                # The application paused reading from buffer_updated(): the
                # rest waits, first in line, for resume_reading().
                chain.deliver_later(bytes(view))
                return
            buf = app.get_buffer(len(view))  # type: ignore[attr-defined]
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            memoryview(buf)[:n] = view[:n]
            app.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]

    def app_buffer(self, size: int) -> memoryview | None:
        if not self._buffered:
            return None
        buf = self._app.get_buffer(size)  # type: ignore[attr-defined]
        view = memoryview(buf)
        if view.readonly:
            raise TypeError("get_buffer() returned a read-only buffer")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            raise RuntimeError("get_buffer() returned an empty buffer")
        return view

    def app_buffer_filled(self, nbytes: int) -> None:
        self._app.buffer_updated(nbytes)  # type: ignore[attr-defined]

    def deliver_eof(self) -> bool | None:
        keep_open = self._app.eof_received()  # type: ignore[attr-defined]
        # The chain may close the connection now (a false answer): what the
        # application wrote this turn goes first.
        self._send_gathered()
        return keep_open  # type: ignore[no-any-return]

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
        op = self._starts.pop(layer, None)
        engine = layer.engine
        logger.debug(
            "layer %d: handshake done (%s, %s, %s, %s, resumed=%s, alpn=%s, sni=%s)",
            layer.depth,
            "server" if engine.server_side else "client",
            engine.engine_name,
            engine.version(),
            (engine.cipher() or ("?",))[0],
            engine.session_reused(),
            engine.alpn_protocol(),
            layer.requested_server_name if engine.server_side else engine.server_hostname,
        )
        if op is not None:
            op.resolve(layer.view)

    def layer_abandoned(self, layer: Layer, exc: OnionError) -> None:
        logger.debug("layer %d: abandoned: %s", layer.depth, exc)
        op = self._starts.pop(layer, None)
        if op is not None:
            op.reject(exc)
        if self._stop is not None and self._stop.layer is layer:
            op, self._stop = self._stop, None
            op.reject(exc)

    def layer_popped(self, layer: Layer) -> None:
        logger.debug("layer %d: popped (unwrapped)", layer.depth)
        self._shutdown_timeouts.pop(layer, None)
        op, self._stop = self._stop, None
        if op is not None:
            op.resolve(layer.view)

    def failed(self, exc: OnionError) -> None:
        logger.debug("failed: %s", exc)
        self._stop_gathering()
        self._fail_futures(exc)
        raw = self._raw
        if raw is None or self._lost:
            return
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if isinstance(exc, TLSTimeoutError) or self._loop is None:
            raw.abort()
            return
        raw.close()  # lets the alert leave first
        self._grace = self._loop.call_later(_ALERT_GRACE, raw.abort)

    def close_raw(self) -> None:
        raw = self._raw
        if raw is not None and not self._lost:
            raw.close()

    # -- futures and timers -------------------------------------------------

    def _fail_futures(self, err: BaseException | None) -> None:
        why = str(err) if err is not None else "the connection was closed"
        starts, self._starts = self._starts, {}
        for layer, op in starts.items():
            if isinstance(err, HandshakeError) and err.depth == layer.depth:
                op.reject(err)
            else:
                e = HandshakeError(f"the handshake could not finish: {why}", depth=layer.depth)
                e.__cause__ = err
                op.reject(e)
        stop, self._stop = self._stop, None
        if stop is not None:
            if isinstance(err, OnionError) and err.depth == stop.layer.depth:
                stop.reject(err)
            else:
                e2 = OnionError(f"stop_tls() could not finish: {why}", depth=stop.layer.depth)
                e2.__cause__ = err
                stop.reject(e2)

    def _close_timeout(self, timeout: float) -> None:
        self._grace = None
        self._chain.fail(
            TLSTimeoutError(
                f"close() did not finish within {timeout:g} s (the peer does not take "
                "the data or the close_notify alerts): the connection was aborted (timeout)"
            )
        )

    def _handshake_timeout(self, layer: Layer, timeout: float) -> None:
        if layer in self._starts:
            self._chain.fail(
                HandshakeTimeoutError(
                    f"the handshake did not finish within {timeout:g} s (timeout)",
                    depth=layer.depth,
                )
            )

    def _shutdown_timeout(self, layer: Layer, timeout: float) -> None:
        if self._stop is not None and self._stop.layer is layer:
            self._chain.fail(
                TLSTimeoutError(
                    f"the peer did not answer close_notify within {timeout:g} s (timeout)",
                    depth=layer.depth,
                )
            )

    # -- what OnionTransport asks for --------------------------------------

    def _start_tls(
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
        timeout = _check_timeout("handshake_timeout", handshake_timeout)
        close_timeout = _check_timeout("shutdown_timeout", shutdown_timeout)
        self._send_gathered()  # written before the new layer: outside it
        if server_side and server_hostname:
            raise ValueError("server_hostname is only meaningful with server_side=False")
        engine = new_engine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
            depth=self._chain.next_depth(),
        )
        layer = self._chain.push(engine)
        self._shutdown_timeouts[layer] = close_timeout
        fut: asyncio.Future[TLSLayer] = loop.create_future()
        fut.add_done_callback(_retrieve)
        op = self._starts[layer] = _Op(layer, fut)
        if timeout is not None:
            op.timer = loop.call_later(timeout, self._handshake_timeout, layer, timeout)
        logger.debug(
            "layer %d: handshake started (%s, %s%s)",
            layer.depth,
            "server" if server_side else "client",
            engine.engine_name,
            f", server_hostname={server_hostname!r}" if server_hostname else "",
        )
        self._chain.begin(layer, bytes(initial_bytes))
        self._after_chain_change()
        return fut

    def _stop_tls(self, timeout: float | None) -> asyncio.Future[TLSLayer]:
        if self._lost and self._loop is not None:
            popped = self._chain.pop_after_end()
            if popped is not None:
                done: asyncio.Future[TLSLayer] = self._loop.create_future()
                done.set_result(popped.view)
                return done
        loop = self._require_loop()
        t = _check_timeout("timeout", timeout)
        self._send_gathered()  # written before the stop: inside the layer
        chain = self._chain
        layer = chain.innermost()
        fut: asyncio.Future[TLSLayer] = loop.create_future()
        fut.add_done_callback(_retrieve)
        if self._stop is not None and layer is self._stop.layer and not chain.finishing:
            # The same pop: one more waiter for it.
            self._stop.waiters.append(fut)
            return fut
        op = _Op(layer, fut) if layer is not None else None
        self._stop = op
        try:
            chain.stop_tls()
        except BaseException:
            self._stop = None
            raise
        assert layer is not None and op is not None  # chain.stop_tls() raised otherwise
        logger.debug("layer %d: stop_tls (close_notify sent or queued)", layer.depth)
        if self._stop is op and t is not None:
            op.timer = loop.call_later(t, self._shutdown_timeout, layer, t)
        self._after_chain_change()
        return fut

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._raw is None:
            raise LayerStateError("the transport is not connected")
        return self._loop

    def _abort(self) -> None:
        self._stop_gathering()
        self._chain.abort()  # nothing more is sent or delivered
        self._fail_futures(OnionError("the connection was aborted"))
        raw = self._raw
        if raw is not None and not self._lost:
            raw.abort()

    def _close(self) -> None:
        chain = self._chain
        if self._raw is None or self._lost or chain.finishing:
            return
        self._send_gathered()
        self._stop_gathering()
        timeouts = [t for layer in chain.layers() if (t := self._shutdown_timeouts.get(layer))]
        if timeouts and self._loop is not None:
            # Bounded (DESIGN rule 13): then the socket is aborted.
            timeout = min(timeouts)
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

    # -- flow control -----------------------------------------------------------

    def _after_chain_change(self) -> None:
        self._update_app_writing()
        self._sync_raw_reading()

    # -- writing ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """An application write.  The first write of a turn of the event
        loop is encrypted and sent at once (no added latency); small writes
        that follow it in the same turn are gathered and encrypted together
        into full records at the end of the turn: fewer records, engine
        calls and socket writes, which is what small writes cost.  Gathered
        bytes go on at once when ``_GATHER_MAX`` wait or when, with them, the
        bytes buffered on the connection pass the high-water mark, so flow
        control sees them as if they had not waited.  (While a write stays
        below both, :meth:`OnionTransport.write` appends it itself: the
        common case costs one append.)"""
        chain = self._chain
        if chain.finishing or self._lost:
            self._write_after_close()
            return
        gather = self._gather
        if gather is not None:
            if len(data) < _GATHER_SMALL:
                gather += data
                if len(gather) >= _GATHER_MAX or self._buffered_size() > self._high:
                    self._send_gathered()
            else:
                self._send_gathered()
                self._chain.write(data)
            self._gather_room = self._room()
            return
        chain.write(data)
        loop = self._loop
        if (
            loop is not None
            and not self._lost
            and chain.innermost() is not None
            and not loop.is_closed()
        ):
            loop.call_soon(self._end_gather)
            self._gather = bytearray()
            self._gather_room = self._room()

    def _buffered_size(self) -> int:
        """Bytes written by the application and not yet taken by the kernel."""
        raw = self._raw
        size = 0 if raw is None or self._lost else raw.get_write_buffer_size()
        return size + self._chain.queued_size() + self.gathered_size()

    def _room(self) -> int:
        """How many bytes may be gathered without a look at flow control."""
        gather = self._gather
        if gather is None:
            return 0
        return max(0, min(_GATHER_MAX - len(gather), self._high - self._buffered_size()))

    def _send_gathered(self) -> None:
        gather = self._gather
        if gather:
            # A fresh buffer for what comes next: the chain may keep this one
            # (queued behind a handshake or a stop), and it is never touched.
            self._gather = bytearray()
            self._chain.write(gather)
            self._gather_room = 0  # the next write recomputes it

    def _end_gather(self) -> None:
        self._send_gathered()
        self._stop_gathering()
        self._update_app_writing()

    def _stop_gathering(self) -> None:
        """The next write goes out at once (what is gathered is dropped)."""
        self._gather = None
        self._gather_room = 0

    def gathered_size(self) -> int:
        gather = self._gather
        return len(gather) if gather is not None else 0

    def _update_app_writing(self) -> None:
        size = self._chain.queued_size() + self.gathered_size()
        if self._queue_over:
            if size <= self._low:
                self._queue_over = False
        elif size > self._high:
            self._queue_over = True
        paused = self._raw_write_paused or self._queue_over
        if paused == self._app_write_paused or self._lost:
            return
        self._app_write_paused = paused
        try:
            if paused:
                self._app.pause_writing()
            else:
                self._app.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - reported like asyncio does
            if self._loop is not None:
                self._loop.call_exception_handler(
                    {
                        "message": "protocol.pause_writing()/resume_writing() failed",
                        "exception": exc,
                        "transport": self.transport,
                        "protocol": self._app,
                    }
                )

    def _sync_raw_reading(self) -> None:
        raw = self._raw
        if raw is None or self._lost or raw.is_closing():
            return
        want_paused = not self._chain.wants_input()
        if want_paused != self._raw_read_paused:
            self._raw_read_paused = want_paused
            if want_paused:
                raw.pause_reading()
            else:
                raw.resume_reading()


class OnionTransport(asyncio.Transport):
    """The transport the application protocol is given.

    It stays the same object for the life of the connection, whatever layers
    are pushed and popped under it.
    """

    def __init__(self, protocol: OnionProtocol) -> None:
        super().__init__()
        self._p = protocol

    def __repr__(self) -> str:
        depth = len(self._p._chain.layers())
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
        return self._p._start_tls(
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
        return self._p._stop_tls(timeout)

    @property
    def layers(self) -> tuple[TLSLayer, ...]:
        """The current layers, outermost first; ``()`` when plaintext."""
        return tuple(layer.view for layer in self._p._chain.layers())

    # -- asyncio.BaseTransport ----------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        p = self._p
        if name == "layers":
            return self.layers
        if name in _LAYER_KEYS:
            layer = p._chain.innermost()
            if layer is not None:
                value = _LAYER_KEYS[name](layer)
                return default if value is None else value
        raw = p._raw
        if raw is None:
            return default
        return raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        p = self._p
        return p._lost or p._chain.finishing

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
        self._p._close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._p._app = protocol
        self._p._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._p._app

    # -- asyncio.ReadTransport -----------------------------------------------

    def is_reading(self) -> bool:
        return not self._p._chain.delivery_paused and not self.is_closing()

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol (handshakes and shutdowns
        keep reading what they need, up to a bound)."""
        p = self._p
        p._chain.pause_delivery()
        p._sync_raw_reading()

    def resume_reading(self) -> None:
        p = self._p
        p._chain.resume_delivery()
        p._sync_raw_reading()

    def deliver_waiting(self) -> None:
        """Hand the protocol, now, the data that waits for it (decrypted
        while it was inside a call into this transport), unless reading is
        paused.  Not part of asyncio's API: :meth:`StreamWriter.take_buffered
        <onion_tls.StreamWriter.take_buffered>` uses it."""
        chain = self._p._chain
        if not chain.in_app_call:
            chain.flush_deliveries()
            self._p._after_chain_change()

    # -- asyncio.WriteTransport ----------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        p = self._p
        p._high, p._low = high, low
        p._gather_room = 0  # the next write recomputes it
        if p._raw is not None:
            p._raw.set_write_buffer_limits(high, low)
        p._update_app_writing()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._p._low, self._p._high)

    def get_write_buffer_size(self) -> int:
        return self._p._buffered_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        p = self._p
        if type(data) is bytes:
            n = len(data)
            gather = p._gather
            if n < p._gather_room and n < _GATHER_SMALL and gather is not None:
                # The common case of a small write in a busy turn: gathered.
                gather += data
                p._gather_room -= n
                return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        p._write(data)
        p._update_app_writing()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        p = self._p
        p._send_gathered()
        if p._chain.layers():
            raise LayerStateError(
                "TLS has no half-close: use stop_tls() to unwrap or close() to end"
            )
        if p._raw is not None:
            p._raw.write_eof()

    def can_write_eof(self) -> bool:
        p = self._p
        return not p._chain.layers() and p._raw is not None and p._raw.can_write_eof()

    def abort(self) -> None:
        """Close at once: nothing more is sent, not even close_notify."""
        self._p._abort()


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
