"""The raw transport as the adapter uses it (asyncio).

Owns the socket's side of a connection: the raw transport (None before
``connection_made``), whether ``connection_lost`` has come, writes and
closes that stop once it is gone, its reading kept in step with the chain
(:class:`~onion_tls._flow.ReadSync`), the one timer that aborts it - the
grace an alert has to leave after a failure, or the bound on ``close()``
(DESIGN rule 13) - and the count of application writes dropped after the
end.

Imports: asyncio; :mod:`._flow`, :mod:`._log`, :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._flow import ReadSync
from ._log import logger
from .errors import TLSTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from .errors import OnionError

__all__ = ["RawSide"]

# After a fatal error we close the socket so the alert can leave; if the
# peer does not read it, the socket is aborted after this long.
_ALERT_GRACE = 2.0
# Writes after close() are dropped; from this many on, each is logged
# (asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES).
_LOG_WRITES_AFTER_CLOSE = 5


class RawSide:
    """The raw transport of one connection, and the timer that aborts it."""

    __slots__ = ("_dropped", "_grace", "_read_sync", "lost", "transport")

    def __init__(self) -> None:
        #: None before connection_made() and after connection_lost() (kept
        #: during it, so the application may still ask for its extra info).
        self.transport: asyncio.Transport | None = None
        #: connection_lost() has been called.
        self.lost = False
        self._read_sync = ReadSync()
        #: Aborts the socket: after a fatal error (the alert had its time to
        #: leave) or when close() takes longer than the shutdown timeout.
        self._grace: asyncio.TimerHandle | None = None
        self._dropped = 0

    @property
    def live(self) -> asyncio.Transport | None:
        """The raw transport while it is there and not lost."""
        return None if self.lost else self.transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raw = self.transport  # (``live``, inlined: once per socket write)
        if raw is not None and not self.lost:
            raw.write(data)

    def close(self) -> None:
        raw = self.live
        if raw is not None:
            raw.close()

    def abort(self) -> None:
        raw = self.live
        if raw is not None:
            raw.abort()

    def buffer_size(self) -> int:
        raw = self.transport  # (``live``, inlined)
        return 0 if raw is None or self.lost else raw.get_write_buffer_size()

    def sync_reading(self, wants_input: bool) -> None:
        """Pause or resume the raw transport's reading as the chain wants."""
        if self._read_sync.reading == wants_input:
            return  # (the common case: nothing to change)
        raw = self.live
        if raw is None or raw.is_closing():
            return
        self._read_sync.sync(raw, wants_input)

    def set_write_limits(self, high: int, low: int) -> None:
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high, low)

    # -- the timer that aborts it -------------------------------------------

    def cancel_timer(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    def close_after_failure(self, exc: OnionError, loop: asyncio.AbstractEventLoop | None) -> None:
        """The connection failed: close so the alert can leave, abort after
        a grace (at once after a timeout: the peer does not read)."""
        raw = self.live
        if raw is None:
            return
        self.cancel_timer()
        if isinstance(exc, TLSTimeoutError) or loop is None:
            raw.abort()
            return
        raw.close()  # lets the alert leave first
        self._grace = loop.call_later(_ALERT_GRACE, raw.abort)

    def bound_close(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        fail: Callable[[OnionError], None],
    ) -> None:
        """close() may take ``timeout`` seconds; then ``fail`` breaks the
        connection (which aborts the socket)."""
        self._grace = loop.call_later(timeout, self._close_timeout, timeout, fail)

    def _close_timeout(self, timeout: float, fail: Callable[[OnionError], None]) -> None:
        self._grace = None
        fail(
            TLSTimeoutError(
                f"close() did not finish within {timeout:g} s (the peer does not take "
                "the data or the close_notify alerts): the connection was aborted (timeout)"
            )
        )

    def write_dropped(self) -> None:
        """An application write after close(), abort() or the loss of the
        connection was dropped, as asyncio's transports do."""
        self._dropped += 1
        if self._dropped == _LOG_WRITES_AFTER_CLOSE:
            logger.warning(
                "%d writes after close(), abort() or the loss of the connection were "
                "dropped (as asyncio's transports do); further ones are dropped silently",
                self._dropped,
            )
