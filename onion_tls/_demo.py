"""``python -m onion_tls demo``: a nested-TLS echo, on onion_tls streams.

Without ``--serve``/``--port``, a server and a client on 127.0.0.1 push
``layers`` TLS layers one inside the other (certificates generated on the
spot by trustme, a distinct identity per depth), exchange a message at every
depth, then unwrap back to plaintext.

With ``--serve`` (or a ``--port``), only the server runs, and waits for
clients from this or another machine, e.g. ``python -m onion_tls client``.

The echo server's protocol, line based, at any depth:

* ``STARTTLS`` -> ``GO``, then a new layer (in ``mixed`` mode the roles swap
  at even depths: the server is the TLS *client* there);
* a TLS handshake record (a ClientHello) where a line would start -> a new
  layer, server side, fed those bytes as ``initial_bytes``;
* ``STOPTLS`` -> the server unwraps the innermost layer (it speaks first);
* the peer's close_notify -> the server answers, and the layer is popped;
* ``BYE`` -> close; any other line -> ``echo at depth N: <line>``.

Imports: :mod:`._view`, :mod:`.errors`, :mod:`.streams`, :mod:`.testing`
(the top of the package, with :mod:`._cli_client` and the CLI).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING, TextIO

from .errors import OnionError
from .streams import StreamWriter, open_connection, start_server
from .testing import Engine, OnionCA

if TYPE_CHECKING:
    from ._view import TLSLayer


def describe(layer: TLSLayer) -> str:
    """One line about a layer: depth, role, engine, version, cipher, peer."""
    from cryptography import x509

    cert = layer.peer_certificate
    if cert is None:
        subject = "(no certificate)"
    else:
        subject = cert.subject.rfc4514_string()
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            subject += " DNS:" + ",".join(san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            pass
    role = "server" if layer.server_side else "client"
    return (
        f"depth {layer.depth}  {role:<6}  {layer.engine:<9}  {layer.version}  "
        f"{layer.cipher}  peer: {subject}"
    )


class DemoPlan:
    """Which engine and which TLS role each side takes at each depth."""

    def __init__(self, ca: OnionCA, engine: str) -> None:
        self.ca = ca
        self.engine = engine

    def engine_for(self, depth: int, connecting_side: bool) -> Engine:
        # In mixed mode each side of a layer uses a different engine than
        # its peer, and the engines alternate with depth.
        if self.engine in ("pyopenssl", "stdlib"):
            return self.engine  # type: ignore[return-value]
        return "pyopenssl" if (depth + connecting_side) % 2 else "stdlib"

    def connecting_side_is_tls_server(self, depth: int) -> bool:
        # In mixed mode the roles swap at every other depth too.
        return self.engine == "mixed" and depth % 2 == 0

    def push(
        self, writer: StreamWriter, depth: int, connecting_side: bool, initial: bytes = b""
    ) -> asyncio.Future[TLSLayer]:
        """Push this side's layer of ``depth`` (a STARTTLS upgrade)."""
        tls_server = self.connecting_side_is_tls_server(depth) == connecting_side
        engine = self.engine_for(depth, connecting_side)
        if tls_server:
            return writer.start_tls(
                self.ca.server_context(depth, engine), server_side=True, initial_bytes=initial
            )
        return writer.start_tls(
            self.ca.client_context(engine),
            server_side=False,
            server_hostname=self.ca.hostname(depth),
            initial_bytes=initial,
        )


class EchoServer:
    """The demo's echo server (see the module docstring for its protocol)."""

    def __init__(self, plan: DemoPlan, out: TextIO | None = None) -> None:
        self.plan = plan
        self.out = out  # per-connection log, in serve mode
        self.tasks: set[asyncio.Task[None]] = set()
        self.peers: dict[StreamWriter, str] = {}

    def log(self, writer: StreamWriter, text: str) -> None:
        if self.out is not None:
            print(f"[{self.peers.get(writer, '?')}] {text}", file=self.out, flush=True)

    async def handle(self, reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        peer = writer.get_extra_info("peername")
        self.peers[writer] = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.log(writer, "connected")
        try:
            await self.serve(reader, writer)
            self.log(writer, "closed")
        except (ConnectionError, OnionError, asyncio.IncompleteReadError) as exc:
            self.log(writer, f"connection ended: {exc}")
        finally:
            writer.close()
            self.peers.pop(writer, None)

    async def serve(self, reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        plan = self.plan
        while True:
            first = await reader.read(1)
            if not first:
                if not writer.layers:
                    return  # plaintext EOF: the end
                # The peer's close_notify: answer it, and go on beneath.
                popped = await writer.stop_tls()
                self.log(writer, f"layer {popped.depth} unwrapped (the peer closed it)")
                continue
            depth = len(writer.layers) + 1
            if first == b"\x16":
                # A ClientHello where a line would start: the peer pushed a
                # layer.  What was read of it goes to the new layer.
                ctx = plan.ca.server_context(depth, plan.engine_for(depth, False))
                layer = await writer.start_tls(
                    ctx, server_side=True, initial_bytes=first + writer.take_buffered()
                )
                self.log(writer, "layer up: " + describe(layer))
                continue
            line = (first + await reader.readline()).rstrip(b"\r\n")
            if line == b"STARTTLS":
                writer.write(b"GO\n")
                layer = await plan.push(writer, depth, connecting_side=False)
                self.log(writer, "layer up: " + describe(layer))
            elif line == b"STOPTLS":
                popped = await writer.stop_tls()
                self.log(writer, f"layer {popped.depth} unwrapped")
            elif line == b"BYE":
                return
            else:
                self.log(writer, f"echo at depth {depth - 1}: {line.decode(errors='replace')}")
                writer.write(b"echo at depth %d: %s\n" % (depth - 1, line))

    async def wait(self) -> None:
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_demo(
    layers: int = 3,
    engine: str = "mixed",
    port: int = 0,
    host: str = "127.0.0.1",
    out: TextIO = sys.stdout,
) -> None:
    """Serve on ``host:port`` and connect to it with ``layers`` layers."""
    plan = DemoPlan(OnionCA(), engine)
    echo = EchoServer(plan)
    server = await start_server(echo.handle, host, port)
    bound = server.sockets[0].getsockname()
    print(f"onion_tls demo: echo server on {bound[0]}:{bound[1]}", file=out)
    try:
        reader, writer = await open_connection(bound[0], bound[1])
        for depth in range(1, layers + 1):
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            # The peer may already have sent its first handshake bytes right
            # behind GO (it is the TLS client at some depths): they are given
            # to the new layer explicitly.
            early = writer.take_buffered()
            layer = await plan.push(writer, depth, connecting_side=True, initial=early)
            print("  wrapped  " + describe(layer), file=out)
            writer.write(b"hello from inside %d layer(s)\n" % depth)
            print("    " + (await reader.readline()).decode().rstrip(), file=out)
        for _ in range(layers):
            writer.write(b"STOPTLS\n")
            popped = await writer.stop_tls()
            writer.write(b"back to %d layer(s)\n" % len(writer.layers))
            line = (await reader.readline()).decode().rstrip()
            print(f"  unwrapped depth {popped.depth}: {line}", file=out)
        writer.write(b"BYE\n")
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        print("onion_tls demo: done, every layer wrapped and unwrapped", file=out)
    finally:
        server.close()
        await server.wait_closed()
        await echo.wait()


async def serve_demo(
    port: int,
    host: str,
    engine: str,
    ca_path: str,
    out: TextIO = sys.stdout,
    ready: asyncio.Future[int] | None = None,
) -> None:
    """Serve the echo server until cancelled (Ctrl-C) or sent SIGTERM (a
    server started in the background ignores Ctrl-C's SIGINT)."""
    ca = OnionCA()
    ca.write_ca_pem(ca_path)
    echo = EchoServer(DemoPlan(ca, engine), out=out)
    server = await start_server(echo.handle, host, port)
    bound = server.sockets[0].getsockname()
    shown = "HOST" if bound[0] in ("0.0.0.0", "::") else bound[0]
    print(
        f"onion_tls demo server: listening on {bound[0]}:{bound[1]}\n"
        f"  CA certificate: {os.path.abspath(ca_path)} (copy it to the client's machine)\n"
        f"  the server of depth N presents the name layerN.onion.test\n"
        f"  connect with:\n"
        f"    python -m onion_tls client {shown}:{bound[1]} --cafile {ca_path} \\\n"
        f"        --tls layer1.onion.test --tls layer2.onion.test\n"
        f"  then type 'send hello', 'pop', 'push layer2.onion.test', 'quit'.",
        file=out,
        flush=True,
    )
    if bound[0] in ("127.0.0.1", "::1", "localhost"):
        print(
            "  (only this machine can connect: --host 0.0.0.0 accepts others)",
            file=out,
            flush=True,
        )
    print("waiting for connections (Ctrl-C to stop)", file=out, flush=True)
    if ready is not None:
        ready.set_result(bound[1])
    stop = asyncio.Event()
    if sys.platform != "win32":  # (the loops there take no signal handlers)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(echo.tasks):
            task.cancel()
        await echo.wait()
        await server.wait_closed()
