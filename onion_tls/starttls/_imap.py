"""IMAP (RFC 9051, RFC 3501, RFC 2595): STARTTLS with tagged commands and
literals, client and server.

See :mod:`onion_tls.starttls` for what the helpers do and check (the
"Injection" and "Errors" sections).

Imports: :mod:`._common`; :mod:`onion_tls._view`, :mod:`onion_tls.streams`
(types only).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._common import (
    MAX_LINE,
    MAX_LINES,
    QUOTE,
    StartTLSInjectionError,
    Talk,
    line_text,
    split_words,
)

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# -- IMAP (RFC 9051, RFC 3501, RFC 2595) ---------------------------------------------


async def _imap_line(talk: Talk) -> bytes:
    """One IMAP response line, with any literal (``{n}``) it carries read
    through, so that the next line is really the next response."""
    line = await talk.line()
    parts = [line]
    while line.rstrip(b"\r\n").endswith(b"}") and b"{" in line:
        size = line.rstrip(b"\r\n").rsplit(b"{", 1)[1][:-1].rstrip(b"+")
        if not size.isdigit() or int(size) > MAX_LINE:
            break
        parts.append(await talk.exactly(int(size)))
        line = await talk.line()
        parts.append(line)
    return b"".join(parts)


def _imap_caps(text: str) -> set[str] | None:
    """The capabilities of a ``[CAPABILITY ...]`` response code, if any."""
    start = text.upper().find("[CAPABILITY ")
    if start < 0:
        return None
    end = text.find("]", start)
    return {w.upper() for w in text[start + 12 : end if end >= 0 else None].split()}


async def imap_starttls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    greeting: bool = True,
    check_capability: bool = True,
    tag_prefix: str = "a",
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Upgrade an IMAP connection: capabilities, ``a001 STARTTLS``, ``OK``, TLS.

    Reads the greeting (``* OK``; unless ``greeting=False``), checks that
    STARTTLS is among the capabilities (from the greeting's ``[CAPABILITY
    ...]``, or by asking ``CAPABILITY``; skipped with
    ``check_capability=False``), sends ``STARTTLS`` and waits for its tagged
    ``OK``.  Tags are ``a001``, ``a002``... (``tag_prefix``).

    Returns:
      The new layer, handshake done.  Ask ``CAPABILITY`` again now.

    Raises:
      StartTLSRefusedError: a ``* BYE`` or ``* PREAUTH`` greeting (STARTTLS
        is only allowed before login), no STARTTLS capability, or ``NO`` /
        ``BAD`` to STARTTLS.
      StartTLSInjectionError: bytes came after the tagged ``OK``.
      StartTLSError, HandshakeError: as :func:`smtp_starttls`.
    """
    talk = Talk(reader, writer, "imap", peer="server")
    tags = (f"{tag_prefix}{n:03d}" for n in range(1, 1000))

    async def command(name: str) -> tuple[str, bytes, list[bytes]]:
        """Send ``name``; return the tagged status and line, and the
        untagged lines that came before it."""
        tag = next(tags)
        talk.send(f"{tag} {name}")
        untagged: list[bytes] = []
        while len(untagged) < MAX_LINES:
            line = await _imap_line(talk)
            words = split_words(line)
            if words[:1] == [tag]:
                status = words[1].upper() if len(words) > 1 else ""
                return status, line, untagged
            if [w.upper() for w in words[:2]] == ["*", "BYE"]:
                raise talk.refused(f"the server said BYE to {name}", line)
            untagged.append(line)
        raise talk.fail(f"more than {MAX_LINES} lines before the answer to {name}")

    async with talk.deadline(timeout):
        caps: set[str] | None = None
        if greeting:
            line = await _imap_line(talk)
            words = [w.upper() for w in split_words(line)[:2]]
            if words == ["*", "PREAUTH"]:
                raise talk.refused(
                    "the server pre-authenticated the connection (PREAUTH): STARTTLS is "
                    "only allowed before login",
                    line,
                )
            if words != ["*", "OK"]:
                raise talk.refused("the server's greeting is not * OK", line)
            caps = _imap_caps(line_text(line))
        if check_capability:
            if caps is None:
                status, line, untagged = await command("CAPABILITY")
                if status != "OK":
                    raise talk.refused("the server refused CAPABILITY", line)
                caps = set()
                for u in untagged:
                    w = [x.upper() for x in split_words(u)]
                    if w[:2] == ["*", "CAPABILITY"]:
                        caps.update(w[2:])
            if "STARTTLS" not in caps:
                raise talk.refused(
                    "the server does not offer STARTTLS (capabilities: "
                    + " ".join(sorted(caps))[:QUOTE]
                    + ")"
                )
        status, line, _ = await command("STARTTLS")
        if status != "OK":
            raise talk.refused("the server refused STARTTLS", line)
        layer = talk.upgrade_client(context, server_hostname, handshake_timeout, after="OK")
    return await layer


async def imap_serve_starttls(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    greeting: bool = True,
    capabilities: str = "IMAP4rev1 STARTTLS LOGINDISABLED",
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """The server's half of an IMAP upgrade.

    Greets (``* OK [CAPABILITY ...]``), answers ``CAPABILITY`` (with
    ``capabilities``), ``NOOP`` and ``LOGOUT``, and ``NO [PRIVACYREQUIRED]``
    to any other command until the client sends ``STARTTLS``; answers its
    tagged ``OK`` and pushes a server layer.

    Raises:
      StartTLSInjectionError: plain text behind ``STARTTLS`` (answered
        ``BAD``).
      StartTLSError, HandshakeError: as :func:`smtp_serve_starttls`.
    """
    talk = Talk(reader, writer, "imap", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send(f"* OK [CAPABILITY {capabilities}] ready (onion_tls)")
        for _ in range(MAX_LINES):
            line = await _imap_line(talk)
            words = split_words(line)
            if len(words) < 2:
                talk.send("* BAD expected: tag command")
                continue
            tag, verb = words[0], words[1].upper()
            if verb == "CAPABILITY":
                talk.send(f"* CAPABILITY {capabilities}", f"{tag} OK CAPABILITY completed")
            elif verb == "NOOP":
                talk.send(f"{tag} OK NOOP completed")
            elif verb == "LOGOUT":
                talk.send("* BYE logging out", f"{tag} OK LOGOUT completed")
                raise talk.fail("the client logged out before STARTTLS")
            elif verb == "STARTTLS" and len(words) == 2:
                try:
                    early = talk.early_client_bytes("STARTTLS")
                except StartTLSInjectionError:
                    talk.send(f"{tag} BAD no data may follow STARTTLS before the TLS handshake")
                    raise
                talk.send(f"{tag} OK Begin TLS negotiation now")
                layer = talk.upgrade_server(context, early, handshake_timeout)
                break
            elif verb == "STARTTLS":
                talk.send(f"{tag} BAD STARTTLS takes no arguments")
            else:
                talk.send(f"{tag} NO [PRIVACYREQUIRED] STARTTLS first")
        else:
            raise talk.fail(f"no STARTTLS within {MAX_LINES} commands")
    return await layer
