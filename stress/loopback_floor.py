"""The floor under any TLS sink on this machine: plain TCP over 127.0.0.1.

An asyncio ``BufferedProtocol`` sink and a client writing 64 KiB pieces in
one process, no TLS: the CPU time per byte is what the kernel's loopback
path costs both ends together.  Add twice ``openssl speed -evp aes-256-gcm``
(encrypt + decrypt) to get the least CPU a TLS sink can use per byte::

    python stress/loopback_floor.py
"""

from __future__ import annotations

import asyncio
import time

_WRITES = 4000
_SIZE = 64 * 1024


class _Sink(asyncio.BufferedProtocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.buf = bytearray(256 * 1024)
        self.size = 0
        self.done = done

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.size += nbytes
        if self.size >= _WRITES * _SIZE and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.resumed: asyncio.Future[None] | None = None
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)


async def _main() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    server = await loop.create_server(lambda: _Sink(done), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(_Client, "127.0.0.1", port)
    chunk = bytes(_SIZE)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(_WRITES):
        transport.write(chunk)
        if client.paused:
            client.resumed = loop.create_future()
            await client.resumed
    await done
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    total = _WRITES * _SIZE
    print(
        f"plain TCP over 127.0.0.1, both ends in one process: {total / wall / 1e6:.0f} MB/s, "
        f"{cpu / total * 1e9:.2f} ns/B of CPU"
    )
    transport.close()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_main())
