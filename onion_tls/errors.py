"""The error hierarchy.

Every error the library raises or hands to ``connection_lost`` is an
:class:`OnionError`.  Each one carries ``depth``: the depth of the TLS layer at
fault (1 = outermost), or ``None`` when no single layer is at fault.  The
message always names the depth, so a log line alone tells which session of a
nested stack went wrong.

Misuse by the local application (calling ``stop_tls`` with no layer, writing
after ``close``) raises :class:`LayerStateError`; faults of the peer or the
network are :class:`HandshakeError`, :class:`TLSProtocolError`,
:class:`TruncatedError` and :class:`TLSTimeoutError`.
"""

from __future__ import annotations

__all__ = [
    "HandshakeError",
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
    closing connection, writing after ``close()``)."""


class TLSProtocolError(OnionError):
    """An established layer received bytes that are not valid TLS for it
    (garbage, a bad record MAC, an unexpected message)."""


class TruncatedError(OnionError):
    """The connection ended inside a TLS layer without that layer's
    close_notify: the data may have been cut short by an attacker or a
    crash.  A clean close is close_notify first, then EOF."""


class TLSTimeoutError(OnionError, TimeoutError):
    """A handshake or a shutdown did not finish within its timeout."""
