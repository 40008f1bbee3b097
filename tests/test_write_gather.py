"""Gathering of small writes (layers only).

With at least one TLS layer, the first application write of a turn of the
event loop is encrypted and handed to the socket transport at once; smaller
writes (< 32 KiB) that follow it in the same turn wait in a gather buffer and
are encrypted together at the end of the turn, or at once when 64 KiB wait
or when the total buffered on the connection would pass the high-water mark.
These tests pin down, with real handshakes on both engines:

* a lone write is on the wire before ``write()`` returns; later small writes
  of the turn leave together, in few records, in order;
* gathered bytes go out in the layer that was current when they were written
  (``start_tls``, ``stop_tls``, ``close``, ``write_eof``); ``abort`` drops them;
* ``get_write_buffer_size`` counts them and ``pause_writing`` fires as if
  nothing waited; ``high=0`` gathers nothing;
* sizes around the 32 KiB / 64 KiB limits, mixed types, an echo app writing
  from ``data_received``, and plaintext (nothing is ever gathered).

The memory pipe is held still (``pipe.auto = False``) where a test looks at
what the socket transport holds; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterable
from typing import Any

import pytest

from onion_tls import LayerStateError, OnionProtocol, OnionTransport, TLSLayer, TLSProtocolError
from onion_tls._gather import GATHER_MAX, GATHER_SMALL
from onion_tls.testing import Engine, MemoryPipe, MemoryTransport, OnionCA

from .helpers import WAIT, Pair, Recorder, connect, settle, start_layer

KiB = 1024
# The most plaintext one TLS record carries.
RECORD = 2**14
APPLICATION_DATA = 23


# -- helpers -------------------------------------------------------------------


def pattern(tag: bytes, size: int) -> bytes:
    """``size`` bytes in which every 16-byte block names its tag and offset,
    so a lost, repeated or swapped piece shows in a comparison."""
    body = 16 - len(tag) - 1
    blocks = (b"%s%0*d;" % (tag, body, off) for off in range(0, size + 16, 16))
    return b"".join(blocks)[:size]


def assert_same(got: bytes | bytearray, want: bytes, what: str) -> None:
    if got == want:
        return
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    raise AssertionError(
        f"{what}: got {len(got)} bytes, want {len(want)}; first difference at "
        f"offset {i}: got {bytes(got[i : i + 32])!r}, want {want[i : i + 32]!r}"
    )


def wire(end: MemoryTransport) -> bytes:
    """Everything ``end`` was given to send: moved across the pipe already,
    then still in its buffer."""
    return bytes(end.pipe.sent[end.name]) + b"".join(end.outgoing)


def records(data: bytes) -> list[tuple[int, int]]:
    """(content type, body length) of each TLS record in ``data``, which
    must hold whole records only."""
    out = []
    pos = 0
    while pos < len(data):
        assert pos + 5 <= len(data), f"a partial record header at offset {pos}"
        ctype, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        assert major == 3, f"not a TLS record header at offset {pos}: {data[pos : pos + 5]!r}"
        pos += 5 + length
        assert pos <= len(data), "a partial record on the wire"
        out.append((ctype, length))
    return out


async def push(pair: Pair, ca: OnionCA, engine: Engine, depth: int) -> None:
    """Push ``depth`` layers (the client application is the TLS client) and
    let every post-handshake message (tickets) cross."""
    for d in range(1, depth + 1):
        lc, ls = await start_layer(pair, ca, d, client_engine=engine, server_engine=engine)
        assert lc.depth == ls.depth == d and lc.version is not None
    await settle()


def hold(pair: Pair) -> MemoryPipe:
    """Stop the pipe: what is written stays in the socket transports."""
    pipe = pair.pipe
    assert pipe is not None
    pipe.auto = False
    assert not pipe.a.outgoing and not pipe.b.outgoing, "bytes still in flight"
    return pipe


def release(pipe: MemoryPipe) -> None:
    pipe.auto = True
    pipe.kick()


def flow_events(rec: Recorder) -> list[str]:
    return [ev[0] for ev in rec.events if ev[0] in ("pause_writing", "resume_writing")]


def sides(pair: Pair, who: str) -> tuple[OnionTransport, OnionProtocol, Recorder, Recorder]:
    """(writer's transport, writer's onion, writer's recorder, peer's recorder)."""
    if who == "client":
        return pair.client, pair.client_onion, pair.c, pair.s
    return pair.server, pair.server_onion, pair.s, pair.c


async def all_of(*aws: Any) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*aws), WAIT)


# -- 1. a lone write leaves at once ----------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
async def test_lone_small_write_is_on_the_wire_before_write_returns(
    onion_ca: OnionCA, onion_engine: Engine, depth: int
) -> None:
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pipe = hold(pair)
        for turn in range(3):
            before = len(wire(pipe.a))
            msg = b"lone write #%d" % turn
            pair.client.write(msg)
            # no loop turn yet: the record is in the socket transport already
            new = wire(pipe.a)[before:]
            assert records(new) == [(APPLICATION_DATA, len(new) - 5)]
            assert pair.client_onion.gathered_size() == 0
            assert pair.client.get_write_buffer_size() == pipe.a.get_write_buffer_size()
            # a new turn: the next turn's first write goes at once as well
            await settle(2)
        release(pipe)
        want = b"".join(b"lone write #%d" % t for t in range(3))
        await pair.s.expect(want)
        assert pair.s.received_at(depth) == want


@pytest.mark.parametrize("depth", [1, 2])
async def test_answers_from_data_received_leave_when_it_returns(
    onion_ca: OnionCA, onion_engine: Engine, depth: int
) -> None:
    """What the application writes while it is handed data (three writes
    from data_received) leaves in one record of the innermost layer as soon
    as data_received returns: on the wire before any other turn of the loop
    (and before the next record is read), nothing left gathered, nothing
    reordered."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pieces = (b"answer one;", b"answer two;", b"answer three;")

        def answer(data: bytes) -> None:
            for piece in pieces:
                pair.server.write(piece)
            # still inside the delivery: gathered, counted as buffered
            assert pair.server_onion.gathered_size() == sum(map(len, pieces))
            assert pair.server.get_write_buffer_size() == sum(map(len, pieces))

        pair.s.on_data = answer
        pipe = hold(pair)
        before = len(wire(pipe.b))
        pair.client.write(b"question")
        assert pipe.step(pipe.a)  # delivers the question to the server, nothing else
        assert pair.s.data == b"question"
        new = wire(pipe.b)[before:]
        # one record of the outermost layer (carrying one of every inner layer)
        assert records(new) == [(APPLICATION_DATA, len(new) - 5)]
        assert pair.server_onion.gathered_size() == 0
        release(pipe)
        await pair.c.expect(b"".join(pieces))
        assert pair.c.received_at(depth) == b"".join(pieces)


# -- 2. small writes of one turn leave together ----------------------------------


@pytest.mark.parametrize("count", [40, 200])
@pytest.mark.parametrize("depth", [1, 2])
async def test_small_writes_in_one_turn_leave_together_in_few_records(
    onion_ca: OnionCA, onion_engine: Engine, depth: int, count: int
) -> None:
    """``count`` writes of 1 KiB in one turn: the first leaves at once, the
    others wait (the wire only grows when 64 KiB are waiting) and leave at
    the end of the turn, in few records, in order."""
    pieces = [pattern(b"w%d." % i, KiB) for i in range(count)]
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        # a high limit: only the size rules of gathering apply here
        pair.client.set_write_buffer_limits(high=16 * 1024 * 1024)
        pipe = hold(pair)
        onion = pair.client_onion
        before = len(wire(pipe.a))
        pair.client.write(pieces[0])
        first = wire(pipe.a)[before:]
        assert len(records(first)) == 1, "the first write did not leave at once"
        waiting = 0
        flushes = 0
        on_wire = len(first)
        for piece in pieces[1:]:
            pair.client.write(piece)
            waiting += len(piece)
            now = len(wire(pipe.a)) - before
            if waiting >= GATHER_MAX:
                # 64 KiB waited: they left at once, together
                flushes += 1
                waiting = 0
                assert now > on_wire, "64 KiB were gathered and did not leave"
                on_wire = now
            else:
                assert now == on_wire, "a gathered write reached the socket transport"
            assert onion.gathered_size() == waiting
        if count == 40:
            # below 64 KiB: right after the writes, only the first is on the wire
            assert wire(pipe.a)[before:] == first
        assert pair.client.get_write_buffer_size() == on_wire + waiting
        await asyncio.sleep(0)  # one turn of the loop
        assert onion.gathered_size() == 0
        flushes += 1
        recs = records(wire(pipe.a)[before:])
        assert all(ctype == APPLICATION_DATA for ctype, _ in recs)
        gathered = (count - 1) * KiB
        # one per write without gathering; full records (plus one partial
        # outer record per flush when nested) with it
        assert len(recs) <= 1 + math.ceil(gathered / RECORD) + flushes * (depth - 1) + 1
        if count == 40:
            assert len(recs) <= 8
        release(pipe)
        want = b"".join(pieces)
        got = await pair.s.read_exactly(len(want))
        assert_same(got, want, "what the server got")
        assert pair.s.received_at(depth) == want


async def test_gather_limits_32k_and_64k(onion_ca: OnionCA, onion_engine: Engine) -> None:
    """A write below 32 KiB waits, one of 32 KiB goes at once (after what
    waited); 64 KiB gathered leave at once."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, 1)
        pair.client.set_write_buffer_limits(high=16 * 1024 * 1024)
        pipe = hold(pair)
        onion = pair.client_onion
        seq = [
            (pattern(b"a", 100), 0),  # first of the turn: at once
            (pattern(b"b", GATHER_SMALL - 1), GATHER_SMALL - 1),  # waits
            (pattern(b"c", GATHER_SMALL), 0),  # flushes b, then goes itself
            (pattern(b"d", GATHER_SMALL - 1), GATHER_SMALL - 1),
            (pattern(b"e", GATHER_SMALL - 1), 2 * GATHER_SMALL - 2),
            (pattern(b"f", 2), 0),  # 64 KiB waiting: they leave
            (pattern(b"g", 5), 5),
        ]
        before = len(wire(pipe.a))
        sizes = []
        for data, waiting in seq:
            pair.client.write(data)
            assert onion.gathered_size() == waiting, data[:1]
            sizes.append(len(wire(pipe.a)) - before)
        # the wire grew exactly at a, c, f
        grew = [sizes[0] > 0] + [b > a for a, b in itertools.pairwise(sizes)]
        assert grew == [True, False, True, False, False, True, False]
        release(pipe)
        want = b"".join(data for data, _ in seq)
        assert_same(await pair.s.read_exactly(len(want)), want, "what the server got")


# -- 3. start_tls ----------------------------------------------------------------


@pytest.mark.parametrize("base", [1, 2])
@pytest.mark.parametrize("role", ["tls-client", "tls-server"])
@pytest.mark.parametrize("upgrader", ["client", "server"])
async def test_start_tls_sends_gathered_writes_in_the_old_layer(
    onion_ca: OnionCA, onion_engine: Engine, upgrader: str, role: str, base: int
) -> None:
    """Write A, B (gathered), start_tls, write C, D: A and B arrive at the
    old depth, C and D inside the new layer.  The peer upgrades from
    data_received once it has A and B (STARTTLS)."""
    new = base + 1
    a, b = pattern(b"A", 700), pattern(b"B", 900)
    c, d = pattern(b"C", 500), pattern(b"D", 40 * KiB)
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, base)
        wt, wonion, _, peer = sides(pair, upgrader)
        me_server = role == "tls-server"
        sctx = onion_ca.server_context(new, onion_engine)
        cctx = onion_ca.client_context(onion_engine)
        peer_up: list[asyncio.Future[TLSLayer]] = []

        def on_data(_: bytes) -> None:
            if not peer_up and len(peer.data) >= len(a + b):
                if me_server:
                    fut = peer.transport.start_tls(cctx, server_hostname=onion_ca.hostname(new))
                else:
                    fut = peer.transport.start_tls(sctx, server_side=True)
                peer_up.append(fut)

        peer.on_data = on_data
        wt.write(a)
        wt.write(b)
        assert wonion.gathered_size() == len(b)
        if me_server:
            mine = wt.start_tls(sctx, server_side=True)
        else:
            mine = wt.start_tls(cctx, server_hostname=onion_ca.hostname(new))
        assert wonion.gathered_size() == 0
        wt.write(c)  # during the handshake, same turn
        wt.write(d)
        await peer.wait_for(lambda: bool(peer_up), "the peer's upgrade")
        l1, l2 = await all_of(mine, peer_up[0])
        assert l1.depth == l2.depth == new
        await peer.wait_for(lambda: len(peer.data) >= len(a + b + c + d), "C and D")
        assert peer.received_at(base) == a + b
        assert_same(peer.received_at(new), c + d, "inside the new layer")
        assert bytes(peer.data) == a + b + c + d


# -- 4. stop_tls -----------------------------------------------------------------


@pytest.mark.parametrize("stopper", ["client", "server"])
@pytest.mark.parametrize("depth", [1, 2])
async def test_stop_tls_sends_gathered_writes_inside_the_popped_layer(
    onion_ca: OnionCA, onion_engine: Engine, stopper: str, depth: int
) -> None:
    """Write A, B (gathered), stop_tls, write C: A and B arrive inside the
    layer before its close_notify, C after the pop through the layer beneath
    (or in plaintext)."""
    a, b, c = pattern(b"A", 1000), pattern(b"B", 3000), pattern(b"C", 2000)
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        wt, wonion, wrec, peer = sides(pair, stopper)
        answers: list[asyncio.Future[TLSLayer]] = []
        peer.on_eof = lambda: answers.append(peer.transport.stop_tls())
        wt.write(a)
        wt.write(b)
        assert wonion.gathered_size() == len(b)
        stop = wt.stop_tls()
        assert wonion.gathered_size() == 0
        wt.write(c)  # held until the pop
        popped = await asyncio.wait_for(stop, WAIT)
        assert popped.depth == depth
        await peer.wait_for(lambda: bool(answers), "the peer's close_notify")
        assert (await asyncio.wait_for(answers[0], WAIT)).depth == depth
        await peer.wait_for(lambda: len(peer.data) >= len(a + b + c), "C")
        await settle()
        assert peer.transcript() == [
            ("data", a + b, depth),
            ("eof", depth),
            ("data", c, depth - 1),
        ]
        assert len(wt.layers) == len(peer.transport.layers) == depth - 1
        assert wrec.eofs == 0 and wrec.lost == [] and peer.lost == []


# -- 5. close, write_eof, abort ----------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
async def test_close_sends_gathered_writes_then_a_clean_close(
    onion_ca: OnionCA, onion_engine: Engine, depth: int
) -> None:
    a, b, c = pattern(b"A", 100), pattern(b"B", 2000), pattern(b"C", 300)
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pair.s.eof_result = False  # the server closes on the close_notify
        pair.client.write(a)
        pair.client.write(b)
        pair.client.write(c)
        assert pair.client_onion.gathered_size() == len(b + c)
        pair.client.close()
        assert pair.client_onion.gathered_size() == 0
        assert pair.client.is_closing()
        assert await pair.c.wait_lost() is None
        assert await pair.s.wait_lost() is None
        assert pair.s.transcript() == [("data", a + b + c, depth), ("eof", depth), ("lost", None)]
        assert pair.c.transcript() == [("lost", None)]


async def test_write_eof_with_a_layer_sends_gathered_writes_first(
    onion_ca: OnionCA, onion_engine: Engine
) -> None:
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, 1)
        pair.client.write(b"first;")
        pair.client.write(b"gathered;")
        assert pair.client_onion.gathered_size() == len(b"gathered;")
        with pytest.raises(LayerStateError):
            pair.client.write_eof()
        assert pair.client_onion.gathered_size() == 0
        await pair.s.expect(b"first;gathered;")
        assert pair.s.received_at(1) == b"first;gathered;"


@pytest.mark.parametrize("depth", [1, 2])
async def test_abort_then_writes_are_dropped_quietly(
    onion_ca: OnionCA, onion_engine: Engine, depth: int
) -> None:
    """abort() hands what is gathered to the socket transport first (it
    goes as far as the socket takes it at once: here nothing, the pipe is
    held and an aborted transport drops its buffer), then nothing more:
    writes after it are ignored, quietly, and nothing stays counted."""
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pipe = hold(pair)
        pair.client.write(b"first;")
        pair.client.write(b"gathered;")
        assert pair.client_onion.gathered_size() == len(b"gathered;")
        pair.client.abort()
        assert pair.client_onion.gathered_size() == 0
        assert pair.client.get_write_buffer_size() == 0
        pair.client.write(b"after abort;")  # ignored, no exception
        release(pipe)
        assert await pair.c.wait_lost() is None
        await pair.s.wait_lost()
        await settle()  # the end of the turn finds nothing to send
        assert bytes(pair.s.data) == b""
        assert b"gathered;" not in pipe.sent["a"]
        assert pair.c.lost == [None]


# -- 6. flow control -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["socket", "handshake"])
@pytest.mark.parametrize("depth", [1, 2])
async def test_gathered_bytes_count_for_flow_control(
    onion_ca: OnionCA, onion_engine: Engine, depth: int, where: str
) -> None:
    """high=8192, nothing moves: a series of 1000-byte writes in one turn
    pauses the app exactly when the total buffered passes the mark, as if
    nothing waited; gathered bytes are in get_write_buffer_size(); draining
    resumes.  ``handshake``: the bytes wait in a new layer whose handshake
    cannot finish yet instead of in the socket transport."""
    high = 8192
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pipe = hold(pair)
        onion = pair.client_onion
        into = depth
        server_up = None
        client_up = None
        if where == "handshake":
            into = depth + 1
            client_up = pair.client.start_tls(
                onion_ca.client_context(onion_engine), server_hostname=onion_ca.hostname(into)
            )
            server_up = pair.server.start_tls(
                onion_ca.server_context(into, onion_engine), server_side=True
            )
            await settle()  # a new turn; the ClientHello waits in the pipe
        pair.client.set_write_buffer_limits(high=high)
        assert pair.client.get_write_buffer_limits() == (high // 4, high)
        raw_before = pipe.a.get_write_buffer_size()

        def total() -> int:
            # what waits in the socket transport, in a handshaking layer
            # (everything written since it began, except what is gathered),
            # and gathered
            gathered = onion.gathered_size()
            in_layer = len(sent) - gathered if where == "handshake" else 0
            return pipe.a.get_write_buffer_size() + in_layer + gathered

        sent = bytearray()
        piece = 0

        def write() -> None:
            nonlocal piece
            data = pattern(b"p%d." % piece, 1000)
            piece += 1
            pair.client.write(data)
            sent.extend(data)

        write()  # the first write of the turn: not gathered
        assert onion.gathered_size() == 0
        size1 = pair.client.get_write_buffer_size()
        assert size1 > raw_before
        write()  # gathered
        assert onion.gathered_size() == 1000
        assert pair.client.get_write_buffer_size() == size1 + 1000
        assert pipe.a.get_write_buffer_size() == (raw_before if where == "handshake" else size1)
        while True:
            assert pair.client.get_write_buffer_size() == total()
            paused = flow_events(pair.c) == ["pause_writing"]
            if where == "socket":
                # exactly when the buffered total passes the mark
                assert paused == (pair.client.get_write_buffer_size() > high), len(sent)
            else:
                # the plaintext waiting in the handshaking layer decides
                assert paused == (len(sent) > high), len(sent)
            if paused:
                break
            assert flow_events(pair.c) == []
            assert len(sent) <= high, "no pause_writing although the app wrote past the mark"
            write()
        assert onion.gathered_size() == 0, "the write that passed the mark did not flush"
        release(pipe)
        if where == "handshake":
            assert client_up is not None and server_up is not None
            await all_of(client_up, server_up)
        await pair.c.wait_for(lambda: len(flow_events(pair.c)) == 2, "resume_writing")
        assert flow_events(pair.c) == ["pause_writing", "resume_writing"]
        got = await pair.s.read_exactly(len(sent))
        assert_same(got, bytes(sent), "what the server got")
        assert pair.s.received_at(into) == bytes(sent)
        assert pair.client.get_write_buffer_size() == 0


async def test_high_water_zero_gathers_nothing(onion_ca: OnionCA, onion_engine: Engine) -> None:
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, 1)
        pipe = hold(pair)
        pair.client.set_write_buffer_limits(high=0)
        sent = b""
        for i in range(6):
            before = len(wire(pipe.a))
            data = b"zero-%d;" % i
            pair.client.write(data)
            sent += data
            assert pair.client_onion.gathered_size() == 0
            assert len(records(wire(pipe.a)[before:])) == 1, f"write {i} did not leave at once"
        assert flow_events(pair.c) == ["pause_writing"]
        release(pipe)
        await pair.s.expect(sent)
        await pair.c.wait_for(lambda: len(flow_events(pair.c)) == 2, "resume_writing")
        assert flow_events(pair.c) == ["pause_writing", "resume_writing"]


async def test_lowering_the_limit_mid_turn_counts_what_is_gathered(
    onion_ca: OnionCA, onion_engine: Engine
) -> None:
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, 1)
        pipe = hold(pair)
        pair.client.write(pattern(b"x", 1000))
        pair.client.write(pattern(b"y", 1000))
        pair.client.write(pattern(b"z", 1000))
        assert pair.client_onion.gathered_size() == 2000
        assert flow_events(pair.c) == []
        pair.client.set_write_buffer_limits(high=1500)
        # more than the new mark is buffered, gathered bytes included
        assert flow_events(pair.c) == ["pause_writing"]
        before = len(wire(pipe.a))
        pair.client.write(b"next")  # past the mark: everything leaves at once
        assert pair.client_onion.gathered_size() == 0
        assert len(wire(pipe.a)) > before
        release(pipe)
        await pair.s.expect(
            pattern(b"x", 1000) + pattern(b"y", 1000) + pattern(b"z", 1000) + b"next"
        )
        await pair.c.wait_for(lambda: len(flow_events(pair.c)) == 2, "resume_writing")
        assert flow_events(pair.c) == ["pause_writing", "resume_writing"]


# -- 7. mixed sizes and types ------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2])
async def test_mixed_sizes_and_types_in_one_turn_arrive_in_order(
    onion_ca: OnionCA, onion_engine: Engine, depth: int
) -> None:
    mutable = bytearray(pattern(b"ba", 2 * KiB))
    view_of = bytearray(pattern(b"mv", 500))
    seq: list[tuple[Any, int]] = [
        (pattern(b"s1", KiB), 0),  # first of the turn
        (pattern(b"L40", 40 * KiB), 0),  # large: at once
        (mutable, 2 * KiB),  # a bytearray, gathered (copied)
        (pattern(b"L100", 100 * KiB), 0),  # large: flushes the 2 KiB first
        (memoryview(view_of), 500),  # a memoryview, gathered
        (pattern(b"s2", 7), 507),
        (pattern(b"L32", GATHER_SMALL), 0),
        (b"", 0),
        (pattern(b"s3", 10), 10),
    ]
    want = b"".join(bytes(data) for data, _ in seq)
    async with connect("memory") as pair:
        await push(pair, onion_ca, onion_engine, depth)
        pair.client.set_write_buffer_limits(high=16 * 1024 * 1024)
        for data, waiting in seq:
            pair.client.write(data)
            assert pair.client_onion.gathered_size() == waiting
        # the caller's buffers may change once write() has returned
        mutable[:] = b"\x00" * len(mutable)
        view_of[:] = b"\xff" * len(view_of)
        pair.client.writelines([b"lines:", bytearray(b"one,"), memoryview(b"two")])
        want += b"lines:one,two"
        got = await pair.s.read_exactly(len(want))
        assert_same(got, want, "what the server got")
        assert pair.s.received_at(depth) == want


# -- 8. plaintext ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "engine"),
    [("never-layered", None), ("after-unwrap", "pyopenssl"), ("after-unwrap", "stdlib")],
)
async def test_plaintext_writes_are_never_gathered(
    onion_ca: OnionCA, how: str, engine: Engine | None
) -> None:
    async with connect("memory") as pair:
        if engine is not None:
            await push(pair, onion_ca, engine, 1)
            await all_of(pair.stop_tls())
            assert pair.client.layers == ()
            await settle()
        pipe = hold(pair)
        writes = [b"one;", b"two;", b"three;", pattern(b"big", 3000)]
        for i, data in enumerate(writes):
            pair.client.write(data)
            # each write is in the socket transport as it was written
            assert list(pipe.a.outgoing) == writes[: i + 1]
            assert pair.client_onion.gathered_size() == 0
        release(pipe)
        await pair.s.expect(b"".join(writes))
        assert pair.s.received_at(0) == b"".join(writes)


# -- 9. an echo application --------------------------------------------------------------


def chunker(data: bytes) -> Iterable[bytes]:
    """Cut the stream at odd places: 1 byte, part of a header, one record
    and a bit, several records at once."""
    sizes = itertools.cycle([1, 3, 700, 5, RECORD + 29, 2, 40_000, 9])
    pos = 0
    while pos < len(data):
        n = next(sizes)
        yield data[pos : pos + n]
        pos += n


@pytest.mark.parametrize(
    ("kind", "server_high"),
    [("memory", None), ("memory", 1024 * 1024), ("loopback", None)],
    ids=["memory", "memory-high-limit", "loopback"],
)
async def test_echo_from_data_received_through_two_layers(
    onion_ca: OnionCA, onion_engine: Engine, kind: str, server_high: int | None
) -> None:
    """The server answers every piece it gets from inside data_received (in
    three writes per piece); 300 KB written by the client in small bursts
    come back exactly.  In memory the pipe is held while the client writes
    and then delivers hundreds of records, cut at odd places, in one turn:
    the echo makes hundreds of small writes in one turn.  What one
    delivery's answers write leaves together when the delivery returns, in
    as few records as its size needs (with a high limit, so flow control
    never sends them earlier)."""
    size = 300_000
    payload = pattern(b"echo", size)
    opts: dict[str, Any] = {"chunker": chunker} if kind == "memory" else {}
    async with connect(kind, **opts) as pair:  # type: ignore[arg-type]
        await push(pair, onion_ca, onion_engine, 2)
        if server_high is not None:
            pair.server.set_write_buffer_limits(high=server_high)
        pipe = hold(pair) if kind == "memory" else None
        down_before = len(records(bytes(pipe.sent["b"]))) if pipe is not None else 0

        def answer(data: bytes) -> None:
            third = len(data) // 3
            for piece in (data[:third], data[third : 2 * third], data[2 * third :]):
                if piece:
                    pair.server.write(piece)

        pair.s.on_data = answer
        sizes = itertools.cycle([1, 10, 100, 1000, 5000, 333, 17, 2000, 70])
        pos = 0
        while pos < size:
            for _ in range(3):  # a burst of writes in one turn
                n = next(sizes)
                pair.client.write(payload[pos : pos + n])
                pos += n
                if pos >= size:
                    break
            await asyncio.sleep(0)
        if pipe is not None:
            release(pipe)
        got = await pair.c.read_exactly(size)
        assert_same(got, payload, "the echo")
        assert_same(bytes(pair.s.data), payload, "what the server got")
        assert pair.c.received_at(2) == payload
        echo_writes = len(pair.s.chunks)
        assert echo_writes > 50, "the test needs many pieces at the server"
        if pipe is not None and server_high is not None:
            down = len(records(bytes(pipe.sent["b"]))) - down_before
            # per delivery: an inner record per 16 KiB, carried in at most
            # one outer record more (the inner records' overhead)
            needed = sum(math.ceil(len(c) / RECORD) + 1 for c in pair.s.chunks)
            assert down <= needed, (down, needed)
            assert down < echo_writes * 2, (down, echo_writes)
        assert pair.c.lost == [] and pair.s.lost == []


# -- 10. writes queued in a layer keep their order ------------------------------------


@pytest.mark.parametrize("version", [None, "TLSv1.2"])
@pytest.mark.parametrize("big", [100_000, 300_000])
@pytest.mark.parametrize("who", ["client", "server"])
async def test_writes_queued_behind_a_handshake_keep_their_order(
    onion_ca: OnionCA, onion_engine: Engine, who: str, big: int, version: str | None
) -> None:
    """A write larger than the engine's write slice (64 KiB for a stdlib
    layer, 256 KiB on the direct pyOpenSSL path), then a small one, both made
    while the layer's handshake runs, and then 30 kB writes that the
    gatherer joins into pieces of ~96 KiB: all arrive in order once the
    layer is up, from either end (a TLS 1.3 server gets no record after
    the client's Finished to push anything left behind)."""
    async with connect("memory") as pair:
        writer, reader = (pair.client, pair.s) if who == "client" else (pair.server, pair.c)
        writer.set_write_buffer_limits(high=1 << 20)
        pair.pipe.auto = False  # the handshake waits
        fs = pair.server.start_tls(
            onion_ca.server_context(1, onion_engine, version=version), server_side=True
        )
        fc = pair.client.start_tls(
            onion_ca.client_context(onion_engine, version=version),
            server_hostname=onion_ca.hostname(1),
        )
        pieces = [pattern(b"big", big), b"[small]"]
        pieces += [pattern(b"w%d" % i, 30_000) for i in range(8)]
        for i, piece in enumerate(pieces):
            writer.write(piece)
            if i < 2 or i == 5:
                await asyncio.sleep(0)  # (a new turn: the gatherer starts over)
        pair.pipe.auto = True
        pair.pipe.kick()
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        want = b"".join(pieces)
        await reader.wait_for(lambda: len(reader.data) >= len(want), "all the data")
        assert_same(bytes(reader.data), want, "what arrived")


# -- 11. answers from a delivery, then the end ---------------------------------------------


@pytest.mark.parametrize("second", [False, True])
async def test_answer_then_abort_in_one_callback(
    onion_ca: OnionCA, onion_engine: Engine, second: bool
) -> None:
    """ "Send an error, then abort": what data_received wrote right before
    abort() (one write or two, gathered) reaches the peer over a real
    socket, as it does with asyncio's own TLS (abort() sends what is
    gathered first, as far as the socket takes it at once)."""
    async with connect("loopback") as pair:
        await start_layer(pair, onion_ca, 1, client_engine=onion_engine, server_engine=onion_engine)
        await settle()

        def on_data(data: bytes) -> None:
            pair.server.write(b"bye:" + data)
            if second:
                pair.server.write(b";more")
            pair.server.abort()

        pair.s.on_data = on_data
        pair.client.write(b"hello")
        await pair.c.wait_lost()
        assert bytes(pair.c.data) == b"bye:hello" + (b";more" if second else b"")


async def test_answer_leaves_before_the_next_record_breaks_the_layer(
    onion_ca: OnionCA, onion_engine: Engine
) -> None:
    """The answer to a record leaves before the next record of the same
    read is decrypted: when that one is corrupted, the peer still gets the
    answer, then the alert."""
    async with connect("memory", coalesce=True) as pair:
        await start_layer(pair, onion_ca, 1, client_engine=onion_engine, server_engine=onion_engine)
        await settle()
        pair.s.on_data = lambda data: pair.server.write(b"answer:" + data)
        pipe = hold(pair)
        pair.client.write(b"question")
        pair.client_onion.send_gathered()
        pipe.a.write(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # a bad MAC, in the same read
        release(pipe)
        await pair.s.wait_lost()
        await pair.c.wait_lost()
        assert bytes(pair.c.data) == b"answer:question"
        assert isinstance(pair.s.lost[0], TLSProtocolError)
