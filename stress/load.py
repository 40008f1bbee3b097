"""Many concurrent nested-TLS connections on loopback, memory measured.

    python stress/load.py --connections 10000 --loop uvloop

The N clients run in this process (the measured one); the server runs in a
worker process that this script spawns (the same file with ``--serve``),
which reports its resident memory and its failures back over a pipe.  With
both ends in one process 10,000 connections would need 20,000 file
descriptors, the usual hard limit; each side raises its soft
``RLIMIT_NOFILE`` to the hard limit.

Each client connects and, STARTTLS style, pushes two layers (a line ``TLS``
answered by ``OK``, then start_tls on both ends), sends checksummed data
inside both layers and checks the checksummed answer, then waits until every
client is that far: all N connections are then open at once, two layers
deep, and idle.  At that moment both processes measure their resident size
(and, with ``--tracemalloc``, where the memory went).  Then each client pops
both layers (the server answers each close_notify with stop_tls from
eof_received), exchanges checksummed data in plaintext, and closes.

``--impl asyncio`` runs the same exchange on asyncio's own TLS as a
baseline: layer 1 from ``create_connection(ssl=)``, layer 2 from
``loop.start_tls`` over it; asyncio cannot pop a layer, so those clients
close at depth 2 (no pops, no plaintext exchange).

At most ``--connecting`` connections are being set up (connect, both
handshakes, the first exchange) or torn down (pops, exchange, close) at
once, so a connect storm neither overflows the listen backlog nor pushes
handshakes past their timeout.  Bounded in time (``--time-limit``) and stops
by itself.  Prints connections per second, the number held at once,
failures (must be 0; the first few reasons), the peak resident memory of
each process and its resident memory per connection while all N are idle at
depth 2; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import hashlib
import json
import os
import random
import resource
import ssl
import sys
import time
import tracemalloc
from typing import Any

import trustme

import onion_tls
from onion_tls.testing import OnionCA

HOST = "127.0.0.1"
SERVE_FLAGS = ("impl", "engines", "loop", "ports", "backlog", "max_data", "tracemalloc")


# -- measuring a process --------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc_mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_mallinfo2 = _libc_mallinfo2()


def libc_in_use() -> int:
    """Bytes handed out by the C allocator (OpenSSL's objects and buffers,
    and Python's blocks over 512 bytes), or -1 if glibc's mallinfo2 is
    missing."""
    if _mallinfo2 is None:
        return -1
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


def sample() -> dict[str, int]:
    s = proc_status()
    s["libc"] = libc_in_use()
    s["traced"] = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else -1
    return s


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def heap_report(who: str, snapshot: tracemalloc.Snapshot, n: int, out: Any) -> None:
    """Top 15 of the Python heap by traceback, and by file."""
    snapshot = snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        ]
    )
    stats = snapshot.statistics("traceback")
    total = sum(st.size for st in stats)
    print(
        f"\n== {who}: Python heap with all {n} idle at depth 2: {total / 2**20:.1f} MiB"
        f" ({total / max(n, 1) / 1024:.1f} KiB per connection); top 15 by traceback",
        file=out,
    )
    for st in stats[:15]:
        print(
            f"-- {st.size / 2**20:7.2f} MiB, {st.count:8d} blocks,"
            f" {st.size / max(n, 1):7.0f} B/conn, {st.count / max(n, 1):5.1f} blocks/conn",
            file=out,
        )
        for line in st.traceback.format(limit=8, most_recent_first=True):
            print("     " + line, file=out)
    print(f"\n== {who}: top 15 by file", file=out)
    for st in snapshot.statistics("filename")[:15]:
        frame = st.traceback[0]
        print(
            f"   {st.size / max(n, 1):8.0f} B/conn {st.count / max(n, 1):6.1f} blocks/conn"
            f"  {frame.filename}",
            file=out,
        )
    out.flush()


# -- the protocol both ends use ---------------------------------------------------


class Stream(asyncio.Protocol):
    """Either end: a byte buffer with awaitable reads."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.eof = False
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
        self.waiter = None

    async def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            await self._more()
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i])
        del self.buf[: i + 1]
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


def answer(payload: bytes) -> bytes:
    return hashlib.sha512(payload).digest() + payload[::-1]


def contexts(ca: OnionCA, args: argparse.Namespace, server: bool) -> dict[int, Any]:
    """The context of each depth.  ``mixed`` (onion_tls only) is the engines
    alternating as the test suite does: server stdlib at depth 1 and
    pyOpenSSL at depth 2, the clients the other way round."""
    out = {}
    for d in (1, 2):
        if args.impl == "asyncio" or args.engines == "stdlib":
            engine = "stdlib"
        elif args.engines == "pyopenssl":
            engine = "pyopenssl"
        else:
            engine = ("pyopenssl", "stdlib")[d % 2 if server else (d + 1) % 2]
        out[d] = ca.server_context(d, engine) if server else ca.client_context(engine)  # type: ignore[arg-type]
    return out


# -- the server worker ------------------------------------------------------------


class Server(Stream):
    """TLS -> OK + push a layer; a frame -> a frame back; the client's
    close_notify -> stop_tls; plaintext EOF -> close."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        w = self.worker
        w.open_now += 1
        w.accepted += 1
        w.peak_open = max(w.peak_open, w.open_now)
        task = asyncio.get_running_loop().create_task(self.serve())
        w.tasks.add(task)
        task.add_done_callback(w.tasks.discard)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.worker.open_now -= 1
        super().connection_lost(exc)

    def eof_received(self) -> bool:
        if self.worker.args.impl == "onion" and self.transport.layers:
            self.transport.stop_tls()  # answer the close_notify: pop, keep going
            return True
        return super().eof_received()

    async def serve(self) -> None:
        w = self.worker
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await self.read_line()
                if line == b"TLS":
                    self.transport.write(b"OK\n")
                    if w.args.impl == "onion":
                        depth = len(self.transport.layers) + 1
                        self.transport.start_tls(w.ctx[depth], server_side=True)
                    else:  # asyncio: layer 1 came from create_server(ssl=)
                        self.transport = await loop.start_tls(
                            self.transport, self, w.ctx[2], server_side=True
                        )
                elif line == b"DATA":  # (no local keeps the payload while idle)
                    self.transport.write(frame(answer(await read_frame(self))))
                else:
                    raise AssertionError(f"unexpected line {line!r}")
        except ConnectionError:
            exc = self.lost.result() if self.lost.done() else None
            if exc is not None:
                w.fail(f"connection lost with {exc!r}")
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            w.fail(repr(exc))
            self.transport.abort()


class Worker:
    def __init__(self, args: argparse.Namespace, ca: OnionCA) -> None:
        self.args = args
        self.ctx = contexts(ca, args, server=True)
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors = 0
        self.reasons: list[str] = []
        self.open_now = self.peak_open = self.accepted = 0

    def fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.reasons) < 5:
            self.reasons.append(reason)

    def reply(self, **kw: Any) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    async def run(self, commands: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        if self.args.impl == "onion":
            factory: Any = onion_tls.wrap(lambda: Server(self))
            ssl_kw: dict[str, Any] = {}
        else:
            factory = lambda: Server(self)  # noqa: E731
            ssl_kw = {"ssl": self.ctx[1]}
        servers = [
            await loop.create_server(factory, HOST, 0, backlog=self.args.backlog, **ssl_kw)
            for _ in range(self.args.ports)
        ]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        self.reply(ports=ports, pid=os.getpid())
        while line := await commands.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "sample":
                self.reply(sample=sample())
            elif cmd["cmd"] == "idle":
                now = sample()
                if tracemalloc.is_tracing():
                    heap_report("server", tracemalloc.take_snapshot(), cmd["n"], sys.stderr)
                self.reply(idle=now, open=self.open_now)
            elif cmd["cmd"] == "stop":
                break
        for s in servers:
            s.close()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=10)
        for task in self.tasks:
            task.cancel()
        self.reply(
            end=sample(),
            errors=self.errors,
            reasons=self.reasons,
            peak_open=self.peak_open,
            accepted=self.accepted,
            unfinished=len(self.tasks),
        )


async def serve_main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    hello = json.loads(await commands.readline())
    ca = OnionCA(trustme.CA.from_pem(hello["cert"].encode(), hello["key"].encode()))
    await Worker(args, ca).run(commands)
    return 0


# -- the clients (the measured process) --------------------------------------------


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ca = OnionCA()
        self.ctx = contexts(self.ca, args, server=False)
        self.open_now = 0
        self.peak_open = 0
        self.held = 0  # reached depth 2 (or failed before): the barrier's count
        self.at_depth2 = 0  # idle at depth 2 at the barrier
        self.all_idle = asyncio.Event()
        self.go = asyncio.Event()
        self.failures: list[str] = []
        self.n_failed = 0
        self.done = 0
        self.bytes_checked = 0

    def fail(self, i: int, exc: BaseException) -> None:
        self.n_failed += 1
        if len(self.failures) < 10:
            self.failures.append(f"client {i}: {exc!r}")

    def arrive(self) -> None:
        self.held += 1
        if self.held >= self.args.connections:
            self.all_idle.set()

    async def client(self, i: int, port: int, gate: asyncio.Semaphore) -> None:
        loop = asyncio.get_running_loop()
        onion = self.args.impl == "onion"
        s: Stream | None = None
        arrived = False
        try:
            async with gate:
                if onion:
                    _, proto = await loop.create_connection(onion_tls.wrap(Stream), HOST, port)
                    s = proto.transport.get_protocol()  # type: ignore[attr-defined]
                else:
                    _, s = await loop.create_connection(
                        Stream,
                        HOST,
                        port,
                        ssl=self.ctx[1],
                        server_hostname=self.ca.hostname(1),
                    )
                assert s is not None
                self.open_now += 1
                self.peak_open = max(self.peak_open, self.open_now)
                for depth in (1, 2) if onion else (2,):
                    s.transport.write(b"TLS\n")
                    if await s.read_line() != b"OK":
                        raise AssertionError("no OK")
                    if onion:
                        ctx, name = self.ctx[depth], self.ca.hostname(depth)
                        got = (await s.transport.start_tls(ctx, server_hostname=name)).depth
                        if got != depth:
                            raise AssertionError(f"layer of depth {got}, not {depth}")
                    else:
                        s.transport = await loop.start_tls(
                            s.transport, s, self.ctx[2], server_hostname=self.ca.hostname(2)
                        )
                await self.exchange(s, 2 * i)
                assert not onion or len(s.transport.layers) == 2
            self.at_depth2 += 1
            arrived = True
            if i >= 0:  # not the warm-up
                self.arrive()
                await self.go.wait()  # every connection is open, two layers deep
            async with gate:
                if onion:
                    for _ in (2, 1):
                        await s.transport.stop_tls()
                    assert not s.transport.layers
                    await self.exchange(s, 2 * i + 1)
                s.transport.close()
                exc = await s.lost
                if exc is not None:
                    raise exc
            self.done += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            self.fail(i, exc)
            if s is not None and s.transport is not None:
                s.transport.abort()
            if not arrived and i >= 0:
                self.arrive()  # do not keep the others waiting
        finally:
            if s is not None:
                self.open_now -= 1

    async def exchange(self, s: Stream, seed: int) -> None:
        """Checksummed data both ways; ``seed`` makes the payload (a random
        size up to --max-data), so nothing of it is kept while idle."""
        rng = random.Random(seed)
        payload = rng.randbytes(rng.randint(1, self.args.max_data))
        del rng
        s.transport.write(b"DATA\n" + frame(payload))
        if await read_frame(s) != answer(payload):
            raise AssertionError("wrong answer")
        self.bytes_checked += 2 * len(payload) + 64

    async def run(self) -> int:
        args = self.args
        n = args.connections
        loop = asyncio.get_running_loop()
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in SERVE_FLAGS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**20,
        )
        assert worker.stdin is not None and worker.stdout is not None

        async def ask(**cmd: Any) -> dict[str, Any]:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write((json.dumps(cmd) + "\n").encode())
            await worker.stdin.drain()
            line = await worker.stdout.readline()
            if not line:
                raise RuntimeError("the server worker died")
            return json.loads(line)  # type: ignore[no-any-return]

        ca_key = self.ca.ca.private_key_pem.bytes().decode()
        ready = await ask(cert=self.ca.cert_pem.decode(), key=ca_key)
        ports = ready["ports"]
        # Warm up this side (first connection, first handshakes, imports) so
        # that "before" is the process ready to serve, not still loading.
        await self.warm_up(ports[0])
        c_before = sample()
        s_before = (await ask(cmd="sample"))["sample"]

        gate = asyncio.Semaphore(args.connecting)
        t0 = time.perf_counter()
        clients = [loop.create_task(self.client(i, ports[i % len(ports)], gate)) for i in range(n)]
        timed_out = False
        c_idle: dict[str, int] = {}
        s_idle: dict[str, Any] = {}
        t_idle = t0
        try:
            async with asyncio.timeout(args.time_limit):
                await self.all_idle.wait()
                t_idle = time.perf_counter()
                # Idle for real: layers quiet for a while give back the
                # memory their bursts left behind (onion_tls._idle).
                await asyncio.sleep(args.settle)
                c_idle = sample()
                if tracemalloc.is_tracing():
                    heap_report("client", tracemalloc.take_snapshot(), self.at_depth2, sys.stdout)
                s_idle = await ask(cmd="idle", n=self.at_depth2)
                self.go.set()
                await asyncio.gather(*clients)
        except TimeoutError:
            timed_out = True
        elapsed = time.perf_counter() - t0
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        end = await ask(cmd="stop")
        await worker.wait()
        c_end = sample()

        failures = self.n_failed + end["errors"] + (n - self.done if timed_out else 0)
        depth2 = self.at_depth2
        pops = "pushed, popped and closed" if args.impl == "onion" else "pushed and closed"
        print(
            f"impl {args.impl} (engines {args.engines if args.impl == 'onion' else 'stdlib'}), "
            f"loop {args.loop}, onion_tls from {os.path.dirname(onion_tls.__file__)}"
        )
        print(f"connections: {n}, each 2 layers deep {pops}, {self.done} completed")
        print(
            f"held open at once: client {self.peak_open}, server {end['peak_open']};"
            f" {depth2} idle at depth 2 together"
        )
        print(
            f"time: {elapsed:.1f} s, {self.done / elapsed:.0f} connections/s for the whole cycle"
            f" ({4 * self.done / elapsed:.0f} handshakes/s over both processes);"
            f" set-up to all idle {t_idle - t0:.1f} s, tear-down {t0 + elapsed - t_idle:.1f} s"
        )
        print(f"checksummed bytes verified: {self.bytes_checked:,}")
        print(f"failures: {failures}" + (" (time limit reached)" if timed_out else ""))
        for f in self.failures[:5]:
            print("  " + f)
        for f in end["reasons"]:
            print("  server: " + f)
        if end["unfinished"]:
            print(f"  server: {end['unfinished']} connections still open at the end")
        for who, before, idle, last in (
            ("client", c_before, c_idle, c_end),
            ("server", s_before, s_idle.get("idle", {}), end["end"]),
        ):
            line = f"{who}: peak RSS {last['VmHWM'] / 2**20:.0f} MiB"
            if idle and depth2:
                per = (idle["VmRSS"] - before["VmRSS"]) / depth2 / 1024
                line += (
                    f"; RSS {before['VmRSS'] / 2**20:.0f} MiB before connecting,"
                    f" {idle['VmRSS'] / 2**20:.0f} MiB with all idle at depth 2:"
                    f" {per:.1f} KiB per connection"
                )
                if idle["libc"] >= 0:
                    libc = (idle["libc"] - before["libc"]) / depth2 / 1024
                    line += f" (C heap {libc:.1f} KiB"
                    if idle["traced"] >= 0:
                        py = (idle["traced"] - before["traced"]) / depth2 / 1024
                        line += f", Python heap {py:.1f} KiB"
                    line += ")"
            print(line)
        if tracemalloc.is_tracing():
            print("(tracemalloc on: the RSS figures include its own bookkeeping)")
        return 1 if failures else 0

    async def warm_up(self, port: int) -> None:
        """One full cycle before measuring (imports, first handshakes, caches
        on both sides); it counts for failures only."""
        await self.client(-1, port, asyncio.Semaphore(1))
        self.done = self.at_depth2 = self.held = self.bytes_checked = self.peak_open = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument(
        "--connecting",
        type=int,
        default=100,
        help="connections being set up (or torn down) at once",
    )
    parser.add_argument("--max-data", type=int, default=16_384)
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds all N stay idle at depth 2 before memory is sampled",
    )
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--impl",
        choices=("onion", "asyncio"),
        default="onion",
        help="onion_tls, or asyncio's own TLS as a baseline",
    )
    parser.add_argument(
        "--engines",
        choices=("mixed", "stdlib", "pyopenssl"),
        default="mixed",
        help="onion_tls's engines (mixed: alternating per depth)",
    )
    parser.add_argument("--ports", type=int, default=1, help="listening ports")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace the Python heap in both processes (this many frames) and show"
        " where it is with all connections idle at depth 2",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    hard = raise_nofile()
    need = args.connections + 100
    if hard < need:
        print(f"only {hard} file descriptors allowed per process; fewer connections will fit")
    if args.tracemalloc:
        tracemalloc.start(args.tracemalloc)
    ssl.SSLContext  # noqa: B018 - loaded before measuring

    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    async def go() -> int:
        if args.serve:
            return await serve_main(args)
        return await Load(args).run()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(go())


if __name__ == "__main__":
    sys.exit(main())
