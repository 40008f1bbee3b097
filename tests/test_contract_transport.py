"""Acceptance: DESIGN.md behaviours 9-11 and "Details that are easy to get
wrong" - the asyncio.Transport surface of OnionTransport, black box."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from pathlib import Path

import pytest
from OpenSSL import SSL

import onion_tls

from .contract_kit import (
    ENGINES,
    HOST,
    PKI,
    App,
    both,
    handshake,
    loopback,
    poll,
    raw_peer,
    settle,
)

MIXED = [("pyopenssl", "stdlib"), ("stdlib", "pyopenssl"), ("stdlib", "stdlib")]


@pytest.fixture
def pki() -> PKI:
    return PKI()


# -- 10. get_extra_info ---------------------------------------------------------------


@pytest.mark.parametrize(("cengine", "sengine"), [(a, b) for a in ENGINES for b in ENGINES])
async def test_get_extra_info(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        for key in ("ssl_object", "peercert", "cipher", "sslcontext", "ssl_version"):
            assert c.t.get_extra_info(key) is None
        assert c.t.get_extra_info("layers") == ()
        assert c.t.get_extra_info("nope", "dflt") == "dflt"
        sock = c.t.get_extra_info("socket")
        assert sock is not None and sock.family == socket.AF_INET
        assert c.t.get_extra_info("peername")[0] == "127.0.0.1"
        assert c.t.get_extra_info("sockname") == s.t.get_extra_info("peername")

        sctx, cctx = pki.server(sengine), pki.client(cengine)
        fs = s.t.start_tls(sctx, server_side=True)
        fc = c.t.start_tls(cctx, server_hostname=HOST)
        lc, ls = await both(fc, fs)
        for app, layer, ctx in ((c, lc, cctx), (s, ls, sctx)):
            t = app.t
            assert t.get_extra_info("layers") == t.layers == (layer,)
            assert t.get_extra_info("ssl_object") is layer.ssl_object
            if (layer.engine) == "stdlib":
                assert isinstance(layer.ssl_object, ssl.SSLObject)
            else:
                assert isinstance(layer.ssl_object, SSL.Connection)
            assert t.get_extra_info("sslcontext") is ctx
            assert t.get_extra_info("ssl_version") == "TLSv1.3"
            cipher = t.get_extra_info("cipher")
            assert isinstance(cipher, tuple) and len(cipher) == 3
            name, proto, bits = cipher
            assert isinstance(name, str) and name == layer.cipher
            assert proto == "TLSv1.3"
            assert isinstance(bits, int) and bits >= 128
            assert t.get_extra_info("peername") is not None  # still the socket's
        assert c.t.get_extra_info("cipher") == s.t.get_extra_info("cipher")
        peercert = c.t.get_extra_info("peercert")
        assert isinstance(peercert, dict)
        assert ("DNS", HOST) in peercert["subjectAltName"]
        assert {"subject", "issuer", "notBefore", "notAfter", "serialNumber"} <= set(peercert)
        assert s.t.get_extra_info("peercert") is None  # no client certificate

        # the innermost layer answers
        await handshake(conn, pki, cengine, sengine, name="inner.test")
        assert ("DNS", "inner.test") in c.t.get_extra_info("peercert")["subjectAltName"]
        assert c.t.get_extra_info("ssl_object") is c.t.layers[1].ssl_object


async def test_peercert_dict_is_the_same_for_both_engines(pki: PKI) -> None:
    async with loopback() as conn:
        dicts = []
        for cengine in ENGINES:
            await handshake(conn, pki, cengine, "stdlib", name="same.test")
            dicts.append(conn.c.t.get_extra_info("peercert"))
        assert dicts[0] == dicts[1]
        # and it is exactly what ssl.SSLObject.getpeercert() says
        stdlib_layer = conn.c.t.layers[1]
        assert stdlib_layer.engine == "stdlib"
        assert dicts[0] == stdlib_layer.ssl_object.getpeercert()


# -- details: close() and abort() ----------------------------------------------------------


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_close_is_orderly_innermost_out(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine, name="one.test")
        await handshake(conn, pki, cengine, sengine, name="two.test")
        c.t.write(b"last")
        c.t.close()
        assert c.t.is_closing()
        assert await c.wait_lost() is None
        assert await s.wait_lost() is None
        assert bytes(s.data) == b"last"
        assert s.eofs == [2]  # the app said "close" at the first EOF
        assert len(c.lost) == 1 and len(s.lost) == 1


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_close_flushes_writes_held_by_a_pending_stop(
    pki: PKI, cengine: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine, name="one.test")
        await handshake(conn, pki, cengine, sengine, name="two.test")
        s.on_eof = lambda: bool(s.t.stop_tls()) if len(s.t.layers) == 2 else False
        stop = c.t.stop_tls()
        c.t.write(b"held for layer 1")
        c.t.close()
        (popped,) = await both(stop)
        assert popped.depth == 2
        assert await c.wait_lost() is None
        assert await s.wait_lost() is None
        assert s.received == [(1, b"held for layer 1")]
        assert s.eofs == [2, 1]


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_close_during_a_handshake_ends_promptly_and_fails_it(
    pki: PKI, cengine: str, sengine: str
) -> None:
    """Rule 13: close() during a handshake does not wait for it (asyncio
    aborts there too); the start_tls future fails, and what was queued in
    the layer is never sent, in it or in a weaker one."""
    async with loopback() as conn:
        c, s = conn.c, conn.s
        fc = c.t.start_tls(pki.client(cengine), server_hostname=HOST, handshake_timeout=60)
        c.t.write(b"early")
        c.t.close()
        with pytest.raises(onion_tls.HandshakeError) as info:
            await both(fc)
        assert info.value.depth == 1
        assert await c.wait_lost() is None
        await s.wait_lost()
        # only the ClientHello crossed: nothing of the application's
        assert all(data.startswith(b"\x16\x03") for _, data in s.received), s.received
        assert b"early" not in b"".join(data for _, data in s.received)


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_peer_closes_while_we_keep_an_inner_layer_open(
    pki: PKI, cengine: str, sengine: str
) -> None:
    """The peer close()s two layers; our app keeps layer 2 at its EOF and
    decides later: stop_tls() pops it and then layer 1's EOF is told."""
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine, name="one.test")
        await handshake(conn, pki, cengine, sengine, name="two.test")
        s.eof_return = True
        c.t.close()
        assert await c.wait_lost() is None
        await s.until(lambda: s.eofs == [2])
        s.eof_return = False
        (popped,) = await both(s.t.stop_tls())
        assert popped.depth == 2
        assert await s.wait_lost() is None
        assert s.eofs == [2, 1]


@pytest.mark.parametrize("engine", ENGINES)
async def test_abort_sends_nothing_more(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        app.t.write(b"before")
        assert await peer.read_plain(6) == b"before"
        await settle()
        app.t.abort()
        assert app.t.is_closing()
        app.t.write(b"after abort")  # ignored
        assert await peer.read_to_eof() == b"", "abort() sent something (a close_notify?)"
        assert len(app.lost) == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_abort_during_pending_stop_and_handshake(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        stop = app.t.stop_tls()
        app.t.write(b"held")
        await peer.until_close_notify()
        app.t.abort()
        with pytest.raises(onion_tls.OnionError):
            await stop
        assert await peer.read_to_eof() == b""  # the held write was not sent
        assert len(app.lost) == 1


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_abort_is_seen_by_the_peer_as_no_clean_close(
    pki: PKI, cengine: str, sengine: str
) -> None:
    async with loopback() as conn:
        await handshake(conn, pki, cengine, sengine)
        conn.c.t.abort()
        exc = await conn.s.wait_lost()
        assert exc is not None
        assert conn.s.eofs == []
        assert await conn.c.wait_lost() is None


# -- details: misuse, identity, write_eof ------------------------------------------------


async def test_misuse_raises_layer_state_error_at_call_time(pki: PKI) -> None:
    async with loopback() as conn:
        c = conn.c
        t0 = c.t
        with pytest.raises(onion_tls.LayerStateError) as info:
            c.t.stop_tls()
        assert isinstance(info.value, onion_tls.OnionError)
        assert hasattr(info.value, "depth")
        assert c.t.can_write_eof()
        await handshake(conn, pki)
        assert not c.t.can_write_eof()
        assert c.t is t0 and c.t.get_protocol() is c
        c.t.close()
        with pytest.raises(onion_tls.LayerStateError):
            c.t.start_tls(pki.client("stdlib"), server_hostname=HOST)
        await c.wait_lost()


async def test_plaintext_write_eof(pki: PKI) -> None:
    async with loopback() as conn:
        conn.s.eof_return = True
        conn.c.t.write(b"req")
        conn.c.t.write_eof()
        await conn.s.until(lambda: conn.s.eofs == [0])
        assert bytes(conn.s.data) == b"req"
        conn.s.t.write(b"resp")
        await conn.c.expect(b"resp")


# -- details: pipelining start/stop --------------------------------------------------


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_two_start_tls_back_to_back_without_awaiting(
    pki: PKI, cengine: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        f1 = c.t.start_tls(pki.client(cengine), server_hostname="one.test")
        f2 = c.t.start_tls(pki.client(sengine), server_hostname="two.test")
        c.t.write(b"in two")
        assert [layer.depth for layer in c.t.layers] == [1, 2]
        g1 = s.t.start_tls(pki.server(sengine, "one.test"), server_side=True)
        g2 = s.t.start_tls(pki.server(cengine, "two.test"), server_side=True)
        l1, l2, m1, m2 = await both(f1, f2, g1, g2)
        assert (l1.depth, l2.depth, m1.depth, m2.depth) == (1, 2, 1, 2)
        assert l2.engine == sengine and m2.engine == cengine
        await s.expect(b"in two")
        assert s.received == [(2, b"in two")]


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_stop_tls_right_after_start_tls(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        s.on_eof = lambda: bool(s.t.stop_tls())
        fc = c.t.start_tls(pki.client(cengine), server_hostname=HOST)
        c.t.write(b"inside")
        stop = c.t.stop_tls()
        c.t.write(b"after")
        fs = s.t.start_tls(pki.server(sengine), server_side=True)
        lc, ls, popped = await both(fc, fs, stop)
        assert popped.depth == lc.depth == ls.depth == 1
        await s.until(lambda: len(s.data) >= 11)
        assert s.received == [(1, b"inside"), (0, b"after")]
        assert s.eofs == [1] and c.eofs == []
        assert c.t.layers == () == s.t.layers


async def test_unwrap_all_the_way_and_rewrap_repeatedly(pki: PKI) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        c.on_eof = lambda: bool(c.t.stop_tls())
        s.on_eof = lambda: bool(s.t.stop_tls())
        t0 = c.t
        for rnd in range(6):
            e1, e2 = ENGINES[rnd % 2], ENGINES[(rnd // 2) % 2]
            # roles swap every other round: the TCP client is sometimes the TLS server
            tls_client, tls_server = (c, s) if rnd % 2 == 0 else (s, c)
            for depth, (ce, se) in enumerate(((e1, e2), (e2, e1)), start=1):
                name = f"r{rnd}d{depth}.test"
                fs = tls_server.t.start_tls(pki.server(se, name), server_side=True)
                fc = tls_client.t.start_tls(pki.client(ce), server_hostname=name)
                await both(fc, fs)
            c.t.write(b"round %d" % rnd)
            await s.expect(b"round %d" % rnd)
            assert s.received[-1][0] == 2
            for depth in (2, 1):
                stopper = c if (rnd + depth) % 2 else s
                (popped,) = await both(stopper.t.stop_tls())
                assert popped.depth == depth
            await poll(lambda: c.t.layers == () == s.t.layers)
            s.t.write(b"plain %d" % rnd)
            await c.expect(b"plain %d" % rnd)
            assert c.received[-1][0] == 0
        assert c.t is t0 and not c.lost and not s.lost


# -- 9. flow control --------------------------------------------------------------------


async def test_write_buffer_limits_like_asyncio(pki: PKI) -> None:
    async with loopback() as conn:
        t = conn.c.t
        low, high = t.get_write_buffer_limits()
        assert 0 <= low <= high
        t.set_write_buffer_limits(high=1000)
        assert t.get_write_buffer_limits() == (250, 1000)
        t.set_write_buffer_limits(high=1000, low=100)
        assert t.get_write_buffer_limits() == (100, 1000)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=10, low=100)
        assert t.get_write_buffer_size() == 0


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_backpressure_through_layers(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine, name="one.test")
        await handshake(conn, pki, cengine, sengine, name="two.test")
        c.t.set_write_buffer_limits(high=64 * 1024)
        s.t.pause_reading()
        assert not s.t.is_reading()
        blob = bytes(range(256)) * (16 * 1024)  # 4 MiB
        c.t.write(blob)
        await c.until(lambda: c.pauses >= 1, "pause_writing")
        assert c.t.get_write_buffer_size() > 64 * 1024
        await settle()
        assert bytes(s.data) == b""
        s.t.resume_reading()
        assert s.t.is_reading()
        await s.until(lambda: len(s.data) >= len(blob), "all the data")
        assert hashlib.sha256(s.data).digest() == hashlib.sha256(blob).digest()
        await c.until(lambda: c.resumes == c.pauses, "resume_writing")
        await poll(lambda: c.t.get_write_buffer_size() == 0)


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_writes_queued_behind_a_handshake_count_for_flow_control(
    pki: PKI, cengine: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        fc = c.t.start_tls(pki.client(cengine), server_hostname=HOST)
        c.t.write(b"q" * 200_000)
        assert c.t.get_write_buffer_size() >= 200_000
        await c.until(lambda: c.pauses == 1, "pause_writing")
        fs = s.t.start_tls(pki.server(sengine), server_side=True)
        await both(fc, fs)
        await s.until(lambda: len(s.data) >= 200_000)
        await c.until(lambda: c.resumes == 1, "resume_writing")


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_pause_reading_never_stalls_handshake_or_shutdown(
    pki: PKI, cengine: str, sengine: str
) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine, name="one.test")
        s.t.pause_reading()
        # a new layer comes up while the server app reads nothing
        await handshake(conn, pki, cengine, sengine, name="two.test")
        c.t.write(b"inside two;")
        # and goes away again (both ends stop at once)
        (pc, ps) = await both(c.t.stop_tls(), s.t.stop_tls())
        assert pc.depth == ps.depth == 2
        c.t.write(b"inside one;")
        await settle()
        assert bytes(s.data) == b""
        assert not s.t.is_reading()
        s.t.resume_reading()
        await s.expect(b"inside two;inside one;")


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_large_write_through_three_layers(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        for depth in (1, 2, 3):
            await handshake(conn, pki, cengine, sengine, name=f"d{depth}.test")
        blob = hashlib.sha256(b"seed").digest() * (256 * 1024)  # 8 MiB
        c.t.write(blob)
        await s.until(lambda: len(s.data) >= len(blob), "8 MiB")
        assert bytes(s.data) == blob


# -- details: BufferedProtocol, set_protocol ---------------------------------------------


class BufApp(App, asyncio.BufferedProtocol):
    """A BufferedProtocol app with a tiny buffer."""

    def __init__(self) -> None:
        App.__init__(self)
        self.buf = bytearray(7)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        App.data_received(self, bytes(self.buf[:nbytes]))


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_buffered_protocol_app(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback(BufApp, BufApp) as conn:
        c, s = conn.c, conn.s
        assert isinstance(c, BufApp)
        s.on_eof = lambda: bool(s.t.stop_tls()) if s.t.layers else False
        for depth in (1, 2):
            await handshake(conn, pki, cengine, sengine, name=f"d{depth}.test")
            c.t.write(b"buffered data at depth %d" % depth)
            await s.expect(b"buffered data at depth %d" % depth)
        await both(c.t.stop_tls())
        c.t.write(b"one layer")
        await s.expect(b"one layer")
        c.t.close()
        assert await c.wait_lost() is None
        assert await s.wait_lost() is None


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_set_protocol_mid_connection(pki: PKI, cengine: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, cengine, sengine)
        s.t.write(b"to A")
        await c.expect(b"to A")
        b = App()
        b.transport = c.t
        c.t.set_protocol(b)
        assert c.t.get_protocol() is b
        s.t.write(b"to B")
        await b.expect(b"to B")
        # and to a BufferedProtocol, mid-layer
        bb = BufApp()
        bb.transport = c.t
        c.t.set_protocol(bb)
        s.t.write(b"to the buffered one")
        await bb.expect(b"to the buffered one")
        s.t.close()
        assert await bb.wait_lost() is None
        assert bb.eofs == [1]
        assert c.lost == [] and b.lost == []
        assert bytes(c.data) == b"" and bytes(b.data) == b""


# -- 11. logging and SSLKEYLOGFILE ---------------------------------------------------------


async def test_logging_under_the_onion_tls_logger(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="onion_tls")
    async with loopback() as conn:
        c, s = conn.c, conn.s
        s.on_eof = lambda: bool(s.t.stop_tls())
        await handshake(conn, pki, "pyopenssl", "stdlib", name="one.test")
        lc, _ = await handshake(conn, pki, "stdlib", "pyopenssl", name="two.test")
        await both(c.t.stop_tls())
        fc = c.t.start_tls(pki.client("stdlib"), server_hostname="wrong.test")
        s.t.start_tls(pki.server("stdlib", "right.test"), server_side=True)
        with pytest.raises(onion_tls.HandshakeError):
            await fc
        await c.wait_lost()
    records = [r for r in caplog.records if r.name.startswith("onion_tls")]
    text = "\n".join(r.getMessage() for r in records).lower()
    assert records
    assert "tlsv1.3" in text
    assert lc.cipher is not None and lc.cipher.lower() in text
    assert "layer 2" in text or "depth 2" in text
    assert "handshake" in text
    assert "pop" in text or "unwrap" in text
    assert "alert" in text
    assert "hostname" in text


@pytest.mark.parametrize(("cengine", "sengine"), MIXED)
async def test_sslkeylogfile_per_layer(
    pki: PKI, cengine: str, sengine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    async with loopback() as conn:
        for depth in (1, 2):
            await handshake(conn, pki, cengine, sengine, name=f"d{depth}.test")
        conn.c.t.write(b"x")
        await conn.s.expect(b"x")
    lines = keylog.read_text().splitlines()
    randoms = {line.split()[1] for line in lines if line.startswith("CLIENT_TRAFFIC_SECRET_0")}
    assert len(randoms) == 2, lines
