"""The stdlib engine: ``ssl.SSLContext.wrap_bio`` over two ``ssl.MemoryBIO``
(sans-IO).

Verification is the context's own: a client context with ``check_hostname``
(as ``ssl.create_default_context()`` and ``ssl.PROTOCOL_TLS_CLIENT`` give)
checks ``server_hostname`` - a name, or an IP address - during the
handshake; a context without it does not.

Resumption: ``ssl`` only resumes a session made by the same
``SSLContext``, and TLS 1.3 sessions become resumable when the server's
ticket arrives, after the handshake.

``SSLKEYLOGFILE``: when the variable is set and the context has no
``keylog_filename`` of its own, the engine sets ``context.keylog_filename``
(what ``ssl.create_default_context()`` does at creation); from then on every
connection made with that context logs its secrets there.

The views' answers keep the stdlib's own values: ``peercert`` is exactly
``getpeercert()`` (``{}`` for a peer that was not verified), ``cipher`` is
``cipher()``, as asyncio's TLS transport gives them.

Imports: :mod:`._engine` (the interface it implements), :mod:`._log`,
:mod:`._verify`.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, cast

from . import _log
from ._engine import WRITE_SLICE_KEPT, EngineError, PeerClosed
from ._log import keylog_path, logger
from ._verify import NAME_MISMATCH_CODES, verify_error_text

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["StdlibEngine"]


def _ssl_error_text(exc: ssl.SSLError) -> tuple[str, bool]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        msg = verify_error_text(code) if code else (exc.verify_message or "unknown reason")
        if code in NAME_MISMATCH_CODES and exc.verify_message:
            # e.g. "Hostname mismatch, certificate is not valid for 'x'."
            detail = exc.verify_message.partition(", ")[2].rstrip(".")
            if detail:
                msg = f"{msg}: {detail}"
        return f"certificate verify failed: {msg}", False
    reason = exc.reason or ""
    if reason:
        words = reason.lower().replace("_", " ")
        return words, "alert" in words
    return str(exc), False


class StdlibEngine:
    engine_name = "stdlib"
    # ssl.MemoryBIO cannot be renewed: keep the outgoing one small.
    write_slice = WRITE_SLICE_KEPT

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        session: object | None,
        depth: int,
    ) -> None:
        self._context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.depth = depth
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if session is not None and not isinstance(session, ssl.SSLSession):
            raise TypeError(
                f"a stdlib layer resumes an ssl.SSLSession, not {type(session).__name__}"
            )
        path = keylog_path()
        if path is not None and context.keylog_filename is None:
            context.keylog_filename = path
        try:
            self._obj = context.wrap_bio(
                self._in,
                self._out,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        except ValueError as exc:
            if session is None:
                raise
            raise ValueError(
                f"{exc} A stdlib layer resumes only a session made with the same SSLContext."
            ) from None
        if not server_side and not server_hostname and context.check_hostname:
            # ssl.SSLObject would handshake without checking any name
            # (SSLSocket and asyncio refuse this): never verify less than
            # the context asks for.
            raise ValueError("check_hostname requires server_hostname")

    def _error(self, exc: ssl.SSLError) -> EngineError:
        text, alert = _ssl_error_text(exc)
        if alert:
            logger.debug("layer %d: alert received: %s", self.depth, text)
        return EngineError(text, alert_received=alert)

    # -- the engine interface -------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._in.write(data)

    def do_handshake(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLZeroReturnError:
            raise EngineError("the peer closed the session during the handshake") from None
        except ssl.SSLError as exc:
            raise self._error(exc) from None
        return True

    def read(self, max_bytes: int) -> bytes:
        try:
            data = self._obj.read(max_bytes)
        except ssl.SSLWantReadError:
            return b""
        except ssl.SSLZeroReturnError:
            data = b""
        except ssl.SSLError as exc:
            raise self._error(exc) from None
        if not data:
            # SSLObject.read() reports the peer's close_notify as b"".
            logger.debug("layer %d: alert received: warning close_notify", self.depth)
            raise PeerClosed
        if _log.switch.on:
            _log.payload(self.depth, "decrypted", data)
        return data

    def read_into(self, buffer: memoryview) -> int:
        try:
            # With a buffer, read() returns a count (typeshed says bytes).
            n = cast(int, self._obj.read(len(buffer), buffer))
        except ssl.SSLWantReadError:
            return 0
        except ssl.SSLZeroReturnError:
            n = 0
        except ssl.SSLError as exc:
            raise self._error(exc) from None
        if not n:
            # SSLObject.read() reports the peer's close_notify as 0 bytes.
            logger.debug("layer %d: alert received: warning close_notify", self.depth)
            raise PeerClosed
        if _log.switch.on:
            _log.payload(self.depth, "decrypted", buffer[:n])
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self._obj.write(data)
        except ssl.SSLWantReadError:
            return 0
        except ssl.SSLError as exc:
            raise self._error(exc) from None
        if _log.switch.on:
            _log.payload(self.depth, "encrypted", data[:n])
        return n

    def shutdown(self) -> bool:
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is queued; the peer's has not come yet
        except ssl.SSLError as exc:
            if exc.reason == "SHUTDOWN_WHILE_IN_INIT":
                return False  # a renegotiation runs: after it
            raise self._error(exc) from None
        logger.debug("layer %d: alert sent: warning close_notify", self.depth)
        return True

    def trim(self) -> bool:
        # An SSLObject keeps its MemoryBIOs for life (each as large as the
        # most it ever held); OpenSSL already frees its record buffers
        # while they are empty (the ssl module sets SSL_MODE_RELEASE_BUFFERS).
        return False

    def take_output(self) -> bytes:
        return self._out.read() if self._out.pending else b""

    # -- what the layer view reports ------------------------------------------

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    def compression(self) -> str | None:
        return self._obj.compression()

    def alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def peer_certificate(self) -> x509.Certificate | None:
        der = self._obj.getpeercert(binary_form=True)
        if not der:
            return None
        from cryptography import x509 as _x509

        return _x509.load_der_x509_certificate(der)

    def peercert(self) -> dict[str, Any] | None:
        return self._obj.getpeercert()

    def session(self) -> object | None:
        if self.server_side or self.version() is None:
            return None
        session = self._obj.session
        if session is not None and self.version() == "TLSv1.3" and not session.has_ticket:
            return None  # no ticket yet: nothing to resume with
        return session

    def session_reused(self) -> bool:
        return bool(self._obj.session_reused)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    @property
    def context(self) -> ssl.SSLContext:
        return self._context
