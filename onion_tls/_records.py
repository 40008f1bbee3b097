"""TLS record framing (sans-IO).

A layer must know exactly where the peer's close_notify record ends: every
byte after it belongs to the layer beneath.  pyOpenSSL offers no public way to
take unread bytes back out of a memory BIO, so a layer never gives its engine
more than whole records, one at a time, and keeps the rest itself.  When the
engine reports close_notify, what the layer still holds is exactly the
trailing data.

Framing only looks at the 5-byte record header (RFC 8446 section 5.1, RFC
5246 section 6.2): content type, legacy version, length.  Anything that
cannot be a record header is reported so the layer can hand the bytes to its
engine and let it fail with a proper alert.

Imports nothing from the package.
"""

from __future__ import annotations

__all__ = ["HEADER_SIZE", "MAX_RECORD_BODY", "PREVIEW_SIZE", "RecordFramer", "check_header"]

HEADER_SIZE = 5
# RFC 5246 allows TLSCiphertext bodies of 2**14 + 2048 bytes; TLS 1.3 less.
MAX_RECORD_BODY = 2**14 + 2048
# change_cipher_spec, alert, handshake, application_data, heartbeat
_CONTENT_TYPES = frozenset((20, 21, 22, 23, 24))
_EMPTY = memoryview(b"")
#: How many first bytes of a stream that is not TLS an error shows.
PREVIEW_SIZE = 32
_HEX_SIZE = 16  # of which shown in hex, when they are not text
# Printable ASCII, tab, CR, LF: what a plain-text reply is made of.
_TEXT = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def check_header(header: bytes | bytearray | memoryview) -> str | None:
    """Return why ``header`` is not a TLS record header, or None.

    Only the first 5 bytes are judged.  The reason also shows the bytes
    given (up to :data:`PREVIEW_SIZE` of them; pass more than 5 for a
    clearer message): as text when they look like plain text (a ``500
    Syntax error`` where the server's TLS was expected: the peer refused an
    upgrade, or never spoke TLS), in hex otherwise.
    """
    if header[0] not in _CONTENT_TYPES:
        return f"not a TLS record (content type {header[0]})" + _preview(header)
    if header[1] != 3:
        return f"not a TLS record (version byte {header[1]:#04x})" + _preview(header)
    length = (header[3] << 8) | header[4]
    if length > MAX_RECORD_BODY:
        return f"TLS record too long ({length} bytes, at most {MAX_RECORD_BODY})"
    return None


def _preview(data: bytes | bytearray | memoryview) -> str:
    """The first bytes of a stream that is not TLS, for an error message."""
    first = bytes(data[:PREVIEW_SIZE])
    if all(b in _TEXT for b in first[:HEADER_SIZE]):
        # A TLS header starts with a byte from 20 to 24, never printable:
        # this is a plain-text reply.  Show the text up to the first byte
        # that is not.
        end = next((i for i, b in enumerate(first) if b not in _TEXT), len(first))
        more = "..." if len(data) > end or end == PREVIEW_SIZE else ""
        return (
            f" but plain text: {first[:end]!r}{more} "
            "(did the peer refuse the upgrade, or not speak TLS here?)"
        )
    first = first[:_HEX_SIZE]
    more = "..." if len(data) > len(first) or len(first) == _HEX_SIZE else ""
    return f", first bytes: {first.hex(' ')}{more}"


class RecordFramer:
    """Cuts a byte stream into whole TLS records.

    ``feed()`` takes any chunk; ``next_record()`` returns the next whole record
    (header included) or ``None``.  Records that arrive whole in one chunk are
    returned as memoryview slices of that chunk, without copying; only a record split
    across chunks is assembled in a buffer.  ``take_rest()`` hands back every
    byte not yet returned, in order.  The framer refers to the last chunk fed
    until ``detach()`` (or the next ``feed()``), so a caller that reuses the
    chunk's memory detaches first.
    """

    __slots__ = ("_chunk", "_partial", "_pos", "error")

    def __init__(self) -> None:
        self._chunk: memoryview = _EMPTY
        self._pos = 0
        self._partial = bytearray()
        #: Set when the stream holds something that is not a record header.
        self.error: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos < len(self._chunk):
            # Unconsumed bytes of an earlier chunk: keep them in order.
            self._partial += self._chunk[self._pos :]
        self._chunk = memoryview(data)
        self._pos = 0

    def buffered(self) -> int:
        return len(self._partial) + len(self._chunk) - self._pos

    def next_record(self) -> bytes | memoryview | None:
        if self.error is not None:
            return None
        if self._partial:
            return self._complete_partial()
        chunk, pos = self._chunk, self._pos
        if len(chunk) - pos < HEADER_SIZE:
            if pos < len(chunk):
                self._partial += chunk[pos:]
                self._chunk, self._pos = _EMPTY, 0
            return None
        length = (chunk[pos + 3] << 8) | chunk[pos + 4]
        if not (20 <= chunk[pos] <= 24 and chunk[pos + 1] == 3 and length <= MAX_RECORD_BODY):
            # (the test check_header() makes, inline: this runs per record)
            self.error = check_header(chunk[pos : pos + PREVIEW_SIZE])
            return None
        end = pos + HEADER_SIZE + length
        if end > len(chunk):
            self._partial += chunk[pos:]
            self._chunk, self._pos = _EMPTY, 0
            return None
        self._pos = end
        return chunk[pos:end]

    def _complete_partial(self) -> bytes | memoryview | None:
        """Top up the split record in ``_partial`` with just the bytes it
        lacks, so a large chunk behind it is still sliced without copying."""
        buf = self._partial
        if len(buf) < HEADER_SIZE:
            self._top_up(HEADER_SIZE - len(buf))
            if len(buf) < HEADER_SIZE:
                return None
        why = check_header(buf[:HEADER_SIZE])
        if why is not None:
            # Show what is here: the split header and the chunk behind it.
            seen = bytes(buf[:PREVIEW_SIZE]) + self._chunk[self._pos : self._pos + PREVIEW_SIZE]
            self.error = check_header(seen)
            return None
        end = HEADER_SIZE + ((buf[3] << 8) | buf[4])
        if len(buf) < end:
            self._top_up(end - len(buf))
            if len(buf) < end:
                return None
        if len(buf) == end:
            record = bytes(buf)
            buf.clear()
        else:
            # More than one record waits here (the chunk was detached with
            # whole records left in it): hand out the first only.
            record = bytes(buf[:end])
            del buf[:end]
        return record

    def _top_up(self, want: int) -> None:
        chunk, pos = self._chunk, self._pos
        take = min(want, len(chunk) - pos)
        if take > 0:
            self._partial += chunk[pos : pos + take]
            self._pos = pos + take

    def detach(self) -> None:
        """Stop referring to the chunk last fed: copy what is left of it.
        Called before that chunk's memory is reused (scratch buffers)."""
        chunk, pos = self._chunk, self._pos
        if pos < len(chunk):
            self._partial += chunk[pos:]
        self._chunk, self._pos = _EMPTY, 0

    def take_rest(self) -> bytes:
        """Return and forget every byte not yet handed out as a record."""
        rest = bytes(self._partial) + self._chunk[self._pos :]
        self._partial.clear()
        self._chunk = _EMPTY
        self._pos = 0
        return rest
