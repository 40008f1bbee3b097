"""STARTTLS: start_tls called from inside data_received, a pipelined
ClientHello given as initial_bytes (same read and later read), plaintext that
was not passed is never fed to the layer, and writes made during a handshake
arrive in order inside the new layer and never in the clear."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from onion_tls import HandshakeError, LayerStateError, TLSLayer
from onion_tls.testing import Engine, OnionCA

from .helpers import (
    ENGINE_PAIR_IDS,
    ENGINE_PAIRS,
    KINDS,
    WAIT,
    Pair,
    Recorder,
    connect,
    settle,
    start_layer,
)

MARK = b"SECRET-MARKER"


class StartTLSServer(Recorder):
    """Reads plaintext lines; on ``STARTTLS`` it upgrades from inside
    data_received, passing the bytes after the line (or nothing) as
    initial_bytes, and writes at once (during its handshake)."""

    def __init__(
        self, context: Any, *, pass_rest: bool = True, reply: bool = False, early: bytes = b""
    ) -> None:
        super().__init__()
        self.context = context
        self.pass_rest = pass_rest
        self.reply = reply
        self.early = early
        self.plain = bytearray()
        self.passed: bytes | None = None
        self.upgrade_chunk: bytes | None = None
        self.upgrade: asyncio.Future[TLSLayer] | None = None
        self.on_data = self._on_data

    def _on_data(self, data: bytes) -> None:
        if self.upgrade is not None:
            return
        self.plain += data
        while True:
            end = self.plain.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.plain[:end])
            del self.plain[: end + 2]
            if line == b"STARTTLS":
                break
        rest = bytes(self.plain)
        self.plain.clear()
        if self.reply:
            self.transport.write(b"220 go ahead\r\n")
        self.upgrade_chunk = data
        self.passed = rest if self.pass_rest else b""
        depth_before = len(self.transport.layers)
        self.upgrade = self.transport.start_tls(
            self.context, server_side=True, initial_bytes=self.passed
        )
        # act at call time: the layer is in place before start_tls returns
        assert len(self.transport.layers) == depth_before + 1
        for i in range(3):
            if self.early:
                self.transport.write(self.early + b"%d;" % i)

    async def upgraded(self) -> TLSLayer:
        await self.wait_for(lambda: self.upgrade is not None, "STARTTLS")
        assert self.upgrade is not None
        return await asyncio.wait_for(self.upgrade, WAIT)


class StartTLSClient(Recorder):
    """Sends ``STARTTLS``; upgrades from inside data_received when the
    server's ``220`` reply arrives (the classic, non-pipelined flow)."""

    def __init__(self, context: Any, hostname: str, early: bytes = b"") -> None:
        super().__init__()
        self.context = context
        self.hostname = hostname
        self.early = early
        self.upgrade: asyncio.Future[TLSLayer] | None = None
        self.on_data = self._on_data

    def _on_data(self, data: bytes) -> None:
        if self.upgrade is None and data.endswith(b"220 go ahead\r\n"):
            self.upgrade = self.transport.start_tls(self.context, server_hostname=self.hostname)
            for i in range(3):
                self.transport.write(self.early + b"%d;" % i)

    async def upgraded(self) -> TLSLayer:
        await self.wait_for(lambda: self.upgrade is not None, "220 reply")
        assert self.upgrade is not None
        return await asyncio.wait_for(self.upgrade, WAIT)


def early(tag: bytes) -> bytes:
    return b"".join(MARK + b"-" + tag + b"%d;" % i for i in range(3))


def assert_not_on_wire(pair: Pair, marker: bytes = MARK) -> None:
    if pair.pipe is not None:
        for direction, sent in pair.pipe.sent.items():
            assert marker not in sent, f"{marker!r} crossed the wire in the clear ({direction})"


async def pipelined_client(pair: Pair, onion_ca: OnionCA, engine: Engine, depth: int) -> Any:
    """The client sends STARTTLS and its ClientHello at once, then writes
    during the handshake."""
    pair.client.write(b"STARTTLS\r\n")
    fut = pair.client.start_tls(
        onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
    )
    for i in range(3):
        pair.client.write(MARK + b"-C%d;" % i)
    return fut


def server_factory(onion_ca: OnionCA, engine: Engine, depth: int = 1, **kw: Any) -> Any:
    return lambda: StartTLSServer(onion_ca.server_context(depth, engine), **kw)


async def finish(pair: Pair) -> None:
    pair.client.close()
    await pair.s.wait_eof()
    pair.server.close()
    assert await pair.c.wait_lost() is None
    assert await pair.s.wait_lost() is None


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_pipelined_clienthello_in_the_same_read(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    factory = server_factory(onion_ca, server_engine, early=MARK + b"-S")
    async with connect("memory", Recorder, factory, coalesce=True) as pair:
        fc = await pipelined_client(pair, onion_ca, client_engine, 1)
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        ls = await srv.upgraded()
        lc = await asyncio.wait_for(fc, WAIT)
        # STARTTLS and the ClientHello came in one data_received
        assert srv.upgrade_chunk is not None
        assert srv.upgrade_chunk.startswith(b"STARTTLS\r\n\x16\x03")
        assert srv.passed is not None and srv.passed[:1] == b"\x16"
        assert lc.depth == ls.depth == 1
        expected_c = early(b"C")
        await srv.wait_for(lambda: len(srv.received_at(1)) >= len(expected_c))
        assert srv.received_at(1) == expected_c
        assert srv.received_at(0) == b"STARTTLS\r\n" + srv.passed
        await pair.c.expect(early(b"S"))
        assert all(d == 1 for d, _ in pair.c.at_depth)
        assert_not_on_wire(pair)
        await finish(pair)


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_pipelined_clienthello_in_a_later_read(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    factory = server_factory(onion_ca, server_engine, early=MARK + b"-S")
    async with connect("memory", Recorder, factory, auto=False) as pair:
        assert pair.pipe is not None
        fc = await pipelined_client(pair, onion_ca, client_engine, 1)
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        assert pair.pipe.step(pair.pipe.a)  # "STARTTLS\r\n" alone
        assert srv.upgrade is not None
        assert srv.passed == b""
        assert len(pair.server.layers) == 1
        pair.pipe.auto = True
        pair.pipe.kick()
        await srv.upgraded()
        await asyncio.wait_for(fc, WAIT)
        await srv.expect(b"STARTTLS\r\n" + early(b"C"))
        assert srv.received_at(1) == early(b"C")
        await pair.c.expect(early(b"S"))
        assert pair.c.received_at(1) == early(b"S")
        assert_not_on_wire(pair)
        await finish(pair)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_classic_starttls_both_sides_upgrade_in_data_received(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    """Client sends STARTTLS, server answers 220 in plaintext and upgrades;
    the client upgrades when the 220 arrives.  Both write at once."""

    def cfactory() -> StartTLSClient:
        return StartTLSClient(
            onion_ca.client_context(client_engine), onion_ca.hostname(1), early=MARK + b"-C"
        )

    sfactory = server_factory(onion_ca, server_engine, reply=True, early=MARK + b"-S")
    async with connect(kind, cfactory, sfactory) as pair:  # type: ignore[arg-type]
        pair.client.write(b"EHLO x\r\nSTARTTLS\r\n")
        cli, srv = pair.c, pair.s
        assert isinstance(cli, StartTLSClient) and isinstance(srv, StartTLSServer)
        lc = await cli.upgraded()
        ls = await srv.upgraded()
        assert srv.passed == b""
        assert lc.version == ls.version == "TLSv1.3"
        assert lc.server_side is False and ls.server_side is True
        await srv.expect(b"EHLO x\r\nSTARTTLS\r\n" + early(b"C"))
        await cli.expect(b"220 go ahead\r\n" + early(b"S"))
        assert srv.received_at(1) == early(b"C")
        assert cli.received_at(1) == early(b"S")
        assert cli.received_at(0) == b"220 go ahead\r\n"
        assert_not_on_wire(pair)
        # and on top of it, a second STARTTLS inside layer 1
        pair.client.write(b"more\r\n")
        await srv.expect(b"more\r\n")
        await finish(pair)


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_pipelined_starttls_over_loopback(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    """Over a socket the ClientHello may come in the same read or later:
    either way the server passes what followed the line, and nothing else."""
    factory = server_factory(onion_ca, server_engine, early=MARK + b"-S")
    async with connect("loopback", Recorder, factory) as pair:
        fc = await pipelined_client(pair, onion_ca, client_engine, 1)
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        await srv.upgraded()
        await asyncio.wait_for(fc, WAIT)
        await srv.wait_for(lambda: srv.received_at(1) == early(b"C"), "early writes")
        await pair.c.expect(early(b"S"))
        assert pair.c.received_at(1) == early(b"S")
        await finish(pair)


@pytest.mark.parametrize("server_engine", ["pyopenssl", "stdlib"])
async def test_injected_plaintext_is_never_fed_to_the_layer(
    onion_ca: OnionCA, server_engine: Engine
) -> None:
    """An attacker appends a command to STARTTLS in the same plaintext read;
    the server passes nothing: the injected bytes stay plaintext (in the
    app's own buffer), never reach the layer, and the handshake succeeds
    (it would fail on them: they are not TLS records)."""
    factory = server_factory(onion_ca, server_engine, pass_rest=False)
    async with connect("memory", Recorder, factory, auto=False) as pair:
        assert pair.pipe is not None
        pair.client.write(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n")
        pair.pipe.step(pair.pipe.a)
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        assert srv.upgrade is not None and srv.passed == b""
        assert srv.upgrade_chunk == b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n"
        fc = pair.client.start_tls(
            onion_ca.client_context("pyopenssl"), server_hostname=onion_ca.hostname(1)
        )
        pair.client.write(b"MAIL FROM:<good@example>\r\n")
        pair.pipe.auto = True
        pair.pipe.kick()
        await asyncio.wait_for(fc, WAIT)
        await srv.upgraded()
        await srv.wait_for(lambda: bool(srv.received_at(1)), "data in TLS")
        assert srv.received_at(1) == b"MAIL FROM:<good@example>\r\n"
        assert b"evil" not in srv.received_at(1)
        await finish(pair)


@pytest.mark.parametrize("server_engine", ["pyopenssl", "stdlib"])
async def test_passed_plaintext_is_fed_and_fails_the_handshake(
    onion_ca: OnionCA, server_engine: Engine
) -> None:
    """The contrast: what the application passes IS fed to the layer first;
    injected plaintext passed as initial_bytes fails the handshake at depth 1
    with one connection_lost on each side."""
    factory = server_factory(onion_ca, server_engine, pass_rest=True)
    async with connect("memory", Recorder, factory, coalesce=True) as pair:
        pair.client.write(b"STARTTLS\r\nMAIL FROM:<evil@example>\r\n")
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        await srv.wait_for(lambda: srv.upgrade is not None)
        assert srv.upgrade is not None
        with pytest.raises(HandshakeError) as info:
            await asyncio.wait_for(srv.upgrade, WAIT)
        assert info.value.depth == 1
        assert "TLS layer 1" in str(info.value)
        exc = await srv.wait_lost()
        assert exc is info.value
        assert len(srv.lost) == 1
        await pair.c.wait_lost()
        assert len(pair.c.lost) == 1


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_starttls_inside_two_layers_no_byte_races_past(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    """At depth 2 the client sends STARTTLS and its depth-3 ClientHello in
    one socket read (two records of layer 2); the server upgrades from inside
    data_received for the first record, and the second record goes straight
    into the new layer 3 without being passed."""
    factory = server_factory(onion_ca, server_engine, depth=3, early=MARK + b"-S")
    async with connect("memory", Recorder, factory, coalesce=True) as pair:
        for depth in (1, 2):
            await start_layer(
                pair, onion_ca, depth, client_engine=client_engine, server_engine=server_engine
            )
        srv = pair.s
        assert isinstance(srv, StartTLSServer)
        fc = await pipelined_client(pair, onion_ca, client_engine, 3)
        ls = await srv.upgraded()
        lc = await asyncio.wait_for(fc, WAIT)
        assert lc.depth == ls.depth == 3
        assert srv.passed == b""
        assert srv.received_at(2) == b"STARTTLS\r\n"
        await srv.wait_for(lambda: srv.received_at(3) == early(b"C"), "early writes at 3")
        await pair.c.expect(early(b"S"))
        assert pair.c.received_at(3) == early(b"S")
        assert_not_on_wire(pair)
        assert_not_on_wire(pair, b"STARTTLS")
        await finish(pair)


@pytest.mark.parametrize("kind", KINDS)
async def test_writes_during_handshake_in_order_inside_new_layer(
    onion_ca: OnionCA, kind: str
) -> None:
    """Many writes (small and large) made while the depth-2 handshake runs,
    from both sides, arrive in order at depth 2 only."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await start_layer(pair, onion_ca, 1, client_engine="stdlib", server_engine="pyopenssl")
        fs = pair.server.start_tls(onion_ca.server_context(2, "stdlib"), server_side=True)
        fc = pair.client.start_tls(
            onion_ca.client_context("pyopenssl"), server_hostname=onion_ca.hostname(2)
        )
        sent_c = bytearray()
        sent_s = bytearray()
        for i in range(50):
            chunk = MARK + b"-c%03d-" % i + bytes([i]) * (i * 997)
            pair.client.write(chunk)
            sent_c += chunk
            chunk = MARK + b"-s%03d-" % i + bytes([i]) * (i * 13)
            pair.server.write(chunk)
            sent_s += chunk
        assert pair.client.get_write_buffer_size() >= len(sent_c)
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await pair.s.expect(bytes(sent_c))
        await pair.c.expect(bytes(sent_s))
        assert pair.s.received_at(2) == sent_c and pair.s.received_at(1) == b""
        assert pair.c.received_at(2) == sent_s and pair.c.received_at(1) == b""
        assert_not_on_wire(pair)
        await finish(pair)


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_upgrade_refused_while_earlier_data_waits_undelivered(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """Data of layer 1 that arrived before an upgrade but waits (reading is
    paused) is not delivered after the splice as if it came through layer 2:
    start_tls refuses with LayerStateError until the application took it."""
    async with connect("memory", coalesce=True) as pair:
        await start_layer(pair, onion_ca, 1, client_engine=engine, server_engine=engine)
        cli = pair.c

        def pause_after_first(data: bytes) -> None:
            pair.client.pause_reading()
            cli.on_data = None

        cli.on_data = pause_after_first
        assert pair.pipe is not None
        pair.pipe.auto = False
        pair.server.write(b"first record;")
        # (a second small write in the same turn is gathered and leaves at
        # the end of the turn: let it go before the pipe moves both)
        pair.server.write(b"second record, same read;")
        await settle()
        pair.pipe.auto = True
        pair.pipe.kick()
        await cli.expect(b"first record;")
        await settle()
        assert not pair.client.is_reading()
        assert cli.data == b""
        with pytest.raises(LayerStateError) as info:
            pair.client.start_tls(
                onion_ca.client_context(engine), server_hostname=onion_ca.hostname(2)
            )
        assert "not been delivered" in str(info.value)
        assert len(pair.client.layers) == 1
        pair.client.resume_reading()
        await cli.expect(b"second record, same read;")
        assert cli.received_at(1) == b"first record;second record, same read;"
        lc, _ = await start_layer(pair, onion_ca, 2, client_engine=engine, server_engine=engine)
        assert lc.depth == 2
        pair.server.write(b"inside 2")
        await cli.expect(b"inside 2")
        assert cli.received_at(2) == b"inside 2"
        await finish(pair)
