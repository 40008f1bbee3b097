"""Regression tests for the 14 lifecycle-edge defects of issue 10.

Each test's docstring names the defect it locks.  They are written to the
contract (DESIGN.md rules 4-6 and 12-14) with the public API only: the
onion transport's methods, ``TLSLayer``, the errors, ``onion_tls.testing``
and the streams.  Peers that do what a correct stack refuses (close_notify
followed by raw bytes, renegotiation, a flipped bit) are driven by hand:
``ManualTLS`` (an ``ssl.SSLObject``) from helpers, or :class:`RawTLS` (a
pyOpenSSL ``Connection``) below.

Memory bounds are measured black-box: the bytes the pipe delivered to the
victim minus the bytes the victim application received.  A victim that
pauses its socket stops the pipe (and a real socket) from delivering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from OpenSSL import SSL

import onion_tls
from onion_tls import (
    HandshakeError,
    LayerStateError,
    OnionError,
    OnionProtocol,
    StreamWriter,
    TLSLayer,
    TLSProtocolError,
    TLSTimeoutError,
    TruncatedError,
)
from onion_tls.testing import ENGINES, Engine, OnionCA, stream_pair

from .helpers import (
    WAIT,
    ManualTLS,
    Pair,
    RawTLS,
    Recorder,
    connect,
    settle,
    start_layer,
    until,
)

DEPTHS = (1, 2, 3)
#: "About the read high-water mark": 1 MiB plus one chunk of slack.
HELD_LIMIT = (1 << 20) + (256 << 10)
#: How much a flooding peer sends (16 x the bound).
FLOOD = 16 << 20
PIECE = 64 << 10


# -- small tools -----------------------------------------------------------------


async def push(pair: Pair, ca: OnionCA, upto: int, engine: Engine, **kw: Any) -> None:
    """Layers 1..upto, the pair's client is the TLS client of each;
    ``kw`` (e.g. a shutdown timeout) goes to both sides' start_tls."""
    for d in range(1, upto + 1):
        if not kw:
            await start_layer(pair, ca, d, client_engine=engine, server_engine=engine)
            continue
        fs = pair.server.start_tls(ca.server_context(d, engine), server_side=True, **kw)
        fc = pair.client.start_tls(ca.client_context(engine), server_hostname=ca.hostname(d), **kw)
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)


async def lost_within(rec: Recorder, seconds: float) -> BaseException | None:
    """connection_lost within ``seconds`` (else a readable failure)."""
    try:
        async with asyncio.timeout(seconds):
            while not rec.lost:
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(
            f"no connection_lost within {seconds} s; events={rec.summary()[-8:]}"
        ) from None
    return rec.lost[0]


def received(rec: Recorder) -> int:
    """Every byte the application was given so far."""
    return sum(len(c) for c in rec.chunks)


def pattern(n: int) -> bytes:
    """``n`` bytes in which any reordering or loss shows."""
    return os.urandom(n)


def retrieve(*futs: asyncio.Future[Any]) -> None:
    """Mark futures' exceptions retrieved (they may fail as a side effect)."""
    for f in futs:
        if f.done() and not f.cancelled():
            f.exception()


def check_onion_error(exc: BaseException | None, depth: int | None = None) -> OnionError:
    assert isinstance(exc, OnionError), repr(exc)
    assert exc.depth is not None, repr(exc)
    if depth is not None:
        assert exc.depth == depth, repr(exc)
        assert f"TLS layer {depth}" in str(exc)
    return exc


class Flood:
    """A peer application writing ``total`` bytes in pieces, ignoring flow
    control, while it keeps the peak of what the victim holds."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        data: bytes,
        delivered: Callable[[], int],
        got: Callable[[], int],
    ) -> None:
        self.write = write
        self.data = data
        self.delivered = delivered
        self.got = got
        self.base = delivered() - got()
        self.peak = 0

    def held(self) -> int:
        return self.delivered() - self.got() - self.base

    def sample(self) -> None:
        self.peak = max(self.peak, self.held())

    async def run(self) -> None:
        view = memoryview(self.data)
        for i in range(0, len(view), PIECE):
            self.write(bytes(view[i : i + PIECE]))
            if (i // PIECE) % 4 == 3:
                await asyncio.sleep(0)
                self.sample()
        await self.quiet()

    async def quiet(self) -> None:
        """Until the pipe stops moving bytes (delivered all, or stalled)."""
        last, same = -1, 0
        while same < 3:
            await asyncio.sleep(0.02)
            self.sample()
            now = self.delivered()
            same = same + 1 if now == last else 0
            last = now


class Tapped(OnionProtocol):
    """An OnionProtocol that keeps its raw transport (to pause the socket of
    a peer that stops reading)."""

    raw: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        super().connection_made(transport)


async def tapped_loopback_pair() -> tuple[Pair, Tapped]:
    """A loopback pair whose client OnionProtocol is :class:`Tapped`."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[OnionProtocol] = loop.create_future()

    def server_side() -> OnionProtocol:
        onion = OnionProtocol(Recorder())
        accepted.set_result(onion)
        return onion

    listener = await loop.create_server(server_side, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(lambda: Tapped(Recorder()), "127.0.0.1", port)
    server = await asyncio.wait_for(accepted, WAIT)
    pair = Pair("loopback", None, client, server, listener)
    await pair.s.wait_for(lambda: pair.s.made, "server connection_made")
    return pair, client


def reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport``'s socket with SO_LINGER 0: the peer gets a RST."""
    sock = transport.get_extra_info("socket")
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- 1. order across a pop ---------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_held_writes_leave_before_answers_to_bytes_after_the_pop(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 1: writes keep their order across a pop.

    The server writes A in layer N, stop_tls(), writes B (held).  The
    client answers the close_notify with stop_tls() and writes X beneath;
    its close_notify and X reach the server in ONE read, and the server
    answers X with C from data_received.  The client gets A at depth N,
    then B, then C beneath (B before C)."""
    async with connect("memory", coalesce=True) as pair:
        pipe = pair.pipe
        assert pipe is not None
        await push(pair, onion_ca, depth, engine)
        await settle()
        pipe.auto = False
        await settle()  # any pump already scheduled has run

        client_stops: list[asyncio.Future[TLSLayer]] = []

        def client_on_eof() -> None:
            client_stops.append(pair.client.stop_tls())
            pair.client.write(b"X")
            pair.c.eof_result = True

        def server_on_data(data: bytes) -> None:
            if b"X" in data and len(pair.server.layers) == depth - 1:
                pair.server.write(b"C")

        pair.c.on_eof = client_on_eof
        pair.s.on_data = server_on_data

        pair.server.write(b"A")
        fs = pair.server.stop_tls()
        pair.server.write(b"B")
        assert pipe.step(pipe.b)  # A + close_notify, one read
        await settle()
        assert client_stops, "the client saw the close_notify"
        assert pipe.step(pipe.a)  # the client's close_notify + X, one read
        await settle()
        pipe.auto = True
        pipe.pump()
        assert (await asyncio.wait_for(fs, WAIT)).depth == depth
        assert (await asyncio.wait_for(client_stops[0], WAIT)).depth == depth
        await pair.c.wait_for(lambda: len(pair.c.data) >= 3, "A, B and C")
        assert pair.c.received_at(depth) == b"A"
        assert pair.c.received_at(depth - 1) == b"BC", "B must arrive before C"
        assert pair.s.received_at(depth - 1) == b"X"


# -- 2. bounded while a stop is pending --------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_pending_stop_with_paused_reading_holds_a_bounded_backlog(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 2: the victim paused reading and called stop_tls(timeout=1);
    the peer floods application data in the layer and never answers.  The
    victim holds at most about 1 MiB, and the stop still ends by its own
    timeout with TLSTimeoutError at depth N; connection_lost gets an
    OnionError."""
    async with connect("memory") as pair:
        pipe = pair.pipe
        assert pipe is not None
        await push(pair, onion_ca, depth, engine)
        victim, peer = pair.s, pair.c
        peer.eof_result = True  # keeps the layer open, never answers
        loop = asyncio.get_running_loop()
        pair.server.pause_reading()
        t0 = loop.time()
        fut = pair.server.stop_tls(timeout=1.0)
        flood = Flood(pair.client.write, pattern(FLOOD), lambda: len(pipe.sent["a"]), lambda: 0)
        await flood.run()
        assert flood.peak <= HELD_LIMIT, f"victim held {flood.peak} bytes"
        with pytest.raises(TLSTimeoutError) as info:
            await asyncio.wait_for(fut, WAIT)
        elapsed = loop.time() - t0
        check_onion_error(info.value, depth)
        assert isinstance(info.value, TimeoutError)
        assert 0.9 <= elapsed < 5.0, elapsed
        check_onion_error(await victim.wait_lost())
        assert victim.lost[0] is info.value or isinstance(victim.lost[0], OnionError)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_pending_stop_with_paused_reading_delivers_everything_on_resume(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 2 (second variant): the same flood is bounded while the app
    is paused; when it resumes reading, every byte is delivered in order
    inside the layer, and the pop completes once the peer answers."""
    async with connect("memory") as pair:
        pipe = pair.pipe
        assert pipe is not None
        await push(pair, onion_ca, depth, engine)
        victim, peer = pair.s, pair.c
        peer.eof_result = True
        pair.server.pause_reading()
        fut = pair.server.stop_tls(timeout=30.0)
        data = pattern(4 << 20)
        flood = Flood(
            pair.client.write, data, lambda: len(pipe.sent["a"]), lambda: received(victim)
        )
        await flood.run()
        assert flood.peak <= HELD_LIMIT, f"victim held {flood.peak} bytes"
        await peer.wait_eof()
        answer = pair.client.stop_tls()  # the peer answers, after its flood
        pair.client.write(b"beneath")
        assert not fut.done()
        pair.server.resume_reading()
        assert (await asyncio.wait_for(fut, WAIT)).depth == depth
        assert (await asyncio.wait_for(answer, WAIT)).depth == depth
        await victim.wait_for(lambda: received(victim) >= len(data) + 7, "the flood")
        # In order, nothing lost.  (Which of the flood's bytes are delivered
        # before the pop, with N layers in `layers`, is left open: the app
        # was paused when the close_notify came.)
        assert bytes(victim.data) == data + b"beneath"
        assert victim.received_at(depth - 1).endswith(b"beneath")
        assert victim.received_at(depth) == data[: len(victim.received_at(depth))]
        assert len(pair.server.layers) == depth - 1
        assert not victim.lost


# -- 3. bounded behind a peer's close_notify -----------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_bytes_behind_a_peer_close_notify_are_bounded_then_all_delivered(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 3: the peer sends close_notify on layer N, then floods bytes
    that belong beneath; the victim's eof_received keeps the connection
    and does not decide.  It holds at most about 1 MiB; when it calls
    stop_tls() the pop happens and every byte (held and the rest) is
    delivered beneath, in order."""
    async with connect("memory") as pair:
        pipe = pair.pipe
        assert pipe is not None
        await push(pair, onion_ca, depth - 1, engine)
        victim = pair.c
        victim.eof_result = True
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
        )
        peer = ManualTLS(pair.s, onion_ca.server_context(depth, "stdlib"), server_side=True)
        await peer.handshake()
        assert (await asyncio.wait_for(fc, WAIT)).depth == depth
        pair.server.write(peer.encrypt(b"last inside") + peer.close_notify())
        await victim.wait_eof()
        await victim.expect(b"last inside")
        data = pattern(FLOOD)
        flood = Flood(
            pair.server.write, data, lambda: len(pipe.sent["b"]), lambda: received(victim)
        )
        await flood.run()
        assert flood.peak <= HELD_LIMIT, f"victim held {flood.peak} bytes"
        assert len(pair.client.layers) == depth  # undecided: the layer stays
        popped = await asyncio.wait_for(pair.client.stop_tls(), WAIT)
        assert popped.depth == depth
        await victim.wait_for(lambda: len(victim.received_at(depth - 1)) >= len(data), "flood")
        assert victim.received_at(depth - 1) == data
        assert not victim.lost


# -- 4. close() is bounded in time ---------------------------------------------------


@pytest.mark.parametrize("keyword", ["ssl_shutdown_timeout", "shutdown_timeout"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("kind", ["memory", "loopback"])
async def test_close_towards_a_peer_that_does_not_read_ends_by_the_shutdown_timeout(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine, keyword: str
) -> None:
    """Defect 4: close() is bounded.  The victim (layers 1..N, the
    innermost with a 0.5 s shutdown timeout, the others the 30 s default)
    writes a lot towards a peer that stopped reading, then close():
    connection_lost comes well within 5 s, with a TLSTimeoutError."""
    if kind == "memory":
        cm: Any = connect("memory")
    else:
        cm = contextlib.AsyncExitStack()
    async with cm as pair_or_stack:
        if kind == "memory":
            pair = pair_or_stack
            assert pair.pipe is not None
            stop_peer_reading: Callable[[], None] = pair.pipe.a.pause_reading
            size = 4 << 20
        else:
            pair, tapped = await tapped_loopback_pair()
            pair_or_stack.push_async_callback(pair.teardown)
            stop_peer_reading = tapped.raw.pause_reading
            size = 32 << 20
        await push(pair, onion_ca, depth - 1, engine)
        await push_one(pair, onion_ca, depth, engine, **{keyword: 0.5})
        stop_peer_reading()
        await asyncio.sleep(0.05)
        victim = pair.s
        loop = asyncio.get_running_loop()
        pair.server.write(b"\0" * size)
        t0 = loop.time()
        pair.server.close()
        exc = await lost_within(victim, 4.0)
        elapsed = loop.time() - t0
        assert elapsed < 3.0, elapsed
        assert isinstance(exc, TLSTimeoutError), repr(exc)


async def push_one(pair: Pair, ca: OnionCA, depth: int, engine: Engine, **kw: Any) -> None:
    fs = pair.server.start_tls(ca.server_context(depth, engine), server_side=True, **kw)
    fc = pair.client.start_tls(ca.client_context(engine), server_hostname=ca.hostname(depth), **kw)
    await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)


# -- 5. close() during a handshake --------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("kind", ["memory", "loopback"])
async def test_close_during_a_handshake_ends_promptly(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine
) -> None:
    """Defect 5: start_tls() towards a peer that never answers
    (handshake_timeout=60), then close(): connection_lost within about a
    second, with None (the application asked); the start_tls future fails
    with HandshakeError naming the depth."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push(pair, onion_ca, depth - 1, engine)
        fut = pair.client.start_tls(
            onion_ca.client_context(engine),
            server_hostname=onion_ca.hostname(depth),
            handshake_timeout=60,
        )
        await pair.s.wait_for(
            lambda: pair.s.received_at(depth - 1).startswith(b"\x16\x03"), "the ClientHello"
        )
        pair.client.close()
        try:
            exc = await lost_within(pair.c, 1.5)
        finally:
            retrieve(fut)
        assert exc is None, repr(exc)
        assert fut.done()
        with pytest.raises(HandshakeError) as info:
            fut.result()
        check_onion_error(info.value, depth)


# -- 6. start_tls() after the peer's TCP EOF ---------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["memory", "loopback"])
async def test_start_tls_after_the_peer_eof_fails_at_once(
    onion_ca: OnionCA, kind: str, engine: Engine
) -> None:
    """Defect 6: in plaintext the peer sent its TCP EOF (write_eof) and
    eof_received kept the connection; start_tls(handshake_timeout=None)
    fails at once with HandshakeError, and connection_lost follows with an
    OnionError."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        pair.c.eof_result = True
        pair.server.write_eof()
        await pair.c.wait_eof()
        fut = pair.client.start_tls(
            onion_ca.client_context(engine),
            server_hostname=onion_ca.hostname(1),
            handshake_timeout=None,
        )
        try:
            async with asyncio.timeout(1.5):
                with pytest.raises(HandshakeError) as info:
                    await fut
        except TimeoutError:
            raise AssertionError("start_tls() after the peer's EOF did not fail at once") from None
        check_onion_error(info.value, 1)
        check_onion_error(await lost_within(pair.c, 1.5))


# -- 7. a clean close answered with stop_tls() -------------------------------------


def answer_each_eof_with_stop(rec: Recorder, stops: list[asyncio.Future[TLSLayer]]) -> None:
    def on_eof() -> None:
        if rec.transport.layers:
            stops.append(rec.transport.stop_tls())
            rec.eof_result = True
        else:
            rec.eof_result = False  # the plaintext EOF: close

    rec.on_eof = on_eof


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_clean_close_answered_with_stop_tls_is_clean_over_loopback(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 7: A calls close() (close_notify on every layer, then FIN);
    B answers each EOF with stop_tls() (and closes at the plaintext EOF).
    B's answers may meet A's closed socket; B still gets
    connection_lost(None), never ConnectionResetError/BrokenPipeError.
    20 runs: it is a race with the RST."""
    for _ in range(20):
        async with connect("loopback") as pair:
            await push(pair, onion_ca, depth, engine)
            stops: list[asyncio.Future[TLSLayer]] = []
            answer_each_eof_with_stop(pair.c, stops)
            pair.server.write(b"bye")
            pair.server.close()
            exc = await pair.c.wait_lost()
            retrieve(*stops)
            assert exc is None, repr(exc)
            assert bytes(pair.c.data) == b"bye"
            assert len(stops) == depth
            for d, f in zip(range(depth, 0, -1), stops, strict=True):
                assert f.done() and f.exception() is None, f
                assert f.result().depth == d
            assert await pair.s.wait_lost() is None


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", DEPTHS)
async def test_clean_close_answered_with_stop_tls_is_clean_with_streams(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 7 (streams, loopback): the server closes a connection of N
    layers; after each `await writer.stop_tls()` the client's read()
    returns b"" (the next layer's EOF, then the TCP EOF), never an error.
    20 runs."""
    tasks: list[asyncio.Task[Any]] = []

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            for d in range(2, depth + 1):
                writer.write(b"UP\n")
                await writer.start_tls(onion_ca.server_context(d, engine), server_side=True)
            writer.write(b"bye")
        finally:
            writer.close()

    server = await onion_tls.start_server(
        handler, "127.0.0.1", 0, ssl=onion_ca.server_context(1, engine)
    )
    port = server.sockets[0].getsockname()[1]
    try:
        for _ in range(20):
            reader, writer = await onion_tls.open_connection(
                "127.0.0.1",
                port,
                ssl=onion_ca.client_context(engine),
                server_hostname=onion_ca.hostname(1),
            )
            try:
                for d in range(2, depth + 1):
                    assert await asyncio.wait_for(reader.readline(), WAIT) == b"UP\n"
                    await writer.start_tls(
                        onion_ca.client_context(engine), server_hostname=onion_ca.hostname(d)
                    )
                assert await asyncio.wait_for(reader.read(), WAIT) == b"bye"
                for d in range(depth, 0, -1):
                    popped = await asyncio.wait_for(writer.stop_tls(), WAIT)
                    assert popped.depth == d
                    assert await asyncio.wait_for(reader.read(), WAIT) == b""
                assert writer.layers == ()
            finally:
                writer.close()
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.gather(*tasks)


# -- 8. cancelling a waiter ------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
async def test_stop_tls_refused_after_close_keeps_the_pending_pop(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """A stop is pending, then close(): a later stop_tls() is refused
    (LayerStateError) without losing the pending pop; its future still
    ends (here with the popped layer, once the peer answers), nothing
    hangs."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth, engine)
        pair.s.eof_result = True  # the peer answers later, by hand
        first = pair.client.stop_tls()
        await pair.s.wait_eof()
        pair.client.close()
        with pytest.raises(LayerStateError):
            pair.client.stop_tls()
        assert not first.done()
        pair.server.stop_tls()
        popped = await asyncio.wait_for(first, WAIT)
        assert popped.depth == depth
        assert await pair.c.wait_lost() is None


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
async def test_cancelling_a_stop_tls_waiter_does_not_cancel_the_pop(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 8: the task awaiting stop_tls() is cancelled; a second
    stop_tls() gives a new future (not the cancelled one) that resolves
    with the popped layer once the peer answers."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth, engine)
        pair.s.eof_result = True  # the peer answers later
        firsts: list[asyncio.Future[TLSLayer]] = []

        async def waiter() -> TLSLayer:
            f = pair.client.stop_tls()
            firsts.append(f)
            return await f

        task = asyncio.ensure_future(waiter())
        await pair.s.wait_eof()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = pair.client.stop_tls()
        assert again is not firsts[0]
        assert not again.cancelled() and not again.done()
        assert len(pair.client.layers) == depth
        theirs = pair.server.stop_tls()
        popped = await asyncio.wait_for(again, WAIT)
        assert popped.depth == depth
        assert (await asyncio.wait_for(theirs, WAIT)).depth == depth
        assert len(pair.client.layers) == len(pair.server.layers) == depth - 1
        pair.client.write(b"beneath")
        await pair.s.wait_for(lambda: pair.s.received_at(depth - 1) == b"beneath", "beneath")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
async def test_cancelling_a_start_tls_waiter_does_not_cancel_the_handshake(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 8 (start_tls): the task awaiting start_tls() is cancelled;
    the handshake still completes and data flows inside the layer."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth - 1, engine)

        async def waiter() -> TLSLayer:
            return await pair.client.start_tls(
                onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
            )

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the task now awaits the future
        fs = pair.server.start_tls(onion_ca.server_context(depth, engine), server_side=True)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await asyncio.wait_for(fs, WAIT)).depth == depth
        assert len(pair.client.layers) == depth
        await until(lambda: pair.client.layers[-1].version is not None, "the client handshake")
        pair.client.write(b"inside")
        pair.server.write(b"back")
        await pair.s.wait_for(lambda: pair.s.received_at(depth) == b"inside", "inside")
        await pair.c.wait_for(lambda: pair.c.received_at(depth) == b"back", "back")
        assert not pair.c.lost and not pair.s.lost


@pytest.mark.parametrize("engine", ENGINES)
async def test_cancelling_a_streams_stop_tls_waiter_does_not_cancel_the_pop(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """Defect 8 (streams): the task awaiting writer.stop_tls() is
    cancelled; a second writer.stop_tls() resolves once the peer answers,
    and the reader goes on with the bytes beneath."""
    async with stream_pair() as pair:
        (cr, cw), (sr, sw) = pair.client, pair.server
        await pair.start_tls(onion_ca, engine=engine)
        task = asyncio.ensure_future(cw.stop_tls())
        assert await asyncio.wait_for(sr.read(), WAIT) == b""  # our close_notify came
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = cw.stop_tls()
        assert not again.cancelled()
        theirs = sw.stop_tls()
        assert (await asyncio.wait_for(again, WAIT)).depth == 1
        assert (await asyncio.wait_for(theirs, WAIT)).depth == 1
        assert cw.layers == sw.layers == ()
        sw.write(b"beneath\n")
        assert await asyncio.wait_for(cr.readline(), WAIT) == b"beneath\n"


# -- 9. close_notify beneath a handshaking layer -----------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [2, 3])
async def test_close_notify_beneath_a_handshaking_layer_is_a_handshake_error(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 9: the peer's close_notify on layer N-1 while layer N is
    handshaking fails layer N's start_tls future with HandshakeError at
    depth N (not TruncatedError)."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth - 1, engine)
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(depth)
        )
        await pair.s.wait_for(
            lambda: pair.s.received_at(depth - 1).startswith(b"\x16\x03"), "the ClientHello"
        )
        pair.s.eof_result = True
        fs = pair.server.stop_tls()
        try:
            with pytest.raises(OnionError) as info:
                await asyncio.wait_for(fc, WAIT)
        finally:
            await pair.c.wait_lost()
            pair.server.abort()
            await pair.s.wait_lost()
            retrieve(fs)
        assert isinstance(info.value, HandshakeError), repr(info.value)
        check_onion_error(info.value, depth)


# -- 10. a flipped bit has a reason in words ---------------------------------------


@pytest.mark.parametrize(
    "exc",
    [SSL.Error([]), SSL.Error(), SSL.Error([("SSL routines", "", "")])],
    ids=["empty-queue", "no-args", "no-reason"],
)
def test_an_openssl_error_without_reason_is_still_said_in_words(exc: SSL.Error) -> None:
    """Defect 10: pyOpenSSL raises ``SSL.Error([])`` when OpenSSL failed with
    an empty error queue; the layer's error must still say what happened in
    words, never ``[]``."""
    from onion_tls._pyopenssl import ssl_error_text

    text, alert = ssl_error_text(exc)
    assert "[]" not in text and not alert
    assert "refused the peer's data" in text
    err = onion_tls.TLSProtocolError(text, depth=2)
    assert str(err).startswith("TLS layer 2 (depth 2): the TLS engine refused")


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
@pytest.mark.parametrize("depth", DEPTHS)
async def test_flipped_bit_at_a_pyopenssl_layer_names_a_reason(
    onion_ca: OnionCA, depth: int, version: str
) -> None:
    """Defect 10: a bit flipped in a record at a pyOpenSSL layer gives an
    error whose message states the reason in words (not "[]")."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth - 1, "pyopenssl")
        fc = pair.client.start_tls(
            onion_ca.client_context("pyopenssl", version=version),
            server_hostname=onion_ca.hostname(depth),
        )
        peer = ManualTLS(
            pair.s, onion_ca.server_context(depth, "stdlib", version=version), server_side=True
        )
        await peer.handshake()
        layer = await asyncio.wait_for(fc, WAIT)
        assert (layer.engine, layer.version) == ("pyopenssl", version)
        pair.server.write(peer.encrypt(b"good"))
        await pair.c.expect(b"good")
        record = bytearray(peer.encrypt(b"this record is damaged on the way" * 4))
        record[-3] ^= 0x10  # in the AEAD tag of the (only) record
        pair.server.write(bytes(record))
        exc = check_onion_error(await pair.c.wait_lost(), depth)
        assert isinstance(exc, TLSProtocolError), repr(exc)
        text = str(exc)
        prefix = f"TLS layer {depth} (depth {depth}): "
        assert text.startswith(prefix), text
        reason = text[len(prefix) :]
        assert "[]" not in text, text
        assert any(ch.isalpha() for ch in reason), text
        assert any(w in text.lower() for w in ("bad record mac", "decrypt")), text


# -- 11. streams keep verified data on truncation -----------------------------------


RESPONSE = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"".join(
    b"line %05d of the body\n" % i for i in range(2000)
)


class TruncatingServer(asyncio.Protocol):
    """asyncio's own TLS server that answers a request with RESPONSE and
    then drops the TCP connection without close_notify (http.server style:
    the socket is closed, not unwrapped)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf and self.transport is not None:
            self.transport.write(RESPONSE)
            # the bytes are with the kernel by now; then a bare FIN
            asyncio.get_running_loop().call_later(0.05, self.transport.abort)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def verified(read: Awaitable[bytes]) -> bytes:
    """A read of data that was received and verified: it must not raise."""
    try:
        return await asyncio.wait_for(read, WAIT)
    except TruncatedError as exc:
        raise AssertionError(f"data received before the truncation was lost: {exc}") from None


@pytest.mark.parametrize("how", ["read-n", "readline-readexactly", "read-all"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_streams_deliver_verified_data_before_the_truncation_error(
    onion_ca: OnionCA, engine: Engine, how: str
) -> None:
    """Defect 11: a TLS server sends a whole response and closes TCP
    without close_notify.  The onion_tls reader returns all of it
    (read(n), readline(), readexactly(), read()); TruncatedError is raised
    only where a clean EOF would be."""
    loop = asyncio.get_running_loop()
    protos: list[TruncatingServer] = []

    def factory() -> TruncatingServer:
        protos.append(TruncatingServer())
        return protos[-1]

    server = await loop.create_server(
        factory, "127.0.0.1", 0, ssl=onion_ca.server_context(1, "stdlib")
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await onion_tls.open_connection(
        "127.0.0.1",
        port,
        ssl=onion_ca.client_context(engine),
        server_hostname=onion_ca.hostname(1),
    )
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await until(lambda: bool(protos) and protos[0].closed.done(), "the server's close")
        await asyncio.sleep(0.05)  # the FIN has reached the client
        if how == "read-n":
            got = bytearray()
            while len(got) < len(RESPONSE):
                chunk = await verified(reader.read(1000))
                assert chunk, "read(n) returned b'' before the response was complete"
                got += chunk
            assert bytes(got) == RESPONSE
            with pytest.raises(TruncatedError):
                await asyncio.wait_for(reader.read(1000), WAIT)
        elif how == "readline-readexactly":
            head, body = RESPONSE.split(b"\r\n\r\n", 1)
            first = await verified(reader.readline())
            assert first == b"HTTP/1.0 200 OK\r\n"
            rest_of_head = (head + b"\r\n\r\n")[len(first) :]
            assert await verified(reader.readexactly(len(rest_of_head))) == rest_of_head
            assert await verified(reader.readexactly(len(body))) == body
            with pytest.raises(TruncatedError):
                await asyncio.wait_for(reader.readexactly(1), WAIT)
        else:
            assert await verified(reader.read()) == RESPONSE
            with pytest.raises(TruncatedError):
                await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(OnionError, ConnectionError):
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


# -- 12. TLS 1.2 renegotiation ---------------------------------------------------------


def only_onion_errors(*recs: Recorder) -> None:
    for rec in recs:
        for exc in rec.lost:
            if exc is not None:
                check_onion_error(exc)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
async def test_client_layer_accepts_a_server_renegotiation(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 12 (client role): a TLS 1.2 server renegotiates; a client
    layer of either engine accepts, data flows both ways after it, and
    close() is clean on both sides (no "shutdown while in init")."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth - 1, engine)
        victim, hostile = pair.c, pair.s
        fc = pair.client.start_tls(
            onion_ca.client_context(engine, version="TLSv1.2"),
            server_hostname=onion_ca.hostname(depth),
        )
        raw = RawTLS(
            pair.server,
            onion_ca.server_context(depth, "pyopenssl", version="TLSv1.2"),
            server_side=True,
        )
        hostile.on_data = raw.feed
        layer = await asyncio.wait_for(fc, WAIT)
        assert layer.version == "TLSv1.2"
        raw.send(b"before;")
        await victim.expect(b"before;")
        assert raw.conn.renegotiate()
        raw.pump()  # the HelloRequest
        await until(
            lambda: (
                raw.error is not None or bool(victim.lost) or not raw.conn.renegotiate_pending()
            ),
            "the renegotiation",
        )
        only_onion_errors(victim)
        assert raw.error is None, raw.error
        assert not victim.lost, victim.lost
        assert raw.conn.total_renegotiations() == 1
        raw.send(b"after;")
        pair.client.write(b"from the client")
        await victim.expect(b"after;")
        await until(lambda: bytes(raw.plain) == b"from the client", "the client's data")
        pair.client.close()
        await until(lambda: raw.peer_closed or raw.error is not None, "our close_notify")
        assert raw.error is None, raw.error
        assert await victim.wait_lost() is None
        only_onion_errors(victim, hostile)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("depth", [1, 2])
async def test_server_layer_refuses_a_client_renegotiation(
    onion_ca: OnionCA, engine: Engine, depth: int
) -> None:
    """Defect 12 (server role): a TLS 1.2 client renegotiates; a server
    layer of either engine refuses, and the layer fails with an OnionError
    (TLSProtocolError) at its depth; nothing else reaches connection_lost."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, depth - 1, engine)
        victim, hostile = pair.c, pair.s
        fv = pair.client.start_tls(
            onion_ca.server_context(depth, engine, version="TLSv1.2"), server_side=True
        )
        raw = RawTLS(
            pair.server,
            onion_ca.client_context("pyopenssl", version="TLSv1.2"),
            server_side=False,
        )
        raw.conn.set_tlsext_host_name(onion_ca.hostname(depth).encode())
        hostile.on_data = raw.feed
        raw.pump()  # the ClientHello
        await asyncio.wait_for(fv, WAIT)
        raw.send(b"before;")
        await victim.expect(b"before;")
        assert raw.conn.renegotiate()
        raw.pump()  # a new ClientHello
        exc = await victim.wait_lost()
        assert isinstance(exc, TLSProtocolError), repr(exc)
        check_onion_error(exc, depth)
        only_onion_errors(victim, hostile)


# -- 13. writes after close() --------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 1, 2])
async def test_writes_after_close_are_dropped_with_a_warning(
    onion_ca: OnionCA, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 13: writes after close() are dropped without an exception;
    after 5 of them a WARNING is logged under the onion_tls logger (as
    asyncio's SSL transport does)."""
    caplog.set_level(logging.WARNING, logger="onion_tls")

    def warnings() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name.startswith("onion_tls") and r.levelno >= logging.WARNING
        ]

    async with connect("memory") as pair:
        await push(pair, onion_ca, depth, "pyopenssl")
        pair.s.eof_result = False
        pair.client.write(b"last;")
        pair.client.close()
        before = len(warnings())
        pair.client.write(b"dropped 1")
        assert len(warnings()) == before, "one write after close() is not warned about"
        for i in range(2, 7):
            pair.client.write(b"dropped %d" % i)
        pair.client.writelines([b"dropped", b" 7"])
        assert len(warnings()) > before, "no warning after 7 writes after close()"
        assert await pair.c.wait_lost() is None
        for _ in range(3):
            pair.client.write(b"after connection_lost")  # no exception either
        await pair.s.wait_lost()
        assert b"dropped" not in bytes(pair.s.data)
        assert bytes(pair.s.data) == b"last;"


# -- 14. a reset socket under a TLS layer --------------------------------------------


RESET_CASES = [
    pytest.param(depth, engine, when, id=f"{depth}-{engine}-{when}")
    for depth in (1, 2, 3)
    for engine in ENGINES
    for when in ("mid-data", "mid-shutdown")
] + [pytest.param(0, "pyopenssl", "mid-data", id="plaintext")]  # no layer, no engine


@pytest.mark.parametrize(("depth", "engine", "when"), RESET_CASES)
@pytest.mark.parametrize("kind", ["loopback", "memory"])
async def test_reset_under_a_layer_is_an_onion_error_with_the_cause(
    onion_ca: OnionCA, kind: str, depth: int, engine: Engine, when: str
) -> None:
    """Defect 14: the peer's socket resets (SO_LINGER 0).  Under a TLS
    layer, connection_lost gets an OnionError at the innermost depth whose
    __cause__ is the ConnectionResetError; in plaintext it stays a bare
    ConnectionResetError, as asyncio gives it."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        await push(pair, onion_ca, depth, engine)
        stop: asyncio.Future[TLSLayer] | None = None
        if when == "mid-data":
            pair.server.write(b"data")
            await pair.c.expect(b"data")
            pair.client.write(b"in flight")
        else:
            pair.s.eof_result = True  # the peer never answers
            stop = pair.client.stop_tls()
            await pair.s.wait_eof()
        if kind == "loopback":
            reset(pair.server)
        else:
            pair.server.abort()  # the memory pipe gives the peer a reset
        exc = await pair.c.wait_lost()
        if stop is not None:
            await asyncio.wait([stop], timeout=WAIT)
            retrieve(stop)
        if depth == 0:
            assert isinstance(exc, ConnectionResetError), repr(exc)
            assert not isinstance(exc, OnionError)
            return
        err = check_onion_error(exc, depth)
        assert isinstance(err.__cause__, ConnectionResetError), repr(err.__cause__)
        if stop is not None:
            assert stop.done() and not stop.cancelled()
            check_onion_error(stop.exception(), depth)
