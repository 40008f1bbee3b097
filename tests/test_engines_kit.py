"""Shared helpers of the engine and interop tests (no tests in here)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import onion_tls
from onion_tls.testing import OnionCA, OnionPair, memory_pair

#: Each depth's engine on the client side and on the server side: every
#: layer's two ends use different engines (issue 3, "mixed stacks").
MIXED = {
    1: ("stdlib", "pyopenssl"),
    2: ("pyopenssl", "stdlib"),
    3: ("stdlib", "pyopenssl"),
}


class Recorder(asyncio.Protocol):
    """An application protocol that records what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eofs = 0
        self.lost: list[BaseException | None] = []
        self.transport: onion_tls.OnionTransport
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._changed.set()

    def eof_received(self) -> bool:
        self.eofs += 1
        self._changed.set()
        return bool(self.transport.layers)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self._changed.set()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.data) < n:
            if self.lost:
                raise AssertionError(f"lost ({self.lost}) with {bytes(self.data)!r}")
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def wait_lost(self) -> BaseException | None:
        while not self.lost:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        return self.lost[0]


async def recorder_pair(**kw: Any) -> tuple[OnionPair, Recorder, Recorder]:
    pair = await memory_pair(Recorder, Recorder, **kw)
    return pair, pair.client_protocol, pair.server_protocol  # type: ignore[return-value]


async def ping(pair: OnionPair, tag: bytes = b"ping") -> None:
    """One round trip at the current innermost layer (both directions)."""
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    pair.client.write(tag)
    assert await server.read_exactly(len(tag)) == tag
    pair.server.write(tag[::-1])
    assert await client.read_exactly(len(tag)) == tag[::-1]


async def close_both(pair: OnionPair) -> None:
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    pair.client.close()
    pair.server.close()
    assert await client.wait_lost() is None
    assert await server.wait_lost() is None


async def start_layer(
    pair: OnionPair,
    client_ctx: Any,
    server_ctx: Any,
    *,
    server_hostname: str | None,
    session: object | None = None,
) -> tuple[onion_tls.TLSLayer, onion_tls.TLSLayer]:
    fs = pair.server.start_tls(server_ctx, server_side=True)
    fc = pair.client.start_tls(client_ctx, server_hostname=server_hostname, session=session)
    lc, ls = await asyncio.gather(fc, fs)
    return lc, ls


# -- certificates with every field getpeercert() shows -------------------------


class PlainCA:
    """A CA made with cryptography directly, for certificates trustme does
    not make (chosen serials and dates, every kind of name)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onion test CA")])
        now = dt.datetime.now(dt.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=3650))
            .not_valid_after(now + dt.timedelta(days=36500))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        *,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
        subject: x509.Name,
        san: list[x509.GeneralName],
        extras: bool = True,
    ) -> tuple[x509.Certificate, bytes]:
        """Returns (certificate, PEM of key + certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if extras:
            b = b.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier("http://ocsp.onion.test/"),
                        ),
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier("http://ca.onion.test/ca.der"),
                        ),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier("http://crl.onion.test/a")],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        ),
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier("http://crl.onion.test/b")],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        ),
                    ]
                ),
                critical=False,
            )
        cert = b.sign(self.key, hashes.SHA256())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        return cert, pem


def rich_subject() -> x509.Name:
    return x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Berlin")]
            ),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Onion Ltd"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Layers"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "tls@onion.test")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "test")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "rich.test")]),
        ]
    )


def rich_san() -> list[x509.GeneralName]:
    return [
        x509.DNSName("rich.test"),
        x509.DNSName("*.rich.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("tls@onion.test"),
        x509.UniformResourceIdentifier("https://rich.test/"),
        x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dir name")])),
    ]


__all__ = [
    "MIXED",
    "OnionCA",
    "PlainCA",
    "Recorder",
    "close_both",
    "ping",
    "recorder_pair",
    "rich_san",
    "rich_subject",
    "start_layer",
]
