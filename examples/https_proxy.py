"""HTTPS through an HTTPS proxy: TLS to the proxy, then TLS to the origin
inside it, on one connection.

    python examples/https_proxy.py

What runs, all on 127.0.0.1, with certificates made on the spot (trustme):

* an origin web server (``origin.example``), HTTPS, written with plain
  ``asyncio.start_server(ssl=...)``;
* a forward proxy (``proxy.example``) that speaks HTTPS to its clients and
  understands ``CONNECT``, also plain asyncio: after ``CONNECT`` it pipes
  bytes to the origin and cannot read them;
* the client, with onion_tls: layer 1 is the TLS session with the proxy,
  layer 2 (inside layer 1) the TLS session with the origin.  The second
  layer uses pyOpenSSL, the first the stdlib ``ssl`` module: each layer
  picks its own engine.

The proxy counts what it forwards and checks that the request never crossed
it in clear.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import trustme
from OpenSSL import SSL

import onion_tls

CA = trustme.CA()
ORIGIN_CERT = CA.issue_cert("origin.example")
PROXY_CERT = CA.issue_cert("proxy.example")


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


# Connection handlers still running; main() waits for them before it returns
# (on Python 3.11, Server.wait_closed() does not).
HANDLERS: set[asyncio.Task[None]] = set()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def tracked(handler: Handler) -> Handler:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        HANDLERS.add(task)
        await handler(reader, writer)

    return run


# -- the origin: a tiny HTTPS server ------------------------------------------


async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ", 2)[1].decode()
    body = f"hello from origin.example, you asked for {path}\n".encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


# -- the proxy: HTTPS to its clients, CONNECT, then a blind pipe ---------------


class Proxy:
    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self.routes = routes  # "host:port" the client asks for -> where it really is
        self.forwarded = bytearray()  # what went client -> origin through us

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT" or target not in self.routes:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, port = self.routes[target]
        print(f"proxy:  CONNECT {target} -> {host}:{port}")
        up_reader, up_writer = await asyncio.open_connection(host, port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(
            self.pipe(reader, up_writer, self.forwarded),
            self.pipe(up_reader, writer, None),
        )

    @staticmethod
    async def pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tap: bytearray | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


# -- the client: two layers on one connection -----------------------------------


def describe(layer: onion_tls.TLSLayer) -> str:
    cert = layer.peer_certificate
    name = cert.subject.rfc4514_string() if cert is not None else "?"
    return f"{layer.version} {layer.cipher} via {layer.engine}, peer certificate {name!r}"


async def fetch_through_proxy(proxy_port: int) -> bytes:
    # Layer 1: TLS with the proxy (stdlib engine).
    ctx1 = ssl.create_default_context()
    CA.configure_trust(ctx1)
    reader, writer = await onion_tls.open_connection(
        "127.0.0.1", proxy_port, ssl=ctx1, server_hostname="proxy.example"
    )
    print(f"client: layer 1 up with proxy.example: {describe(writer.layers[0])}")

    writer.write(b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n\r\n")
    reply = await reader.readuntil(b"\r\n\r\n")
    print(f"client: proxy says {reply.splitlines()[0].decode()!r}")

    # Layer 2, inside layer 1: TLS with the origin (pyOpenSSL engine).  The
    # proxy passes its records along without being able to read them.
    ctx2 = SSL.Context(SSL.TLS_CLIENT_METHOD)
    CA.configure_trust(ctx2)
    layer2 = await writer.start_tls(ctx2, server_hostname="origin.example")
    print(f"client: layer 2 up with origin.example inside layer 1: {describe(layer2)}")

    writer.write(b"GET /index.txt HTTP/1.1\r\nHost: origin.example\r\n\r\n")
    response = await reader.read()  # to the origin's close_notify: the end of layer 2
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, onion_tls.OnionError):
        pass  # the proxy hung up at the same time: nothing left to say
    return response


async def main() -> None:
    origin_server = await asyncio.start_server(
        tracked(origin), "127.0.0.1", 0, ssl=server_context(ORIGIN_CERT)
    )
    origin_port = origin_server.sockets[0].getsockname()[1]
    proxy = Proxy({"origin.example:443": ("127.0.0.1", origin_port)})
    proxy_server = await asyncio.start_server(
        tracked(proxy.handle), "127.0.0.1", 0, ssl=server_context(PROXY_CERT)
    )
    proxy_port = proxy_server.sockets[0].getsockname()[1]
    print(f"origin: https://origin.example on 127.0.0.1:{origin_port}")
    print(f"proxy:  https://proxy.example on 127.0.0.1:{proxy_port}")
    try:
        response = await fetch_through_proxy(proxy_port)
        await asyncio.wait_for(asyncio.gather(*HANDLERS), 10)
    finally:
        for server in (proxy_server, origin_server):
            server.close()
            await server.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    print(f"client: {head.splitlines()[0].decode()}  body: {body.decode().strip()!r}")
    sample = proxy.forwarded[:5].hex(" ")
    in_clear = b"GET /index.txt" in proxy.forwarded
    print(
        f"proxy:  forwarded {len(proxy.forwarded)} bytes to the origin, starting {sample} "
        f"(TLS records); the request in clear: {'yes' if in_clear else 'no'}"
    )
    assert body == b"hello from origin.example, you asked for /index.txt\n"
    assert not in_clear


if __name__ == "__main__":
    asyncio.run(main())
