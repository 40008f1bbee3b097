"""onion_tls: TLS inside TLS inside TLS, on one asyncio connection.

Wrap any asyncio protocol; push TLS layers under its transport with
``transport.start_tls()`` and pop them with ``transport.stop_tls()``.  Or use
the streams: ``open_connection``/``start_server`` give a writer with
``start_tls()``/``stop_tls()``.

Which file answers which question: :mod:`onion_tls._transport` (the asyncio
adapter) sits on :mod:`onion_tls._chain` (the layers and the connection's
lifecycle), which sits on :mod:`onion_tls._layer` (one TLS session) and the
engines; DESIGN.md's layout lists every module, and ``lint-imports``
(``nox -s lint``) keeps imports going only downward.
"""

from ._log import set_payload_debug
from ._transport import OnionProtocol, OnionTransport, wrap
from ._view import TLSLayer
from .errors import (
    HandshakeError,
    HandshakeTimeoutError,
    LayerStateError,
    OnionError,
    TLSProtocolError,
    TLSTimeoutError,
    TruncatedError,
)
from .streams import StreamWriter, open_connection, start_server

__all__ = [
    "HandshakeError",
    "HandshakeTimeoutError",
    "LayerStateError",
    "OnionError",
    "OnionProtocol",
    "OnionTransport",
    "StreamWriter",
    "TLSLayer",
    "TLSProtocolError",
    "TLSTimeoutError",
    "TruncatedError",
    "open_connection",
    "set_payload_debug",
    "start_server",
    "wrap",
]

__version__ = "0.1.0"
