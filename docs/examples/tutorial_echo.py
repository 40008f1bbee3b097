"""The tutorial's program: a line protocol that can push and pop TLS layers.

    python docs/examples/tutorial_echo.py

A server and a client on 127.0.0.1, certificates from
``onion_tls.testing.OnionCA``.  The client talks in plaintext, asks for a
TLS layer, asks for a second one inside it, pops it again and closes.  The
server answers each line with the depth it arrived at.
"""

from __future__ import annotations

import asyncio

import onion_tls
from onion_tls.testing import Engine, OnionCA


class LineProtocol(asyncio.Protocol):
    """Cuts the byte stream into lines; subclasses answer each one."""

    transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport  # the same object for the whole connection
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            self.line_received(line)

    def line_received(self, line: bytes) -> None:
        raise NotImplementedError


class EchoServer(LineProtocol):
    """Answers ``depth: LINE``; ``STARTTLS`` pushes a layer, the client's
    close_notify pops one."""

    def __init__(self, ca: OnionCA, engine: Engine = "stdlib") -> None:
        self.ca = ca
        self.engine = engine

    def line_received(self, line: bytes) -> None:
        depth = len(self.transport.layers)
        if line == b"STARTTLS":
            self.transport.write(b"OK\n")  # still sent at the current depth
            # Anything the client sent behind STARTTLS came before our OK,
            # so it cannot be TLS: drop it, never feed it to the new layer.
            self.buffer = b""
            # Spliced in now, from inside data_received: the very next byte
            # from the client belongs to the new layer.
            context = self.ca.server_context(depth + 1, self.engine)
            self.transport.start_tls(context, server_side=True)
        else:
            self.transport.write(b"%d: %s\n" % (depth, line.upper()))

    def eof_received(self) -> bool:
        if self.transport.layers:
            # The client's close_notify on the innermost layer: that layer's
            # EOF.  Answer it: our close_notify goes out and the layer pops.
            self.transport.stop_tls()
            return True  # keep the connection
        return False  # a plaintext EOF: close


class EchoClient(LineProtocol):
    """Collects the server's lines for :meth:`ask`."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def line_received(self, line: bytes) -> None:
        self.lines.put_nowait(line)

    async def ask(self, line: bytes) -> bytes:
        self.transport.write(line + b"\n")
        return await self.lines.get()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def main() -> None:
    ca = OnionCA()
    loop = asyncio.get_running_loop()
    # [wrap]
    server = await loop.create_server(onion_tls.wrap(lambda: EchoServer(ca)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, onion = await loop.create_connection(onion_tls.wrap(EchoClient), "127.0.0.1", port)
    client = onion.transport.get_protocol()
    assert isinstance(client, EchoClient)
    transport = client.transport  # an OnionTransport, like onion.transport
    print("plaintext:", await client.ask(b"hello"))
    # [/wrap]

    # [push]
    assert await client.ask(b"STARTTLS") == b"OK"
    layer = await transport.start_tls(ca.client_context("stdlib"), server_hostname=ca.hostname(1))
    print("pushed:", layer.depth, layer.version, layer.engine)
    print("one layer:", await client.ask(b"hello"))
    # [/push]

    # [nest]
    assert await client.ask(b"STARTTLS") == b"OK"  # sent inside layer 1
    inner = await transport.start_tls(  # layer 2, inside layer 1, pyOpenSSL this time
        ca.client_context("pyopenssl"), server_hostname=ca.hostname(2)
    )
    print("pushed:", inner.depth, inner.version, inner.engine)
    print("two layers:", await client.ask(b"hello"))
    print("layers:", [(lay.depth, lay.server_hostname) for lay in transport.layers])
    # [/nest]

    # [unwrap]
    popped = await transport.stop_tls()  # close_notify both ways on layer 2
    print("popped:", popped.depth, "- layers left:", len(transport.layers))
    print("back to one layer:", await client.ask(b"hello"))
    # [/unwrap]

    # [close]
    transport.close()  # close_notify on every layer left, then the socket
    await client.closed
    server.close()
    await server.wait_closed()
    # [/close]


if __name__ == "__main__":
    asyncio.run(main())
