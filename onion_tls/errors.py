"""The error hierarchy.

Every error the library raises or hands to ``connection_lost`` is an
:class:`OnionError`.  Each one carries ``depth``: the depth of the TLS layer at
fault (1 = outermost), or ``None`` when no single layer is at fault.  The
message always names the depth, so a log line alone tells which session of a
nested stack went wrong.

Misuse by the local application (calling ``stop_tls`` with no layer,
``start_tls`` on a closing connection) raises :class:`LayerStateError`;
faults of the peer or the network are :class:`HandshakeError`,
:class:`TLSProtocolError`, :class:`TruncatedError` and
:class:`TLSTimeoutError`.  Writes after ``close()`` raise nothing: as with
asyncio's transports they are dropped (and logged after a few).

Once a layer is up, the application sees no other exception class: a socket
reset under a layer is a :class:`TruncatedError` naming the layer, with the
``OSError`` as its ``__cause__`` (in plaintext, the ``OSError`` is passed
on as asyncio gives it).

Imports nothing from the package (the bottom floor, with :mod:`._log`,
:mod:`._buffers` and :mod:`._openssl_ffi`).
"""

from __future__ import annotations

__all__ = [
    "HandshakeError",
    "HandshakeTimeoutError",
    "LayerStateError",
    "OnionError",
    "TLSProtocolError",
    "TLSTimeoutError",
    "TruncatedError",
]


class OnionError(Exception):
    """Base class of every onion_tls error.

    Attributes:
        depth: the depth of the failing layer (1 = outermost), or ``None``.
        reason: the reason in words, without the depth prefix.
    """

    def __init__(self, reason: str, *, depth: int | None = None) -> None:
        self.depth = depth
        self.reason = reason
        where = f"TLS layer {depth} (depth {depth})" if depth is not None else "onion connection"
        super().__init__(f"{where}: {reason}")


class HandshakeError(OnionError):
    """A layer's handshake failed (bad certificate, hostname mismatch, no
    common protocol version, the peer went away, timeout, ...)."""


class LayerStateError(OnionError):
    """The local application asked for something the layer stack cannot do
    in its current state (``stop_tls`` with no layer, ``start_tls`` on a
    closing connection or while a stop is pending)."""


class TLSProtocolError(OnionError):
    """An established layer received bytes that are not valid TLS for it
    (garbage, a bad record MAC, an unexpected message)."""


class TruncatedError(OnionError):
    """The connection ended inside a TLS layer without that layer's
    close_notify (a TCP EOF, or a reset: then ``__cause__`` is the
    ``OSError``): the data may have been cut short by an attacker or a
    crash.  A clean close is close_notify first, then EOF.  The streams
    raise it where the EOF would have been, after the data received and
    verified before it."""


class TLSTimeoutError(OnionError, TimeoutError):
    """A handshake or a shutdown did not finish within its timeout."""


class HandshakeTimeoutError(HandshakeError, TLSTimeoutError):
    """A handshake did not finish within ``handshake_timeout``: both a
    :class:`HandshakeError` and a :class:`TLSTimeoutError` (and so a
    ``TimeoutError``)."""
