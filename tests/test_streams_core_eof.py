"""EOFs that become due when a layer is popped (found through the streams,
checked here at the protocol level): a layer's close_notify that came while a
layer above it was still linked, the socket's EOF that came while layers
were linked, and an EOF still waiting in the backlog for a layer the
application has popped meanwhile."""

from __future__ import annotations

from onion_tls.testing import OnionCA, OnionPair, memory_pair

from .helpers import Recorder, settle


def keep_open(pair: OnionPair) -> None:
    """Both applications answer every EOF by keeping the connection open
    (as the streams do until the application reads the EOF)."""
    for app in (pair.client_protocol, pair.server_protocol):
        assert isinstance(app, Recorder)
        app.eof_result = True


async def test_eofs_of_the_layers_beneath_come_as_they_are_uncovered(onion_ca: OnionCA) -> None:
    # The peer only shuts its writing side, so our close_notify answers reach it.
    pair = await memory_pair(Recorder, Recorder, half_close=True)
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    keep_open(pair)
    await pair.start_tls(onion_ca)
    await pair.start_tls(onion_ca)
    pair.server.write(b"x")
    pair.server.close()  # close_notify on 2, then 1, then the socket's EOF
    await settle()
    assert client.events == [("data", b"x", 2), ("eof", 2)]
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
    keep_open(pair)
    await pair.start_tls(onion_ca)
    # as a StreamReader does when its buffer is full
    client.on_data = lambda data: client.transport.pause_reading()
    pair.server.write(b"inside")
    stop = pair.server.stop_tls()
    await settle()
    # The data came in the same read as the close_notify: the EOF waits.
    assert client.events == [("data", b"inside", 1)]
    assert pair.client.layers[0].state == "peer closed"
    client.on_data = None
    popped = await pair.client.stop_tls()  # the application unwraps anyway
    assert popped.depth == 1
    await stop
    pair.server.write(b"plain")
    await settle()
    pair.client.resume_reading()
    await settle()
    # The layer's data is delivered; its EOF is not: the layer is gone.
    assert b"".join(e[1] for e in client.events if e[0] == "data") == b"insideplain"
    assert not [e for e in client.events if e[0] != "data"]
    pair.client.close()
    await settle()
