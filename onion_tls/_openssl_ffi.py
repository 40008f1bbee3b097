"""Every use of pyOpenSSL's private cffi binding, in one place (sans-IO).

pyOpenSSL's public API lacks a few things the pyOpenSSL engine wants; for
them this module calls OpenSSL through the binding pyOpenSSL itself uses
(``OpenSSL._util.ffi``/``lib``) on the ``SSL`` object and the two memory
BIOs of the engine's own ``Connection`` (its private ``_ssl``,
``_into_ssl``, ``_from_ssl``), and leaves errors to pyOpenSSL's own
mapping (``Connection._raise_ssl_error``).  Nothing here is needed for
correctness: each call says what it is for and what the engine does
without it, and when the binding is missing (another pyOpenSSL) the engine
uses the public API alone (:class:`onion_tls._pyopenssl.PyOpenSSLEngine`
instead of :class:`~onion_tls._pyopenssl.DirectPyOpenSSLEngine`).

Imports nothing from the package (pyOpenSSL only).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL

__all__ = [
    "DIRECT_API",
    "HOST_CHECK_API",
    "NAME_ERRORS",
    "Binding",
    "available",
    "ip_packed",
    "set_groups",
    "verify_result",
]

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - another pyOpenSSL
    _ffi = _lib = None

#: The OpenSSL functions :class:`Binding` calls are all there: the
#: pyOpenSSL engine takes the direct path.  (Tests set it False to run the
#: public path.)
DIRECT_API = _lib is not None and all(
    hasattr(_lib, name)
    for name in (
        "SSL_read",
        "SSL_write",
        "SSL_get_error",
        "SSL_clear_mode",
        "SSL_set_mode",
        "SSL_MODE_ENABLE_PARTIAL_WRITE",
        "SSL_MODE_RELEASE_BUFFERS",
        "SSL_ERROR_WANT_READ",
        "BIO_read",
        "BIO_write",
        "BIO_get_mem_data",
        "SSL_session_reused",
        "SSL_get_session",
        "SSL_get1_session",
        "SSL_SESSION_free",
        "SSL_set_bio",
        "BIO_new",
        "BIO_s_mem",
        "BIO_free",
    )
)
#: OpenSSL can check the server's name itself (:meth:`Binding.check_name`).
HOST_CHECK_API = DIRECT_API and all(
    hasattr(_lib, name)
    for name in (
        "SSL_get0_param",
        "X509_VERIFY_PARAM_set1_host",
        "X509_VERIFY_PARAM_set1_ip",
        "X509_VERIFY_PARAM_set_hostflags",
        "X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS",
        "X509_CHECK_FLAG_NEVER_CHECK_SUBJECT",
        "X509_V_ERR_HOSTNAME_MISMATCH",
        "X509_V_ERR_IP_ADDRESS_MISMATCH",
    )
)
#: X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH (OpenSSL's
#: numbers when the binding does not name them).
NAME_ERRORS: tuple[int, int] = (
    (_lib.X509_V_ERR_HOSTNAME_MISMATCH, _lib.X509_V_ERR_IP_ADDRESS_MISMATCH)
    if HOST_CHECK_API
    else (62, 64)
)
_CONNECTION_INTERNALS = ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error")
_internals_found: bool | None = None


def available() -> bool:
    """The direct path can be taken: the binding has what :class:`Binding`
    calls (:data:`DIRECT_API`) and pyOpenSSL's ``Connection`` has the
    internals it reaches (looked at once, on a throwaway connection)."""
    global _internals_found
    if not DIRECT_API:
        return False
    if _internals_found is None:
        probe = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        _internals_found = all(hasattr(probe, name) for name in _CONNECTION_INTERNALS)
    return _internals_found


def verify_result(conn: SSL.Connection) -> int:
    """``SSL_get_verify_result``: why the peer's certificate was refused,
    for the error message when the context's own verify callback refused
    it.  Public fallback: none (pyOpenSSL has no such call): 0, unknown,
    and the message says only "certificate verify failed"."""
    try:
        return int(_lib.SSL_get_verify_result(conn._ssl))
    except Exception:  # noqa: BLE001 - only ever costs the detail
        return 0


def set_groups(context: SSL.Context, groups: str) -> bool:
    """``SSL_CTX_set1_curves_list``: the key-exchange groups a context
    offers, e.g. ``"X25519"`` (for ``benchmarks/``: the OpenSSL that
    ``cryptography`` bundles prefers a hybrid post-quantum group that costs
    more per handshake than the ssl module's).  Public fallback: none
    (pyOpenSSL has no such call): False, the context is left as it is."""
    set_list = getattr(_lib, "SSL_CTX_set1_curves_list", None)
    native = getattr(context, "_context", None)
    if set_list is None or native is None:
        return False
    return bool(set_list(native, groups.encode()) == 1)


def ip_packed(host: str) -> bytes | None:
    """``host``'s packed address if it is an IP address literal, else None.
    (A name with a letter other than in an IPv6 literal is told apart
    without the parse, which raises twice for every DNS name.)"""
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return None


class Binding:
    """The private binding, bound to one ``Connection``.

    :meth:`bind` gives None when the binding or the connection's internals
    are missing; the engine then works through the public API.
    """

    __slots__ = ("_conn", "_rbio", "_ssl", "_wbio")

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn
        self._ssl: Any = conn._ssl
        self._rbio: Any = conn._into_ssl
        self._wbio: Any = conn._from_ssl

    @classmethod
    def bind(cls, conn: SSL.Connection) -> Binding | None:
        if not DIRECT_API or not all(hasattr(conn, name) for name in _CONNECTION_INTERNALS):
            return None
        return cls(conn)

    def set_modes(self) -> None:
        """One ``SSL_write`` takes a whole slice: a memory BIO never
        blocks, but pyOpenSSL's contexts allow partial writes (a record per
        call).  And, as the ssl module does, OpenSSL frees its record
        buffers while they are empty: an idle layer holds ~34 KiB less.
        Public fallback: ``Connection.send`` a record at a time, buffers
        kept."""
        _lib.SSL_clear_mode(self._ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        _lib.SSL_set_mode(self._ssl, _lib.SSL_MODE_RELEASE_BUFFERS)

    def check_name(self, host: str) -> bool:
        """Have OpenSSL check ``host`` (a DNS name or an IP address) against
        the peer's certificate during chain verification, with the ssl
        module's rules (``X509_VERIFY_PARAM``: subjectAltName only, no
        partial wildcards; an address against IP SANs), so a mismatch
        fails like a bad chain and the peer gets ``bad_certificate``.
        False if OpenSSL refused the name or cannot do it.  Public fallback:
        the engine's verify callback asks ``service_identity`` (the peer
        then gets ``internal_error``)."""
        if not HOST_CHECK_API:
            return False
        param = _lib.SSL_get0_param(self._ssl)
        packed = ip_packed(host)
        if packed is None:
            name = host.encode("idna")
            _lib.X509_VERIFY_PARAM_set_hostflags(
                param,
                _lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
                | _lib.X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
            )
            return bool(_lib.X509_VERIFY_PARAM_set1_host(param, name, len(name)) == 1)
        return bool(_lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) == 1)

    def bio_write(self, data: bytes | bytearray | memoryview) -> bool:
        """Feed the peer's bytes to the incoming BIO without the copy
        ``Connection.bio_write`` makes of a buffer that is not ``bytes``;
        False when OpenSSL could not take them all (out of memory).
        Public fallback: ``Connection.bio_write``."""
        size = len(data)
        return not size or _lib.BIO_write(self._rbio, _ffi.from_buffer(data), size) == size

    def read_into(self, buffer: memoryview) -> int:
        """``SSL_read`` straight into ``buffer``: 0 when more input is
        needed (no ``WantReadError`` raised per empty read); other failures
        raise pyOpenSSL's own ``SSL.Error`` (a negative count if it did not).  Public fallback:
        ``Connection.recv_into``, which reads into a fresh temporary buffer
        and copies."""
        ssl = self._ssl
        n: int = _lib.SSL_read(ssl, _ffi.from_buffer(buffer, require_writable=True), len(buffer))
        if n > 0:
            return n
        if _lib.SSL_get_error(ssl, n) == _lib.SSL_ERROR_WANT_READ:
            return 0
        self._conn._raise_ssl_error(ssl, n)
        return n if n < 0 else -1  # pragma: no cover - pyOpenSSL raised

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """``SSL_write`` of all of ``data`` (see :meth:`set_modes`); 0 while
        a TLS 1.2 renegotiation waits for the peer; other failures raise
        pyOpenSSL's own ``SSL.Error`` (a negative count if it did not).
        Public fallback: ``Connection.send``."""
        ssl = self._ssl
        n: int = _lib.SSL_write(ssl, _ffi.from_buffer(data), len(data))
        if n > 0:
            return n
        if _lib.SSL_get_error(ssl, n) == _lib.SSL_ERROR_WANT_READ:
            return 0
        self._conn._raise_ssl_error(ssl, n)
        return n if n < 0 else -1  # pragma: no cover - pyOpenSSL raised

    def take_output(self) -> bytes | bytearray:
        """Exactly what the outgoing BIO holds, copied once into a new
        buffer that is handed on and never reused.  Public fallback:
        ``Connection.bio_read`` in chunks (a zeroed temporary buffer and
        two copies per call)."""
        size = _lib.BIO_get_mem_data(self._wbio, _ffi.NULL)
        if size <= 0:
            return b""
        buf = bytearray(size)
        _lib.BIO_read(self._wbio, _ffi.from_buffer(buf), size)
        return buf

    def renew_bios(self) -> bool:
        """Replace both memory BIOs with new, empty ones when both are
        empty: a memory BIO keeps the largest size it ever held (a 256 KiB
        write leaves the outgoing one at ~330 KiB for the life of the
        layer), so an idle layer gives that back.  ``SSL_set_bio`` frees the
        old ones; the ``Connection``'s own references are updated, so its
        public ``bio_read``/``bio_write`` keep working.  False (nothing
        done) while a BIO holds bytes.  Public fallback: none (the BIOs are
        kept)."""
        null = _ffi.NULL
        if _lib.BIO_get_mem_data(self._rbio, null) or _lib.BIO_get_mem_data(self._wbio, null):
            return False
        rbio = _lib.BIO_new(_lib.BIO_s_mem())
        wbio = _lib.BIO_new(_lib.BIO_s_mem())
        if rbio == _ffi.NULL or wbio == _ffi.NULL:  # pragma: no cover - out of memory
            for bio in (rbio, wbio):
                if bio != _ffi.NULL:
                    _lib.BIO_free(bio)
            return False
        _lib.SSL_set_bio(self._ssl, rbio, wbio)
        self._conn._into_ssl = self._rbio = rbio
        self._conn._from_ssl = self._wbio = wbio
        return True

    def session_reused(self) -> bool:
        """``SSL_session_reused``.  Public fallback: the engine's info
        callback sees whether the handshake moved the server's certificate
        (a resumed handshake does not)."""
        return bool(_lib.SSL_session_reused(self._ssl))

    def hold_session(self) -> object | None:
        """A reference to the session the handshake made (``SSL_get1_session``,
        freed with the returned object), for :meth:`ticket_arrived`; holding
        it keeps its address from being reused meanwhile."""
        held = _lib.SSL_get1_session(self._ssl)
        if held == _ffi.NULL:
            return None
        return _ffi.gc(held, _lib.SSL_SESSION_free)  # type: ignore[no-any-return]

    def ticket_arrived(self, held: object) -> bool:
        """A TLS 1.3 ticket came after the handshake: OpenSSL makes a new
        session object per ticket, so the client's session is no longer the
        one :meth:`hold_session` took.  Public fallback: the engine's info
        callback counts "read server session ticket" steps."""
        return bool(_lib.SSL_get_session(self._ssl) != held)
