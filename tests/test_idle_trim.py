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
            # one of its layers does.
            expected = engine == "pyopenssl" and type(engines_of(pair.client_onion)[0]).__name__
            assert all(trimmed) == (expected == "DirectPyOpenSSLEngine"), trimmed
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
