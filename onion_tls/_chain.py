"""The onion: a doubly linked chain of TLS layers, and the connection's
lifecycle (sans-IO).

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
or theirs after ours).  It unlinks the layer, releases the writes the
application made while the stop was pending, then hands the bytes that
followed the peer's close_notify to the node beneath (in that order: what
the application writes in answer to those bytes goes after the held
writes).  It runs at most once: a popped layer is no longer linked and is
never the innermost again.

The connection's life (:class:`~._lifecycle.ConnState`: its states, the
table of allowed moves and the verdict on the end of the socket) is set out
in :mod:`._lifecycle`; the chain moves it, only through
:meth:`Chain._set_state`, and asks :func:`~._lifecycle.verdict` whether an
EOF or a lost connection was clean or a truncation.

Bounds (DESIGN rule 12): the bytes held for the application - decrypted
data waiting while it paused reading or while a stop is pending, bytes that
followed a peer's close_notify while it decides - are counted
(:meth:`Chain.held_size`); above ``READ_HIGH_WATER`` the chain stops asking
for input (:meth:`Chain.wants_input`) whatever the state, and asks again
once they are delivered.

The chain never calls the application while it is in the middle of one of
the application's own calls (``write``, ``start_tls``, ``stop_tls``,
``close``): data that becomes ready then waits in the tail's backlog and is
delivered by :meth:`Chain.flush_deliveries`, which the adapter schedules.
The same backlog holds data while the application has paused reading.

The head and the tail, with the tail's delivery backlog, live in
:mod:`._ends`; this module owns the links between them, the lifecycle and
the verdict.  The chain has no clock and no event loop; the adapter
(:mod:`onion_tls._transport`) owns timers, futures and flow control.

Imports: :mod:`._engine` (the type), :mod:`._ends`, :mod:`._layer`,
:mod:`._lifecycle`, :mod:`.errors` - never asyncio.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._ends import ChainHooks, Head, Tail
from ._engine import Engine
from ._layer import Layer, LayerState, Node
from ._lifecycle import ENDED as _ENDED
from ._lifecycle import FINISHING as _FINISHING
from ._lifecycle import PEER_DONE as _PEER_DONE
from ._lifecycle import ConnState, check_move, verdict
from .errors import HandshakeError, LayerStateError, OnionError, TruncatedError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["READ_HIGH_WATER", "Chain", "ChainHooks", "ConnState"]

#: Incoming bytes one connection holds for its application at most (data
#: waiting for an application that paused reading, bytes that followed a
#: peer's close_notify while the application decides) before reading from
#: the socket pauses.  One socket read (256 KiB) may come on top.
READ_HIGH_WATER = 256 * 1024


class Chain:
    """Head, layers, tail; the connection's lifecycle; splice, pop and the
    one close hook."""

    def __init__(self, hooks: ChainHooks) -> None:
        self.hooks = hooks
        self.head = Head(hooks)
        self.tail = Tail(self, hooks)
        self.head.inner = self.tail
        self.tail.outer = self.head
        self.state = ConnState.OPEN
        #: close(), abort(), a failure or the loss of the socket happened:
        #: the application may not write or change layers any more, and
        #: nothing more is delivered to it (``state in FINISHING``, kept by
        #: :meth:`_set_state`: the per-record checks read a plain attribute).
        self.finishing = False
        #: Calls the application is making into the transport right now
        #: (no delivery to it meanwhile).
        self.app_calls = 0
        #: Why the connection broke (state BROKEN).
        self.error: OnionError | None = None
        #: The layer a ``stop_tls`` is popping (it stays linked until then).
        self.stopping: Layer | None = None
        #: Application writes made while a stop is pending: they go out
        #: through the layer beneath once the pop is done.
        #: (made on first use: most connections never stop a layer)
        self._held_writes: deque[bytes | bytearray] | None = None
        self._held_size = 0
        #: The socket reached EOF (an independent fact: any state).
        self.peer_eof = False
        #: The last layer was popped and nothing moved since: the peer has
        #: ended TLS everywhere, so a reset now only means its socket is gone.
        self._tls_ended = False
        self._advancing = False
        self._advance_again = False

    def _set_state(self, new: ConnState) -> None:
        check_move(self.state, new)
        self.state = new
        self.finishing = new in _FINISHING

    def _verdict(self, exc: BaseException | None) -> BaseException | None:
        return verdict(
            self.state, self.layers(), exc, peer_eof=self.peer_eof, tls_ended=self._tls_ended
        )

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
    def ended(self) -> bool:
        return self.state in _ENDED

    @property
    def in_app_call(self) -> bool:
        return self.app_calls > 0

    @contextmanager
    def app_call(self) -> Iterator[None]:
        """Mark a call made by the application: no delivery to it meanwhile."""
        self.app_calls += 1
        try:
            yield
        finally:
            self.app_calls -= 1

    def queued_size(self) -> int:
        """Plaintext written by the application and waiting inside the chain
        (behind handshakes, pending stops)."""
        size = self._held_size
        node = self.head.inner
        while isinstance(node, Layer):
            size += node.pending_size
            node = node.inner
        return size

    def held_size(self) -> int:
        """Incoming bytes held for the application: data waiting for it, and
        bytes that followed a peer's close_notify."""
        size = self.tail.held
        node = self.head.inner
        while isinstance(node, Layer):
            size += len(node.held)
            node = node.inner
        return size

    def needs_input(self) -> bool:
        """True while a handshake or a shutdown waits for the peer: reading
        goes on even if the application paused it."""
        if self.state is ConnState.CLOSING or self.stopping is not None:
            return True
        node = self.head.inner
        while isinstance(node, Layer):
            if node.state is LayerState.HANDSHAKING or node.state is LayerState.CLOSING:
                return True
            node = node.inner
        return False

    def trim(self) -> None:
        """The connection is idle: each layer may give back the memory a
        burst of traffic made its engine keep (:mod:`onion_tls._idle`)."""
        if self.state in _ENDED:
            return
        node = self.head.inner
        while isinstance(node, Layer):
            node.trim()
            node = node.inner

    def wants_input(self) -> bool:
        """Should the socket be read now?  Not while ``READ_HIGH_WATER``
        bytes are held (whatever the state: rule 12), nor while the
        application paused reading, unless a handshake or shutdown needs
        the peer's bytes."""
        if self.held_size() > READ_HIGH_WATER:
            return False
        return not self.tail.paused or self.needs_input()

    # -- delivery control (what the adapter asks for) ---------------------------

    @property
    def delivery_paused(self) -> bool:
        return self.tail.paused

    def pause_delivery(self) -> None:
        self.tail.paused = True

    def resume_delivery(self) -> None:
        tail = self.tail
        if tail.paused:
            tail.paused = False
            if tail.waiting:
                self.hooks.schedule_flush()

    def set_buffered_app(self, buffered: bool) -> None:
        """Whether the application takes data into its own buffers (an
        ``asyncio.BufferedProtocol``): the layers then ask for one before
        each record they decrypt for it."""
        self.tail.buffered = buffered

    def flush_deliveries(self) -> None:
        """Hand the application what waits for it (as far as it takes it)."""
        self.tail.flush()

    def deliver_later(self, data: bytes) -> None:
        """The application paused reading in the middle of a delivery: the
        rest of it waits, first in line."""
        self.tail.push_back(data, front=True)

    # -- incoming flow --------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the socket (valid only during the call)."""
        if self.state in _ENDED:
            return
        if data:
            self._tls_ended = False
        self.head.inner.receive(data)

    def feed_eof(self) -> None:
        """The socket reached EOF.  Clean only if every layer saw the
        peer's close_notify first; otherwise the stream was truncated."""
        self.peer_eof = True
        if self.state in _ENDED:
            return
        if self.state is ConnState.CLOSING:
            # We are closing and the peer has nothing more to say: whatever
            # we still waited for (a pending pop) will not come.
            self._close_socket()
            return
        err = self._verdict(None)
        if isinstance(err, OnionError):
            self.fail(err)
        elif not self.layers():
            self.tail.eof(None)
        # else every layer was closed by the peer: the application has had
        # its eof_received() (or has it waiting in the backlog).

    # -- splice and pop -------------------------------------------------------

    def next_depth(self) -> int:
        """The depth the next layer pushed will have (its engine is built
        for it: :meth:`push`)."""
        inner = self.innermost()
        return inner.depth + 1 if inner is not None else 1

    def push(self, engine: Engine) -> Layer:
        """Splice a new innermost layer in, running ``engine`` (built for
        :meth:`next_depth`).  The caller then calls :meth:`begin` (after it
        has registered its future)."""
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
        if self.tail.waiting:
            # Bytes (or an EOF) that arrived before this upgrade still wait
            # for the application; delivered after the splice they would
            # look as if they came through the new layer.
            raise LayerStateError(
                "data received before this upgrade has not been delivered to the "
                "application yet (reading is paused or a delivery is pending): take "
                "it first and pass what belongs to the new layer as initial_bytes",
                depth=None if inner is None else inner.depth,
            )
        if engine.depth != self.next_depth():
            raise ValueError(
                f"the engine was built for depth {engine.depth}, the next layer is "
                f"at depth {self.next_depth()}"
            )
        layer = Layer(self, engine)
        outer = self.tail.outer
        layer.outer = outer
        layer.inner = self.tail
        if isinstance(outer, Layer):
            outer.inner = layer
        else:
            self.head.inner = layer
        self.tail.outer = layer
        self._tls_ended = False
        return layer

    def begin(self, layer: Layer, initial_bytes: bytes) -> None:
        with self.app_call():
            layer.start(initial_bytes)
        if self.peer_eof and layer.state is LayerState.HANDSHAKING:
            self.fail(
                HandshakeError(
                    "the peer had already closed the connection (TCP EOF): "
                    "this handshake can never finish",
                    depth=layer.depth,
                )
            )

    def stop_tls(self) -> Layer:
        """Begin the pop of the innermost layer (idempotent while it runs)."""
        self._check_open()
        layer = self.innermost()
        if layer is None:
            raise LayerStateError("there is no TLS layer to stop: the connection is plaintext")
        if self.stopping is layer:
            return layer
        if layer.state is LayerState.CLOSING:  # pragma: no cover - only a stop closes it
            raise LayerStateError("this layer is already closing", depth=layer.depth)
        self.stopping = layer
        self._set_state(ConnState.STOP_PENDING)
        with self.app_call():
            layer.begin_shutdown()
        return layer

    def _pop(self, layer: Layer) -> None:
        """The one close hook: unlink ``layer``, release the writes held
        while it closed, then hand on what followed its close_notify.
        Reached once per layer."""
        outer, inner = self._unlink(layer)
        self.stopping = None
        if self.state is ConnState.STOP_PENDING or self.state is ConnState.PEER_CLOSED:
            self._set_state(ConnState.OPEN)
        self._tls_ended = not isinstance(outer, Layer)
        trailing = bytes(layer.held)
        layer.held.clear()
        # An EOF still waiting for the application was this layer's: the
        # application has popped the layer, so it is not told any more.
        self.tail.drop_eof(layer)
        self.hooks.layer_popped(layer)
        # Writes held during the stop were made before anything the
        # application can write in answer to the bytes that follow the
        # close_notify: they leave first.
        while self._held_writes and self.stopping is None and self.state not in _ENDED:
            data = self._held_writes.popleft()
            self._held_size -= len(data)
            self._tls_ended = False
            self.tail.outer.write(data)
        if not self._held_writes:
            self._held_writes = None
        if trailing and self.state not in _ENDED:
            self._tls_ended = False
            inner.receive(trailing)
        if self.state not in _FINISHING and self.tail.outer is outer:
            self._uncovered_eof(outer)
        if self.state is ConnState.CLOSING:
            self._advance_close()

    def _unlink(self, layer: Layer) -> tuple[Node | Head, Node]:
        outer, inner = layer.outer, layer.inner
        if isinstance(outer, Layer):
            outer.inner = inner
        else:
            self.head.inner = inner
        if isinstance(inner, Layer):  # pragma: no cover - only the innermost pops
            inner.outer = outer
        else:
            self.tail.outer = outer
        return outer, inner

    def pop_after_end(self) -> Layer | None:
        """After a clean end of the socket, unlink the innermost layer if the
        peer had closed it (its close_notify came; ours can no longer be
        sent, and nothing more can come): a ``stop_tls()`` that answers the
        peer's close then succeeds whether or not the socket is gone yet.
        None when there is no such layer."""
        layer = self.innermost()
        if self.state is not ConnState.CLOSED or layer is None:
            return None
        if layer.state is not LayerState.PEER_CLOSED:
            return None
        self._unlink(layer)
        return layer

    def _uncovered_eof(self, outer: Node | Head) -> None:
        """After a pop, the node now innermost may have ended already: a
        layer whose close_notify came while a layer was above it (it was not
        the innermost then, so nobody was told), or the socket's EOF, which
        came while layers were linked.  Its EOF is due now."""
        if isinstance(outer, Layer):
            if outer.state is LayerState.PEER_CLOSED:
                self._set_state(ConnState.PEER_CLOSED)
                self.tail.eof(outer)
        elif self.peer_eof:
            self.tail.eof(None)

    # -- outgoing flow --------------------------------------------------------

    def write(self, data: bytes | bytearray) -> None:
        """An application write (``data`` is never modified afterwards);
        dropped once the connection is finishing (the adapter counts those)."""
        if self.finishing:
            return
        if self.stopping is not None:
            if self._held_writes is None:
                self._held_writes = deque()
            self._held_writes.append(data)
            self._held_size += len(data)
            return
        self._tls_ended = False
        self.app_calls += 1
        try:
            self.tail.outer.write(data)
        finally:
            self.app_calls -= 1

    # -- what layers report ---------------------------------------------------

    def on_handshake_done(self, layer: Layer) -> None:
        self.hooks.handshake_done(layer)
        if layer.stop_requested:
            layer.begin_shutdown()
        elif self.state is ConnState.CLOSING:  # pragma: no cover - close() abandons handshakes
            self._advance_close()

    def on_peer_closed(self, layer: Layer) -> None:
        inner = layer.inner
        if self.state is ConnState.CLOSING:
            self._advance_close()
            return
        if isinstance(inner, Layer) and inner.state not in _PEER_DONE:
            if inner.state is LayerState.HANDSHAKING:
                self.fail(
                    HandshakeError(
                        f"the peer closed layer {layer.depth} (close_notify) during "
                        "this layer's handshake",
                        depth=inner.depth,
                    )
                )
            else:
                self.fail(
                    TruncatedError(
                        f"the peer closed layer {layer.depth} while this layer "
                        "was still open (truncated)",
                        depth=inner.depth,
                    )
                )
            return
        if inner is self.tail:
            self._set_state(ConnState.PEER_CLOSED)
            self.tail.eof(layer)

    def after_eof(self, keep_open: bool, layer: Layer | None) -> None:
        """``eof_received`` returned ``keep_open`` for the close_notify of
        ``layer`` (None: the socket's EOF in plaintext): a false value closes
        the connection unless a stop_tls is pending or already popped it."""
        if keep_open or self.state in _FINISHING or self.stopping is not None:
            return
        if layer is not None and (
            layer.state is not LayerState.PEER_CLOSED or layer is not self.innermost()
        ):
            # The app answered with stop_tls() (from eof_received or its
            # backlog): the layer is popped, not the connection.
            return
        self.close()

    def on_shutdown_sent(self, layer: Layer) -> None:
        if self.state is ConnState.CLOSING:
            self._advance_close()

    def on_closed(self, layer: Layer) -> None:
        if layer is self.stopping:
            self._pop(layer)
        elif self.state is ConnState.CLOSING:
            self._advance_close()

    def on_failed(self, layer: Layer, exc: OnionError) -> None:
        self.fail(exc)

    # -- ending ---------------------------------------------------------------

    def close(self) -> None:
        """Orderly close: held writes out, close_notify on every layer from
        the innermost out, then the socket.  A handshake still running is
        abandoned at once (its future fails): it could only finish by
        waiting for the peer, and close() does not wait for that."""
        if self.state in _FINISHING:
            return
        self._set_state(ConnState.CLOSING)
        self.tail.discard()
        with self.app_call():
            self._advance_close()

    def _advance_close(self) -> None:
        if self._advancing:
            self._advance_again = True
            return
        self._advancing = True
        try:
            while self.state is ConnState.CLOSING:
                self._advance_again = False
                node = self.tail.outer
                while isinstance(node, Layer) and node.state is LayerState.HANDSHAKING:
                    self._abandon(node)
                    node = node.outer
                if self.stopping is not None:
                    return  # the pop comes back here when it is done
                node = self.tail.outer
                deferred = False
                while isinstance(node, Layer) and self.state is ConnState.CLOSING:
                    state = node.state
                    if state is LayerState.OPEN or state is LayerState.PEER_CLOSED:
                        node.begin_shutdown()
                    if node.shutdown_deferred:
                        # A renegotiation runs in this layer: its close_notify
                        # (and those outside it) follow when it ends.
                        deferred = True
                        break
                    node = node.outer
                if self.state is not ConnState.CLOSING or self._advance_again:
                    continue
                if not deferred:
                    self._close_socket()
                return
        finally:
            self._advancing = False

    def _abandon(self, layer: Layer) -> None:
        layer.mark_broken()
        if layer is self.stopping:
            self.stopping = None
        self.hooks.layer_abandoned(
            layer,
            HandshakeError(
                "the connection was closed (close()) before the handshake finished",
                depth=layer.depth,
            ),
        )

    def _close_socket(self) -> None:
        self._set_state(ConnState.CLOSED)
        self.hooks.close_raw()

    def fail(self, exc: OnionError) -> None:
        """Break the connection for good (once)."""
        if self.state is ConnState.BROKEN:
            return
        self.error = exc
        self._set_state(ConnState.BROKEN)
        for layer in self.layers():
            layer.mark_broken()
        self.hooks.failed(exc)

    def abort(self) -> None:
        """The application aborted: nothing more is sent or delivered."""
        self.tail.discard()
        if self.state is not ConnState.BROKEN:
            self._set_state(ConnState.CLOSED)

    def connection_lost(self, exc: BaseException | None) -> BaseException | None:
        """The socket is gone (``exc`` as the event loop said): returns what
        the application is told, after the data decrypted before the end."""
        verdict: BaseException | None
        if self.state is ConnState.BROKEN:
            verdict = self.error
            self.tail.deliver_last()
        else:
            verdict = self._verdict(exc)
            if self.state not in _FINISHING:
                self.tail.deliver_last()
            self._set_state(ConnState.CLOSED)
        self.tail.discard()
        return verdict

    def _check_open(self) -> None:
        if self.state is ConnState.BROKEN or self.state is ConnState.CLOSED:
            raise LayerStateError("the connection is closed")
        if self.state is ConnState.CLOSING:
            raise LayerStateError("the connection is closing")
