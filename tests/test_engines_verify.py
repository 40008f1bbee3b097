"""Certificate and name checks for both engines; failures say why in words,
name the depth, and reach the peer as an alert."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from typing import Any

import pytest
import trustme
from OpenSSL import SSL

import onion_tls
from onion_tls.testing import ENGINES, OnionCA, OnionPair

from .helpers import Recorder, close_both, ping, recorder_pair
from .helpers import start_layer_with as start_layer

PAIRS = [(c, s) for c in ENGINES for s in ENGINES]


def _server_ctx(leaf: trustme.LeafCert, engine: str) -> Any:
    if engine == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        leaf.configure_cert(ctx)
        return ctx
    pctx = SSL.Context(SSL.TLS_METHOD)
    leaf.configure_cert(pctx)
    return pctx


async def _failing_layer(
    pair: OnionPair, cctx: Any, sctx: Any, server_hostname: str
) -> tuple[onion_tls.HandshakeError, onion_tls.HandshakeError]:
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(cctx, server_hostname=server_hostname)
    ec, es = await asyncio.gather(fc, fs, return_exceptions=True)
    assert isinstance(ec, onion_tls.HandshakeError), ec
    assert isinstance(es, onion_tls.HandshakeError), es
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    assert await client.wait_lost() is ec
    assert isinstance(await server.wait_lost(), onion_tls.HandshakeError)
    return ec, es


CASES = ["hostname", "unknown-ca", "expired", "ip"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize(("client_engine", "server_engine"), PAIRS)
async def test_verify_failure_in_words_at_depth_2(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any, case: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    cctx = onion_ca.client_context(client_engine)
    if case == "hostname":
        sctx = onion_ca.server_context(2, server_engine)
        name, words = "elsewhere.onion.test", "hostname mismatch"
    elif case == "unknown-ca":
        sctx = onion_ca.server_context(2, server_engine)
        cctx = OnionCA().client_context(client_engine)
        name, words = onion_ca.hostname(2), "unknown CA"
    elif case == "expired":
        leaf = onion_ca.ca.issue_cert(
            "expired.onion.test",
            not_before=now - dt.timedelta(days=30),
            not_after=now - dt.timedelta(days=1),
        )
        sctx = _server_ctx(leaf, server_engine)
        name, words = "expired.onion.test", "certificate has expired"
    else:
        sctx = _server_ctx(onion_ca.ca.issue_cert("127.0.0.1"), server_engine)
        name, words = "127.0.0.2", "IP address mismatch"

    pair, _, _ = await recorder_pair()
    await start_layer(
        pair,
        onion_ca.client_context(client_engine),
        onion_ca.server_context(1, server_engine),
        server_hostname=onion_ca.hostname(1),
    )
    await ping(pair)
    ec, es = await _failing_layer(pair, cctx, sctx, name)
    assert ec.depth == es.depth == 2
    assert "certificate verify failed" in ec.reason
    assert words in ec.reason
    assert "layer 2" in str(ec)
    if case in ("hostname", "ip"):
        assert repr(name) in ec.reason  # which name was refused
    # The server learnt it from the client's alert.
    assert "the peer refused" in es.reason
    assert "alert" in es.reason


@pytest.mark.parametrize("server_engine", ENGINES)
async def test_stdlib_follows_check_hostname(onion_ca: OnionCA, server_engine: Any) -> None:
    """A stdlib client context without check_hostname accepts another name
    (what the context asks for); with it, the name is checked."""
    cctx = onion_ca.client_context("stdlib")
    cctx.check_hostname = False
    pair, _, _ = await recorder_pair()
    lc, _ = await start_layer(
        pair, cctx, onion_ca.server_context(1, server_engine), server_hostname="other.test"
    )
    assert lc.server_hostname == "other.test"
    await ping(pair)
    await close_both(pair)


@pytest.mark.parametrize("server_engine", ENGINES)
async def test_pyopenssl_checks_the_name_even_with_verify_none(
    onion_ca: OnionCA, server_engine: Any
) -> None:
    """pyOpenSSL has no check_hostname: a client layer given a
    server_hostname always verifies chain and name."""
    cctx = onion_ca.client_context("pyopenssl")
    assert cctx.get_verify_mode() == SSL.VERIFY_NONE
    pair, _, _ = await recorder_pair()
    ec, _ = await _failing_layer(
        pair, cctx, onion_ca.server_context(1, server_engine), "other.test"
    )
    assert "hostname mismatch" in ec.reason
    # ... and the context itself was not changed.
    assert cctx.get_verify_mode() == SSL.VERIFY_NONE


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_missing_client_certificate(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any
) -> None:
    sctx = onion_ca.server_context(1, server_engine, require_client_cert=True)
    pair, _, _ = await recorder_pair()
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(
        onion_ca.client_context(client_engine), server_hostname=onion_ca.hostname(1)
    )
    ec, es = await asyncio.gather(fc, fs, return_exceptions=True)
    assert isinstance(es, onion_tls.HandshakeError)
    assert es.depth == 1
    assert "certificate" in es.reason
    # TLS 1.3: the client's handshake is over before the server refuses,
    # so the client learns it from the alert, as a failure of layer 1.
    assert isinstance(ec, (onion_tls.HandshakeError, onion_tls.TLSLayer))
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    lost = await client.wait_lost()
    assert isinstance(lost, onion_tls.OnionError)
    assert lost.depth == 1
    assert "alert" in lost.reason
