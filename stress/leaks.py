"""Memory stays flat over many connection cycles in one process.

    python stress/leaks.py --cycles 10000

Each cycle connects an in-memory pair of onion stacks, pushes two layers
(the engines alternate), exchanges checksummed data inside them, pops both
and closes.  After a warm-up (caches, first-use allocations) the Python
heap is measured with tracemalloc and the process with its resident size;
the run fails if the heap grew by more than ``--budget`` bytes per cycle
over the measured cycles, and shows where it grew.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import sys
import time
import tracemalloc

from onion_tls.testing import OnionCA, memory_pair


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.eof_answer = False
        self.changed: asyncio.Event = asyncio.Event()
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        return self.eof_answer

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.changed.set()


async def wait(app: App, cond: object) -> None:
    while not cond():  # type: ignore[operator]
        app.changed.clear()
        await asyncio.wait_for(app.changed.wait(), 10)


async def cycle(ca: OnionCA, i: int, contexts: dict[tuple[int, str, str], object]) -> None:
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    engines = ("pyopenssl", "stdlib")
    for depth in (1, 2):
        ce, se = engines[(i + depth) % 2], engines[i % 2]
        sctx = contexts[(depth, "server", se)]
        cctx = contexts[(depth, "client", ce)]
        fs = pair.server.start_tls(sctx, server_side=True)
        fc = pair.client.start_tls(cctx, server_hostname=ca.hostname(depth))
        await asyncio.gather(fc, fs)
    payload = os.urandom(4096)
    digest = hashlib.sha256(payload).digest()
    pair.client.write(payload + digest)
    await wait(server, lambda: len(server.data) == len(payload) + 32)
    assert hashlib.sha256(server.data[:-32]).digest() == bytes(server.data[-32:])
    server.eof_answer = True
    await pair.stop_tls()
    await pair.stop_tls()
    assert not pair.client.layers and not pair.server.layers
    server.eof_answer = False
    pair.client.close()
    await wait(client, lambda: bool(client.lost) and bool(server.lost))
    assert client.lost == [None] and server.lost == [None], (client.lost, server.lost)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def main(args: argparse.Namespace) -> int:
    ca = OnionCA()
    contexts: dict[tuple[int, str, str], object] = {}
    for depth in (1, 2):
        for engine in ("pyopenssl", "stdlib"):
            contexts[(depth, "server", engine)] = ca.server_context(depth, engine)  # type: ignore[arg-type]
            contexts[(depth, "client", engine)] = ca.client_context(engine)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    for i in range(args.warmup):
        await cycle(ca, i, contexts)
    gc.collect()
    tracemalloc.start(args.frames)
    before = tracemalloc.take_snapshot()
    heap0 = tracemalloc.get_traced_memory()[0]
    rss0 = rss()
    t1 = time.perf_counter()
    n = args.cycles - args.warmup
    for i in range(args.warmup, args.cycles):
        await cycle(ca, i, contexts)
        if args.progress and (i + 1) % 1000 == 0:
            print(
                f"  {i + 1} cycles, heap {tracemalloc.get_traced_memory()[0] - heap0:+,} B, "
                f"resident {(rss() - rss0) / 2**20:+.1f} MiB",
                flush=True,
            )
    t2 = time.perf_counter()
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.take_snapshot()
    heap1, peak = tracemalloc.get_traced_memory()
    rss1 = rss()
    tracemalloc.stop()
    growth = heap1 - heap0
    print(f"cycles run: {args.cycles} ({args.warmup} warm-up, {n} measured) in {t2 - t0:.1f} s")
    print(f"cycles/s (measured, tracemalloc on): {n / (t2 - t1):.0f}")
    print(
        f"python heap (tracemalloc) before {heap0:,} B, after {heap1:,} B, growth {growth:+,} B "
        f"({growth / n:+.1f} B/cycle), peak {peak:,} B"
    )
    print(
        f"resident size before {rss0 / 2**20:.1f} MiB, after {rss1 / 2**20:.1f} MiB "
        f"({(rss1 - rss0) / 2**20:+.1f} MiB)"
    )
    budget = args.budget * n
    if growth > budget:
        print(f"FAIL: the heap grew by more than {args.budget} B/cycle; largest growth:")
        for stat in after.compare_to(before, "traceback")[:10]:
            print(f"  {stat.size_diff:+,} B in {stat.count_diff:+} blocks")
            for line in stat.traceback.format(most_recent_first=True)[:8]:
                print("    " + line)
        return 1
    print(f"flat: growth within {args.budget} B/cycle")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--budget", type=float, default=32.0, help="bytes of growth per cycle")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--frames", type=int, default=1, help="traceback depth tracemalloc keeps")
    sys.exit(asyncio.run(main(parser.parse_args())))
