"""Logging under the ``onion_tls`` logger, and the payload-debug switch.

Every line names the layer's depth.  At DEBUG level the library logs each
layer's handshake (start; end with version, cipher, ALPN, SNI and whether
the session was resumed), the alerts it sees, close_notify sent and
received, pops and errors.  Application bytes are never logged unless the
payload-debug switch is on: :func:`set_payload_debug` or the environment
variable ``ONION_TLS_DEBUG_PAYLOAD=1`` (read at import, ignored under
``python -E``).  With the switch on, each layer logs the plaintext it
encrypts and decrypts (the first :data:`PAYLOAD_LIMIT` bytes of each piece).

Owns the ``onion_tls`` logger (every module logs through it), the
payload switch and the ``SSLKEYLOGFILE`` path.  Imports nothing from the
package.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["keylog_path", "logger", "payload", "set_payload_debug"]

logger = logging.getLogger("onion_tls")

#: How much of each plaintext piece a payload line shows.
PAYLOAD_LIMIT = 512


class _Switch:
    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = not sys.flags.ignore_environment and os.environ.get(
            "ONION_TLS_DEBUG_PAYLOAD", ""
        ) not in ("", "0")


#: ``switch.on`` is read on every engine read and write: one attribute load.
switch = _Switch()


def set_payload_debug(enabled: bool) -> None:
    """Log (at DEBUG, logger ``onion_tls``) the plaintext every layer
    encrypts and decrypts, or stop doing so.

    Off by default: the payload may hold secrets.  The environment variable
    ``ONION_TLS_DEBUG_PAYLOAD=1`` turns it on at import.
    """
    switch.on = bool(enabled)


def payload(depth: int, direction: str, data: bytes | bytearray | memoryview) -> None:
    """Log one piece of plaintext (call only when ``switch.on``)."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    shown = bytes(data[:PAYLOAD_LIMIT])
    more = len(data) - len(shown)
    logger.debug(
        "layer %d: %s %d bytes of plaintext: %r%s",
        depth,
        direction,
        len(data),
        shown,
        f" (+{more} more)" if more else "",
    )


# TLS alert descriptions (RFC 8446 section 6 and RFC 5246), for log lines.
ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


def alert_text(code: int) -> str:
    """``(level << 8) | description`` (as OpenSSL's info callback gives it)
    in words, e.g. ``"fatal unknown_ca"``."""
    level = {1: "warning", 2: "fatal"}.get(code >> 8, f"level {code >> 8}")
    desc = code & 0xFF
    return f"{level} {ALERTS.get(desc, f'alert {desc}')}"


def keylog_path() -> str | None:
    """The ``SSLKEYLOGFILE`` path, unless Python runs with -E (both engines
    log their secrets there, each in its own way)."""
    if sys.flags.ignore_environment:
        return None
    return os.environ.get("SSLKEYLOGFILE") or None
