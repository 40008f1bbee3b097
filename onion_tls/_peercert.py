"""``ssl.SSLObject.getpeercert()``'s dict, built from a ``cryptography``
certificate (sans-IO).

Owns :func:`peercert_dict`, with which a pyOpenSSL layer answers
``get_extra_info("peercert")`` exactly as a stdlib layer does (same keys,
same text formats).  Imports nothing from the package.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["peercert_dict"]

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
