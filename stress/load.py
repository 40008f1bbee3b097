"""Many concurrent nested-TLS connections on loopback.

    python stress/load.py --connections 1000

A server and N clients run in this process on 127.0.0.1.  Each client
connects and, STARTTLS style, pushes two layers (a line ``TLS`` answered by
``OK``, then start_tls on both ends), sends checksummed data inside both
layers and checks the checksummed answer, then waits until every client is
that far: all N connections are then open at once, two layers deep.  Then
each pops both layers (the server answers each close_notify with stop_tls
from eof_received), exchanges checksummed data in plaintext, and closes.

Bounded in time (``--time-limit``) and stops by itself.  Prints connections
per second, the number held at once, failures (must be 0) and the peak
resident memory; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import resource
import sys
import time

import onion_tls
from onion_tls.testing import OnionCA


class Stream(asyncio.Protocol):
    """Either end: a byte buffer with awaitable reads."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof = False
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _more(self) -> None:
        if self.lost.done() or self.eof:
            raise ConnectionError(
                f"connection ended: {self.lost.result() if self.lost.done() else 'EOF'}"
            )
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    async def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            await self._more()
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        return line

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload + hashlib.sha256(payload).digest()


async def read_frame(s: Stream) -> bytes:
    n = int.from_bytes(await s.read_exactly(4), "big")
    payload = await s.read_exactly(n)
    if hashlib.sha256(payload).digest() != await s.read_exactly(32):
        raise AssertionError("checksum mismatch")
    return payload


class Server(Stream):
    """TLS -> OK + push a layer; a frame -> a frame back; the client's
    close_notify -> stop_tls; plaintext EOF -> close."""

    def __init__(self, load: Load) -> None:
        super().__init__()
        self.load = load
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.task = asyncio.get_running_loop().create_task(self.serve())
        self.load.server_tasks.add(self.task)
        self.task.add_done_callback(self.load.server_tasks.discard)

    def eof_received(self) -> bool:
        if self.transport.layers:
            self.transport.stop_tls()  # answer the close_notify: pop, keep going
            return True
        return super().eof_received()

    async def serve(self) -> None:
        t = self.transport
        try:
            while True:
                line = await self.read_line()
                if line == b"TLS":
                    depth = len(t.layers) + 1
                    t.write(b"OK\n")
                    t.start_tls(self.load.server_ctx[depth], server_side=True)
                elif line == b"DATA":
                    payload = await read_frame(self)
                    t.write(frame(hashlib.sha512(payload).digest() + payload[::-1]))
                else:
                    raise AssertionError(f"unexpected line {line!r}")
        except ConnectionError:
            pass  # the client is done
        except Exception:
            self.load.server_errors += 1
            t.abort()
            raise


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ca = OnionCA()
        engines = ("pyopenssl", "stdlib")
        self.server_ctx = {d: self.ca.server_context(d, engines[d % 2]) for d in (1, 2)}  # type: ignore[arg-type]
        self.client_ctx = {d: self.ca.client_context(engines[(d + 1) % 2]) for d in (1, 2)}  # type: ignore[arg-type]
        self.server_tasks: set[asyncio.Task[None]] = set()
        self.server_errors = 0
        self.open_now = 0
        self.peak_open = 0
        self.held = 0
        self.all_held = asyncio.Event()
        self.failures: list[str] = []
        self.done = 0
        self.bytes_checked = 0

    async def client(self, i: int, port: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(i)
        async with gate:
            _, onion = await loop.create_connection(onion_tls.wrap(Stream), "127.0.0.1", port)
        s: Stream = onion.transport.get_protocol()  # type: ignore[assignment]
        t = s.transport
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            for depth in (1, 2):
                t.write(b"TLS\n")
                if await s.read_line() != b"OK":
                    raise AssertionError("no OK")
                layer = await t.start_tls(
                    self.client_ctx[depth], server_hostname=self.ca.hostname(depth)
                )
                assert layer.depth == depth
            await self.exchange(s, rng)
            assert len(t.layers) == 2
            self.held += 1
            if self.held == self.args.connections:
                self.all_held.set()
            await self.all_held.wait()  # every connection is open, two layers deep
            for _ in (2, 1):
                await t.stop_tls()
            assert not t.layers
            await self.exchange(s, rng)
            t.close()
            exc = await s.lost
            if exc is not None:
                raise exc
            self.done += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            self.failures.append(f"client {i}: {exc!r}")
            t.abort()
            self.held += 1  # do not keep the others waiting
            if self.held >= self.args.connections:
                self.all_held.set()
        finally:
            self.open_now -= 1

    async def exchange(self, s: Stream, rng: random.Random) -> None:
        payload = rng.randbytes(rng.randint(1, self.args.max_data))
        s.transport.write(b"DATA\n" + frame(payload))
        answer = await read_frame(s)
        if answer != hashlib.sha512(payload).digest() + payload[::-1]:
            raise AssertionError("wrong answer")
        self.bytes_checked += len(payload) + len(answer)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            onion_tls.wrap(lambda: Server(self)), "127.0.0.1", 0, backlog=4096
        )
        port = server.sockets[0].getsockname()[1]
        gate = asyncio.Semaphore(self.args.connecting)
        n = self.args.connections
        t0 = time.perf_counter()
        clients = [loop.create_task(self.client(i, port, gate)) for i in range(n)]
        timed_out = False
        try:
            async with asyncio.timeout(self.args.time_limit):
                await asyncio.gather(*clients)
        except TimeoutError:
            timed_out = True
        elapsed = time.perf_counter() - t0
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        server.close()
        await server.wait_closed()
        if self.server_tasks:
            await asyncio.wait(set(self.server_tasks), timeout=5)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        failures = len(self.failures) + self.server_errors + (n - self.done if timed_out else 0)
        print(f"connections: {n}, each 2 layers deep (4 handshakes), {self.done} completed")
        print(
            f"held open at once: {self.peak_open} (all {self.held} reached 2 layers before any pop)"
        )
        print(
            f"time: {elapsed:.1f} s, {self.done / elapsed:.0f} connections/s, "
            f"{4 * self.done / elapsed:.0f} handshakes/s (both ends in this process)"
        )
        print(f"checksummed bytes verified: {self.bytes_checked:,}")
        print(f"failures: {failures}" + (" (time limit reached)" if timed_out else ""))
        for f in self.failures[:10]:
            print("  " + f)
        print(f"peak resident memory: {peak_kib / 1024:.0f} MiB")
        return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--connecting", type=int, default=100, help="connects in flight")
    parser.add_argument("--max-data", type=int, default=16_384)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * args.connections + 100))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < 2 * args.connections + 100:
        print(f"only {want} file descriptors allowed; fewer connections will fit")

    async def go() -> int:
        return await Load(args).run()

    return asyncio.run(go())


if __name__ == "__main__":
    sys.exit(main())
