"""One TLS session of the onion (sans-IO).

Theory of operation
-------------------

A :class:`Layer` sits between two neighbours in the chain: ``outer`` (towards
the socket) and ``inner`` (towards the application).  Both neighbours offer
the same two methods, so a layer never knows whether it talks to another
layer or to a sentinel:

* ``receive(data)`` - bytes travelling inward (ciphertext for a layer,
  application data for the tail);
* ``write(data)`` - bytes travelling outward (plaintext for a layer,
  ciphertext for the head).

Inward, a layer cuts what it receives into whole TLS records
(:mod:`onion_tls._records`) and feeds its engine one record at a time.  That
is what makes unwrapping exact: when the engine reports the peer's
close_notify, every byte the layer has not fed yet belongs to the layer
beneath, and is kept in ``held`` until the chain decides where it goes.
Records are decrypted into a scratch buffer lent for the call
(:mod:`onion_tls._buffers`): the plaintext for an inner layer is handed on
in one piece per incoming chunk, the application's record by record (or
straight into a ``BufferedProtocol``'s own buffer).  The most common chunk
of all, one whole application-data record for the application (a request,
an answer), skips the framer (:meth:`Layer._one_record_to_tail`).  What
``receive`` is given is only valid during the call; whatever a node keeps,
it copies.

Outward, plaintext written before the handshake is complete waits in
``_pending`` and is encrypted, in order, the moment the handshake ends;
nothing ever leaves in a weaker layer than the application asked for.

Every call into the engine is followed by :meth:`_flush_output`, which moves
whatever ciphertext the engine produced (handshake messages, tickets, alerts,
KeyUpdate answers, close_notify) to ``outer``.  The one exception is a read
that returned application data: a record carries a single content type, so
such a read cannot have produced anything to send.

Lifecycle (:class:`LayerState`), moved only by :meth:`_set_state`::

    HANDSHAKING --> OPEN --> CLOSING ------> CLOSED   (we spoke first)
                     |                        ^
                     +----> PEER_CLOSED ------+       (the peer spoke first)
    any state ---> BROKEN (terminal: a TLS error or a failed neighbour)

The layer reports to its chain (``on_handshake_done``, ``on_peer_closed``,
``on_closed``, ``on_failed``) after it has updated its own state, never in
the middle of a transition.

Imports: :mod:`._buffers`, :mod:`._engine`, :mod:`._records`, :mod:`._sni`,
:mod:`._view`, :mod:`.errors` - never asyncio, never an engine module (the
chain's caller picks the engine).
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Protocol

from . import _buffers
from ._engine import Engine, EngineError, PeerClosed
from ._records import HEADER_SIZE, MAX_RECORD_BODY, RecordFramer
from ._sni import ClientHelloSNI
from ._view import TLSLayer
from .errors import HandshakeError, OnionError, TLSProtocolError

__all__ = ["AppEnd", "ChainEvents", "Layer", "LayerState", "Node"]

# The most plaintext one TLS record carries (RFC 8446 section 5.1).
_MAX_PLAINTEXT = 2**14
_EMPTY = memoryview(b"")


class LayerState(enum.Enum):
    # Members are singletons compared by identity: hash them the same way,
    # in C (Enum's own __hash__ is Python code, and the per-record checks
    # ``state in _READING`` would pay for it several times per record).
    __hash__ = object.__hash__

    HANDSHAKING = "handshaking"
    OPEN = "open"
    PEER_CLOSED = "peer closed"  # their close_notify read; ours not sent
    CLOSING = "closing"  # our close_notify sent; theirs not read
    CLOSED = "closed"  # both close_notify exchanged
    BROKEN = "broken"  # terminal failure


_S = LayerState
# The states in which a layer still feeds its engine.
_READING = frozenset({_S.HANDSHAKING, _S.OPEN, _S.CLOSING})
# The content type of every TLS 1.3 record after the handshake (and of TLS
# 1.2's application data).
_APPLICATION_DATA = 23
_ALLOWED: dict[LayerState, frozenset[LayerState]] = {
    _S.HANDSHAKING: frozenset({_S.OPEN, _S.BROKEN}),
    _S.OPEN: frozenset({_S.PEER_CLOSED, _S.CLOSING, _S.BROKEN}),
    _S.PEER_CLOSED: frozenset({_S.CLOSED, _S.BROKEN}),
    _S.CLOSING: frozenset({_S.CLOSED, _S.BROKEN}),
    _S.CLOSED: frozenset({_S.BROKEN}),
    _S.BROKEN: frozenset(),
}


class Node(Protocol):
    """What a layer's neighbours offer (other layers and the sentinels).
    ``receive`` gets a buffer valid only during the call; ``write`` gets
    one the node may keep (it is never modified afterwards)."""

    def receive(self, data: bytes | bytearray | memoryview) -> None: ...

    def write(self, data: bytes | bytearray | memoryview) -> None: ...


class AppEnd(Node, Protocol):
    """The tail sentinel, as the innermost layer sees it."""

    #: The application takes data into its own buffers: ask
    #: :meth:`app_buffer` before each record (else never).
    buffered: bool

    def app_buffer(self, size: int) -> memoryview | None:
        """The application's own buffer to decrypt into, when it has one
        and may be given data now; else None (use ``receive``)."""

    def app_buffer_filled(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last app_buffer()."""


class ChainEvents(Protocol):
    """What a layer tells its chain."""

    def on_handshake_done(self, layer: Layer) -> None: ...

    def on_peer_closed(self, layer: Layer) -> None: ...

    def on_closed(self, layer: Layer) -> None: ...

    def on_shutdown_sent(self, layer: Layer) -> None:
        """Our close_notify, deferred by a renegotiation, has been sent."""

    def on_failed(self, layer: Layer, exc: OnionError) -> None: ...


class Layer:
    """One TLS session: an engine, a record framer, and two neighbours."""

    outer: Node
    inner: Node

    def __init__(self, events: ChainEvents, engine: Engine) -> None:
        self.events = events
        self.engine = engine
        self.depth = engine.depth
        self.state = LayerState.HANDSHAKING
        #: The application asked to stop this layer before it was open.
        self.stop_requested = False
        #: Our close_notify waits for a renegotiation to end.
        self.shutdown_deferred = False
        #: Bytes after the peer's close_notify: they belong beneath.
        self.held = bytearray()
        self.error: OnionError | None = None
        self._framer = RecordFramer()
        #: On a server layer: the host name the client sent as SNI, read from
        #: its ClientHello (the records are fed to the reader until it knows).
        self.requested_server_name: str | None = None
        self._sni = ClientHelloSNI() if engine.server_side else None
        #: The public read-only view (:class:`onion_tls.TLSLayer`).
        self.view = TLSLayer(self)
        self._pending: deque[bytes | bytearray | memoryview] = deque()
        self.pending_size = 0
        #: Plaintext is handed to the engine in slices of this size: large
        #: writes are never copied as a whole, the ciphertext of one slice is
        #: sent on before the next is encrypted, and the engine's outgoing
        #: buffer never holds more than one slice's worth.
        self._slice = engine.write_slice

    def __repr__(self) -> str:
        return f"<Layer depth={self.depth} {self.engine.engine_name} {self.state.value}>"

    def _set_state(self, new: LayerState) -> None:
        if new not in _ALLOWED[self.state]:
            raise AssertionError(
                f"layer {self.depth}: illegal move {self.state.value} -> {new.value}"
            )
        self.state = new

    # -- handshake flow -------------------------------------------------------

    def start(self, initial_bytes: bytes = b"") -> None:
        """Begin the handshake (a client sends its ClientHello now), then
        feed the bytes the application already received for this layer."""
        self._handshake_step()
        if initial_bytes and self.state is LayerState.HANDSHAKING:
            self.receive(bytes(initial_bytes))

    def _handshake_step(self) -> None:
        try:
            done = self.engine.do_handshake()
        except EngineError as exc:
            self._fail_engine(exc)
            return
        self._flush_output()
        if done and self.state is LayerState.HANDSHAKING:
            self._set_state(LayerState.OPEN)
            self._flush_pending()
            self.events.on_handshake_done(self)

    # -- incoming flow --------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Ciphertext from ``outer``.  ``data`` is only valid during the
        call (it may be a scratch buffer): whatever is kept is copied."""
        state = self.state
        if state is LayerState.PEER_CLOSED or state is LayerState.CLOSED:
            # After the peer's close_notify: these bytes belong beneath.
            self.held += data
            return
        if state is LayerState.BROKEN:
            return
        framer = self._framer
        if state is LayerState.OPEN:
            size = len(data)
            if (
                HEADER_SIZE < size <= HEADER_SIZE + MAX_RECORD_BODY
                and data[0] == _APPLICATION_DATA
                and data[1] == 3
                and ((data[3] << 8) | data[4]) + HEADER_SIZE == size
                and not framer.buffered()
            ):
                inner = self.inner
                if not isinstance(inner, Layer):
                    self._one_record_to_tail(data, inner)  # type: ignore[arg-type]
                    return
        framer.feed(data)
        try:
            self._pump()
        finally:
            framer.detach()

    def _one_record_to_tail(self, record: bytes | bytearray | memoryview, tail: AppEnd) -> None:
        """``record`` is exactly one whole application-data record and the
        application is right inside: what :meth:`_pump` does for it, without
        framing (one record: no bytes can follow a close_notify in it)."""
        self.engine.feed(record)
        buf = _buffers.take()
        try:
            self._read_to_tail(tail, memoryview(buf))
        finally:
            _buffers.give(buf)

    def _pump(self) -> None:
        """Feed the engine whole records, one at a time, and move what they
        decrypt to ``inner``.

        Plaintext for another layer is gathered in a scratch buffer and
        handed on in one piece (that layer frames it again).  Plaintext for
        the application is handed on record by record, so an application
        that splices a layer in from ``data_received`` has the very next
        record go through it; a ``BufferedProtocol`` application gets it
        decrypted straight into its own buffer.
        """
        framer = self._framer
        engine = self.engine
        sni = self._sni
        buf: bytearray | None = None
        view = _EMPTY
        used = 0
        try:
            while True:
                record = framer.next_record()
                if record is None:
                    if used:
                        self.inner.receive(view[:used])
                        used = 0
                    if framer.error is not None and self.state in _READING:
                        self._garbage(framer.error)
                    return
                if sni is not None:
                    sni.feed_record(record)
                    if sni.done:
                        self.requested_server_name = sni.name
                        self._sni = sni = None
                engine.feed(record)
                if self.state is LayerState.HANDSHAKING:
                    self._handshake_step()
                    if self.state not in _READING:
                        return
                    continue
                if buf is None:
                    buf = _buffers.take()
                    view = memoryview(buf)
                inner = self.inner
                if used and (len(buf) - used < _MAX_PLAINTEXT or not isinstance(inner, Layer)):
                    # Full (or no layer inside any more): hand it on.  The
                    # layer inside may be popped meanwhile: look again.
                    inner.receive(view[:used])
                    used = 0
                    if self.state not in _READING:
                        return
                    inner = self.inner
                if not isinstance(inner, Layer):
                    # The tail: the application's data, one record at a time.
                    if not self._read_to_tail(inner, view):  # type: ignore[arg-type]
                        return
                    continue
                try:
                    n = engine.read_into(view[used:])
                except PeerClosed:
                    if used:
                        self.inner.receive(view[:used])
                        used = 0
                    self._peer_closed()
                    return
                except EngineError as exc:
                    if used:
                        self.inner.receive(view[:used])
                        used = 0
                    self._fail_engine(exc)
                    return
                if n:
                    used += n
                else:
                    self._after_control_record()
                    if self.state not in _READING:
                        return
        finally:
            if buf is not None:
                _buffers.give(buf)

    def _read_to_tail(self, tail: AppEnd, scratch: memoryview) -> bool:
        """Decrypt the record just fed and deliver it, into the application's
        own buffer when it has one, else from ``scratch``; False when this
        layer stopped reading (closed by the peer, broken, or aborted)."""
        engine = self.engine
        while True:
            target = tail.app_buffer(_MAX_PLAINTEXT) if tail.buffered else None
            direct = target is not None
            if target is None:
                target = scratch
            try:
                n = engine.read_into(target)
            except PeerClosed:
                self._peer_closed()
                return False
            except EngineError as exc:
                self._fail_engine(exc)
                return False
            if not n:
                self._after_control_record()
                return self.state in _READING
            full = n == len(target)
            if direct:
                # The application may resize its buffer from buffer_updated.
                target.release()
                tail.app_buffer_filled(n)
            else:
                tail.receive(scratch[:n])
            if self.state not in _READING:
                return False
            if not full:
                return True
            # The buffer was too small for the whole record: read the rest.

    def _after_control_record(self) -> None:
        # Tickets, KeyUpdate, alerts: the engine may have an answer, and a
        # write or a close_notify that waited for the peer (TLS 1.2
        # renegotiation) may go on.
        self._flush_output()
        if self._pending and self.state is LayerState.OPEN:
            self._flush_pending()
        if self.shutdown_deferred:
            self.shutdown_deferred = False
            self.begin_shutdown()
            if self.state is LayerState.CLOSING:
                self.events.on_shutdown_sent(self)

    def _peer_closed(self) -> None:
        if self.state not in _READING:
            # Handing on what came before the close_notify broke the
            # connection (an inner layer failed): nothing more to do.
            return
        self._flush_output()
        self._on_peer_close_notify()

    def _on_peer_close_notify(self) -> None:
        self.held += self._framer.take_rest()
        if self.state is LayerState.CLOSING:
            self._set_state(LayerState.CLOSED)
            self.events.on_closed(self)
        else:
            self._set_state(LayerState.PEER_CLOSED)
            self.events.on_peer_closed(self)

    def _garbage(self, why: str) -> None:
        # Let the engine see the bytes too: it fails with its own words and
        # queues the alert TLS asks for.
        rest = self._framer.take_rest()
        try:
            self.engine.feed(rest)
            if self.state is LayerState.HANDSHAKING:
                self.engine.do_handshake()
            else:
                self.engine.read(len(rest) + 1)
        except (EngineError, PeerClosed):
            pass
        self._fail_engine(EngineError(why))

    # -- outgoing flow --------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Plaintext from ``inner``."""
        state = self.state
        if (state is LayerState.OPEN or state is LayerState.PEER_CLOSED) and not self._pending:
            self._encrypt(data)
        elif state is LayerState.HANDSHAKING or self._pending:
            self._pending.append(data)
            self.pending_size += len(data)
        elif state is LayerState.BROKEN:
            return
        else:
            raise AssertionError(f"layer {self.depth}: write while {state.value}")

    def _encrypt(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt ``data`` a slice at a time, sending each slice's
        ciphertext on before the next.  False when the engine would not take
        all of it (a TLS 1.2 renegotiation waits for the peer): what it did
        not take is then first in ``_pending``, before anything written
        after it, and is retried after the next read; False too once the
        layer is broken."""
        size = len(data)
        step = self._slice
        if size <= step:
            taken = self._encrypt_slice(data)
            if taken == size:
                return True
            rest = memoryview(data)[taken:]
        else:
            view = memoryview(data)
            for start in range(0, size, step):
                piece = view[start : start + step]
                taken = self._encrypt_slice(piece)
                if taken < len(piece):
                    rest = view[start + taken :]
                    break
            else:
                return True
        if self.state is not LayerState.BROKEN:
            self._pending.appendleft(rest)
            self.pending_size += len(rest)
        return False

    def _encrypt_slice(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt one slice and send its ciphertext on; returns how much of
        it the engine took (all of it unless a renegotiation waits, or the
        engine failed and the layer is broken)."""
        # An engine may take less than everything per call (pyOpenSSL
        # contexts enable partial writes: one record per call), and nothing
        # at all while a TLS 1.2 renegotiation waits for the peer.
        engine = self.engine
        total = len(data)
        try:
            done = engine.write(data)
            if done < total:
                view = memoryview(data)
                while done < total:
                    taken = engine.write(view[done:])
                    if taken == 0:
                        break
                    done += taken
        except EngineError as exc:
            self._fail_engine(exc)
            return 0
        self._flush_output()
        return done

    def _flush_pending(self) -> None:
        """Encrypt what waited (behind the handshake, or a renegotiation),
        in order, until the engine wants to read first."""
        pending = self._pending
        while pending and (self.state is LayerState.OPEN or self.state is LayerState.PEER_CLOSED):
            data = pending.popleft()
            self.pending_size -= len(data)
            if not self._encrypt(data):
                return  # the rest waits, in order (or the layer broke)

    def _flush_output(self) -> None:
        out = self.engine.take_output()
        if out:
            self.outer.write(out)

    # -- shutdown flow --------------------------------------------------------

    def trim(self) -> bool:
        """The connection is idle: let the engine give back what a burst
        of traffic made it keep (see :meth:`Engine.trim`).  Not while
        anything waits in this layer."""
        if self._pending or self._framer.buffered() or self.held:
            return False
        if self.state is not LayerState.OPEN and self.state is not LayerState.PEER_CLOSED:
            return False
        return self.engine.trim()

    def begin_shutdown(self) -> None:
        """Send our close_notify (after the handshake, if one is running)."""
        state = self.state
        if state is LayerState.HANDSHAKING:
            self.stop_requested = True
            return
        if state is not LayerState.OPEN and state is not LayerState.PEER_CLOSED:
            return
        if self._pending:
            self._flush_pending()
        try:
            sent = self.engine.shutdown()
        except EngineError as exc:
            self._fail_engine(exc)
            return
        self._flush_output()
        if not sent:
            self.shutdown_deferred = True  # sent after the renegotiation
            return
        if self.state is LayerState.OPEN:
            self._set_state(LayerState.CLOSING)
        elif self.state is LayerState.PEER_CLOSED:
            self._set_state(LayerState.CLOSED)
            self.events.on_closed(self)

    # -- failure ----------------------------------------------------------------

    def _fail_engine(self, exc: EngineError) -> None:
        if self.state is LayerState.BROKEN:
            return
        handshaking = self.state is LayerState.HANDSHAKING
        self._set_state(LayerState.BROKEN)
        try:
            # The alert the engine queued, so the peer learns why.
            out = self.engine.take_output()
            if out:
                self.outer.write(out)
        except Exception:  # noqa: BLE001 - the neighbour may be gone too
            pass
        reason = exc.reason
        if exc.alert_received:
            reason = f"the peer refused: {reason}"
        err: OnionError
        if handshaking:
            err = HandshakeError(reason, depth=self.depth)
        else:
            err = TLSProtocolError(reason, depth=self.depth)
        self.fail(err)

    def mark_broken(self) -> None:
        """The connection is gone: never touch the engine again."""
        if self.state is not LayerState.BROKEN:
            self._set_state(LayerState.BROKEN)
        self._pending.clear()
        self.pending_size = 0

    def fail(self, err: OnionError) -> None:
        """Mark the layer broken for good and tell the chain."""
        if self.error is not None:
            return
        if self.state is not LayerState.BROKEN:
            self._set_state(LayerState.BROKEN)
        self.error = err
        self._pending.clear()
        self.pending_size = 0
        self.events.on_failed(self, err)
