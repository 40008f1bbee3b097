"""Depths 1 to 8: mixed roles, engines and versions per layer, a distinct
certificate per depth, mutual TLS; in memory and over loopback sockets."""

from __future__ import annotations

import asyncio

import pytest

from onion_tls.testing import OnionCA

from .helpers import ENGINE_MODES, KINDS, Pair, connect, engines_for, san, start_layer

MAX_DEPTH = 8
MUTUAL_DEPTHS = (3, 6)


def version_for(version: str, depth: int) -> str:
    if version == "alternate":
        return "TLSv1.3" if depth % 2 else "TLSv1.2"
    return version


async def push_and_check(
    pair: Pair, onion_ca: OnionCA, depth: int, mode: str, version: str
) -> None:
    client_engine, server_engine = engines_for(mode, depth)
    # The client application is the TLS client at odd depths and the TLS
    # server at even depths.
    swap = depth % 2 == 0
    mutual = depth in MUTUAL_DEPTHS
    ver = version_for(version, depth)
    lc, ls = await start_layer(
        pair,
        onion_ca,
        depth,
        client_engine=client_engine,
        server_engine=server_engine,
        swap_roles=swap,
        version=ver,
        mutual=mutual,
    )
    assert lc.depth == ls.depth == depth
    assert lc.server_side is swap
    assert ls.server_side is not swap
    assert lc.version == ls.version == ver
    assert lc.cipher is not None and lc.cipher == ls.cipher
    tls_client, tls_server = (ls, lc) if swap else (lc, ls)
    assert tls_client.engine == client_engine
    assert tls_server.engine == server_engine
    assert tls_client.server_hostname == onion_ca.hostname(depth)
    # a distinct certificate per depth
    assert san(tls_client.peer_certificate) == [onion_ca.hostname(depth)]
    if mutual:
        assert san(tls_server.peer_certificate) == [f"client{depth}.onion.test"]
    else:
        assert tls_server.peer_certificate is None
    assert [x.depth for x in pair.client.layers] == list(range(1, depth + 1))
    assert [x.depth for x in pair.server.layers] == list(range(1, depth + 1))
    assert pair.client.layers[-1].server_side is swap
    assert pair.client.get_extra_info("ssl_version") == ver


async def exchange(pair: Pair, tag: bytes, size: int = 1000) -> None:
    """Data both ways at once, then wait for both."""
    to_server = (b"C>" + tag) * (size // (len(tag) + 2) + 1)
    to_client = (b"S>" + tag) * (size // (len(tag) + 2) + 1)
    pair.client.write(to_server)
    pair.server.write(to_client)
    await pair.s.expect(to_server)
    await pair.c.expect(to_client)


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3", "alternate"])
@pytest.mark.parametrize("mode", ENGINE_MODES)
@pytest.mark.parametrize("kind", KINDS)
async def test_depths_1_to_8_and_back(
    onion_ca: OnionCA, kind: str, mode: str, version: str
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await exchange(pair, b"plain")
        for depth in range(1, MAX_DEPTH + 1):
            await push_and_check(pair, onion_ca, depth, mode, version)
            await exchange(pair, b"depth %d" % depth)
        # unwrap every layer with application data in flight both ways
        for depth in range(MAX_DEPTH, 0, -1):
            before_c = b"client last words at %d" % depth
            before_s = b"server last words at %d" % depth
            pair.client.write(before_c)
            pair.server.write(before_s)
            fc = pair.client.stop_tls()
            fs = pair.server.stop_tls()
            after_c = b"client beneath %d" % depth
            after_s = b"server beneath %d" % depth
            pair.client.write(after_c)  # held, sent through the layer beneath
            pair.server.write(after_s)
            assert len(pair.client.layers) == depth  # stays until the pop
            pc, ps = await asyncio.wait_for(asyncio.gather(fc, fs), 10)
            assert pc.depth == ps.depth == depth
            assert len(pair.client.layers) == len(pair.server.layers) == depth - 1
            await pair.s.expect(before_c + after_c)
            await pair.c.expect(before_s + after_s)
        assert pair.client.layers == ()
        await exchange(pair, b"plain again")
        # and up again
        await push_and_check(pair, onion_ca, 1, mode, version)
        await exchange(pair, b"rewrapped")
        assert pair.c.eofs == pair.s.eofs == 0
        pair.client.close()
        assert await pair.c.wait_lost() is None
        await pair.s.wait_eof()
        # eof_received kept it open (a layer was left); the server closes
        assert not pair.s.lost
        pair.server.close()
        assert await pair.s.wait_lost() is None
        assert pair.c.lost == [None] and pair.s.lost == [None]


@pytest.mark.parametrize("kind", KINDS)
async def test_mutual_tls_both_engines_same_depth(onion_ca: OnionCA, kind: str) -> None:
    """Mutual TLS at depth 2 under a depth-1 layer, each engine as either
    party; both sides see the other's identity of that depth."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await start_layer(pair, onion_ca, 1, client_engine="stdlib", server_engine="pyopenssl")
        for client_engine, server_engine in [
            ("pyopenssl", "stdlib"),
            ("stdlib", "pyopenssl"),
            ("pyopenssl", "pyopenssl"),
            ("stdlib", "stdlib"),
        ]:
            lc, ls = await start_layer(
                pair,
                onion_ca,
                2,
                client_engine=client_engine,  # type: ignore[arg-type]
                server_engine=server_engine,  # type: ignore[arg-type]
                mutual=True,
            )
            assert san(lc.peer_certificate) == ["layer2.onion.test"]
            assert san(ls.peer_certificate) == ["client2.onion.test"]
            peercert = pair.server.get_extra_info("peercert")
            assert ("DNS", "client2.onion.test") in peercert["subjectAltName"]
            await exchange(pair, b"mutual")
            await asyncio.wait_for(pair.stop_tls(), 10)
            assert len(pair.client.layers) == 1
        pair.client.close()
        await pair.s.wait_eof()
        pair.server.close()
        assert await pair.c.wait_lost() is None
        assert await pair.s.wait_lost() is None


@pytest.mark.parametrize("mode", ENGINE_MODES)
@pytest.mark.parametrize("kind", KINDS)
async def test_pipelined_pushes_without_waiting(onion_ca: OnionCA, kind: str, mode: str) -> None:
    """Both sides push layers 1 to 5 at once, without waiting for any
    handshake, then write: each inner handshake waits inside the one around
    it, and the writes arrive at depth 5.  (A write between two pushes would
    reach the peer's next layer as garbage: the peer pushed it already.)"""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        futs = []
        for depth in range(1, 6):
            client_engine, server_engine = engines_for(mode, depth)
            futs.append(
                pair.server.start_tls(
                    onion_ca.server_context(depth, server_engine), server_side=True
                )
            )
            futs.append(
                pair.client.start_tls(
                    onion_ca.client_context(client_engine), server_hostname=onion_ca.hostname(depth)
                )
            )
        pair.client.write(b"c@5;")
        pair.server.write(b"s@5;")
        assert len(pair.client.layers) == 5
        views = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert [v.depth for v in views] == [d for d in range(1, 6) for _ in (0, 1)]
        await pair.s.expect(b"c@5;")
        await pair.c.expect(b"s@5;")
        assert pair.s.received_at(5) == b"c@5;" and pair.c.received_at(5) == b"s@5;"
        for v in pair.client.layers:
            assert san(v.peer_certificate) == [onion_ca.hostname(v.depth)]
