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
"""

from __future__ import annotations

import threading

__all__ = ["BUFFER_SIZE", "give", "take"]

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
