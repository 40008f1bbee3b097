"""Regression tests for the in-memory pipe the suites run on: it must end
connections the way TCP does, or a test waits for ever."""

from __future__ import annotations

import asyncio

from onion_tls.testing import MemoryPipe


class Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []
        self.data = bytearray()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return True  # half-open: keep our side until we close it

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_close_with_bytes_for_a_peer_that_is_gone() -> None:
    """Both ends close at once, each with a last record in flight (two
    close_notify crossing): the one whose peer went first must still be
    told connection_lost(None), as asyncio does once its buffer is handed
    to the kernel.  The pipe used to keep those bytes for ever."""
    pipe = MemoryPipe(auto=False)
    a, b = Side(), Side()
    pipe.connect(a, b)
    a.transport.write(b"a's last words")
    b.transport.write(b"b's last words")
    a.transport.close()
    b.transport.close()
    pipe.pump()
    await settle()
    assert a.lost == [None]
    assert b.lost == [None]
