"""Command line: ``python -m onion_tls demo`` and ``python -m onion_tls bench``."""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onion_tls",
        description="TLS inside TLS on one asyncio connection.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="nested-TLS echo over loopback with generated certificates",
        description="Start an echo server, connect to it, push N TLS layers one inside "
        "the other (a fresh certificate per depth), talk at every depth, unwrap.",
    )
    demo.add_argument("--layers", type=int, default=3, help="how many layers (default 3)")
    demo.add_argument(
        "--engine",
        choices=("pyopenssl", "stdlib", "mixed"),
        default="mixed",
        help="TLS engine per layer; mixed alternates engines and sides (default)",
    )
    demo.add_argument("--port", type=int, default=0, help="port to serve on (default: any)")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on")
    from . import bench as _bench

    _bench.add_arguments(
        sub.add_parser(
            "bench",
            help="onion_tls against asyncio's own TLS, side by side",
            description=_bench.DESCRIPTION,
        )
    )
    args = parser.parse_args(argv)

    if args.command == "demo":
        from ._demo import run_demo

        if args.layers < 1:
            parser.error("--layers must be at least 1")
        asyncio.run(run_demo(args.layers, args.engine, args.port, args.host))
        return 0
    if args.command == "bench":
        return _bench.run(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
