"""One hop of a chain, as data: :class:`Proxy` (built from a URL, checked,
with its credentials, TLS context and name), the ``host:port`` authority a
CONNECT names, and the errors every hop failure raises
(:class:`ProxyError` and its kinds).  Names without an underscore are the
package's internal API.

Imports: :mod:`onion_tls.errors`.
"""

from __future__ import annotations

import base64
import ssl as _ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ..errors import HandshakeError, OnionError

DEFAULT_PORTS = {"http": 80, "https": 443}


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
        if self.scheme not in DEFAULT_PORTS:
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
        if scheme not in DEFAULT_PORTS:
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
            port if port is not None else DEFAULT_PORTS[scheme],
            username=user,
            password=password,
            ssl=ssl,
            server_hostname=server_hostname,
            timeout=timeout,
        )

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port``), as written in a CONNECT request."""
        return authority(self.host, self.port)

    @property
    def url(self) -> str:
        """The URL without credentials, for messages."""
        return f"{self.scheme}://{self.address}"

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (Basic), or None without
        credentials."""
        if self.username is None and self.password is None:
            return None
        # RFC 7617: user-id ":" password, in UTF-8, base64.
        creds = f"{self.username or ''}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(creds).decode("ascii")

    def tls_context(self) -> Any:
        """The context of the TLS layer with an ``https`` proxy."""
        if self.ssl is None or self.ssl is True:
            return _ssl.create_default_context()
        return self.ssl

    def tls_name(self) -> str | None:
        """The SNI and checked name of that layer (None: neither)."""
        name = self.host if self.server_hostname is None else self.server_hostname
        return name or None


def _check_host(host: str) -> None:
    # The host goes into a request line: no room for a second header.
    if not host or any(c.isspace() or ord(c) < 32 or c in "/@?#" for c in host):
        raise ValueError(f"not a host name or address: {host!r}")


def authority(host: str, port: int) -> str:
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
