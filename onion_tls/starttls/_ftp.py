"""FTP (RFC 959, RFC 4217): AUTH TLS to push a layer and CCC to pop it, client and server.

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
    UPGRADE,
    StartTLSError,
    StartTLSInjectionError,
    StartTLSRefusedError,
    Talk,
    coded,
    coded_text,
    line_text,
    show,
)

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# -- FTP (RFC 959, RFC 4217) -------------------------------------------------------


async def _ftp_reply(talk: Talk) -> tuple[int, list[bytes]]:
    """A whole FTP reply: ``220-first``, any lines, ``220 last``."""
    first = await talk.line()
    if not coded(first):
        raise talk.fail("not an FTP reply", first)
    code = first[:3]
    lines = [first]
    if first[3:4] == b"-":
        # Lines in between may be anything; the last starts with the code.
        while len(lines) < MAX_LINES:
            line = await talk.line()
            lines.append(line)
            if line.startswith(code) and line[3:4] != b"-" and coded(line):
                break
        else:
            raise talk.fail(f"a reply of more than {MAX_LINES} lines")
    return int(code), lines


async def ftp_auth_tls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    greeting: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Protect an FTP control connection: ``AUTH TLS``, ``234``, TLS.

    Reads the ``220`` greeting (unless ``greeting=False``), sends ``AUTH
    TLS`` and wants ``234``.  Then it is the caller's: ``PBSZ 0`` and
    ``PROT P`` for protected data connections, ``USER``...; see
    :func:`ftp_ccc` to go back to plain text.

    Raises:
      StartTLSRefusedError: the greeting is not ``220``, or the server
        answered ``AUTH TLS`` with something other than ``234`` (``504``,
        ``534``, ``500``...).
      StartTLSInjectionError: bytes came after the ``234``.
      StartTLSError, HandshakeError: as :func:`smtp_starttls`.
    """
    talk = Talk(reader, writer, "ftp", peer="server")
    async with talk.deadline(timeout):
        if greeting:
            code, lines = await _ftp_reply(talk)
            if code != 220:
                raise talk.refused("the server's greeting is not 220", coded_text(lines))
        talk.send("AUTH TLS")
        code, lines = await _ftp_reply(talk)
        if code != 234:
            raise talk.refused("the server refused AUTH TLS", coded_text(lines))
        layer = talk.upgrade_client(context, server_hostname, handshake_timeout, after="234")
    return await layer


async def ftp_ccc(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    *,
    timeout: float | None = 30.0,
) -> TLSLayer:
    """Take an FTP control connection back to plain text (``CCC``, RFC 4217
    section 6): send ``CCC`` inside the innermost layer, want ``200``, then
    pop that layer (close_notify both ways) with ``writer.stop_tls()``.

    Returns:
      The popped layer.  The reader goes on with the plain text beneath.

    Raises:
      StartTLSRefusedError: the server answered something other than
        ``200`` (``533``, ``500``...); the layer stays.
      StartTLSError: no layer to pop, bytes after the ``200`` (the server
        must send nothing more inside the layer), the server closed, or it
        took longer than ``timeout`` (for the reply and for the pop).
    """
    talk = Talk(reader, writer, "ftp", peer="server")
    talk.depth = len(writer.layers)
    if not writer.layers:
        raise StartTLSError("ftp", "no TLS layer to clear", upgrade=UPGRADE["ftp-ccc"])
    async with talk.deadline(timeout):
        talk.send("CCC")
        code, lines = await _ftp_reply(talk)
        if code != 200:
            raise StartTLSRefusedError(
                "ftp",
                "the server refused CCC",
                reply=coded_text(lines),
                depth=talk.depth,
                upgrade=UPGRADE["ftp-ccc"],
            )
        rest = writer.take_buffered()
        if rest:
            raise StartTLSError(
                "ftp",
                f"the server sent more inside the layer after its 200: {show(rest)}",
                depth=talk.depth,
                upgrade=UPGRADE["ftp-ccc"],
            )
        popped = writer.stop_tls(timeout=timeout)
    return await popped


async def ftp_serve_auth_tls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    greeting: bool = True,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """The server's half of ``AUTH TLS``.

    Greets (``220``), answers ``FEAT`` (``AUTH TLS``, ``PBSZ``, ``PROT``,
    ``CCC``), ``NOOP``, ``SYST`` and ``QUIT``, ``504`` to other ``AUTH``
    mechanisms and ``530`` to any other command until the client sends
    ``AUTH TLS``; answers ``234`` and pushes a server layer.

    Raises:
      StartTLSInjectionError: plain text behind ``AUTH TLS`` (answered
        ``501``).
      StartTLSError, HandshakeError: as :func:`smtp_serve_starttls`.
    """
    talk = Talk(reader, writer, "ftp", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send("220 FTP ready (onion_tls)")
        for _ in range(MAX_LINES):
            verb, _, arg = line_text(await talk.line()).partition(" ")
            verb, arg = verb.upper(), arg.strip().upper()
            if verb == "AUTH" and arg in ("TLS", "TLS-C"):
                try:
                    early = talk.early_client_bytes("AUTH TLS")
                except StartTLSInjectionError:
                    talk.send("501 no data may follow AUTH TLS before the TLS handshake")
                    raise
                talk.send("234 AUTH TLS successful")
                layer = talk.upgrade_server(context, early, handshake_timeout)
                break
            if verb == "AUTH":
                talk.send("504 only AUTH TLS is supported")
            elif verb == "FEAT":
                talk.send("211-Features:", " AUTH TLS", " PBSZ", " PROT", " CCC", "211 End")
            elif verb == "NOOP":
                talk.send("200 NOOP ok")
            elif verb == "SYST":
                talk.send("215 UNIX Type: L8")
            elif verb == "QUIT":
                talk.send("221 bye")
                raise talk.fail("the client quit before AUTH TLS")
            else:
                talk.send("530 AUTH TLS first")
        else:
            raise talk.fail(f"no AUTH TLS within {MAX_LINES} commands")
    return await layer


async def ftp_serve_ccc(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    *,
    timeout: float | None = 30.0,
) -> TLSLayer:
    """The server's answer to ``CCC``, once the caller has read that
    command: ``200`` inside the innermost layer, then pop it
    (close_notify both ways).

    Returns:
      The popped layer; the control connection is plain text again.

    Raises:
      StartTLSError: no layer, the client sent more behind ``CCC`` before
        its close_notify (answered ``533``; the layer stays), or the pop
        failed or timed out.
    """
    depth = len(writer.layers)
    if not writer.layers:
        raise StartTLSError("ftp", "no TLS layer to clear", upgrade=UPGRADE["ftp-ccc"])
    early = writer.take_buffered()
    if early:
        writer.write(b"533 no command may follow CCC\r\n")
        raise StartTLSError(
            "ftp",
            f"the client sent more after CCC: {show(early)}",
            depth=depth,
            upgrade=UPGRADE["ftp-ccc"],
        )
    writer.write(b"200 CCC ok, the control connection is plain text now\r\n")
    return await writer.stop_tls(timeout=timeout)
