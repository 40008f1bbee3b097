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

Inward, unwrapping must be exact: when the engine reports the peer's
close_notify, every byte that followed it belongs to the layer beneath, and
is kept in ``held`` until the chain decides where it goes.  An engine that
can give fed bytes back (``engine.can_unread``: OpenSSL reads a memory BIO
one record at a time, so what is left after the close_notify is exactly
what followed it) is fed every chunk whole, and the layer reads until the
engine needs more (*stream mode*); a :class:`~onion_tls._records.RecordScanner`
checks the record headers on the way, so garbage is reported in words.
Otherwise the layer cuts what it receives into whole TLS records
(:class:`~onion_tls._records.RecordFramer`) and feeds its engine one record
at a time, keeping the rest itself (*record mode*).

Decrypted bytes move inward without a copy of their own where they can: to
an inner layer, through one per-thread scratch buffer (the inner layer
feeds them to its engine before it returns); to a ``BufferedProtocol``
application, straight into the application's buffer; to a plain
``Protocol``, as one ``bytes`` per record.  What a layer receives is only
read during the call, so the socket side may pass views of a buffer it
reuses.

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
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from typing import TYPE_CHECKING, Protocol

from ._engine import Engine, EngineError, PeerClosed
from ._records import RecordFramer, RecordScanner
from .errors import HandshakeError, OnionError, TLSProtocolError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["ChainEvents", "Layer", "LayerState", "Node"]

# Plaintext is handed to the engine in slices of this size: large writes are
# never copied as a whole, and the ciphertext of one slice is sent on before
# the next slice is encrypted.
_WRITE_SLICE = 256 * 1024
# The most plaintext one TLS record carries (RFC 8446 section 5.1).
_RECORD_PLAINTEXT = 2**14
# Plaintext read for an inner layer gathers in a buffer of this size.
_SCRATCH_SIZE = 256 * 1024
_local = threading.local()


def _scratch() -> memoryview:
    """This thread's scratch buffer: decrypted bytes on their way to an
    inner layer, which copies them into its engine before it returns."""
    try:
        view: memoryview = _local.scratch
    except AttributeError:
        view = _local.scratch = memoryview(bytearray(_SCRATCH_SIZE))
    return view


# What stopped a read loop (besides an EngineError).
_DRY = "dry"  # the engine needs more input
_FULL = "full"  # the buffer is full: read again
_CLOSE = "close_notify"  # the peer's close_notify


class LayerState(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    PEER_CLOSED = "peer closed"  # their close_notify read; ours not sent
    CLOSING = "closing"  # our close_notify sent; theirs not read
    CLOSED = "closed"  # both close_notify exchanged
    BROKEN = "broken"  # terminal failure


_S = LayerState
# The states in which a layer still feeds its engine.
_READING = frozenset({_S.HANDSHAKING, _S.OPEN, _S.CLOSING})
_ALLOWED: dict[LayerState, frozenset[LayerState]] = {
    _S.HANDSHAKING: frozenset({_S.OPEN, _S.BROKEN}),
    _S.OPEN: frozenset({_S.PEER_CLOSED, _S.CLOSING, _S.BROKEN}),
    _S.PEER_CLOSED: frozenset({_S.CLOSED, _S.BROKEN}),
    _S.CLOSING: frozenset({_S.CLOSED, _S.BROKEN}),
    _S.CLOSED: frozenset({_S.BROKEN}),
    _S.BROKEN: frozenset(),
}


class Node(Protocol):
    """What a layer's neighbours offer (other layers and the sentinels)."""

    def receive(self, data: bytes) -> None: ...

    def write(self, data: bytes | memoryview) -> None: ...

    def get_buffer(self) -> memoryview | None:
        """A buffer to decrypt into, for ``buffer_updated``; None: use
        ``receive`` with bytes (only the tail has one: a BufferedProtocol)."""

    def buffer_updated(self, nbytes: int) -> None: ...


class ChainEvents(Protocol):
    """What a layer tells its chain."""

    def on_handshake_done(self, layer: Layer) -> None: ...

    def on_peer_closed(self, layer: Layer) -> None: ...

    def on_closed(self, layer: Layer) -> None: ...

    def on_failed(self, layer: Layer, exc: OnionError) -> None: ...


class Layer:
    """One TLS session: an engine, a record framer, and two neighbours."""

    outer: Node
    inner: Node

    def __init__(self, events: ChainEvents, engine: Engine, depth: int) -> None:
        self.events = events
        self.engine = engine
        self.depth = depth
        self.state = LayerState.HANDSHAKING
        #: The application asked to stop this layer before it was open.
        self.stop_requested = False
        #: Bytes after the peer's close_notify: they belong beneath.
        self.held = bytearray()
        self.error: OnionError | None = None
        #: The public read-only view (:class:`onion_tls.TLSLayer`).
        self.view: object = None
        #: Stream mode (see the module docstring) or record mode.
        self._stream = engine.can_unread
        self._framer = RecordFramer()
        self._scanner = RecordScanner()
        self._unfed = b""
        self._pending: deque[bytes | memoryview] = deque()
        self.pending_size = 0

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

    def receive(self, data: bytes | memoryview) -> None:
        """Ciphertext from ``outer`` (only read during this call)."""
        state = self.state
        if state is LayerState.PEER_CLOSED or state is LayerState.CLOSED:
            # After the peer's close_notify: these bytes belong beneath.
            self.held += data
            return
        if state is LayerState.BROKEN:
            return
        if self._stream:
            self._receive_stream(data)
            return
        # Record mode.  The framer keeps no view of ``data`` past this call:
        # an incomplete record is copied into its own buffer.
        framer = self._framer
        framer.feed(data)
        engine = self.engine
        while True:
            record = framer.next_record()
            if record is None:
                if framer.error is not None:
                    self._garbage(framer.error, framer.take_rest())
                return
            engine.feed(record)
            if self.state is LayerState.HANDSHAKING:
                self._handshake_step()
            else:
                self._read_record(len(record))
            if self.state not in _READING:
                return

    def _read_record(self, size: int) -> None:
        try:
            data = self.engine.read(size)
        except PeerClosed:
            self._flush_output()
            self._on_peer_close_notify()
            return
        except EngineError as exc:
            self._fail_engine(exc)
            return
        if data:
            self.inner.receive(data)
        else:
            # Tickets, KeyUpdate, alerts: the engine may have an answer.
            self._flush_output()
            if self._pending and self.state is LayerState.OPEN:
                self._flush_pending()

    def get_buffer(self) -> memoryview | None:
        return None  # an outer layer hands plaintext in with receive()

    def buffer_updated(self, nbytes: int) -> None:  # pragma: no cover - never called
        raise AssertionError("a layer has no buffer to update")

    def _receive_stream(self, data: bytes | memoryview) -> None:
        bad = self._scanner.scan(data)
        if bad < 0:
            self._feed(data)
            return
        # What cannot be a record is not fed yet: if a close_notify comes
        # first, it is no garbage but the layer beneath's (held with what
        # the engine gives back).
        rest = bytes(data[bad:])
        self._unfed = rest
        try:
            if bad > 0:
                self._feed(data[:bad])
        finally:
            self._unfed = b""
        if self.state in _READING:
            why = self._scanner.error
            assert why is not None
            self._garbage(why, rest)

    def _feed(self, data: bytes | memoryview) -> None:
        """Stream mode: give the engine ``data``, then handshake and read
        until it needs more input."""
        try:
            self.engine.feed(data)
        except EngineError as exc:
            self._fail_engine(exc)
            return
        while True:
            state = self.state
            if state is LayerState.HANDSHAKING:
                self._handshake_step()
                if self.state is LayerState.HANDSHAKING:
                    return
            elif state is LayerState.OPEN or state is LayerState.CLOSING:
                if not self._drain():
                    return
            else:
                return

    def _drain(self) -> bool:
        """Read what the engine has and hand it inward; True to call again."""
        inner = self.inner
        if isinstance(inner, Layer):
            scratch = _scratch()
            got, why = self._read_into(scratch)
            if got:
                inner.receive(scratch[:got])
        else:
            buf = inner.get_buffer()
            if buf is not None:
                got, why = self._read_into(buf)
                if got:
                    inner.buffer_updated(got)
            else:
                try:
                    data = self.engine.read(_RECORD_PLAINTEXT)
                except PeerClosed:
                    data, why = b"", _CLOSE
                except EngineError as exc:
                    data, why = b"", exc
                else:
                    why = _FULL if data else _DRY
                if data:
                    inner.receive(data)
        return self._after_read(why)

    def _read_into(self, buf: memoryview) -> tuple[int, str | EngineError]:
        """Decrypt into ``buf`` until it is full or the engine stops."""
        read_into = self.engine.read_into
        size = len(buf)
        got = 0
        try:
            while got < size:
                n = read_into(buf[got:] if got else buf)
                if not n:
                    return got, _DRY
                got += n
        except PeerClosed:
            return got, _CLOSE
        except EngineError as exc:
            return got, exc
        return got, _FULL

    def _after_read(self, why: str | EngineError) -> bool:
        """What ended a read, once what was read has been handed inward
        (which may have changed this layer's state)."""
        if why is _FULL:
            return True
        if self.state not in _READING:
            return False
        if why is _DRY:
            # Tickets, KeyUpdate, alerts: the engine may have an answer.
            self._flush_output()
            if self._pending and self.state is LayerState.OPEN:
                self._flush_pending()
        elif why is _CLOSE:
            self._flush_output()
            self._on_peer_close_notify()
        else:
            assert isinstance(why, EngineError)
            self._fail_engine(why)
        return False

    def _on_peer_close_notify(self) -> None:
        if self._stream:
            self.held += self.engine.unread()
            self.held += self._unfed
            self._unfed = b""
        else:
            self.held += self._framer.take_rest()
        if self.state is LayerState.CLOSING:
            self._set_state(LayerState.CLOSED)
            self.events.on_closed(self)
        else:
            self._set_state(LayerState.PEER_CLOSED)
            self.events.on_peer_closed(self)

    def _garbage(self, why: str, rest: bytes) -> None:
        # Let the engine see the bytes too: it fails with its own words and
        # queues the alert TLS asks for.
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

    def write(self, data: bytes | memoryview) -> None:
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

    def _encrypt(self, data: bytes | memoryview) -> None:
        size = len(data)
        if size <= _WRITE_SLICE:
            self._encrypt_slice(data)
            return
        view = memoryview(data)
        for start in range(0, size, _WRITE_SLICE):
            if self.state is LayerState.BROKEN:
                return
            piece = view[start : start + _WRITE_SLICE]
            if self._pending:
                self._pending.append(piece)
                self.pending_size += len(piece)
            else:
                self._encrypt_slice(piece)

    def _encrypt_slice(self, data: bytes | memoryview) -> None:
        # An engine may take less than everything (pyOpenSSL contexts enable
        # partial writes: one record per call), and nothing at all while a
        # TLS 1.2 renegotiation waits for the peer: the rest is then retried,
        # unchanged, after the next read.
        engine = self.engine
        total = len(data)
        try:
            done = engine.write(data)
            if done < total:
                view = memoryview(data)
                while done < total:
                    taken = engine.write(view[done:])
                    if taken == 0:
                        rest = view[done:]
                        self._pending.appendleft(rest)
                        self.pending_size += len(rest)
                        break
                    done += taken
        except EngineError as exc:
            self._fail_engine(exc)
            return
        self._flush_output()

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending and self.state in (LayerState.OPEN, LayerState.PEER_CLOSED):
            data = pending.popleft()
            self.pending_size -= len(data)
            before = len(pending)
            self._encrypt(data)
            if len(pending) > before:
                return  # the engine wants to read first

    def _flush_output(self) -> None:
        out = self.engine.take_output()
        if out:
            self.outer.write(out)

    def pending_writes(self) -> Iterable[bytes | memoryview]:
        return tuple(self._pending)

    # -- shutdown flow --------------------------------------------------------

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
            self.engine.shutdown()
        except EngineError as exc:
            self._fail_engine(exc)
            return
        self._flush_output()
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
