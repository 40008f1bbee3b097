"""Flow control through every layer: pause_writing/resume_writing from the
bytes buffered in the layers and in the socket; pause_reading stops delivery
but never a handshake or shutdown in progress; large writes arrive intact."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from onion_tls import TLSLayer
from onion_tls.testing import Engine, OnionCA

from .helpers import (
    ENGINE_PAIR_IDS,
    ENGINE_PAIRS,
    KINDS,
    WAIT,
    Pair,
    connect,
    settle,
    start_layer,
)


def flow_events(pair: Pair, side: str = "c") -> list[str]:
    rec = pair.c if side == "c" else pair.s
    return [ev[0] for ev in rec.events if ev[0] in ("pause_writing", "resume_writing")]


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_socket_buffer_pauses_and_resumes_the_app(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """The socket's own buffer (nothing moves until the pipe is pumped)
    crosses the high-water mark: the app is paused; draining it resumes."""
    async with connect("memory") as pair:
        for d in range(1, depth + 1):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        assert pair.pipe is not None
        pair.pipe.auto = False
        pair.client.set_write_buffer_limits(high=8192, low=2048)
        assert pair.client.get_write_buffer_limits() == (2048, 8192)
        pair.client.write(b"a" * 4000)
        assert flow_events(pair) == []
        pair.client.write(b"b" * 6000)
        assert flow_events(pair) == ["pause_writing"]
        assert pair.client.get_write_buffer_size() > 8192
        pair.pipe.auto = True
        pair.pipe.kick()
        await pair.s.expect(b"a" * 4000 + b"b" * 6000)
        assert flow_events(pair) == ["pause_writing", "resume_writing"]
        assert pair.client.get_write_buffer_size() == 0


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_writes_queued_in_a_handshaking_layer_pause_the_app(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    """Plaintext waiting inside a layer whose handshake runs counts: the app
    is paused while it is above the mark and resumed once it is sent."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await start_layer(
            pair, onion_ca, 1, client_engine=client_engine, server_engine=server_engine
        )
        pair.client.set_write_buffer_limits(high=10_000)
        fc = pair.client.start_tls(
            onion_ca.client_context(client_engine), server_hostname=onion_ca.hostname(2)
        )
        payload = bytes(range(256)) * 50  # 12800 bytes
        pair.client.write(payload[:6000])
        assert flow_events(pair) == []
        pair.client.write(payload[6000:])
        assert flow_events(pair) == ["pause_writing"]
        assert pair.client.get_write_buffer_size() >= len(payload)
        fs = pair.server.start_tls(onion_ca.server_context(2, server_engine), server_side=True)
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await pair.s.expect(payload)
        await pair.c.wait_for(lambda: len(flow_events(pair)) == 2, "resume_writing")
        assert flow_events(pair) == ["pause_writing", "resume_writing"]
        assert pair.s.received_at(2) == payload


async def test_writes_held_by_a_pending_stop_pause_the_app(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine="stdlib", server_engine="pyopenssl")
        pair.client.set_write_buffer_limits(high=1000)
        pair.s.eof_result = True
        fut = pair.client.stop_tls()
        pair.client.write(b"h" * 1500)  # held until the pop
        assert flow_events(pair) == ["pause_writing"]
        await pair.s.wait_eof()
        await settle()
        assert bytes(pair.s.data) == b""
        pair.server.stop_tls()
        await asyncio.wait_for(fut, WAIT)
        await pair.s.expect(b"h" * 1500)
        assert pair.s.received_at(0) == b"h" * 1500
        await pair.c.wait_for(lambda: len(flow_events(pair)) == 2, "resume_writing")
        assert flow_events(pair) == ["pause_writing", "resume_writing"]


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_loopback_socket_backpressure_with_a_paused_reader(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """Over a real socket: the server stops reading, the client writes until
    it is told to pause (every layer and the kernel buffers are full), then
    the server resumes and everything arrives, in order."""
    async with connect("loopback") as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        pair.server.pause_reading()
        assert not pair.server.is_reading()
        chunk = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        paused = asyncio.get_running_loop().create_future()

        def on_pause() -> None:
            if not paused.done():
                paused.set_result(None)

        original = pair.c.pause_writing

        def pause_writing() -> None:
            original()
            on_pause()

        pair.c.pause_writing = pause_writing  # type: ignore[method-assign]
        while not paused.done():
            pair.client.write(chunk)
            sent += len(chunk)
            assert sent < 256 * 1024 * 1024, "never paused"
            await asyncio.sleep(0)
        assert pair.client.get_write_buffer_size() > 0
        await settle()
        assert flow_events(pair) == ["pause_writing"]
        assert bytes(pair.s.data) == b""  # paused: nothing delivered
        pair.server.resume_reading()
        got = await pair.s.read_exactly(sent)
        assert got == chunk * (sent // len(chunk))
        await pair.c.wait_for(lambda: len(flow_events(pair)) == 2, "resume_writing")
        assert flow_events(pair) == ["pause_writing", "resume_writing"]


# -- pause_reading ---------------------------------------------------------------


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_pause_reading_does_not_stall_handshake_or_shutdown(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await start_layer(
            pair, onion_ca, 1, client_engine=client_engine, server_engine=server_engine
        )
        pair.client.pause_reading()
        assert not pair.client.is_reading()
        # a handshake started while paused completes
        fc = pair.client.start_tls(
            onion_ca.client_context(client_engine), server_hostname=onion_ca.hostname(2)
        )
        fs = pair.server.start_tls(onion_ca.server_context(2, server_engine), server_side=True)
        pair.server.write(b"data while the client is paused")
        lc, _ = await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        assert lc.version is not None
        await settle(50)
        assert bytes(pair.c.data) == b""  # delivery stopped
        # a shutdown while paused completes too (the server answers)
        futs: list[asyncio.Future[TLSLayer]] = []

        def answer() -> None:
            futs.append(pair.server.stop_tls())
            pair.server.write(b"beneath")

        pair.s.on_eof = answer
        stop = pair.client.stop_tls()
        assert (await asyncio.wait_for(stop, WAIT)).depth == 2
        await pair.s.wait_for(lambda: bool(futs))
        await asyncio.wait_for(futs[0], WAIT)
        await settle(50)
        assert bytes(pair.c.data) == b""
        pair.client.resume_reading()
        assert pair.client.is_reading()
        await pair.c.expect(b"data while the client is paused" + b"beneath")
        # (what waited while paused is delivered after the pop, in order)


async def test_pause_reading_holds_eof_until_resumed(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1)
        pair.client.pause_reading()
        pair.c.eof_result = True
        pair.server.write(b"before")
        fs = pair.server.stop_tls()
        await settle(50)
        assert pair.c.eofs == 0 and bytes(pair.c.data) == b""
        assert not fs.done()
        pair.client.resume_reading()
        await pair.c.wait_eof()
        assert pair.c.transcript()[:2] == [("data", b"before", 1), ("eof", 1)]
        pair.client.stop_tls()
        await asyncio.wait_for(fs, WAIT)


# -- large writes ------------------------------------------------------------------


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_large_writes_both_ways_at_depth_3(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    size = 8 * 1024 * 1024
    up = hashlib.sha256(b"up").digest() * (size // 32)
    down = memoryview(bytearray(hashlib.sha256(b"down").digest() * (size // 32)))
    async with connect(kind) as pair:  # type: ignore[arg-type]
        for d in (1, 2, 3):
            await start_layer(
                pair, onion_ca, d, client_engine=client_engine, server_engine=server_engine
            )
        pair.client.write(up)
        pair.server.write(down)  # a memoryview of a bytearray
        pair.server.writelines([b"tail", bytearray(b"-end")])
        got_up = await pair.s.read_exactly(size)
        got_down = await pair.c.read_exactly(size + 8)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert got_down == bytes(down) + b"tail-end"
        assert pair.s.received_at(3) == up
        await asyncio.wait_for(pair.stop_tls(), WAIT)
        assert len(pair.client.layers) == 2
