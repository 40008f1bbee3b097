"""Acceptance: DESIGN.md behaviours 6 (failures are clear and contained),
7 (EOF is honest) and 8 (verification), black box over loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest

import onion_tls

from .contract_kit import (
    CLIENT_KINDS,
    ENGINES,
    HOST,
    PKI,
    WAIT,
    App,
    both,
    handshake,
    loopback,
    raw_peer,
    settle,
)

PAIRS = [(c, s) for c in CLIENT_KINDS for s in ENGINES]


@pytest.fixture
def pki() -> PKI:
    return PKI()


async def failure_of(fut: asyncio.Future[onion_tls.TLSLayer]) -> BaseException:
    async with asyncio.timeout(WAIT):
        with pytest.raises(onion_tls.OnionError) as info:
            await fut
    return info.value


def assert_names_depth(exc: BaseException, depth: int) -> None:
    assert isinstance(exc, onion_tls.OnionError)
    assert exc.depth == depth
    assert str(depth) in str(exc)


async def both_lost(conn_c: App, conn_s: App) -> tuple[BaseException | None, BaseException | None]:
    return await conn_c.wait_lost(), await conn_s.wait_lost()


# -- 6. failed handshakes ----------------------------------------------------------------


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
@pytest.mark.parametrize("depth", [1, 2])
async def test_hostname_mismatch(pki: PKI, ckind: str, sengine: str, depth: int) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        if depth == 2:
            await handshake(conn, pki, ckind, sengine, name="outer.test")
        fs = s.t.start_tls(pki.server(sengine, "real.test"), server_side=True)
        fc = c.t.start_tls(pki.client(ckind), server_hostname="wrong.test")
        err = await failure_of(fc)
        assert isinstance(err, onion_tls.HandshakeError)
        assert_names_depth(err, depth)
        assert "hostname" in str(err).lower()
        serr = await failure_of(fs)
        assert isinstance(serr, onion_tls.HandshakeError)
        assert_names_depth(serr, depth)
        lc, ls = await both_lost(c, s)
        assert isinstance(lc, onion_tls.HandshakeError) and lc.depth == depth
        assert isinstance(ls, onion_tls.OnionError)
        await settle()
        assert len(c.lost) == 1 and len(s.lost) == 1
        assert c.eofs == [] and s.eofs == []


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_unknown_ca(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        fs = s.t.start_tls(pki.server(sengine), server_side=True)
        fc = c.t.start_tls(pki.client(ckind, trust=False), server_hostname=HOST)
        err = await failure_of(fc)
        assert isinstance(err, onion_tls.HandshakeError)
        assert_names_depth(err, 1)
        assert "certificate" in str(err).lower()
        assert isinstance(await failure_of(fs), onion_tls.HandshakeError)
        lc, ls = await both_lost(c, s)
        assert lc is not None and ls is not None


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_no_common_protocol_version(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        fs = s.t.start_tls(pki.server(sengine, version="TLSv1.3"), server_side=True)
        cctx = pki.client(ckind)
        if isinstance(cctx, ssl.SSLContext):
            cctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            from OpenSSL import SSL

            cctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        fc = c.t.start_tls(cctx, server_hostname=HOST)
        cerr = await failure_of(fc)
        serr = await failure_of(fs)
        for err in (cerr, serr):
            assert isinstance(err, onion_tls.HandshakeError)
            assert_names_depth(err, 1)
            assert "version" in str(err).lower(), str(err)
        await both_lost(c, s)


@pytest.mark.parametrize("ckind", CLIENT_KINDS)
async def test_a_failing_client_sends_the_peer_an_alert(pki: PKI, ckind: str) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(ckind), server_hostname="wrong.test")
        with pytest.raises(ssl.SSLError) as info:
            await peer.handshake(pki.server("stdlib", "real.test"), server_side=True)
        assert "ALERT" in str(info.value).upper()
        err = await failure_of(fut)
        assert "hostname" in str(err).lower()
        assert isinstance(await app.wait_lost(), onion_tls.HandshakeError)


async def test_stdlib_client_context_without_server_hostname_is_refused(pki: PKI) -> None:
    """ssl.create_default_context() checks hostnames: as with asyncio, a
    layer without server_hostname is refused at call time."""
    async with loopback() as conn:
        with pytest.raises(ValueError, match="server_hostname"):
            conn.c.t.start_tls(pki.client("stdlib"))
        assert conn.c.t.layers == ()
        conn.c.t.write(b"still usable")
        await conn.s.expect(b"still usable")


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_ip_address_server_hostname(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        fs = conn.s.t.start_tls(pki.server(sengine, "127.0.0.1"), server_side=True)
        fc = conn.c.t.start_tls(pki.client(ckind), server_hostname="127.0.0.1")
        lc, _ = await both(fc, fs)
        assert lc.server_hostname == "127.0.0.1"
        fs = conn.s.t.start_tls(pki.server(sengine, "127.0.0.1"), server_side=True)
        fc = conn.c.t.start_tls(pki.client(ckind), server_hostname="127.0.0.2")
        err = await failure_of(fc)
        assert_names_depth(err, 2)
        await both_lost(conn.c, conn.s)


# -- 6. garbage, vanishing peers, timeouts ------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_garbage_instead_of_a_client_hello(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=False) as (app, peer):
        fut = app.t.start_tls(pki.server(engine), server_side=True)
        peer.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        err = await failure_of(fut)
        assert isinstance(err, onion_tls.HandshakeError)
        assert_names_depth(err, 1)
        assert isinstance(await app.wait_lost(), onion_tls.OnionError)
        await peer.read_to_eof()  # the socket is closed (after an alert, maybe)


@pytest.mark.parametrize("engine", ENGINES)
async def test_garbage_inside_an_established_layer(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=False) as (app, peer):
        fut = app.t.start_tls(pki.server(engine), server_side=True)
        await peer.handshake(pki.client("stdlib"), server_side=False, hostname=HOST)
        await both(fut)
        peer.send(peer.encrypt(b"fine"))
        await app.expect(b"fine")
        peer.send(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a record that fails its MAC
        exc = await app.wait_lost()
        assert isinstance(exc, onion_tls.OnionError)
        assert not isinstance(exc, onion_tls.HandshakeError)
        assert_names_depth(exc, 1)
        assert app.eofs == []


@pytest.mark.parametrize("engine", ENGINES)
async def test_peer_vanishes_mid_handshake(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=False) as (app, peer):
        fut = app.t.start_tls(pki.server(engine), server_side=True)
        peer.begin(pki.client("stdlib"), server_side=False, hostname=HOST)
        assert peer.tls is not None
        with pytest.raises(ssl.SSLWantReadError):
            peer.tls.do_handshake()
        hello = peer.pending_out()
        peer.send(hello[: len(hello) // 2])
        await peer.aclose()
        err = await failure_of(fut)
        assert isinstance(err, onion_tls.HandshakeError)
        assert_names_depth(err, 1)
        assert isinstance(await app.wait_lost(), onion_tls.OnionError)
        await settle()
        assert len(app.lost) == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_peer_vanishes_mid_shutdown(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        stop = app.t.stop_tls()
        await peer.until_close_notify()
        await peer.aclose()  # no close_notify of its own
        err = await failure_of(stop)
        assert err.depth == 1
        exc = await app.wait_lost()
        assert isinstance(exc, onion_tls.OnionError)
        assert app.eofs == []


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("server_side", [False, True])
async def test_handshake_timeout(pki: PKI, engine: str, server_side: bool) -> None:
    async with raw_peer(onion_is_client=not server_side) as (app, _peer):
        ctx = pki.server(engine) if server_side else pki.client(engine)
        kw = {} if server_side else {"server_hostname": HOST}
        fut = app.t.start_tls(ctx, server_side=server_side, handshake_timeout=0.2, **kw)
        err = await failure_of(fut)  # the silent peer never answers
        assert isinstance(err, onion_tls.HandshakeError)
        assert_names_depth(err, 1)
        assert "time" in str(err).lower()
        assert isinstance(err, TimeoutError)
        exc = await app.wait_lost()
        assert isinstance(exc, onion_tls.OnionError)
        await settle()
        assert len(app.lost) == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_shutdown_timeout(pki: PKI, engine: str) -> None:
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        stop = app.t.stop_tls(timeout=0.2)
        await peer.until_close_notify()  # ... and never answers
        err = await failure_of(stop)
        assert_names_depth(err, 1)
        assert "time" in str(err).lower()
        assert isinstance(await app.wait_lost(), onion_tls.OnionError)


async def test_bad_timeouts_are_refused_at_call_time(pki: PKI) -> None:
    async with loopback() as conn:
        for bad in (0, -1.0, float("nan")):
            with pytest.raises(ValueError):
                conn.c.t.start_tls(
                    pki.client("stdlib"), server_hostname=HOST, handshake_timeout=bad
                )
        assert conn.c.t.layers == ()


# -- 7. EOF is honest --------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_truncation_is_told_apart_from_a_clean_close(pki: PKI, engine: str) -> None:
    # clean: close_notify, then EOF
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        peer.send(peer.encrypt(b"bye") + peer.close_notify())
        peer.writer.write_eof()
        assert await app.wait_lost() is None
        assert app.eofs == [1] and bytes(app.data) == b"bye"
    # truncated: EOF with no close_notify
    async with raw_peer(onion_is_client=True) as (app, peer):
        fut = app.t.start_tls(pki.client(engine), server_hostname=HOST)
        await peer.handshake(pki.server("stdlib"), server_side=True)
        await both(fut)
        peer.send(peer.encrypt(b"bye"))
        peer.writer.write_eof()
        exc = await app.wait_lost()
        assert exc is not None
        assert isinstance(exc, onion_tls.OnionError)
        assert_names_depth(exc, 1)
        assert "truncat" in str(exc).lower()
        assert bytes(app.data) == b"bye"  # what came before is still delivered
        assert app.eofs == []


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_truncation_inside_layer_two(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        c, s = conn.c, conn.s
        await handshake(conn, pki, ckind, sengine, name="one.test")
        await handshake(conn, pki, ckind, sengine, name="two.test")
        # the server closes layer 2 and layer 1 ... no: it just drops the socket
        c.t.write(b"x")
        await s.expect(b"x")
        s.t.abort()
        exc = await c.wait_lost()
        # Under a layer, an EOF or a reset is a TruncatedError naming the
        # innermost layer (rule 14), never a bare OSError.
        assert isinstance(exc, onion_tls.TruncatedError), exc
        assert exc.depth == 2
        assert exc.__cause__ is None or isinstance(exc.__cause__, ConnectionError)
        assert c.eofs == []


# -- 8. verification --------------------------------------------------------------------


@pytest.mark.parametrize("sengine", ENGINES)
async def test_pyopenssl_without_set_verify_still_checks_the_hostname(
    pki: PKI, sengine: str
) -> None:
    async with loopback() as conn:
        fs = conn.s.t.start_tls(pki.server(sengine, "real.test"), server_side=True)
        fc = conn.c.t.start_tls(pki.client("pyopenssl-nv"), server_hostname="other.test")
        err = await failure_of(fc)
        assert "hostname" in str(err).lower()
        with pytest.raises(onion_tls.OnionError):
            await fs
        await both_lost(conn.c, conn.s)


@pytest.mark.parametrize(("ckind", "sengine"), PAIRS)
async def test_mutual_tls(pki: PKI, ckind: str, sengine: str) -> None:
    async with loopback() as conn:
        fs = conn.s.t.start_tls(pki.server(sengine, want_client_cert=True), server_side=True)
        fc = conn.c.t.start_tls(pki.client(ckind, cert_name="client.test"), server_hostname=HOST)
        lc, ls = await both(fc, fs)
        assert ls.peer_certificate is not None
        assert "client.test" in ls.peer_certificate.subject.rfc4514_string() or any(
            "client.test" in str(n) for n in ls.peer_certificate.extensions
        )
        # and one without a client certificate is refused
        fs = conn.s.t.start_tls(pki.server(sengine, want_client_cert=True), server_side=True)
        fc = conn.c.t.start_tls(pki.client(ckind), server_hostname=HOST)
        serr = await failure_of(fs)
        assert isinstance(serr, onion_tls.HandshakeError) and serr.depth == 2
        # in TLS 1.3 the client's side of the handshake may already be done
        # when the server refuses it: either way its connection ends in error
        await asyncio.wait([fc], timeout=WAIT)
        lc, ls = await both_lost(conn.c, conn.s)
        assert lc is not None and ls is not None
