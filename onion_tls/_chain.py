"""The onion: a doubly linked chain of TLS layers (sans-IO).

Theory of operation
-------------------

::

    head  <->  layer 1  <->  layer 2  <->  ...  <->  tail
    (raw transport)  (outermost)            (innermost)  (application)

The head and the tail are sentinels.  Every node has ``outer`` and ``inner``
links and two methods: ``receive`` (bytes moving inward) and ``write`` (bytes
moving outward).  Bytes from the socket enter at ``head.inner.receive``; each
layer decrypts and calls its ``inner.receive``; the tail hands application
data to the protocol.  Application writes enter at ``tail.outer.write``; each
layer encrypts and calls its ``outer.write``; the head writes to the socket.
Links are read at the moment a byte moves, so a layer spliced in from inside
``data_received`` receives the very next record (STARTTLS without races).

``push`` splices a new innermost layer between the current innermost node
and the tail.  ``stop_tls`` starts the pop of the innermost layer; the pop
itself happens in one place, :meth:`Chain._pop`, reached from
:meth:`Chain.on_closed` whichever close_notify came last (ours after theirs,
or theirs after ours).  It unlinks the layer, hands the bytes that followed
the peer's close_notify to the node beneath, and releases the writes the
application made while the stop was pending.  It runs at most once: a popped
layer is no longer linked and is never the innermost again.

The chain never calls the application while it is in the middle of one of
the application's own calls (``write``, ``start_tls``, ``stop_tls``,
``close``): data that becomes ready then waits in the tail's backlog and is
delivered by :meth:`Tail.flush`, which the adapter schedules.  The same
backlog holds data while the application has paused reading.

The chain has no clock and no event loop; the adapter
(:mod:`onion_tls._transport`) owns timers, futures and flow control.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

from ._engine import Engine
from ._layer import Layer, LayerState, Node
from .errors import HandshakeError, LayerStateError, OnionError, TruncatedError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Chain", "ChainHooks"]


class ChainHooks(Protocol):
    """What the chain needs from the world around it (the adapter)."""

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Send ciphertext of the outermost layer (or plaintext) to the socket."""

    def deliver_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand application data to the application protocol (``data`` is
        valid only during the call)."""

    # Optional (a BufferedProtocol application): decrypt into its buffer.
    #   def app_buffer(self, size: int) -> memoryview | None
    #   def app_buffer_filled(self, nbytes: int) -> None

    def deliver_eof(self) -> bool | None:
        """Tell the application of EOF; return what ``eof_received`` said."""

    def schedule_flush(self) -> None:
        """Call ``chain.tail.flush()`` soon, outside the current call stack."""

    def handshake_done(self, layer: Layer) -> None: ...

    def layer_popped(self, layer: Layer) -> None: ...

    def failed(self, exc: OnionError) -> None:
        """The connection is broken for good: close it and fail futures."""

    def close_raw(self) -> None:
        """Every close_notify is sent: close the socket after its buffer."""


class Head:
    """The outer sentinel: the raw transport."""

    def __init__(self, hooks: ChainHooks) -> None:
        self._hooks = hooks
        self.inner: Node

    def receive(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise AssertionError("nothing is outside the head")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._hooks.write_raw(data)


class _Eof:
    """An EOF waiting in the tail's backlog; ``layer`` is the layer whose
    close_notify it is, or None for the socket's EOF in plaintext."""

    __slots__ = ("layer",)

    def __init__(self, layer: Layer | None) -> None:
        self.layer = layer


class Tail:
    """The inner sentinel: the application protocol.

    Deliveries wait in ``backlog`` while the application has paused reading,
    while it is inside one of its own calls into the transport, or while
    earlier deliveries are still waiting; order is always kept.
    """

    def __init__(self, chain: Chain, hooks: ChainHooks) -> None:
        self._chain = chain
        self._hooks = hooks
        self.outer: Node
        self.backlog: deque[object] = deque()
        self.paused = False
        self._app_buffer = getattr(hooks, "app_buffer", None)
        self._app_buffer_filled = getattr(hooks, "app_buffer_filled", None)

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        chain = self._chain
        if chain.closing or chain.dead:
            # As with asyncio's transports: after close() or abort(), no more
            # data is received (a close still reads what its shutdown needs).
            return
        if self.backlog or self.paused or chain._app_calls:
            self.backlog.append(bytes(data))
            if not self.paused:
                self._hooks.schedule_flush()
            return
        self._hooks.deliver_data(data)

    def app_buffer(self, size: int) -> memoryview | None:
        get = self._app_buffer
        if get is None or self.backlog or self.paused:
            return None
        chain = self._chain
        if chain.closing or chain.dead or chain._app_calls:
            return None
        return get(size)  # type: ignore[no-any-return]

    def app_buffer_filled(self, nbytes: int) -> None:
        self._app_buffer_filled(nbytes)  # type: ignore[misc]

    def write(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise AssertionError("nothing is inside the tail")

    def eof(self, layer: Layer | None) -> None:
        if self._chain.closing or self._chain.dead:
            return
        if self.backlog or self.paused or self._chain.in_app_call:
            self.backlog.append(_Eof(layer))
            if not self.paused:
                self._hooks.schedule_flush()
            return
        self._deliver_eof(layer)

    def _deliver_eof(self, layer: Layer | None) -> None:
        keep_open = self._hooks.deliver_eof()
        self._chain.after_eof(bool(keep_open), layer)

    def flush(self) -> None:
        backlog = self.backlog
        if self._chain.closing:
            backlog.clear()
            return
        while backlog and not self.paused and not self._chain.in_app_call:
            item = backlog.popleft()
            if isinstance(item, _Eof):
                self._deliver_eof(item.layer)
                continue
            if backlog and isinstance(backlog[0], bytes):
                # Everything that waited is handed over in one call, so an
                # application that upgrades from data_received sees all the
                # bytes that came before the upgrade and can pass them as
                # initial_bytes (none is delivered after the splice).
                parts = [item]
                while backlog and isinstance(backlog[0], bytes):
                    parts.append(backlog.popleft())
                item = b"".join(parts)  # type: ignore[arg-type]
            self._hooks.deliver_data(item)  # type: ignore[arg-type]

    def drop_eof(self, layer: Layer) -> None:
        """Forget an EOF of ``layer`` not yet delivered (it was popped)."""
        if any(isinstance(x, _Eof) and x.layer is layer for x in self.backlog):
            self.backlog = deque(
                x for x in self.backlog if not (isinstance(x, _Eof) and x.layer is layer)
            )

    def backlog_size(self) -> int:
        return sum(len(x) for x in self.backlog if isinstance(x, bytes))


class Chain:
    """Head, layers, tail; splice, pop and the one close hook."""

    def __init__(self, hooks: ChainHooks) -> None:
        self.hooks = hooks
        self.head = Head(hooks)
        self.tail = Tail(self, hooks)
        self.head.inner = self.tail
        self.tail.outer = self.head
        #: The layer a ``stop_tls`` is popping (it stays linked until then).
        self.stopping: Layer | None = None
        #: Application writes made while a stop is pending: they go out
        #: through the layer beneath once the pop is done.
        self._held_writes: deque[bytes | bytearray] = deque()
        self._held_size = 0
        self.closing = False
        self.dead = False
        self._raw_closed = False
        #: The socket reached EOF.
        self.peer_eof = False
        #: ... after the peer's close_notify on every layer: a clean TLS close.
        self.clean_eof = False
        self._app_calls = 0
        self._advancing = False
        self._advance_again = False

    # -- introspection ----------------------------------------------------------

    def layers(self) -> tuple[Layer, ...]:
        out = []
        node = self.head.inner
        while isinstance(node, Layer):
            out.append(node)
            node = node.inner
        return tuple(out)

    def innermost(self) -> Layer | None:
        node = self.tail.outer
        return node if isinstance(node, Layer) else None

    @property
    def in_app_call(self) -> bool:
        return self._app_calls > 0

    @contextmanager
    def app_call(self) -> Iterator[None]:
        """Mark a call made by the application: no delivery to it meanwhile."""
        self._app_calls += 1
        try:
            yield
        finally:
            self._app_calls -= 1

    def queued_size(self) -> int:
        """Plaintext waiting inside the chain (handshakes, pending stops)."""
        size = self._held_size
        node = self.head.inner
        while isinstance(node, Layer):
            size += node.pending_size
            node = node.inner
        return size

    def peer_closed_every_layer(self) -> bool:
        """True when there are layers and the peer's close_notify was read
        on every one of them."""
        layers = self.layers()
        return bool(layers) and all(
            layer.state is LayerState.PEER_CLOSED or layer.state is LayerState.CLOSED
            for layer in layers
        )

    def needs_input(self) -> bool:
        """True while a handshake or a shutdown waits for the peer: reading
        must go on even if the application paused it."""
        if self.closing or self.stopping is not None:
            return True
        node = self.head.inner
        while isinstance(node, Layer):
            if node.state is LayerState.HANDSHAKING or node.state is LayerState.CLOSING:
                return True
            node = node.inner
        return False

    # -- incoming flow --------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the socket (valid only during the call)."""
        if not self.dead:
            self.head.inner.receive(data)

    def feed_eof(self) -> None:
        """The socket reached EOF.  Clean only if every layer saw the
        peer's close_notify first; otherwise the stream was truncated."""
        self.peer_eof = True
        if self.dead:
            return
        layers = self.layers()
        if not layers:
            self.tail.eof(None)
            return
        for layer in reversed(layers):
            state = layer.state
            if state is LayerState.HANDSHAKING:
                self.fail(
                    HandshakeError(
                        "the peer closed the connection during the handshake",
                        depth=layer.depth,
                    )
                )
                return
            if state is LayerState.OPEN:
                self.fail(
                    TruncatedError(
                        "the connection ended without the peer's close_notify "
                        "(truncated; a clean close sends close_notify first)",
                        depth=layer.depth,
                    )
                )
                return
            if state is LayerState.CLOSING and not self.closing:
                self.fail(
                    TruncatedError(
                        "the connection ended before the peer answered our close_notify",
                        depth=layer.depth,
                    )
                )
                return
        # Every layer was closed by the peer: the application has had its
        # eof_received() (or is about to, from the backlog).
        self.clean_eof = self.peer_closed_every_layer()

    # -- splice and pop -------------------------------------------------------

    def push(self, engine: Engine) -> Layer:
        """Splice a new innermost layer in.  The caller then calls
        :meth:`begin` (after it has registered its future)."""
        self._check_open()
        inner = self.innermost()
        if self.stopping is not None:
            raise LayerStateError(
                "stop_tls() is in progress on this layer; wait for it before starting a new layer",
                depth=self.stopping.depth,
            )
        if inner is not None and inner.state not in (LayerState.HANDSHAKING, LayerState.OPEN):
            raise LayerStateError(
                f"cannot start a layer inside a layer that is {inner.state.value}",
                depth=inner.depth,
            )
        if self.tail.backlog:
            # Bytes (or an EOF) that arrived before this upgrade still wait
            # for the application; delivered after the splice they would
            # look as if they came through the new layer.
            raise LayerStateError(
                "data received before this upgrade has not been delivered to the "
                "application yet (reading is paused or a delivery is pending): take "
                "it first and pass what belongs to the new layer as initial_bytes",
                depth=None if inner is None else inner.depth,
            )
        layer = Layer(self, engine, inner.depth + 1 if inner is not None else 1)
        outer = self.tail.outer
        layer.outer = outer
        layer.inner = self.tail
        if isinstance(outer, Layer):
            outer.inner = layer
        else:
            self.head.inner = layer
        self.tail.outer = layer
        return layer

    def begin(self, layer: Layer, initial_bytes: bytes) -> None:
        with self.app_call():
            layer.start(initial_bytes)

    def stop_tls(self) -> Layer:
        """Begin the pop of the innermost layer (idempotent while it runs)."""
        self._check_open()
        layer = self.innermost()
        if layer is None:
            raise LayerStateError("there is no TLS layer to stop: the connection is plaintext")
        if self.stopping is layer:
            return layer
        if layer.state is LayerState.CLOSING:
            raise LayerStateError("this layer is already closing", depth=layer.depth)
        self.stopping = layer
        with self.app_call():
            layer.begin_shutdown()
        return layer

    def _pop(self, layer: Layer) -> None:
        """The one close hook: unlink ``layer``, hand on what followed its
        close_notify, release held writes.  Reached once per layer."""
        outer, inner = layer.outer, layer.inner
        if isinstance(outer, Layer):
            outer.inner = inner
        else:
            self.head.inner = inner
        if isinstance(inner, Layer):  # pragma: no cover - only the innermost pops
            inner.outer = outer
        else:
            self.tail.outer = outer
        self.stopping = None
        trailing = bytes(layer.held)
        layer.held.clear()
        # An EOF still waiting for the application was this layer's: the
        # application has popped the layer, so it is not told any more.
        self.tail.drop_eof(layer)
        self.hooks.layer_popped(layer)
        if trailing and not self.dead:
            inner.receive(trailing)
        if not self.dead and not self.closing and self.tail.outer is outer:
            self._uncovered_eof(outer)
        while self._held_writes and self.stopping is None and not self.dead:
            data = self._held_writes.popleft()
            self._held_size -= len(data)
            self.tail.outer.write(data)
        if self.closing:
            self._advance_close()

    def _uncovered_eof(self, outer: Node | Head) -> None:
        """After a pop, the node now innermost may have ended already: a
        layer whose close_notify came while a layer was above it (it was not
        the innermost then, so nobody was told), or the socket's EOF, which
        came while layers were linked.  Its EOF is due now."""
        if isinstance(outer, Layer):
            if outer.state is LayerState.PEER_CLOSED:
                self.tail.eof(outer)
        elif self.peer_eof:
            self.tail.eof(None)

    # -- outgoing flow --------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """An application write (``data`` is never modified afterwards)."""
        if self.dead or self.closing:
            return
        if self.stopping is not None:
            self._held_writes.append(data)
            self._held_size += len(data)
            return
        self._app_calls += 1
        try:
            self.tail.outer.write(data)
        finally:
            self._app_calls -= 1

    # -- what layers report ---------------------------------------------------

    def on_handshake_done(self, layer: Layer) -> None:
        self.hooks.handshake_done(layer)
        if layer.stop_requested:
            layer.begin_shutdown()
        elif self.closing:
            self._advance_close()

    def on_peer_closed(self, layer: Layer) -> None:
        inner = layer.inner
        inner_open = isinstance(inner, Layer) and inner.state not in (
            LayerState.PEER_CLOSED,
            LayerState.CLOSED,
        )
        if inner_open and not self.closing:
            assert isinstance(inner, Layer)
            self.fail(
                TruncatedError(
                    f"the peer closed layer {layer.depth} while this layer "
                    "was still open (truncated)",
                    depth=inner.depth,
                )
            )
            return
        if self.closing:
            self._advance_close()
        elif inner is self.tail:
            self.tail.eof(layer)

    def after_eof(self, keep_open: bool, layer: Layer | None) -> None:
        """``eof_received`` returned ``keep_open`` for the close_notify of
        ``layer`` (None: the socket's EOF in plaintext): a false value closes
        the connection unless a stop_tls is pending or already popped it."""
        if keep_open or self.dead or self.closing or self.stopping is not None:
            return
        if layer is not None and (
            layer.state is not LayerState.PEER_CLOSED or layer is not self.innermost()
        ):
            # The app answered with stop_tls() (from eof_received or its
            # backlog): the layer is popped, not the connection.
            return
        self.close()

    def on_closed(self, layer: Layer) -> None:
        if layer is self.stopping:
            self._pop(layer)
        elif self.closing:
            self._advance_close()

    def on_failed(self, layer: Layer, exc: OnionError) -> None:
        self.fail(exc)

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """Orderly close: held writes out, close_notify on every layer from
        the innermost out, then the socket."""
        if self.dead or self.closing:
            return
        self.closing = True
        with self.app_call():
            self._advance_close()

    def _advance_close(self) -> None:
        if self._advancing:
            self._advance_again = True
            return
        self._advancing = True
        try:
            while True:
                self._advance_again = False
                if self.dead or self._raw_closed or self.stopping is not None:
                    return  # a pending pop comes back here when it is done
                ready = True
                node = self.tail.outer
                while isinstance(node, Layer):
                    state = node.state
                    if state is LayerState.HANDSHAKING:
                        ready = False  # its handshake (or timeout) comes back here
                        break
                    if state is LayerState.OPEN or state is LayerState.PEER_CLOSED:
                        node.begin_shutdown()
                        if self.dead:
                            return
                    node = node.outer
                if self._advance_again:
                    continue
                if ready:
                    self._raw_closed = True
                    self.hooks.close_raw()
                return
        finally:
            self._advancing = False

    def fail(self, exc: OnionError) -> None:
        """Break the connection for good (once)."""
        if self.dead:
            return
        self.dead = True
        for layer in self.layers():
            layer.mark_broken()
        self.hooks.failed(exc)

    def mark_dead(self) -> None:
        """The transport is gone (abort, connection lost)."""
        self.dead = True

    def _check_open(self) -> None:
        if self.dead:
            raise LayerStateError("the connection is closed")
        if self.closing:
            raise LayerStateError("the connection is closing")
