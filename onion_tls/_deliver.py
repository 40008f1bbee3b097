"""Handing decrypted data and EOFs to the application protocol (asyncio).

The chain's tail (:class:`onion_tls._chain.Tail`) decides *when* the
application gets something; this module decides *how*: ``data_received``
for an ``asyncio.Protocol``, ``get_buffer``/``buffer_updated`` for an
``asyncio.BufferedProtocol`` (decrypted straight into the application's own
buffer when the layer can, :meth:`AppDelivery.buffer`).

Owns the application protocol object of a connection (``set_protocol``
changes it).  Imports: asyncio, :mod:`._chain` (the type).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._chain import Chain

__all__ = ["AppDelivery"]


class AppDelivery:
    """The application protocol, as deliveries see it."""

    __slots__ = ("_buffered", "protocol")

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    @property
    def buffered(self) -> bool:
        """The application is an ``asyncio.BufferedProtocol``."""
        return self._buffered

    def data(self, data: bytes | bytearray | memoryview, chain: Chain) -> None:
        """Hand ``data`` (valid only during the call) to the application;
        if it pauses reading from ``buffer_updated``, the rest waits in
        ``chain``, first in line."""
        app = self.protocol
        if not self._buffered:
            app.data_received(data if type(data) is bytes else bytes(data))  # type: ignore[attr-defined]
            return
        view = memoryview(data)
        while view:
            if chain.delivery_paused:
                # The application paused reading from buffer_updated(): the
                # rest waits, first in line, for resume_reading().
                chain.deliver_later(bytes(view))
                return
            buf = app.get_buffer(len(view))  # type: ignore[attr-defined]
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            memoryview(buf)[:n] = view[:n]
            app.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]

    def buffer(self, size: int) -> memoryview | None:
        """A ``BufferedProtocol``'s own buffer to decrypt into, else None."""
        if not self._buffered:
            return None
        buf = self.protocol.get_buffer(size)  # type: ignore[attr-defined]
        view = memoryview(buf)
        if view.readonly:
            raise TypeError("get_buffer() returned a read-only buffer")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not view:
            raise RuntimeError("get_buffer() returned an empty buffer")
        return view

    def filled(self, nbytes: int) -> None:
        self.protocol.buffer_updated(nbytes)  # type: ignore[attr-defined]

    def eof(self) -> bool | None:
        return self.protocol.eof_received()  # type: ignore[attr-defined,no-any-return]
