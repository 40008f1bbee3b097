"""The futures and timers of ``start_tls``/``stop_tls`` (asyncio).

Owns what the application awaits while a layer changes: per handshake and
per pop an :class:`Op` (the layer, its timer, the futures handed out), the
layers' shutdown timeouts for ``close()``, and failing every future when
the connection ends.  The chain decides *when* a handshake or a pop ends;
this module only tells the waiters.  Timeouts call back into the adapter,
which breaks the chain.

Imports: asyncio, :mod:`._layer` (the Layer type), :mod:`._view`,
:mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

from .errors import HandshakeError, OnionError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._layer import Layer
    from ._view import TLSLayer

__all__ = ["LayerOps", "Op", "check_timeout"]


def check_timeout(name: str, value: float | None) -> float | None:
    """A timeout argument: None, or a positive number of seconds."""
    if value is None:
        return None
    if not value > 0 or math.isnan(value):
        raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")
    return float(value)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    # A failed start/stop future is always accompanied by connection_lost(exc),
    # so an un-awaited one must not also be logged as "never retrieved".
    if not fut.cancelled():
        fut.exception()


class Op:
    """A handshake or a pop under way: its layer, its timer, and the futures
    handed to callers.  A waiter cancelled by its caller does not cancel the
    operation: the others (and later callers) still get its outcome."""

    __slots__ = ("layer", "timer", "waiters")

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.waiters: list[asyncio.Future[TLSLayer]] = []
        self.timer: asyncio.TimerHandle | None = None

    def waiter(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[TLSLayer]:
        """One more future for the outcome."""
        fut: asyncio.Future[TLSLayer] = loop.create_future()
        fut.add_done_callback(_retrieve)
        self.waiters.append(fut)
        return fut

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


class LayerOps:
    """The handshakes under way (one per layer), the pop under way (at most
    one), and each layer's shutdown timeout."""

    def __init__(self) -> None:
        self._starts: dict[Layer, Op] = {}
        self._stop: Op | None = None
        self._shutdown_timeouts: dict[Layer, float | None] = {}

    @property
    def busy(self) -> bool:
        """A handshake or a pop is under way."""
        return bool(self._starts) or self._stop is not None

    # -- handshakes -------------------------------------------------------------

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        layer: Layer,
        timeout: float | None,
        shutdown_timeout: float | None,
        on_timeout: Callable[[Layer, float], None],
    ) -> asyncio.Future[TLSLayer]:
        """Register ``layer``'s handshake; ``on_timeout(layer, timeout)`` is
        called if it is still running after ``timeout`` seconds."""
        self._shutdown_timeouts[layer] = shutdown_timeout
        op = self._starts[layer] = Op(layer)
        fut = op.waiter(loop)
        if timeout is not None:
            op.timer = loop.call_later(timeout, on_timeout, layer, timeout)
        return fut

    def handshaking(self, layer: Layer) -> bool:
        return layer in self._starts

    def handshake_done(self, layer: Layer) -> None:
        op = self._starts.pop(layer, None)
        if op is not None:
            op.resolve(layer.view)

    # -- pops -------------------------------------------------------------------

    def stop_waiter(
        self, loop: asyncio.AbstractEventLoop, layer: Layer | None
    ) -> asyncio.Future[TLSLayer] | None:
        """Another future for the pop of ``layer`` already under way, or None."""
        if self._stop is not None and layer is self._stop.layer:
            return self._stop.waiter(loop)
        return None

    def begin_stop(self, loop: asyncio.AbstractEventLoop, layer: Layer) -> asyncio.Future[TLSLayer]:
        """Register the pop of ``layer`` (before the chain begins it: it may
        end at once)."""
        op = self._stop = Op(layer)
        return op.waiter(loop)

    def forget_stop(self) -> None:
        """The chain refused the stop."""
        self._stop = None

    def arm_stop(
        self,
        loop: asyncio.AbstractEventLoop,
        layer: Layer,
        timeout: float | None,
        on_timeout: Callable[[Layer, float], None],
    ) -> None:
        """Time the pop of ``layer`` if it is still under way."""
        op = self._stop
        if op is not None and op.layer is layer and timeout is not None:
            op.timer = loop.call_later(timeout, on_timeout, layer, timeout)

    def stopping(self, layer: Layer) -> bool:
        return self._stop is not None and self._stop.layer is layer

    def popped(self, layer: Layer) -> None:
        self._shutdown_timeouts.pop(layer, None)
        op, self._stop = self._stop, None
        if op is not None:
            op.resolve(layer.view)

    # -- endings ----------------------------------------------------------------

    def abandoned(self, layer: Layer, exc: OnionError) -> None:
        """``layer`` will never finish its handshake or its pop."""
        op = self._starts.pop(layer, None)
        if op is not None:
            op.reject(exc)
        if self._stop is not None and self._stop.layer is layer:
            op, self._stop = self._stop, None
            op.reject(exc)

    def fail_all(self, err: BaseException | None) -> None:
        """The connection ended: every future fails, with ``err`` itself
        where it names that layer."""
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

    def close_timeout(self, layers: tuple[Layer, ...]) -> float | None:
        """How long close() may take: the smallest shutdown timeout of
        ``layers`` (None: no bound)."""
        timeouts = [t for layer in layers if (t := self._shutdown_timeouts.get(layer))]
        return min(timeouts) if timeouts else None
