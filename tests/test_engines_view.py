"""TLSLayer and get_extra_info answer the same way for both engines, for
every pairing of engines across a layer, at every depth."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

from onion_tls.testing import ENGINES, OnionCA

from .helpers import close_both, ping, recorder_pair
from .helpers import start_layer_with as start_layer

PAIRS = [(c, s) for c in ENGINES for s in ENGINES]
VERSIONS = ["TLSv1.2", "TLSv1.3"]


def _leaf(cert: Any) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("client_engine", "server_engine"), PAIRS)
async def test_views_answer_alike(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any, version: str
) -> None:
    pair, _, _ = await recorder_pair()
    for depth in (1, 2, 3):
        mutual = depth == 2
        alpn = f"proto-{depth}"
        sctx = onion_ca.server_context(
            depth, server_engine, version=version, require_client_cert=mutual, alpn=[alpn, "h2"]
        )
        cctx = onion_ca.client_context(
            client_engine, version=version, depth=depth if mutual else None, alpn=["zzz", alpn]
        )
        lc, ls = await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(depth))
        await ping(pair)

        assert (lc.depth, ls.depth) == (depth, depth)
        assert (lc.server_side, ls.server_side) == (False, True)
        assert (lc.engine, ls.engine) == (client_engine, server_engine)
        assert lc.state == ls.state == "open"
        assert lc.version == ls.version == version
        assert lc.cipher is not None and lc.cipher == ls.cipher
        assert lc.alpn_protocol == ls.alpn_protocol == alpn
        # SNI: what the client asked for, seen on both sides
        assert lc.server_hostname == ls.server_hostname == onion_ca.hostname(depth)
        assert isinstance(lc.peer_certificate, x509.Certificate)
        assert lc.peer_certificate == _leaf(onion_ca.server_cert(depth))
        if mutual:
            assert ls.peer_certificate == _leaf(onion_ca.client_cert(depth))
        else:
            assert ls.peer_certificate is None
        assert lc.session_reused is ls.session_reused is False
        assert ls.session is None  # only a client resumes
        for view, engine in ((lc, client_engine), (ls, server_engine)):
            expected = SSL.Connection if engine == "pyopenssl" else ssl.SSLObject
            assert isinstance(view.ssl_object, expected)

        # get_extra_info answers for the innermost layer, as asyncio does
        for transport, view, ctx in ((pair.client, lc, cctx), (pair.server, ls, sctx)):
            assert transport.layers[-1] is view
            assert transport.get_extra_info("layers") == transport.layers
            assert transport.get_extra_info("ssl_object") is view.ssl_object
            assert transport.get_extra_info("sslcontext") is ctx
            assert transport.get_extra_info("ssl_version") == version
            cipher = transport.get_extra_info("cipher")
            assert isinstance(cipher, tuple) and len(cipher) == 3
            name, proto, bits = cipher
            assert name == view.cipher
            assert proto == ("TLSv1.3" if version == "TLSv1.3" else "TLSv1.2")
            assert isinstance(bits, int) and bits >= 128
            assert transport.get_extra_info("compression") is None  # as asyncio says
            if view.engine == "stdlib":
                assert cipher == view.ssl_object.cipher()
                assert transport.get_extra_info("peercert") == view.ssl_object.getpeercert()
            # raw transport keys pass through
            assert transport.get_extra_info("peername") is not None
        # both ends of one session name the same cipher tuple
        assert pair.client.get_extra_info("cipher") == pair.server.get_extra_info("cipher")
        peercert = pair.client.get_extra_info("peercert")
        assert ("DNS", onion_ca.hostname(depth)) in peercert["subjectAltName"]
        if mutual:
            assert ("DNS", f"client{depth}.onion.test") in pair.server.get_extra_info("peercert")[
                "subjectAltName"
            ]
        else:
            assert pair.server.get_extra_info("peercert") is None
    await close_both(pair)


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_no_sni_and_no_alpn(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any
) -> None:
    pair, _, _ = await recorder_pair()
    sctx = onion_ca.server_context(1, server_engine)
    cctx = onion_ca.client_context(client_engine)
    if client_engine == "stdlib":
        cctx.check_hostname = False  # no name to check without server_hostname
    lc, ls = await start_layer(pair, cctx, sctx, server_hostname=None)
    assert lc.server_hostname is None
    assert ls.server_hostname is None
    assert lc.alpn_protocol is ls.alpn_protocol is None
    await close_both(pair)


@pytest.mark.parametrize("client_engine", ENGINES)
async def test_stdlib_sni_callback_is_left_alone(onion_ca: OnionCA, client_engine: Any) -> None:
    """A user's sni_callback on a stdlib server context still runs and may
    switch the context; onion_tls installs nothing on it."""
    sctx = onion_ca.server_context(1, "stdlib")
    other = onion_ca.server_context(2, "stdlib")
    calls: list[str | None] = []

    def choose(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        calls.append(name)
        if name == onion_ca.hostname(2):
            obj.context = other

    sctx.sni_callback = choose
    pair, _, _ = await recorder_pair()
    cctx = onion_ca.client_context(client_engine)
    lc, ls = await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(2))
    assert calls == [onion_ca.hostname(2)]
    assert sctx.sni_callback is choose
    assert ls.server_hostname == lc.server_hostname == onion_ca.hostname(2)
    assert lc.peer_certificate == _leaf(onion_ca.server_cert(2))
    await close_both(pair)


@pytest.mark.parametrize("client_engine", ENGINES)
async def test_pyopenssl_servername_callback_still_runs(
    onion_ca: OnionCA, client_engine: Any
) -> None:
    sctx = onion_ca.server_context(1, "pyopenssl")
    other = onion_ca.server_context(3, "pyopenssl")
    calls: list[bytes | None] = []

    def choose(conn: SSL.Connection) -> None:
        calls.append(conn.get_servername())
        conn.set_context(other)

    sctx.set_tlsext_servername_callback(choose)
    pair, _, _ = await recorder_pair()
    cctx = onion_ca.client_context(client_engine)
    lc, ls = await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(3))
    assert calls == [onion_ca.hostname(3).encode()]
    assert ls.server_hostname == onion_ca.hostname(3)
    assert lc.peer_certificate == _leaf(onion_ca.server_cert(3))
    await close_both(pair)


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_ip_address_server_hostname(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any
) -> None:
    """An IP address is checked against the certificate's IP SANs and is
    not sent as SNI (RFC 6066)."""
    leaf = onion_ca.ca.issue_cert("127.0.0.1", "::1")
    pair, _, _ = await recorder_pair()
    sctx = _server_ctx_for(leaf, server_engine)
    cctx = onion_ca.client_context(client_engine)
    lc, ls = await start_layer(pair, cctx, sctx, server_hostname="::1")
    assert lc.server_hostname == "::1"
    assert ls.server_hostname is None
    assert pair.client.get_extra_info("peercert")["subjectAltName"] == (
        ("IP Address", "127.0.0.1"),
        ("IP Address", "0:0:0:0:0:0:0:1"),
    )
    await close_both(pair)


def _server_ctx_for(leaf: Any, engine: str) -> Any:
    if engine == "stdlib":
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(sctx)
        return sctx
    pctx = SSL.Context(SSL.TLS_METHOD)
    leaf.configure_cert(pctx)
    return pctx


async def test_session_argument_misuse(onion_ca: OnionCA) -> None:
    pair, _, _ = await recorder_pair()
    lc, _ = await start_layer(
        pair,
        onion_ca.client_context("stdlib", version="TLSv1.2"),
        onion_ca.server_context(1, "stdlib"),
        server_hostname=onion_ca.hostname(1),
    )
    session = lc.session
    assert isinstance(session, ssl.SSLSession)
    with pytest.raises(ValueError, match="only meaningful for a client"):
        pair.server.start_tls(
            onion_ca.server_context(2, "stdlib"), server_side=True, session=session
        )
    with pytest.raises(TypeError, match=r"resumes an OpenSSL\.SSL\.Session"):
        pair.client.start_tls(onion_ca.client_context("pyopenssl"), session=session)
    with pytest.raises(ValueError, match="same SSLContext"):
        pair.client.start_tls(onion_ca.client_context("stdlib"), session=session)
    assert len(pair.client.layers) == len(pair.server.layers) == 1  # nothing was pushed
    await close_both(pair)
