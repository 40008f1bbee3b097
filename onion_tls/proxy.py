"""Connections through a chain of HTTP CONNECT proxies, each reached in
plain text or over TLS.

Theory of operation
-------------------

A chain of proxies is a stack of tunnels, and onion_tls already stacks TLS
sessions on one connection, so a chain is a loop over the hops::

    TCP to proxy 1
    hop 1: [TLS with proxy 1]        CONNECT proxy2:port   -> 2xx
    hop 2: [TLS with proxy 2]        CONNECT origin:port   -> 2xx
    origin: [TLS with the origin]

Each ``https://`` hop pushes one TLS layer (``writer.start_tls``) inside the
ones before it, so an HTTPS proxy behind an HTTPS proxy is TLS inside TLS,
and the origin's TLS is one layer deeper.  ``http://`` hops add no layer:
their CONNECT travels inside whatever layers are already there.

Three rules keep it exact:

* **Bytes after the reply belong to the tunnel.**  The reply's head is read
  line by line up to its empty line; whatever the proxy sent after it in
  the same read is already the next hop's (RFC 9110: a 2xx reply to
  CONNECT has no body).  Those bytes are handed to the next layer as
  ``initial_bytes=writer.take_buffered()``, or left in the reader when no
  layer follows.  Nothing is dropped and nothing is read as the proxy's.
* **Bounded.**  A reply head longer than :data:`MAX_REPLY_HEAD` bytes is an
  error, and each hop's work (the TCP connect for hop 1, the TLS handshake
  with the proxy, the CONNECT exchange) ends by one deadline: the hop's
  timeout.
* **Every failure names its hop.**  A :class:`ProxyError` carries the hop's
  index (1 = the first proxy), the :class:`Proxy`, the HTTP status when
  there is one, and the depth (the number of TLS layers when it happened,
  or the depth of the layer whose handshake failed).  The connection is
  aborted before the error is raised.

Example::

    from onion_tls import proxy

    reader, writer = await proxy.open_connection(
        "example.org", 443,
        proxies=["https://user:pw@proxy1.example:3128", "https://proxy2.example:3129"],
        ssl=True,                       # push the origin's TLS too
    )
    assert len(writer.layers) == 3    # proxy 1, proxy 2, example.org

Imports: :mod:`._log`, :mod:`.errors`, :mod:`.streams`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl as _ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._log import logger
from .errors import HandshakeError, HandshakeTimeoutError, OnionError
from .streams import StreamWriter
from .streams import open_connection as _open_connection

__all__ = [
    "MAX_REPLY_HEAD",
    "Proxy",
    "ProxyAuthenticationError",
    "ProxyError",
    "ProxyHandshakeError",
    "ProxyTimeoutError",
    "open_connection",
]


MAX_REPLY_HEAD = 64 * 1024
"""The most bytes a proxy's reply head (status line and headers, interim
``1xx`` replies included) may take."""

_DEFAULT_LIMIT = 2**16
_DEFAULT_PORTS = {"http": 80, "https": 443}
_STATUS_LINE = re.compile(rb"HTTP/(\d)(?:\.(\d))? +(\d{3})(?: +(.*))?")


# -- errors -------------------------------------------------------------------------


class ProxyError(OnionError):
    """A proxy hop failed: it could not be reached, its TLS handshake failed,
    it refused the CONNECT, timed out, closed the connection or answered
    something that is not an HTTP reply.

    The message names the hop and says why, e.g.
    ``proxy hop 2 of 2 (https://10.0.0.2:3128, depth 1): the proxy refused
    CONNECT example.org:443: 403 Forbidden``.

    Attributes:
        hop: which proxy (1 = the first one, the one reached by TCP).
        proxy: that hop's :class:`Proxy`.
        status: the HTTP status of the proxy's reply, or ``None``.
        depth: the number of TLS layers when it failed (``None``: none), or
            for a failed handshake with the proxy, that layer's depth.
        reason: why, in words, without the hop prefix.
    """

    def __init__(
        self,
        reason: str,
        *,
        hop: int,
        proxy: Proxy,
        hops: int | None = None,
        depth: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(reason, depth=depth)
        self.hop = hop
        self.proxy = proxy
        self.status = status
        of = f" of {hops}" if hops is not None else ""
        where = f"depth {depth}" if depth is not None else "plaintext"
        self.args = (f"proxy hop {hop}{of} ({proxy.url}, {where}): {reason}",)


class ProxyAuthenticationError(ProxyError):
    """The proxy answered ``407 Proxy Authentication Required``: credentials
    missing from the proxy URL, or refused."""


class ProxyTimeoutError(ProxyError, TimeoutError):
    """A hop did not finish (connect, TLS handshake with the proxy, or the
    CONNECT reply) within its timeout."""


class ProxyHandshakeError(ProxyError, HandshakeError):
    """The TLS handshake with an ``https://`` proxy failed (certificate,
    name, version...): both a :class:`ProxyError` and a
    :class:`~onion_tls.HandshakeError`, at the depth of that layer."""


# -- one hop ------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxy:
    """One HTTP CONNECT proxy of a chain.

    Build it from a URL with :meth:`from_url`, or directly.

    Attributes:
        scheme: ``"http"`` (CONNECT in the clear, inside the layers already
            there) or ``"https"`` (a TLS layer with the proxy first).
        host: the proxy's name or address: where hop 1 connects, and what
            the hop before asks to CONNECT to.
        port: its port.
        username: for Basic proxy authentication (``None``: none).
        password: its password (never shown in ``repr`` or messages).
        ssl: for ``https``: an ``ssl.SSLContext`` or an
            ``OpenSSL.SSL.Context`` (it chooses the engine of the layer);
            ``None`` or ``True`` for ``ssl.create_default_context()``.
        server_hostname: for ``https``: the SNI and the name the proxy's
            certificate must match; ``None`` for ``host``, ``""`` for no
            SNI and no name check (as asyncio: a serious risk, testing only).
        timeout: seconds for this hop (connect, TLS, CONNECT reply), or
            ``None`` for the ``hop_timeout`` of :func:`open_connection`.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: Any = field(default=None, repr=False)
    server_hostname: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"proxy scheme must be 'http' or 'https', not {self.scheme!r}")
        if not self.host:
            raise ValueError("a proxy needs a host")
        if not 0 < self.port < 65536:
            raise ValueError(f"proxy port out of range: {self.port}")
        if self.scheme == "http" and self.ssl not in (None, False):
            raise ValueError("ssl= is for https:// proxies; this one is http://")
        if self.scheme == "https" and self.ssl is False:
            raise ValueError("an https:// proxy needs TLS: ssl=False is for http:// ones")
        _check_host(self.host)
        if self.username is not None and ":" in self.username:
            raise ValueError("a Basic authentication user name cannot contain ':'")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ssl: Any = None,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> Proxy:
        """``http://[user:password@]host[:port]`` or ``https://...``.

        The user name and password are percent-decoded
        (``https://me:p%40ss@proxy:3128`` has the password ``p@ss``).  The
        port defaults to the scheme's (80, 443).  An IPv6 address is written
        in brackets: ``http://[::1]:3128``.

        Raises:
            ValueError: not such a URL (another scheme, no host, a path...).
        """
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad proxy URL {_safe_url(url)!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"bad proxy URL {_safe_url(url)!r}: the scheme must be http:// or https://"
            )
        if not parts.hostname:
            raise ValueError(f"bad proxy URL {_safe_url(url)!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(
                f"bad proxy URL {_safe_url(url)!r}: a proxy URL has no path, query or fragment"
            )
        user = urllib.parse.unquote(parts.username) if parts.username is not None else None
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        if password is not None and user is None:
            user = ""
        return cls(
            scheme,
            parts.hostname,
            port if port is not None else _DEFAULT_PORTS[scheme],
            username=user,
            password=password,
            ssl=ssl,
            server_hostname=server_hostname,
            timeout=timeout,
        )

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), as written in a CONNECT request."""
        return _authority(self.host, self.port)

    @property
    def url(self) -> str:
        """The URL without credentials, for messages."""
        return f"{self.scheme}://{self.address}"

    def _authorization(self) -> str | None:
        if self.username is None and self.password is None:
            return None
        # RFC 7617: user-id ":" password, in UTF-8, base64.
        creds = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(creds).decode("ascii")

    def _context(self) -> Any:
        if self.ssl is None or self.ssl is True:
            return _ssl.create_default_context()
        return self.ssl

    def _tls_name(self) -> str | None:
        name = self.host if self.server_hostname is None else self.server_hostname
        return name or None


def _check_host(host: str) -> None:
    # The host goes into a request line: no room for a second header.
    if not host or any(c.isspace() or ord(c) < 32 or c in "/@?#" for c in host):
        raise ValueError(f"not a host name or address: {host!r}")


def _authority(host: str, port: int) -> str:
    """``host:port`` as a CONNECT request and ``Host`` header write it."""
    _check_host(host)
    if ":" in host:
        return f"[{host}]:{port}"
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = host.encode("idna").decode("ascii")
    return f"{host}:{port}"


def _safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


# -- the chain ----------------------------------------------------------------------


async def open_connection(
    host: str,
    port: int,
    *,
    proxies: Sequence[str | Proxy],
    ssl: Any = None,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = 60.0,
    hop_timeout: float | None = 30.0,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, StreamWriter]:
    """Connect to ``host:port`` through a chain of HTTP CONNECT proxies, like
    :func:`onion_tls.open_connection` with ``proxies`` in between.

    The first proxy is reached by TCP; each asks the next (or, the last,
    the origin) for a tunnel with ``CONNECT``.  ``https://`` proxies are
    spoken to over TLS, each layer inside the ones before; with ``ssl``, the
    origin's TLS is pushed as the innermost layer too.

    Args:
      host, port: the origin, as the last proxy is asked to reach it.
      proxies: the chain, first hop first: URLs (``http://`` or
        ``https://``, optionally with ``user:password@``) or
        :class:`Proxy` objects.  Empty: a direct connection.
      ssl: the origin's TLS: ``None``/``False`` to return at the depth of
        the proxies (push it yourself with ``writer.start_tls``);
        ``True`` for ``ssl.create_default_context()``; or an
        ``ssl.SSLContext`` / ``OpenSSL.SSL.Context``.
      server_hostname: the origin's SNI and checked name; by default
        ``host``; ``""`` for none.
      ssl_handshake_timeout: seconds for the origin's handshake.
      hop_timeout: seconds per hop (the TCP connect for hop 1, the TLS
        handshake with the proxy, the CONNECT reply), unless the hop's
        :attr:`Proxy.timeout` says otherwise; ``None`` for no limit.
      limit: the reader's buffer limit; it bounds each line of a proxy's
        reply too.
      **kwds: passed to ``loop.create_connection`` for the first hop
        (``local_addr``, ``family``, ...).

    Returns:
      ``(reader, writer)`` at the depth reached: one TLS layer per
      ``https://`` proxy, plus the origin's with ``ssl``.  Bytes the last
      proxy sent right behind its reply (a server that speaks first) are
      in the reader.

    Raises:
      ProxyError: a hop failed; the message names it and says why (see
        :class:`ProxyAuthenticationError`, :class:`ProxyTimeoutError`,
        :class:`ProxyHandshakeError`).
      HandshakeError: the origin's handshake failed.
      OSError: no proxies, and the origin could not be reached.
    """
    hops = [p if isinstance(p, Proxy) else Proxy.from_url(p) for p in proxies]
    if hop_timeout is not None and not hop_timeout > 0:
        raise ValueError(f"hop_timeout must be a positive number of seconds, not {hop_timeout!r}")
    origin_ctx = _ssl.create_default_context() if ssl is True else ssl
    origin_name = host if server_hostname is None else server_hostname
    if not hops:
        return await _open_connection(
            host,
            port,
            ssl=origin_ctx or None,
            server_hostname=origin_name or None,
            ssl_handshake_timeout=ssl_handshake_timeout,
            limit=limit,
            **kwds,
        )

    # What each hop is asked to CONNECT to: the next proxy, then the origin.
    targets = [h.address for h in hops[1:]] + [_authority(host, port)]
    loop = asyncio.get_running_loop()
    first = hops[0]
    timeout = first.timeout if first.timeout is not None else hop_timeout
    deadline = loop.time() + timeout if timeout is not None else None
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await _open_connection(first.host, first.port, limit=limit, **kwds)
    except TimeoutError:
        raise ProxyTimeoutError(
            f"could not connect to the proxy within {timeout:g} s",
            hop=1,
            proxy=first,
            hops=len(hops),
        ) from None
    except OSError as exc:
        raise ProxyError(
            f"could not connect to the proxy: {exc}", hop=1, proxy=first, hops=len(hops)
        ) from exc
    logger.debug("proxy hop 1 of %d: connected to %s", len(hops), first.url)

    try:
        for index, hop in enumerate(hops, 1):
            if index > 1:
                timeout = hop.timeout if hop.timeout is not None else hop_timeout
                deadline = loop.time() + timeout if timeout is not None else None
            step = _Hop(reader, writer, index, len(hops), hop, deadline, timeout, limit)
            if hop.scheme == "https":
                await step.start_tls()
            await step.connect(targets[index - 1])
        if origin_ctx:
            await writer.start_tls(
                origin_ctx,
                server_side=False,
                server_hostname=origin_name or None,
                initial_bytes=writer.take_buffered(),
                handshake_timeout=ssl_handshake_timeout,
            )
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


class _Hop:
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
                proxy._context(),
                server_side=False,
                server_hostname=proxy._tls_name(),
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
        auth = self.proxy._authorization()
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
            if self.proxy._authorization() is None:
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
