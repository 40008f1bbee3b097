"""First end-to-end checks: nested layers over loopback and in memory."""

from __future__ import annotations

import asyncio

import pytest

import onion_tls
from onion_tls.testing import ENGINES, OnionCA, memory_pair

from .helpers import Recorder


@pytest.mark.parametrize("engine", ENGINES)
async def test_three_layers_in_memory(onion_ca: OnionCA, engine: str) -> None:
    pair = await memory_pair(Recorder, Recorder)
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    for depth in (1, 2, 3):
        lc, ls = await pair.start_tls(
            onion_ca,
            depth,
            client_engine=engine,
            server_engine=engine,  # type: ignore[arg-type]
        )
        assert (lc.depth, ls.depth) == (depth, depth)
        assert lc.version == ls.version == "TLSv1.3"
        pair.client.write(b"ping %d" % depth)
        assert await server.read_exactly(6) == b"ping %d" % depth
    assert len(pair.client.layers) == 3
    for depth in (3, 2, 1):
        popped_c, popped_s = await pair.stop_tls()
        assert popped_c.depth == popped_s.depth == depth
    pair.client.write(b"plain")
    assert await server.read_exactly(5) == b"plain"
    pair.client.close()
    for _ in range(50):
        await asyncio.sleep(0)
    assert client.lost == [None]
    assert server.lost == [None]


async def test_loopback_two_layers(onion_ca: OnionCA) -> None:
    loop = asyncio.get_running_loop()
    servers: list[Recorder] = []

    def make() -> Recorder:
        servers.append(Recorder())
        return servers[-1]

    server = await loop.create_server(onion_tls.wrap(make), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, onion = await loop.create_connection(onion_tls.wrap(Recorder), "127.0.0.1", port)
    client: Recorder = onion.transport.get_protocol()  # type: ignore[assignment]
    await asyncio.sleep(0.01)
    srv = servers[0]
    for depth in (1, 2):
        fs = srv.transport.start_tls(onion_ca.server_context(depth, "stdlib"), server_side=True)
        fc = client.transport.start_tls(
            onion_ca.client_context("pyopenssl"), server_hostname=onion_ca.hostname(depth)
        )
        await asyncio.gather(fc, fs)
    payload = bytes(range(256)) * 4096
    client.transport.write(payload)
    assert await srv.read_exactly(len(payload)) == payload
    client.transport.close()
    for _ in range(100):
        if srv.eofs:
            break
        await asyncio.sleep(0.01)
    assert srv.eofs == 1  # close_notify of layer 2: eof_received kept it open
    srv.transport.close()
    for _ in range(100):
        if srv.lost and client.lost:
            break
        await asyncio.sleep(0.01)
    assert client.lost == [None]
    assert srv.lost == [None]
    server.close()
    await server.wait_closed()
