"""In-process cost of onion_tls's data path, one side at a time, no sockets.

Two onion stacks are joined by a do-nothing transport, the layers are
established, and then either the sending side (application writes ->
ciphertext) or the receiving side (ciphertext in socket-sized reads ->
application) runs alone, so a native profiler sees only that side::

    python stress/datapath.py --depth 2 --side send
    perf record -g python stress/datapath.py --depth 2 --side recv
    perf report --no-children --sort dso,sym

It prints MB/s and CPU ns per payload byte.  No network, no event loop
wake-ups: this is the library's own cost (plus OpenSSL's), not a benchmark
against anything (``python benchmarks/bench.py`` is that).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from onion_tls import OnionProtocol
from onion_tls.testing import OnionCA

_READ = 256 * 1024


class _Wire(asyncio.Transport):
    """Collects (or drops) what a stack writes to its socket."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[Any] = []
        self.keep = True

    def write(self, data: Any) -> None:
        if self.keep:
            self.out.append(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.size = 0
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.size += len(data)


class _BufferedSink(_Sink, asyncio.BufferedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray(_READ)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.size += nbytes


def _pump(a: OnionProtocol, wa: _Wire, b: OnionProtocol, wb: _Wire) -> None:
    while wa.out or wb.out:
        if wa.out:
            b.data_received(wa.take())
        if wb.out:
            a.data_received(wb.take())


async def _main(opts: argparse.Namespace) -> None:
    ca = OnionCA()
    client_app = _Sink()
    server_app = _BufferedSink() if opts.buffered else _Sink()
    client, server = OnionProtocol(client_app), OnionProtocol(server_app)
    wc, ws = _Wire(), _Wire()
    client.connection_made(wc)
    server.connection_made(ws)
    for depth in range(1, opts.depth + 1):
        fs = server_app.transport.start_tls(ca.server_context(depth, opts.engine), server_side=True)
        fc = client_app.transport.start_tls(
            ca.client_context(opts.engine), server_hostname=ca.hostname(depth)
        )
        _pump(client, wc, server, ws)
        fc.result()
        fs.result()
    chunk = bytes(opts.size)
    writes = max(1, opts.mb * 1_000_000 // opts.size)
    per_turn = max(1, _READ // opts.size)

    async def send() -> float:
        cpu = time.process_time()
        for i in range(writes):
            client_app.transport.write(chunk)
            if i % per_turn == per_turn - 1:
                await asyncio.sleep(0)  # the end of a turn: gathered writes go
        await asyncio.sleep(0)
        return time.process_time() - cpu

    if opts.side == "send":
        wc.keep = False
        cpu = await send()
    else:
        await send()
        wire = memoryview(wc.take())
        cpu = time.process_time()
        for start in range(0, len(wire), _READ):
            piece = wire[start : start + _READ]
            buf = server.get_buffer(len(piece))
            buf[: len(piece)] = piece
            server.buffer_updated(len(piece))
        cpu = time.process_time() - cpu
        assert server_app.size == writes * opts.size, "not everything arrived"
    total = writes * opts.size
    print(
        f"depth {opts.depth} {opts.engine} {opts.side} {opts.size} B writes"
        f"{' (buffered app)' if opts.buffered else ''}: "
        f"{total / cpu / 1e6:.0f} MB/s, {cpu / total * 1e9:.2f} ns/B of CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--side", choices=("send", "recv"), default="send")
    parser.add_argument("--engine", choices=("pyopenssl", "stdlib"), default="pyopenssl")
    parser.add_argument("--size", type=int, default=64 * 1024, help="bytes per write")
    parser.add_argument("--mb", type=int, default=500, help="payload, in MB")
    parser.add_argument("--buffered", action="store_true", help="a BufferedProtocol app")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
