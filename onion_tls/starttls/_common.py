"""What every STARTTLS helper shares: the errors
(:class:`StartTLSError` and its kinds), :class:`Talk` (one plain-text
conversation: bounded line reading, a deadline, errors that name the
protocol, and the injection checks made at the moment of the upgrade), and
small text helpers.  Names without an underscore here are the package's
internal API, used by the protocol modules.

Imports: :mod:`onion_tls.errors`; :mod:`onion_tls._view`,
:mod:`onion_tls.streams` (types only).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import OnionError

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter


# The upgrade each protocol's errors are named after.
UPGRADE = {
    "smtp": "SMTP STARTTLS",
    "imap": "IMAP STARTTLS",
    "pop3": "POP3 STLS",
    "ftp": "FTP AUTH TLS",
    "ftp-ccc": "FTP CCC",
    "postgres": "PostgreSQL SSLRequest",
}

# How much of a peer's reply an error quotes.
QUOTE = 200
# How many lines a multi-line reply (or a pre-upgrade dialogue) may have.
MAX_LINES = 200
# Every line read before the upgrade is at most this long (the peer is not
# trusted yet: it gets no more memory than a reasonable reply needs).
MAX_LINE = 8192


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
        text = f"{upgrade or UPGRADE.get(protocol, protocol)}: {reason}"
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
        super().__init__(protocol, f"{reason}: {show(data)}", depth=depth)


def show(data: bytes) -> str:
    """Bytes for an error message: the first ones, as Python shows them."""
    more = f"... ({len(data)} bytes)" if len(data) > 64 else ""
    return f"{data[:64]!r}{more}"


def line_text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")[:QUOTE]


# -- one conversation ---------------------------------------------------------


class Talk:
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
        line longer than :data:`MAX_LINE`."""
        reader = self.reader
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            what = f" after {show(exc.partial)}" if exc.partial else ""
            raise self.fail(f"the {self.peer} closed the connection{what}") from None
        except asyncio.LimitOverrunError:
            raise self.fail(f"the {self.peer} sent a line longer than the reader's limit") from None
        except ConnectionError as exc:
            raise self.fail(f"the connection was lost ({exc})") from exc
        if len(line) > MAX_LINE:
            raise self.fail(f"the {self.peer} sent a {len(line)}-byte line")
        return line

    async def exactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            what = f" after {show(exc.partial)}" if exc.partial else ""
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
        if early and not handshake_start(early):
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
        return line_text(reply)
    return reply


def handshake_start(data: bytes) -> bool:
    """Do these bytes begin like a TLS handshake record (a ClientHello)?"""
    return data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


def split_words(line: bytes) -> list[str]:
    return line.decode("ascii", "replace").split()


def coded(line: bytes) -> bool:
    """Is ``line`` a numbered reply line (``250 text``, ``250-text``,
    ``250``), as SMTP and FTP send?"""
    return line[:3].isdigit() and line[3:4] in (b"-", b" ", b"\r", b"\n", b"")


def coded_text(lines: list[bytes]) -> str:
    return " / ".join(line_text(x) for x in lines)[:QUOTE]
