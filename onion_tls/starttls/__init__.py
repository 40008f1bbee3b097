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

Which file: ``_common.py`` the errors and the conversation every helper
shares (line reading, deadline, the injection checks); one module per
protocol: ``_smtp.py``, ``_imap.py``, ``_pop3.py``, ``_ftp.py``,
``_postgres.py``.  This file re-exports them and holds :func:`starttls`.

Imports: its own submodules; :mod:`onion_tls._view`, :mod:`onion_tls.streams`
(types only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from ._common import StartTLSError, StartTLSInjectionError, StartTLSRefusedError
from ._ftp import ftp_auth_tls, ftp_ccc, ftp_serve_auth_tls, ftp_serve_ccc
from ._imap import imap_serve_starttls, imap_starttls
from ._pop3 import pop3_serve_stls, pop3_stls
from ._postgres import postgres_serve_ssl_request, postgres_ssl_request
from ._smtp import smtp_serve_starttls, smtp_starttls

if TYPE_CHECKING:
    from .._view import TLSLayer
    from ..streams import StreamWriter

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


# Documented (and shown in reprs) under the public path, as before the split.
for _obj in (
    StartTLSError,
    StartTLSInjectionError,
    StartTLSRefusedError,
    ftp_auth_tls,
    ftp_ccc,
    ftp_serve_auth_tls,
    ftp_serve_ccc,
    imap_serve_starttls,
    imap_starttls,
    pop3_serve_stls,
    pop3_stls,
    postgres_serve_ssl_request,
    postgres_ssl_request,
    smtp_serve_starttls,
    smtp_starttls,
):
    _obj.__module__ = __name__
del _obj
