"""Mixed stacks: depth 1 stdlib, depth 2 pyOpenSSL, depth 3 stdlib on one
side, the other engine on the other side of every layer - and the contract's
behaviours (exact unwrap boundaries, initial bytes, writes during a
handshake, truncation, any chunking) hold on them as on single-engine
stacks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import onion_tls
from onion_tls.testing import OnionCA, OnionPair, dribble

from .helpers import MIXED, Recorder, close_both, ping, recorder_pair

STACKS = {
    # depth -> (client end's engine, server end's engine)
    "mixed": MIXED,
    "mixed-swapped": {d: (s, c) for d, (c, s) in MIXED.items()},
    "stdlib": dict.fromkeys((1, 2, 3), ("stdlib", "stdlib")),
    "pyopenssl": dict.fromkeys((1, 2, 3), ("pyopenssl", "pyopenssl")),
}
CHUNKINGS = {
    "whole": {},
    "dribble-1": {"chunker": dribble(1)},
    "dribble-7": {"chunker": dribble(7)},
    "coalesce": {"coalesce": True},
}


class Unwrapper(Recorder):
    """Answers a peer's close_notify with stop_tls(), like a protocol that
    goes back to the layer beneath."""

    def __init__(self) -> None:
        super().__init__()
        self.popped: list[asyncio.Future[onion_tls.TLSLayer]] = []

    def eof_received(self) -> bool:
        if not self.transport.layers:
            return False  # the raw connection's EOF: close
        self.eofs += 1
        self.popped.append(self.transport.stop_tls())
        self._changed.set()
        return True


async def _push(
    pair: OnionPair, ca: OnionCA, stack: dict[int, tuple[str, str]], depth: int, **kw: Any
) -> tuple[onion_tls.TLSLayer, onion_tls.TLSLayer]:
    client_engine, server_engine = stack[depth]
    fs = pair.server.start_tls(ca.server_context(depth, server_engine, **kw), server_side=True)  # type: ignore[arg-type]
    fc = pair.client.start_tls(
        ca.client_context(client_engine, **kw),  # type: ignore[arg-type]
        server_hostname=ca.hostname(depth),
    )
    return tuple(await asyncio.gather(fc, fs))  # type: ignore[return-value]


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("stack", sorted(STACKS))
async def test_three_layers_up_and_down(onion_ca: OnionCA, stack: str, chunking: str) -> None:
    layers = STACKS[stack]
    pair = await onion_tls.testing.memory_pair(Recorder, Unwrapper, **CHUNKINGS[chunking])
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Unwrapper = pair.server_protocol  # type: ignore[assignment]
    for depth in (1, 2, 3):
        lc, ls = await _push(pair, onion_ca, layers, depth)
        assert (lc.engine, ls.engine) == layers[depth]
        await ping(pair, b"depth %d" % depth)
    # several records at every depth (fewer when dribbled byte by byte)
    big = bytes(range(256)) * (160 if chunking == "dribble-1" else 1200)
    pair.client.write(big)
    assert await server.read_exactly(len(big)) == big
    pair.server.write(big[::-1])
    assert await client.read_exactly(len(big)) == big[::-1]

    for depth in (3, 2, 1):
        # The last bytes inside the layer, its close_notify and the first
        # bytes beneath leave together; each lands on its own side of the
        # boundary.
        pair.client.write(b"last at %d;" % depth)
        fut = pair.client.stop_tls()
        pair.client.write(b"first beneath %d;" % depth)
        popped = await fut
        assert popped.depth == depth
        want = b"last at %d;first beneath %d;" % (depth, depth)
        assert await server.read_exactly(len(want)) == want
        assert (await server.popped[-1]).depth == depth
        assert len(pair.client.layers) == len(pair.server.layers) == depth - 1
        await ping(pair, b"beneath %d" % depth)
    assert server.eofs == 3
    assert pair.client.layers == ()
    await close_both(pair)


class StartTLSServer(Recorder):
    """Plaintext until "STARTTLS\\r\\n"; then a TLS layer, fed with the bytes
    that came in the same read (a pipelined ClientHello)."""

    context: Any = None

    def data_received(self, data: bytes) -> None:
        if self.context is not None and b"STARTTLS\r\n" in data:
            before, _, rest = data.partition(b"STARTTLS\r\n")
            self.data += before
            self.started = self.transport.start_tls(
                self.context, server_side=True, initial_bytes=rest
            )
            self.context = None
            return
        super().data_received(data)


@pytest.mark.parametrize("stack", ["mixed", "mixed-swapped"])
async def test_pipelined_starttls_inside_a_layer(onion_ca: OnionCA, stack: str) -> None:
    """At depth 2 of a mixed stack: the client sends STARTTLS and its
    ClientHello in one go; the server passes the ClientHello as initial
    bytes; writes made during the handshake arrive inside the new layer."""
    layers = STACKS[stack]
    pair = await onion_tls.testing.memory_pair(Recorder, StartTLSServer, coalesce=True)
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: StartTLSServer = pair.server_protocol  # type: ignore[assignment]
    await _push(pair, onion_ca, layers, 1)
    client_engine, server_engine = layers[2]
    server.context = onion_ca.server_context(2, server_engine)  # type: ignore[arg-type]
    pair.client.write(b"hello;STARTTLS\r\n")
    fc = pair.client.start_tls(
        onion_ca.client_context(client_engine),  # type: ignore[arg-type]
        server_hostname=onion_ca.hostname(2),
    )
    pair.client.write(b"sent during the handshake")
    lc = await fc
    ls = await server.started
    assert (lc.depth, ls.depth) == (2, 2)
    assert (lc.engine, ls.engine) == (client_engine, server_engine)
    want = b"hello;sent during the handshake"
    assert await server.read_exactly(len(want)) == want
    await ping(pair)
    await close_both(pair)
    assert client.lost == [None]


@pytest.mark.parametrize("stack", ["mixed", "mixed-swapped"])
async def test_truncation_inside_a_mixed_stack(onion_ca: OnionCA, stack: str) -> None:
    """The raw connection ends without close_notify at depth 3: the server
    hears of a truncation of layer 3, not of a clean close."""
    layers = STACKS[stack]
    pair, _, server = await recorder_pair()
    for depth in (1, 2, 3):
        await _push(pair, onion_ca, layers, depth)
    await ping(pair)
    pair.pipe.a.close()  # the raw socket of the client, under all layers
    exc = await server.wait_lost()
    assert isinstance(exc, onion_tls.TruncatedError)
    assert exc.depth == 3
    assert server.eofs == 0


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("stack", ["mixed", "mixed-swapped"])
async def test_versions_per_layer(onion_ca: OnionCA, stack: str, version: str) -> None:
    """Each layer negotiates on its own: 1.2 inside 1.3 inside 1.2, ..."""
    layers = STACKS[stack]
    other = "TLSv1.3" if version == "TLSv1.2" else "TLSv1.2"
    pair, _, _ = await recorder_pair()
    for depth, v in ((1, version), (2, other), (3, version)):
        lc, ls = await _push(pair, onion_ca, layers, depth, version=v)
        assert lc.version == ls.version == v
        await ping(pair)
    await close_both(pair)


@pytest.mark.parametrize("stack", ["mixed", "mixed-swapped"])
async def test_garbage_inside_layer_2(onion_ca: OnionCA, stack: str) -> None:
    """Bytes that are not TLS arrive inside layer 1, where layer 2 expects
    records: layer 2 fails (not layer 1), and the connection ends once."""
    layers = STACKS[stack]
    pair, client, server = await recorder_pair()
    for depth in (1, 2):
        await _push(pair, onion_ca, layers, depth)
    await ping(pair)
    # Encrypted by the client's layer 1 on its way out, so only the
    # server's layer 2 sees garbage.
    pair.client_onion.layer_chain.layers()[0].write(b"\x17\x03\x03\x00\x05hello")
    exc = await server.wait_lost()
    assert isinstance(exc, onion_tls.TLSProtocolError)
    assert exc.depth == 2
    assert server.lost == [exc]
    lost = await client.wait_lost()
    assert isinstance(lost, onion_tls.OnionError)


@pytest.mark.parametrize("stack", ["mixed", "mixed-swapped"])
async def test_handshake_timeout_at_depth_2(onion_ca: OnionCA, stack: str) -> None:
    """The server never starts layer 2: the client's handshake times out
    with an error naming depth 2, and the connection ends."""
    layers = STACKS[stack]
    pair, client, server = await recorder_pair()
    await _push(pair, onion_ca, layers, 1)
    client_engine, _ = layers[2]
    fut = pair.client.start_tls(
        onion_ca.client_context(client_engine),  # type: ignore[arg-type]
        server_hostname=onion_ca.hostname(2),
        handshake_timeout=0.05,
    )
    with pytest.raises(onion_tls.TLSTimeoutError) as info:
        await fut
    assert isinstance(info.value, onion_tls.HandshakeError)
    assert info.value.depth == 2
    assert await client.wait_lost() is info.value
    await server.wait_lost()
