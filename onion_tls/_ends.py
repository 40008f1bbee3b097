"""The two ends of the chain (sans-IO): :class:`Head`, the raw transport's
side, and :class:`Tail`, the application's side with its delivery backlog;
and :class:`ChainHooks`, what both ends (and the chain) ask of the adapter.

The tail hands application data and EOFs to the application through the
hooks.  Deliveries wait in its backlog, in order, while the application has
paused reading, while it is inside one of its own calls into the transport,
or while earlier deliveries still wait; the backlog is counted
(:attr:`Tail.held`) for the chain's read bound.  An idle connection holds no
backlog: it is made on first use and let go once empty.

Only the chain (:mod:`._chain`) drives the ends; the adapter asks the chain.

Imports: :mod:`._layer` (the types), :mod:`.errors` (the type) - never
asyncio, never :mod:`._chain` (the tail knows the chain through
:class:`ChainState`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._layer import Layer, Node
    from .errors import OnionError

__all__ = ["ChainHooks", "ChainState", "Head", "Tail"]


class ChainHooks(Protocol):
    """What the chain needs from the world around it (the adapter)."""

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Send ciphertext of the outermost layer (or plaintext) to the socket."""

    def deliver_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand application data to the application protocol (``data`` is
        valid only during the call)."""

    def app_buffer(self, size: int) -> memoryview | None:
        """The application's own buffer to decrypt into (a
        ``BufferedProtocol``), or None to use :meth:`deliver_data`."""

    def app_buffer_filled(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last app_buffer()."""

    def deliver_eof(self) -> bool | None:
        """Tell the application of EOF; return what ``eof_received`` said."""

    def schedule_flush(self) -> None:
        """Call :meth:`Chain.flush_deliveries` soon, outside the current call stack."""

    def handshake_done(self, layer: Layer) -> None: ...

    def layer_abandoned(self, layer: Layer, exc: OnionError) -> None:
        """``layer`` will never finish its handshake or its pop (the
        application closed the connection meanwhile); the connection lives
        on, its futures fail with ``exc``."""

    def layer_popped(self, layer: Layer) -> None: ...

    def failed(self, exc: OnionError) -> None:
        """The connection is broken for good: close it and fail futures."""

    def close_raw(self) -> None:
        """Every close_notify is sent: close the socket after its buffer."""


class ChainState(Protocol):
    """What the tail reads of the chain, and the one thing it reports."""

    #: Nothing more is delivered to the application.
    finishing: bool
    #: Calls the application is making into the transport right now.
    app_calls: int

    def after_eof(self, keep_open: bool, layer: Layer | None) -> None: ...


class Head:
    """The outer sentinel: the raw transport."""

    __slots__ = ("_hooks", "inner")

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

    Deliveries wait in a backlog while the application has paused reading,
    while it is inside one of its own calls into the transport, or while
    earlier deliveries are still waiting; order is always kept.  Only the
    chain drives it (the adapter asks the chain).
    """

    __slots__ = ("_backlog", "_chain", "_hooks", "buffered", "held", "outer", "paused")

    def __init__(self, chain: ChainState, hooks: ChainHooks) -> None:
        self._chain = chain
        self._hooks = hooks
        self.outer: Node
        #: Made on first use, let go once empty (most connections never
        #: hold anything back).
        self._backlog: deque[bytes | _Eof] | None = None
        #: Bytes of data in the backlog.
        self.held = 0
        self.paused = False
        #: The application takes data into its own buffers (ask
        #: :meth:`app_buffer` before each record).
        self.buffered = False

    def _may_deliver_now(self) -> bool:
        return not (self._backlog or self.paused or self._chain.app_calls)

    def _queue(self) -> deque[bytes | _Eof]:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        return backlog

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        chain = self._chain
        if chain.finishing:
            # As with asyncio's transports: after close() or abort(), no more
            # data is received (a close still reads what its shutdown needs).
            return
        if not (self._backlog or self.paused or chain.app_calls):
            self._hooks.deliver_data(data)
            return
        self.push_back(bytes(data), front=False)

    def push_back(self, data: bytes, *, front: bool) -> None:
        """Keep ``data`` for a later delivery, behind (or before) the rest."""
        if front:
            self._queue().appendleft(data)
        else:
            self._queue().append(data)
        self.held += len(data)
        if not self.paused:
            self._hooks.schedule_flush()

    def app_buffer(self, size: int) -> memoryview | None:
        if self._chain.finishing or not self._may_deliver_now():
            return None
        return self._hooks.app_buffer(size)

    def app_buffer_filled(self, nbytes: int) -> None:
        self._hooks.app_buffer_filled(nbytes)

    def write(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise AssertionError("nothing is inside the tail")

    def eof(self, layer: Layer | None) -> None:
        if self._chain.finishing:
            return
        if self._may_deliver_now():
            self._deliver_eof(layer)
            return
        self._queue().append(_Eof(layer))
        if not self.paused:
            self._hooks.schedule_flush()

    def _deliver_eof(self, layer: Layer | None) -> None:
        keep_open = self._hooks.deliver_eof()
        self._chain.after_eof(bool(keep_open), layer)

    @property
    def waiting(self) -> bool:
        return bool(self._backlog)

    def flush(self) -> None:
        if self._chain.finishing:
            self.discard()
            return
        # (the backlog is read again at each turn: a delivery may change it)
        while (backlog := self._backlog) and not self.paused and not self._chain.app_calls:
            item = backlog.popleft()
            if isinstance(item, _Eof):
                self._deliver_eof(item.layer)
                continue
            self.held -= len(item)
            if backlog and isinstance(backlog[0], bytes):
                # Everything that waited is handed over in one call, so an
                # application that upgrades from data_received sees all the
                # bytes that came before the upgrade and can pass them as
                # initial_bytes (none is delivered after the splice).
                parts = [item]
                while backlog and isinstance(backlog[0], bytes):
                    more = backlog.popleft()
                    assert isinstance(more, bytes)
                    self.held -= len(more)
                    parts.append(more)
                item = b"".join(parts)
            self._hooks.deliver_data(item)
        if self._backlog is not None and not self._backlog:
            self._backlog = None

    def deliver_last(self) -> None:
        """The connection is lost: hand over the data that was decrypted
        before the end (not EOFs), unless reading is paused; drop the rest."""
        while self._backlog and not self.paused:
            item = self._backlog.popleft()
            if isinstance(item, bytes):
                self.held -= len(item)
                self._hooks.deliver_data(item)
        self.discard()

    def discard(self) -> None:
        if self._backlog is not None:
            self._backlog.clear()  # (a flush under way sees it empty)
            self._backlog = None
        self.held = 0

    def drop_eof(self, layer: Layer) -> None:
        """Forget an EOF of ``layer`` not yet delivered (it was popped)."""
        backlog = self._backlog
        if backlog and any(isinstance(x, _Eof) and x.layer is layer for x in backlog):
            kept = deque(x for x in backlog if not (isinstance(x, _Eof) and x.layer is layer))
            self._backlog = kept or None
