"""The futures and timers of ``start_tls``/``stop_tls`` (asyncio).

Owns what the application awaits while a layer changes: per handshake and
per pop an :class:`Op` (the layer, its timer, the futures handed out), the
layers' shutdown timeouts for ``close()``, and failing every future when
the connection ends.  It checks ``start_tls``'s arguments and builds the
layer's engine (:mod:`._engines`), then begins handshakes and pops on the
chain; the chain decides *when* they end, and this module tells the
waiters.  A timeout breaks the connection through the ``fail`` it is given
(``Chain.fail``).

Imports: asyncio, :mod:`._log`, :mod:`._engines`, :mod:`._chain`,
:mod:`._engine` and :mod:`._layer` (types), :mod:`._view` (the type),
:mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, TypedDict

from ._engines import new_engine
from ._log import logger
from .errors import HandshakeError, HandshakeTimeoutError, OnionError, TLSTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._chain import Chain
    from ._engine import Engine
    from ._layer import Layer
    from ._view import TLSLayer

__all__ = ["LayerOps", "Op", "StartArgs", "check_timeout"]


class StartArgs(TypedDict):
    """``start_tls``'s arguments, as the transport passes them on."""

    context: object
    server_side: bool
    server_hostname: str | None
    initial_bytes: bytes | bytearray | memoryview
    session: object | None
    handshake_timeout: float | None
    shutdown_timeout: float | None


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

    def __init__(self, fail: Callable[[OnionError], None]) -> None:
        #: Breaks the connection (when a handshake or a pop times out).
        self._fail = fail
        self._starts: dict[Layer, Op] = {}
        self._stop: Op | None = None
        self._shutdown_timeouts: dict[Layer, float | None] = {}

    @property
    def busy(self) -> bool:
        """A handshake or a pop is under way."""
        return bool(self._starts) or self._stop is not None

    # -- handshakes -------------------------------------------------------------

    def push(
        self,
        loop: asyncio.AbstractEventLoop,
        chain: Chain,
        args: StartArgs,
        send_written: Callable[[], None],
    ) -> asyncio.Future[TLSLayer]:
        """``start_tls``: check ``args``, build the engine and :meth:`start`;
        ``send_written`` first sends what the application wrote before (it
        goes outside the new layer)."""
        timeout = check_timeout("handshake_timeout", args["handshake_timeout"])
        close_timeout = check_timeout("shutdown_timeout", args["shutdown_timeout"])
        send_written()
        server_side, server_hostname = args["server_side"], args["server_hostname"]
        if server_side and server_hostname:
            raise ValueError("server_hostname is only meaningful with server_side=False")
        engine = new_engine(
            args["context"],
            server_side=server_side,
            server_hostname=server_hostname,
            session=args["session"],
            depth=chain.next_depth(),
        )
        initial = bytes(args["initial_bytes"])
        return self.start(loop, chain, engine, initial, timeout, close_timeout)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        chain: Chain,
        engine: Engine,
        initial_bytes: bytes,
        timeout: float | None,
        shutdown_timeout: float | None,
    ) -> asyncio.Future[TLSLayer]:
        """Push a layer running ``engine`` and begin its handshake, timed by
        ``timeout``; ``shutdown_timeout`` bounds close() while it is on."""
        layer = chain.push(engine)
        self._shutdown_timeouts[layer] = shutdown_timeout
        op = self._starts[layer] = Op(layer)
        fut = op.waiter(loop)
        if timeout is not None:
            op.timer = loop.call_later(timeout, self._handshake_timeout, layer, timeout)
        logger.debug(
            "layer %d: handshake started (%s, %s%s)",
            layer.depth,
            "server" if engine.server_side else "client",
            engine.engine_name,
            f", server_hostname={engine.server_hostname!r}" if engine.server_hostname else "",
        )
        chain.begin(layer, initial_bytes)
        return fut

    def _handshake_timeout(self, layer: Layer, timeout: float) -> None:
        if layer in self._starts:
            self._fail(
                HandshakeTimeoutError(
                    f"the handshake did not finish within {timeout:g} s (timeout)",
                    depth=layer.depth,
                )
            )

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

    # -- pops -------------------------------------------------------------------

    def popped_after_end(
        self, loop: asyncio.AbstractEventLoop, chain: Chain
    ) -> asyncio.Future[TLSLayer] | None:
        """``stop_tls`` once the connection is lost: a done future if the
        peer had closed the innermost layer (:meth:`Chain.pop_after_end`),
        else None."""
        popped = chain.pop_after_end()
        if popped is None:
            return None
        done: asyncio.Future[TLSLayer] = loop.create_future()
        done.set_result(popped.view)
        return done

    def stop(
        self,
        loop: asyncio.AbstractEventLoop,
        chain: Chain,
        timeout: float | None,
        send_written: Callable[[], None],
    ) -> tuple[asyncio.Future[TLSLayer], bool]:
        """Begin the pop of the innermost layer, timed by ``timeout``; while
        one is under way, another future for the same pop.  Returns the
        future and whether a pop began.  ``send_written`` first sends what
        the application wrote before (it goes inside the layer)."""
        timeout = check_timeout("timeout", timeout)
        send_written()
        layer = chain.innermost()
        if layer is None or chain.finishing:
            # Refused (no layer; closing or closed) before anything is
            # touched: a pop already under way keeps its waiters.
            chain.stop_tls()  # raises
            raise AssertionError("unreachable")  # pragma: no cover
        stop = self._stop
        if stop is not None and layer is stop.layer:
            return stop.waiter(loop), False  # the same pop: one more waiter
        # Registered before the chain begins the pop: it may end at once.
        op = self._stop = Op(layer)
        fut = op.waiter(loop)
        try:
            chain.stop_tls()
        except BaseException:
            if self._stop is op:
                self._stop = None
            raise
        logger.debug("layer %d: stop_tls (close_notify sent or queued)", layer.depth)
        if self._stop is op and timeout is not None:
            op.timer = loop.call_later(timeout, self._shutdown_timeout, layer, timeout)
        return fut, True

    def _shutdown_timeout(self, layer: Layer, timeout: float) -> None:
        if self._stop is not None and self._stop.layer is layer:
            self._fail(
                TLSTimeoutError(
                    f"the peer did not answer close_notify within {timeout:g} s (timeout)",
                    depth=layer.depth,
                )
            )

    def popped(self, layer: Layer) -> None:
        logger.debug("layer %d: popped (unwrapped)", layer.depth)
        self._shutdown_timeouts.pop(layer, None)
        op, self._stop = self._stop, None
        if op is not None:
            op.resolve(layer.view)

    # -- endings ----------------------------------------------------------------

    def abandoned(self, layer: Layer, exc: OnionError) -> None:
        """``layer`` will never finish its handshake or its pop."""
        logger.debug("layer %d: abandoned: %s", layer.depth, exc)
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
