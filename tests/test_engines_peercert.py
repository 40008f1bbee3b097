"""``get_extra_info("peercert")``: the stdlib's own getpeercert() dict for
stdlib layers, and the very same dict, built by onion_tls, for pyOpenSSL
layers - checked field by field against the stdlib on one certificate."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL, crypto

from onion_tls._peercert import peercert_dict

from .helpers import PlainCA, close_both, recorder_pair, rich_san, rich_subject
from .helpers import start_layer_with as start_layer

UTC = dt.UTC


def _at(*fields: int) -> dt.datetime:
    return dt.datetime(*fields, tzinfo=UTC)


CASES = {
    # serial, not_before, not_after
    "one": (1, _at(2020, 1, 5, 3, 4, 5), _at(2040, 12, 25, 23, 59, 59)),
    "small-byte": (0x0A, _at(2019, 10, 10, 10, 10, 10), _at(2049, 12, 31, 0, 0, 0)),
    # odd number of hex digits; GeneralizedTime (after 2049) for notAfter
    "odd-digits": (0x1234567, _at(2021, 2, 9, 9, 5, 0), _at(2051, 2, 3, 4, 5, 6)),
    # DER needs a leading zero byte here
    "top-bit": (0x80 << (8 * 18), _at(2022, 11, 1, 0, 0, 1), _at(2099, 7, 17, 18, 19, 20)),
    "max-159-bits": ((1 << 159) - 1, _at(2000, 1, 1, 0, 0, 0), _at(2038, 1, 19, 3, 14, 8)),
}


def _server_ctx(pem: bytes, tmp_path: Path) -> ssl.SSLContext:
    path = tmp_path / "server.pem"
    path.write_bytes(pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(path)
    return ctx


def _client_ctx(engine: str, ca: PlainCA, *, verify: bool = True) -> Any:
    if engine == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            ctx.load_verify_locations(cadata=ca.pem.decode())
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    pctx = SSL.Context(SSL.TLS_METHOD)
    if verify:
        pctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ca.cert))  # type: ignore[union-attr]
    return pctx


@pytest.mark.parametrize("case", sorted(CASES))
async def test_peercert_is_getpeercert_for_both_engines(case: str, tmp_path: Path) -> None:
    serial, not_before, not_after = CASES[case]
    ca = PlainCA()
    cert, pem = ca.issue(
        serial=serial,
        not_before=not_before,
        not_after=not_after,
        subject=rich_subject(),
        san=rich_san(),
    )
    sctx = _server_ctx(pem, tmp_path)
    seen: dict[str, Any] = {}
    for engine in ("stdlib", "pyopenssl"):
        pair, _, _ = await recorder_pair()
        lc, _ = await start_layer(pair, _client_ctx(engine, ca), sctx, server_hostname="rich.test")
        seen[engine] = pair.client.get_extra_info("peercert")
        assert lc.peer_certificate == cert
        await close_both(pair)

    stdlib = seen["stdlib"]
    ours = peercert_dict(cert)
    # Field by field first, so a failure names the field.
    assert sorted(ours) == sorted(stdlib)
    for key in stdlib:
        assert ours[key] == stdlib[key], key
    assert seen["pyopenssl"] == stdlib
    # The formats the stdlib uses, spelled out.
    assert len(stdlib["serialNumber"]) % 2 == 0
    assert stdlib["serialNumber"] == stdlib["serialNumber"].upper()
    assert stdlib["notBefore"].endswith(" GMT")
    assert {"OCSP", "caIssuers", "crlDistributionPoints", "subjectAltName"} <= set(stdlib)


async def test_unverified_peer_gives_empty_dict_for_both_engines(tmp_path: Path) -> None:
    ca = PlainCA()
    cert, pem = ca.issue(
        serial=7,
        not_before=_at(2020, 1, 1),
        not_after=_at(2040, 1, 1),
        subject=rich_subject(),
        san=rich_san(),
    )
    sctx = _server_ctx(pem, tmp_path)
    for engine in ("stdlib", "pyopenssl"):
        pair, _, _ = await recorder_pair()
        # no server_hostname and no verification: asyncio shows {} then
        lc, ls = await start_layer(
            pair, _client_ctx(engine, ca, verify=False), sctx, server_hostname=None
        )
        assert pair.client.get_extra_info("peercert") == {}, engine
        assert lc.peer_certificate == cert  # the certificate itself is there
        # The server asked for no client certificate: None, as asyncio says.
        assert pair.server.get_extra_info("peercert") is None
        assert ls.peer_certificate is None
        await close_both(pair)


async def test_client_certificate_seen_by_the_server_alike(onion_ca: Any) -> None:
    """Mutual TLS: each server engine shows the client's certificate in the
    same dict form."""
    seen = {}
    for engine in ("stdlib", "pyopenssl"):
        pair, _, _ = await recorder_pair()
        sctx = onion_ca.server_context(1, engine, require_client_cert=True)
        cctx = onion_ca.client_context("stdlib", depth=1)
        _, ls = await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(1))
        seen[engine] = pair.server.get_extra_info("peercert")
        pem = onion_ca.client_cert(1).cert_chain_pems[0].bytes()
        assert ls.peer_certificate == x509.load_pem_x509_certificate(pem)
        await close_both(pair)
    assert seen["stdlib"] == seen["pyopenssl"]
    assert ("DNS", "client1.onion.test") in seen["stdlib"]["subjectAltName"]
