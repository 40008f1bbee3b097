"""POP3 (RFC 1939, RFC 2449, RFC 2595): STLS after CAPA, client and server.

See :mod:`onion_tls.starttls` for what the helpers do and check (the
"Injection" and "Errors" sections).

Imports: :mod:`._common`; :mod:`onion_tls._view`, :mod:`onion_tls.streams`
(types only).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._common import (
    MAX_LINES,
    StartTLSInjectionError,
    Talk,
    line_text,
)

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# -- POP3 (RFC 1939, RFC 2449, RFC 2595) ---------------------------------------------


async def pop3_stls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    greeting: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Upgrade a POP3 connection: ``STLS``, ``+OK``, TLS.

    Reads the ``+OK`` greeting (unless ``greeting=False``) and sends
    ``STLS`` (a server without it answers ``-ERR``: no ``CAPA`` round trip
    is needed to find out).

    Raises:
      StartTLSRefusedError: a ``-ERR`` greeting, or ``-ERR`` to STLS.
      StartTLSInjectionError: bytes came after the ``+OK``.
      StartTLSError, HandshakeError: as :func:`smtp_starttls`.
    """
    talk = Talk(reader, writer, "pop3", peer="server")
    async with talk.deadline(timeout):
        if greeting:
            line = await talk.line()
            if not line.startswith(b"+OK"):
                raise talk.refused("the server's greeting is not +OK", line)
        talk.send("STLS")
        line = await talk.line()
        if not line.startswith(b"+OK"):
            raise talk.refused("the server refused STLS", line)
        layer = talk.upgrade_client(context, server_hostname, handshake_timeout, after="+OK")
    return await layer


async def pop3_serve_stls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    greeting: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """The server's half of a POP3 upgrade.

    Greets (``+OK``), answers ``CAPA`` (``STLS``, ``TOP``, ``UIDL``),
    ``NOOP`` and ``QUIT``, and ``-ERR`` to any other command until the
    client sends ``STLS``; answers ``+OK`` and pushes a server layer.

    Raises:
      StartTLSInjectionError: plain text behind ``STLS`` (answered
        ``-ERR``).
      StartTLSError, HandshakeError: as :func:`smtp_serve_starttls`.
    """
    talk = Talk(reader, writer, "pop3", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send("+OK POP3 ready (onion_tls)")
        for _ in range(MAX_LINES):
            verb, _, arg = line_text(await talk.line()).partition(" ")
            verb = verb.upper()
            if verb == "CAPA":
                talk.send("+OK capability list follows", "STLS", "TOP", "UIDL", ".")
            elif verb == "NOOP":
                talk.send("+OK")
            elif verb == "QUIT":
                talk.send("+OK bye")
                raise talk.fail("the client quit before STLS")
            elif verb == "STLS" and not arg.strip():
                try:
                    early = talk.early_client_bytes("STLS")
                except StartTLSInjectionError:
                    talk.send("-ERR no data may follow STLS before the TLS handshake")
                    raise
                talk.send("+OK begin TLS negotiation")
                layer = talk.upgrade_server(context, early, handshake_timeout)
                break
            else:
                talk.send("-ERR STLS first")
        else:
            raise talk.fail(f"no STLS within {MAX_LINES} commands")
    return await layer
