"""stop_tls: initiated by either side or both at once, with data in flight
both ways, down to plaintext and back up, several cycles; bytes of the layer
beneath in the same read as the close_notify; a peer close_notify without a
local stop_tls (eof_received, no pop; falsy closes; a later stop_tls pops and
delivers the held bytes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from onion_tls import TLSLayer
from onion_tls.testing import Engine, OnionCA, dribble

from .helpers import (
    ENGINE_PAIR_IDS,
    ENGINE_PAIRS,
    WAIT,
    ManualTLS,
    Pair,
    Recorder,
    connect,
    settle,
    start_layer,
)

# memory: one read per write; coalesce: everything pending in one read (the
# close_notify and the bytes beneath it together); dribble: one byte a read.
VARIANTS = ("memory", "coalesce", "dribble", "loopback")


@contextlib.asynccontextmanager
async def variant_pair(variant: str) -> AsyncIterator[Pair]:
    if variant == "loopback":
        cm = connect("loopback")
    elif variant == "coalesce":
        cm = connect("memory", coalesce=True)
    elif variant == "dribble":
        cm = connect("memory", chunker=dribble(1))
    else:
        cm = connect("memory")
    async with cm as pair:
        yield pair


def answer_with_stop(rec: Recorder, futs: list[asyncio.Future[TLSLayer]]) -> None:
    """On the peer's close_notify: a last word inside the layer, stop_tls()
    (which pops at once: theirs has come), then a first word beneath.
    eof_received then returns a falsy value: that must not close."""

    def on_eof() -> None:
        depth = len(rec.transport.layers)
        rec.transport.write(b"R-last-%d;" % depth)
        futs.append(rec.transport.stop_tls())
        assert len(rec.transport.layers) == depth - 1  # popped at once
        rec.transport.write(b"R-beneath-%d;" % depth)
        rec.eof_result = False

    rec.on_eof = on_eof


async def close_both(pair: Pair) -> None:
    pair.client.close()
    pair.server.close()
    assert await pair.c.wait_lost() is None
    assert await pair.s.wait_lost() is None


async def pop_once(pair: Pair, initiator: str, depth: int) -> None:
    """Pop layer ``depth`` with data in flight both ways and check where
    every byte arrived."""
    c, s = pair.c, pair.s
    c.at_depth.clear()
    s.at_depth.clear()
    eofs = (c.eofs, s.eofs)
    if initiator == "both":
        pair.client.write(b"C-last-%d;" % depth)
        pair.server.write(b"S-last-%d;" % depth)
        fc = pair.client.stop_tls()
        fs = pair.server.stop_tls()
        pair.client.write(b"C-beneath-%d;" % depth)
        pair.server.write(b"S-beneath-%d;" % depth)
        lc, ls = await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        assert lc.depth == ls.depth == depth
        await s.expect(b"C-last-%d;C-beneath-%d;" % (depth, depth))
        await c.expect(b"S-last-%d;S-beneath-%d;" % (depth, depth))
        assert (c.eofs, s.eofs) == eofs  # answered stops are not EOFs
        assert s.received_at(depth) == b"C-last-%d;" % depth
        assert s.received_at(depth - 1) == b"C-beneath-%d;" % depth
        assert c.received_at(depth) == b"S-last-%d;" % depth
        assert c.received_at(depth - 1) == b"S-beneath-%d;" % depth
        assert [d for d, _ in s.at_depth] == sorted((d for d, _ in s.at_depth), reverse=True)
        return
    ini_t, res_t = (
        (pair.client, pair.server) if initiator == "client" else (pair.server, pair.client)
    )
    ini, res = (c, s) if initiator == "client" else (s, c)
    futs: list[asyncio.Future[TLSLayer]] = []
    answer_with_stop(res, futs)
    ini_t.write(b"I-last-%d;" % depth)
    res_t.write(b"R-early-%d;" % depth)  # crosses our close_notify
    fut = ini_t.stop_tls()
    again = ini_t.stop_tls()  # the same pop, a future of its own (rule 13)
    assert again is not fut
    ini_t.write(b"I-beneath-%d;" % depth)  # held until the pop
    assert len(ini_t.layers) == depth
    popped = await asyncio.wait_for(fut, WAIT)
    assert popped.depth == depth
    assert await asyncio.wait_for(again, WAIT) is popped
    assert len(ini_t.layers) == depth - 1
    await res.wait_for(lambda: bool(futs), "the responder's stop_tls")
    assert (await asyncio.wait_for(futs[0], WAIT)).depth == depth
    await res.expect(b"I-last-%d;I-beneath-%d;" % (depth, depth))
    await ini.expect(b"R-early-%d;R-last-%d;R-beneath-%d;" % (depth, depth, depth))
    assert ini.eofs == eofs[0 if initiator == "client" else 1]
    assert res.eofs == eofs[1 if initiator == "client" else 0] + 1
    assert res.received_at(depth) == b"I-last-%d;" % depth
    assert res.received_at(depth - 1) == b"I-beneath-%d;" % depth
    assert ini.received_at(depth) == b"R-early-%d;R-last-%d;" % (depth, depth)
    assert ini.received_at(depth - 1) == b"R-beneath-%d;" % depth
    res.on_eof = None
    res.eof_result = None


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("initiator", ["client", "server", "both"])
@pytest.mark.parametrize("variant", VARIANTS)
async def test_stop_tls_cycles_down_to_plaintext_and_back(
    onion_ca: OnionCA, variant: str, initiator: str, client_engine: Engine, server_engine: Engine
) -> None:
    async with variant_pair(variant) as pair:
        cycles = 2 if variant == "dribble" else 3
        for cycle in range(cycles):
            for depth in (1, 2):
                await start_layer(
                    pair,
                    onion_ca,
                    depth,
                    client_engine=client_engine,
                    server_engine=server_engine,
                    swap_roles=(depth + cycle) % 2 == 0,
                )
                pair.client.write(b"up %d" % depth)
                await pair.s.expect(b"up %d" % depth)
            for depth in (2, 1):
                await pop_once(pair, initiator, depth)
            assert pair.client.layers == pair.server.layers == ()
            pair.server.write(b"plaintext %d" % cycle)
            await pair.c.expect(b"plaintext %d" % cycle)
        assert not pair.c.lost and not pair.s.lost
        await close_both(pair)


@pytest.mark.parametrize("variant", VARIANTS)
async def test_peer_close_notify_is_eof_and_does_not_pop(onion_ca: OnionCA, variant: str) -> None:
    """The server stops layer 2; the client's eof_received says keep open and
    does not stop: the layer stays (peer closed), the client can still send
    inside it; a stop_tls called later pops it on both sides."""
    async with variant_pair(variant) as pair:
        await start_layer(pair, onion_ca, 1, client_engine="stdlib", server_engine="pyopenssl")
        await start_layer(pair, onion_ca, 2, client_engine="pyopenssl", server_engine="stdlib")
        pair.c.eof_result = True
        pair.server.write(b"before close_notify")
        fs = pair.server.stop_tls()
        pair.server.write(b"held on the server")
        await pair.c.wait_eof()
        await pair.c.expect(b"before close_notify")
        await settle()
        assert len(pair.client.layers) == 2
        assert pair.client.layers[1].state == "peer closed"
        assert not fs.done()
        assert not pair.c.lost and not pair.s.lost
        # still inside layer 2: the server's closing layer keeps reading
        pair.client.write(b"after their close_notify")
        await pair.s.expect(b"after their close_notify")
        assert pair.s.received_at(2) == b"after their close_notify"
        # later, the client decides
        await settle()
        fc = pair.client.stop_tls()
        lc, ls = await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        assert lc.depth == ls.depth == 2
        assert pair.c.eofs == 1 and pair.s.eofs == 0
        await pair.c.expect(b"held on the server")
        assert pair.c.received_at(1) == b"held on the server"
        await close_both(pair)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
async def test_eof_received_falsy_closes_the_connection(
    onion_ca: OnionCA, variant: str, depth: int
) -> None:
    async with variant_pair(variant) as pair:
        for d in range(1, depth + 1):
            await start_layer(pair, onion_ca, d, client_engine="stdlib", server_engine="pyopenssl")
        pair.c.eof_result = False
        pair.server.write(b"last words")
        fs = pair.server.stop_tls()
        await pair.c.expect(b"last words")
        assert await pair.c.wait_lost() is None
        assert pair.c.eofs == 1
        # our close_notify answered theirs: their stop completes
        assert (await asyncio.wait_for(fs, WAIT)).depth == depth
        if depth == 1:
            # then the TCP EOF in plaintext; Recorder returns False: closed
            assert await pair.s.wait_lost() is None
        else:
            # the client closed layer 1 too: the server sees its EOF
            await pair.s.wait_eof()
            pair.server.close()
            assert await pair.s.wait_lost() is None
        assert pair.c.lost == [None] and pair.s.lost == [None]


@pytest.mark.parametrize("variant", ["memory", "loopback"])
async def test_stop_tls_while_handshaking_pops_after_it(onion_ca: OnionCA, variant: str) -> None:
    async with variant_pair(variant) as pair:
        futs: list[asyncio.Future[TLSLayer]] = []
        answer_with_stop(pair.s, futs)
        fs = pair.server.start_tls(onion_ca.server_context(1, "stdlib"), server_side=True)
        fc = pair.client.start_tls(
            onion_ca.client_context("pyopenssl"), server_hostname=onion_ca.hostname(1)
        )
        pair.client.write(b"inside")
        stop = pair.client.stop_tls()
        pair.client.write(b"beneath")
        assert (await asyncio.wait_for(fc, WAIT)).depth == 1
        await asyncio.wait_for(fs, WAIT)
        assert (await asyncio.wait_for(stop, WAIT)).depth == 1
        await pair.s.expect(b"insidebeneath")
        assert pair.s.received_at(1) == b"inside"
        assert pair.s.received_at(0) == b"beneath"
        await pair.c.expect(b"R-last-1;R-beneath-1;")
        assert pair.client.layers == pair.server.layers == ()
        await close_both(pair)


# -- a hand-driven peer that sends bytes right after its close_notify --------


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
@pytest.mark.parametrize("variant", ["memory", "dribble", "loopback"])
async def test_bytes_after_close_notify_are_held_until_stop_tls(
    onion_ca: OnionCA, variant: str, engine: Engine, depth: int
) -> None:
    """The peer sends data, its close_notify and plaintext of the layer
    beneath in one write.  The client's eof_received keeps the layer; the
    beneath bytes are held (never fed to the closed layer, never dropped)
    and delivered through the layer beneath once the client calls stop_tls,
    well after the fact."""
    async with variant_pair(variant) as pair:
        for d in range(1, depth):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        pair.c.eof_result = True
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
        )
        peer = ManualTLS(pair.s, onion_ca.server_context(depth, "stdlib"), server_side=True)
        await peer.handshake()
        assert (await asyncio.wait_for(fc, WAIT)).depth == depth
        pair.server.write(
            peer.encrypt(b"inside before close_notify") + peer.close_notify() + b"BENEATH-1"
        )
        await pair.c.wait_eof()
        await pair.c.expect(b"inside before close_notify")
        pair.server.write(b"BENEATH-2")
        await settle(50)
        if variant == "loopback":
            await asyncio.sleep(0.05)  # give the socket time; not an assertion
        assert bytes(pair.c.data) == b""  # held, not delivered
        assert len(pair.client.layers) == depth
        assert pair.client.layers[-1].state == "peer closed"
        popped = await asyncio.wait_for(pair.client.stop_tls(), WAIT)
        assert popped.depth == depth
        await pair.c.expect(b"BENEATH-1BENEATH-2")
        assert pair.c.received_at(depth - 1) == b"BENEATH-1BENEATH-2"
        # our close_notify reached the hand-driven peer
        assert await peer.read_until_close_notify() == b""
        pair.client.write(b"plain beneath")
        await pair.s.wait_for(lambda: bytes(pair.s.data).endswith(b"plain beneath"))
        await close_both(pair)


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_rewrap_pipelined_after_close_notify_in_backlog(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """The peer sends close_notify + "STARTTLS\\r\\n" in one read and a new
    ClientHello in the next read, before the application's stop_tls (called
    from eof_received) has had its trailing bytes delivered.  Both plaintext
    reads reach the application together, so it can pass the ClientHello as
    initial_bytes; nothing received before the upgrade is delivered after it
    as if it had come through the new layer."""
    async with connect("memory", auto=False) as pair:
        pipe = pair.pipe
        assert pipe is not None
        srv, cli = pair.s, pair.c
        fs = pair.server.start_tls(onion_ca.server_context(1, engine), server_side=True)
        peer = ManualTLS(
            cli,
            onion_ca.client_context("stdlib"),
            server_side=False,
            server_hostname=onion_ca.hostname(1),
        )
        hs = asyncio.ensure_future(peer.handshake())
        pipe.auto = True
        pipe.kick()
        await asyncio.wait_for(hs, WAIT)
        await asyncio.wait_for(fs, WAIT)
        pipe.pump()
        pipe.auto = False
        await settle()
        pipe.pump()
        peer.pump_reads()  # session tickets
        assert not cli.data

        upgrade: list[asyncio.Future[TLSLayer]] = []
        plain = bytearray()

        def on_eof() -> None:
            upgrade_stop.append(srv.transport.stop_tls())

        def on_data(data: bytes) -> None:
            if srv.transport.layers:
                return
            plain.extend(data)
            if not upgrade and b"STARTTLS\r\n" in plain:
                rest = bytes(plain).split(b"STARTTLS\r\n", 1)[1]
                upgrade.append(
                    srv.transport.start_tls(
                        onion_ca.server_context(1, engine), server_side=True, initial_bytes=rest
                    )
                )

        upgrade_stop: list[asyncio.Future[TLSLayer]] = []
        srv.on_eof = on_eof
        srv.on_data = on_data
        # the second session's ClientHello, made now, sent in a later read
        peer2 = ManualTLS(
            cli,
            onion_ca.client_context("stdlib"),
            server_side=False,
            server_hostname=onion_ca.hostname(1),
        )
        try:
            peer2.obj.do_handshake()
        except Exception:  # noqa: BLE001 - SSLWantReadError: ClientHello made
            pass
        hello = peer2.take()
        pair.client.write(peer.close_notify() + b"STARTTLS\r\n")
        pair.client.write(hello)
        assert pipe.step(pipe.a)  # close_notify + STARTTLS: eof_received, stop_tls
        assert upgrade_stop and srv.eofs == 1
        assert pipe.step(pipe.a)  # the ClientHello, before any flush ran
        pipe.auto = True
        pipe.kick()
        await srv.wait_for(lambda: bool(upgrade), "STARTTLS seen")
        # the old session's close_notify answer, then the new ServerHello
        await peer.read_until_close_notify()
        peer2.incoming.write(peer.incoming.read())
        hs2 = asyncio.ensure_future(peer2.handshake())
        ls = await asyncio.wait_for(upgrade[0], WAIT)
        await asyncio.wait_for(hs2, WAIT)
        assert ls.depth == 1
        assert srv.received_at(1) == b""  # no pre-upgrade byte came "through TLS"
        pair.client.write(peer2.encrypt(b"inside the new layer"))
        await srv.wait_for(lambda: srv.received_at(1) == b"inside the new layer")


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
async def test_popping_onto_a_layer_the_peer_already_closed_reports_its_eof(
    onion_ca: OnionCA, variant: str, depth: int
) -> None:
    """The peer closes the whole connection (close_notify on every layer,
    then the socket).  The client keeps each layer open in eof_received and
    pops it later; each pop that uncovers a layer the peer already closed
    (or the plaintext socket at its EOF) must report that EOF too, or a
    reader of the layer beneath would wait forever."""
    async with variant_pair(variant) as pair:
        for d in range(1, depth + 1):
            await start_layer(pair, onion_ca, d, client_engine="stdlib", server_engine="pyopenssl")
        pair.c.eof_result = True
        pair.server.write(b"bye")
        pair.server.close()
        await pair.c.wait_eof()
        await pair.c.expect(b"bye")
        for d in range(depth, 0, -1):
            await settle(20)
            if pair.c.lost:
                # the peer is gone (over a socket, and in the memory pipe,
                # which behaves like one): our close_notify answer met a
                # reset, which is still a clean close (None) below
                break
            assert len(pair.client.layers) == d
            assert pair.c.eofs == depth - d + 1
            assert [ev for ev in pair.c.transcript() if ev[0] == "eof"][-1] == ("eof", d)
            if d == 1:
                pair.c.eof_result = False  # the plaintext EOF closes
            popped = await asyncio.wait_for(pair.client.stop_tls(), WAIT)
            assert popped.depth == d
            # the layer beneath was closed by the peer too (or, at the
            # bottom, the socket reached EOF): eof_received again
            want = depth - d + 2
            await pair.c.wait_for(lambda: pair.c.eofs >= want or bool(pair.c.lost))  # noqa: B023
            if pair.c.lost and pair.c.eofs < want:
                assert variant == "loopback"  # the reset came first (see below)
                break
            assert [ev for ev in pair.c.transcript() if ev[0] == "eof"][-1] == ("eof", d - 1)
        assert await pair.c.wait_lost() is None
        assert await pair.s.wait_lost() is None
        assert len(pair.c.lost) == 1
