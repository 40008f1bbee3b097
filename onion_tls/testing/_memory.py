"""Sockets in memory: :class:`MemoryPipe` joins two :class:`MemoryTransport`
ends back to back, with TCP's buffering, EOF, close-after-flush, reset and
flow control, moving bytes by itself or one step at a time; :func:`dribble`
cuts the stream into small reads.

Extension API (for pipes that put a network of their own in the middle, as
the fault-injection tests do): a subclass may override
:meth:`MemoryPipe.kick` (when to move bytes) and :meth:`MemoryPipe.reset`,
read a transport's state through :attr:`MemoryTransport.lost`,
:attr:`~MemoryTransport.closing`, :attr:`~MemoryTransport.eof_written`,
:attr:`~MemoryTransport.reading` and :attr:`~MemoryTransport.outgoing`, take
its buffer with :meth:`MemoryTransport.drop_outgoing` (then
:meth:`~MemoryTransport.update_flow`), and end it with
:meth:`MemoryPipe.lose` or :meth:`MemoryPipe.reset`.

Imports: :mod:`onion_tls._transport` (``OnionProtocol``, to send what a stack
gathered before each step).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .._transport import OnionProtocol

__all__ = ["Chunker", "MemoryPipe", "MemoryTransport", "dribble"]


def _deliver(protocol: asyncio.BaseProtocol | None, data: bytes) -> None:
    """Hand ``data`` to ``protocol`` as an event loop would: through
    ``get_buffer``/``buffer_updated`` for a ``BufferedProtocol``."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif protocol is not None:
        protocol.data_received(data)  # type: ignore[attr-defined]


Chunker = Callable[[bytes], Iterable[bytes]]


def dribble(size: int = 1) -> Chunker:
    """A chunker that delivers the stream ``size`` bytes at a time."""

    def split(data: bytes) -> Iterable[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return split


class MemoryTransport(asyncio.Transport):
    """One end of a :class:`MemoryPipe`: behaves like a TCP socket transport
    (buffering, EOF, close after flush, abort as a reset, flow control)."""

    def __init__(self, pipe: MemoryPipe, name: str) -> None:
        super().__init__()
        self.pipe = pipe
        self.name = name
        self.protocol: asyncio.BaseProtocol | None = None
        self.peer: MemoryTransport
        self.outgoing: deque[bytes] = deque()
        self._out_size = 0
        self._closing = False
        self._eof_written = False
        self._eof_sent = False
        self._lost = False
        self._reading = True
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._write_paused = False

    # writing
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_written:
            raise RuntimeError("write() after write_eof()")
        if self._lost or not data:
            return
        data = bytes(data)
        self.outgoing.append(data)
        self._out_size += len(data)
        self.update_flow()
        self.pipe.kick()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_written or self._lost:
            return
        self._eof_written = True
        self.pipe.kick()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        self._high, self._low = high, low
        self.update_flow()

    def update_flow(self) -> None:
        """Tell the protocol to pause or resume writing if the buffered size
        crossed a limit (call it after :meth:`drop_outgoing` when the bytes
        were sent, not lost)."""
        proto = self.protocol
        if proto is None or self._lost:
            return
        if not self._write_paused and self._out_size > self._high:
            self._write_paused = True
            proto.pause_writing()
        elif self._write_paused and self._out_size <= self._low:
            self._write_paused = False
            proto.resume_writing()

    # state, for pipes (see the module's extension API)
    @property
    def lost(self) -> bool:
        """The socket is gone: ``connection_lost()`` was scheduled."""
        return self._lost

    @property
    def closing(self) -> bool:
        """``close()`` or ``abort()`` was called (unlike :meth:`is_closing`,
        not set by the connection being lost otherwise)."""
        return self._closing

    @property
    def eof_written(self) -> bool:
        """``write_eof()`` was called."""
        return self._eof_written

    @property
    def reading(self) -> bool:
        """Reading is not paused (whether or not the transport closes)."""
        return self._reading

    def drop_outgoing(self) -> bytes:
        """Take everything buffered for sending, emptying the buffer, and
        return it (flow control is not updated: see :meth:`update_flow`)."""
        data = b"".join(self.outgoing)
        self.outgoing.clear()
        self._out_size = 0
        return data

    # reading
    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self.pipe.kick()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # ending
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self.pipe.kick()

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self.outgoing.clear()
        self._out_size = 0
        self.pipe.lose(self, None)
        self.pipe.reset(self.peer)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "peername": ("memory", self.peer.name),
            "sockname": ("memory", self.name),
        }.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol


class MemoryPipe:
    """Two :class:`MemoryTransport` ends joined back to back.

    With ``auto=True`` (the default) bytes move by themselves, on the event
    loop, like a socket pair.  With ``auto=False`` nothing moves until the
    test calls :meth:`step` or :meth:`pump`, so every interleaving can be
    chosen.  ``chunker`` cuts each write before delivery (see
    :func:`dribble`); ``coalesce`` joins everything pending into one read.

    ``close()`` is a full close, as on TCP: bytes written afterwards toward
    the closed end make it answer with a reset.  With ``half_close=True`` a
    closed end still takes (and drops) what is sent to it, like a peer that
    only shut down its writing side (``shutdown(SHUT_WR)``).
    """

    def __init__(
        self,
        *,
        auto: bool = True,
        chunker: Chunker | None = None,
        coalesce: bool = False,
        half_close: bool = False,
    ) -> None:
        self.half_close = half_close
        self.a = MemoryTransport(self, "a")
        self.b = MemoryTransport(self, "b")
        self.a.peer, self.b.peer = self.b, self.a
        self.auto = auto
        self.chunker = chunker
        self.coalesce = coalesce
        self._scheduled = False
        #: The loop the pipe moves bytes on.
        self.loop = asyncio.get_running_loop()
        #: Every byte that crossed the pipe, per direction.
        self.sent: dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}

    def connect(self, proto_a: asyncio.BaseProtocol, proto_b: asyncio.BaseProtocol) -> None:
        self.a.protocol, self.b.protocol = proto_a, proto_b
        proto_a.connection_made(self.a)
        proto_b.connection_made(self.b)

    def kick(self) -> None:
        """Bytes may be ready to move: with ``auto``, pump on the loop soon.
        Transports call it on every change; a subclass with its own network
        overrides it."""
        if self.auto and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._auto_pump)

    def _auto_pump(self) -> None:
        self._scheduled = False
        self.pump()

    def step(self, src: MemoryTransport | None = None) -> bool:
        """Deliver one chunk from ``src`` (either end when None); returns
        False when nothing was pending."""
        ends = (src,) if src is not None else (self.a, self.b)
        return any(self._step_one(t) for t in ends)

    def pump(self, max_steps: int = 1_000_000) -> None:
        """Move bytes until nothing is pending (or receivers are paused)."""
        for _ in range(max_steps):
            if not self.step():
                return

    def _step_one(self, src: MemoryTransport) -> bool:
        if isinstance(src.protocol, OnionProtocol):
            # Like a turn of the loop: small writes an onion stack gathered
            # go out before the pipe moves bytes.
            src.protocol.send_gathered()
        dst = src.peer
        if src._lost:
            return False
        if src.outgoing and dst._lost:
            # The peer's socket is gone.  A closing socket is done once its
            # buffer is handed over; a live one gets the peer's RST.
            src.outgoing.clear()
            src._out_size = 0
            if self.half_close:
                src.update_flow()
                return True
            if src._closing:
                self.lose(src, None)
            else:
                self.reset(src)
            return True
        if src.outgoing and dst._reading and not dst._lost:
            if self.coalesce:
                data = b"".join(src.outgoing)
                src.outgoing.clear()
            else:
                data = src.outgoing.popleft()
            src._out_size -= len(data)
            self.sent[src.name] += data
            src.update_flow()
            pieces = self.chunker(data) if self.chunker else (data,)
            for piece in pieces:
                if dst._lost:
                    break
                _deliver(dst.protocol, piece)
            return True
        if src.outgoing:
            return False
        if (src._eof_written or src._closing) and not src._eof_sent:
            src._eof_sent = True
            if not dst._lost:
                keep = dst.protocol.eof_received()  # type: ignore[union-attr]
                if not keep:
                    dst.close()
            if src._closing:
                self.lose(src, None)
            return True
        if src._closing and src._eof_sent:
            # close() after write_eof(): the EOF has gone already.
            self.lose(src, None)
            return True
        return False

    def lose(self, t: MemoryTransport, exc: Exception | None = None) -> None:
        """End ``t``'s socket: its protocol gets ``connection_lost(exc)``
        (once, on the loop)."""
        if t._lost:
            return
        t._lost = True
        t._closing = True
        proto = t.protocol
        if proto is not None:
            self.loop.call_soon(proto.connection_lost, exc)
        self.kick()

    def reset(self, t: MemoryTransport) -> None:
        """``t`` receives an RST: its buffer is dropped and its protocol gets
        a ``ConnectionResetError``."""
        t.outgoing.clear()
        t._out_size = 0
        self.lose(t, ConnectionResetError("connection reset by peer (memory pipe)"))
