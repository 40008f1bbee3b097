"""The tutorial's last step: test the echo protocol in memory, with the
pytest plugin's fixtures (``onion_ca``, ``onion_engine``) and marker.

    pytest docs/examples/test_tutorial_echo.py
"""

from __future__ import annotations

import pytest
from tutorial_echo import EchoClient, EchoServer

from onion_tls.testing import OnionCA, dribble, memory_pair

pytestmark = pytest.mark.onion_tls  # run each async test in a fresh asyncio loop


async def test_push_nest_pop_in_memory(onion_ca: OnionCA, onion_engine: str) -> None:
    # Two onion stacks joined by an in-memory pipe that delivers the byte
    # stream one byte per read: no sockets, and the worst chunking there is.
    pair = await memory_pair(
        EchoClient, lambda: EchoServer(onion_ca, onion_engine), chunker=dribble(1)
    )
    client = pair.client_protocol
    assert isinstance(client, EchoClient)
    transport = pair.client

    for depth in (1, 2):
        assert await client.ask(b"STARTTLS") == b"OK"
        layer = await transport.start_tls(
            onion_ca.client_context(onion_engine), server_hostname=onion_ca.hostname(depth)
        )
        assert layer.depth == depth
        assert await client.ask(b"hi") == b"%d: HI" % depth

    popped = await transport.stop_tls()
    assert popped.depth == 2
    assert await client.ask(b"hi") == b"1: HI"

    transport.close()
    assert await client.closed is None  # a clean close: no error


async def test_wrong_name_fails_the_handshake(onion_ca: OnionCA) -> None:
    import onion_tls

    pair = await memory_pair(EchoClient, lambda: EchoServer(onion_ca))
    client = pair.client_protocol
    assert isinstance(client, EchoClient)
    assert await client.ask(b"STARTTLS") == b"OK"
    with pytest.raises(onion_tls.HandshakeError) as info:
        # layer 1's certificate is for layer1.onion.test
        await pair.client.start_tls(onion_ca.client_context(), server_hostname="evil.example")
    assert info.value.depth == 1
    assert isinstance(await client.closed, onion_tls.HandshakeError)  # connection_lost(exc)
