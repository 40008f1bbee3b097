"""The server name a client asked for, read from its ClientHello (sans-IO).

``ssl.SSLObject`` shows the name only to the context's ``sni_callback``, and
OpenSSL forgets it on a TLS 1.2 resumption unless a servername callback
acknowledged it.  Rather than install callbacks on the user's context, a
server layer reads the name from the ClientHello itself, the same way for
both engines: the layer hands :class:`ClientHelloSNI` each whole record it
has framed (:mod:`onion_tls._records`) while its handshake runs, and the
reader gathers the handshake messages they carry until the ClientHello is
complete.  Imports nothing from the package.
"""

from __future__ import annotations

__all__ = ["ClientHelloSNI"]

# A ClientHello is well under this; more means the stream is not one.
_HELLO_LIMIT = 1 << 17
_HANDSHAKE = 22  # record content type
_CLIENT_HELLO = 1  # handshake message type


class ClientHelloSNI:
    """Reads the server_name extension (RFC 6066) out of the first
    ClientHello of a stream of TLS records, fed one whole record (header
    included) at a time; the ClientHello may span several records.

    ``name`` is the host name the client sent (its ASCII/A-label form), or
    None when there was none; ``done`` turns true once the answer is known
    (or the records turned out not to carry a ClientHello).
    """

    __slots__ = ("_hs", "done", "name")

    def __init__(self) -> None:
        self._hs = bytearray()
        self.done = False
        self.name: str | None = None

    def feed_record(self, record: bytes | bytearray | memoryview) -> None:
        """One whole record, as :class:`~onion_tls._records.RecordFramer`
        hands it out (the bytes are copied if kept)."""
        if self.done:
            return
        if len(record) < 5 or record[0] != _HANDSHAKE:  # no ClientHello here
            self._finish()
            return
        hs = self._hs
        hs += record[5:]
        if len(hs) >= 4:
            if hs[0] != _CLIENT_HELLO:
                self._finish()
                return
            length = int.from_bytes(hs[1:4], "big")
            if len(hs) >= 4 + length:
                self.name = _sni_from_hello(bytes(hs[4 : 4 + length]))
                self._finish()
                return
        if len(hs) > _HELLO_LIMIT:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._hs = bytearray()


def _sni_from_hello(body: bytes) -> str | None:
    """The host_name of a ClientHello body's server_name extension."""
    try:
        pos = 2 + 32  # legacy_version, random
        pos += 1 + body[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
        pos += 1 + body[pos]  # legacy_compression_methods
        end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(body)):
            ext_type = int.from_bytes(body[pos : pos + 2], "big")
            ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
            pos += 4
            if ext_type == 0:  # server_name
                ext = body[pos : pos + ext_len]
                list_end = 2 + int.from_bytes(ext[0:2], "big")
                i = 2
                while i + 3 <= min(list_end, len(ext)):
                    name_type = ext[i]
                    name_len = int.from_bytes(ext[i + 1 : i + 3], "big")
                    name = ext[i + 3 : i + 3 + name_len]
                    if name_type == 0 and len(name) == name_len:
                        return name.decode("ascii")
                    i += 3 + name_len
                return None
            pos += ext_len
    except (IndexError, UnicodeDecodeError):
        pass
    return None
