"""The stream reader of :mod:`onion_tls.streams` (asyncio): asyncio's
``StreamReader``, with a truncation raised where the EOF would be; and the
only places in the package that reach into a ``StreamReader``.

``StreamReader`` has no public way to take its buffer or to clear its EOF
flag; the helpers that do (:func:`take_buffer`, :func:`buffered_size`,
:func:`reopen`) touch ``_buffer``/``_eof``, which are the same on Python
3.11 to 3.13, and a test checks they still exist.

Imports: asyncio, :mod:`.errors` (the type).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import TruncatedError

__all__ = ["DEFAULT_LIMIT", "StreamReader", "buffered_size", "reopen", "take_buffer"]

DEFAULT_LIMIT = 2**16  # 64 KiB, as asyncio


def take_buffer(reader: asyncio.StreamReader) -> bytes:
    """Remove and return the bytes ``reader`` holds unread."""
    buf: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buf)
    buf.clear()
    reader._maybe_resume_transport()  # type: ignore[attr-defined]
    return data


def buffered_size(reader: asyncio.StreamReader) -> int:
    return len(reader._buffer)  # type: ignore[attr-defined]


def reopen(reader: asyncio.StreamReader) -> None:
    """Take back an EOF fed by a layer that has since been popped."""
    reader._eof = False  # type: ignore[attr-defined]


class StreamReader(asyncio.StreamReader):
    """asyncio's ``StreamReader``, with one difference: a truncation (the
    connection ended inside a TLS layer without its close_notify) is raised
    where the EOF would have been returned, so that everything received and
    verified before it can still be read (``read(n)`` returns it and then
    raises :class:`~onion_tls.TruncatedError` instead of ``b""``;
    ``readexactly``/``readuntil`` raise it instead of
    ``IncompleteReadError``; ``readline`` returns a last partial line first)."""

    _truncation: TruncatedError | None = None
    _eof_means_partial = False

    def feed_truncation(self, exc: TruncatedError) -> None:
        self._truncation = exc
        self.feed_eof()

    def _check_truncation(self) -> None:
        if self._truncation is not None:
            raise self._truncation

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            # (asyncio's read(-1) calls read(limit) in a loop: through this
            # class it would raise at the end instead of returning the data)
            blocks = []
            while block := await super().read(DEFAULT_LIMIT):
                blocks.append(block)
            data = b"".join(blocks)
        else:
            data = await super().read(n)
        if not data and n != 0:
            self._check_truncation()
        return data

    async def readline(self) -> bytes:
        # asyncio's readline() calls readuntil() and returns the partial
        # line of an IncompleteReadError: keep that for the last line.
        self._eof_means_partial = True
        try:
            line = await super().readline()
        finally:
            self._eof_means_partial = False
        if not line:
            self._check_truncation()
        return line

    async def readuntil(self, separator: bytes = b"\n") -> bytes:  # type: ignore[override]
        try:
            return await super().readuntil(separator)
        except asyncio.IncompleteReadError as exc:
            if self._truncation is not None and not self._eof_means_partial:
                raise self._truncation from exc
            raise

    async def readexactly(self, n: int) -> bytes:
        try:
            return await super().readexactly(n)
        except asyncio.IncompleteReadError as exc:
            if self._truncation is not None:
                raise self._truncation from exc
            raise
