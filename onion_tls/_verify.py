"""Certificate verification failures in words (sans-IO).

Owns the table of OpenSSL's ``X509_V_ERR_*`` codes a user is likely to meet,
so both engines name a refused certificate the same way.  Imports nothing
from the package.
"""

from __future__ import annotations

__all__ = ["NAME_MISMATCH_CODES", "verify_error_text"]

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
