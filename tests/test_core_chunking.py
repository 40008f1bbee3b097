"""Any chunking of the byte stream gives the same application-visible result.

One scripted conversation (two layers with roles swapped and TLS 1.3 over
TLS 1.2, writes during both handshakes, a large write, a stop_tls answered
from eof_received with data in flight and bytes beneath, re-wrap, orderly
close) is run live over the in-memory pipe with the stream cut in different
ways: whole writes, everything pending in one read, one byte at a time, every
write cut at every split point, and random cuts drawn by hypothesis.  The
transcript each application sees (data per depth, EOFs, the loss) must be
identical every time.

TLS is randomized, so a recorded stream cannot be replayed into a fresh
session; the framer, which is deterministic, is also checked on a recorded
stream at every split point.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onion_tls._records import RecordFramer
from onion_tls.pytest_plugin import run_async_test
from onion_tls.testing import Engine, OnionCA, dribble

from .helpers import ENGINE_PAIR_IDS, ENGINE_PAIRS, WAIT, connect

Chunker = Callable[[bytes], Iterable[bytes]]

BIG = bytes(range(256)) * 160  # 40 KiB: several records per layer


async def converse(
    ca: OnionCA,
    engines: tuple[Engine, Engine],
    *,
    chunker: Chunker | None = None,
    coalesce: bool = False,
    sizes: list[int] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Run the script; return both applications' transcripts."""
    ce, se = engines
    async with connect("memory", chunker=chunker, coalesce=coalesce) as pair:
        c, s = pair.c, pair.s
        got = {"c": 0, "s": 0}

        def expect(side: str, n: int) -> Any:
            got[side] += n
            rec = c if side == "c" else s
            total = got[side]
            return rec.wait_for(lambda: sum(len(x) for x in rec.chunks) >= total, f"{total}")

        # layer 1: the client application is the TLS client (TLS 1.3)
        fs = pair.server.start_tls(ca.server_context(1, se), server_side=True)
        fc = pair.client.start_tls(ca.client_context(ce), server_hostname=ca.hostname(1))
        pair.client.write(b"c1-during-handshake;")
        pair.server.write(b"s1-during-handshake;")
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await expect("s", 20)
        await expect("c", 20)
        # layer 2: roles swapped, TLS 1.2
        fs = pair.client.start_tls(ca.server_context(2, ce, version="TLSv1.2"), server_side=True)
        fc = pair.server.start_tls(
            ca.client_context(se, version="TLSv1.2"), server_hostname=ca.hostname(2)
        )
        pair.client.write(b"c2-during-handshake;")
        pair.server.write(b"s2-during-handshake;")
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await expect("s", 20)
        await expect("c", 20)
        pair.client.write(BIG)
        pair.server.write(b"small s2;")
        await expect("s", len(BIG))
        await expect("c", 9)

        # the server stops layer 2; the client answers from eof_received
        def on_eof() -> None:
            pair.client.write(b"c-last-2;")
            stops.append(pair.client.stop_tls())
            pair.client.write(b"c-beneath-2;")
            c.on_eof = None

        stops: list[asyncio.Future[Any]] = []
        c.on_eof = on_eof
        pair.server.write(b"s-last-2;")
        fstop = pair.server.stop_tls()
        pair.server.write(b"s-beneath-2;")
        await asyncio.wait_for(fstop, WAIT)
        await expect("c", 9 + 12)
        await expect("s", 9 + 12)
        # back up to depth 2 (TLS 1.3 this time), one exchange, then close
        fs = pair.server.start_tls(ca.server_context(2, se), server_side=True)
        fc = pair.client.start_tls(ca.client_context(ce), server_hostname=ca.hostname(2))
        pair.client.write(b"c2-again;")
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await expect("s", 9)
        s.eof_result = False
        pair.client.close()
        await c.wait_lost()
        await s.wait_lost()
        return c.transcript(), s.transcript()


def split_every_write_at(k: int) -> Chunker:
    def split(data: bytes) -> Iterable[bytes]:
        if 0 < k < len(data):
            return (data[:k], data[k:])
        return (data,)

    return split


def cut_by(sizes: list[int]) -> Chunker:
    """Cut the stream into pieces of the given sizes, in turn, forever."""
    cycle = itertools.cycle(sizes)

    def split(data: bytes) -> Iterable[bytes]:
        pos = 0
        while pos < len(data):
            n = next(cycle)
            yield data[pos : pos + n]
            pos += n

    return split


_baselines: dict[tuple[str, str], tuple[list[Any], list[Any]]] = {}


async def baseline(ca: OnionCA, engines: tuple[Engine, Engine]) -> tuple[list[Any], list[Any]]:
    if engines not in _baselines:
        _baselines[engines] = await converse(ca, engines)
    return _baselines[engines]


def check_transcripts(got: tuple[list[Any], list[Any]], want: tuple[list[Any], list[Any]]) -> None:
    assert got[0] == want[0], "client application saw something else"
    assert got[1] == want[1], "server application saw something else"


async def test_transcript_is_what_the_script_says(onion_ca: OnionCA) -> None:
    client, server = await baseline(onion_ca, ("pyopenssl", "stdlib"))
    assert client == [
        ("data", b"s1-during-handshake;", 1),
        ("data", b"s2-during-handshake;small s2;s-last-2;", 2),
        ("eof", 2),
        ("data", b"s-beneath-2;", 1),
        ("lost", None),
    ]
    assert server == [
        ("data", b"c1-during-handshake;", 1),
        ("data", b"c2-during-handshake;" + BIG + b"c-last-2;", 2),
        ("data", b"c-beneath-2;", 1),
        ("data", b"c2-again;", 2),
        ("eof", 2),
        ("lost", None),
    ]


@pytest.mark.parametrize("engines", ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("how", ["coalesce", "dribble"])
async def test_coalesced_and_one_byte_dribble(
    onion_ca: OnionCA, engines: tuple[Engine, Engine], how: str
) -> None:
    want = await baseline(onion_ca, engines)
    if how == "coalesce":
        got = await converse(onion_ca, engines, coalesce=True)
    else:
        got = await converse(onion_ca, engines, chunker=dribble(1))
    check_transcripts(got, want)


# Every write of the conversation cut in two at offset k.  A live run costs
# three handshakes, so every k is tried where the first records' headers and
# bodies meet (the first 240 bytes of every flight), then a stride through
# the longest flights, and offsets around the record boundaries of the large
# write.  (The dribble test cuts at every point at once, and the framer is
# checked exhaustively below on a recorded stream.)
SPLITS = [*range(1, 240), *range(240, 1600, 11)]
SPLITS_STRIDE = range(1, 1600, 37)
SPLITS_BIG = [16384 + 5 + d for d in (-30, -29, -6, -5, -1, 0, 1, 4, 5, 6, 29)]


@pytest.mark.parametrize("engines", ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_every_split_point(onion_ca: OnionCA, engines: tuple[Engine, Engine]) -> None:
    want = await baseline(onion_ca, engines)
    full = engines == ("pyopenssl", "stdlib")
    points = [*(SPLITS if full else SPLITS_STRIDE), *SPLITS_BIG]
    for k in points:
        got = await converse(onion_ca, engines, chunker=split_every_write_at(k))
        check_transcripts(got, want)


@pytest.mark.parametrize("engines", ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
def test_random_splits(onion_ca: OnionCA, engines: tuple[Engine, Engine]) -> None:
    holder: dict[str, Any] = {}
    run_async_test(lambda: _store_baseline(onion_ca, engines, holder), {})
    want = holder["want"]

    @settings(
        max_examples=15,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=12),
        coalesce=st.booleans(),
    )
    def check(sizes: list[int], coalesce: bool) -> None:
        out: dict[str, Any] = {}

        async def one() -> None:
            out["got"] = await converse(onion_ca, engines, chunker=cut_by(sizes), coalesce=coalesce)

        run_async_test(one, {})
        check_transcripts(out["got"], want)

    check()


async def _store_baseline(
    ca: OnionCA, engines: tuple[Engine, Engine], holder: dict[str, Any]
) -> None:
    holder["want"] = await baseline(ca, engines)


# -- the framer on a recorded stream, at every split point ---------------------


async def record_stream(ca: OnionCA) -> bytes:
    """The ciphertext the server received in one live conversation."""
    async with connect("memory") as pair:
        fs = pair.server.start_tls(ca.server_context(1, "stdlib"), server_side=True)
        fc = pair.client.start_tls(ca.client_context("pyopenssl"), server_hostname=ca.hostname(1))
        pair.client.write(b"x" * 20000)
        await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
        await pair.s.read_exactly(20000)
        await asyncio.wait_for(pair.stop_tls(), WAIT)
        assert pair.pipe is not None
        stream = bytes(pair.pipe.sent["a"])
        pair.client.close()
        await pair.c.wait_lost()
    return stream


def records_of(stream: bytes, cuts: Iterable[int]) -> tuple[list[bytes], bytes]:
    framer = RecordFramer()
    out: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        framer.feed(stream[pos:cut])
        pos = cut
        while (rec := framer.next_record()) is not None:
            out.append(bytes(rec))
        assert framer.error is None
    return out, framer.take_rest()


async def test_framer_every_split_point_of_a_recorded_stream(onion_ca: OnionCA) -> None:
    stream = await record_stream(onion_ca) + b"\x17\x03\x03\x00"  # a partial header
    want, rest = records_of(stream, [])
    assert b"".join(want) + rest == stream
    assert rest == b"\x17\x03\x03\x00"
    assert len(want) >= 5
    for k in range(1, len(stream)):
        assert records_of(stream, [k]) == (want, rest), k
    # every split point at once
    assert records_of(stream, range(1, len(stream))) == (want, rest)
