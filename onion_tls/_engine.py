"""The interface every TLS engine offers to a layer (sans-IO).

An engine is one TLS session over two memory buffers: ciphertext is fed in
with ``feed``, produced ciphertext is taken with ``take_output``.  Two
implementations exist: :mod:`onion_tls._pyopenssl` (an ``OpenSSL.SSL.Context``)
and :mod:`onion_tls._stdlib` (an ``ssl.SSLContext``).  The layer never talks to
either library directly, so both behave the same on the wire and in errors.

Engines raise :class:`EngineError` with the reason in words; the layer adds
the depth.  A close_notify from the peer is not an error: ``read`` raises
:class:`PeerClosed`.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "Engine",
    "EngineError",
    "PeerClosed",
    "new_engine",
    "peercert_dict",
    "verify_error_text",
]


class EngineError(Exception):
    """The TLS session failed; ``reason`` says why in words."""

    def __init__(self, reason: str, *, alert_received: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True when the peer sent the fatal alert (it refused us).
        self.alert_received = alert_received


class PeerClosed(Exception):
    """The peer's close_notify was read: the clean end of this session."""


class Engine(Protocol):
    """One TLS session over memory buffers."""

    engine_name: str
    server_side: bool
    server_hostname: str | None

    def feed(self, data: bytes | memoryview) -> None:
        """Give the engine ciphertext received from the peer."""

    def do_handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""

    def read(self, max_bytes: int) -> bytes:
        """Decrypt up to ``max_bytes``; ``b""`` means more input is needed.
        Raises :class:`PeerClosed` on close_notify."""

    def write(self, data: bytes | memoryview) -> int:
        """Encrypt ``data``; returns how much was taken (0 only while a TLS
        1.2 renegotiation waits for the peer)."""

    def shutdown(self) -> None:
        """Queue our close_notify."""

    def take_output(self) -> bytes:
        """Return (and forget) the ciphertext waiting to go to the peer."""

    # What the layer view reports.
    def requested_server_name(self) -> str | None:
        """On a server: the name the client sent (SNI), if known."""

    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def alpn_protocol(self) -> str | None: ...
    def peer_certificate(self) -> x509.Certificate | None: ...
    def peercert(self) -> dict[str, Any] | None: ...
    def session(self) -> object | None: ...
    def session_reused(self) -> bool: ...
    @property
    def ssl_object(self) -> object: ...
    @property
    def context(self) -> object: ...


def new_engine(
    context: object,
    *,
    server_side: bool,
    server_hostname: str | None,
    session: object | None,
) -> Engine:
    """Build the engine that fits ``context``'s type."""
    import ssl

    if isinstance(context, ssl.SSLContext):
        from ._stdlib import StdlibEngine

        return StdlibEngine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        SSL = None  # type: ignore[assignment]
    if SSL is not None and isinstance(context, SSL.Context):
        from ._pyopenssl import PyOpenSSLEngine

        return PyOpenSSLEngine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
    raise TypeError(
        f"context must be an ssl.SSLContext or an OpenSSL.SSL.Context, not {type(context).__name__}"
    )


# -- shared helpers ---------------------------------------------------------

# OpenSSL's X509_V_ERR_* codes a user is likely to meet, in words.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate (unknown CA)",
    4: "unable to decrypt certificate signature",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "certificate has an invalid notBefore field",
    14: "certificate has an invalid notAfter field",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (unknown CA)",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsuitable certificate purpose",  # OpenSSL's words, as the stdlib engine reports
    27: "certificate not trusted",
    28: "certificate rejected",
    62: "hostname mismatch",
}


def verify_error_text(code: int) -> str:
    return _VERIFY_ERRORS.get(code, f"certificate verify failed (X509 error {code})")


def _name_tuple(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    from cryptography.x509.oid import NameOID

    short = {
        NameOID.COMMON_NAME: "commonName",
        NameOID.COUNTRY_NAME: "countryName",
        NameOID.LOCALITY_NAME: "localityName",
        NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
        NameOID.ORGANIZATION_NAME: "organizationName",
        NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName",
        NameOID.EMAIL_ADDRESS: "emailAddress",
        NameOID.SERIAL_NUMBER: "serialNumber",
        NameOID.DOMAIN_COMPONENT: "domainComponent",
    }
    out = []
    for rdn in name.rdns:
        out.append(
            tuple((short.get(attr.oid, attr.oid.dotted_string), str(attr.value)) for attr in rdn)
        )
    return tuple(out)


def _asn1_time(when: _dt.datetime) -> str:
    # The format of ssl.SSLObject.getpeercert(): 'Jun  1 12:00:00 2030 GMT'.
    return when.strftime("%b %d %H:%M:%S %Y GMT").replace(" 0", "  ", 1)


def peercert_dict(cert: x509.Certificate) -> dict[str, Any]:
    """The dict ``ssl.SSLObject.getpeercert()`` gives, built from ``cert``."""
    import ipaddress

    from cryptography import x509 as _x509

    info: dict[str, Any] = {
        "subject": _name_tuple(cert.subject),
        "issuer": _name_tuple(cert.issuer),
        "version": cert.version.value + 1,
        "serialNumber": f"{cert.serial_number:X}".rjust(2, "0"),
        "notBefore": _asn1_time(cert.not_valid_before_utc),
        "notAfter": _asn1_time(cert.not_valid_after_utc),
    }
    try:
        san = cert.extensions.get_extension_for_class(_x509.SubjectAlternativeName)
    except _x509.ExtensionNotFound:
        pass
    else:
        names: list[tuple[str, str]] = []
        for general in san.value:
            if isinstance(general, _x509.DNSName):
                names.append(("DNS", general.value))
            elif isinstance(general, _x509.IPAddress):
                ip = general.value
                if isinstance(ip, ipaddress.IPv6Address):
                    text = ":".join(f"{x:X}" for x in _ipv6_groups(ip))
                else:
                    text = str(ip)
                names.append(("IP Address", text))
            elif isinstance(general, _x509.RFC822Name):
                names.append(("email", general.value))
            elif isinstance(general, _x509.UniformResourceIdentifier):
                names.append(("URI", general.value))
        if names:
            info["subjectAltName"] = tuple(names)
    return info


def _ipv6_groups(ip: Any) -> list[int]:
    packed = ip.packed
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, 16, 2)]


def keylog_path() -> str | None:
    """The ``SSLKEYLOGFILE`` path, unless Python runs with -E."""
    if sys.flags.ignore_environment:
        return None
    return os.environ.get("SSLKEYLOGFILE") or None
