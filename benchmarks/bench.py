"""``python benchmarks/bench.py``: onion_tls against asyncio's own TLS, side by side.

What runs
---------

For each event loop (asyncio, and uvloop when it is installed) the driver
(this process) starts four worker processes: a server and a client for
onion_tls, and a server and a client for asyncio's own TLS
(``loop.create_connection(ssl=)`` / ``loop.create_server(ssl=)`` for the first
layer, nested ``loop.start_tls`` for the layers inside it).  Servers and
clients talk over 127.0.0.1.  Every cell of the table is measured for both
implementations one right after the other, and the rounds alternate which
one goes first, so both see the same machine load; the table shows the
median of the rounds and the ratio onion_tls / asyncio.

Cells, at every depth asked for:

* ``sink``: the client writes zeros (64 KiB or 1 KiB per ``write()``, with
  the transport's flow control) for ``--seconds``, then one last write ending
  in a 1 byte; the server's application counts nothing but answers ``K``
  when a chunk ends in that byte.  Rate: bytes written / time to the ``K``.
* ``echo``: the server's application writes back every byte it receives; the
  client keeps at most 1 MiB in flight.  Rate: bytes echoed / time.
* ``plain`` / ``buffered``: the receiving applications are an
  ``asyncio.Protocol`` or an ``asyncio.BufferedProtocol`` (256 KiB buffer).
* ``handshake``: connect and establish every layer, one connection at a
  time; the rate is connections per second of establishing (closing is not
  timed).

Every layer is TLS 1.3 with TLS_AES_256_GCM_SHA384 (the cipher each
connection negotiated is checked).  Before each nested layer the server sends
one byte ``R`` inside the layer just made, then starts the next layer; the
client waits for it before its ClientHello.  Both implementations do the
same, so neither races the other's ``start_tls``.

Memory: each worker reports its peak RSS; separately, fresh workers open
``--idle`` connections at depth 2 (plain application, no traffic) and report
the RSS they grew by, per connection, after a warm-up of 20 connections.

Everything is bounded: each cell runs for ``--seconds`` (plus the time to
drain), each request to a worker has a time limit, and a worker that misses
it is killed and its cell reported as failed.

The pieces live in :mod:`onion_bench` beside this script: the cells
(``cells.py``), what the workers run (``workloads.py``), the processes
(``harness.py``) and the table (``report.py``).  The bench is a development
tool, not part of the library: it uses only onion_tls's public API, so it
measures whichever onion_tls is importable (``nox -s bench`` installs the
checkout and uvloop).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import IO

from onion_bench.cells import IDLE_DEPTH, build_cells, parse_depths
from onion_bench.harness import LoopResult, Options, bench_loop, run_worker
from onion_bench.report import table
from onion_bench.workloads import write_certs

__all__ = ["DESCRIPTION", "add_arguments", "main", "run"]

DESCRIPTION = (
    "Measure onion_tls against asyncio's own TLS (create_connection(ssl=) + nested "
    "start_tls) side by side: throughput (sink, echo; 64 KiB and 1 KiB writes; "
    "Protocol and BufferedProtocol apps), handshakes/s, peak and idle memory, at "
    "depths 1-3, on asyncio and uvloop, server and client in separate processes."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python benchmarks/bench.py``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short round per cell and few idle connections (a smoke run)",
    )
    parser.add_argument(
        "--depths",
        type=parse_depths,
        default=[1, 2, 3],
        help="layer depths to measure, e.g. 1-3 or 1,3 (default 1-3)",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per cell (default 1, quick 0.2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)"
    )
    parser.add_argument(
        "--engine",
        choices=("pyopenssl", "stdlib"),
        default="pyopenssl",
        help="onion_tls TLS engine for every layer (default pyopenssl)",
    )
    parser.add_argument(
        "--loops",
        default=None,
        help="event loops, comma separated: asyncio,uvloop (default: both if uvloop is installed)",
    )
    parser.add_argument(
        "--idle",
        type=int,
        default=None,
        help="idle depth-2 connections for the memory figure (default 1000, quick 100; 0: skip)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only cells whose name matches (e.g. 'sink-64k-*', 'handshake'); repeatable",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="run the onion_tls workers under cProfile and write DIR/*.prof",
    )


def _options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    if args.loops:
        loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    else:
        loops = ["asyncio"]
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            loops.append("uvloop")
    for name in loops:
        if name not in ("asyncio", "uvloop"):
            raise SystemExit(f"unknown loop {name!r}: use asyncio or uvloop")
    seconds = args.seconds if args.seconds is not None else (0.2 if quick else 1.0)
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    idle = args.idle if args.idle is not None else (100 if quick else 1000)
    if seconds <= 0 or rounds < 1 or idle < 0:
        raise SystemExit("--seconds must be > 0, --rounds >= 1, --idle >= 0")
    return Options(
        depths=list(args.depths),
        seconds=seconds,
        rounds=rounds,
        engine=args.engine,
        loops=loops,
        idle=idle,
        only=list(args.only),
        profile=args.profile,
        quick=quick,
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the benchmark the parsed ``args`` describe; print the table."""
    opts = _options(args)
    if "uvloop" in opts.loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise SystemExit("uvloop is not installed (pip install uvloop)") from None
    if opts.profile:
        Path(opts.profile).mkdir(parents=True, exist_ok=True)
    cells = build_cells(opts.depths, opts.only)
    results: dict[str, LoopResult] = {}
    with tempfile.TemporaryDirectory(prefix="onion-bench-") as tmp:
        certs = Path(tmp)
        write_certs(certs, max(max(opts.depths), IDLE_DEPTH))
        for loop in opts.loops:
            results[loop] = bench_loop(opts, certs, loop, cells)
    print(table(opts, cells, results), file=out or sys.stdout, flush=True)
    failed = any(r.errors for r in results.values())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        run_worker(json.loads(sys.argv[2]))
    sys.exit(main())
