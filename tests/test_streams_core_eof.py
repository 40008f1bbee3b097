"""EOFs that become due when a layer is popped (found through the streams,
checked here at the protocol level): a layer's close_notify that came while a
layer above it was still linked, the socket's EOF that came while layers
were linked, and an EOF still waiting in the backlog for a layer the
application has popped meanwhile."""

from __future__ import annotations

import asyncio

import onion_tls
from onion_tls.testing import OnionCA, memory_pair


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[object] = []
        self.transport: onion_tls.OnionTransport
        self.pause_on_data = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.events.append(data)
        if self.pause_on_data:  # as a StreamReader does when its buffer is full
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.events.append(("eof", len(self.transport.layers)))
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append(("lost", exc))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_eofs_of_the_layers_beneath_come_as_they_are_uncovered(onion_ca: OnionCA) -> None:
    pair = await memory_pair(Recorder, Recorder)
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    await pair.start_tls(onion_ca)
    await pair.start_tls(onion_ca)
    pair.server.write(b"x")
    pair.server.close()  # close_notify on 2, then 1, then the socket's EOF
    await settle()
    assert client.events == [b"x", ("eof", 2)]
    await pair.client.stop_tls()
    await settle()
    # Layer 1's close_notify came while layer 2 was above it: it is due now.
    assert client.events[2:] == [("eof", 1)]
    await pair.client.stop_tls()
    await settle()
    # And the socket's EOF, which came while layers were linked.
    assert client.events[3:4] == [("eof", 0)]
    pair.client.close()
    await settle()
    assert client.events[4:] == [("lost", None)]


async def test_a_pending_eof_of_a_popped_layer_is_dropped(onion_ca: OnionCA) -> None:
    pair = await memory_pair(Recorder, Recorder, coalesce=True)
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    await pair.start_tls(onion_ca)
    client.pause_on_data = True
    pair.server.write(b"inside")
    stop = pair.server.stop_tls()
    await settle()
    # The data came in the same read as the close_notify: the EOF waits.
    assert client.events == [b"inside"]
    assert pair.client.layers[0].state == "peer closed"
    client.pause_on_data = False
    popped = await pair.client.stop_tls()  # the application unwraps anyway
    assert popped.depth == 1
    await stop
    pair.server.write(b"plain")
    await settle()
    pair.client.resume_reading()
    await settle()
    # The layer's data is delivered; its EOF is not: the layer is gone.
    assert b"".join(e for e in client.events if isinstance(e, bytes)) == b"insideplain"
    assert not [e for e in client.events if not isinstance(e, bytes)]
    pair.client.close()
    await settle()
