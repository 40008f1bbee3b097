"""The pyOpenSSL engine: ``OpenSSL.SSL.Connection(context, None)`` (sans-IO).

The connection owns two memory BIOs: ``bio_write`` feeds the peer's
ciphertext in, ``bio_read`` takes ours out.

Verification.  pyOpenSSL does not check the server's name, so a client layer
with ``server_hostname`` installs a verify callback on its own connection
(the caller's context is not touched) and has the name checked during the
handshake, so a mismatch fails the handshake before the client's Finished
and OpenSSL sends the peer an alert.  On the direct path (below) OpenSSL
checks the name itself, with the ssl module's rules (``X509_VERIFY_PARAM``:
subjectAltName only, no partial wildcards; an IP address against IP SANs)
and the peer gets ``bad_certificate``, as from the stdlib engine; without it
the callback asks ``service_identity`` and the peer gets ``internal_error``
(pyOpenSSL offers no public way to set the X509 error a callback reports).
The callback replaces, for this connection, a verify callback set on the
context, and verifies even if the context says ``VERIFY_NONE`` (there is no
``check_hostname`` to turn off).  Without ``server_hostname`` the context's
own settings apply.

Resumption.  pyOpenSSL has no public ``SSL_session_reused``.  On the
direct path the engine asks OpenSSL (``SSL_session_reused``), and tells that
a TLS 1.3 ticket arrived by the client's session being replaced (OpenSSL
makes a new session object per ticket; the handshake's session is held so
its address cannot be reused meanwhile).  Without it the connection's info
callback tells instead: a full handshake moves the server's certificate (the
client reads it, the server writes it), a resumed one does not; the same
callback sees tickets arrive.  The info callback also logs alerts both ways;
it costs a Python call per handshake step, so on the direct path it is
installed only while the ``onion_tls`` logger is enabled for DEBUG when the
layer starts.  It replaces, for this connection, an info callback set on the
context.

``SSLKEYLOGFILE``.  OpenSSL has key logging only per context, so when the
variable is set the engine installs its key-log callback on the context
(replacing one set there) at the context's first layer: pyOpenSSL forbids
changing a context after a connection was made from it, so a context already
used elsewhere first cannot get it (a warning says so).  The callback appends
to the file named by the variable at the time of each line, and stops
writing when the variable is unset.

The direct path.  pyOpenSSL's ``Connection`` has no public way to ask how
much a memory BIO holds, to decrypt into a caller's buffer without an extra
temporary buffer and copy, or to turn partial writes off; ``recv()`` and
``bio_read()`` allocate a fresh zeroed buffer per call and raise
``WantReadError`` each time the BIO runs dry.  :class:`PyOpenSSLEngine`
uses the public API only; :class:`DirectPyOpenSSLEngine`, a subclass, does
those few things through pyOpenSSL's private binding, every call of which
lives in :mod:`onion_tls._openssl_ffi` with its reason and its public
fallback.  It is for speed only: layer boundaries never depend on it (the
layer feeds one whole record at a time whatever the engine).
:func:`pyopenssl_engine` picks the direct one when the binding is there.

Imports: :mod:`._engine` (the interface it implements), :mod:`._log`,
:mod:`._openssl_ffi`, :mod:`._peercert`, :mod:`._verify`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL

from . import _log, _openssl_ffi
from ._engine import WRITE_SLICE, WRITE_SLICE_KEPT, EngineError, PeerClosed
from ._log import keylog_path, logger
from ._openssl_ffi import NAME_ERRORS, Binding, verify_result
from ._peercert import peercert_dict
from ._verify import verify_error_text

if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL import crypto

__all__ = ["DirectPyOpenSSLEngine", "PyOpenSSLEngine", "pyopenssl_engine", "ssl_error_text"]

# Taking ciphertext out of the BIO through the public API: one bio_read()
# call of this size almost always empties it (a 64 KiB write gives ~64.1 KiB
# of records).
_OUT_CHUNK = 256 * 1024
_keylog_lock = threading.Lock()

# Info-callback states that only a full handshake goes through (the server's
# Certificate message, plain or compressed - RFC 8879, OpenSSL >= 3.2).
_CLIENT_FULL = frozenset(
    {b"SSLv3/TLS read server certificate", b"TLSv1.3 read server compressed certificate"}
)
_SERVER_FULL = frozenset(
    {b"SSLv3/TLS write certificate", b"TLSv1.3 write server compressed certificate"}
)
_TICKET_READ = b"SSLv3/TLS read server session ticket"
_ALERT_READ = SSL.SSL_CB_READ_ALERT
_ALERT_WRITE = SSL.SSL_CB_WRITE_ALERT


#: What an OpenSSL error with an empty error queue is reported as: the
#: engine failed on the peer's bytes without saying why (pyOpenSSL's text
#: for it would be "[]").
NO_REASON = (
    "the TLS engine refused the peer's data without giving a reason "
    "(OpenSSL's error queue was empty; a corrupted or forged record?)"
)


def ssl_error_text(exc: SSL.Error) -> tuple[str, bool]:
    """(reason in words, whether it came from the peer's alert)."""
    reasons: list[str] = []
    args = exc.args[0] if exc.args else None
    for item in args if isinstance(args, list) else ():
        if isinstance(item, tuple) and len(item) == 3 and item[2]:
            reasons.append(str(item[2]))
    if not reasons:
        text = str(exc).strip()
        if not text or text == "[]" or isinstance(args, list):
            text = NO_REASON
        return text, False
    text = "; ".join(dict.fromkeys(reasons))
    return text, any("alert" in r for r in reasons)


def _is_ip(host: str) -> bool:
    return _openssl_ffi.ip_packed(host) is not None


class PyOpenSSLEngine:
    engine_name = "pyopenssl"
    # The public API cannot renew the Connection's BIOs: keep them small.
    write_slice = WRITE_SLICE_KEPT

    def __init__(
        self,
        context: SSL.Context,
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
        self._verify_failure: str | None = None
        #: OpenSSL checks the server's name itself (X509_VERIFY_PARAM, as
        #: the ssl module does), during chain verification; else our verify
        #: callback asks service_identity.
        self._name_in_openssl = False
        self._handshake_done = False
        self._full_handshake = False
        self._tickets = 0
        if keylog_path() is not None:
            _install_keylog(context)  # before the Connection: see _install_keylog
        conn = SSL.Connection(context, None)
        self._conn = conn
        self._bind(conn)
        # TLS 1.2 renegotiation, one policy for both engines (DESIGN rule 14):
        # a server layer refuses a client's (a denial-of-service lever;
        # OpenSSL answers with a no_renegotiation alert), a client layer
        # accepts a server's secure renegotiation, as OpenSSL and the ssl
        # module do by default (the new certificate is checked as the first).
        if server_side:
            conn.set_options(SSL.OP_NO_RENEGOTIATION)
        if self._watch_handshake():
            conn.set_info_callback(self._on_info)
        if server_side:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
            if server_hostname:
                if not _is_ip(server_hostname):
                    # RFC 6066: no SNI for an address literal.
                    conn.set_tlsext_host_name(server_hostname.encode("idna"))
                mode = context.get_verify_mode() | SSL.VERIFY_PEER
                conn.set_verify(mode, self._verify)
                self._name_in_openssl = self._name_check(server_hostname)
            if session is not None:
                if not isinstance(session, SSL.Session):
                    raise TypeError(
                        "a pyOpenSSL layer resumes an OpenSSL.SSL.Session (the "
                        f"session of an earlier pyOpenSSL layer), not {type(session).__name__}"
                    )
                conn.set_session(session)

    # -- what the direct path changes (see DirectPyOpenSSLEngine) ----------------

    def _bind(self, conn: SSL.Connection) -> None:
        """Right after the Connection is made."""

    def _watch_handshake(self) -> bool:
        """Install the info callback (resumption, tickets, alert logs)."""
        return True

    def _name_check(self, server_hostname: str) -> bool:
        """Have OpenSSL check the server's name (else the verify callback)."""
        return False

    def _recv_into(self, buffer: memoryview) -> int:
        return self._conn.recv_into(buffer)

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        return self._conn.send(data)

    # -- verification -------------------------------------------------------

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            if self._verify_failure is None:
                if errno in NAME_ERRORS and self.server_hostname:
                    what = "IP address" if errno == NAME_ERRORS[1] else "hostname"
                    self._verify_failure = (
                        f"{what} mismatch: certificate is not valid for {self.server_hostname!r}"
                    )
                else:
                    self._verify_failure = verify_error_text(errno)
            return False
        if depth == 0 and self.server_hostname and not self._name_in_openssl:
            from service_identity import CertificateError, VerificationError
            from service_identity.cryptography import (
                verify_certificate_hostname,
                verify_certificate_ip_address,
            )

            leaf = cert.to_cryptography()
            is_ip = _is_ip(self.server_hostname)
            try:
                if is_ip:
                    verify_certificate_ip_address(leaf, self.server_hostname)
                else:
                    verify_certificate_hostname(leaf, self.server_hostname)
            except (VerificationError, CertificateError, ValueError) as exc:
                what = "IP address" if is_ip else "hostname"
                detail = "" if isinstance(exc, VerificationError) else f" ({exc})"
                self._verify_failure = (
                    f"{what} mismatch: certificate is not valid for "
                    f"{self.server_hostname!r}{detail}"
                )
                return False
        return True

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_LOOP:
            state = conn.get_state_string()
            if state in (_SERVER_FULL if self.server_side else _CLIENT_FULL):
                self._full_handshake = True
            elif state == _TICKET_READ:
                self._tickets += 1
        elif where & SSL.SSL_CB_ALERT:
            if (where & _ALERT_READ) == _ALERT_READ:
                logger.debug("layer %d: alert received: %s", self.depth, _log.alert_text(ret))
            elif (where & _ALERT_WRITE) == _ALERT_WRITE:
                logger.debug("layer %d: alert sent: %s", self.depth, _log.alert_text(ret))

    def _error(self, exc: SSL.Error) -> EngineError:
        text, alert = ssl_error_text(exc)
        if self._verify_failure is not None:
            text = f"certificate verify failed: {self._verify_failure}"
            alert = False
        elif text == "certificate verify failed":
            # Checked by the context's own callback (a server verifying a
            # client certificate): OpenSSL's queue says only that it failed.
            code = verify_result(self._conn)
            if code:
                text = f"certificate verify failed: {verify_error_text(code)}"
        return EngineError(text, alert_received=alert)

    # -- the engine interface -------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._conn.bio_write(data)

    def do_handshake(self) -> bool:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.ZeroReturnError:
            raise EngineError("the peer closed the session during the handshake") from None
        except SSL.SysCallError as exc:
            raise EngineError(f"handshake failed ({exc})") from None
        except SSL.Error as exc:
            raise self._error(exc) from None
        self._handshake_done = True
        return True

    def read(self, max_bytes: int) -> bytes:
        try:
            data = self._conn.recv(max_bytes)
        except SSL.WantReadError:
            return b""
        except SSL.ZeroReturnError:
            raise PeerClosed from None
        except SSL.SysCallError as exc:
            raise EngineError(f"read failed ({exc})") from None
        except SSL.Error as exc:
            raise self._error(exc) from None
        if _log.switch.on:
            _log.payload(self.depth, "decrypted", data)
        return data

    def read_into(self, buffer: memoryview) -> int:
        try:
            n = self._recv_into(buffer)
        except SSL.Error as exc:
            return self._read_error(exc)
        if _log.switch.on:
            _log.payload(self.depth, "decrypted", buffer[:n])
        return n

    def _read_error(self, exc: SSL.Error) -> int:
        if isinstance(exc, SSL.WantReadError):
            return 0
        if isinstance(exc, SSL.ZeroReturnError):
            raise PeerClosed from None
        if isinstance(exc, SSL.SysCallError):
            raise EngineError(f"read failed ({exc})") from None
        raise self._error(exc) from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            if not data:
                return 0
            n = self._send(data)
        except SSL.WantReadError:
            return 0
        except SSL.Error as exc:
            raise self._error(exc) from None
        if _log.switch.on:
            _log.payload(self.depth, "encrypted", data[:n])
        return n

    def shutdown(self) -> bool:
        try:
            self._conn.shutdown()
        except SSL.Error as exc:
            err = self._error(exc)
            if err.reason == "shutdown while in init":
                return False  # a renegotiation runs: after it
            raise err from None
        return True

    def trim(self) -> bool:
        return False  # the public API cannot renew the Connection's BIOs

    def take_output(self) -> bytes | bytearray:
        out = b""
        while True:
            try:
                data = self._conn.bio_read(_OUT_CHUNK)
            except SSL.WantReadError:
                return out
            out = out + data if out else data
            if len(data) < _OUT_CHUNK:
                return out

    # -- what the layer view reports ------------------------------------------

    def version(self) -> str | None:
        if not self._handshake_done:
            return None  # OpenSSL names the version it offers while handshaking
        name = self._conn.get_protocol_version_name()
        return None if name in ("", "Unknown") else name

    def cipher(self) -> tuple[str, str, int] | None:
        name = self._conn.get_cipher_name()
        if name is None:
            return None
        return (name, self._conn.get_cipher_version() or "", self._conn.get_cipher_bits() or 0)

    def compression(self) -> str | None:
        return None  # not exposed by pyOpenSSL; OpenSSL turns TLS compression off by default

    def alpn_protocol(self) -> str | None:
        proto = self._conn.get_alpn_proto_negotiated()
        return proto.decode("ascii", "replace") if proto else None

    def peer_certificate(self) -> x509.Certificate | None:
        return self._conn.get_peer_certificate(as_cryptography=True)

    def peercert(self) -> dict[str, Any] | None:
        cert = self.peer_certificate()
        if cert is None:
            return None
        # As getpeercert(): an unverified certificate's fields are not shown.
        if not self._conn.get_verify_mode() & SSL.VERIFY_PEER:
            return {}
        return peercert_dict(cert)

    def session(self) -> object | None:
        if self.server_side or not self._handshake_done:
            return None
        if self.version() == "TLSv1.3" and not self._ticket_arrived():
            return None  # no ticket yet: nothing to resume with
        return self._conn.get_session()

    def session_reused(self) -> bool:
        return self._handshake_done and not self._full_handshake

    def _ticket_arrived(self) -> bool:
        return self._tickets > 0

    @property
    def ssl_object(self) -> SSL.Connection:
        return self._conn

    @property
    def context(self) -> SSL.Context:
        return self._context


class DirectPyOpenSSLEngine(PyOpenSSLEngine):
    """The pyOpenSSL engine on the direct path: the same engine, with the
    few calls pyOpenSSL's public API lacks made through its private binding
    (:mod:`onion_tls._openssl_ffi`: fewer copies and allocations, OpenSSL's
    own name check, ``SSL_session_reused``).  Errors still go through
    pyOpenSSL's own mapping, so both classes fail in the same words."""

    _ffi: Binding
    write_slice = WRITE_SLICE  # (trim() renews the BIOs)

    def _bind(self, conn: SSL.Connection) -> None:
        ffi = Binding.bind(conn)
        if ffi is None:  # pragma: no cover - pyopenssl_engine() checked
            raise RuntimeError("pyOpenSSL's private binding is not available")
        self._ffi = ffi
        #: The session the handshake made (client): a ticket replaces it.
        self._hs_session: object | None = None
        ffi.set_modes()

    def _watch_handshake(self) -> bool:
        # Resumption and tickets are asked of OpenSSL: the info callback
        # is only needed for the alert log lines.
        return logger.isEnabledFor(logging.DEBUG)

    def _name_check(self, server_hostname: str) -> bool:
        return self._ffi.check_name(server_hostname)

    def _recv_into(self, buffer: memoryview) -> int:
        n = self._ffi.read_into(buffer)
        if n < 0:  # pragma: no cover - pyOpenSSL raised for the error
            raise EngineError(f"read failed (SSL_read returned {n})")
        return n

    def read_into(self, buffer: memoryview) -> int:
        # The base class's, with _recv_into inlined (once per record).
        try:
            n = self._ffi.read_into(buffer)
        except SSL.Error as exc:
            return self._read_error(exc)
        if n < 0:  # pragma: no cover - pyOpenSSL raised for the error
            raise EngineError(f"read failed (SSL_read returned {n})")
        if _log.switch.on:
            _log.payload(self.depth, "decrypted", buffer[:n])
        return n

    def _send(self, data: bytes | bytearray | memoryview) -> int:
        n = self._ffi.write(data)
        if n < 0:  # pragma: no cover - pyOpenSSL raised for the error
            raise EngineError(f"write failed (SSL_write returned {n})")
        return n

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # The base class's, with _send inlined (once per record).
        if not data:
            return 0
        try:
            n = self._ffi.write(data)
        except SSL.Error as exc:
            raise self._error(exc) from None
        if n < 0:  # pragma: no cover - pyOpenSSL raised for the error
            raise EngineError(f"write failed (SSL_write returned {n})")
        if _log.switch.on:
            _log.payload(self.depth, "encrypted", data[:n])
        return n

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not self._ffi.bio_write(data):
            raise EngineError("out of memory for the incoming TLS data")

    def do_handshake(self) -> bool:
        done = super().do_handshake()
        if done and not self.server_side:
            self._hs_session = self._ffi.hold_session()
        return done

    def take_output(self) -> bytes | bytearray:
        return self._ffi.take_output()

    def trim(self) -> bool:
        self._ticket_arrived()  # (frees the handshake's session once replaced)
        return self._ffi.renew_bios()

    def session_reused(self) -> bool:
        return self._handshake_done and self._ffi.session_reused()

    def _ticket_arrived(self) -> bool:
        held = self._hs_session
        if held is not None and self._ffi.ticket_arrived(held):
            # A ticket's session replaced the handshake's: let that one go.
            self._hs_session = None
            self._tickets += 1
        return self._tickets > 0


def pyopenssl_engine(
    context: SSL.Context,
    *,
    server_side: bool,
    server_hostname: str | None,
    session: object | None,
    depth: int,
) -> PyOpenSSLEngine:
    """The pyOpenSSL engine: on the direct path when pyOpenSSL's private
    binding is there (:func:`onion_tls._openssl_ffi.available`)."""
    cls = DirectPyOpenSSLEngine if _openssl_ffi.available() else PyOpenSSLEngine
    return cls(
        context,
        server_side=server_side,
        server_hostname=server_hostname,
        session=session,
        depth=depth,
    )


# The contexts that carry our key-log callback.
_keylog_contexts: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def _install_keylog(context: SSL.Context) -> None:
    # pyOpenSSL (>= 25) refuses to change a context once a Connection was
    # made from it, so the callback goes in at the context's first layer.  A
    # context used for a connection before that cannot get it any more.
    if context in _keylog_contexts:
        return
    try:
        context.set_keylog_callback(_write_keylog)
    except ValueError as exc:
        logger.warning(
            "SSLKEYLOGFILE is set but this pyOpenSSL context cannot log keys (%s): "
            "give onion_tls a context not yet used for a connection, or set its "
            "keylog callback yourself",
            exc,
        )
        return
    _keylog_contexts.add(context)


def _write_keylog(conn: SSL.Connection, line: bytes) -> None:
    path = keylog_path()
    if path is None:
        return
    with _keylog_lock, open(path, "ab") as f:
        f.write(line + b"\n")
