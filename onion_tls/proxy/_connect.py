"""The work of one hop on the connection (:class:`Hop`): TLS with the proxy,
then the CONNECT exchange: the request, the reply head read line by line
(bounded by :data:`MAX_REPLY_HEAD`), and what a refusal means.  Bytes behind
the reply are left to the tunnel.

Imports: :mod:`._model`; :mod:`onion_tls._log`, :mod:`onion_tls.errors`,
:mod:`onion_tls.streams`.
"""

from __future__ import annotations

import asyncio
import re

from .._log import logger
from ..errors import HandshakeError, HandshakeTimeoutError, OnionError
from ..streams import StreamWriter
from ._model import (
    Proxy,
    ProxyAuthenticationError,
    ProxyError,
    ProxyHandshakeError,
    ProxyTimeoutError,
)

#: The most bytes a proxy's reply head (status line and headers, interim
#: ``1xx`` replies included) may take.
MAX_REPLY_HEAD = 64 * 1024

_STATUS_LINE = re.compile(rb"HTTP/(\d)(?:\.(\d))? +(\d{3})(?: +(.*))?")


class Hop:
    """The work of one hop on the connection: TLS with the proxy, then
    CONNECT to the next target; each failure as a :class:`ProxyError`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        index: int,
        hops: int,
        proxy: Proxy,
        deadline: float | None,
        timeout: float | None,
        limit: int,
    ) -> None:
        self.reader = reader
        self.limit = limit
        self.writer = writer
        self.index = index
        self.hops = hops
        self.proxy = proxy
        self.deadline = deadline
        self.timeout = timeout

    def error(
        self,
        reason: str,
        cls: type[ProxyError] = ProxyError,
        *,
        status: int | None = None,
        depth: int | None = None,
    ) -> ProxyError:
        if depth is None:
            depth = len(self.writer.layers) or None
        return cls(
            reason, hop=self.index, proxy=self.proxy, hops=self.hops, depth=depth, status=status
        )

    def _left(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()

    # -- TLS with the proxy -------------------------------------------------------

    async def start_tls(self) -> None:
        proxy = self.proxy
        left = self._left()
        if left is not None and left <= 0:
            raise self.error(
                f"no time left for the TLS handshake with the proxy ({self.timeout:g} s)",
                ProxyTimeoutError,
            )
        try:
            layer = await self.writer.start_tls(
                proxy.tls_context(),
                server_side=False,
                server_hostname=proxy.tls_name(),
                initial_bytes=self.writer.take_buffered(),
                handshake_timeout=left,
            )
        except HandshakeTimeoutError as exc:
            raise self.error(
                f"the TLS handshake with the proxy did not finish within {self.timeout:g} s",
                ProxyTimeoutError,
                depth=exc.depth,
            ) from exc
        except HandshakeError as exc:
            raise self.error(
                f"the TLS handshake with the proxy failed: {exc.reason}",
                ProxyHandshakeError,
                depth=exc.depth,
            ) from exc
        except OnionError as exc:
            raise self.error(
                f"could not start TLS with the proxy: {exc.reason}", depth=exc.depth
            ) from exc
        logger.debug(
            "proxy hop %d of %d: TLS with %s up at depth %d (%s, %s)",
            self.index,
            self.hops,
            proxy.url,
            layer.depth,
            layer.version,
            layer.cipher,
        )

    # -- CONNECT ------------------------------------------------------------------

    async def connect(self, target: str) -> None:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        auth = self.proxy.authorization()
        if auth is not None:
            lines.append(f"Proxy-Authorization: {auth}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        scope = asyncio.timeout_at(self.deadline)
        try:
            async with scope:
                status, reason, headers = await self._read_reply()
        except ProxyError:
            raise
        except TimeoutError as exc:
            if not scope.expired():
                raise self._lost(exc) from exc
            raise self.error(
                f"no reply to CONNECT {target} within {self.timeout:g} s", ProxyTimeoutError
            ) from None
        except (OSError, OnionError) as exc:
            raise self._lost(exc) from exc
        said = f"{status} {reason}".rstrip()
        if 200 <= status < 300:
            logger.debug(
                "proxy hop %d of %d: %s opened a tunnel to %s (%s)",
                self.index,
                self.hops,
                self.proxy.url,
                target,
                said,
            )
            return
        if status == 407:
            asks = headers.get("proxy-authenticate")
            asks_for = f"; it asks for: {asks}" if asks else ""
            if self.proxy.authorization() is None:
                why = (
                    f"the proxy requires authentication ({said}{asks_for}); "
                    "give user:password@ in the proxy URL"
                )
            else:
                why = f"the proxy refused the credentials ({said}{asks_for})"
            raise self.error(why, ProxyAuthenticationError, status=status)
        hint = ""
        if status in (502, 503, 504):
            hint = f" (the proxy could not reach {target})"
        elif status == 403:
            hint = " (forbidden by the proxy's policy)"
        elif 300 <= status < 400 and "location" in headers:
            hint = f" (a redirect to {headers['location']}, not followed)"
        raise self.error(f"the proxy refused CONNECT {target}: {said}{hint}", status=status)

    def _lost(self, exc: BaseException) -> ProxyError:
        """The connection failed while we waited for the proxy's reply."""
        depth = exc.depth if isinstance(exc, OnionError) else None
        return self.error(f"the connection was lost waiting for the reply: {exc}", depth=depth)

    async def _read_reply(self) -> tuple[int, str, dict[str, str]]:
        """Read the final reply's head (skipping interim 1xx ones), line by
        line, bounded by :data:`MAX_REPLY_HEAD`; leave what follows it in
        the reader.  The status line is checked as soon as it is in, so a
        peer that is not an HTTP proxy is named at once."""
        total = 0
        while True:
            line = await self._read_line(total)
            total += len(line)
            if line in (b"\r\n", b"\n"):
                continue  # empty lines before a status line are tolerated (RFC 9112, 2.2)
            status, reason = self._status(line)
            fields: list[bytes] = []
            while True:
                line = await self._read_line(total)
                total += len(line)
                if line in (b"\r\n", b"\n"):
                    break
                fields.append(line)
            if 100 <= status < 200:
                continue  # an interim reply; the final one follows
            return status, reason, _headers(fields)

    async def _read_line(self, total: int) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            # One line passed the reader's limit (the whole head may be shorter).
            if self.limit >= MAX_REPLY_HEAD:
                raise self._too_long() from None
            raise self.error(
                f"a line of the proxy's reply is longer than the reader's limit ({self.limit} "
                "bytes)"
            ) from None
        except asyncio.IncompleteReadError as exc:
            if total == 0 and exc.partial and _STATUS_LINE.match(exc.partial) is None:
                # Not even the start of a status line: say what it was.
                raise self.error(f"malformed reply: {_describe(exc.partial)}") from None
            if total == 0 and not exc.partial:
                why = "the proxy closed the connection without replying"
            else:
                why = (
                    "the proxy closed the connection in the middle of its reply "
                    f"(after {total + len(exc.partial)} bytes)"
                )
            raise self.error(why) from None
        if total + len(line) > MAX_REPLY_HEAD:
            raise self._too_long()
        return line

    def _too_long(self) -> ProxyError:
        return self.error(f"the proxy's reply head is longer than {MAX_REPLY_HEAD} bytes")

    def _status(self, line: bytes) -> tuple[int, str]:
        m = _STATUS_LINE.fullmatch(line.rstrip(b"\r\n"))
        if m is None:
            raise self.error(f"malformed reply: {_describe(line)} is not an HTTP status line")
        return int(m.group(3)), (m.group(4) or b"").decode("latin-1").strip()


def _headers(lines: list[bytes]) -> dict[str, str]:
    """Header fields by lower-case name (repeated ones joined with ", ");
    lines that are not fields are ignored: only the status decides."""
    fields: dict[str, str] = {}
    for raw in lines:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            continue
        key = name.lower()
        text = value.strip()
        fields[key] = f"{fields[key]}, {text}" if key in fields else text
    return fields


def _describe(data: bytes) -> str:
    """A short, safe rendering of bytes a proxy sent, with a guess at what
    they are when they are not HTTP."""
    shown = repr(data[:40]) + ("..." if len(data) > 40 else "")
    if data[:1] in (b"\x15", b"\x16") and data[1:2] == b"\x03":
        return f"{shown} (a TLS record: is it an https:// proxy?)"
    return shown
