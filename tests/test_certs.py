"""Certificates and trust, at depth 1 and depth 2, for both engines on both
ends.

A bad certificate at depth d (the layers outside it are good) is refused:
the verifying side's ``start_tls`` future fails with a HandshakeError at
depth d whose message gives the reason in words, the other side's layer d
fails too (it is sent an alert), and both connections end once.  The same
setup with a good certificate from the same CA is accepted, which shows
that each refusal is about the certificate and nothing else.

Server certificates are checked by the client (every case below); client
certificates by a server that requires them (mutual TLS).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

import onion_tls
from onion_tls import HandshakeError
from onion_tls.testing import ENGINES, OnionCA, memory_pair

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


@dataclass
class Identity:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + self.cert.public_bytes(serialization.Encoding.PEM)


def _issuer(ca: trustme.CA) -> tuple[x509.Certificate, Any]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    return cert, key


def make_identity(
    issuer: trustme.CA | None,
    name: str,
    *,
    not_before: dt.datetime = NOW - DAY,
    not_after: dt.datetime = NOW + 30 * DAY,
    purposes: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
) -> Identity:
    """A leaf for ``name`` signed by ``issuer`` (self-signed if None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_cert, signing_key = _issuer(issuer)
        issuer_name = issuer_cert.subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage(list(purposes)), critical=False)
    )
    return Identity(builder.sign(signing_key, hashes.SHA256()), key)


def context_with(
    identity: Identity, engine: str, *, server_side: bool, trust: OnionCA | None
) -> Any:
    """A context presenting ``identity``; with ``trust``, it also requires and
    checks the peer's certificate against that CA."""
    if engine == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:
            f.write(identity.pem())
            f.flush()
            ctx.load_cert_chain(f.name)
        if trust is not None:
            trust.ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx
    pctx = SSL.Context(SSL.TLS_METHOD)
    pctx.use_certificate(identity.cert)
    pctx.use_privatekey(identity.key)
    if trust is not None:
        trust.ca.configure_trust(pctx)
        pctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1]))
    return pctx


# name -> (how to make it for depth d, words the verifier's error must contain)
SERVER_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "good": (lambda ca, d: make_identity(ca.ca, ca.hostname(d)), ()),
    "expired": (
        lambda ca, d: make_identity(
            ca.ca, ca.hostname(d), not_before=NOW - 60 * DAY, not_after=NOW - DAY
        ),
        ("certificate has expired",),
    ),
    "not-yet-valid": (
        lambda ca, d: make_identity(
            ca.ca, ca.hostname(d), not_before=NOW + DAY, not_after=NOW + 60 * DAY
        ),
        ("certificate is not yet valid",),
    ),
    "wrong-name": (
        lambda ca, d: make_identity(ca.ca, "somebody-else.onion.test"),
        ("hostname mismatch", "not valid for 'layer"),
    ),
    "wrong-purpose": (
        lambda ca, d: make_identity(
            ca.ca, ca.hostname(d), purposes=(ExtendedKeyUsageOID.CLIENT_AUTH,)
        ),
        ("unsuitable certificate purpose",),
    ),
    "self-signed": (
        lambda ca, d: make_identity(None, ca.hostname(d)),
        ("self-signed certificate",),
    ),
    "unknown-ca": (
        lambda ca, d: make_identity(trustme.CA(), ca.hostname(d)),
        ("unable to get local issuer certificate",),
    ),
}


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


async def _settle(*apps: App) -> None:
    for _ in range(200):
        if all(a.lost for a in apps):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the connections did not end")


def _check_refused(exc: BaseException, depth: int, words: tuple[str, ...]) -> None:
    assert isinstance(exc, HandshakeError), repr(exc)
    assert exc.depth == depth
    text = str(exc)
    assert f"TLS layer {depth}" in text, text
    assert exc.reason.startswith("certificate verify failed"), text
    for word in words:
        assert word in text, text


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
@pytest.mark.parametrize("case", list(SERVER_CASES))
async def test_server_certificate(
    onion_ca: OnionCA, case: str, client_engine: str, server_engine: str, depth: int
) -> None:
    make, words = SERVER_CASES[case]
    identity = make(onion_ca, depth)
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    for d in range(1, depth):
        await pair.start_tls(onion_ca, d, client_engine="stdlib", server_engine="pyopenssl")
    fs = pair.server.start_tls(
        context_with(identity, server_engine, server_side=True, trust=None), server_side=True
    )
    fc = pair.client.start_tls(
        onion_ca.client_context(client_engine),  # type: ignore[arg-type]
        server_hostname=onion_ca.hostname(depth),
    )
    results = await asyncio.gather(fc, fs, return_exceptions=True)
    if case == "good":
        lc, ls = results
        assert isinstance(lc, onion_tls.TLSLayer), lc
        assert lc.peer_certificate == identity.cert
        assert lc.depth == ls.depth == depth  # type: ignore[union-attr]
        pair.client.close()
        await _settle(client, server)
        assert client.lost == server.lost == [None]
        return
    _check_refused(results[0], depth, words)  # type: ignore[arg-type]
    # The server was told by an alert; its layer d failed, at depth d.
    assert isinstance(results[1], HandshakeError), results[1]
    assert results[1].depth == depth
    assert "alert" in str(results[1]), results[1]
    await _settle(client, server)
    assert client.lost == [results[0]]
    assert len(server.lost) == 1


CLIENT_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "good": (lambda ca, d: make_identity(ca.ca, f"client{d}.onion.test"), ()),
    "expired": (
        lambda ca, d: make_identity(
            ca.ca, f"client{d}.onion.test", not_before=NOW - 60 * DAY, not_after=NOW - DAY
        ),
        ("certificate has expired",),
    ),
    "wrong-purpose": (
        lambda ca, d: make_identity(
            ca.ca, f"client{d}.onion.test", purposes=(ExtendedKeyUsageOID.SERVER_AUTH,)
        ),
        ("unsuitable certificate purpose",),
    ),
    "self-signed": (
        lambda ca, d: make_identity(None, f"client{d}.onion.test"),
        ("self-signed certificate",),
    ),
    "unknown-ca": (
        lambda ca, d: make_identity(trustme.CA(), f"client{d}.onion.test"),
        ("unable to get local issuer certificate",),
    ),
}


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("case", list(CLIENT_CASES))
async def test_client_certificate(
    onion_ca: OnionCA, case: str, server_engine: str, depth: int
) -> None:
    """Mutual TLS at depth d: the server requires a certificate from this CA."""
    make, words = CLIENT_CASES[case]
    identity = make(onion_ca, depth)
    client_engine = "stdlib" if server_engine == "pyopenssl" else "pyopenssl"
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    for d in range(1, depth):
        await pair.start_tls(onion_ca, d)
    sctx = onion_ca.server_context(depth, server_engine, require_client_cert=True)  # type: ignore[arg-type]
    cctx = context_with(identity, client_engine, server_side=False, trust=onion_ca)
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(cctx, server_hostname=onion_ca.hostname(depth))
    results = await asyncio.gather(fc, fs, return_exceptions=True)
    if case == "good":
        _lc, ls = results
        assert isinstance(ls, onion_tls.TLSLayer), ls
        assert ls.peer_certificate == identity.cert
        pair.client.close()
        await _settle(client, server)
        assert client.lost == server.lost == [None]
        return
    _check_refused(results[1], depth, words)  # type: ignore[arg-type]
    # In TLS 1.3 the client's handshake is over before the server has
    # checked its certificate: its layer then fails on the alert that follows.
    await _settle(client, server)
    assert len(client.lost) == 1
    assert isinstance(client.lost[0], onion_tls.OnionError)
    assert client.lost[0].depth == depth
    assert server.lost == [results[1]]
