"""``python benchmarks/bench.py``: onion_tls against the best of its peers, side by side.

What runs
---------

Every implementation gets two worker processes, a server and a client, that
talk over 127.0.0.1:

* ``onion_tls``: on every event loop of ``--loops`` (asyncio, and uvloop
  when it is installed);
* the peers (``--peers``, default: all that are installed):

  - ``asyncio``: asyncio's own TLS on every loop of ``--loops`` (the
    ``uvloop`` column is uvloop's TLS): ``loop.create_connection(ssl=)`` /
    ``loop.create_server(ssl=)`` for the first layer, nested
    ``loop.start_tls`` for the layers inside it;
  - ``twisted``: Twisted's ``TLSMemoryBIOProtocol`` (pyOpenSSL, with its
    gathering of small writes) on Twisted's default reactor; a layer inside
    another is a ``TLSMemoryBIOProtocol`` wrapped by the one outside it;
  - ``trio``: ``trio.SSLStream`` over ``trio.SocketStream``, one
    ``SSLStream`` over another for the inner layers;
  - ``sslsocket``: a blocking ``ssl.SSLSocket`` client and server, depth 1
    only.  The ssl module does TLS and socket I/O in C: it is the ceiling
    (the "C path"), shown beside the peers but never the best peer.

Every cell is measured on every implementation one right after the other,
each round starting with a different one, so all see the same machine load.
The table shows, per cell, the median of the rounds for each implementation,
the best peer's name and rate, and the ratio onion_tls / best peer (one per
loop of onion_tls); then the depth-1 sink as a fraction of the C path.  A
CPU table does the same with client + server CPU time per byte, per round
trip or per connection (the best peer is the cheapest one; the ratio is best
peer / onion_tls, so above 1 means onion_tls is cheaper).

Cells, at every depth asked for:

* ``sink``: the client writes zeros (64 KiB or 1 KiB per write, with the
  stack's flow control) for ``--seconds``, then one last write ending in a
  1 byte; the server's application counts nothing but answers ``K`` when a
  chunk ends in that byte.  Rate: bytes written / time to the ``K``.
* ``echo``: the server's application writes back every byte it receives; the
  client keeps at most 1 MiB in flight.  Rate: bytes echoed / time.
* ``pingpong``: 1-byte records, latency-bound.  One connection with every
  layer up; the client writes 1 byte, the server's application writes it
  back as soon as it arrives, the client waits for it and writes the next,
  for ``--seconds``.  Each round trip is one 1-byte TLS record each way at
  the innermost layer, so no stack can gather writes.  The asyncio-style
  and Twisted clients write the next byte from their receive callback;
  trio's and the SSLSocket's loop over send and receive.  TCP_NODELAY on
  both ends (asyncio, uvloop and trio set it; the Twisted and SSLSocket
  workers set it for these cells).  Rate: round trips per second (rt/s);
  CPU cost: client + server CPU microseconds per round trip (us/rt).
  ``pingpong`` is the plain variant, ``pingpong-buffered`` the buffered
  one.
* ``plain`` / ``buffered`` (sink, echo, pingpong): the receiving
  applications get ``bytes`` (an ``asyncio.Protocol``; Twisted's
  ``dataReceived``; trio's ``receive_some``; ``SSLSocket.recv``) or fill
  one 256 KiB buffer (an ``asyncio.BufferedProtocol``;
  ``SSLSocket.recv_into``).  Twisted and trio have no buffered notion: their
  buffered cells are ``n/a``, and their plain rate stands for them when the
  best peer of a buffered cell is chosen (marked ``*``).
* ``handshake``: connect and establish every layer, one connection at a
  time; the rate is connections per second of establishing (closing is not
  timed).

Every layer is TLS 1.3 with TLS_AES_256_GCM_SHA384 (the cipher each
connection negotiated is checked) and X25519 (pinned on the pyOpenSSL
contexts; the ssl module's OpenSSL picks it by default).  Before each nested
layer the server sends one byte ``R`` inside the layer just made, then starts
the next layer; the client waits for it before its ClientHello.  Every
implementation does the same, so none races the other side's ``start_tls``.

Memory: each worker reports its peak RSS; separately, fresh onion_tls and
asyncio workers open ``--idle`` connections at depth 2 (plain application,
no traffic) and report the RSS they grew by, per connection, after a warm-up
of 20 connections.

Everything is bounded: each cell runs for ``--seconds`` (plus the time to
drain), each request to a worker has a time limit, and a worker that misses
it is killed (and restarted for the next cell) and its cell reported as
failed.

The pieces live in :mod:`onion_bench` beside this script: the cells and the
implementations (``cells.py``), what every worker shares (``common.py``),
what the onion_tls and asyncio workers run (``workloads.py``), the other
peers (``peer_twisted.py``, ``peer_trio.py``, ``peer_sslsocket.py``), the
processes (``harness.py``) and the table (``report.py``).  The bench is a
development tool, not part of the library: it uses only onion_tls's public
API, so it measures whichever onion_tls is importable (``nox -s bench``
installs the checkout, uvloop, Twisted and trio).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import IO

from onion_bench.cells import (
    IDLE_DEPTH,
    LOOPS,
    PEER_MODULES,
    PEERS,
    build_cells,
    build_impls,
    parse_depths,
)
from onion_bench.harness import Options, bench, run_worker
from onion_bench.report import table

__all__ = ["DESCRIPTION", "add_arguments", "main", "run"]

DESCRIPTION = (
    "Measure onion_tls against its peers side by side, interleaved: asyncio's own "
    "TLS (on asyncio and uvloop), Twisted's TLSMemoryBIOProtocol, trio's SSLStream, "
    "and the blocking ssl.SSLSocket C path (depth 1): throughput (sink, echo; 64 KiB "
    "and 1 KiB writes; Protocol and BufferedProtocol apps), 1-byte ping-pong round "
    "trips/s, handshakes/s, CPU per byte, per round trip and per connection, peak and "
    "idle memory, at depths 1-3, server and client in separate processes; each cell's "
    "ratio to the best peer."
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
        help="event loops of onion_tls and asyncio's TLS, comma separated: asyncio,uvloop "
        "(default: both if uvloop is installed)",
    )
    parser.add_argument(
        "--peers",
        default=None,
        help="peers to compare with, comma separated: " + ",".join(PEERS) + " or none "
        "(default: all that are installed; a missing one is skipped with a note)",
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


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _options(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    notes = []
    if args.loops:
        loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    else:
        loops = ["asyncio"] + (["uvloop"] if _installed("uvloop") else [])
    for name in loops:
        if name not in LOOPS:
            raise SystemExit(f"unknown loop {name!r}: use asyncio or uvloop")
    if "uvloop" in loops and not _installed("uvloop"):
        raise SystemExit("uvloop is not installed (pip install uvloop)")
    if args.peers is None:
        peers = list(PEERS)
        for peer in PEERS:
            if peer in PEER_MODULES and not _installed(PEER_MODULES[peer]):
                peers.remove(peer)
                notes.append(f"{peer} skipped: {PEER_MODULES[peer]} is not installed")
    else:
        peers = [x.strip() for x in args.peers.split(",") if x.strip() not in ("", "none")]
        for peer in peers:
            if peer not in PEERS:
                raise SystemExit(f"unknown peer {peer!r}: use {', '.join(PEERS)} or none")
            if peer in PEER_MODULES and not _installed(PEER_MODULES[peer]):
                raise SystemExit(f"{peer} is not installed (pip install {PEER_MODULES[peer]})")
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
        impls=build_impls(loops, peers),
        idle=idle,
        only=list(args.only),
        profile=args.profile,
        quick=quick,
        notes=notes,
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Run the benchmark the parsed ``args`` describe; print the table."""
    from onion_bench.workloads import write_certs  # (loads onion_tls: not in the workers)

    opts = _options(args)
    for note in opts.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    if opts.profile:
        Path(opts.profile).mkdir(parents=True, exist_ok=True)
    cells = build_cells(opts.depths, opts.only)
    with tempfile.TemporaryDirectory(prefix="onion-bench-") as tmp:
        certs = Path(tmp)
        write_certs(certs, max(max(opts.depths), IDLE_DEPTH))
        results = bench(opts, certs, cells)
    print(table(opts, cells, results), file=out or sys.stdout, flush=True)
    return 1 if results.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        run_worker(json.loads(sys.argv[2]))
    sys.exit(main())
