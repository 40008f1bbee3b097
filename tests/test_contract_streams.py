"""Acceptance: the streams API of DESIGN.md (open_connection, start_server,
StreamWriter.start_tls/stop_tls/layers), and "the EOF that a layer's
close_notify produces is not the end of the stream"."""

from __future__ import annotations

import asyncio

import pytest

import onion_tls

from .contract_kit import ENGINES, HOST, PKI, WAIT


@pytest.mark.parametrize(("cengine", "sengine"), [(a, b) for a in ENGINES for b in ENGINES])
async def test_starttls_up_and_down_with_streams(cengine: str, sengine: str) -> None:
    pki = PKI()
    done: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        seen: list[bytes] = []
        try:
            seen.append(await reader.readline())  # STARTTLS
            writer.write(b"GO\n")
            layer = await writer.start_tls(pki.server(sengine), server_side=True)
            assert layer.depth == 1 and writer.layers == (layer,)
            seen.append(await reader.readline())
            writer.write(seen[-1].upper())
            seen.append(await reader.read())  # the layer's EOF: b""
            await writer.stop_tls()
            assert writer.layers == ()
            seen.append(await reader.readline())  # the same reader goes on
            writer.write(b"bye\n")
            writer.close()
            await writer.wait_closed()
            done.set_result(seen)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            done.set_exception(exc)

    server = await onion_tls.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(WAIT):
            reader, writer = await onion_tls.open_connection("127.0.0.1", port)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            layer = await writer.start_tls(pki.client(cengine), server_hostname=HOST)
            assert layer.version == "TLSv1.3" and writer.layers == (layer,)
            writer.write(b"inside\n")
            assert await reader.readline() == b"INSIDE\n"
            popped = await writer.stop_tls()
            assert popped.depth == 1 and writer.layers == ()
            writer.write(b"plain again\n")
            assert await reader.readline() == b"bye\n"
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            assert await done == [b"STARTTLS\n", b"inside\n", b"", b"plain again\n"]
    finally:
        server.close()
        await server.wait_closed()
