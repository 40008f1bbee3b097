"""PostgreSQL (protocol 3.0): the SSLRequest message, client and server.

See :mod:`onion_tls.starttls` for what the helpers do and check (the
"Injection" and "Errors" sections).

Imports: :mod:`._common`; :mod:`onion_tls._view`, :mod:`onion_tls.streams`
(types only).
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Any

from ._common import StartTLSInjectionError, Talk

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# -- PostgreSQL (protocol 3.0: SSLRequest) ---------------------------------------------

_SSL_REQUEST = 80877103  # 1234 << 16 | 5679
_GSSENC_REQUEST = 80877104  # 1234 << 16 | 5680


async def postgres_ssl_request(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Upgrade a PostgreSQL connection: ``SSLRequest``, ``S``, TLS.

    Sends the 8-byte SSLRequest as the first message of the connection and
    reads the server's one-byte answer.  Then send the StartupMessage
    inside the layer.

    Raises:
      StartTLSRefusedError: the server answered ``N`` (no SSL), or an
        error message (``E``: its text is not shown, nor read, since it
        came from a server not authenticated yet; CVE-2024-10977).
      StartTLSInjectionError: bytes came after the ``S`` (CVE-2021-23222).
      StartTLSError, HandshakeError: as :func:`smtp_starttls`.
    """
    talk = Talk(reader, writer, "postgres", peer="server")
    async with talk.deadline(timeout):
        writer.write(struct.pack("!II", 8, _SSL_REQUEST))
        answer = await talk.exactly(1)
        if answer == b"N":
            raise talk.refused("the server does not accept SSL", "N")
        if answer == b"E":
            raise talk.refused(
                "the server answered with an error message (not shown: it comes from a "
                "server not authenticated yet)",
                "E",
            )
        if answer != b"S":
            raise talk.fail(f"not an answer to SSLRequest: {answer!r}")
        layer = talk.upgrade_client(context, server_hostname, handshake_timeout, after="S")
    return await layer


def _postgres_error(message: str) -> bytes:
    """An ErrorResponse: severity, SQLSTATE 08P01 (protocol violation),
    message."""
    fields = b"SFATAL\0VFATAL\0C08P01\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!I", 4 + len(fields)) + fields


async def postgres_serve_ssl_request(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """The server's half of a PostgreSQL upgrade: read the client's first
    message; answer ``N`` to a GSSENCRequest and read again; answer ``S``
    to an SSLRequest and push a server layer.  The StartupMessage comes
    next, inside it.

    Raises:
      StartTLSError: the first message is not an SSLRequest (a plain-text
        StartupMessage, or not PostgreSQL at all).
      StartTLSInjectionError: plain text behind the SSLRequest (answered
        with an ErrorResponse; CVE-2021-23214).
      HandshakeError: the TLS handshake failed.
    """
    talk = Talk(reader, writer, "postgres", peer="client")
    async with talk.deadline(timeout):
        for _ in range(2):
            length, code = struct.unpack("!II", await talk.exactly(8))
            if length == 8 and code == _GSSENC_REQUEST:
                writer.write(b"N")
                continue
            if length == 8 and code == _SSL_REQUEST:
                try:
                    early = talk.early_client_bytes("SSLRequest")
                except StartTLSInjectionError:
                    writer.write(_postgres_error("received unencrypted data after SSL request"))
                    raise
                writer.write(b"S")
                layer = talk.upgrade_server(context, early, handshake_timeout)
                break
            raise talk.fail(
                f"the client's first message is not an SSLRequest (length {length}, "
                f"code {code:#010x})"
            )
        else:
            raise talk.fail("a second GSSENCRequest")
    return await layer
