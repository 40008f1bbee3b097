"""The public, read-only view of one layer (sans-IO).

Owns :class:`TLSLayer`.  Each layer makes its own view when it is built
(:class:`onion_tls._layer.Layer`); the view reads the layer through the
small :class:`ViewedLayer` interface, so it needs nothing above
:mod:`._engine`.  Imports: :mod:`._engine` (types only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import enum

    from cryptography import x509

    from ._engine import Engine

__all__ = ["TLSLayer", "ViewedLayer"]


class ViewedLayer(Protocol):
    """What a view reads of its layer."""

    @property
    def depth(self) -> int: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def state(self) -> enum.Enum: ...

    @property
    def requested_server_name(self) -> str | None: ...


class TLSLayer:
    """One TLS session of an onion connection, as the application sees it.

    Instances come from :meth:`OnionTransport.start_tls` (the future's
    result), :meth:`OnionTransport.stop_tls` and
    :attr:`OnionTransport.layers`; they are not built by users.  The view
    stays readable after the layer is popped.

    Every property answers the same way whichever engine runs the layer
    (``ssl.SSLContext`` -> ``"stdlib"``, ``OpenSSL.SSL.Context`` ->
    ``"pyopenssl"``).  Where the engines differ:

    * Name checking: a stdlib client layer checks ``server_hostname`` when
      its context says ``check_hostname``; a pyOpenSSL client layer given a
      ``server_hostname`` always checks the chain and the name (or IP
      address), whatever the context's verify mode.
    * ``session`` resumes only within one engine; a stdlib session only with
      the same ``SSLContext`` that made it.
    * pyOpenSSL layers install their own verify callback (when given a
      ``server_hostname``) and info callback on their connection, replacing
      for that connection those set on the context.
    * ``SSLKEYLOGFILE``: stdlib layers set the context's
      ``keylog_filename`` (unless it has one); pyOpenSSL layers install a
      key-log callback on the context, which pyOpenSSL allows only before
      the context's first connection.
    """

    __slots__ = ("_layer",)

    def __init__(self, layer: ViewedLayer) -> None:
        self._layer = layer

    def __repr__(self) -> str:
        return (
            f"<TLSLayer depth={self.depth} {'server' if self.server_side else 'client'} "
            f"{self.engine} {self.version or 'handshaking'} {self._layer.state.value}>"
        )

    @property
    def depth(self) -> int:
        """1 for the outermost layer, 2 for the one inside it, ..."""
        return self._layer.depth

    @property
    def server_side(self) -> bool:
        """True when this side is the TLS server of this layer."""
        return self._layer.engine.server_side

    @property
    def server_hostname(self) -> str | None:
        """On a client layer, the name given to ``start_tls`` (sent as SNI
        unless it is an IP address, and checked against the certificate).
        On a server layer, the host name the client sent as SNI (read from
        its ClientHello, as sent: an IDN in its ``xn--`` form), or None."""
        layer = self._layer
        if layer.engine.server_side:
            return layer.requested_server_name
        return layer.engine.server_hostname

    @property
    def engine(self) -> str:
        """``"pyopenssl"`` or ``"stdlib"``."""
        return self._layer.engine.engine_name

    @property
    def state(self) -> str:
        """The layer's lifecycle state, in words (``"open"``, ...)."""
        return str(self._layer.state.value)

    @property
    def version(self) -> str | None:
        """The TLS version once the handshake is done, e.g. ``"TLSv1.3"``."""
        return self._layer.engine.version()

    @property
    def cipher(self) -> str | None:
        """The cipher suite's name once the handshake is done."""
        c = self._layer.engine.cipher()
        return None if c is None else c[0]

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol both sides agreed on, if any."""
        return self._layer.engine.alpn_protocol()

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's certificate (the same type for both engines)."""
        return self._layer.engine.peer_certificate()

    @property
    def session(self) -> object | None:
        """Pass to ``start_tls(session=...)`` on a later client layer (same
        engine; for stdlib, same context) to resume this session.

        None on a server layer, before the handshake is done, and - in TLS
        1.3 - until the server's ticket has arrived: tickets come after the
        handshake, so take the session once some data has come back from
        the server."""
        return self._layer.engine.session()

    @property
    def session_reused(self) -> bool:
        """True when this layer's handshake resumed an earlier session
        (both ends of the layer agree)."""
        return self._layer.engine.session_reused()

    @property
    def ssl_object(self) -> Any:
        """The engine's own object (``OpenSSL.SSL.Connection`` or
        ``ssl.SSLObject``), for what this view lacks."""
        return self._layer.engine.ssl_object
