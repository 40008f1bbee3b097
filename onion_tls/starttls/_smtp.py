"""SMTP (RFC 5321, RFC 3207): STARTTLS after EHLO, client and server.

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
    coded,
    coded_text,
    line_text,
    split_words,
)

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# -- SMTP (RFC 5321, RFC 3207) ----------------------------------------------------


async def _smtp_reply(talk: Talk) -> tuple[int, list[bytes]]:
    """A whole SMTP reply: ``(code, lines)``; ``250-a``, ``250-b``, ``250 c``."""
    lines: list[bytes] = []
    while len(lines) < MAX_LINES:
        line = await talk.line()
        if not coded(line):
            raise talk.fail("not an SMTP reply", line)
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), lines
    raise talk.fail(f"a reply of more than {MAX_LINES} lines")


async def smtp_starttls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    local_hostname: str = "localhost",
    greeting: bool = True,
    ehlo: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Upgrade an SMTP connection: ``EHLO``, ``STARTTLS``, ``220``, TLS.

    Args:
      reader, writer: the streams, at the start of the session (or after
        the greeting, with ``greeting=False``).
      context: an ``ssl.SSLContext`` or ``OpenSSL.SSL.Context``.
      server_hostname: SNI and the name the certificate must match.
      local_hostname: the name sent with ``EHLO``.
      greeting: read the server's ``220`` greeting first.
      ehlo: send ``EHLO`` first and check that the server offers STARTTLS;
        with ``False``, ``STARTTLS`` is sent straight away (the caller has
        done its own ``EHLO``).
      timeout: seconds for the plain-text exchange (None: no limit).
      handshake_timeout: seconds for the TLS handshake.

    Returns:
      The new layer, handshake done.  Send ``EHLO`` again now (RFC 3207:
      what the server said in plain text is forgotten).

    Raises:
      StartTLSRefusedError: the greeting was not ``220``, EHLO was refused,
        STARTTLS is not offered, or the server answered STARTTLS with
        something other than ``220`` (``454 TLS not available``...).
      StartTLSInjectionError: bytes came after the ``220``.
      StartTLSError: the server closed, timed out, or does not speak SMTP.
      HandshakeError: the TLS handshake failed.
    """
    talk = Talk(reader, writer, "smtp", peer="server")
    async with talk.deadline(timeout):
        if greeting:
            code, lines = await _smtp_reply(talk)
            if code != 220:
                raise talk.refused("the server's greeting is not 220", coded_text(lines))
        if ehlo:
            talk.send(f"EHLO {local_hostname}")
            code, lines = await _smtp_reply(talk)
            if code != 250:
                raise talk.refused("the server refused EHLO", coded_text(lines))
            offered = {w[0].upper() for w in map(split_words, (x[4:] for x in lines[1:])) if w}
            if "STARTTLS" not in offered:
                raise talk.refused(
                    "the server does not offer STARTTLS (not in its EHLO reply)",
                    coded_text(lines),
                )
        talk.send("STARTTLS")
        code, lines = await _smtp_reply(talk)
        if code != 220:
            raise talk.refused("the server refused STARTTLS", coded_text(lines))
        layer = talk.upgrade_client(context, server_hostname, handshake_timeout, after="220")
    return await layer


async def smtp_serve_starttls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    hostname: str = "localhost",
    greeting: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """The server's half of an SMTP upgrade.

    Greets (``220``, unless ``greeting=False``), answers ``EHLO`` (offering
    STARTTLS), ``HELO``, ``NOOP``, ``RSET`` and ``QUIT``, and ``530`` to any
    other command until the client sends ``STARTTLS``; answers ``220`` to it
    and pushes a server layer with ``context``.

    Returns:
      The new layer, handshake done.  The client speaks next (``EHLO``).

    Raises:
      StartTLSInjectionError: the client sent plain text behind
        ``STARTTLS`` (answered ``501``).
      StartTLSError: the client quit, closed, or took longer than
        ``timeout``.
      HandshakeError: the TLS handshake failed.
    """
    talk = Talk(reader, writer, "smtp", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send(f"220 {hostname} ESMTP ready (onion_tls)")
        for _ in range(MAX_LINES):
            line = await talk.line()
            verb, _, arg = line_text(line).partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                talk.send(f"250-{hostname} greets {arg or 'you'}", "250-8BITMIME", "250 STARTTLS")
            elif verb == "HELO":
                talk.send(f"250 {hostname}")
            elif verb in ("NOOP", "RSET"):
                talk.send("250 2.0.0 OK")
            elif verb == "QUIT":
                talk.send(f"221 2.0.0 {hostname} closing")
                raise talk.fail("the client quit before STARTTLS")
            elif verb == "STARTTLS" and not arg.strip():
                try:
                    early = talk.early_client_bytes("STARTTLS")
                except StartTLSInjectionError:
                    talk.send("501 5.5.1 no data may follow STARTTLS before the TLS handshake")
                    raise
                talk.send("220 2.0.0 Ready to start TLS")
                layer = talk.upgrade_server(context, early, handshake_timeout)
                break
            elif verb == "STARTTLS":
                talk.send("501 5.5.4 Syntax: STARTTLS")
            else:
                talk.send("530 5.7.0 Must issue a STARTTLS command first")
        else:
            raise talk.fail(f"no STARTTLS within {MAX_LINES} commands")
    return await layer
