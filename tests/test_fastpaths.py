"""The receive fast paths: scratch buffers, BufferedProtocol reads, the
pyOpenSSL direct path.

Since the socket is read into per-thread scratch buffers (``_buffers``) and
plaintext moves on as views of them, these tests check that no byte is
lost, mixed or changed afterwards, with real handshakes on every engine path
(pyOpenSSL with and without its direct ``OpenSSL._util`` path, and stdlib
``ssl``):

* a BufferedProtocol application gets exactly what was sent, at depths 1-3,
  whatever the size of its buffer, pausing and resuming as it goes;
* a plain Protocol application gets ``bytes`` that never change afterwards
  (loopback sockets, asyncio and uvloop);
* concurrent connections in one loop do not mix;
* a relay that feeds another onion stack from inside ``data_received`` (or
  straight from its ``get_buffer``) corrupts neither stream, and no scratch
  buffer is lent twice;
* unwrapping is exact and STARTTLS inside a layer works without
  ``initial_bytes`` (plaintext reaches the application record by record);
* the record framer lets go of a chunk on ``detach()``.

Only correctness is checked, never timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from onion_tls import OnionProtocol, OnionTransport, _buffers, _openssl_ffi
from onion_tls._pyopenssl import DirectPyOpenSSLEngine
from onion_tls._records import RecordFramer
from onion_tls.pytest_plugin import run_async_test
from onion_tls.testing import Engine, OnionCA, OnionPair

from .helpers import WAIT, Pair, Recorder, connect, settle

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
MODES = ("pyopenssl", "pyopenssl-public", "stdlib")
# The most plaintext one TLS record carries.
RECORD = 2**14
KB = 1000
MiB = 1024 * 1024


# -- helpers -------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def pattern(tag: bytes, size: int) -> bytes:
    """``size`` non-zero bytes in which every 16-byte block names its tag
    and its own offset: a lost, repeated, swapped or foreign piece shows."""
    width = 16
    body = width - len(tag) - 1
    blocks = (b"%s%0*d;" % (tag, body, off) for off in range(0, size + width, width))
    return b"".join(blocks)[:size]


def assert_same(got: bytes | bytearray, want: bytes, what: str) -> None:
    """Compare large byte strings with a short message."""
    if got == want:
        return
    n = min(len(got), len(want))
    i = 0
    step = 4096
    while i + step <= n and got[i : i + step] == want[i : i + step]:
        i += step
    while i < n and got[i] == want[i]:
        i += 1
    raise AssertionError(
        f"{what}: got {len(got)} bytes, want {len(want)}; first difference at "
        f"offset {i}: got {bytes(got[i : i + 32])!r}, want {want[i : i + 32]!r}"
    )


def engine_of(mode: str) -> Engine:
    return "stdlib" if mode == "stdlib" else "pyopenssl"


def check_engine_path(mode: str, *onions: OnionProtocol) -> None:
    """Every layer runs on the engine path the test asked for."""
    for onion in onions:
        layers = onion.layer_chain.layers()
        assert layers, "no layer to check"
        for layer in layers:
            assert layer.engine.engine_name == engine_of(mode)
            if mode != "stdlib":
                direct = isinstance(layer.engine, DirectPyOpenSSLEngine)
                assert direct is (mode == "pyopenssl"), (mode, layer)


async def push_layers(pair: OnionPair, ca: OnionCA, mode: str, depths: range | list[int]) -> None:
    eng = engine_of(mode)
    for depth in depths:
        lc, ls = await asyncio.wait_for(
            pair.start_tls(ca, depth, client_engine=eng, server_engine=eng), WAIT
        )
        assert lc.version is not None and ls.version is not None


async def received(rec: Recorder, n: int) -> None:
    await rec.wait_for(lambda: len(rec.data) >= n, f"{n} bytes")


async def all_of(*aws: Awaitable[Any]) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*aws), WAIT)


class PoolGuard:
    """Wraps ``_buffers.take``/``give``: a buffer in use must never be lent
    again, and only a lent buffer may be given back (once)."""

    def __init__(self) -> None:
        self._take = _buffers.take
        self._give = _buffers.give
        self.in_use: dict[int, bytearray] = {}
        self.errors: list[str] = []
        self.lent = 0
        self.most_in_use = 0

    def take(self) -> bytearray:
        buf = self._take()
        if id(buf) in self.in_use:
            self.errors.append(f"buffer {id(buf):#x} lent while in use")
        self.in_use[id(buf)] = buf
        self.lent += 1
        self.most_in_use = max(self.most_in_use, len(self.in_use))
        return buf

    def give(self, buf: bytearray) -> None:
        if self.in_use.pop(id(buf), None) is None:
            self.errors.append(f"buffer {id(buf):#x} given back but not in use")
        self._give(buf)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert self.lent > 0, "the scratch buffers were not used at all"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine path: pyOpenSSL (direct path), pyOpenSSL through its public
    API only, or stdlib ssl."""
    name: str = request.param
    if name == "pyopenssl" and not _openssl_ffi.available():
        pytest.skip("this pyOpenSSL offers no direct path")
    if name == "pyopenssl-public":
        monkeypatch.setattr(_openssl_ffi, "DIRECT_API", False)
    return name


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> PoolGuard:
    guard = PoolGuard()
    monkeypatch.setattr(_buffers, "take", guard.take)
    monkeypatch.setattr(_buffers, "give", guard.give)
    return guard


class BufRecorder(Recorder, asyncio.BufferedProtocol):
    """A Recorder that reads as a BufferedProtocol into one buffer of
    ``size`` bytes; with ``pause_every`` it pauses reading each time that
    many more bytes have arrived and resumes on the next loop iteration."""

    def __init__(self, size: int = 16384, pause_every: int | None = None) -> None:
        super().__init__()
        self.buf = bytearray(size)
        self.sizes: list[int] = []
        self.total = 0
        self.violations: list[str] = []
        self.pause_every = pause_every
        self.next_pause = pause_every or 0
        self.pauses = 0
        self.paused = False
        self._lent = False

    def get_buffer(self, sizehint: int) -> bytearray:
        if self.paused:
            self.violations.append("get_buffer() while reading is paused")
        if self.lost:
            self.violations.append("get_buffer() after connection_lost()")
        self._lent = True
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        if not self._lent:
            self.violations.append("buffer_updated() without get_buffer()")
        self._lent = False
        if self.paused:
            self.violations.append(
                f"buffer_updated({nbytes}) while reading is paused "
                f"(after byte {self.total}, pause #{self.pauses})"
            )
        if not 0 < nbytes <= len(self.buf):
            self.violations.append(f"buffer_updated({nbytes}) with a {len(self.buf)}-byte buffer")
        self.sizes.append(nbytes)
        self.total += nbytes
        Recorder.data_received(self, bytes(self.buf[:nbytes]))
        if self.pause_every and self.total >= self.next_pause:
            self.next_pause += self.pause_every
            self.pauses += 1
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        self.paused = False
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.violations.append("data_received() called on a BufferedProtocol")


class KeepRecorder(Recorder):
    """Keeps every object data_received got, with a copy made on arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[tuple[bytes, bytes]] = []
        self.bad_types: set[str] = set()

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes:
            self.bad_types.add(type(data).__name__)
        self.kept.append((data, bytes(bytearray(data))))
        super().data_received(data)

    def check(self, want: bytes, what: str) -> None:
        assert not self.bad_types, f"{what}: data_received got {self.bad_types}, not bytes"
        for i, (obj, copy) in enumerate(self.kept):
            assert obj == copy, f"{what}: chunk {i} changed after it was delivered"
        assert_same(b"".join(obj for obj, _ in self.kept), want, what)


def run_on(loop_name: str, coro_fn: Callable[..., Awaitable[None]], **kwargs: Any) -> None:
    """Run a test coroutine in a fresh debug loop of the given kind, with the
    plugin's checks: nothing may reach the loop's exception handler and no
    task may be left pending."""
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    run_async_test(coro_fn, kwargs, loop_factory=factory)


LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
    ),
]


# -- a. BufferedProtocol applications --------------------------------------------


@pytest.mark.parametrize("pausing", [False, True], ids=["flowing", "pausing"])
@pytest.mark.parametrize("size", [7, 16384, 300_000])
@pytest.mark.parametrize("depth", [1, 2, 3])
async def test_buffered_protocol_app_gets_exactly_what_was_sent(
    onion_ca: OnionCA, mode: str, pool: PoolGuard, depth: int, size: int, pausing: bool
) -> None:
    big = pattern(b"a%d" % depth, 700 * KB)
    tail = b"<short tail write>"
    app = BufRecorder(size, pause_every=100 * KB if pausing else None)
    async with connect("memory", client_factory=lambda: app) as pair:
        await push_layers(pair, onion_ca, mode, range(1, depth + 1))
        check_engine_path(mode, pair.client_onion, pair.server_onion)
        pair.server.write(big)
        await app.wait_for(lambda: app.total >= len(big), "the 700 KB")
        pair.server.write(tail)
        await app.wait_for(lambda: app.total >= len(big) + len(tail), "the tail")
        await settle()
        assert_same(app.data, big + tail, "what the BufferedProtocol app got")
        assert app.received_at(depth) == big + tail
        assert not app.violations, app.violations[:5]
        assert app.lost == []
        assert max(app.sizes) <= size
        if pausing:
            assert app.pauses == len(big) // (100 * KB)
            assert pair.client.is_reading()
        else:
            # straight from the engine into the app's buffer, record by record
            assert max(app.sizes) <= RECORD, "more than one record in one delivery"
            assert app.pauses == 0
    pool.check()


# -- b. plain Protocol applications get bytes that stay as they were ------------


async def _bytes_stay_bytes(ca: OnionCA, mode: str, depth: int) -> None:
    down = pattern(b"down", MiB)
    up = pattern(b"up", 300 * KB)
    async with connect("loopback", KeepRecorder, KeepRecorder) as pair:
        assert pair.kind == "loopback"
        await push_layers(pair, ca, mode, range(1, depth + 1))
        assert len(pair.client.layers) == depth
        c, s = pair.c, pair.s
        assert isinstance(c, KeepRecorder) and isinstance(s, KeepRecorder)
        pair.server.write(down)
        pair.client.write(up)
        await all_of(received(c, len(down)), received(s, len(up)))
        # a later read must not change what was delivered before it
        pair.server.write(b"later")
        await received(c, len(down) + 5)
        c.check(down + b"later", "client")
        s.check(up, "server")
        assert len(c.kept) > 1, "the test needs several reads"
        assert c.lost == [] and s.lost == []


@pytest.mark.parametrize("loop_name", LOOPS)
def test_plain_protocol_gets_bytes_that_stay_valid(
    onion_ca: OnionCA, mode: str, loop_name: str
) -> None:
    run_on(loop_name, _bytes_stay_bytes, ca=onion_ca, mode=mode, depth=2)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_plain_protocol_gets_bytes_that_stay_valid_in_plaintext(
    onion_ca: OnionCA, loop_name: str
) -> None:
    """No layer: no engine either (the engine path does not matter)."""
    run_on(loop_name, _bytes_stay_bytes, ca=onion_ca, mode="pyopenssl", depth=0)


# -- c. concurrent connections do not mix ---------------------------------------


async def test_three_connections_at_once_do_not_mix(
    onion_ca: OnionCA, mode: str, pool: PoolGuard
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        pairs: list[Pair] = []
        for _ in range(3):
            pairs.append(await stack.enter_async_context(connect("loopback")))
        await all_of(*(push_layers(p, onion_ca, mode, [1, 2]) for p in pairs))
        for p in pairs:
            check_engine_path(mode, p.client_onion, p.server_onion)
        ups = [pattern(b"up%d" % i, MiB) for i in range(3)]
        downs = [pattern(b"dn%d" % i, MiB) for i in range(3)]
        for p, up, down in zip(pairs, ups, downs, strict=True):
            p.client.write(up)
            p.server.write(down)
        await all_of(
            *(received(p.s, MiB) for p in pairs),
            *(received(p.c, MiB) for p in pairs),
        )
        await settle()
        for i, (p, up, down) in enumerate(zip(pairs, ups, downs, strict=True)):
            assert_same(p.s.data, up, f"connection {i}, client to server")
            assert_same(p.c.data, down, f"connection {i}, server to client")
            assert p.s.received_at(2) == up and p.c.received_at(2) == down
            assert p.c.lost == [] and p.s.lost == []
    pool.check()


# -- d. re-entrancy: a relay that feeds another onion stack synchronously --------


class Tunnel(asyncio.Transport):
    """The raw transport of stack B: what B writes travels as application
    data of connection A (through A's TLS layers)."""

    def __init__(self, carrier: OnionTransport) -> None:
        super().__init__()
        self.carrier = carrier
        self.protocol: OnionProtocol | None = None
        self.sent = bytearray()
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._closed
        self.sent += data
        self.carrier.write(data)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class DataRelay(Recorder):
    """A's client application: hands what it receives to stack B's raw side
    with ``data_received``, from inside its own ``data_received``."""

    target: OnionProtocol | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.target is not None
        self.target.data_received(data)


class BufferRelay(Recorder, asyncio.BufferedProtocol):
    """A's server application: lends stack B's own read buffer, so A's
    innermost layer decrypts straight into B's scratch buffer, and B
    decrypts it while A still holds its buffers."""

    target: OnionProtocol | None = None

    def __init__(self) -> None:
        super().__init__()
        self.relayed = bytearray()
        self._buf: Any = None

    def get_buffer(self, sizehint: int) -> Any:
        assert self.target is not None
        self._buf = self.target.get_buffer(sizehint)
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        assert self.target is not None
        self.relayed += memoryview(self._buf)[:nbytes]
        self._buf = None
        self.target.buffer_updated(nbytes)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - a bug
        raise AssertionError("data_received() called on a BufferedProtocol")


async def test_relay_feeding_another_stack_from_data_received(
    onion_ca: OnionCA, mode: str, pool: PoolGuard
) -> None:
    async with connect("memory", DataRelay, BufferRelay) as pair_a:
        relay_c, relay_s = pair_a.c, pair_a.s
        assert isinstance(relay_c, DataRelay) and isinstance(relay_s, BufferRelay)
        await push_layers(pair_a, onion_ca, mode, [1, 2])
        # stack B runs inside connection A
        b_client, b_server = OnionProtocol(Recorder()), OnionProtocol(Recorder())
        tunnel_c, tunnel_s = Tunnel(pair_a.client), Tunnel(pair_a.server)
        tunnel_c.protocol, tunnel_s.protocol = b_client, b_server
        relay_c.target, relay_s.target = b_client, b_server
        b_client.connection_made(tunnel_c)
        b_server.connection_made(tunnel_s)
        pair_b = OnionPair(None, b_client, b_server)  # type: ignore[arg-type]
        bc, bs = b_client.transport.get_protocol(), b_server.transport.get_protocol()
        assert isinstance(bc, Recorder) and isinstance(bs, Recorder)
        try:
            await push_layers(pair_b, onion_ca, mode, [3, 4])
            check_engine_path(mode, b_client, b_server, pair_a.client_onion, pair_a.server_onion)
            up, down = pattern(b"B-up", MiB), pattern(b"B-down", MiB)
            pair_b.client.write(up)
            pair_b.server.write(down)
            await all_of(received(bs, len(up)), received(bc, len(down)))
            await settle()
            assert_same(bs.data, up, "B, client to server")
            assert_same(bc.data, down, "B, server to client")
            assert bs.received_at(2) == up and bc.received_at(2) == down
            # A's stream: exactly the ciphertext B wrote, each way
            assert_same(relay_s.relayed, bytes(tunnel_c.sent), "A, client to server")
            assert_same(relay_c.data, bytes(tunnel_s.sent), "A, server to client")
            for rec in (bc, bs, relay_c, relay_s):
                assert rec.lost == []
            assert len(pair_a.client.layers) == 2 and len(pair_b.client.layers) == 2
        finally:
            pair_b.client.abort()
            pair_b.server.abort()
            await bc.wait_lost()
            await bs.wait_lost()
    pool.check()
    # The relays nest: A's read buffer and layer-1 buffer, then B's, at once.
    assert pool.most_in_use >= 4, pool.most_in_use
    assert not pool.in_use, "scratch buffers still lent after every connection ended"


# -- e. exact unwrap at depth 3 under the new path --------------------------------


@pytest.mark.parametrize("app", ["protocol", "buffered"])
@pytest.mark.parametrize("coalesce", [False, True], ids=["per-write", "coalesced"])
async def test_unwrap_depth3_after_a_mebibyte_each_way(
    onion_ca: OnionCA, mode: str, pool: PoolGuard, coalesce: bool, app: str
) -> None:
    factory: Callable[[], asyncio.BaseProtocol] = Recorder
    if app == "buffered":
        factory = functools.partial(BufRecorder, 5000)
    async with connect("memory", factory, coalesce=coalesce) as pair:
        c, s = pair.c, pair.s
        await push_layers(pair, onion_ca, mode, [1, 2, 3])
        check_engine_path(mode, pair.client_onion, pair.server_onion)
        up, down = pattern(b"e-up", MiB), pattern(b"e-down", MiB)
        stops: list[asyncio.Future[Any]] = []

        def answer() -> None:
            # the client answers the server's close_notify, with data
            # inside the closing layer and after it
            pair.client.write(b"c-before-close;")
            stops.append(pair.client.stop_tls())
            pair.client.write(b"c-after-close;")
            c.on_eof = None

        c.on_eof = answer
        pair.client.write(up)
        pair.server.write(down)
        # the server pops layer 3 while both mebibytes are still in flight
        pair.server.write(b"s-before-close;")
        server_stop = pair.server.stop_tls()
        pair.server.write(b"s-after-close;")
        popped = await asyncio.wait_for(server_stop, WAIT)
        assert popped.depth == 3
        await c.wait_for(lambda: bool(stops), "the client's stop_tls")
        assert (await asyncio.wait_for(stops[0], WAIT)).depth == 3
        await c.wait_for(lambda: b"s-after-close;" in c.data[-20:], "server data after the pop")
        await s.wait_for(lambda: b"c-after-close;" in s.data[-20:], "client data after the pop")
        assert_same(c.received_at(3), down + b"s-before-close;", "client, inside layer 3")
        assert c.received_at(2) == b"s-after-close;"
        assert_same(s.received_at(3), up + b"c-before-close;", "server, inside layer 3")
        assert s.received_at(2) == b"c-after-close;"
        assert (c.eofs, s.eofs) == (1, 0)
        assert len(pair.client.layers) == len(pair.server.layers) == 2
        # layer 2 carries on
        pair.client.write(b"still two")
        pair.server.write(b"still two too")
        await s.wait_for(lambda: s.data.endswith(b"still two"), "depth 2 after the pop")
        await c.wait_for(lambda: c.data.endswith(b"still two too"), "depth 2 after the pop")
        assert c.received_at(2) == b"s-after-close;still two too"
        assert s.received_at(2) == b"c-after-close;still two"
        if isinstance(c, BufRecorder):
            assert not c.violations, c.violations[:5]
        assert c.lost == [] and s.lost == []
    pool.check()


# -- f. STARTTLS inside a layer, pipelined, without initial_bytes ----------------


async def test_starttls_inside_a_layer_pipelined_in_one_read(
    onion_ca: OnionCA, mode: str, pool: PoolGuard
) -> None:
    eng = engine_of(mode)
    async with connect("memory", coalesce=True) as pair:
        c, s = pair.c, pair.s
        await push_layers(pair, onion_ca, mode, [1])
        pair.client.write(b"hello;")
        await s.expect(b"hello;")
        s.at_depth.clear()

        # what the server's raw side reads, read by read
        onion = pair.server_onion
        reads: list[bytes] = []
        lent: list[Any] = []
        orig_get, orig_updated = onion.get_buffer, onion.buffer_updated

        def get_buffer(sizehint: int) -> Any:
            lent.append(orig_get(sizehint))
            return lent[-1]

        def buffer_updated(nbytes: int) -> None:
            reads.append(bytes(memoryview(lent.pop())[:nbytes]))
            orig_updated(nbytes)

        onion.get_buffer = get_buffer  # type: ignore[method-assign]
        onion.buffer_updated = buffer_updated  # type: ignore[method-assign]

        upgrade: list[tuple[asyncio.Future[Any], int]] = []

        def on_data(data: bytes) -> None:
            if data == b"STARTTLS\r\n" and not upgrade:
                fut = pair.server.start_tls(onion_ca.server_context(2, eng), server_side=True)
                upgrade.append((fut, len(reads) - 1))

        s.on_data = on_data
        # the command and the ClientHello leave back to back
        pair.client.write(b"STARTTLS\r\n")
        client_up = pair.client.start_tls(
            onion_ca.client_context(eng), server_hostname=onion_ca.hostname(2)
        )
        pair.client.write(b"queued during the handshake;")
        await s.wait_for(lambda: bool(upgrade), "STARTTLS at the server")
        server_up, read_no = upgrade[0]
        lc, ls = await all_of(client_up, server_up)
        assert lc.depth == ls.depth == 2 and lc.version and ls.version
        check_engine_path(mode, pair.client_onion, pair.server_onion)

        # STARTTLS and the ClientHello came in the same read
        framer = RecordFramer()
        framer.feed(reads[read_no])
        records = []
        while (rec := framer.next_record()) is not None:
            records.append(bytes(rec))
        assert framer.error is None
        assert len(records) >= 2, f"{len(records)} record(s) in the STARTTLS read"

        pair.server.write(b"inside two;")
        await c.expect(b"inside two;")
        await s.wait_for(lambda: bool(s.received_at(2)), "data inside layer 2")
        assert s.received_at(1) == b"STARTTLS\r\n"
        assert s.received_at(2) == b"queued during the handshake;"
        assert c.received_at(2) == b"inside two;"
        assert c.lost == [] and s.lost == []
    pool.check()


# -- g. the record framer lets go of the chunk on detach() -----------------------


def _records(*sizes: int) -> list[bytes]:
    """Fake application_data records (header + patterned body)."""
    return [
        bytes([23, 3, 3, n >> 8, n & 0xFF]) + pattern(b"r%d" % i, n) for i, n in enumerate(sizes)
    ]


RECORDS = _records(0, 1, 100, 300, 2000)
STREAM = b"".join(RECORDS)


def _feed_detach_and_reuse(framer: RecordFramer, data: bytes, *, take: int | None) -> list[bytes]:
    """Feed ``data`` in a bytearray, take ``take`` records (None: all),
    detach, then reuse the bytearray's memory as a scratch buffer would."""
    chunk = bytearray(data)
    framer.feed(chunk)
    got = []
    while take is None or len(got) < take:
        rec = framer.next_record()
        if rec is None:
            break
        got.append(bytes(rec))
        del rec
    framer.detach()
    chunk[:] = b"\x00" * len(chunk)
    # resizing raises BufferError while any view of the chunk is alive
    chunk.extend(b"\xee" * 7)
    chunk.clear()
    return got


@pytest.mark.parametrize("extra_cut", [0, 3], ids=["one-cut", "two-cuts"])
def test_framer_detach_keeps_the_partial_record(extra_cut: int) -> None:
    """As a layer uses it: take every whole record, detach, reuse the chunk."""
    for k in range(len(STREAM) + 1):
        cuts = [k, min(len(STREAM), k + extra_cut)]
        framer = RecordFramer()
        got: list[bytes] = []
        pos = 0
        for cut in [*cuts, len(STREAM)]:
            got += _feed_detach_and_reuse(framer, STREAM[pos:cut], take=None)
            pos = cut
            # what was fed and not returned is held, copied
            assert framer.buffered() == pos - sum(map(len, got)), (k, cuts)
        assert framer.error is None
        assert got == RECORDS, (k, cuts)
        assert framer.take_rest() == b""


def test_framer_detach_with_whole_records_left_in_the_chunk() -> None:
    """detach() while whole records are still unread in the chunk (a caller
    that stops early): they must still come out one record at a time."""
    for k in range(len(STREAM) + 1):
        framer = RecordFramer()
        got = _feed_detach_and_reuse(framer, STREAM[:k], take=1)
        got += _feed_detach_and_reuse(framer, STREAM[k:], take=1)
        while (rec := framer.next_record()) is not None:
            got.append(bytes(rec))
        assert framer.error is None
        sizes = [len(r) for r in got]
        assert sizes == [len(r) for r in RECORDS], f"record sizes with the cut at {k}"
        assert got == RECORDS, f"cut at {k}"


def test_framer_detach_then_take_rest() -> None:
    stream = b"".join(_records(10, 20))
    chunk = bytearray(stream[:30])  # one record and a part of the next
    framer = RecordFramer()
    framer.feed(chunk)
    first = framer.next_record()
    assert first is not None and bytes(first) == stream[:15]
    del first
    framer.detach()
    chunk[:] = b"\xff" * len(chunk)
    assert framer.buffered() == 15
    assert framer.take_rest() == stream[15:30]
    assert framer.next_record() is None
