"""How-to: test code that stacks TLS layers, with the pytest plugin.

pytest docs/examples/test_howto_testing.py
"""

from __future__ import annotations

import asyncio

import pytest

import onion_tls
from onion_tls.testing import OnionCA, dribble, stream_pair

pytestmark = pytest.mark.onion_tls


async def shout(reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
    """The server under test: an upper-casing line echo."""
    while line := await reader.readline():
        writer.write(line.upper())


async def test_three_layers_one_byte_per_read(onion_pair, onion_ca, onion_engine) -> None:
    async with onion_pair(shout, chunker=dribble(1)) as pair:
        reader, writer = pair.client
        for depth in (1, 2, 3):
            client_layer, server_layer = await pair.start_tls(onion_ca, engine=onion_engine)
            assert (client_layer.depth, server_layer.server_side) == (depth, True)
            writer.write(b"hello %d\n" % depth)
            assert await reader.readline() == b"HELLO %d\n" % depth
        assert [layer.engine for layer in writer.layers] == [onion_engine] * 3


async def test_mixed_engines_mutual_tls(onion_pair, onion_ca: OnionCA) -> None:
    async with onion_pair() as pair:  # no handler: the test drives both ends
        client, server = await pair.start_tls(
            onion_ca, client_engine="stdlib", server_engine="pyopenssl", mutual=True
        )
        assert client.engine == "stdlib" and server.engine == "pyopenssl"
        assert server.peer_certificate is not None  # the client's identity of depth 1
        await pair.start_tls(onion_ca, swap_roles=True, version="TLSv1.2")
        assert pair.client.writer.layers[1].server_side  # the client end serves layer 2
        await pair.stop_tls()
        assert len(pair.server.writer.layers) == 1


async def test_write_during_handshake_waits_for_the_layer(onion_ca: OnionCA) -> None:
    pair = await stream_pair(auto=False)  # nothing moves until the test says so
    (_, cwriter), (sreader, swriter) = pair.client, pair.server
    server_done = swriter.start_tls(onion_ca.server_context(1), server_side=True)
    client_done = cwriter.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
    cwriter.write(b"secret\n")  # made during the handshake: held for the new layer
    assert pair.pipe.sent["a"] == b""  # nothing has crossed yet
    pair.pipe.pump()  # run the handshake (and the held write) to completion
    await asyncio.gather(client_done, server_done)
    assert b"secret" not in pair.pipe.sent["a"]  # it crossed inside TLS
    assert await sreader.readline() == b"secret\n"
    pair.pipe.auto = True  # let the pipe move bytes by itself again
    await pair.aclose()
