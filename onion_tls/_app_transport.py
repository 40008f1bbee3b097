"""What the application talks to: :class:`OnionTransport` (asyncio).

The full ``asyncio.Transport`` API plus ``start_tls``/``stop_tls`` and the
``layers`` of the connection.  It stays the same object for the life of the
connection.  It reads the chain (:mod:`._chain`: layers, state, delivery
pause), hands small writes to the gatherer (:mod:`._gather`), and asks the
adapter for everything else through :class:`Connection` - the
package-internal methods of :class:`~onion_tls._transport.OnionProtocol`,
never its fields.

Imports: asyncio; :mod:`._ops` (``start_tls``'s arguments), :mod:`._chain`,
:mod:`._gather` and :mod:`._layer` (types), :mod:`._view` (the type),
:mod:`.errors`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from ._ops import StartArgs
from .errors import LayerStateError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._chain import Chain
    from ._gather import WriteGatherer
    from ._layer import Layer
    from ._view import TLSLayer

__all__ = ["Connection", "OnionTransport"]

# How long close() waits for the close_notify alerts (and what was written
# before them) to leave, by default, as asyncio's ssl_shutdown_timeout.
_SHUTDOWN_TIMEOUT = 30.0


class Connection(Protocol):
    """What :class:`OnionTransport` asks of the adapter (package-internal)."""

    @property
    def raw_transport(self) -> asyncio.Transport | None: ...

    @property
    def connection_gone(self) -> bool: ...

    @property
    def app_protocol(self) -> asyncio.BaseProtocol: ...

    def set_app_protocol(self, protocol: asyncio.BaseProtocol) -> None: ...

    def buffered_size(self) -> int: ...

    def sync_reading(self) -> None: ...

    def set_write_limits(self, high: int | None, low: int | None) -> None: ...

    def write_limits(self) -> tuple[int, int]: ...

    def app_write(self, data: bytes) -> None: ...

    def deliver_waiting(self) -> None: ...

    def push_layer(self, args: StartArgs) -> asyncio.Future[TLSLayer]: ...

    def pop_layer(self, timeout: float | None) -> asyncio.Future[TLSLayer]: ...

    def abort_connection(self) -> None: ...

    def close_connection(self) -> None: ...


class OnionTransport(asyncio.Transport):
    """The transport the application protocol is given.

    It stays the same object for the life of the connection, whatever layers
    are pushed and popped under it.
    """

    def __init__(self, protocol: Connection, chain: Chain, gather: WriteGatherer) -> None:
        super().__init__()
        self._p = protocol
        self._chain = chain
        self._gather = gather

    def __repr__(self) -> str:
        depth = len(self._chain.layers())
        return f"<OnionTransport depth={depth}{' closing' if self.is_closing() else ''}>"

    # -- layers -------------------------------------------------------------

    def start_tls(
        self,
        context: Any,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        initial_bytes: bytes | bytearray | memoryview = b"",
        session: object | None = None,
        handshake_timeout: float | None = 60.0,
        shutdown_timeout: float | None = _SHUTDOWN_TIMEOUT,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Future[TLSLayer]:
        """Push a new innermost TLS layer, now, and start its handshake.

        Args:
          context: an ``ssl.SSLContext`` or an ``OpenSSL.SSL.Context``; it
            chooses the engine of this layer.
          server_side: be the TLS server of this layer.
          server_hostname: (client) the name sent as SNI and checked against
            the server's certificate.
          initial_bytes: bytes already received that belong to this layer
            (a ClientHello pipelined after ``STARTTLS``).  Nothing else
            already received is ever fed to the new layer.
          session: an earlier layer's ``TLSLayer.session`` to resume.
          handshake_timeout: seconds, or None for no limit.
          shutdown_timeout: seconds :meth:`close` waits, while this layer
            is on, for the close_notify alerts (and what was written before
            them) to leave before it aborts the socket; or None for no limit.
            close() uses the smallest of its layers'.
          ssl_handshake_timeout, ssl_shutdown_timeout: asyncio's names for
            the two timeouts; None (their default) keeps the above.

        Returns:
          A future that resolves with the layer's :class:`TLSLayer` when its
          handshake is done, or fails with :class:`HandshakeError`.  Writes
          made meanwhile are sent inside the new layer once it is up.
          Cancelling the future does not stop the handshake.

        Raises:
          LayerStateError: the connection is closing, or a stop is pending.
        """
        return self._p.push_layer(
            StartArgs(
                context=context,
                server_side=server_side,
                server_hostname=server_hostname,
                initial_bytes=initial_bytes,
                session=session,
                handshake_timeout=handshake_timeout
                if ssl_handshake_timeout is None
                else ssl_handshake_timeout,
                shutdown_timeout=shutdown_timeout
                if ssl_shutdown_timeout is None
                else ssl_shutdown_timeout,
            )
        )

    def stop_tls(self, *, timeout: float | None = 30.0) -> asyncio.Future[TLSLayer]:
        """Send close_notify on the innermost layer, now, and pop it when the
        peer's close_notify arrives.

        Application data the peer sent before its close_notify is delivered;
        what follows it is delivered through the layer beneath.  Writes made
        meanwhile are sent through the layer beneath after the pop.

        Returns:
          A future resolving with the popped :class:`TLSLayer`; it fails with
          :class:`TLSTimeoutError` when the peer does not answer in time.
          Calling stop_tls() again while the pop is pending returns a new
          future for the same pop; cancelling one does not stop the pop.

        Raises:
          LayerStateError: there is no layer, or the connection is closing.
        """
        return self._p.pop_layer(timeout)

    @property
    def layers(self) -> tuple[TLSLayer, ...]:
        """The current layers, outermost first; ``()`` when plaintext."""
        return tuple(layer.view for layer in self._chain.layers())

    # -- asyncio.BaseTransport ----------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "layers":
            return self.layers
        if name in _LAYER_KEYS:
            layer = self._chain.innermost()
            if layer is not None:
                value = _LAYER_KEYS[name](layer)
                return default if value is None else value
        raw = self._p.raw_transport
        if raw is None:
            return default
        return raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._p.connection_gone or self._chain.finishing

    def close(self) -> None:
        """Flush held writes, send close_notify on every layer from the
        innermost out, then close the socket.

        Bounded in time: after the smallest ``shutdown_timeout`` of the
        layers (30 s by default) the socket is aborted and
        ``connection_lost`` gets a :class:`TLSTimeoutError`.  A handshake
        still running is abandoned at once (its future fails with
        :class:`HandshakeError`).  Writes after close() are dropped, as
        asyncio does (logged after a few).
        """
        self._p.close_connection()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._p.set_app_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._p.app_protocol

    # -- asyncio.ReadTransport -----------------------------------------------

    def is_reading(self) -> bool:
        return not self._chain.delivery_paused and not self.is_closing()

    def pause_reading(self) -> None:
        """Stop delivering data to the protocol (handshakes and shutdowns
        keep reading what they need, up to a bound)."""
        self._chain.pause_delivery()
        self._p.sync_reading()

    def resume_reading(self) -> None:
        self._chain.resume_delivery()
        self._p.sync_reading()

    def deliver_waiting(self) -> None:
        """Hand the protocol, now, the data that waits for it (decrypted
        while it was inside a call into this transport), unless reading is
        paused.  Not part of asyncio's API: :meth:`StreamWriter.take_buffered
        <onion_tls.StreamWriter.take_buffered>` uses it."""
        self._p.deliver_waiting()

    # -- asyncio.WriteTransport ----------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._p.set_write_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._p.write_limits()

    def get_write_buffer_size(self) -> int:
        return self._p.buffered_size()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is bytes and self._gather.try_append(data):
            return  # the common case of a small write in a busy turn: gathered
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self._p.app_write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._gather.flush()
        if self._chain.layers():
            raise LayerStateError(
                "TLS has no half-close: use stop_tls() to unwrap or close() to end"
            )
        raw = self._p.raw_transport
        if raw is not None:
            raw.write_eof()

    def can_write_eof(self) -> bool:
        raw = self._p.raw_transport
        return not self._chain.layers() and raw is not None and raw.can_write_eof()

    def abort(self) -> None:
        """Close at once: nothing more is sent, not even close_notify.  What
        was written before goes as far as the socket takes it at once (as
        with asyncio's transports: small writes gathered in this turn are
        handed to it first); the rest is dropped."""
        self._p.abort_connection()


def _cipher(layer: Layer) -> object:
    return layer.engine.cipher()


_LAYER_KEYS: dict[str, Callable[[Layer], object]] = {
    "ssl_object": lambda layer: layer.engine.ssl_object,
    "peercert": lambda layer: layer.engine.peercert(),
    "cipher": _cipher,
    "compression": lambda layer: layer.engine.compression(),
    "sslcontext": lambda layer: layer.engine.context,
    "ssl_version": lambda layer: layer.engine.version(),
    "tls_layer": lambda layer: layer.view,
}
