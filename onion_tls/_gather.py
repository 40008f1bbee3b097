"""Write gathering: small writes of one turn of the event loop leave
together (asyncio).

The first write of a turn of the event loop is encrypted and sent at once
(no added latency); small writes that follow it in the same turn are
gathered and encrypted together into full records at the end of the turn:
fewer records, engine calls and socket writes, which is what small writes
cost.  Writes the application makes while we hand it data (from
``data_received``/``buffer_updated``: an echo, a reply, a request answered)
are gathered from the first one until that call returns
(:meth:`WriteGatherer.end_delivery`): they leave together, before the next
record is read, and no end-of-turn callback is scheduled for them.
``close()`` and ``abort()`` send what is gathered first (``abort()``: as
far as the socket takes it at once, as asyncio's own transports do with a
write made right before it).  Gathered bytes go on at once when
:data:`GATHER_MAX` wait or when, with them, the bytes buffered on the
connection pass the high-water mark, so flow control sees them as if they
had not waited.  While a write stays below both,
:meth:`WriteGatherer.try_append` takes it (the common case costs one
append).  Plaintext connections are never gathered: there is no record to
fill.

The gathering buffer ``_buf`` exists only between the first write of a turn
and the end of that turn (the callback is scheduled), or during a delivery
that wrote; it is None otherwise, and the next write goes out at once.

Owns the gathering buffer and the end-of-turn callback.  Imports: asyncio
(types), :mod:`._chain` (the chain it writes to), :mod:`._flow`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._chain import Chain
    from ._flow import WriteFlow

__all__ = ["GATHER_MAX", "GATHER_SMALL", "WriteGatherer"]

#: Gathering small writes (layers only): a write of less than this...
GATHER_SMALL = 32 * 1024
#: ...that follows another write in the same turn of the event loop waits
#: with the others, to be encrypted at once, at the end of the turn or when
#: this many bytes (or the high-water mark) are waiting.
GATHER_MAX = 64 * 1024


class WriteGatherer:
    """The writes of one turn, on their way into the chain."""

    __slots__ = (
        "_buf",
        "_buffered_size",
        "_chain",
        "_deliveries",
        "_flow",
        "_loop",
        "_room",
        "_scheduled",
        "_turn_ended",
    )

    def __init__(
        self,
        chain: Chain,
        flow: WriteFlow,
        buffered_size: Callable[[], int],
        turn_ended: Callable[[], None],
    ) -> None:
        self._chain = chain
        self._flow = flow
        #: Bytes written by the application and not yet taken by the kernel.
        self._buffered_size = buffered_size
        #: Called at the end of a turn, after what was gathered went out.
        self._turn_ended = turn_ended
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Small writes made since the first write of this turn of the loop
        #: (None: no write yet this turn, the next one goes out at once).
        self._buf: bytearray | None = None
        #: Bytes the next write may have gathered without any check (below
        #: GATHER_SMALL and below the flush point).
        self._room = 0
        #: The end-of-turn callback is scheduled.
        self._scheduled = False
        #: Deliveries to the application under way (they nest when the
        #: application resumes reading from inside one).
        self._deliveries = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def size(self) -> int:
        """Bytes gathered, waiting for the end of the turn."""
        buf = self._buf
        return len(buf) if buf is not None else 0

    def try_append(self, data: bytes) -> bool:
        """Gather ``data`` if that needs no look at flow control (the fast
        path of ``OnionTransport.write``); False: call :meth:`write`."""
        n = len(data)
        buf = self._buf
        if n < self._room and n < GATHER_SMALL and buf is not None:
            buf += data
            self._room -= n
            return True
        return False

    def write(self, data: bytes) -> bool:
        """An application write (non-empty; the connection takes writes).
        True when it was only gathered, below every mark: flow control has
        nothing new to see."""
        chain = self._chain
        buf = self._buf
        if buf is None:
            if not self._deliveries or chain.innermost() is None:
                self._first_of_turn(data)
                return False
            # From inside a delivery: gathered from the first write on.
            buf = self._buf = bytearray()
        if len(data) >= GATHER_SMALL:
            self.flush()
            chain.write(data)
            self._room = self._compute_room()
            return False
        buf += data
        # (one look at what is buffered: it counts ``buf`` already)
        room = min(GATHER_MAX - len(buf), self._flow.high - self._buffered_size())
        if room < 0 or len(buf) >= GATHER_MAX:
            self.flush()
            self._room = 0
            return False
        self._room = room
        return True

    def _first_of_turn(self, data: bytes) -> None:
        # Out at once; what follows in this turn is gathered.
        chain = self._chain
        chain.write(data)
        loop = self._loop
        if (
            not self._scheduled
            and loop is not None
            and chain.innermost() is not None
            and not loop.is_closed()
        ):
            loop.call_soon(self._end_turn)
            self._scheduled = True
            self._buf = bytearray()
            self._room = 0  # (a lone write never needs it: computed by the next one)

    def begin_delivery(self) -> None:
        """The adapter hands the application data (one ``data_received``
        or ``buffer_updated`` call): what it writes meanwhile is gathered
        until :meth:`end_delivery`."""
        self._deliveries += 1

    def end_delivery(self) -> None:
        """The delivery returned: what the application wrote from it goes
        into the chain now, before anything more is read (unless the end of
        this turn is already scheduled to send it)."""
        self._deliveries -= 1
        buf = self._buf
        if self._deliveries or buf is None or self._scheduled:
            return
        self.stop()
        if buf:
            # (flow control looks after the read or flush that delivered:
            # every entry point of the adapter that drives the chain ends
            # with its flow update)
            self._chain.write(buf)

    def _compute_room(self) -> int:
        buf = self._buf
        if buf is None:
            return 0
        return max(0, min(GATHER_MAX - len(buf), self._flow.high - self._buffered_size()))

    def limits_changed(self) -> None:
        """The water marks moved: the next write recomputes the room."""
        self._room = 0

    def flush(self) -> None:
        """Send what is gathered into the chain now (before a layer change,
        a close, an EOF, or when the peer may read)."""
        buf = self._buf
        if buf:
            # A fresh buffer for what comes next: the chain may keep this one
            # (queued behind a handshake or a stop), and it is never touched.
            self._buf = bytearray()
            self._chain.write(buf)
            self._room = 0  # the next write recomputes it

    def _end_turn(self) -> None:
        self._scheduled = False
        buf = self._buf
        self.stop()
        if buf:
            self._chain.write(buf)
            self._turn_ended()
        # (nothing gathered now: every write of the turn went into the chain
        # with a flow update after it, or was flushed by a caller that makes
        # its own: a layer change, close, send_gathered)

    def stop(self) -> None:
        """The next write goes out at once (what is gathered is dropped)."""
        self._buf = None
        self._room = 0
