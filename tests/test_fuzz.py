"""Property-based fuzzing of the byte-handling code (hypothesis).

* :class:`RecordFramer`: whatever the bytes and however they are cut, the
  records it hands out, followed by what it still holds, are exactly the
  bytes fed, in order; every record it hands out is one whole, well-formed
  record; once it has reported garbage it hands out nothing more.
* A layer's feed path (:meth:`Layer.receive`, driven through a sans-IO
  :class:`Chain` with no event loop): fed arbitrary bytes during a
  handshake, or a real peer's ciphertext with bytes flipped, dropped or
  inserted, a layer never raises, never delivers a byte the peer did not
  send (only a prefix of it), and when it fails, it fails once, with an
  OnionError at its depth.

``nox -s fuzz`` runs the same targets coverage-guided with atheris
(``stress/fuzz_atheris.py``).
"""

from __future__ import annotations

import functools
import itertools
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from onion_tls import OnionError
from onion_tls._chain import Chain
from onion_tls._engines import new_engine
from onion_tls._layer import Layer, LayerState
from onion_tls._records import HEADER_SIZE, MAX_RECORD_BODY, RecordFramer, check_header
from onion_tls.testing import ENGINES, OnionCA

FUZZ = settings(
    max_examples=int(os.environ.get("ONION_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the framer ------------------------------------------------------------------------


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` cut at ``points`` (any integers; taken modulo the length)."""
    if not data:
        return [b""]
    idx = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(idx)] or [data]


def record(content_type: int, body: bytes, minor: int = 3) -> bytes:
    return bytes([content_type, 3, minor]) + len(body).to_bytes(2, "big") + body


records_st = st.lists(
    st.builds(
        record,
        st.sampled_from([20, 21, 22, 23, 24]),
        st.binary(max_size=300),
        st.integers(0, 4),
    ),
    max_size=12,
)


def drain(framer: RecordFramer) -> list[bytes]:
    out = []
    while (rec := framer.next_record()) is not None:
        out.append(bytes(rec))
    return out


def check_framer_stream(chunks: list[bytes]) -> tuple[list[bytes], bytes, str | None]:
    """Feed ``chunks`` and check what must hold whatever they contain."""
    framer = RecordFramer()
    got: list[bytes] = []
    fed = b""
    for chunk in chunks:
        framer.feed(chunk)
        fed += chunk
        got += drain(framer)
        assert framer.buffered() == len(fed) - sum(map(len, got))
    for rec in got:
        assert len(rec) >= HEADER_SIZE
        assert check_header(rec[:HEADER_SIZE]) is None
        assert len(rec) == HEADER_SIZE + int.from_bytes(rec[3:5], "big")
    error = framer.error
    if error is not None:
        assert framer.next_record() is None  # garbage stops it for good
    rest = framer.take_rest()
    assert b"".join(got) + rest == fed  # nothing lost, nothing made up, in order
    assert framer.buffered() == 0
    return got, rest, error


@FUZZ
@given(records=records_st, points=st.lists(st.integers(0, 10_000), max_size=20))
def test_framer_hands_out_exactly_the_records(records: list[bytes], points: list[int]) -> None:
    got, rest, error = check_framer_stream(cut(b"".join(records), points))
    assert error is None
    assert got == records
    assert rest == b""


@FUZZ
@given(
    records=records_st,
    tail=st.binary(max_size=40),
    points=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_framer_keeps_a_partial_record(
    records: list[bytes], tail: bytes, points: list[int]
) -> None:
    """A stream that stops inside a record: the whole ones come out, the
    rest is held, byte for byte (this is what a layer hands beneath)."""
    data = b"".join(records)
    got, rest, _ = check_framer_stream(cut(data + tail, points))
    assert got[: len(records)] == records
    assert b"".join(got[len(records) :]) + rest == tail


@FUZZ
@given(data=st.binary(max_size=2000), points=st.lists(st.integers(0, 10_000), max_size=30))
def test_framer_on_arbitrary_bytes(data: bytes, points: list[int]) -> None:
    check_framer_stream(cut(data, points))


@FUZZ
@given(
    records=records_st,
    garbage=st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE),
    after=st.binary(max_size=50),
    points=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_framer_reports_a_bad_header(
    records: list[bytes], garbage: bytes, after: bytes, points: list[int]
) -> None:
    reason = check_header(garbage)
    assume(reason is not None)
    got, rest, error = check_framer_stream(cut(b"".join(records) + garbage + after, points))
    assert got == records
    # The same reason; what follows it shows the bytes the framer had seen
    # by then, which depends on the cut points.
    assert error is not None and error.startswith(reason[: reason.index(")") + 1])
    assert rest == garbage + after


def test_framer_limits() -> None:
    framer = RecordFramer()
    framer.feed(record(23, b"\x00" * MAX_RECORD_BODY))
    assert framer.next_record() is not None
    framer.feed(b"\x17\x03\x03" + (MAX_RECORD_BODY + 1).to_bytes(2, "big"))
    assert framer.next_record() is None
    assert framer.error is not None and "too long" in framer.error


# -- a layer's feed path, sans-IO ------------------------------------------------------------


class Hooks:
    """A chain's world, recorded: no event loop, no sockets."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.data = bytearray()
        self.eofs = 0
        self.failures: list[OnionError] = []
        self.flush = False
        self.done: list[Layer] = []

    def write_raw(self, data: bytes | memoryview) -> None:
        self.out += data

    def deliver_data(self, data: bytes) -> None:
        self.data += data

    def deliver_eof(self) -> bool:
        self.eofs += 1
        return True

    def schedule_flush(self) -> None:
        self.flush = True

    def handshake_done(self, layer: Layer) -> None:
        self.done.append(layer)

    def app_buffer(self, size: int) -> memoryview | None:
        return None

    def app_buffer_filled(self, nbytes: int) -> None:  # pragma: no cover - no app buffer
        raise AssertionError("no app buffer was lent")

    def layer_abandoned(self, layer: Layer, exc: OnionError) -> None:
        self.failures.append(exc)

    def layer_popped(self, layer: Layer) -> None:
        pass

    def failed(self, exc: OnionError) -> None:
        self.failures.append(exc)

    def close_raw(self) -> None:
        pass


class Side:
    def __init__(self) -> None:
        self.hooks = Hooks()
        self.chain = Chain(self.hooks)  # type: ignore[arg-type]

    def push(self, ctx: Any, *, server_side: bool, hostname: str | None = None) -> Layer:
        engine = new_engine(
            ctx,
            server_side=server_side,
            server_hostname=hostname,
            session=None,
            depth=self.chain.next_depth(),
        )
        layer = self.chain.push(engine)
        self.chain.begin(layer, b"")
        return layer

    def take(self) -> bytes:
        out = bytes(self.hooks.out)
        self.hooks.out.clear()
        return out

    def feed(self, data: bytes) -> None:
        self.chain.feed(data)
        if self.hooks.flush:
            self.hooks.flush = False
            self.chain.flush_deliveries()


@functools.cache
def _ca() -> OnionCA:
    return OnionCA()


@functools.cache
def _ctx(kind: str, engine: str, version: str | None) -> Any:
    if kind == "server":
        return _ca().server_context(1, engine, version=version)  # type: ignore[arg-type]
    return _ca().client_context(engine, version=version)  # type: ignore[arg-type]


def established(client_engine: str, server_engine: str, version: str | None) -> tuple[Side, Side]:
    client, server = Side(), Side()
    client.push(
        _ctx("client", client_engine, version), server_side=False, hostname=_ca().hostname(1)
    )
    server.push(_ctx("server", server_engine, version), server_side=True)
    for _ in range(10):
        server.feed(client.take())
        client.feed(server.take())
    assert client.hooks.done and server.hooks.done
    return client, server


def check_layer_outcome(side: Side, sent: bytes) -> None:
    got = bytes(side.hooks.data)
    assert sent.startswith(got), "the layer delivered bytes the peer did not send"
    assert len(side.hooks.failures) <= 1
    for exc in side.hooks.failures:
        assert isinstance(exc, OnionError)
        assert exc.depth == 1 and "TLS layer 1" in str(exc)
    layer = side.chain.innermost()
    if side.hooks.failures:
        assert layer is None or layer.state is LayerState.BROKEN


@FUZZ
@pytest.mark.parametrize("engine", ENGINES)
@given(data=st.binary(max_size=3000), points=st.lists(st.integers(0, 10_000), max_size=20))
def test_handshaking_layer_fed_arbitrary_bytes(engine: str, data: bytes, points: list[int]) -> None:
    server = Side()
    server.push(_ctx("server", engine, None), server_side=True)
    for chunk in cut(data, points):
        server.feed(chunk)
    check_layer_outcome(server, b"")
    if server.hooks.failures:
        assert type(server.hooks.failures[0]).__name__ == "HandshakeError"


@FUZZ
@pytest.mark.parametrize("engine", ENGINES)
@given(
    flips=st.lists(st.tuples(st.integers(0, 100_000), st.integers(1, 255)), max_size=4),
    points=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_handshaking_layer_fed_a_mutated_client_hello(
    engine: str, flips: list[tuple[int, int]], points: list[int]
) -> None:
    client = Side()
    client.push(_ctx("client", "pyopenssl", None), server_side=False, hostname=_ca().hostname(1))
    hello = bytearray(client.take())
    for pos, mask in flips:
        hello[pos % len(hello)] ^= mask
    server = Side()
    server.push(_ctx("server", engine, None), server_side=True)
    for chunk in cut(bytes(hello), points):
        server.feed(chunk)
    check_layer_outcome(server, b"")


mutation_st = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 100_000), st.integers(1, 255)),
        st.tuples(st.just("insert"), st.integers(0, 100_000), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("drop"), st.integers(0, 100_000), st.integers(1, 64)),
    ),
    max_size=3,
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in mutations:
        if not buf:
            break
        i = pos % len(buf)
        if kind == "flip":
            buf[i] ^= arg
        elif kind == "insert":
            buf[i:i] = arg
        else:
            del buf[i : i + arg]
    return bytes(buf)


@FUZZ
@pytest.mark.parametrize("server_engine", ENGINES)
@given(
    client_engine=st.sampled_from(ENGINES),
    version=st.sampled_from([None, "TLSv1.2"]),
    messages=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4),
    close=st.booleans(),
    mutations=mutation_st,
    points=st.lists(st.integers(0, 100_000), max_size=25),
)
def test_open_layer_fed_mutated_ciphertext(
    server_engine: str,
    client_engine: str,
    version: str | None,
    messages: list[bytes],
    close: bool,
    mutations: list[tuple[Any, ...]],
    points: list[int],
) -> None:
    """A real peer's records (data, then maybe close_notify), tampered
    with and cut anywhere: only authentic data comes out, and the layer
    either goes on, reports the peer's close_notify, or fails cleanly."""
    client, server = established(client_engine, server_engine, version)
    sent = b""
    for m in messages:
        client.chain.write(m)
        sent += m
    if close:
        client.chain.stop_tls()
    wire = mutate(client.take(), mutations)
    for chunk in cut(wire, points):
        server.feed(chunk)
    check_layer_outcome(server, sent)
    if not mutations:
        assert bytes(server.hooks.data) == sent
        assert not server.hooks.failures
        assert server.hooks.eofs == (1 if close else 0)
    if server.hooks.eofs:
        # A clean close_notify was read: everything before it is here.
        assert bytes(server.hooks.data) == sent
