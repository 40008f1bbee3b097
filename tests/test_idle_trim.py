"""Idle layers give back the memory a burst of traffic made their engines
keep: a memory BIO stays as large as the most it ever held, so a pyOpenSSL
layer (direct path) swaps its BIOs for new ones when both are empty.  The
session must not notice: data flows both ways afterwards, at every depth,
and the connection closes cleanly."""

from __future__ import annotations

import asyncio

import pytest

from onion_tls import OnionProtocol
from onion_tls.testing import Engine, OnionCA

from .helpers import WAIT, connect, start_layer

SIZES = [1, 16_384, 300_000]


def engines_of(onion: OnionProtocol) -> list[object]:
    return [layer.engine for layer in onion.layer_chain.layers()]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_trim_between_bursts_keeps_the_sessions(
    onion_ca: OnionCA, depth: int, engine: Engine, size: int
) -> None:
    async with connect("memory") as pair:
        for d in range(1, depth + 1):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        for burst in range(3):
            pair.client.write(b"c" * size)
            pair.server.write(b"s" * size)
            await pair.s.wait_for(lambda b=burst: len(pair.s.data) >= (b + 1) * size, "data")
            await pair.c.wait_for(lambda b=burst: len(pair.c.data) >= (b + 1) * size, "data")
            trimmed = [
                e.trim()  # type: ignore[attr-defined]
                for onion in (pair.client_onion, pair.server_onion)
                for e in engines_of(onion)
            ]
            # Only the direct pyOpenSSL path can renew its BIOs; idle, every
            # one of its layers does (and no stdlib layer claims to).
            direct = type(engines_of(pair.client_onion)[0]).__name__ == "DirectPyOpenSSLEngine"
            assert direct == (engine == "pyopenssl")
            assert trimmed == [direct] * len(trimmed), trimmed
        assert bytes(pair.s.data) == b"c" * size * 3
        assert bytes(pair.c.data) == b"s" * size * 3
        stop = pair.client.stop_tls()
        pair.server.stop_tls()
        assert (await asyncio.wait_for(stop, WAIT)).depth == depth


async def test_no_trim_while_bytes_wait_in_a_bio(onion_ca: OnionCA) -> None:
    """A BIO holding bytes is never swapped (they would be lost)."""
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1)
        (engine,) = engines_of(pair.client_onion)
        if type(engine).__name__ != "DirectPyOpenSSLEngine":
            pytest.fail("the direct pyOpenSSL path is expected on this pyOpenSSL")
        engine.feed(b"\x17\x03\x03\x00\x05")  # type: ignore[attr-defined]
        assert engine.trim() is False  # type: ignore[attr-defined]


async def test_an_idle_connection_is_trimmed_and_a_busy_one_is_not(
    onion_ca: OnionCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter trims a connection once it has been quiet for a period
    (``onion_tls._idle.IDLE_TRIM``), never while traffic flows, and the
    connection works on afterwards."""
    from onion_tls import _idle
    from onion_tls._layer import Layer

    monkeypatch.setattr(_idle, "IDLE_TRIM", 0.05)
    trims: list[Layer] = []
    original = Layer.trim

    def spy(layer: Layer) -> bool:
        trims.append(layer)
        return original(layer)

    monkeypatch.setattr(Layer, "trim", spy)
    async with connect("memory") as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d)
        trims.clear()
        # Busy: a write every 10 ms for 0.4 s (8 periods): no trim.
        for i in range(40):
            pair.client.write(b"%d;" % i)
            await asyncio.sleep(0.01)
        assert trims == []
        # Quiet: trimmed within two periods, every layer, on both sides.
        await asyncio.sleep(0.2)
        assert len(trims) == 4, trims
        pair.server.write(b"after")
        await pair.c.wait_for(lambda: bytes(pair.c.data).endswith(b"after"), "data")
        await pair.s.wait_for(lambda: bytes(pair.s.data).endswith(b"39;"), "data")
        # Nothing more while idle: once per quiet period.
        await asyncio.sleep(0.3)
        assert len(trims) == 8, trims  # the "after" burst made one more period


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_a_layer_that_cannot_trim_encrypts_in_small_slices(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """An engine whose memory BIOs cannot be renewed (the ssl module's)
    keeps its outgoing BIO as large as the most it ever held: a layer hands
    it at most 64 KiB of plaintext at a time and sends that slice's
    ciphertext on before the next, so one 1 MB write leaves the stdlib
    layer in pieces of at most 64 KiB and a bit (the direct pyOpenSSL path,
    which renews its BIOs when idle, takes 256 KiB slices)."""
    size = 1_000_000
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine=engine, server_engine=engine)
        pipe = pair.pipe
        assert pipe is not None
        pipe.auto = False
        pair.client.write(b"w" * size)
        pair.client_onion.send_gathered()
        pieces = [len(chunk) for chunk in pipe.a.outgoing]
        slice_size = 256 * 1024 if engine == "pyopenssl" else 64 * 1024
        records_per_slice = -(-slice_size // 16_384)
        # each slice: its records, each with its header, tag and padding
        assert max(pieces) <= slice_size + 40 * records_per_slice, pieces
        assert len(pieces) == -(-size // slice_size), pieces
        pipe.auto = True
        pipe.kick()
        await pair.s.wait_for(lambda: len(pair.s.data) >= size, "data")
        assert bytes(pair.s.data) == b"w" * size
