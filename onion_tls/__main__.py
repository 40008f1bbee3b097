"""Command line: ``python -m onion_tls demo`` and ``client``.

The benchmark is a development tool outside the package:
``python benchmarks/bench.py`` (or ``nox -s bench``).

Each subcommand is added by one ``_add_*`` function and run by the function
it sets as ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
from typing import Any


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _text(*paragraphs: str) -> str:
    """Paragraphs filled to 78 columns (the formatter keeps them as is)."""
    return "\n\n".join(textwrap.fill(p, 78) for p in paragraphs)


# -- demo -----------------------------------------------------------------------


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="nested-TLS echo over loopback (or serve it for other machines)",
        formatter_class=_Formatter,
        description=_text(
            "Start an echo server, connect to it, push N TLS layers one inside the other "
            "(a fresh certificate per depth), talk at every depth, unwrap.",
            "With --serve or --port, only the server runs, and waits for clients: "
            "'python -m onion_tls client' from this or another machine (serve on "
            "--host 0.0.0.0 for that). The server of depth N presents the name "
            "layerN.onion.test, signed by a CA written to --ca-out.",
        ),
        epilog="examples:\n"
        "  python -m onion_tls demo --layers 5 --engine stdlib\n"
        "  python -m onion_tls demo --host 0.0.0.0 --port 4433",
    )
    demo.add_argument("--layers", type=int, default=3, help="how many layers (default 3)")
    demo.add_argument(
        "--engine",
        choices=("pyopenssl", "stdlib", "mixed"),
        default="mixed",
        help="TLS engine per layer; mixed alternates engines and sides (default)",
    )
    demo.add_argument(
        "--port", type=int, default=None, help="serve on this port and wait (implies --serve)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    demo.add_argument("--serve", action="store_true", help="only serve, and wait for clients")
    demo.add_argument(
        "--ca-out",
        default="onion-demo-ca.pem",
        metavar="FILE",
        help="with --serve: where to write the CA certificate (default ./onion-demo-ca.pem)",
    )
    demo.set_defaults(run=_run_demo, subparser=demo)


def _run_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.serve or args.port is not None:
        from ._demo import serve_demo

        try:
            asyncio.run(serve_demo(args.port or 0, args.host, args.engine, args.ca_out))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            print(f"onion_tls demo server: cannot serve on {args.host}: {exc}", file=sys.stderr)
            return 1
        print("onion_tls demo server: stopped", flush=True)
        return 0
    from ._demo import run_demo

    asyncio.run(run_demo(args.layers, args.engine, 0, args.host))
    return 0


# -- client ---------------------------------------------------------------------


class _StepAction(argparse.Action):
    """--tls/--pop/--send/--expect append to one list, in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from ._cli_client import Step

        steps = getattr(namespace, "steps", None) or []
        steps.append(Step(self.const, values if isinstance(values, str) else ""))
        namespace.steps = steps


def _add_client(sub: Any) -> None:
    from ._cli_client import COMMANDS

    client = sub.add_parser(
        "client",
        help="connect and push/pop TLS layers (a nested openssl s_client)",
        formatter_class=_Formatter,
        description=_text(
            "Connect to HOST:PORT in plaintext (or through --proxy HTTP CONNECT proxies, "
            "each https:// one a TLS layer of its own), then push and pop TLS layers, printing "
            "each layer's handshake (version, cipher, ALPN, certificate, verification) "
            "like a nested 'openssl s_client'. Lines starting with '*' are progress, "
            "'!' errors, '<' data received, '>' data sent.",
            "The --tls/--pop/--send/--expect steps run first, in the order given; then "
            "commands are read from standard input (unless --no-stdin). Exit status: 0 "
            "when every step worked, 1 when one failed, 2 on a usage error.",
        )
        + "\n\n"
        + COMMANDS,
        epilog="examples:\n"
        "  # two layers against 'python -m onion_tls demo --serve --port 4433'\n"
        "  python -m onion_tls client localhost:4433 --cafile onion-demo-ca.pem \\\n"
        "      --tls layer1.onion.test --tls layer2.onion.test --send hello \\\n"
        "      --expect 'echo at depth 2' --pop --no-stdin\n"
        "  # one layer to a web server, then type: send GET / HTTP/1.0 ...\n"
        "  python -m onion_tls client example.org:443 --tls example.org,http/1.1 --crlf\n"
        "  # through an HTTPS proxy inside an HTTPS proxy: the web server's TLS is layer 3\n"
        "  python -m onion_tls client example.org:443 --proxy https://proxy1.example:3128 \\\n"
        "      --proxy https://user:pass@proxy2.example:3129 --tls example.org,http/1.1 --crlf",
    )
    client.add_argument("target", metavar="HOST:PORT", help="where to connect")
    client.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="URL",
        help="go through this HTTP CONNECT proxy: http://[USER:PASS@]HOST:PORT, or "
        "https://... for TLS with the proxy (a layer of its own, checked with the TLS "
        "options below); repeat for a chain, first hop first",
    )
    steps = client.add_argument_group("steps (run in the order given)")
    steps.add_argument(
        "--tls",
        action=_StepAction,
        const="push",
        metavar="NAME[,ALPN...]",
        help="push a layer: SNI and checked name NAME, offering these ALPN protocols",
    )
    steps.add_argument(
        "--pop", action=_StepAction, const="pop", nargs=0, help="unwrap the innermost layer"
    )
    steps.add_argument(
        "--send", action=_StepAction, const="send", metavar="TEXT", help="send TEXT and a newline"
    )
    steps.add_argument(
        "--expect",
        action=_StepAction,
        const="expect",
        metavar="TEXT",
        help="wait until TEXT has been received (fails after --timeout)",
    )
    steps.add_argument(
        "--starttls",
        metavar="PROTO[,NAME]",
        help="before the other steps, upgrade the plain-text connection as PROTO does "
        "(smtp, imap, pop3, ftp, postgres), like 'openssl s_client -starttls': layer 1, "
        "SNI and checked name NAME (default: HOST)",
    )
    tls = client.add_argument_group("TLS options (for every layer)")
    tls.add_argument(
        "--cafile", metavar="FILE", help="trust these CAs (PEM) instead of the system's"
    )
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify certificates or names (testing only)"
    )
    tls.add_argument(
        "--engine",
        choices=("stdlib", "pyopenssl"),
        default="stdlib",
        help="TLS engine of the layers this side pushes (default stdlib)",
    )
    tls.add_argument(
        "--cert", metavar="FILE", help="client certificate chain (PEM), for mutual TLS"
    )
    tls.add_argument("--key", metavar="FILE", help="its private key (default: in --cert)")
    tls.add_argument("--tls-version", choices=("1.2", "1.3"), help="only this TLS version")
    misc = client.add_argument_group("other options")
    misc.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds for connecting, each handshake, each pop, each expect (default 30)",
    )
    misc.add_argument("--crlf", action="store_true", help="end sent lines with CRLF")
    misc.add_argument(
        "--no-stdin", action="store_true", help="do not read commands from standard input"
    )
    client.set_defaults(run=_run_client, subparser=client, steps=[])


def _run_client(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ._cli_client import Options, parse_target, run_client

    try:
        host, port = parse_target(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    if args.key and not args.cert:
        parser.error("--key needs --cert")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if args.starttls is not None:
        from .starttls import PROTOCOLS

        proto = args.starttls.partition(",")[0].lower()
        if proto not in PROTOCOLS:
            parser.error(f"--starttls: unknown protocol {proto!r} (known: {', '.join(PROTOCOLS)})")
    from .proxy import Proxy

    for url in args.proxy:
        try:
            Proxy.from_url(url)
        except ValueError as exc:
            parser.error(f"--proxy: {exc}")
    opts = Options(
        cafile=args.cafile,
        insecure=args.insecure,
        engine=args.engine,
        cert=args.cert,
        key=args.key,
        version=args.tls_version,
        timeout=args.timeout,
        crlf=args.crlf,
        starttls=args.starttls,
    )
    try:
        return asyncio.run(
            run_client(
                host, port, args.steps, opts, use_stdin=not args.no_stdin, proxies=args.proxy
            )
        )
    except KeyboardInterrupt:
        return 130


# -- main -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m onion_tls",
        description="TLS inside TLS on one asyncio connection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_client(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args.subparser, args))


if __name__ == "__main__":
    sys.exit(main())
