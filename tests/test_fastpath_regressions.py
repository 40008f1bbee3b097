"""Regressions found by review of the fast paths (scratch buffers, direct
delivery into a BufferedProtocol's buffer, write gathering)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import trustme

import onion_tls
from onion_tls import testing
from onion_tls.testing import Engine, OnionCA

WAIT = 10.0
PAYLOAD = bytes(range(256)) * (2_000_000 // 256)


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.eofs = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += data

    def eof_received(self) -> bool:
        self.eofs += 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def test_onion_protocol_under_asyncios_own_tls() -> None:
    """``create_connection(wrap(...), ssl=)``: asyncio's TLS reads several
    records into ``get_buffer()[offset:]``; none may be lost."""
    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(sctx)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(cctx)
    loop = asyncio.get_running_loop()

    class Sender(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(PAYLOAD)  # type: ignore[attr-defined]
            transport.close()

    server = await loop.create_server(Sender, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    apps: list[_Collect] = []

    def make() -> _Collect:
        apps.append(_Collect())
        return apps[-1]

    _, proto = await loop.create_connection(
        onion_tls.wrap(make), "127.0.0.1", port, ssl=cctx, server_hostname="localhost"
    )
    assert isinstance(proto, asyncio.Protocol) and isinstance(proto, asyncio.BufferedProtocol)
    try:
        await asyncio.wait_for(apps[0].lost, WAIT)
        assert bytes(apps[0].got) == PAYLOAD
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_gathered_answer_goes_out_before_the_close_eof_received_asks_for(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """A server answers with two writes (the second is gathered), then the
    client's close_notify arrives and ``eof_received`` returns None: the
    connection closes, after both answers."""

    class Server(_Collect):
        def data_received(self, data: bytes) -> None:
            self.transport.write(b"A" * 10)
            self.transport.write(b"B" * 10)

        def eof_received(self) -> None:  # type: ignore[override]
            return None

    pair = await testing.memory_pair(_Collect, Server, coalesce=True)
    await pair.start_tls(onion_ca, client_engine=engine, server_engine=engine)
    client = pair.client_protocol
    assert isinstance(client, _Collect)
    pair.client.write(b"request")
    stop = pair.client.stop_tls()
    await asyncio.wait_for(stop, WAIT)
    server = pair.server_protocol
    assert isinstance(server, _Collect)
    assert await asyncio.wait_for(server.lost, WAIT) is None
    assert bytes(client.got) == b"A" * 10 + b"B" * 10
    pair.client.close()
    await asyncio.wait_for(client.lost, WAIT)


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_buffered_app_may_resize_its_buffer_in_buffer_updated(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """asyncio holds no view of the application's buffer once
    ``buffer_updated`` is called: the application may resize it."""

    class Growing(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.got = bytearray()

        def get_buffer(self, sizehint: int) -> bytearray:
            self.buf.extend(bytes(4096))
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.got += self.buf[:nbytes]
            del self.buf[:]

        def eof_received(self) -> bool:
            return True

    app = Growing()
    pair = await testing.memory_pair(lambda: app, _Collect)
    await pair.start_tls(onion_ca, client_engine=engine, server_engine=engine)
    data = bytes(range(256)) * 200  # 51 200 bytes: records larger than the buffer
    pair.server.write(data)
    for _ in range(200):
        if len(app.got) >= len(data):
            break
        await asyncio.sleep(0.01)
    assert bytes(app.got) == data
    pair.client.abort()
    pair.server.abort()
    await asyncio.sleep(0)


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_inner_layer_popped_while_a_full_gather_is_handed_on(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """Layer 1 gathers more plaintext for layer 2 than fits one hand-on; layer
    2 is popped during it (the server stops it from eof_received): what
    follows goes to the application, nothing is lost or misplaced."""

    class Server(_Collect):
        def eof_received(self) -> bool:
            if len(self.transport.layers) == 2:
                self.transport.stop_tls()
                return True
            return False

    pair = await testing.memory_pair(_Collect, Server)
    await pair.start_tls(onion_ca, 1, client_engine=engine, server_engine=engine)
    await pair.start_tls(onion_ca, 2, client_engine=engine, server_engine=engine)
    assert pair.pipe is not None
    pair.pipe.auto = False
    pair.pipe.coalesce = True
    for _ in range(60):
        pair.server.write(b"d" * 4000)
        await asyncio.sleep(0)
    pair.server.write(b"e" * 4400)
    await asyncio.sleep(0)
    stop = pair.client.stop_tls()
    pair.pipe.step(pair.pipe.a)  # our close_notify to the server, which answers
    await asyncio.sleep(0)
    pair.server.write(b"after1")
    await asyncio.sleep(0)
    pair.server.write(b"after2")
    await asyncio.sleep(0)
    pair.pipe.auto = True
    pair.pipe.pump()
    popped = await asyncio.wait_for(stop, WAIT)
    assert popped.depth == 2
    client = pair.client_protocol
    assert isinstance(client, _Collect)
    for _ in range(100):
        if client.got.endswith(b"after2"):
            break
        await asyncio.sleep(0.01)
    assert bytes(client.got) == b"d" * 240_000 + b"e" * 4400 + b"after1after2"
    assert len(pair.client.layers) == 1
    pair.client.close()
    await asyncio.wait_for(client.lost, WAIT)
