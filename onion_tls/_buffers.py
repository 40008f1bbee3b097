"""Scratch buffers for the data path, lent per thread.

Bytes read from the socket and plaintext decrypted by an outer layer for
the layer inside it only live for the duration of one call down the chain:
every consumer copies what it keeps (into its engine's memory BIO, its
record framer, its held bytes, or a ``bytes`` for the application).  So the
buffers need not belong to a connection: an idle connection holds none, and
a busy thread reuses a few large ones instead of allocating one per read or
per record.

A buffer is taken for one use and given back after it.  Uses may nest (an
outer layer's plaintext is being decrypted by the layer inside while the
outer one still holds its buffer; an application may feed another
connection synchronously from ``data_received``): each use then simply gets
a different buffer.  A buffer that is never given back (an error between
``get_buffer`` and ``buffer_updated``) is collected like any object.
:class:`Loan` is the adapter's side of one socket read: the event loop's
``get_buffer``/``buffer_updated`` pair.

Imports nothing from the package.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["BUFFER_SIZE", "Loan", "give", "take"]

#: Size of every scratch buffer: one socket read, or the plaintext of the
#: records in it.
BUFFER_SIZE = 256 * 1024
# Buffers a thread keeps for reuse; more than this in use at once (deep
# nesting) are allocated and dropped.
_KEEP = 8


class _Pool(threading.local):
    def __init__(self) -> None:
        self.free: list[bytearray] = []


_pool = _Pool()


def take() -> bytearray:
    """A buffer of :data:`BUFFER_SIZE` bytes nobody else uses until :func:`give`."""
    free = _pool.free
    return free.pop() if free else bytearray(BUFFER_SIZE)


def give(buf: bytearray) -> None:
    """Return a buffer from :func:`take`; the caller must keep no view of it."""
    free = _pool.free
    if len(free) < _KEEP:
        free.append(buf)


class Loan:
    """A scratch buffer lent to the event loop for one read: taken at
    ``get_buffer``, given back once the bytes read into it were consumed
    (``buffer_updated``) or when the connection ends without them."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf: bytearray | None = None

    def lend(self) -> memoryview:
        # A memoryview, not the bytearray: a caller that fills it in pieces
        # (asyncio's own TLS writes into ``buf[offset:]``) must write into it.
        buf = self._buf
        if buf is None:
            buf = self._buf = take()
        return memoryview(buf)

    def filled(self, nbytes: int, consume: Callable[[memoryview], None]) -> None:
        """``nbytes`` were read into the lent buffer: ``consume`` them (valid
        only during the call), then give the buffer back."""
        buf = self._buf
        if buf is None:  # pragma: no cover - the loop always asks first
            raise RuntimeError("buffer_updated() without get_buffer()")
        self._buf = None
        try:
            with memoryview(buf) as view:
                consume(view[:nbytes])
        finally:
            give(buf)

    def drop(self) -> None:
        """No more reads: give the buffer back, if one is lent."""
        buf, self._buf = self._buf, None
        if buf is not None:
            give(buf)
