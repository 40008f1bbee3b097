"""onion_tls: TLS inside TLS inside TLS, on one asyncio connection.

Wrap any asyncio protocol; push TLS layers under its transport with
``transport.start_tls()`` and pop them with ``transport.stop_tls()``.  Or use
the streams: ``open_connection``/``start_server`` give a writer with
``start_tls()``/``stop_tls()``.
"""

from ._log import set_payload_debug
from ._transport import OnionProtocol, OnionTransport, wrap
from ._view import TLSLayer
from .errors import (
    HandshakeError,
    LayerStateError,
    OnionError,
    TLSProtocolError,
    TLSTimeoutError,
    TruncatedError,
)
from .streams import StreamWriter, open_connection, start_server

__all__ = [
    "HandshakeError",
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
