"""Idle connections give back burst memory.

A TLS engine keeps what a burst of traffic made it grow (a memory BIO stays
as large as the most it ever held: a 256 KiB write leaves ~330 KiB behind
per layer).  :class:`IdleTrim` notices a connection that has been quiet for
:data:`IDLE_TRIM` seconds and asks the chain to let its layers give that
back (:meth:`onion_tls._chain.Chain.trim`), once per quiet period.  Traffic
costs one flag per call; the timer is re-armed at most once per period.

Imports: asyncio; :mod:`._chain` (types only).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._chain import Chain

__all__ = ["IDLE_TRIM", "IdleTrim"]

#: Seconds without traffic after which a connection's layers are trimmed
#: (it happens between one and two periods after the last byte).
IDLE_TRIM = 2.0


class IdleTrim:
    """Trims ``chain`` when nothing moved for a period."""

    __slots__ = ("_active", "_chain", "_loop", "_timer")

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def touch(self) -> None:
        """Something moved (a read, a write, a layer change)."""
        self._active = True
        if self._timer is None and self._loop is not None and self._chain.innermost() is not None:
            self._timer = self._loop.call_later(IDLE_TRIM, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._active:
            self._active = False
            assert self._loop is not None
            self._timer = self._loop.call_later(IDLE_TRIM, self._check)
        else:
            self._chain.trim()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
