"""The interface every TLS engine offers to a layer (sans-IO).

An engine is one TLS session over two memory buffers: ciphertext is fed in
with ``feed``, produced ciphertext is taken with ``take_output``.  Two
implementations exist: :mod:`onion_tls._pyopenssl` (an ``OpenSSL.SSL.Context``)
and :mod:`onion_tls._stdlib` (an ``ssl.SSLContext``).  The layer never talks to
either library directly, so both behave the same on the wire and in errors.

Engines raise :class:`EngineError` with the reason in words; the layer adds
the depth.  A close_notify from the peer is not an error: ``read`` raises
:class:`PeerClosed`.

This module owns only that interface; it imports nothing from the package.
The factory is :mod:`onion_tls._engines`; what the engines share lives in
small modules of its own: :mod:`._verify` (verification errors in words),
:mod:`._peercert` (the ``getpeercert()`` dict for a pyOpenSSL layer).  The
server name a client asked for is read by the layer (:mod:`._sni`), not by
the engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cryptography import x509

#: :attr:`Engine.write_slice` of an engine that renews its BIOs when idle,
#: and of one that cannot (its outgoing BIO stays as large as one slice).
WRITE_SLICE = 256 * 1024
WRITE_SLICE_KEPT = 64 * 1024

__all__ = ["WRITE_SLICE", "WRITE_SLICE_KEPT", "Engine", "EngineError", "PeerClosed"]


class EngineError(Exception):
    """The TLS session failed; ``reason`` says why in words."""

    def __init__(self, reason: str, *, alert_received: bool = False) -> None:
        if "unsupported protocol" in reason and "version" not in reason:
            # OpenSSL's words for "no TLS version in common" (both engines)
            reason += " (no protocol version in common with the peer)"
        super().__init__(reason)
        self.reason = reason
        #: True when the peer sent the fatal alert (it refused us).
        self.alert_received = alert_received


class PeerClosed(Exception):
    """The peer's close_notify was read: the clean end of this session."""


class Engine(Protocol):
    """One TLS session over memory buffers."""

    engine_name: str
    server_side: bool
    server_hostname: str | None
    #: The depth of the layer this engine runs (for log lines), given at
    #: construction: :meth:`onion_tls._chain.Chain.next_depth`.
    depth: int
    #: The most plaintext the layer hands to :meth:`write` at once (it
    #: sends that slice's ciphertext on before the next one).  The
    #: outgoing memory BIO grows to about this much and keeps that size: an
    #: engine whose :meth:`trim` cannot renew its BIOs takes smaller slices.
    write_slice: int

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Give the engine ciphertext received from the peer."""

    def do_handshake(self) -> bool:
        """Advance the handshake; True once it is complete."""

    def read(self, max_bytes: int) -> bytes:
        """Decrypt up to ``max_bytes``; ``b""`` means more input is needed.
        Raises :class:`PeerClosed` on close_notify."""

    def read_into(self, buffer: memoryview) -> int:
        """Decrypt into ``buffer``; returns how many bytes, 0 when more input
        is needed.  Raises :class:`PeerClosed` on close_notify."""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt ``data``; returns how much was taken (0 only while a TLS
        1.2 renegotiation waits for the peer)."""

    def shutdown(self) -> bool:
        """Queue our close_notify; False when it cannot be sent yet because
        a handshake (a TLS 1.2 renegotiation) is under way: call again
        after the next read."""

    def trim(self) -> bool:
        """Give back memory kept from a burst of traffic while nothing is
        in flight (an idle connection); False when the engine cannot."""

    def take_output(self) -> bytes | bytearray:
        """Return (and forget) the ciphertext waiting to go to the peer (a
        new object: the caller may keep it)."""

    # What the layer view reports.
    def version(self) -> str | None: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def compression(self) -> str | None: ...
    def alpn_protocol(self) -> str | None: ...
    def peer_certificate(self) -> x509.Certificate | None: ...
    def peercert(self) -> dict[str, Any] | None: ...
    def session(self) -> object | None: ...
    def session_reused(self) -> bool: ...
    @property
    def ssl_object(self) -> object: ...
    @property
    def context(self) -> object: ...
