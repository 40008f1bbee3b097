"""How-to: HTTPS through a chain of two HTTPS proxies (TLS in TLS in TLS).

    python docs/examples/howto_proxy_chain.py

Runs on 127.0.0.1 with certificates from ``onion_tls.testing.OnionCA``:
two HTTPS proxies written with plain asyncio (the second asks for Basic
authentication) and an HTTPS origin.  The client reaches the origin with
``onion_tls.proxy.open_connection``: layer 1 is its TLS with proxy 1,
layer 2 its TLS with proxy 2 (inside layer 1), layer 3 the origin's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

import onion_tls
from onion_tls import proxy
from onion_tls.testing import OnionCA

CA = OnionCA()  # proxy 1 is layer1.onion.test, proxy 2 layer2..., the origin layer3...
TASKS: set[asyncio.Task[None]] = set()  # connection handlers, awaited before exit


# -- the servers: plain asyncio ---------------------------------------------------


async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    body = b"hello through two proxies\n"
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


def connect_proxy(password: str | None):  # -> a start_server callback
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        TASKS.add(task)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        target = head.split()[1]  # CONNECT host:port HTTP/1.1
        expected = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
        if password is not None and f"Proxy-Authorization: {expected}\r\n" not in head:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="docs"\r\nContent-Length: 0\r\n\r\n'
            )
            writer.close()
            return
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return handle


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


# -- the client -------------------------------------------------------------------


async def fetch(proxy1: int, proxy2: int, origin_port: int, password: str) -> bytes:
    # [chain]
    hops = [
        # Each https:// hop is a TLS layer; its context and the name its
        # certificate must match are the hop's own.
        proxy.Proxy.from_url(
            f"https://127.0.0.1:{proxy1}",
            ssl=CA.client_context("stdlib"),
            server_hostname=CA.hostname(1),
        ),
        proxy.Proxy.from_url(
            f"https://alice:{password}@127.0.0.1:{proxy2}",  # Basic authentication
            ssl=CA.client_context("pyopenssl"),
            server_hostname=CA.hostname(2),
        ),
    ]
    reader, writer = await proxy.open_connection(
        "127.0.0.1",
        origin_port,
        proxies=hops,
        ssl=CA.client_context("stdlib"),  # the origin's TLS: layer 3
        server_hostname=CA.hostname(3),
        hop_timeout=10,
    )
    for layer in writer.layers:
        print(f"layer {layer.depth}: {layer.server_hostname} ({layer.engine})")
    # [/chain]
    writer.write(b"GET / HTTP/1.1\r\nHost: layer3.onion.test\r\n\r\n")
    response = await reader.read()  # up to the origin's close_notify
    writer.close()
    with contextlib.suppress(ConnectionError, onion_tls.OnionError):
        await writer.wait_closed()
    return response


async def main() -> None:
    servers = [
        await asyncio.start_server(origin, "127.0.0.1", 0, ssl=CA.server_context(3, "stdlib")),
        await asyncio.start_server(
            connect_proxy(None), "127.0.0.1", 0, ssl=CA.server_context(1, "stdlib")
        ),
        await asyncio.start_server(
            connect_proxy("s3cret"), "127.0.0.1", 0, ssl=CA.server_context(2, "stdlib")
        ),
    ]
    origin_port, proxy1, proxy2 = (s.sockets[0].getsockname()[1] for s in servers)
    try:
        response = await fetch(proxy1, proxy2, origin_port, "s3cret")
        print("origin says:", response.rpartition(b"\r\n\r\n")[2].decode().strip())

        # [errors]
        try:
            await fetch(proxy1, proxy2, origin_port, "wrong")
        except proxy.ProxyAuthenticationError as exc:
            print(f"hop {exc.hop} refused us with {exc.status}: {exc.reason}")
        # [/errors]
        await asyncio.wait_for(asyncio.gather(*TASKS, return_exceptions=True), 10)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
