"""Acceptance: DESIGN.md "Behaviour that must hold", items 1-5, black box,
over real loopback sockets, for both engines and user-built contexts."""

from __future__ import annotations

import asyncio
import inspect
import ssl

import pytest
from cryptography import x509

import onion_tls

from .contract_kit import (
    CLIENT_KINDS,
    ENGINES,
    HOST,
    PKI,
    App,
    both,
    engine_name,
    handshake,
    loopback,
    poll,
    raw_peer,
    settle,
)

PAIRS = [(c, s) for c in CLIENT_KINDS for s in ENGINES]


@pytest.fixture
def pki() -> PKI:
    return PKI()


# -- 1. act at call time ---------------------------------------------------------


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_start_and_stop_are_plain_methods_acting_at_call_time(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        assert c.t.layers == () and s.t.layers == ()
        fs = s.t.start_tls(pki.server(sengine), server_side=True)
        fc = c.t.start_tls(pki.client(ckind), server_hostname=HOST)
        for fut in (fs, fc):
            assert asyncio.isfuture(fut) and not inspect.iscoroutine(fut)
        # spliced the moment it was called
        assert len(c.t.layers) == 1 and len(s.t.layers) == 1
        assert c.t.layers[0].depth == 1 and not c.t.layers[0].server_side
        assert s.t.layers[0].server_side
        assert c.t.layers[0].server_hostname == HOST
        assert c.t.layers[0].engine == engine_name(ckind)
        assert s.t.layers[0].engine == sengine
        assert c.t.layers[0].version is None  # not before the handshake is done
        lc, ls = await both(fc, fs)
        assert isinstance(lc, onion_tls.TLSLayer) and isinstance(ls, onion_tls.TLSLayer)
        assert lc.depth == ls.depth == 1
        assert lc.version == ls.version == "TLSv1.3"
        assert lc.cipher and lc.cipher == ls.cipher
        assert isinstance(lc.peer_certificate, x509.Certificate)
        assert ls.peer_certificate is None
        assert c.t.layers[0].version == "TLSv1.3"
        # data both ways
        c.t.write(b"ping")
        await s.expect(b"ping")
        s.t.write(b"pong")
        await c.expect(b"pong")
        assert c.received == [(1, b"pong")]

        # stop: the peer's eof_received answers with its own stop_tls
        answers: list[asyncio.Future[onion_tls.TLSLayer]] = []
        s.on_eof = lambda: answers.append(s.t.stop_tls()) or True
        stop = c.t.stop_tls()
        assert asyncio.isfuture(stop) and not inspect.iscoroutine(stop)
        assert len(c.t.layers) == 1, "the layer leaves `layers` only when the pop is done"
        assert not stop.done()
        popped = await both(stop)
        assert popped[0].depth == 1
        assert c.t.layers == ()
        await s.until(lambda: bool(answers))
        await both(*answers)
        assert s.t.layers == ()
        assert s.eofs == [1] and c.eofs == []
        c.t.write(b"plain")
        await s.expect(b"plain")
        assert s.received[-1] == (0, b"plain")


class StartTLSServer(App):
    """A line-based STARTTLS server: it upgrades from inside data_received."""

    ctx: object = None

    def __init__(self) -> None:
        super().__init__()
        self.buf = b""
        self.upgraded: asyncio.Future[onion_tls.TLSLayer] | None = None
        self.initial = b""
        self.pass_rest = True
        self.reply = True  # a pipelining client does not wait for (or read) a reply

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.upgraded is not None:
            return
        self.buf += data
        if b"\r\n" in self.buf:
            line, rest = self.buf.split(b"\r\n", 1)
            assert line == b"STARTTLS"
            if self.reply:
                self.t.write(b"GO\r\n")
            self.initial = rest
            self.upgraded = self.t.start_tls(
                self.ctx, server_side=True, initial_bytes=rest if self.pass_rest else b""
            )


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_starttls_from_data_received_on_both_ends(pki: PKI, ckind: str, sengine: str) -> None:
    StartTLSServer.ctx = pki.server(sengine)
    async with loopback(App, StartTLSServer) as conn:
        c, s = conn.c, conn.s
        assert isinstance(s, StartTLSServer)
        client_up: list[asyncio.Future[onion_tls.TLSLayer]] = []

        def on_go(data: bytes) -> None:
            if data == b"GO\r\n" and not client_up:
                # upgrade and write at once, from inside data_received
                client_up.append(c.t.start_tls(pki.client(ckind), server_hostname=HOST))
                c.t.write(b"first words inside TLS")

        c.on_data = on_go
        c.t.write(b"STARTTLS\r\n")
        await s.until(lambda: len(s.data) >= len(b"STARTTLS\r\nfirst words inside TLS"))
        assert s.data_at(0) == b"STARTTLS\r\n"
        assert s.data_at(1) == b"first words inside TLS"
        assert client_up and client_up[0].done() and s.upgraded is not None
        assert (await s.upgraded).depth == 1


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_pipelined_client_hello_is_fed_only_through_initial_bytes(
    pki: PKI, ckind: str, sengine: str
) -> None:
    StartTLSServer.ctx = pki.server(sengine)
    async with loopback(App, StartTLSServer) as conn:
        c, s = conn.c, conn.s
        assert isinstance(s, StartTLSServer)
        s.reply = False
        s.t.pause_reading()  # let the command and the ClientHello pile up
        assert not s.t.is_reading()
        c.t.write(b"STARTTLS\r\n")
        fc = c.t.start_tls(pki.client(ckind), server_hostname=HOST)
        c.t.write(b"pipelined")
        await settle()
        assert s.received == []
        s.t.resume_reading()
        await s.until(lambda: s.upgraded is not None)
        assert s.initial[:1] == b"\x16", "the ClientHello came in the same read"
        assert s.upgraded is not None
        await both(fc, s.upgraded)
        await s.until(lambda: s.data_at(1) == b"pipelined")
        assert s.data_at(0) == b"STARTTLS\r\n" + s.initial


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_plaintext_after_starttls_is_never_read_as_tls(
    pki: PKI, ckind: str, sengine: str
) -> None:
    """The STARTTLS command-injection class: plaintext pipelined after the
    command, which the server does not pass as initial_bytes, is not used."""
    StartTLSServer.ctx = pki.server(sengine)

    def make() -> StartTLSServer:
        app = StartTLSServer()
        app.pass_rest = False
        return app

    async with loopback(App, make) as conn:
        c, s = conn.c, conn.s
        assert isinstance(s, StartTLSServer)
        s.t.pause_reading()
        c.t.write(b"STARTTLS\r\nINJECTED COMMAND\r\n")
        await poll(lambda: c.t.get_write_buffer_size() == 0)
        await settle()
        s.t.resume_reading()
        await c.until(lambda: bytes(c.data) == b"GO\r\n")
        assert s.initial == b"INJECTED COMMAND\r\n"
        fc = c.t.start_tls(pki.client(ckind), server_hostname=HOST)
        assert s.upgraded is not None
        await both(fc, s.upgraded)
        c.t.write(b"REAL COMMAND\r\n")
        await s.until(lambda: s.data_at(1) == b"REAL COMMAND\r\n")
        assert b"INJECTED" not in s.data_at(1)
        assert s.lost == [] and c.lost == []


# -- 3. writes during a handshake -------------------------------------------------------


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_writes_during_handshake_are_sent_in_order_inside_the_new_layer(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback(tap=True) as conn:
        c, s = conn.c, conn.s
        assert conn.tap is not None
        fc = c.t.start_tls(pki.client(ckind), server_hostname=HOST)
        c.t.write(b"SECRET-1;")
        c.t.writelines([b"SECRET-2;", bytearray(b"SECRET-3;"), memoryview(b"SECRET-4;")])
        await settle()
        # the server has not even started its layer: it sees only the ClientHello
        await s.until(lambda: bool(s.data))
        assert b"SECRET" not in s.data
        hello = bytes(s.data)
        s.data.clear()
        fs = s.t.start_tls(pki.server(sengine), server_side=True, initial_bytes=hello)
        await both(fc, fs)
        await s.expect(b"SECRET-1;SECRET-2;SECRET-3;SECRET-4;")
        assert all(depth == 1 for depth, data in s.received if b"SECRET" in data)
        await settle()
        assert b"SECRET" not in conn.tap.c2s, "plaintext went on the wire"


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_writes_during_an_inner_handshake_never_travel_in_the_outer_layer(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, ckind, sengine)
        fc = c.t.start_tls(pki.client(ckind), server_hostname="inner.test")
        assert len(c.t.layers) == 2
        c.t.write(b"INNER SECRET")
        await s.until(lambda: bool(s.data_at(1)))
        await settle()
        assert b"INNER SECRET" not in s.data, "sent inside the weaker (outer) layer"
        hello = bytes(s.data)
        s.data.clear()
        fs = s.t.start_tls(pki.server(sengine, "inner.test"), server_side=True, initial_bytes=hello)
        lc, ls = await both(fc, fs)
        assert lc.depth == ls.depth == 2
        await s.expect(b"INNER SECRET")
        assert s.received[-1][0] == 2


# -- 4. explicit unwrap, no silent downgrade -------------------------------------------


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_peer_close_notify_is_eof_and_never_pops_by_itself(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, ckind, sengine)
        c.eof_return = True  # keep the connection, decide later
        stop = s.t.stop_tls()
        s.t.write(b"written while the server's stop is pending")
        await c.until(lambda: c.eofs == [1], "eof_received at depth 1")
        await settle()
        # nothing popped on the client: the peer alone cannot unwrap us
        assert len(c.t.layers) == 1
        assert not stop.done() and len(s.t.layers) == 1
        assert bytes(c.data) == b""
        assert c.lost == []
        # now the client decides to unwrap
        popped_c = await both(c.t.stop_tls())
        popped_s = await both(stop)
        assert popped_c[0].depth == popped_s[0].depth == 1
        assert c.t.layers == () == s.t.layers
        await c.expect(b"written while the server's stop is pending")
        assert c.received[-1][0] == 0
        assert c.eofs == [1] and s.eofs == []


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_peer_close_notify_then_false_eof_received_closes(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, ckind, sengine)
        c.eof_return = False
        s.t.close()  # orderly: close_notify then EOF
        assert await c.wait_lost() is None
        assert await s.wait_lost() is None
        assert c.eofs == [1]


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_stop_tls_called_from_eof_received(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, ckind, sengine)
        stops: list[asyncio.Future[onion_tls.TLSLayer]] = []
        # eof_received returns None (falsy) but stop_tls is pending: not closed
        c.on_eof = lambda: stops.append(c.t.stop_tls()) and None
        fs = s.t.stop_tls()
        await both(fs)
        await c.until(lambda: bool(stops))
        await both(*stops)
        assert c.t.layers == () and c.lost == []
        s.t.write(b"after")
        await c.expect(b"after")


# -- 5. exact boundaries ----------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_bytes_after_close_notify_in_the_same_read_belong_beneath(
    pki: PKI, engine: str
) -> None:
    """A hand-driven peer puts data, close_notify and plaintext in ONE segment."""
    async with raw_peer(onion_is_client=True) as (app, peer):
        app.eof_return = True
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        sctx = pki.server("stdlib")
        await peer.handshake(sctx, server_side=True)
        await both(fut)
        app.t.write(b"to peer")
        assert await peer.read_plain(7) == b"to peer"
        wire = peer.encrypt(b"last words") + peer.close_notify() + b"PLAINTEXT AFTER"
        peer.send(wire)
        await app.until(lambda: app.eofs == [1])
        assert bytes(app.data) == b"last words"
        await settle()
        assert bytes(app.data) == b"last words", "held bytes were delivered without a stop"
        assert len(app.t.layers) == 1
        stop = app.t.stop_tls()
        popped = await both(stop)
        assert popped[0].depth == 1 and app.t.layers == ()
        await app.until(lambda: len(app.data) >= len(b"last wordsPLAINTEXT AFTER"))
        assert app.received == [(1, b"last words"), (0, b"PLAINTEXT AFTER")]
        # our close_notify reached the peer
        await peer.until_close_notify()
        app.t.write(b"plain reply")
        assert await peer.recv() == b"plain reply"


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_writes_while_stop_pending_go_out_beneath_after_the_pop(
    pki: PKI, ckind: str, sengine: str
) -> None:
    async with loopback(tap=True) as conn:
        c, s = conn.c, conn.s
        assert conn.tap is not None
        await handshake(conn, pki, ckind, sengine)
        await handshake(conn, pki, ckind, sengine, name="two.test")
        s.eof_return = True  # the server answers later, by hand
        stop = c.t.stop_tls()
        c.t.write(b"HELD-1;")
        c.t.write(b"HELD-2;")
        await s.until(lambda: s.eofs == [2])
        await settle()
        assert b"HELD" not in s.data
        assert not stop.done() and len(c.t.layers) == 2
        fs = s.t.stop_tls()
        (pc,) = await both(stop)
        await both(fs)
        assert pc.depth == 2 and len(c.t.layers) == 1
        await s.expect(b"HELD-1;HELD-2;")
        assert s.received[-1][0] == 1
        # and the same down to plaintext, where the tap can see it
        stop = c.t.stop_tls()
        c.t.write(b"CLEAR")
        s.on_eof = lambda: bool(s.t.stop_tls())
        await both(stop)
        await s.expect(b"CLEAR")
        assert s.received[-1][0] == 0
        await settle()
        assert conn.tap.c2s.endswith(b"CLEAR")


@pytest.mark.parametrize("dribble", [1, 3])
@pytest.mark.parametrize(("ckind", "sengine"), [("pyopenssl", "stdlib"), ("stdlib", "pyopenssl")])
async def test_up_and_down_through_a_dribbling_proxy(
    pki: PKI, ckind: str, sengine: str, dribble: int
) -> None:
    async with loopback(dribble=dribble) as conn:
        c, s = conn.c, conn.s
        s.on_eof = lambda: bool(s.t.stop_tls())
        for depth in (1, 2, 3):
            await handshake(conn, pki, ckind, sengine, name=f"d{depth}.test")
            c.t.write(b"c%d" % depth)
            s.t.write(b"s%d" % depth)
            await s.expect(b"c%d" % depth)
            await c.expect(b"s%d" % depth)
        for depth in (3, 2, 1):
            stop = c.t.stop_tls()
            c.t.write(b"below %d" % depth)
            (popped,) = await both(stop)
            assert popped.depth == depth
            await s.expect(b"below %d" % depth)
            assert s.received[-1][0] == depth - 1
        assert c.t.layers == () == s.t.layers
        assert s.eofs == [3, 2, 1] and c.eofs == []


async def test_stdlib_tls12_layer_also_unwraps_exactly(pki: PKI) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        app.eof_return = True
        ctx = pki.client("stdlib", version="TLSv1.2")
        fut = app.t.start_tls(ctx, server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        (layer,) = await both(fut)
        assert layer.version == "TLSv1.2"
        assert isinstance(layer.ssl_object, ssl.SSLObject)
        peer.send(peer.encrypt(b"x") + peer.close_notify() + b"y")
        await app.until(lambda: app.eofs == [1])
        await both(app.t.stop_tls())
        await app.until(lambda: bytes(app.data) == b"xy")
        assert app.received == [(1, b"x"), (0, b"y")]


# -- the same in memory (onion_tls.testing), under extreme chunkings ------------------


@pytest.mark.parametrize("mode", ["dribble1", "dribble5", "coalesce"])
@pytest.mark.parametrize(("ckind", "sengine"), [("pyopenssl", "stdlib"), ("stdlib", "pyopenssl")])
async def test_in_memory_pair_any_chunking_same_result(
    pki: PKI, ckind: str, sengine: str, mode: str
) -> None:
    from onion_tls.testing import dribble, memory_pair

    kw: dict[str, object] = {"coalesce": True} if mode == "coalesce" else {}
    if mode.startswith("dribble"):
        kw["chunker"] = dribble(int(mode[-1]))
    pair = await memory_pair(App, App, **kw)  # type: ignore[arg-type]
    c, s = pair.client_protocol, pair.server_protocol
    assert isinstance(c, App) and isinstance(s, App)
    s.on_eof = lambda: bool(s.t.stop_tls()) if s.t.layers else False
    for depth in (1, 2):
        name = f"m{depth}.test"
        fs = s.t.start_tls(pki.server(sengine, name), server_side=True)
        fc = c.t.start_tls(pki.client(ckind), server_hostname=name)
        c.t.write(b"hs%d;" % depth)
        await both(fc, fs)
    c.t.write(b"two;")
    stop = c.t.stop_tls()
    c.t.write(b"one;")
    await both(stop)
    stop = c.t.stop_tls()
    c.t.write(b"zero;")
    await both(stop)
    await s.until(lambda: len(s.data) >= len(b"hs1;hs2;two;one;zero;"))
    assert bytes(s.data) == b"hs1;hs2;two;one;zero;"
    assert s.data_at(2) == b"hs2;two;"
    assert s.eofs == [2, 1]
    c.t.close()
    assert await c.wait_lost() is None
    assert await s.wait_lost() is None
