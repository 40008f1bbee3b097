"""The interface every TLS engine offers to a layer (sans-IO).

An engine is one TLS session over two memory buffers: ciphertext is fed in
with ``feed``, produced ciphertext is taken with ``take_output``.  Two
implementations exist: :mod:`onion_tls._pyopenssl` (an ``OpenSSL.SSL.Context``)
and :mod:`onion_tls._stdlib` (an ``ssl.SSLContext``).  The layer never talks to
either library directly, so both behave the same on the wire and in errors.

Engines raise :class:`EngineError` with the reason in words; the layer adds
the depth.  A close_notify from the peer is not an error: ``read`` raises
:class:`PeerClosed`.

What the two libraries report differently is made the same here:

* ``peercert``: :func:`peercert_dict` builds, from a ``cryptography``
  certificate, the dict ``ssl.SSLObject.getpeercert()`` gives (same keys,
  same value formats), so a pyOpenSSL layer answers like a stdlib one.
* The server name a client asked for: ``ssl.SSLObject`` shows it only to the
  context's ``sni_callback``, and OpenSSL forgets it on a TLS 1.2 resumption
  unless a servername callback acknowledged it.  Rather than install
  callbacks on the user's context, a server engine reads the name from the
  ClientHello bytes it is fed (:class:`ClientHelloSNI`), the same way for
  both engines.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

__all__ = [
    "ClientHelloSNI",
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
        if "unsupported protocol" in reason and "version" not in reason:
            # OpenSSL's words for "no TLS version in common" (both engines)
            reason += " (no protocol version in common with the peer)"
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
    #: The layer's depth, for log lines (set once the layer is spliced in).
    depth: int

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Give the engine ciphertext received from the peer."""

    def do_handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""

    def read(self, max_bytes: int) -> bytes:
        """Decrypt up to ``max_bytes``; ``b""`` means more input is needed.
        Raises :class:`PeerClosed` on close_notify."""

    def read_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer``; returns how many bytes, 0 when more input
        is needed.  Raises :class:`PeerClosed` on close_notify."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt ``data``; returns how much was taken (0 only while a TLS
        1.2 renegotiation waits for the peer)."""

    def shutdown(self) -> bool:
        """Queue our close_notify; False when it cannot be sent yet because
        a handshake (a TLS 1.2 renegotiation) is under way: call again
        after the next read."""

    def take_output(self) -> bytes | bytearray:
        """Return (and forget) the ciphertext waiting to go to the peer (a
        new object: the caller may keep it)."""

    # What the layer view reports.
    def requested_server_name(self) -> str | None:
        """On a server: the name the client sent (SNI), if known."""

    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def compression(self) -> str | None: ...
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

    if session is not None and server_side:
        raise ValueError(
            "session is only meaningful for a client layer: a server resumes "
            "the sessions its clients offer"
        )
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


# -- verification errors in words -------------------------------------------

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
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsuitable certificate purpose",  # OpenSSL's words, as the stdlib engine reports
    27: "certificate not trusted",
    28: "certificate rejected",
    62: "hostname mismatch",
    63: "email address mismatch",
    64: "IP address mismatch",
}
#: The codes that mean "the certificate is fine but names someone else".
NAME_MISMATCH_CODES = frozenset({62, 63, 64})


def verify_error_text(code: int) -> str:
    return _VERIFY_ERRORS.get(code, f"certificate verify failed (X509 error {code})")


# -- getpeercert() for a cryptography certificate --------------------------------

# OpenSSL's long names (OBJ_nid2ln), which getpeercert() uses for name
# attributes; an OID OpenSSL does not know is shown dotted, as here.
_LONG_NAMES = {
    "2.5.4.3": "commonName",
    "2.5.4.4": "surname",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.9": "streetAddress",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "2.5.4.12": "title",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "givenName",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "userId",
    "0.9.2342.19200300.100.1.25": "domainComponent",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionLocalityName",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionStateOrProvinceName",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionCountryName",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _name_tuple(name: x509.Name) -> tuple[tuple[tuple[str, str], ...], ...]:
    out = []
    for rdn in name.rdns:
        out.append(
            tuple(
                (
                    _LONG_NAMES.get(attr.oid.dotted_string, attr.oid.dotted_string),
                    attr.value if isinstance(attr.value, str) else attr.value.hex(),
                )
                for attr in rdn
            )
        )
    return tuple(out)


def _asn1_time(when: _dt.datetime) -> str:
    # ASN1_TIME_print(), as getpeercert() shows it: 'Jun  1 09:05:00 2030 GMT'
    # (English month, day padded with a space, always GMT).
    return (
        f"{_MONTHS[when.month - 1]} {when.day:2d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {when.year} GMT"
    )


def _serial_text(serial: int) -> str:
    # i2a_ASN1_INTEGER(): two upper-case hex digits per content byte, a
    # "-" for negative numbers, and a "\\\n" break every 35 bytes.
    sign = "-" if serial < 0 else ""
    magnitude = abs(serial)
    raw = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "big")
    pieces = []
    for i, byte in enumerate(raw):
        if i and i % 35 == 0:
            pieces.append("\\\n")
        pieces.append(f"{byte:02X}")
    return sign + "".join(pieces)


def _ip_text(packed: bytes) -> str:
    if len(packed) == 4:
        return ".".join(str(b) for b in packed)
    # getpeercert() prints IPv6 as eight upper-case groups, uncompressed.
    return ":".join(f"{int.from_bytes(packed[i : i + 2], 'big'):X}" for i in range(0, 16, 2))


def _general_names(names: Any) -> list[tuple[str, Any]]:
    import ipaddress

    from cryptography import x509 as _x509

    out: list[tuple[str, Any]] = []
    for general in names:
        if isinstance(general, _x509.DNSName):
            out.append(("DNS", general.value))
        elif isinstance(general, _x509.IPAddress):
            ip = general.value
            if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                out.append(("IP Address", _ip_text(ip.packed)))
            else:  # a network: only meaningful in name constraints
                out.append(("IP Address", "<invalid>"))
        elif isinstance(general, _x509.RFC822Name):
            out.append(("email", general.value))
        elif isinstance(general, _x509.UniformResourceIdentifier):
            out.append(("URI", general.value))
        elif isinstance(general, _x509.DirectoryName):
            out.append(("DirName", _name_tuple(general.value)))
        elif isinstance(general, _x509.RegisteredID):
            oid = general.value.dotted_string
            out.append(("Registered ID", _LONG_NAMES.get(oid, oid)))
        elif isinstance(general, _x509.OtherName):
            out.append(("othername", "<unsupported>"))
    return out


def peercert_dict(cert: x509.Certificate) -> dict[str, Any]:
    """The dict ``ssl.SSLObject.getpeercert()`` gives for a verified peer,
    built from ``cert``: the same keys and the same text formats."""
    from cryptography import x509 as _x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    info: dict[str, Any] = {
        "subject": _name_tuple(cert.subject),
        "issuer": _name_tuple(cert.issuer),
        "version": cert.version.value + 1,
        "serialNumber": _serial_text(cert.serial_number),
        "notBefore": _asn1_time(cert.not_valid_before_utc),
        "notAfter": _asn1_time(cert.not_valid_after_utc),
    }
    exts = cert.extensions
    try:
        san = exts.get_extension_for_class(_x509.SubjectAlternativeName)
    except _x509.ExtensionNotFound:
        pass
    else:
        names = _general_names(san.value)
        if names:
            info["subjectAltName"] = tuple(names)
    try:
        aia = exts.get_extension_for_class(_x509.AuthorityInformationAccess)
    except _x509.ExtensionNotFound:
        pass
    else:
        for key, method in (
            ("OCSP", AuthorityInformationAccessOID.OCSP),
            ("caIssuers", AuthorityInformationAccessOID.CA_ISSUERS),
        ):
            uris = tuple(
                d.access_location.value
                for d in aia.value
                if d.access_method == method
                and isinstance(d.access_location, _x509.UniformResourceIdentifier)
            )
            if uris:
                info[key] = uris
    try:
        crl = exts.get_extension_for_class(_x509.CRLDistributionPoints)
    except _x509.ExtensionNotFound:
        pass
    else:
        uris = tuple(
            name.value
            for point in crl.value
            for name in point.full_name or ()
            if isinstance(name, _x509.UniformResourceIdentifier)
        )
        if uris:
            info["crlDistributionPoints"] = uris
    return info


# -- the server name in a ClientHello ---------------------------------------------

# A ClientHello is well under this; more means the stream is not one.
_HELLO_LIMIT = 1 << 17


class ClientHelloSNI:
    """Reads the server_name extension (RFC 6066) out of the first
    ClientHello of a stream of TLS records, fed in any pieces.

    ``name`` is the host name the client sent (its ASCII/A-label form), or
    None when there was none; ``done`` turns true once the answer is known
    (or the bytes turned out not to be a ClientHello).
    """

    __slots__ = ("_buf", "_hs", "done", "name")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._hs = bytearray()
        self.done = False
        self.name: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.done:
            return
        self._buf += data
        buf = self._buf
        while len(buf) >= 5:
            if buf[0] != 22:  # not a handshake record: no ClientHello here
                self._finish()
                return
            size = int.from_bytes(buf[3:5], "big")
            if len(buf) < 5 + size:
                break
            self._hs += buf[5 : 5 + size]
            del buf[: 5 + size]
            if len(self._hs) >= 4:
                if self._hs[0] != 1:  # not a ClientHello
                    self._finish()
                    return
                length = int.from_bytes(self._hs[1:4], "big")
                if len(self._hs) >= 4 + length:
                    self.name = _sni_from_hello(bytes(self._hs[4 : 4 + length]))
                    self._finish()
                    return
        if len(buf) + len(self._hs) > _HELLO_LIMIT:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._buf = bytearray()
        self._hs = bytearray()


def _sni_from_hello(body: bytes) -> str | None:
    """The host_name of a ClientHello body's server_name extension."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[pos : pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
            pos += 4
            if ext_type == 0:  # server_name
                ext = body[pos : pos + ext_len]
                list_end = 2 + int.from_bytes(ext[0:2], "big")
                i = 2
                while i + 3 <= min(list_end, len(ext)):
                    name_type = ext[i]
                    name_len = int.from_bytes(ext[i + 1 : i + 3], "big")
                    name = ext[i + 3 : i + 3 + name_len]
                    if name_type == 0 and len(name) == name_len:
                        return name.decode("ascii")
                    i += 3 + name_len
                return None
            pos += ext_len
    except (IndexError, UnicodeDecodeError):
        pass
    return None
