"""STARTTLS in one call: the plain-text upgrade dance of SMTP, IMAP, POP3,
FTP and PostgreSQL, on onion_tls streams.

Each client helper takes the ``(reader, writer)`` of
:func:`onion_tls.open_connection`, talks the protocol's plain text up to the
server's "go ahead", pushes a client TLS layer with
``writer.start_tls()`` and returns its :class:`~onion_tls.TLSLayer` once
the handshake is done.  Each server helper does the server's half: greets,
answers what a client asks before the upgrade (EHLO, CAPABILITY, CAPA,
FEAT...), says "go ahead" to the upgrade command and pushes a server layer.
After the upgrade the conversation is the caller's (an SMTP client sends
EHLO again, an IMAP client asks for CAPABILITY again: what was said in
plain text must not be trusted).

======================  ==========================  ===========================
protocol                client                      server
======================  ==========================  ===========================
SMTP (RFC 3207)         :func:`smtp_starttls`       :func:`smtp_serve_starttls`
IMAP (RFC 9051, 2595)   :func:`imap_starttls`       :func:`imap_serve_starttls`
POP3 (RFC 2595)         :func:`pop3_stls`           :func:`pop3_serve_stls`
FTP (RFC 4217)          :func:`ftp_auth_tls`,       :func:`ftp_serve_auth_tls`,
                        :func:`ftp_ccc`             :func:`ftp_serve_ccc`
PostgreSQL              :func:`postgres_ssl_request`  :func:`postgres_serve_ssl_request`
======================  ==========================  ===========================

:func:`starttls` picks the client helper by name (``"smtp"``, ``"imap"``,
``"pop3"``, ``"ftp"``, ``"postgres"``).

Injection
---------

Plain text that arrived before the upgrade must never be taken as if it
came through TLS: that is the STARTTLS command-injection class of bugs
(CVE-2011-0411 in Postfix; CVE-2021-23214 and CVE-2021-23222 in PostgreSQL's
server and client).  The helpers check, at the very moment of the upgrade
(no ``await`` between the check and ``start_tls``, so no byte can slip in
between):

* client side: bytes already received after the server's "go ahead" reply
  are refused.  TLS starts with the client's ClientHello; the server has
  nothing legitimate to send first.
* server side: bytes already received after the client's upgrade command
  are refused, unless they begin like a TLS handshake record (``16 03``):
  a client that pipelines its ClientHello right behind the command.  Those
  are the new layer's, and are handed to it as ``initial_bytes``.

Bytes that arrive later go through the new layer, which fails them as not
TLS.  A refusal raises :class:`StartTLSInjectionError`.

Errors
------

Every failure before the TLS handshake is a :class:`StartTLSError` (an
:class:`~onion_tls.OnionError`; ``depth`` is the depth the new layer would
have had) naming the protocol and the reason; the peer saying no is a
:class:`StartTLSRefusedError` carrying the peer's reply.  A failed
handshake is the usual :class:`~onion_tls.HandshakeError`.  The helpers do
not close the connection on errors: after a refusal it is still a working
plain-text connection (the caller may say QUIT), after anything else the
caller should close it.

Imports: :mod:`._view`, :mod:`.errors`, :mod:`.streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from .errors import OnionError

if TYPE_CHECKING:
    from ._view import TLSLayer
    from .streams import StreamWriter

__all__ = [
    "PROTOCOLS",
    "StartTLSError",
    "StartTLSInjectionError",
    "StartTLSRefusedError",
    "ftp_auth_tls",
    "ftp_ccc",
    "ftp_serve_auth_tls",
    "ftp_serve_ccc",
    "imap_serve_starttls",
    "imap_starttls",
    "pop3_serve_stls",
    "pop3_stls",
    "postgres_serve_ssl_request",
    "postgres_ssl_request",
    "smtp_serve_starttls",
    "smtp_starttls",
    "starttls",
]

Protocol = Literal["smtp", "imap", "pop3", "ftp", "postgres"]
#: The protocols :func:`starttls` knows, by name.
PROTOCOLS: tuple[Protocol, ...] = ("smtp", "imap", "pop3", "ftp", "postgres")

# The upgrade each protocol's errors are named after.
_UPGRADE = {
    "smtp": "SMTP STARTTLS",
    "imap": "IMAP STARTTLS",
    "pop3": "POP3 STLS",
    "ftp": "FTP AUTH TLS",
    "ftp-ccc": "FTP CCC",
    "postgres": "PostgreSQL SSLRequest",
}

# How much of a peer's reply an error quotes.
_QUOTE = 200
# How many lines a multi-line reply (or a pre-upgrade dialogue) may have.
_MAX_LINES = 200
# Every line read before the upgrade is at most this long (the peer is not
# trusted yet: it gets no more memory than a reasonable reply needs).
_MAX_LINE = 8192


# -- errors ---------------------------------------------------------------------


class StartTLSError(OnionError):
    """The plain-text part of an upgrade failed.

    Attributes:
        protocol: ``"smtp"``, ``"imap"``, ``"pop3"``, ``"ftp"`` or
            ``"postgres"``.
        reply: the peer's words that tell why (its reply line, or the
            command it sent), or ``None``.
    """

    def __init__(
        self,
        protocol: str,
        reason: str,
        *,
        reply: str | None = None,
        depth: int | None = None,
        upgrade: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.reply = reply
        text = f"{upgrade or _UPGRADE.get(protocol, protocol)}: {reason}"
        if reply is not None:
            text += f": {reply!r}"
        super().__init__(text, depth=depth)


class StartTLSRefusedError(StartTLSError):
    """The peer said no (SMTP 454, IMAP NO/BAD, POP3 -ERR, FTP 4xx/5xx,
    PostgreSQL ``N``), or does not offer the upgrade.  The connection is
    still plain text and usable."""


class StartTLSInjectionError(StartTLSError):
    """Bytes arrived where the protocol allows none: right after the
    server's "go ahead" (client side), or after the client's upgrade command
    without being a TLS handshake (server side).  They were taken out of the
    reader and not used.

    Attributes:
        data: the refused bytes.
    """

    def __init__(self, protocol: str, reason: str, *, data: bytes, depth: int | None) -> None:
        self.data = data
        super().__init__(protocol, f"{reason}: {_show(data)}", depth=depth)


def _show(data: bytes) -> str:
    """Bytes for an error message: the first ones, as Python shows them."""
    more = f"... ({len(data)} bytes)" if len(data) > 64 else ""
    return f"{data[:64]!r}{more}"


def _text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")[:_QUOTE]


# -- one conversation ---------------------------------------------------------


class _Talk:
    """The plain-text conversation of one upgrade: lines in and out, with
    errors that name the protocol, and the injection check."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        protocol: str,
        *,
        peer: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.peer = peer  # "server" or "client"
        self.depth = len(writer.layers) + 1

    def fail(self, reason: str, reply: bytes | str | None = None) -> StartTLSError:
        return StartTLSError(self.protocol, reason, reply=_reply(reply), depth=self.depth)

    def refused(self, reason: str, reply: bytes | str | None = None) -> StartTLSRefusedError:
        return StartTLSRefusedError(self.protocol, reason, reply=_reply(reply), depth=self.depth)

    @contextlib.asynccontextmanager
    async def deadline(self, timeout: float | None) -> AsyncIterator[None]:
        """Bound the plain-text exchange in time."""
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError:
            raise self.fail(f"the {self.peer} did not answer within {timeout:g} s") from None

    def send(self, *lines: str | bytes) -> None:
        self.writer.write(
            b"".join((x.encode() if isinstance(x, str) else x) + b"\r\n" for x in lines)
        )

    async def line(self) -> bytes:
        """One line, with its end; fails on EOF, a lost connection or a
        line longer than :data:`_MAX_LINE`."""
        reader = self.reader
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            what = f" after {_show(exc.partial)}" if exc.partial else ""
            raise self.fail(f"the {self.peer} closed the connection{what}") from None
        except asyncio.LimitOverrunError:
            raise self.fail(f"the {self.peer} sent a line longer than the reader's limit") from None
        except ConnectionError as exc:
            raise self.fail(f"the connection was lost ({exc})") from exc
        if len(line) > _MAX_LINE:
            raise self.fail(f"the {self.peer} sent a {len(line)}-byte line")
        return line

    async def exactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            what = f" after {_show(exc.partial)}" if exc.partial else ""
            raise self.fail(f"the {self.peer} closed the connection{what}") from None
        except ConnectionError as exc:
            raise self.fail(f"the connection was lost ({exc})") from exc

    def unread(self) -> bytes:
        """Take the bytes received but not read yet (see the module's
        "Injection")."""
        return self.writer.take_buffered()

    def upgrade_client(
        self,
        context: Any,
        server_hostname: str | None,
        handshake_timeout: float | None,
        *,
        after: str,
    ) -> asyncio.Future[TLSLayer]:
        """The server said go ahead: push the client layer now, unless bytes
        came after the go ahead (injected: TLS starts with our ClientHello)."""
        early = self.unread()
        if early:
            raise StartTLSInjectionError(
                self.protocol,
                f"the server sent bytes after its go-ahead ({after}) and before the "
                "TLS handshake: refused as injected plain text",
                data=early,
                depth=self.depth,
            )
        return self.writer.start_tls(
            context,
            server_side=False,
            server_hostname=server_hostname,
            handshake_timeout=handshake_timeout,
        )

    def early_client_bytes(self, command: str) -> bytes:
        """Server side, right after the client's upgrade command: what the
        client sent behind it.  A pipelined ClientHello is the new layer's;
        anything else is injected plain text."""
        early = self.unread()
        if early and not _handshake_start(early):
            raise StartTLSInjectionError(
                self.protocol,
                f"the client sent plain text after {command} and before the TLS handshake: "
                "refused as injected",
                data=early,
                depth=self.depth,
            )
        return early

    def upgrade_server(
        self, context: Any, early: bytes, handshake_timeout: float | None
    ) -> asyncio.Future[TLSLayer]:
        return self.writer.start_tls(
            context,
            server_side=True,
            initial_bytes=early,
            handshake_timeout=handshake_timeout,
        )


def _reply(reply: bytes | str | None) -> str | None:
    if isinstance(reply, bytes):
        return _text(reply)
    return reply


def _handshake_start(data: bytes) -> bool:
    """Do these bytes begin like a TLS handshake record (a ClientHello)?"""
    return data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


def _words(line: bytes) -> list[str]:
    return line.decode("ascii", "replace").split()


# -- SMTP (RFC 5321, RFC 3207) ----------------------------------------------------


def _coded(line: bytes) -> bool:
    """Is ``line`` a numbered reply line (``250 text``, ``250-text``,
    ``250``), as SMTP and FTP send?"""
    return line[:3].isdigit() and line[3:4] in (b"-", b" ", b"\r", b"\n", b"")


async def _smtp_reply(talk: _Talk) -> tuple[int, list[bytes]]:
    """A whole SMTP reply: ``(code, lines)``; ``250-a``, ``250-b``, ``250 c``."""
    lines: list[bytes] = []
    while len(lines) < _MAX_LINES:
        line = await talk.line()
        if not _coded(line):
            raise talk.fail("not an SMTP reply", line)
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), lines
    raise talk.fail(f"a reply of more than {_MAX_LINES} lines")


def _smtp_text(lines: list[bytes]) -> str:
    return " / ".join(_text(x) for x in lines)[:_QUOTE]


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
    talk = _Talk(reader, writer, "smtp", peer="server")
    async with talk.deadline(timeout):
        if greeting:
            code, lines = await _smtp_reply(talk)
            if code != 220:
                raise talk.refused("the server's greeting is not 220", _smtp_text(lines))
        if ehlo:
            talk.send(f"EHLO {local_hostname}")
            code, lines = await _smtp_reply(talk)
            if code != 250:
                raise talk.refused("the server refused EHLO", _smtp_text(lines))
            offered = {w[0].upper() for w in map(_words, (x[4:] for x in lines[1:])) if w}
            if "STARTTLS" not in offered:
                raise talk.refused(
                    "the server does not offer STARTTLS (not in its EHLO reply)",
                    _smtp_text(lines),
                )
        talk.send("STARTTLS")
        code, lines = await _smtp_reply(talk)
        if code != 220:
            raise talk.refused("the server refused STARTTLS", _smtp_text(lines))
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
    talk = _Talk(reader, writer, "smtp", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send(f"220 {hostname} ESMTP ready (onion_tls)")
        for _ in range(_MAX_LINES):
            line = await talk.line()
            verb, _, arg = _text(line).partition(" ")
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
            raise talk.fail(f"no STARTTLS within {_MAX_LINES} commands")
    return await layer


# -- IMAP (RFC 9051, RFC 3501, RFC 2595) ---------------------------------------------


async def _imap_line(talk: _Talk) -> bytes:
    """One IMAP response line, with any literal (``{n}``) it carries read
    through, so that the next line is really the next response."""
    line = await talk.line()
    parts = [line]
    while line.rstrip(b"\r\n").endswith(b"}") and b"{" in line:
        size = line.rstrip(b"\r\n").rsplit(b"{", 1)[1][:-1].rstrip(b"+")
        if not size.isdigit() or int(size) > _MAX_LINE:
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
    talk = _Talk(reader, writer, "imap", peer="server")
    tags = (f"{tag_prefix}{n:03d}" for n in range(1, 1000))

    async def command(name: str) -> tuple[str, bytes, list[bytes]]:
        """Send ``name``; return the tagged status and line, and the
        untagged lines that came before it."""
        tag = next(tags)
        talk.send(f"{tag} {name}")
        untagged: list[bytes] = []
        while len(untagged) < _MAX_LINES:
            line = await _imap_line(talk)
            words = _words(line)
            if words[:1] == [tag]:
                status = words[1].upper() if len(words) > 1 else ""
                return status, line, untagged
            if [w.upper() for w in words[:2]] == ["*", "BYE"]:
                raise talk.refused(f"the server said BYE to {name}", line)
            untagged.append(line)
        raise talk.fail(f"more than {_MAX_LINES} lines before the answer to {name}")

    async with talk.deadline(timeout):
        caps: set[str] | None = None
        if greeting:
            line = await _imap_line(talk)
            words = [w.upper() for w in _words(line)[:2]]
            if words == ["*", "PREAUTH"]:
                raise talk.refused(
                    "the server pre-authenticated the connection (PREAUTH): STARTTLS is "
                    "only allowed before login",
                    line,
                )
            if words != ["*", "OK"]:
                raise talk.refused("the server's greeting is not * OK", line)
            caps = _imap_caps(_text(line))
        if check_capability:
            if caps is None:
                status, line, untagged = await command("CAPABILITY")
                if status != "OK":
                    raise talk.refused("the server refused CAPABILITY", line)
                caps = set()
                for u in untagged:
                    w = [x.upper() for x in _words(u)]
                    if w[:2] == ["*", "CAPABILITY"]:
                        caps.update(w[2:])
            if "STARTTLS" not in caps:
                raise talk.refused(
                    "the server does not offer STARTTLS (capabilities: "
                    + " ".join(sorted(caps))[:_QUOTE]
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
    talk = _Talk(reader, writer, "imap", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send(f"* OK [CAPABILITY {capabilities}] ready (onion_tls)")
        for _ in range(_MAX_LINES):
            line = await _imap_line(talk)
            words = _words(line)
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
            raise talk.fail(f"no STARTTLS within {_MAX_LINES} commands")
    return await layer


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
    talk = _Talk(reader, writer, "pop3", peer="server")
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
    talk = _Talk(reader, writer, "pop3", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send("+OK POP3 ready (onion_tls)")
        for _ in range(_MAX_LINES):
            verb, _, arg = _text(await talk.line()).partition(" ")
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
            raise talk.fail(f"no STLS within {_MAX_LINES} commands")
    return await layer


# -- FTP (RFC 959, RFC 4217) -------------------------------------------------------


async def _ftp_reply(talk: _Talk) -> tuple[int, list[bytes]]:
    """A whole FTP reply: ``220-first``, any lines, ``220 last``."""
    first = await talk.line()
    if not _coded(first):
        raise talk.fail("not an FTP reply", first)
    code = first[:3]
    lines = [first]
    if first[3:4] == b"-":
        # Lines in between may be anything; the last starts with the code.
        while len(lines) < _MAX_LINES:
            line = await talk.line()
            lines.append(line)
            if line.startswith(code) and line[3:4] != b"-" and _coded(line):
                break
        else:
            raise talk.fail(f"a reply of more than {_MAX_LINES} lines")
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
    talk = _Talk(reader, writer, "ftp", peer="server")
    async with talk.deadline(timeout):
        if greeting:
            code, lines = await _ftp_reply(talk)
            if code != 220:
                raise talk.refused("the server's greeting is not 220", _smtp_text(lines))
        talk.send("AUTH TLS")
        code, lines = await _ftp_reply(talk)
        if code != 234:
            raise talk.refused("the server refused AUTH TLS", _smtp_text(lines))
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
    talk = _Talk(reader, writer, "ftp", peer="server")
    talk.depth = len(writer.layers)
    if not writer.layers:
        raise StartTLSError("ftp", "no TLS layer to clear", upgrade=_UPGRADE["ftp-ccc"])
    async with talk.deadline(timeout):
        talk.send("CCC")
        code, lines = await _ftp_reply(talk)
        if code != 200:
            raise StartTLSRefusedError(
                "ftp",
                "the server refused CCC",
                reply=_smtp_text(lines),
                depth=talk.depth,
                upgrade=_UPGRADE["ftp-ccc"],
            )
        rest = writer.take_buffered()
        if rest:
            raise StartTLSError(
                "ftp",
                f"the server sent more inside the layer after its 200: {_show(rest)}",
                depth=talk.depth,
                upgrade=_UPGRADE["ftp-ccc"],
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
    talk = _Talk(reader, writer, "ftp", peer="client")
    async with talk.deadline(timeout):
        if greeting:
            talk.send("220 FTP ready (onion_tls)")
        for _ in range(_MAX_LINES):
            verb, _, arg = _text(await talk.line()).partition(" ")
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
            raise talk.fail(f"no AUTH TLS within {_MAX_LINES} commands")
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
        raise StartTLSError("ftp", "no TLS layer to clear", upgrade=_UPGRADE["ftp-ccc"])
    early = writer.take_buffered()
    if early:
        writer.write(b"533 no command may follow CCC\r\n")
        raise StartTLSError(
            "ftp",
            f"the client sent more after CCC: {_show(early)}",
            depth=depth,
            upgrade=_UPGRADE["ftp-ccc"],
        )
    writer.write(b"200 CCC ok, the control connection is plain text now\r\n")
    return await writer.stop_tls(timeout=timeout)


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
    talk = _Talk(reader, writer, "postgres", peer="server")
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
    talk = _Talk(reader, writer, "postgres", peer="client")
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


# -- by name --------------------------------------------------------------------

_CLIENTS: dict[str, Callable[..., Awaitable[TLSLayer]]] = {
    "smtp": smtp_starttls,
    "imap": imap_starttls,
    "pop3": pop3_stls,
    "ftp": ftp_auth_tls,
    "postgres": postgres_ssl_request,
}


async def starttls(
    protocol: str,
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    context: Any,
    *,
    server_hostname: str | None = None,
    timeout: float | None = 30.0,
    handshake_timeout: float | None = 60.0,
) -> TLSLayer:
    """Run the client helper of ``protocol`` (one of :data:`PROTOCOLS`),
    with its defaults, as ``openssl s_client -starttls`` does.

    Raises:
      ValueError: an unknown protocol.
    """
    try:
        helper = _CLIENTS[protocol.lower()]
    except KeyError:
        raise ValueError(
            f"unknown STARTTLS protocol {protocol!r} (known: {', '.join(PROTOCOLS)})"
        ) from None
    return await helper(
        reader,
        writer,
        context,
        server_hostname=server_hostname,
        timeout=timeout,
        handshake_timeout=handshake_timeout,
    )
