"""Correctness of the fast paths that ``python -m onion_tls bench`` measures.

* Stream mode (engines that give fed bytes back) and record mode (pyOpenSSL
  without its direct path), at every depth: exact bytes, exact boundaries at
  a close_notify that shares a read with what follows it.
* Decryption straight into a ``BufferedProtocol`` application's buffer, for
  buffers smaller than a record and larger than a read, with pause_reading.
* The socket read into one buffer per thread: what a plaintext application
  is given stays valid, and connections sharing the buffer do not mix.
* The outbox (writes held as plaintext while the socket is backed up) and
  gathered small writes: order, flow control, and where they go relative to
  start_tls / stop_tls.

No timing is asserted anywhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import WAIT, Recorder, connect, settle, start_layer

from onion_tls import OnionProtocol, OnionTransport, wrap
from onion_tls import _pyopenssl as pyopenssl_engine
from onion_tls._engine import PeerClosed, new_engine
from onion_tls.testing import Engine, OnionCA, memory_pair

ENGINES: tuple[Engine, ...] = ("pyopenssl", "stdlib")
LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that show any loss, duplication or reordering."""
    return bytes((i * 7 + seed) % 251 for i in range(size))


@pytest.fixture(params=["pyopenssl", "pyopenssl-record-mode", "stdlib"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Both engines in stream mode, and pyOpenSSL without its direct path
    (public API only: its layers feed one record at a time)."""
    if request.param == "pyopenssl-record-mode":
        monkeypatch.setattr(pyopenssl_engine, "_DIRECT_API", False)
        return "pyopenssl"
    return request.param  # type: ignore[no-any-return]


def write_all(engine: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[engine.write(view) :]


# -- the engines ----------------------------------------------------------------


def engine_pair(ca: OnionCA, engine: Engine) -> tuple[Any, Any]:
    client = new_engine(
        ca.client_context(engine),
        server_side=False,
        server_hostname=ca.hostname(1),
        session=None,
    )
    server = new_engine(
        ca.server_context(1, engine), server_side=True, server_hostname=None, session=None
    )
    done = [False, False]
    for _ in range(10):
        for i, (me, peer) in enumerate(((client, server), (server, client))):
            done[i] = done[i] or me.do_handshake()
            out = me.take_output()
            if out:
                peer.feed(out)
        if all(done):
            break
    assert all(done)
    tickets = server.take_output()
    if tickets:
        client.feed(tickets)
    assert client.read(100) == b""
    return client, server


def test_read_into_small_buffer_then_unread_gives_back_what_follows_close_notify(
    onion_ca: OnionCA, engine: Engine
) -> None:
    client, server = engine_pair(onion_ca, engine)
    direct = engine == "stdlib" or pyopenssl_engine._DIRECT_API
    assert client.can_unread is direct
    payload = pattern(40_000)  # three records
    write_all(server, payload)
    write_all(server, b"tail")
    server.shutdown()
    after = b"plaintext that follows the close_notify, and more"
    # everything in one chunk, as one read from the socket would bring it
    client.feed(server.take_output() + after)
    got = bytearray()
    buf = memoryview(bytearray(7))  # smaller than any record
    with pytest.raises(PeerClosed):
        for _ in range(100_000):
            n = client.read_into(buf)
            assert n > 0
            got += buf[:n]
    assert got == payload + b"tail"
    if direct:
        assert client.unread() == after
        assert client.unread() == b""


def test_read_into_reports_need_for_more_input(onion_ca: OnionCA, engine: Engine) -> None:
    client, server = engine_pair(onion_ca, engine)
    write_all(server, b"x" * 1000)
    record = server.take_output()
    buf = memoryview(bytearray(4096))
    client.feed(record[:10])
    assert client.read_into(buf) == 0
    client.feed(record[10:])
    assert buf[: client.read_into(buf)] == b"x" * 1000
    assert client.read_into(buf) == 0


# -- layers: stream and record mode -------------------------------------------------


@pytest.mark.parametrize("coalesce", [True, False], ids=["one-read", "per-write"])
async def test_big_writes_and_an_exact_unwrap_at_depth_3(
    onion_ca: OnionCA, engine: Engine, coalesce: bool
) -> None:
    """1 MiB each way at depth 3, then the server pops layer 3 with bytes
    for layer 2 right behind its close_notify (in the same read when
    coalesced): nothing is lost, duplicated, or delivered at the wrong depth."""
    big = pattern(1 << 20)
    async with connect("memory", coalesce=coalesce) as pair:
        for d in (1, 2, 3):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        stops: list[asyncio.Future[Any]] = []

        def on_eof() -> None:
            stops.append(pair.client.stop_tls())
            pair.c.on_eof = None

        pair.c.on_eof = on_eof
        pair.client.write(big)
        pair.server.write(big[::-1])
        await pair.s.expect(big)
        await pair.c.expect(big[::-1])
        pair.server.write(b"last words at 3;")
        fs = pair.server.stop_tls()
        pair.server.write(b"first words at 2;")
        await asyncio.wait_for(fs, WAIT)
        await pair.c.expect(b"last words at 3;first words at 2;")
        assert pair.c.received_at(3) == big[::-1] + b"last words at 3;"
        assert pair.c.received_at(2) == b"first words at 2;"
        assert (await asyncio.wait_for(stops[0], WAIT)).depth == 3
        assert len(pair.client.layers) == len(pair.server.layers) == 2


# -- decryption into the application's buffer ----------------------------------------


class BufferedSink(asyncio.BufferedProtocol):
    """A BufferedProtocol application with a buffer of ``size`` bytes;
    optionally pauses reading after every ``pause_every`` bytes."""

    def __init__(self, size: int, pause_every: int = 0) -> None:
        self.buf = bytearray(size)
        self.data = bytearray()
        self.transport: OnionTransport
        self.pause_every = pause_every
        self.paused_times = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buf)
        before = len(self.data)
        self.data += self.buf[:nbytes]
        if self.pause_every and before // self.pause_every != len(self.data) // self.pause_every:
            self.transport.pause_reading()
            self.paused_times += 1
            asyncio.get_running_loop().call_soon(self.transport.resume_reading)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_for(self, size: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.data) < size:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(
    ("bufsize", "pause_every"),
    [(7, 0), (300_000, 0), (65_536, 100_000)],
    ids=["tiny-buffer", "big-buffer", "pausing"],
)
async def test_buffered_application_gets_every_byte(
    onion_ca: OnionCA, engine: Engine, depth: int, bufsize: int, pause_every: int
) -> None:
    payload = pattern(700_000, seed=depth)
    app = BufferedSink(bufsize, pause_every)
    pair = await memory_pair(lambda: app, Recorder, coalesce=True)
    server_app = pair.server_protocol
    assert isinstance(server_app, Recorder)
    try:
        for d in range(1, depth + 1):
            await pair.start_tls(onion_ca, d, client_engine=engine, server_engine=engine)
        for i in range(0, len(payload), 50_000):
            pair.server.write(payload[i : i + 50_000])
        await app.wait_for(len(payload))
        assert app.data == payload
        if pause_every:
            assert app.paused_times >= len(payload) // pause_every - 1
        pair.server.write(b"the end")
        await app.wait_for(len(payload) + 7)
        assert app.data[len(payload) :] == b"the end"
    finally:
        pair.client.abort()
        pair.server.abort()
        await asyncio.wait_for(app.lost, WAIT)
        await server_app.wait_lost()


# -- the socket side: one read buffer per thread ------------------------------------------


class Keeper(asyncio.Protocol):
    """Keeps every object data_received gives it, to check them later."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.transport: OnionTransport
        self._waiter: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.pieces.append(data)
        self.size += len(data)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    async def wait_for(self, size: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.size < size:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter


class AcceptedKeeper(Keeper):
    def __init__(self, accepted: asyncio.Future[OnionTransport]) -> None:
        super().__init__()
        self._accepted = accepted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._accepted.set_result(self.transport)


async def loopback(
    client_app: Callable[[], asyncio.BaseProtocol],
) -> tuple[OnionTransport, OnionTransport, asyncio.Server]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[OnionTransport] = loop.create_future()
    listener = await loop.create_server(wrap(lambda: AcceptedKeeper(accepted)), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, onion = await loop.create_connection(wrap(client_app), "127.0.0.1", port)
    assert isinstance(onion, OnionProtocol)
    server = await asyncio.wait_for(accepted, WAIT)
    return onion.transport, server, listener


async def push(
    ca: OnionCA, client: OnionTransport, server: OnionTransport, depth: int, engine: Engine
) -> None:
    fs = server.start_tls(ca.server_context(depth, engine), server_side=True)
    fc = client.start_tls(ca.client_context(engine), server_hostname=ca.hostname(depth))
    await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)


def run_on(loop_name: str, coro: Callable[[], Any]) -> None:
    """Run ``coro()`` on a fresh loop of the given kind (for uvloop)."""
    factory = asyncio.new_event_loop
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_plaintext_data_survives_the_next_reads(onion_ca: OnionCA, loop_name: str) -> None:
    """The socket is read into one reused buffer; what a plaintext
    application was given must not change when later reads arrive."""
    sent = [pattern(50_000, seed=i) for i in range(40)]

    async def main() -> None:
        client, server, listener = await loopback(Keeper)
        app = server.get_protocol()
        assert isinstance(app, Keeper)
        for piece in sent:
            client.write(piece)
            await asyncio.sleep(0)
        await app.wait_for(sum(map(len, sent)))
        assert b"".join(app.pieces) == b"".join(sent)
        client.abort()
        server.abort()
        listener.close()
        await listener.wait_closed()

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connections_sharing_the_read_buffer_do_not_mix(
    onion_ca: OnionCA, loop_name: str, engine: Engine
) -> None:
    """Three depth-2 connections in one loop, 1 MiB each way at once."""

    async def main() -> None:
        conns = [await loopback(Keeper) for _ in range(3)]
        for client, server, _ in conns:
            await push(onion_ca, client, server, 1, engine)
            await push(onion_ca, client, server, 2, engine)
        for i, (client, server, _) in enumerate(conns):
            client.write(pattern(1 << 20, seed=i))
            server.write(pattern(1 << 20, seed=100 + i))
        for i, (client, server, _) in enumerate(conns):
            capp, sapp = client.get_protocol(), server.get_protocol()
            assert isinstance(capp, Keeper) and isinstance(sapp, Keeper)
            await sapp.wait_for(1 << 20)
            await capp.wait_for(1 << 20)
            assert b"".join(sapp.pieces) == pattern(1 << 20, seed=i)
            assert b"".join(capp.pieces) == pattern(1 << 20, seed=100 + i)
        for client, server, listener in conns:
            client.abort()
            server.abort()
            listener.close()
            await listener.wait_closed()

    run_on(loop_name, main)


# -- the outbox and gathered small writes ----------------------------------------------


def raw_writes(pair: Any) -> Iterator[bytes]:
    """What the client's onion stack has written to its socket, not yet moved."""
    return iter(pair.pipe.a.outgoing)


async def test_lone_small_write_leaves_at_once_and_the_rest_are_gathered(
    onion_ca: OnionCA, engine: Engine
) -> None:
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine=engine, server_engine=engine)
        pair.pipe.auto = False
        pair.client.write(b"lone;")
        assert len(list(raw_writes(pair))) == 1  # already on the wire
        words = [b"word %d;" % i for i in range(500)]
        for word in words:
            pair.client.write(word)
        assert len(list(raw_writes(pair))) == 1  # gathered, not sent yet
        assert pair.client.get_write_buffer_size() >= sum(map(len, words))
        await settle()
        # one gathered write (3.4 KB: one record), right after the lone one
        assert len(list(raw_writes(pair))) == 2
        pair.pipe.auto = True
        pair.pipe._kick()
        await pair.s.expect(b"lone;" + b"".join(words))
        assert pair.client.get_write_buffer_size() == 0


async def test_gathered_writes_go_out_before_start_tls_and_stop_tls(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """Small writes made just before start_tls / stop_tls, in the same loop
    iteration, still go out where they were written: beneath the new layer,
    inside the layer being popped."""
    d1 = [b"d1-%d;" % i for i in range(20)]
    d2 = [b"d2-%d;" % i for i in range(20)]
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine=engine, server_engine=engine)
        seen = bytearray()
        upgrades: list[asyncio.Future[Any]] = []

        def starttls_server(data: bytes) -> None:
            # STARTTLS-style: the server upgrades once the layer-1 data is
            # in, passing what followed it in the same read (the ClientHello).
            seen.extend(data)
            if len(seen) >= len(b"".join(d1)):
                pair.s.on_data = None
                rest = bytes(seen[len(b"".join(d1)) :])
                upgrades.append(
                    pair.server.start_tls(
                        onion_ca.server_context(2, engine), server_side=True, initial_bytes=rest
                    )
                )

        pair.s.on_data = starttls_server
        for word in d1:
            pair.client.write(word)
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(2)
        )
        for word in d2:
            pair.client.write(word)
        await asyncio.wait_for(fc, WAIT)
        await pair.s.wait_for(lambda: bool(upgrades), "server upgrade")
        await asyncio.wait_for(upgrades[0], WAIT)
        await pair.s.wait_for(lambda: pair.s.received_at(2) == b"".join(d2), "the layer-2 words")
        assert pair.s.received_at(1).startswith(b"".join(d1))
        pair.s.data.clear()

        pair.s.eof_result = True
        for i in range(20):
            pair.client.write(b"last-%d;" % i)
        fstop = pair.client.stop_tls()
        pair.client.write(b"beneath;")
        await pair.s.wait_eof()
        fstop_s = pair.server.stop_tls()
        await asyncio.wait_for(asyncio.gather(fstop, fstop_s), WAIT)
        await pair.s.expect(b"".join(b"last-%d;" % i for i in range(20)) + b"beneath;")
        assert pair.s.received_at(2).endswith(b"".join(b"last-%d;" % i for i in range(20)))
        assert pair.s.received_at(1).endswith(b"beneath;")


async def test_outbox_holds_plaintext_while_the_socket_is_backed_up(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """With the socket's buffer over the mark, further writes are held (the
    socket's buffer stops growing), counted, and sent in order once it
    drains; a stop_tls sends them inside the layer first."""
    async with connect("memory") as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        pair.pipe.auto = False
        pair.client.set_write_buffer_limits(high=20_000)
        chunks = [pattern(30_000, seed=i) for i in range(10)]
        pair.client.write(chunks[0])  # over the mark at once: the socket pauses
        on_wire = pair.pipe.a.get_write_buffer_size()
        assert ("pause_writing",) in pair.c.events
        for chunk in chunks[1:]:
            pair.client.write(chunk)
        assert pair.pipe.a.get_write_buffer_size() == on_wire  # held, not encrypted
        assert pair.client.get_write_buffer_size() >= on_wire + 9 * 30_000
        pair.pipe.auto = True
        pair.pipe._kick()
        await pair.s.expect(b"".join(chunks))
        assert pair.s.received_at(2) == b"".join(chunks)
        await pair.c.wait_for(lambda: ("resume_writing",) in pair.c.events, "resume_writing")

        # held writes, then stop_tls: they go inside layer 2, the next beneath
        pair.pipe.auto = False
        pair.client.write(chunks[0])
        pair.client.write(b"held inside 2;")
        assert pair.pipe.a.get_write_buffer_size() < 40_000
        pair.s.eof_result = True
        fstop = pair.client.stop_tls()
        pair.client.write(b"beneath 2;")
        pair.pipe.auto = True
        pair.pipe._kick()
        await pair.s.wait_eof()
        fstop_s = pair.server.stop_tls()
        await asyncio.wait_for(asyncio.gather(fstop, fstop_s), WAIT)
        await pair.s.expect(chunks[0] + b"held inside 2;beneath 2;")
        assert pair.s.received_at(2).endswith(chunks[0] + b"held inside 2;")
        assert pair.s.received_at(1) == b"beneath 2;"


async def test_echo_answers_from_data_received_are_gathered_and_complete(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """An application that answers every delivery with many small writes
    (they are gathered while our callback runs) gets every byte back."""
    async with connect("loopback") as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)

        def echo_in_pieces(data: bytes) -> None:
            for i in range(0, len(data), 100):
                pair.server.write(data[i : i + 100])

        pair.s.on_data = echo_in_pieces
        payload = pattern(300_000)
        for i in range(0, len(payload), 7_000):
            pair.client.write(payload[i : i + 7_000])
        await pair.c.expect(payload)


def test_stdlib_shutdown_leaves_queued_records_for_the_layer(onion_ca: OnionCA) -> None:
    """ssl.SSLObject.unwrap() reads after sending our close_notify; records
    still queued in the engine are the layer's to read, not unwrap()'s."""
    client, server = engine_pair(onion_ca, "stdlib")
    write_all(server, b"one")
    write_all(server, b"two")
    client.feed(server.take_output())
    client.shutdown()  # our close_notify, with two records unread
    buf = memoryview(bytearray(100))
    got = bytearray()
    while n := client.read_into(buf):
        got += buf[:n]
    assert got == b"onetwo"
    assert isinstance(client.ssl_object, ssl.SSLObject)
