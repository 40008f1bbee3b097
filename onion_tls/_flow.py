"""Flow control at the adapter's two edges (asyncio).

Writing is one membrane (Twisted's word): the application is paused while
the raw transport is paused *or* the bytes queued inside the connection
(plaintext held in the chain, writes being gathered) are above the
high-water mark, and resumed when neither holds (DESIGN rule 9).  Reading:
the raw transport is paused while the chain does not want input - the
application paused reading and no handshake or shutdown needs the peer's
bytes, or the bytes held for the application passed the chain's bound
(rule 12) - and resumed when it does.

Owns the water marks and the pause bits; the adapter tells it what changed.
Imports: asyncio only (types).
"""

from __future__ import annotations

import asyncio

__all__ = ["DEFAULT_HIGH", "ReadSync", "WriteFlow"]

#: The default high-water mark of the write side (the low one is a quarter).
DEFAULT_HIGH = 64 * 1024


class WriteFlow:
    """The write membrane: two sources of pause, one answer to the app."""

    __slots__ = ("_app_paused", "_queue_over", "high", "low", "raw_paused")

    def __init__(self) -> None:
        self.high = DEFAULT_HIGH
        self.low = DEFAULT_HIGH // 4
        #: The raw transport asked us to pause.
        self.raw_paused = False
        #: The bytes queued inside passed ``high`` and have not yet gone
        #: below ``low``.
        self._queue_over = False
        self._app_paused = False

    def set_limits(self, high: int | None, low: int | None) -> tuple[int, int]:
        """asyncio's ``set_write_buffer_limits`` rules; returns (high, low)."""
        if high is None:
            high = DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high, self.low = high, low
        return high, low

    def update(self, queued: int, *, lost: bool = False) -> bool | None:
        """``queued`` bytes wait inside: True when the application must be
        paused now, False when it must be resumed, None when nothing
        changes (or the connection is ``lost``: the app is told no more)."""
        if self._queue_over:
            if queued <= self.low:
                self._queue_over = False
        elif queued > self.high:
            self._queue_over = True
        paused = self.raw_paused or self._queue_over
        if paused == self._app_paused or lost:
            return None
        self._app_paused = paused
        return paused

    def tell(
        self,
        paused: bool,
        app: asyncio.BaseProtocol,
        loop: asyncio.AbstractEventLoop | None,
        transport: asyncio.BaseTransport,
    ) -> None:
        """Call the application's ``pause_writing``/``resume_writing``; an
        exception from it is reported as asyncio's transports do."""
        try:
            if paused:
                app.pause_writing()
            else:
                app.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001 - reported like asyncio does
            if loop is not None:
                loop.call_exception_handler(
                    {
                        "message": "protocol.pause_writing()/resume_writing() failed",
                        "exception": exc,
                        "transport": transport,
                        "protocol": app,
                    }
                )


class ReadSync:
    """Keeps the raw transport's reading in step with the chain's wish."""

    __slots__ = ("_raw_paused",)

    def __init__(self) -> None:
        self._raw_paused = False

    @property
    def reading(self) -> bool:
        """The raw transport is reading (as far as we paused it)."""
        return not self._raw_paused

    def sync(self, raw: asyncio.Transport, wants_input: bool) -> None:
        want_paused = not wants_input
        if want_paused != self._raw_paused:
            self._raw_paused = want_paused
            if want_paused:
                raw.pause_reading()
            else:
                raw.resume_reading()
