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

Which file: ``_model.py`` the :class:`Proxy` (one hop, from a URL) and
the errors; ``_connect.py`` one hop's work on the connection (TLS with the
proxy, the CONNECT exchange); this file re-exports them and holds the chain
opener, :func:`open_connection`.

Imports: its own submodules; :mod:`onion_tls._log`, :mod:`onion_tls.streams`.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Sequence
from typing import Any

from .._log import logger
from ..streams import StreamWriter
from ..streams import open_connection as _open_connection
from ._connect import MAX_REPLY_HEAD, Hop
from ._model import (
    Proxy,
    ProxyAuthenticationError,
    ProxyError,
    ProxyHandshakeError,
    ProxyTimeoutError,
    authority,
)

__all__ = [
    "MAX_REPLY_HEAD",
    "Proxy",
    "ProxyAuthenticationError",
    "ProxyError",
    "ProxyHandshakeError",
    "ProxyTimeoutError",
    "open_connection",
]

_DEFAULT_LIMIT = 2**16


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
    targets = [h.address for h in hops[1:]] + [authority(host, port)]
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
            step = Hop(reader, writer, index, len(hops), hop, deadline, timeout, limit)
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


# Documented (and shown in reprs) under the public path, as before the split.
for _obj in (
    Proxy,
    ProxyAuthenticationError,
    ProxyError,
    ProxyHandshakeError,
    ProxyTimeoutError,
):
    _obj.__module__ = __name__
del _obj
