"""``python -m onion_tls demo``: a nested-TLS echo over loopback.

A server and a client on 127.0.0.1 push ``layers`` TLS layers one inside the
other (certificates generated on the spot by trustme, a distinct identity per
depth), exchange a message at every depth, then unwrap back to plaintext.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from ._transport import OnionTransport, wrap
from ._view import TLSLayer
from .testing import Engine, OnionCA


class _LineProtocol(asyncio.Protocol):
    """Collects bytes; ``read_line`` waits for one line."""

    def __init__(self) -> None:
        self.transport: OnionTransport
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._wake()

    def eof_received(self) -> bool:
        self._wake()
        # Inside TLS, the demo unwraps explicitly after each close_notify;
        # in plaintext, EOF ends the connection.
        return bool(self.transport.layers)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def take_buffer(self) -> bytes:
        """What arrived after the last line: it belongs to the next layer."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    async def read_line(self) -> bytes:
        while b"\n" not in self._buf:
            if self.closed.done():
                raise ConnectionError("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf[:] = rest
        return line


def _describe(layer: TLSLayer) -> str:
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


async def run_demo(
    layers: int = 3,
    engine: str = "mixed",
    port: int = 0,
    host: str = "127.0.0.1",
    out: TextIO = sys.stdout,
) -> None:
    """Serve on ``host:port`` and connect to it with ``layers`` layers."""
    ca = OnionCA()
    loop = asyncio.get_running_loop()

    def engine_for(depth: int, connecting_side: bool) -> Engine:
        # In mixed mode each side of a layer uses a different engine than
        # its peer, and the engines alternate with depth.
        if engine in ("pyopenssl", "stdlib"):
            return engine  # type: ignore[return-value]
        return "pyopenssl" if (depth + connecting_side) % 2 else "stdlib"

    def client_is_tls_server(depth: int) -> bool:
        # In mixed mode the roles swap at every other depth too: the
        # connecting side is the TLS server of layers 2, 4, ...
        return engine == "mixed" and depth % 2 == 0

    async def push(proto: _LineProtocol, depth: int, connecting_side: bool) -> TLSLayer:
        t = proto.transport
        # The peer may already have sent its first handshake bytes right
        # behind the line we just read: they are given to the new layer
        # explicitly, as initial_bytes.
        early = proto.take_buffer()
        tls_server = client_is_tls_server(depth) == connecting_side
        if tls_server:
            ctx = ca.server_context(depth, engine_for(depth, connecting_side))
            return await t.start_tls(ctx, server_side=True, initial_bytes=early)
        ctx = ca.client_context(engine_for(depth, connecting_side))
        return await t.start_tls(ctx, server_hostname=ca.hostname(depth), initial_bytes=early)

    async def serve(proto: _LineProtocol) -> None:
        t = proto.transport
        while True:
            line = await proto.read_line()
            if line == b"STARTTLS":
                depth = len(t.layers) + 1
                t.write(b"GO\n")
                await push(proto, depth, connecting_side=False)
            elif line == b"STOPTLS":
                await t.stop_tls()
            elif line == b"BYE":
                t.close()
                return
            else:
                t.write(b"echo at depth %d: %s\n" % (len(t.layers), line))

    server_tasks: set[asyncio.Task[None]] = set()

    def server_factory() -> _LineProtocol:
        proto = _LineProtocol()
        task = loop.create_task(_serve_later(proto))
        server_tasks.add(task)
        task.add_done_callback(server_tasks.discard)
        return proto

    async def _serve_later(proto: _LineProtocol) -> None:
        await asyncio.sleep(0)
        await serve(proto)

    server = await loop.create_server(wrap(server_factory), host, port)
    bound = server.sockets[0].getsockname()
    print(f"onion_tls demo: echo server on {bound[0]}:{bound[1]}", file=out)
    try:
        _, onion = await loop.create_connection(wrap(_LineProtocol), bound[0], bound[1])
        client: _LineProtocol = onion.transport.get_protocol()  # type: ignore[assignment]
        t = client.transport
        for depth in range(1, layers + 1):
            t.write(b"STARTTLS\n")
            assert await client.read_line() == b"GO"
            layer = await push(client, depth, connecting_side=True)
            print("  wrapped  " + _describe(layer), file=out)
            t.write(b"hello from inside %d layer(s)\n" % depth)
            print("    " + (await client.read_line()).decode(), file=out)
        for _ in range(layers):
            t.write(b"STOPTLS\n")
            popped = await t.stop_tls()
            t.write(b"back to %d layer(s)\n" % len(t.layers))
            print(
                f"  unwrapped depth {popped.depth}: " + (await client.read_line()).decode(),
                file=out,
            )
        t.write(b"BYE\n")
        await client.closed
        print("onion_tls demo: done, every layer wrapped and unwrapped", file=out)
    finally:
        server.close()
        await server.wait_closed()
        for task in list(server_tasks):
            await task
