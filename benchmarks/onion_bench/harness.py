"""The processes: the worker side (a server or a client, commands on stdin,
JSON lines on stdout) and the driver side (starting workers, sending them
the cells round after round, timing them out, collecting the results).

Workers run ``benchmarks/bench.py --worker SPEC`` with the same interpreter
and the same onion_tls as the driver.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import onion_tls

from .cells import IDLE_DEPTH, IMPLS, Cell
from .workloads import MEASURE, Kit, idle_close, idle_open, peak_rss, rss

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["LoopResult", "Options", "WorkerError", "bench_loop", "run_worker"]

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


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop  # optional: only when installed

        return cast("Callable[[], asyncio.AbstractEventLoop]", uvloop.new_event_loop)
    return asyncio.new_event_loop


def run_worker(spec: dict[str, Any]) -> None:
    """A server or client process; commands on stdin, JSON lines on stdout."""
    _raise_fd_limit()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    kit_args = (spec["impl"], spec["engine"], Path(spec["certs"]), spec["depths"])
    with asyncio.Runner(loop_factory=_loop_factory(spec["loop"])) as runner:
        if spec["role"] == "server":
            runner.run(_server_main(Kit(*kit_args), spec["listeners"]))
        else:
            _client_main(runner, Kit(*kit_args))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(spec["profile"])
        _emit({"peak_rss": peak_rss()})
        # Whatever connections are left die with the process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _server_main(kit: Kit, listeners: list[str]) -> None:
    loop = asyncio.get_running_loop()
    servers = {name: await kit.serve(name) for name in listeners}
    ports = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"ports": ports})
    while True:
        line = await reader.readline()
        cmd = json.loads(line).get("cmd") if line else "quit"
        if cmd == "quit":
            break
        if cmd == "cpu":
            _emit({"cpu": time.process_time()})
            continue
        gc.collect()
        _emit({"rss": rss()})
    for server in servers.values():
        server.close()


def _client_main(runner: asyncio.Runner, kit: Kit) -> None:
    _emit({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        what = cmd["cmd"]
        if what == "quit":
            break
        try:
            if what == "run":
                cell = Cell(**cmd["cell"])
                coro = MEASURE[cell.kind](kit, cmd["port"], cell, cmd["seconds"])
            elif what == "idle_open":
                coro = idle_open(kit, cmd["port"], cmd["count"])
            elif what == "idle_close":
                coro = idle_close(kit)
            else:
                coro = _rss_now()
            result = runner.run(coro)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            result = {"error": f"{type(exc).__name__}: {exc}"}
        _emit(result)


async def _rss_now() -> dict[str, Any]:
    gc.collect()
    return {"rss": rss()}


class WorkerError(Exception):
    pass


class _Worker:
    """A worker process seen from the driver."""

    def __init__(self, spec: dict[str, Any], env: dict[str, str]) -> None:
        self.spec = spec
        self.label = f"{spec['impl']} {spec['role']} ({spec['loop']})"
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


# -- the driver ------------------------------------------------------------------


@dataclass
class Options:
    """What the command line asked for, defaults filled in."""

    depths: list[int]
    seconds: float
    rounds: int
    engine: str
    loops: list[str]
    idle: int
    only: list[str]
    profile: str | None
    quick: bool


@dataclass
class LoopResult:
    """Everything measured on one event loop, keyed by (cell, implementation)."""

    values: dict[tuple[Cell, str], list[float]]
    costs: dict[tuple[Cell, str], list[float]]  # CPU (client + server) per unit of work
    errors: dict[tuple[Cell, str], str]
    ciphers: set[str]
    peak: dict[tuple[str, str], int | None]  # (impl, role)
    idle: dict[tuple[str, str], float | str]  # (impl, role) -> bytes/conn or error


def _worker_env() -> dict[str, str]:
    """The driver's environment, with the driver's onion_tls first on the
    path (the checkout or the installed copy, whichever it imported) and
    without the debug switches that would slow the workers down."""
    env = dict(os.environ)
    root = str(Path(onion_tls.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONTRACEMALLOC"):
        env.pop(name, None)
    return env


def _start(
    opts: Options, certs: Path, impl: str, loop: str, listeners: list[str], tag: str
) -> tuple[_Worker, _Worker, dict[str, int]]:
    env = _worker_env()
    base = {
        "impl": impl,
        "loop": loop,
        "engine": opts.engine,
        "certs": str(certs),
        "depths": max(max(opts.depths), IDLE_DEPTH),
    }
    specs = []
    for role in ("server", "client"):
        spec = dict(base, role=role, listeners=listeners)
        if opts.profile and impl == "onion_tls":
            spec["profile"] = str(Path(opts.profile) / f"{tag}-{role}-{loop}.prof")
        specs.append(spec)
    server = _Worker(specs[0], env)
    try:
        ports = server.receive(60.0)["ports"]
        client = _Worker(specs[1], env)
        client.receive(60.0)
    except WorkerError:
        server.kill()
        raise
    return server, client, ports


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def bench_loop(opts: Options, certs: Path, loop: str, cells: list[Cell]) -> LoopResult:
    listeners = sorted({c.listener for c in cells})
    res = LoopResult({}, {}, {}, set(), {}, {})
    workers: dict[str, tuple[_Worker, _Worker, dict[str, int]]] = {}
    limit = 60.0 + 5 * opts.seconds
    try:
        if cells:
            for impl in IMPLS:
                workers[impl] = _start(opts, certs, impl, loop, listeners, "throughput")
        for rnd in range(opts.rounds):
            for i, cell in enumerate(cells):
                order = IMPLS if (rnd + i) % 2 == 0 else IMPLS[::-1]
                shown = []
                for impl in order:
                    key = (cell, impl)
                    if key in res.errors:
                        continue
                    server, client, ports = workers[impl]
                    cmd = {
                        "cmd": "run",
                        "cell": cell.__dict__,
                        "port": ports[cell.listener],
                        "seconds": opts.seconds,
                    }
                    try:
                        before = server.request({"cmd": "cpu"}, limit)["cpu"]
                        answer = client.request(cmd, limit)
                        server_cpu = server.request({"cmd": "cpu"}, limit)["cpu"] - before
                    except WorkerError as exc:
                        answer = {"error": str(exc)}
                        client.kill()
                        server.kill()
                        workers[impl] = _start(opts, certs, impl, loop, listeners, "throughput")
                    if "error" in answer:
                        res.errors[key] = answer["error"]
                        shown.append(f"{impl} failed: {answer['error']}")
                        continue
                    res.values.setdefault(key, []).append(answer["value"])
                    res.ciphers.add(answer["cipher"])
                    scale = cell.cost_scale / answer["work"]
                    cost = (answer["cpu"] + server_cpu) * scale
                    res.costs.setdefault(key, []).append(cost)
                    shown.append(
                        f"{impl} {answer['value']:.1f} ({cost:.2f} {cell.cost_unit}: client "
                        f"{answer['cpu'] * scale:.2f} + server {server_cpu * scale:.2f})"
                    )
                _progress(
                    f"[{loop} {rnd + 1}/{opts.rounds}] {cell.name} depth {cell.depth} "
                    f"({cell.unit}): " + ", ".join(shown)
                )
    finally:
        for impl, (server, client, _) in workers.items():
            res.peak[(impl, "client")] = client.stop()
            res.peak[(impl, "server")] = server.stop()
    if opts.idle > 0:
        for impl in IMPLS:
            _idle_memory(opts, certs, loop, impl, res)
    return res


def _idle_memory(opts: Options, certs: Path, loop: str, impl: str, res: LoopResult) -> None:
    listener = f"idle/plain/{IDLE_DEPTH}"
    try:
        server, client, ports = _start(opts, certs, impl, loop, [listener], "idle")
    except WorkerError as exc:
        res.idle[(impl, "client")] = res.idle[(impl, "server")] = str(exc)
        return
    port = ports[listener]
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
        res.idle[(impl, "client")] = per_client
        res.idle[(impl, "server")] = per_server
        client.request({"cmd": "idle_close"}, limit)
        _progress(
            f"[{loop}] idle depth-{IDLE_DEPTH} x{opts.idle} {impl}: "
            f"client {per_client / 1024:.1f} KiB/conn, server {per_server / 1024:.1f} KiB/conn"
        )
    except (WorkerError, KeyError) as exc:
        for role in ("client", "server"):
            res.idle.setdefault((impl, role), str(exc))
    finally:
        client.stop()
        server.stop()
