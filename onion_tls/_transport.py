"""The asyncio adapter: :class:`OnionProtocol`, what the event loop calls.

The event loop talks to :class:`OnionProtocol` (an ``asyncio.Protocol`` over
the raw socket transport); the application talks to
:class:`~onion_tls._app_transport.OnionTransport` (the full
``asyncio.Transport`` API plus ``start_tls``/``stop_tls``, re-exported
here).  Both are thin: the layer logic lives in the sans-IO chain
(:mod:`._chain`), and the adapter's other jobs in a module each:

* :mod:`._app_transport` - what the application calls;
* :mod:`._ops` - the futures and timers of ``start_tls``/``stop_tls``;
* :mod:`._deliver` - handing data and EOFs to the application protocol;
* :mod:`._gather` - small writes of one turn of the loop leave together;
* :mod:`._flow` - flow control: the write membrane, reading kept in step;
* :mod:`._raw` - the raw transport: writes and closes once it is gone,
  the timer that aborts it, writes dropped after the end;
* :mod:`._buffers` - the scratch buffer lent to the loop for one read.

What is left here is the wiring: the loop's callbacks, the chain's hooks
(:class:`~onion_tls._chain.ChainHooks`), and what the transport asks for
(:class:`~onion_tls._app_transport.Connection`).

Imports: asyncio; :mod:`._app_transport`, :mod:`._buffers`, :mod:`._log`,
:mod:`._layer`, :mod:`._view`, :mod:`._chain`,
:mod:`._deliver`, :mod:`._flow`, :mod:`._gather`, :mod:`._ops`,
:mod:`._raw`, :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import _buffers
from ._app_transport import OnionTransport
from ._chain import Chain
from ._deliver import AppDelivery
from ._flow import WriteFlow
from ._gather import WriteGatherer
from ._idle import IdleTrim
from ._log import logger
from ._ops import LayerOps
from ._raw import RawSide
from .errors import LayerStateError, OnionError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._layer import Layer
    from ._ops import StartArgs
    from ._view import TLSLayer

__all__ = ["OnionProtocol", "OnionTransport", "wrap"]


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
        self._raw = RawSide()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._chain = Chain(self)
        self._chain.set_buffered_app(self._app.buffered)
        self._ops = LayerOps(self._chain.fail)
        self._write_flow = WriteFlow()
        self._gather = WriteGatherer(
            self._chain, self._write_flow, self.buffered_size, self._update_app_writing
        )
        self._read_loan = _buffers.Loan()
        self._idle = IdleTrim(self._chain)
        self._flush_scheduled = False
        #: What the application talks to.
        self.transport = OnionTransport(self, self._chain, self._gather)

    # -- asyncio.Protocol: what the event loop calls -----------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._gather.attach(self._loop)
        self._idle.attach(self._loop)
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
        if self._raw.lost:
            return
        self._raw.lost = True
        self._read_loan.drop()
        self._gather.stop()
        self._idle.stop()
        self._raw.cancel_timer()
        # Clean or not is the chain's verdict; data decrypted before the
        # end still reaches the application first.
        err = self._chain.connection_lost(exc)
        if err is None and self._ops.busy:
            err = OnionError("the connection was closed while a layer was changing")
        self._ops.fail_all(err)
        try:
            self._app.protocol.connection_lost(err)  # type: ignore[arg-type]
        finally:
            self._raw.transport = None

    def pause_writing(self) -> None:
        self._write_flow.raw_paused = True
        self._update_app_writing()

    def resume_writing(self) -> None:
        self._write_flow.raw_paused = False
        self._update_app_writing()

    # -- ChainHooks: what the chain asks of the world ---------------------------

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        self._raw.write(data)

    def deliver_data(self, data: bytes | bytearray | memoryview) -> None:
        gather = self._gather
        gather.begin_delivery()
        try:
            self._app.data(data, self._chain)
        finally:
            gather.end_delivery()

    def app_buffer(self, size: int) -> memoryview | None:
        return self._app.buffer(size)

    def app_buffer_filled(self, nbytes: int) -> None:
        gather = self._gather
        gather.begin_delivery()
        try:
            self._app.filled(nbytes)
        finally:
            gather.end_delivery()

    def deliver_eof(self) -> bool | None:
        keep_open = self._app.eof()
        # The chain may close the connection now (a false answer): what the
        # application wrote this turn goes first.
        self._gather.flush()
        return keep_open

    def schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None and not self._raw.lost:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._raw.lost:
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
        self._raw.close_after_failure(exc, self._loop)

    def close_raw(self) -> None:
        self._raw.close()

    # -- flow control -------------------------------------------------------------

    def _after_chain_change(self) -> None:
        self._update_app_writing()
        self._raw.sync_reading(self._chain.wants_input())

    def _update_app_writing(self) -> None:
        self._idle.touch()  # (after every read, write and layer change)
        queued = self._chain.queued_size() + self._gather.size()
        paused = self._write_flow.update(queued, lost=self._raw.lost)
        if paused is not None:
            self._write_flow.tell(paused, self._app.protocol, self._loop, self.transport)

    # -- package-internal: what OnionTransport asks for (Connection) ---------------
    # (plain names, not clashing with a subclass's; not public API: DESIGN.md)

    @property
    def layer_chain(self) -> Chain:
        """The sans-IO chain (package-internal: for tests and tools)."""
        return self._chain

    @property
    def raw_transport(self) -> asyncio.Transport | None:
        """The raw transport (None before connection_made, after connection_lost)."""
        return self._raw.transport

    @property
    def connection_gone(self) -> bool:
        """connection_lost() has been called."""
        return self._raw.lost

    @property
    def app_protocol(self) -> asyncio.BaseProtocol:
        return self._app.protocol

    def set_app_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app.set_protocol(protocol)
        self._chain.set_buffered_app(self._app.buffered)

    def gathered_size(self) -> int:
        """Bytes of small writes gathered this turn, not yet in the chain."""
        return self._gather.size()

    def buffered_size(self) -> int:
        """Bytes written by the application and not yet taken by the kernel."""
        return self._raw.buffer_size() + self._chain.queued_size() + self._gather.size()

    def send_gathered(self) -> None:
        """What the application wrote this turn goes into the chain now
        (``onion_tls.testing``'s pipe does this before moving bytes, as a
        turn of the loop would)."""
        self._gather.flush()
        self._update_app_writing()

    def sync_reading(self) -> None:
        """Pause or resume the raw transport's reading as the chain wants."""
        self._raw.sync_reading(self._chain.wants_input())

    def set_write_limits(self, high: int | None, low: int | None) -> None:
        high, low = self._write_flow.set_limits(high, low)
        self._gather.limits_changed()
        self._raw.set_write_limits(high, low)
        self._update_app_writing()

    def write_limits(self) -> tuple[int, int]:
        return (self._write_flow.low, self._write_flow.high)

    def app_write(self, data: bytes) -> None:
        """An application write that :meth:`WriteGatherer.try_append` did not take."""
        if self._chain.finishing or self._raw.lost:
            self._raw.write_dropped()
        elif self._gather.write(data):
            return  # only gathered, below the marks: nothing to tell yet
        self._update_app_writing()

    def deliver_waiting(self) -> None:
        if not self._chain.in_app_call:
            self._chain.flush_deliveries()
            self._after_chain_change()

    def push_layer(self, args: StartArgs) -> asyncio.Future[TLSLayer]:
        fut = self._ops.push(self._require_loop(), self._chain, args, self._gather.flush)
        self._after_chain_change()
        return fut

    def pop_layer(self, timeout: float | None) -> asyncio.Future[TLSLayer]:
        if self._raw.lost and self._loop is not None:
            done = self._ops.popped_after_end(self._loop, self._chain)
            if done is not None:
                return done
        loop = self._require_loop()
        fut, begun = self._ops.stop(loop, self._chain, timeout, self._gather.flush)
        if begun:
            self._after_chain_change()
        return fut

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._raw.transport is None:
            raise LayerStateError("the transport is not connected")
        return self._loop

    def abort_connection(self) -> None:
        # What was written before abort() goes as far as the socket takes
        # it at once (as with asyncio's transports); nothing after it.
        self._gather.flush()
        self._gather.stop()
        self._idle.stop()
        self._chain.abort()  # nothing more is sent or delivered
        self._ops.fail_all(OnionError("the connection was aborted"))
        self._raw.abort()

    def close_connection(self) -> None:
        chain = self._chain
        if self._raw.live is None or chain.finishing:
            return
        self._gather.flush()
        self._gather.stop()
        timeout = self._ops.close_timeout(chain.layers())
        if timeout is not None and self._loop is not None:
            # Bounded (DESIGN rule 13): then the socket is aborted.
            self._raw.bound_close(self._loop, timeout, chain.fail)
        chain.close()
        self._after_chain_change()


def wrap(protocol_factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], OnionProtocol]:
    """Turn a protocol factory into one for ``loop.create_connection`` /
    ``loop.create_server`` whose protocols can stack TLS layers."""

    def factory() -> OnionProtocol:
        return OnionProtocol(protocol_factory())

    return factory
