"""The pyOpenSSL engine's two ways of working give the same answers.

With pyOpenSSL's cffi binding (the "direct path") OpenSSL checks the
server's name itself and the engine asks OpenSSL whether a session was
resumed; through pyOpenSSL's public API alone, a verify callback asks
service_identity and an info callback watches the handshake.  Names (DNS,
wildcard, IP address), refusals in words, and resumption must not depend on
which one runs.
"""

from __future__ import annotations

import asyncio

import pytest
import trustme

import onion_tls
from onion_tls import HandshakeError, _openssl_ffi
from onion_tls.testing import OnionCA, memory_pair

from .test_certs import App, _settle
from .test_engines_resume import MODES, test_second_connection_resumes_every_depth


@pytest.fixture(params=["direct", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "public":
        monkeypatch.setattr(_openssl_ffi, "DIRECT_API", False)
        monkeypatch.setattr(_openssl_ffi, "HOST_CHECK_API", False)
    else:
        assert _openssl_ffi.available() and _openssl_ffi.HOST_CHECK_API
    return str(request.param)


async def _connect(
    ca: trustme.CA, cert_for: list[str], server_hostname: str
) -> tuple[onion_tls.TLSLayer | BaseException, onion_tls.TLSLayer | BaseException]:
    """A depth-1 handshake: a server certificate for ``cert_for``, a client
    (pyOpenSSL, trusting ``ca``) asking for ``server_hostname``."""
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    from OpenSSL import SSL

    sctx = SSL.Context(SSL.TLS_METHOD)
    ca.issue_cert(*cert_for).configure_cert(sctx)
    cctx = SSL.Context(SSL.TLS_METHOD)
    ca.configure_trust(cctx)
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(cctx, server_hostname=server_hostname)
    lc, ls = await asyncio.gather(fc, fs, return_exceptions=True)
    if isinstance(lc, onion_tls.TLSLayer):
        assert lc.engine == "pyopenssl"
        pair.client.close()
    await _settle(client, server)
    return lc, ls


ACCEPTED = [
    (["layer1.onion.test"], "layer1.onion.test"),
    (["layer1.onion.test"], "LAYER1.Onion.Test"),
    (["*.wild.onion.test"], "a.wild.onion.test"),
    (["other.onion.test", "127.0.0.1"], "127.0.0.1"),
    (["::1"], "::1"),
]
REFUSED = [
    (["layer1.onion.test"], "layer2.onion.test", "hostname mismatch"),
    (["*.wild.onion.test"], "a.b.wild.onion.test", "hostname mismatch"),
    (["*.wild.onion.test"], "wild.onion.test", "hostname mismatch"),
    (["127.0.0.1"], "127.0.0.2", "IP address mismatch"),
    (["layer1.onion.test"], "127.0.0.1", "IP address mismatch"),
    (["127.0.0.1"], "localhost", "hostname mismatch"),
]


@pytest.mark.parametrize(("names", "asked"), ACCEPTED)
async def test_names_accepted_alike(path: str, names: list[str], asked: str) -> None:
    lc, ls = await _connect(trustme.CA(), names, asked)
    assert isinstance(lc, onion_tls.TLSLayer), lc
    assert isinstance(ls, onion_tls.TLSLayer), ls


@pytest.mark.parametrize(("names", "asked", "words"), REFUSED)
async def test_names_refused_alike(path: str, names: list[str], asked: str, words: str) -> None:
    lc, ls = await _connect(trustme.CA(), names, asked)
    assert isinstance(lc, HandshakeError), lc
    assert lc.depth == 1
    assert str(lc) == (
        f"TLS layer 1 (depth 1): certificate verify failed: {words}: "
        f"certificate is not valid for {asked!r}"
    )
    # the server was told, by an alert, and fails at its depth too
    assert isinstance(ls, HandshakeError), ls
    assert "alert" in str(ls)


async def test_untrusted_chain_is_refused_before_the_name(path: str) -> None:
    pair_ca, other_ca = trustme.CA(), trustme.CA()
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    from OpenSSL import SSL

    sctx = SSL.Context(SSL.TLS_METHOD)
    other_ca.issue_cert("elsewhere.onion.test").configure_cert(sctx)
    cctx = SSL.Context(SSL.TLS_METHOD)
    pair_ca.configure_trust(cctx)
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(cctx, server_hostname="layer1.onion.test")
    lc, _ = await asyncio.gather(fc, fs, return_exceptions=True)
    assert isinstance(lc, HandshakeError)
    assert "unable to get local issuer certificate" in str(lc), lc
    await _settle(client, server)


@pytest.mark.parametrize("mode", MODES)
async def test_resumption_alike(onion_ca: OnionCA, path: str, mode: str) -> None:
    # session_reused on both ends, session None before a TLS 1.3 ticket and
    # set after it, at depths 1-3 (the resume suite's own checks)
    await test_second_connection_resumes_every_depth(onion_ca, "pyopenssl", "pyopenssl", mode)


async def test_alerts_are_logged_at_debug_on_both_paths(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG logging the info callback is installed on both paths (the
    direct path leaves it out otherwise) and the alert sent is logged."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="onion_tls"):
        lc, _ = await _connect(trustme.CA(), ["layer1.onion.test"], "nobody.onion.test")
    assert isinstance(lc, HandshakeError)
    sent = [r.getMessage() for r in caplog.records if "alert sent" in r.getMessage()]
    expected = "bad_certificate" if path == "direct" else "internal_error"
    assert sent == [f"layer 1: alert sent: fatal {expected}"], sent
