"""The stdlib engine: ``ssl.SSLContext.wrap_bio`` over two ``ssl.MemoryBIO``
(sans-IO).

Hostname checking is the context's own: a client context with
``check_hostname`` (as ``ssl.create_default_context()`` gives) checks
``server_hostname`` during the handshake.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from ._engine import EngineError, PeerClosed, keylog_path, peercert_dict

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["StdlibEngine"]


def _ssl_error_text(exc: ssl.SSLError) -> tuple[str, bool]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = exc.verify_message or "certificate verify failed"
        if exc.verify_code == 62:
            msg = f"hostname mismatch: {msg}"
        return f"certificate verify failed: {msg}", False
    reason = exc.reason or ""
    if reason:
        words = reason.lower().replace("_", " ")
        return words, "alert" in words
    return str(exc), False


class StdlibEngine:
    engine_name = "stdlib"

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None,
        session: object | None,
    ) -> None:
        self._context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if session is not None and not isinstance(session, ssl.SSLSession):
            raise TypeError(
                f"a stdlib layer resumes an ssl.SSLSession, not {type(session).__name__}"
            )
        path = keylog_path()
        if path is not None and context.keylog_filename is None:
            context.keylog_filename = path
        self._obj = context.wrap_bio(
            self._in,
            self._out,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )

    def _error(self, exc: ssl.SSLError) -> EngineError:
        text, alert = _ssl_error_text(exc)
        return EngineError(text, alert_received=alert)

    # -- the engine interface -------------------------------------------------

    def feed(self, data: bytes | memoryview) -> None:
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
            raise PeerClosed from None
        except ssl.SSLError as exc:
            raise self._error(exc) from None
        if not data:
            # SSLObject.read() reports the peer's close_notify as b"".
            raise PeerClosed
        return data

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self._obj.write(data)
        except ssl.SSLWantReadError:
            return 0
        except ssl.SSLError as exc:
            raise self._error(exc) from None

    def shutdown(self) -> None:
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is queued; the peer's has not come yet
        except ssl.SSLError as exc:
            raise self._error(exc) from None

    def take_output(self) -> bytes:
        return self._out.read() if self._out.pending else b""

    # -- what the layer view reports ------------------------------------------

    def requested_server_name(self) -> str | None:
        # ssl.SSLObject shows the client's SNI only to an sni_callback.
        return self.server_hostname

    def version(self) -> str | None:
        return self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    def alpn_protocol(self) -> str | None:
        return self._obj.selected_alpn_protocol()

    def peer_certificate(self) -> x509.Certificate | None:
        der = self._obj.getpeercert(binary_form=True)
        if not der:
            return None
        from cryptography import x509 as _x509

        return _x509.load_der_x509_certificate(der)

    def peercert(self) -> dict[str, Any] | None:
        info = self._obj.getpeercert()
        if info:
            return dict(info)
        # Unverified peers (CERT_NONE) give {} from the stdlib; build the
        # same dict the pyOpenSSL engine gives, so both engines answer alike.
        cert = self.peer_certificate()
        return None if cert is None else peercert_dict(cert)

    def session(self) -> object | None:
        return self._obj.session

    def session_reused(self) -> bool:
        return bool(self._obj.session_reused)

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._obj

    @property
    def context(self) -> ssl.SSLContext:
        return self._context
