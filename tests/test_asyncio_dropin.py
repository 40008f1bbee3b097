"""Code written for asyncio's streams runs unchanged on onion_tls.

Each snippet below is plain asyncio code: it uses only what asyncio offers
(``open_connection``, ``start_server``, ``StreamWriter.start_tls`` with
asyncio's keyword names).  It is run twice: against ``asyncio`` itself (so
we know the snippet is genuine asyncio code) and against ``onion_tls``, the
only change being the module the names come from.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from types import ModuleType
from typing import Any

import pytest

import onion_tls
from onion_tls.testing import OnionCA

WAIT = 10.0
MODULES = [pytest.param(asyncio, id="asyncio"), pytest.param(onion_tls, id="onion_tls")]
# asyncio's own StreamWriter.start_tls takes ssl_shutdown_timeout from 3.12 on
SHUTDOWN_KW: dict[str, Any] = {"ssl_shutdown_timeout": 5.0} if sys.version_info >= (3, 12) else {}


async def _close(writer: Any) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), WAIT)
    except (ConnectionError, ssl.SSLError):
        pass  # a peer gone first is not what these snippets are about


# -- snippet 1: STARTTLS, both ends written for asyncio --------------------------------


async def starttls_server(aio: ModuleType, ctx: ssl.SSLContext) -> tuple[Any, list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: Any) -> None:
        writer.write(b"220 ready\r\n")
        line = await reader.readline()
        assert line == b"STARTTLS\r\n"
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(ctx, ssl_handshake_timeout=WAIT, **SHUTDOWN_KW)
        line = await reader.readline()
        seen.append(line)
        writer.write(b"250 secret received: " + line)
        await writer.drain()
        await _close(writer)

    server = await aio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def starttls_client(aio: ModuleType, port: int, ctx: ssl.SSLContext, name: str) -> bytes:
    reader, writer = await aio.open_connection("127.0.0.1", port)
    assert await reader.readline() == b"220 ready\r\n"
    writer.write(b"STARTTLS\r\n")
    assert await reader.readline() == b"220 go ahead\r\n"
    await writer.start_tls(ctx, server_hostname=name, ssl_handshake_timeout=WAIT, **SHUTDOWN_KW)
    assert writer.get_extra_info("ssl_object") is not None
    assert writer.get_extra_info("peercert")["subjectAltName"][0][1] == name
    writer.write(b"the secret\r\n")
    answer = await reader.readline()
    await _close(writer)
    return answer


@pytest.mark.parametrize("server_mod", MODULES)
@pytest.mark.parametrize("client_mod", MODULES)
async def test_starttls_snippet(
    onion_ca: OnionCA, client_mod: ModuleType, server_mod: ModuleType
) -> None:
    server, seen = await starttls_server(server_mod, onion_ca.server_context(1, "stdlib"))
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await asyncio.wait_for(
            starttls_client(
                client_mod, port, onion_ca.client_context("stdlib"), onion_ca.hostname(1)
            ),
            WAIT,
        )
    finally:
        server.close()
        await server.wait_closed()
    assert answer == b"250 secret received: the secret\r\n"
    assert seen == [b"the secret\r\n"]


# -- snippet 2: TLS inside TLS, through an HTTPS proxy ----------------------------------


async def https_proxy(aio: ModuleType, ctx: ssl.SSLContext) -> Any:
    """An HTTPS CONNECT proxy written for asyncio streams."""

    async def pipe(src: asyncio.StreamReader, dst: Any) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: Any) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b" ", 2)
        assert method == b"CONNECT"
        host, _, port = target.decode().rpartition(":")
        up_reader, up_writer = await aio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await aio.start_server(handle, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=WAIT)


async def echo_origin(aio: ModuleType, ctx: ssl.SSLContext) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: Any) -> None:
        line = await reader.readline()
        writer.write(b"echo: " + line)
        await writer.drain()
        await _close(writer)

    return await aio.start_server(handle, "127.0.0.1", 0, ssl=ctx)


async def through_the_proxy(
    aio: ModuleType, proxy_port: int, origin_port: int, ca: OnionCA
) -> tuple[bytes, int]:
    reader, writer = await aio.open_connection(
        "127.0.0.1",
        proxy_port,
        ssl=ca.client_context("stdlib"),
        server_hostname=ca.hostname(1),
        ssl_handshake_timeout=WAIT,
    )
    writer.write(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\n".encode())
    status = await reader.readuntil(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    # TLS to the origin, inside the TLS to the proxy (asyncio 3.11+ nests).
    await writer.start_tls(
        ca.client_context("stdlib"), server_hostname=ca.hostname(2), ssl_handshake_timeout=WAIT
    )
    version = writer.get_extra_info("ssl_object").version()
    writer.write(b"hello origin\n")
    answer = await reader.readline()
    depth = len(getattr(writer, "layers", ())) or 2  # asyncio has no layers: two by design
    await _close(writer)
    assert version is not None
    return answer, depth


@pytest.mark.parametrize("server_mod", MODULES)
@pytest.mark.parametrize("client_mod", MODULES)
async def test_tls_in_tls_through_a_proxy_snippet(
    onion_ca: OnionCA, client_mod: ModuleType, server_mod: ModuleType
) -> None:
    """The client, the HTTPS proxy and the origin written for asyncio; the
    client's module and the servers' module each asyncio or onion_tls."""
    proxy = await https_proxy(server_mod, onion_ca.server_context(1, "stdlib"))
    origin = await echo_origin(server_mod, onion_ca.server_context(2, "stdlib"))
    try:
        answer, depth = await asyncio.wait_for(
            through_the_proxy(
                client_mod,
                proxy.sockets[0].getsockname()[1],
                origin.sockets[0].getsockname()[1],
                onion_ca,
            ),
            WAIT,
        )
    finally:
        for server in (proxy, origin):
            server.close()
            await server.wait_closed()
    assert answer == b"echo: hello origin\n"
    assert depth == 2


async def test_start_tls_takes_asyncios_argument_name(onion_ca: OnionCA) -> None:
    """``writer.start_tls(sslcontext=...)``: asyncio's name of the context."""
    server, seen = await starttls_server(onion_tls, onion_ca.server_context(1, "stdlib"))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await onion_tls.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"STARTTLS\r\n")
        await reader.readline()
        layer = await writer.start_tls(
            sslcontext=onion_ca.client_context("stdlib"), server_hostname=onion_ca.hostname(1)
        )
        assert layer.depth == 1
        writer.write(b"x\r\n")
        assert await reader.readline() == b"250 secret received: x\r\n"
        await _close(writer)
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [b"x\r\n"]
