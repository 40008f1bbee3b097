"""Hostile peers, at depth 1 and depth 2, against both engines.

The hostile side is an onion stack with the outer layers (1..k-1) set up
normally; what its application writes therefore lands, authenticated by
layer k-1, exactly where the victim's layer k reads.  For the cases that
need a real TLS session at depth k, the hostile application drives a
pyOpenSSL connection by hand (:class:`RawTLS`) and makes it do what a
correct stack never does.

Every case ends either in a clean error that names depth k (the victim's
start_tls future fails or connection_lost gets it, once, with the reason in
words, and the loop's exception handler sees nothing), or, where the input
is legal TLS, in a session that works.  What happens in each case, for
each engine, is stated by the assertions:

* garbage instead of a ClientHello (or a ServerHello), a record header
  claiming a huge length, a record longer than TLS allows, a valid record
  of the wrong content type at the wrong time: HandshakeError or
  TLSProtocolError at depth k, both engines.
* records split into 1-byte pieces (each byte of layer k's stream in its
  own layer k-1 record): works, nothing lost.
* application data after close_notify: never decrypted or delivered as
  layer-k data; the bytes are held, and belong to the layer beneath if the
  application unwraps (the contract: bytes after close_notify are the layer
  beneath's).
* TLS 1.2 renegotiation: see :func:`test_renegotiation`.
* TLS 1.3 KeyUpdate: see :func:`test_key_update_from_openssl_s_server`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

import onion_tls
from onion_tls import HandshakeError, OnionError, TLSProtocolError
from onion_tls.testing import ENGINES, OnionCA, OnionPair, memory_pair

from .helpers import RawTLS, until


class Peer(asyncio.Protocol):
    """Either side's application: records what it gets; a hostile side
    may route what it receives into a hand-driven TLS session."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.eofs = 0
        self.raw: RawTLS | None = None
        self.on_eof: Callable[[], bool] = lambda: False
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.raw is not None:
            self.raw.feed(data)
        else:
            self.data += data

    def eof_received(self) -> bool:
        self.eofs += 1
        return self.on_eof()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class Setup:
    """A hostile side (the pair's client application) and a victim (the
    pair's server application) with ``depth - 1`` good layers between them."""

    def __init__(self, pair: OnionPair, ca: OnionCA, depth: int, engine: str) -> None:
        self.pair = pair
        self.ca = ca
        self.depth = depth
        self.engine = engine
        self.hostile: Peer = pair.client_protocol  # type: ignore[assignment]
        self.victim: Peer = pair.server_protocol  # type: ignore[assignment]
        self.fut: asyncio.Future[onion_tls.TLSLayer] | None = None

    def victim_server(self, version: str | None = None) -> asyncio.Future[onion_tls.TLSLayer]:
        ctx = self.ca.server_context(self.depth, self.engine, version=version)  # type: ignore[arg-type]
        self.fut = self.pair.server.start_tls(ctx, server_side=True)
        return self.fut

    def victim_client(self, version: str | None = None) -> asyncio.Future[onion_tls.TLSLayer]:
        ctx = self.ca.client_context(self.engine, version=version)  # type: ignore[arg-type]
        self.fut = self.pair.server.start_tls(ctx, server_hostname=self.ca.hostname(self.depth))
        return self.fut

    def raw_client(self, version: str | None = None) -> RawTLS:
        ctx = self.ca.client_context("pyopenssl", version=version)
        raw = RawTLS(self.pair.client, ctx, server_side=False)
        raw.conn.set_tlsext_host_name(self.ca.hostname(self.depth).encode())
        self.hostile.raw = raw
        return raw

    def raw_server(self, version: str | None = None) -> RawTLS:
        ctx = self.ca.server_context(self.depth, "pyopenssl", version=version)
        raw = RawTLS(self.pair.client, ctx, server_side=True)
        self.hostile.raw = raw
        return raw

    async def expect_failure(self, kind: type[OnionError], *words: str) -> OnionError:
        """The victim's layer k failed cleanly: one connection_lost with an
        error of ``kind`` at depth k whose message has ``words``."""
        await until(lambda: bool(self.victim.lost), "the victim's connection_lost")
        await asyncio.sleep(0.01)
        assert len(self.victim.lost) == 1
        exc = self.victim.lost[0]
        assert isinstance(exc, kind), repr(exc)
        assert exc.depth == self.depth
        text = str(exc)
        assert f"TLS layer {self.depth}" in text and text.endswith(exc.reason)
        for word in words:
            assert word in text, text
        if self.fut is not None and self.fut.done() and self.fut.exception() is not None:
            assert self.fut.exception() is exc or self.fut.exception().depth == self.depth  # type: ignore[union-attr]
        await self.finish()
        return exc

    async def finish(self) -> None:
        """Let the hostile side notice the end too (it must not hang)."""
        for t in (self.pair.client, self.pair.server):
            if not t.is_closing():
                t.close()
        await until(lambda: bool(self.hostile.lost), "the hostile side's connection_lost")
        await until(lambda: bool(self.victim.lost), "the victim's connection_lost")
        assert self.fut is None or self.fut.done()


async def setup(onion_ca: OnionCA, depth: int, engine: str) -> Setup:
    pair = await memory_pair(Peer, Peer)
    for d in range(1, depth):
        await pair.start_tls(onion_ca, d, client_engine="stdlib", server_engine="pyopenssl")
    return Setup(pair, onion_ca, depth, engine)


DEPTHS = (1, 2)
params = pytest.mark.parametrize(
    ("engine", "depth"), [(e, d) for e in ENGINES for d in DEPTHS], ids=lambda v: str(v)
)


# -- garbage and impossible headers ---------------------------------------------


@params
async def test_garbage_instead_of_client_hello(onion_ca: OnionCA, engine: str, depth: int) -> None:
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server()
    s.pair.client.write(b"GET / HTTP/1.1\r\nHost: layer.onion.test\r\n\r\n")
    with pytest.raises(HandshakeError) as info:
        await fut
    assert info.value.depth == depth
    exc = await s.expect_failure(HandshakeError, "not a TLS record", "content type 71")
    assert exc is info.value


@params
async def test_garbage_instead_of_server_hello(onion_ca: OnionCA, engine: str, depth: int) -> None:
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_client()
    await until(lambda: bool(s.hostile.data), "the ClientHello")
    assert s.hostile.data[0] == 22  # a handshake record
    s.pair.client.write(b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(range(256)))
    with pytest.raises(HandshakeError):
        await fut
    await s.expect_failure(HandshakeError, "not a TLS record", "content type 83")


@params
async def test_huge_length_in_first_record(onion_ca: OnionCA, engine: str, depth: int) -> None:
    s = await setup(onion_ca, depth, engine)
    s.victim_server()
    s.pair.client.write(b"\x16\x03\x01\xff\xff" + b"\x01" * 100)
    await s.expect_failure(HandshakeError, "too long", "65535 bytes")


@params
async def test_huge_length_in_an_open_session(onion_ca: OnionCA, engine: str, depth: int) -> None:
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server()
    raw = s.raw_client()
    raw.start()
    await fut
    raw.send(b"hello")
    await until(lambda: s.victim.data == b"hello", "data")
    raw.write_raw(b"\x17\x03\x03\xff\xff" + b"\x00" * 64)
    await s.expect_failure(TLSProtocolError, "too long", "65535 bytes")


@params
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_record_longer_than_tls_allows(
    onion_ca: OnionCA, engine: str, depth: int, version: str
) -> None:
    # The framer lets 2**14 + 2048 through (the TLS 1.2 ciphertext limit);
    # this record is that long, and its body is noise: the engine must fail
    # it with an alert, not buffer it, not decrypt it.
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server(version)
    raw = s.raw_client(version)
    raw.start()
    await fut
    n = 2**14 + 2048
    raw.write_raw(b"\x17\x03\x03" + n.to_bytes(2, "big") + os.urandom(n))
    exc = await s.expect_failure(TLSProtocolError)
    assert any(
        w in exc.reason
        for w in ("record overflow", "bad record mac", "encrypted length too long", "too long")
    ), exc.reason


# -- legal but nasty ---------------------------------------------------------------------


@params
@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
async def test_records_split_into_one_byte_pieces(
    onion_ca: OnionCA, engine: str, depth: int, version: str
) -> None:
    """Each byte of layer k's stream travels in its own write (depth 1) or
    its own layer-(k-1) record (depth 2): slow, legal, and nothing lost."""
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server(version)
    raw = s.raw_client(version)
    raw.piece = 1
    raw.start()
    layer = await fut
    assert layer.version == version
    payload = bytes(range(256)) * 8
    raw.send(payload)
    s.pair.server.write(payload[::-1])
    await until(lambda: bytes(s.victim.data) == payload, "data at the victim")
    await until(lambda: bytes(raw.plain) == payload[::-1], "data at the hostile side")
    # A clean close, close_notify in pieces too.
    s.victim.on_eof = lambda: True
    raw.conn.shutdown()
    raw.flush()
    await until(lambda: s.victim.eofs == 1, "eof_received")
    popped = await s.pair.server.stop_tls()
    assert popped.depth == depth
    await until(lambda: raw.peer_closed, "our close_notify at the hostile side")
    assert len(s.pair.server.layers) == depth - 1
    await s.finish()
    assert s.victim.lost == [None]


@params
async def test_application_data_after_close_notify(
    onion_ca: OnionCA, engine: str, depth: int
) -> None:
    """The peer sends close_notify and then, with the same keys, one more
    application record.  The closed layer never decrypts it: it is held,
    then dropped when the application lets the connection close."""
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server()
    raw = s.raw_client()
    raw.start()
    await fut
    raw.send(b"before")
    raw.conn.shutdown()
    raw.conn.set_shutdown(0)  # forget that close_notify was sent: keep writing
    raw.send(b"SECRET after close_notify")
    await until(lambda: s.victim.eofs == 1, "eof_received")
    await until(lambda: bool(s.victim.lost), "the close")
    assert bytes(s.victim.data) == b"before"
    assert s.victim.lost == [None]
    await s.finish()


@params
async def test_application_data_after_close_notify_then_unwrap(
    onion_ca: OnionCA, engine: str, depth: int
) -> None:
    """The same, but the victim unwraps in eof_received(): the record that
    followed close_notify belongs to the layer beneath, so it arrives there
    as it was sent - ciphertext of the closed layer, never its plaintext."""
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server()
    raw = s.raw_client()
    raw.start()
    await fut
    raw.send(b"before")
    stops: list[asyncio.Future[onion_tls.TLSLayer]] = []

    def unwrap() -> bool:
        stops.append(s.pair.server.stop_tls())
        s.victim.on_eof = lambda: False
        return True

    s.victim.on_eof = unwrap
    raw.conn.shutdown()
    raw.flush()
    raw.conn.set_shutdown(0)
    bio_before = len(s.victim.data)
    raw.send(b"SECRET after close_notify")
    await until(lambda: bool(stops) and stops[0].done(), "the pop")
    popped = stops[0].result()
    assert popped.depth == depth
    await until(lambda: len(s.victim.data) > bio_before + 6, "the trailing record")
    beneath = bytes(s.victim.data[len(b"before") :])
    assert b"SECRET" not in bytes(s.victim.data)
    assert beneath[0] == 23  # an application_data record, still encrypted
    assert len(s.pair.server.layers) == depth - 1
    await s.finish()


# -- the wrong content type at the wrong time ------------------------------------------------

WRONG_TYPES = {
    # application data instead of a ClientHello
    "appdata-before-hello": (b"\x17\x03\x03\x00\x10" + b"\x00" * 16, False, "unexpected message"),
    # a ChangeCipherSpec after a TLS 1.3 handshake (only allowed during it)
    "ccs-after-handshake": (b"\x14\x03\x03\x00\x01\x01", True, "bad record type"),
    # a handshake message in clear once the session is encrypted
    "clear-handshake-after-handshake": (
        b"\x16\x03\x03\x00\x04\x14\x00\x00\x00",
        True,
        "bad record type",
    ),
    # a heartbeat record (no one negotiated heartbeats)
    "heartbeat": (b"\x18\x03\x03\x00\x03\x01\x00\x00", True, "bad record type"),
    # an alert in clear once the session is encrypted
    "clear-alert-after-handshake": (b"\x15\x03\x03\x00\x02\x02\x28", True, "bad record type"),
}


@params
@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
async def test_wrong_content_type(onion_ca: OnionCA, engine: str, depth: int, case: str) -> None:
    record, after_handshake, words = WRONG_TYPES[case]
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_server("TLSv1.3")
    if not after_handshake:
        s.pair.client.write(record)
        with pytest.raises(HandshakeError):
            await fut
        await s.expect_failure(HandshakeError, words)
        return
    raw = s.raw_client("TLSv1.3")
    raw.start()
    await fut
    raw.send(b"hello")
    await until(lambda: s.victim.data == b"hello", "data")
    raw.write_raw(record)
    await s.expect_failure(TLSProtocolError, words)


# -- TLS 1.2 renegotiation ---------------------------------------------------------------


@params
@pytest.mark.parametrize("victim_role", ["server", "client"])
async def test_renegotiation(onion_ca: OnionCA, engine: str, depth: int, victim_role: str) -> None:
    """A TLS 1.2 peer renegotiates (a ClientHello from a client, a
    HelloRequest from a server) after data has flowed.

    One policy for both engines (DESIGN rule 14).  Refused by a server
    layer (the pyOpenSSL engine sets OP_NO_RENEGOTIATION on server layers;
    OpenSSL >= 3.0 refuses client-initiated renegotiation by default): the
    victim answers with a no_renegotiation warning, the renegotiating peer
    gives up with a fatal handshake_failure alert, and the victim's layer
    ends in a TLSProtocolError at its depth.

    Accepted by a client layer (a server's secure renegotiation, as OpenSSL
    allows by default): the new handshake runs inside the layer, data the
    victim writes while it runs waits (the engine takes nothing until it is
    done) and is delivered in order afterwards, and data keeps flowing both
    ways.
    """
    s = await setup(onion_ca, depth, engine)
    if victim_role == "server":
        fut = s.victim_server("TLSv1.2")
        raw = s.raw_client("TLSv1.2")
    else:
        fut = s.victim_client("TLSv1.2")
        raw = s.raw_server("TLSv1.2")
    raw.start()
    await fut
    raw.send(b"before")
    await until(lambda: s.victim.data == b"before", "data")
    assert raw.conn.renegotiate()
    handled = victim_role == "client"
    raw.hold = handled  # hold the victim's answer: its new handshake stays open
    raw.pump()  # sends the HelloRequest / ClientHello
    if not handled:
        await s.expect_failure(TLSProtocolError, "handshake failure")
        assert raw.conn.renegotiate_pending()
        return
    # The victim has sent its new ClientHello and waits for the answer.
    await until(lambda: raw.held > 0, "the victim's new ClientHello")
    s.pair.server.write(b"during")
    await asyncio.sleep(0.01)
    assert s.pair.server.get_write_buffer_size() == len(b"during")  # waiting in the layer
    raw.release()
    await until(lambda: not raw.conn.renegotiate_pending(), "the renegotiation to finish")
    assert raw.conn.total_renegotiations() == 1
    raw.send(b" after")
    s.pair.server.write(b" after")
    await until(lambda: bytes(raw.plain) == b"during after", "the victim's data")
    await until(lambda: bytes(s.victim.data) == b"before after", "the peer's data")
    assert s.pair.server.layers[-1].state == "open"
    await s.finish()
    assert s.victim.lost == [None]


async def mid_renegotiation(onion_ca: OnionCA, depth: int, engine: str) -> tuple[Setup, RawTLS]:
    """A TLS 1.2 victim client layer in the middle of a renegotiation the
    raw server asked for: its new ClientHello sent, the answer held back
    (``raw.release()`` lets it go)."""
    s = await setup(onion_ca, depth, engine)
    fut = s.victim_client("TLSv1.2")
    raw = s.raw_server("TLSv1.2")
    raw.start()
    await fut
    raw.send(b"before")
    await until(lambda: s.victim.data == b"before", "data")
    assert raw.conn.renegotiate()
    raw.hold = True
    raw.pump()  # the HelloRequest
    await until(lambda: raw.held > 0, "the victim's new ClientHello")
    return s, raw


@params
@pytest.mark.parametrize("big", [70_000, 300_000])
async def test_large_writes_during_a_renegotiation_keep_their_order(
    onion_ca: OnionCA, engine: str, depth: int, big: int
) -> None:
    """While a server's renegotiation waits for its answer, the victim
    (the client layer) writes large writes (several of the engine's write
    slices each) and small ones: the engine takes nothing meanwhile, and
    once the renegotiation is over everything arrives, in order."""
    s, raw = await mid_renegotiation(onion_ca, depth, engine)
    pieces = [b"A" * big, b"[small]", bytes(range(256)) * (big // 256), b"[end]"]
    for i, piece in enumerate(pieces):
        s.pair.server.write(piece)
        if i < 2:
            await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    raw.release()
    want = b"".join(pieces)
    await until(lambda: len(raw.plain) >= len(want), "the victim's data")
    assert bytes(raw.plain) == want
    assert raw.conn.total_renegotiations() == 1
    await s.finish()


@params
async def test_close_during_a_renegotiation(onion_ca: OnionCA, engine: str, depth: int) -> None:
    """close() while a server's renegotiation is half done (the victim's new
    ClientHello sent, the answer not yet back): OpenSSL cannot send a
    close_notify in the middle of a handshake ("shutdown while in init"), so
    the layer sends it as soon as the renegotiation is over - no error
    escapes, and the close is clean on both sides (DESIGN rule 14)."""
    s, raw = await mid_renegotiation(onion_ca, depth, engine)
    s.pair.server.close()
    await asyncio.sleep(0.01)
    assert raw.error is None and not s.victim.lost
    raw.release()
    await until(lambda: raw.peer_closed or raw.error is not None, "the victim's close_notify")
    assert raw.error is None, raw.error
    assert raw.conn.total_renegotiations() == 1
    await until(lambda: bool(s.victim.lost), "the victim's connection_lost")
    assert s.victim.lost == [None]
    await s.finish()
