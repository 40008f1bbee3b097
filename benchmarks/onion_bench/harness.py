"""The processes: the worker side (a server or a client of one
implementation, commands on stdin, JSON lines on stdout) and the driver side
(starting a server and a client per implementation, sending them the cells
round after round, interleaved, timing them out, collecting the results).

Workers run ``benchmarks/bench.py --worker SPEC`` with the same interpreter
and the same onion_tls as the driver.  A worker imports only its own stack:
a Twisted, trio or ``ssl.SSLSocket`` worker does not load onion_tls.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .cells import IDLE_DEPTH, Cell, Impl
from .common import ClientSide, ServerSide, peak_rss, rss

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Options", "Results", "WorkerError", "bench", "run_worker"]

_SCRIPT = Path(__file__).resolve().parent.parent / "bench.py"
_IDLE_WARMUP = 20


def _raise_fd_limit() -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


_emit_lock = threading.Lock()


def _emit(obj: dict[str, Any]) -> None:
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


# -- the worker side -----------------------------------------------------------------


def _sides(kind: str) -> tuple[Callable[[dict[str, Any]], ServerSide], Callable[..., ClientSide]]:
    """The server and client classes of one implementation (imported here,
    so a worker loads only its own stack)."""
    if kind in ("onion_tls", "asyncio"):
        from .workloads import AsyncioClient, AsyncioServer

        return AsyncioServer, AsyncioClient
    if kind == "twisted":
        from .peer_twisted import TwistedClient, TwistedServer

        return TwistedServer, TwistedClient
    if kind == "trio":
        from .peer_trio import TrioClient, TrioServer

        return TrioServer, TrioClient
    if kind == "sslsocket":
        from .peer_sslsocket import SocketClient, SocketServer

        return SocketServer, SocketClient
    raise ValueError(f"unknown implementation {kind!r}")


def run_worker(spec: dict[str, Any]) -> None:
    """A server or client process; commands on stdin, JSON lines on stdout.

    A server serves in the main thread; a second thread reads the driver's
    commands (CPU time and RSS are process-wide) and stops it on ``quit``.
    A client runs each command in the main thread."""
    _raise_fd_limit()
    server_cls, client_cls = _sides(spec["impl"])
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if spec["role"] == "server":
        server = server_cls(spec)

        def ready(ports: dict[str, int]) -> None:
            _emit({"ports": ports})
            threading.Thread(target=_control, args=(server,), daemon=True).start()

        server.run(spec["listeners"], ready)
    else:
        _client_main(client_cls(spec))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(spec["profile"])
    _emit({"peak_rss": peak_rss()})
    # Whatever connections are left die with the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _control(server: ServerSide) -> None:
    for line in sys.stdin:
        cmd = json.loads(line).get("cmd")
        if cmd == "quit":
            break
        if cmd == "cpu":
            _emit({"cpu": time.process_time()})
            continue
        gc.collect()
        _emit({"rss": rss()})
    server.stop()


def _client_main(client: ClientSide) -> None:
    _emit({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            result = client.request(cmd)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result = {"error": f"{type(exc).__name__}: {exc}"}
        _emit(result)


# -- the driver's view of a worker ---------------------------------------------------


class WorkerError(Exception):
    pass


class _Worker:
    """A worker process seen from the driver."""

    def __init__(self, spec: dict[str, Any], label: str, env: dict[str, str]) -> None:
        self.spec = spec
        self.label = f"{label} {spec['role']}"
        self.proc = subprocess.Popen(
            [sys.executable, str(_SCRIPT), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"{self.label}: no answer within {timeout:g} s") from None
        if line is None:
            raise WorkerError(f"{self.label}: exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerError(f"{self.label}: {exc}") from None
        return self.receive(timeout)

    def stop(self) -> int | None:
        """Ask the worker to quit; return its peak RSS if it says."""
        peak = None
        try:
            answer = self.request({"cmd": "quit"}, 30.0)
            peak = answer.get("peak_rss")
        except WorkerError:
            pass
        self.kill()
        return peak

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class _Pair:
    """The server and client workers of one implementation."""

    def __init__(self, server: _Worker, client: _Worker, ports: dict[str, int]) -> None:
        self.server, self.client, self.ports = server, client, ports

    def kill(self) -> None:
        self.client.kill()
        self.server.kill()

    def stop(self) -> tuple[int | None, int | None]:
        """Peak RSS of (server, client)."""
        client = self.client.stop()
        return self.server.stop(), client


# -- the driver ------------------------------------------------------------------


@dataclass
class Options:
    """What the command line asked for, defaults filled in."""

    depths: list[int]
    seconds: float
    rounds: int
    engine: str
    impls: list[Impl]
    idle: int
    only: list[str]
    profile: str | None
    quick: bool
    notes: list[str] = field(default_factory=list)  # peers skipped, and why


@dataclass
class Results:
    """Everything measured, keyed by (cell, implementation name)."""

    values: dict[tuple[Cell, str], list[float]] = field(default_factory=dict)
    # CPU (client + server) per unit of work
    costs: dict[tuple[Cell, str], list[float]] = field(default_factory=dict)
    errors: dict[tuple[Cell, str], str] = field(default_factory=dict)
    ciphers: set[str] = field(default_factory=set)
    peak: dict[tuple[str, str], int | None] = field(default_factory=dict)  # (impl, role)
    idle: dict[tuple[str, str], float | str] = field(default_factory=dict)  # bytes/conn or error


def _worker_env() -> dict[str, str]:
    """The driver's environment, with the driver's onion_tls first on the
    path (the checkout or the installed copy, whichever it imported) and
    without the debug switches that would slow the workers down."""
    import onion_tls

    env = dict(os.environ)
    root = str(Path(onion_tls.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONTRACEMALLOC"):
        env.pop(name, None)
    return env


def _start(opts: Options, certs: Path, impl: Impl, listeners: list[str], tag: str) -> _Pair:
    env = _worker_env()
    base = {
        "impl": impl.kind,
        "loop": impl.loop,
        "engine": opts.engine,
        "certs": str(certs),
        "depths": max(max(opts.depths), IDLE_DEPTH),
        "listeners": listeners,
    }
    specs = []
    for role in ("server", "client"):
        spec = dict(base, role=role)
        if opts.profile and impl.is_onion:
            spec["profile"] = str(Path(opts.profile) / f"{tag}-{role}-{impl.loop}.prof")
        specs.append(spec)
    server = _Worker(specs[0], impl.name, env)
    try:
        ports = server.receive(60.0)["ports"]
        client = _Worker(specs[1], impl.name, env)
        try:
            client.receive(60.0)
        except WorkerError:
            client.kill()
            raise
    except WorkerError:
        server.kill()
        raise
    return _Pair(server, client, ports)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _measure(pair: _Pair, cell: Cell, opts: Options, limit: float) -> tuple[dict[str, Any], float]:
    """One cell on one implementation: the client's answer and the server's
    CPU time meanwhile.  Raises WorkerError when a worker fails to answer."""
    cmd = {
        "cmd": "run",
        "cell": cell.__dict__,
        "port": pair.ports[cell.listener],
        "seconds": opts.seconds,
    }
    before = pair.server.request({"cmd": "cpu"}, limit)["cpu"]
    answer = pair.client.request(cmd, limit)
    server_cpu = pair.server.request({"cmd": "cpu"}, limit)["cpu"] - before
    return answer, server_cpu


def bench(opts: Options, certs: Path, cells: list[Cell]) -> Results:
    """Every cell on every implementation that runs it, round after round;
    within a round each cell runs on every implementation one right after
    the other, starting with a different one each time."""
    res = Results()
    impls = [impl for impl in opts.impls if any(impl.runs(c) for c in cells)]
    listeners = {impl.name: sorted({c.listener for c in cells if impl.runs(c)}) for impl in impls}
    pairs: dict[str, _Pair] = {}
    dead: dict[str, str] = {}  # implementations whose workers could not start
    limit = 60.0 + 5 * opts.seconds

    def start(impl: Impl) -> None:
        try:
            pairs[impl.name] = _start(opts, certs, impl, listeners[impl.name], "throughput")
        except WorkerError as exc:
            dead[impl.name] = f"workers did not start: {exc}"

    try:
        for impl in impls:
            start(impl)
        for rnd in range(opts.rounds):
            for i, cell in enumerate(cells):
                runs = [impl for impl in impls if impl.runs(cell)]
                if not runs:
                    continue
                k = (rnd + i) % len(runs)
                shown = []
                for impl in runs[k:] + runs[:k]:
                    key = (cell, impl.name)
                    if key in res.errors:
                        continue
                    pair = pairs.get(impl.name)
                    if pair is None:
                        res.errors[key] = dead.get(impl.name, "no workers")
                        continue
                    try:
                        answer, server_cpu = _measure(pair, cell, opts, limit)
                    except WorkerError as exc:
                        answer, server_cpu = {"error": str(exc)}, 0.0
                        pair.kill()
                        del pairs[impl.name]
                        start(impl)
                    if "error" in answer:
                        res.errors[key] = answer["error"]
                        shown.append(f"{impl.name} failed: {answer['error']}")
                        continue
                    res.values.setdefault(key, []).append(answer["value"])
                    res.ciphers.add(answer["cipher"])
                    scale = cell.cost_scale / answer["work"]
                    cost = (answer["cpu"] + server_cpu) * scale
                    res.costs.setdefault(key, []).append(cost)
                    shown.append(
                        f"{impl.name} {answer['value']:.1f} ({cost:.2f} {cell.cost_unit}: client "
                        f"{answer['cpu'] * scale:.2f} + server {server_cpu * scale:.2f})"
                    )
                _progress(
                    f"[{rnd + 1}/{opts.rounds}] {cell.name} depth {cell.depth} "
                    f"({cell.unit}): " + ", ".join(shown)
                )
    finally:
        for name, pair in pairs.items():
            res.peak[(name, "server")], res.peak[(name, "client")] = pair.stop()
    if opts.idle > 0:
        for impl in opts.impls:
            if impl.has_idle:
                _idle_memory(opts, certs, impl, res)
    return res


def _idle_memory(opts: Options, certs: Path, impl: Impl, res: Results) -> None:
    listener = f"idle/plain/{IDLE_DEPTH}"
    try:
        pair = _start(opts, certs, impl, [listener], "idle")
    except WorkerError as exc:
        res.idle[(impl.name, "client")] = res.idle[(impl.name, "server")] = str(exc)
        return
    server, client, port = pair.server, pair.client, pair.ports[listener]
    limit = 120.0 + opts.idle / 20
    try:
        client.request({"cmd": "idle_open", "port": port, "count": _IDLE_WARMUP}, limit)
        base_c = client.request({"cmd": "rss"}, limit)["rss"]
        base_s = server.request({"cmd": "rss"}, limit)["rss"]
        answer = client.request({"cmd": "idle_open", "port": port, "count": opts.idle}, limit)
        if "error" in answer:
            raise WorkerError(answer["error"])
        time.sleep(0.3)
        top_s = server.request({"cmd": "rss"}, limit)["rss"]
        per_client = (answer["rss"] - base_c) / opts.idle
        per_server = (top_s - base_s) / opts.idle
        res.idle[(impl.name, "client")] = per_client
        res.idle[(impl.name, "server")] = per_server
        client.request({"cmd": "idle_close"}, limit)
        _progress(
            f"idle depth-{IDLE_DEPTH} x{opts.idle} {impl.name}: "
            f"client {per_client / 1024:.1f} KiB/conn, server {per_server / 1024:.1f} KiB/conn"
        )
    except (WorkerError, KeyError) as exc:
        for role in ("client", "server"):
            res.idle.setdefault((impl.name, role), str(exc))
    finally:
        pair.stop()
