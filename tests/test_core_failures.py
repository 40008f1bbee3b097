"""Failures end in a failed future that names the depth and the reason, and
exactly one connection_lost(exc) on each application: wrong hostname, unknown
CA, version mismatch, garbage at each depth (during and after the
handshake), a peer that closes or vanishes mid-handshake and mid-shutdown,
truncation, handshake and shutdown timeouts.  The conftest fails any test
that leaves something for the loop's exception handler or a pending task,
and warnings (unclosed transports) are errors."""

from __future__ import annotations

import asyncio
import re
import socket
import struct

import pytest

from onion_tls import (
    HandshakeError,
    OnionError,
    TLSLayer,
    TLSProtocolError,
    TLSTimeoutError,
    TruncatedError,
)
from onion_tls.testing import Engine, OnionCA

from .helpers import (
    ENGINE_PAIR_IDS,
    ENGINE_PAIRS,
    KINDS,
    WAIT,
    ManualTLS,
    Pair,
    Recorder,
    connect,
    start_layer,
)

ENGINES = ["pyopenssl", "stdlib"]


async def failed(
    fut: asyncio.Future[TLSLayer], cls: type[BaseException], depth: int, reason: str
) -> BaseException:
    """``fut`` fails with ``cls`` at ``depth``, its message naming the depth
    and matching ``reason`` (a regex, case-insensitive)."""
    with pytest.raises(cls) as info:
        await asyncio.wait_for(fut, WAIT)
    exc = info.value
    assert isinstance(exc, OnionError)
    assert exc.depth == depth, exc
    assert f"TLS layer {depth}" in str(exc)
    assert re.search(reason, str(exc), re.IGNORECASE), f"{reason!r} not in {exc}"
    return exc


async def one_loss(rec: Recorder) -> BaseException | None:
    """Exactly one connection_lost; returns its argument."""
    exc = await rec.wait_lost()
    await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(rec.lost) == 1, rec.lost
    return exc


async def push_good(pair: Pair, ca: OnionCA, upto: int, engines: tuple[Engine, Engine]) -> None:
    for d in range(1, upto + 1):
        await start_layer(
            pair, ca, d, client_engine=engines[0], server_engine=engines[1], swap_roles=d == 2
        )


# -- verification and negotiation ----------------------------------------------

CASES = {
    "wrong hostname": r"hostname mismatch.*wrong\.onion\.test",
    "unknown CA": r"certificate verify failed: unable to get local issuer certificate",
    "version mismatch": r"protocol version",
}


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
async def test_handshake_refused(
    onion_ca: OnionCA,
    kind: str,
    case: str,
    client_engine: Engine,
    server_engine: Engine,
    depth: int,
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth - 1, (server_engine, client_engine))
        host = onion_ca.hostname(depth)
        sctx = onion_ca.server_context(depth, server_engine)
        if case == "wrong hostname":
            cctx = onion_ca.client_context(client_engine)
            host = "wrong.onion.test"
        elif case == "unknown CA":
            cctx = OnionCA().client_context(client_engine)
        else:
            cctx = onion_ca.client_context(client_engine, version="TLSv1.2")
            sctx = onion_ca.server_context(depth, server_engine, version="TLSv1.3")
        fs = pair.server.start_tls(sctx, server_side=True)
        fc = pair.client.start_tls(cctx, server_hostname=host)
        pair.client.write(b"queued during the handshake, never sent")
        if case == "version mismatch":
            exc_c = await failed(fc, HandshakeError, depth, r"refused.*protocol version")
            exc_s = await failed(fs, HandshakeError, depth, r"unsupported protocol|version")
        else:
            exc_c = await failed(fc, HandshakeError, depth, CASES[case])
            # the server learns it from the client's alert
            exc_s = await failed(fs, HandshakeError, depth, r"refused.*alert")
        assert await one_loss(pair.c) is exc_c
        assert await one_loss(pair.s) is exc_s
        # Never sent: not on the wire (plaintext there would show at depth
        # 1), and not handed to the peer through a weaker layer.
        if pair.pipe is not None:
            assert b"never sent" not in bytes(pair.pipe.sent["a"])
        assert b"never sent" not in bytes(pair.s.data)
        assert pair.client.is_closing()


# -- garbage -------------------------------------------------------------------


@pytest.mark.parametrize("server_side", [False, True], ids=["as-client", "as-server"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8])
async def test_garbage_during_handshake_at_each_depth(
    onion_ca: OnionCA, depth: int, engine: Engine, server_side: bool
) -> None:
    """The peer answers a new layer with an HTTP request instead of TLS."""
    async with connect("memory") as pair:
        await push_good(pair, onion_ca, depth - 1, (engine, engine))
        if server_side:
            fut = pair.client.start_tls(onion_ca.server_context(depth, engine), server_side=True)
        else:
            fut = pair.client.start_tls(
                onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
            )
        pair.server.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        exc = await failed(fut, HandshakeError, depth, r"not a TLS record \(content type 71\)")
        assert await one_loss(pair.c) is exc
        peer_exc = await one_loss(pair.s)
        if depth > 1:
            # the peer's layers were cut without close_notify: truncation
            assert isinstance(peer_exc, TruncatedError)


@pytest.mark.parametrize("garbage", ["not-a-record", "bad-mac", "oversized"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
async def test_garbage_after_handshake_at_each_depth(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine, garbage: str
) -> None:
    """A hand-driven peer at ``depth`` sends a good record and then garbage
    in the same read: the good data is delivered, then the layer fails."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth - 1, (engine, engine))
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
        )
        peer = ManualTLS(pair.s, onion_ca.server_context(depth, "stdlib"), server_side=True)
        await peer.handshake()
        await asyncio.wait_for(fc, WAIT)
        bad = {
            "not-a-record": b"\x00garbage garbage garbage",
            "bad-mac": b"\x17\x03\x03\x00\x20" + bytes(range(32)),
            "oversized": b"\x17\x03\x03\xff\xff",
        }[garbage]
        pair.c.eof_result = True
        pair.server.write(peer.encrypt(b"good data first") + bad)
        reason = {
            "not-a-record": r"not a TLS record \(content type 0\)",
            "bad-mac": r"bad record mac|decryption failed|decrypt",
            "oversized": r"TLS record too long",
        }[garbage]
        exc = await one_loss(pair.c)
        assert isinstance(exc, TLSProtocolError), exc
        assert exc.depth == depth
        assert f"TLS layer {depth}" in str(exc)
        assert re.search(reason, str(exc), re.IGNORECASE), exc
        assert bytes(pair.c.data) == b"good data first"
        assert pair.c.received_at(depth) == b"good data first"
        await one_loss(pair.s)


# -- the peer goes away ----------------------------------------------------------


def vanish(pair: Pair, how: str) -> None:
    """The server end's socket closes (FIN) or resets (RST), whatever its
    layers were doing."""
    raw = pair.server_onion.raw_transport
    assert raw is not None
    if how == "closes":
        raw.close()
        return
    sock = raw.get_extra_info("socket")
    if sock is not None:
        # asyncio's abort() closes the socket (a FIN); linger 0 makes it a RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.abort()


@pytest.mark.parametrize("how", ["closes", "resets"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
async def test_peer_goes_away_mid_handshake(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine, how: str
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth - 1, (engine, engine))
        fut = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
        )
        # our ClientHello reached the peer's application (it has no layer there)
        await pair.s.wait_for(lambda: pair.s.received_at(depth - 1).startswith(b"\x16\x03"))
        vanish(pair, how)
        if how == "closes":
            exc = await failed(fut, HandshakeError, depth, r"peer closed the connection during")
        else:
            # Under a layer a reset is an OnionError naming the depth, the
            # OSError as its cause (rule 14).
            exc = await failed(fut, HandshakeError, depth, r"lost \(Connection\w*Error")
            assert isinstance(exc.__cause__, ConnectionError), exc.__cause__
        assert await one_loss(pair.c) is exc
        await one_loss(pair.s)


@pytest.mark.parametrize("how", ["closes", "resets"])
@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
async def test_peer_goes_away_mid_shutdown(
    onion_ca: OnionCA,
    kind: str,
    depth: int,
    client_engine: Engine,
    server_engine: Engine,
    how: str,
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth, (client_engine, server_engine))
        pair.s.eof_result = True  # the peer does not answer our close_notify
        fut = pair.client.stop_tls()
        await pair.s.wait_eof()
        vanish(pair, how)
        exc = await failed(fut, TruncatedError, depth, r"before the peer answered")
        if how == "resets":
            assert isinstance(exc.__cause__, ConnectionError), exc.__cause__
        assert await one_loss(pair.c) is exc
        await one_loss(pair.s)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
async def test_eof_without_close_notify_is_truncation(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine
) -> None:
    """A TCP EOF inside an open layer is told apart from a clean close."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth, (engine, engine))
        pair.server.write(b"last data")
        await pair.c.expect(b"last data")
        vanish(pair, "closes")
        exc = await one_loss(pair.c)
        assert isinstance(exc, TruncatedError), exc
        assert exc.depth == depth
        assert f"TLS layer {depth}" in str(exc) and "truncated" in str(exc)
        assert pair.c.eofs == 0


@pytest.mark.parametrize("engine", ENGINES)
async def test_peer_closes_outer_layer_under_an_open_inner_one(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """A close_notify on layer 1 while layer 2 is open cuts layer 2 short."""
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine=engine, server_engine=engine)
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(2)
        )
        peer = ManualTLS(pair.s, onion_ca.server_context(2, "stdlib"), server_side=True)
        await peer.handshake()
        await asyncio.wait_for(fc, WAIT)
        # the peer's application pops layer 1 from under its own layer 2
        pair.s.eof_result = True
        pair.server.stop_tls()
        exc = await one_loss(pair.c)
        assert isinstance(exc, TruncatedError), exc
        assert exc.depth == 2
        assert "closed layer 1" in str(exc)
        await one_loss(pair.s)


# -- timeouts --------------------------------------------------------------------


@pytest.mark.parametrize("server_side", [False, True], ids=["as-client", "as-server"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
async def test_handshake_timeout(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine, server_side: bool
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth - 1, (engine, engine))
        if server_side:
            ctx = onion_ca.server_context(depth, engine)
            fut = pair.client.start_tls(ctx, server_side=True, handshake_timeout=0.2)
        else:
            fut = pair.client.start_tls(
                onion_ca.client_context(engine),
                server_hostname=onion_ca.hostname(depth),
                handshake_timeout=0.2,
            )
        exc = await failed(fut, HandshakeError, depth, r"did not finish within 0\.2 s")
        assert isinstance(exc, TLSTimeoutError)
        assert isinstance(exc, TimeoutError)
        assert await one_loss(pair.c) is exc
        await one_loss(pair.s)


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
async def test_shutdown_timeout(
    onion_ca: OnionCA, kind: str, depth: int, client_engine: Engine, server_engine: Engine
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push_good(pair, onion_ca, depth, (client_engine, server_engine))
        pair.s.eof_result = True  # keeps the layer, never answers
        fut = pair.client.stop_tls(timeout=0.2)
        exc = await failed(
            fut, TLSTimeoutError, depth, r"did not answer close_notify within 0\.2 s"
        )
        assert await one_loss(pair.c) is exc
        assert pair.s.eofs == 1
        # In memory the abort is a reset the peer sees; over a socket it is
        # a FIN after every close_notify the peer had kept open: the peer
        # is not told twice, and closes when it likes.
        pair.server.close()
        await one_loss(pair.s)


async def test_handshake_and_stop_timeouts_are_checked(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match="handshake_timeout"):
                pair.client.start_tls(onion_ca.client_context(), handshake_timeout=bad)
        assert pair.client.layers == ()
        await start_layer(pair, onion_ca, 1)
        with pytest.raises(ValueError, match="timeout"):
            pair.client.stop_tls(timeout=0)
        assert len(pair.client.layers) == 1
        # None: no limit; the stop still completes when the peer answers
        pair.s.eof_result = True
        fut = pair.client.stop_tls(timeout=None)
        await pair.s.wait_eof()
        pair.server.stop_tls(timeout=None)
        assert (await asyncio.wait_for(fut, WAIT)).depth == 1
