"""Seeded fault injection between two onion stacks, in memory.

Every case is drawn from one integer seed: how many layers, which engine
and TLS version each side of each layer uses, how the byte stream is cut
and joined, whether one direction lags, what data is exchanged at every
depth (some of it written during handshakes, during stops, or in flight
across a close_notify), whether the applications pause reading and use
small write buffers, how layers are popped (both at once, or answered from
``eof_received``), whether they are pushed again, whether a stop or a close
comes while a handshake runs, how the connection ends, and at most one
fault:

* ``flip`` / ``insert``: change or insert a byte at offset N of the
  ciphertext that the receiving side's layer k is fed.  For k > 1 those are
  bytes of layer k-1's *plaintext*, so layer k-1 authenticates them and only
  layer k can notice: the corruption is aimed at one depth.
* ``reset``: the connection is cut (RST both ways) after N bytes of one
  direction.
* ``eof``: a TCP FIN arrives after N bytes of one direction, without the
  close_notify that a clean close sends (a truncation attack); the sender
  is not told and what it sends later is lost.
* ``stall``: after N bytes one direction delivers nothing more, ever, and
  no EOF either: handshakes and shutdowns must end by their timeouts.

The two stacks talk through :class:`FaultPipe`, a network with a kernel's
buffering (a closing socket is gone once its bytes are handed over; bytes
sent to a socket that is gone come back as an RST, after its FIN).
Cases run on :class:`VirtualClockLoop`, whose clock jumps to the next timer
whenever nothing is ready to run: a run is deterministic (replay it from its
seed), timeouts cost no wall time, and a program that waits for something
that can never happen is *seen* to hang (nothing ready, no timer left).
Server certificates use RSA keys, whose signatures have a fixed length, so
a seed lays out the very same records on every run.

What every case must show:

1. what each side's application received is a prefix of what the other
   sent, in order (corrupted bytes are never delivered);
2. data written at depth d never appears in clear on the wire, nor in the
   bytes the receiving side's layers 1..d are fed (never sent weaker);
3. a clean ending is complete: when ``eof_received()`` reports the peer's
   close_notify, or a ``stop_tls()`` future resolves, everything the peer
   wrote before its close_notify has been delivered;
4. every ``start_tls``/``stop_tls`` future is done, each application gets
   exactly one ``connection_lost``, errors are ``OnionError`` naming their
   depth (or the reset the fault caused); without a fault (or when the fault
   never fired) both ends are clean and complete; a corruption at depth k
   that did harm shows as an error at depth >= k;
5. nothing reaches the loop's exception handler, no task is left pending,
   nothing hangs.

Replay one case: ``pytest 'tests/test_faults.py::test_fault_case[seed123]'`` or
``python stress/faults.py --seed 123 -v``.  ``nox -s stress`` runs thousands.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import os
import random
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import trustme

import onion_tls
from onion_tls import HandshakeError, LayerStateError, OnionError, TruncatedError
from onion_tls.testing import MemoryPipe, MemoryTransport, OnionCA

SEEDS = int(os.environ.get("ONION_FAULT_SEEDS", "400"))
#: Every DEBUG_EVERY-th seed runs with asyncio debug mode on (it costs 4x).
DEBUG_EVERY = 4

HANDSHAKE_TIMEOUT = 20.0  # virtual seconds
STOP_TIMEOUT = 20.0
DATA_WAIT = 30.0  # how long a script waits for data before it moves on
END_WAIT = 200.0  # how long it waits for connection_lost
MAX_ITERATIONS = 3_000_000  # loop iterations before a case counts as livelocked
MAX_VIRTUAL_TIME = 5_000.0
WIRE_CAPACITY = 256 * 1024  # bytes in flight per direction


# -- a deterministic clock ------------------------------------------------------


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when nothing is ready to run.

    It then jumps to the next timer.  With no timer left and nothing ready,
    nothing can ever happen again: the watched task is cancelled and
    :attr:`hang` says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self.hang: str | None = None
        self.iterations = 0
        self.watched: asyncio.Task[Any] | None = None

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        self.iterations += 1
        ready: Any = self._ready  # type: ignore[attr-defined]
        if not ready and not self._stopping:  # type: ignore[attr-defined]
            whens = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
            if whens:
                self._now = max(self._now, min(whens))
            else:
                self._hung("nothing left to run")
        if self.iterations > MAX_ITERATIONS or self._now > MAX_VIRTUAL_TIME:
            # Busy without end (timers or callbacks that keep rescheduling
            # themselves): a livelock is a hang too.
            self._hung(f"livelock: {self.iterations} iterations, {self._now:.0f} virtual s")
        super()._run_once()  # type: ignore[misc]

    def _hung(self, why: str) -> None:
        task = self.watched
        if task is not None and not task.done() and self.hang is None:
            self.hang = f"{why}; the script waited at\n{_stack_text(task)}"
            task.cancel()


def _stack_text(task: asyncio.Task[Any]) -> str:
    """Where a suspended task waits: its chain of awaiting coroutines."""
    lines = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "\n".join(lines)


def run_virtual(
    coro_fn: Callable[[], Any], *, debug: bool = True
) -> tuple[list[dict[str, Any]], str | None]:
    """Run ``coro_fn()`` on a fresh :class:`VirtualClockLoop`.  Returns what
    reached the exception handler and the hang report (None if it ended)."""
    loop = VirtualClockLoop()
    loop.set_debug(debug)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    async def main() -> None:
        await coro_fn()
        for _ in range(5):
            await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            errors.append({"message": f"tasks left pending: {pending!r}"})

    try:
        task = loop.create_task(main())
        loop.watched = task
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            if loop.hang is None:
                raise
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return errors, loop.hang


# -- the plan a seed draws -------------------------------------------------------


@dataclasses.dataclass
class LayerPlan:
    client: str  # "a" or "b": who is the TLS client of this layer
    client_engine: str
    server_engine: str
    version: str | None  # None: both versions allowed (TLS 1.3 wins)


@dataclasses.dataclass
class Fault:
    kind: str  # flip, insert, reset, eof, stall
    src: str  # the direction, named by its sender ("a" or "b")
    offset: int
    depth: int = 0  # flip/insert: the layer whose ciphertext is hit
    value: bytes = b""  # flip: the xor mask (1 byte); insert: the bytes

    def __str__(self) -> str:
        where = f" of layer {self.depth}'s ciphertext" if self.depth else " on the wire"
        extra = f" {self.value.hex()}" if self.value else ""
        return f"{self.kind}{extra} at byte {self.offset}{where}, {self.src}->{_other(self.src)}"


@dataclasses.dataclass
class Plan:
    seed: int
    layers: list[LayerPlan]
    chunking: str
    delayed: str | None  # the direction (by sender) that lags
    delay: float
    fault: Fault | None
    pops: int
    pop_mode: str  # "both": both call stop_tls; "eof": one answers in eof_received
    ending: str
    max_message: int
    in_flight: bool  # the other side's data is in flight when a stop begins
    flow: bool  # small write buffers; applications pause and resume reading
    repush: bool  # after the pops, push the layers again
    early: str | None  # at the last push: "stop" or "close" before the handshake ends

    def describe(self) -> str:
        layers = ", ".join(
            f"L{i + 1}[client={lp.client} {lp.client_engine}/{lp.server_engine}"
            f" {lp.version or 'any'}]"
            for i, lp in enumerate(self.layers)
        )
        lag = ""
        if self.delayed:
            lag = f", {self.delayed}->{_other(self.delayed)} lags {self.delay * 1000:.1f} ms"
        return (
            f"seed {self.seed}: {layers}; chunks {self.chunking}{lag}; "
            f"fault: {self.fault or 'none'}; pops {self.pops} ({self.pop_mode})"
            f"{', data in flight' if self.in_flight else ''}"
            f"{', then push again' if self.repush else ''}; "
            f"{'flow control; ' if self.flow else ''}"
            f"{f'{self.early} during the last handshake; ' if self.early else ''}"
            f"ending {self.ending}"
        )


def _other(side: str | None) -> str:
    return "b" if side == "a" else "a"


ENGINES = ("pyopenssl", "stdlib")
CHUNKINGS = ("dribble", "small", "medium", "random", "whole", "mixed")


def make_plan(seed: int) -> Plan:
    rng = random.Random(seed)
    n = rng.choice((1, 1, 2, 2, 2, 3))
    layers = [
        LayerPlan(
            client=rng.choice("ab"),
            client_engine=rng.choice(ENGINES),
            server_engine=rng.choice(ENGINES),
            version=rng.choice((None, "TLSv1.2", "TLSv1.3")),
        )
        for _ in range(n)
    ]
    chunking = rng.choice(CHUNKINGS)
    delayed = rng.choice((None, None, "a", "b"))
    delay = rng.uniform(0.0001, 0.02)
    max_message = 3000 if chunking in ("dribble", "small") else rng.choice((20_000, 200_000))
    kind = rng.choice(("none", "none", "flip", "flip", "insert", "reset", "eof", "stall"))
    fault = None
    if kind != "none":
        src = rng.choice("ab")
        if kind in ("flip", "insert"):
            depth = rng.randint(1, n)
            offset = rng.randint(0, 6000 if rng.random() < 0.7 else 60_000)
            value = (
                bytes([rng.randint(1, 255)])
                if kind == "flip"
                else rng.randbytes(rng.choice((1, 1, 2, 5)))
            )
            fault = Fault(kind, src, offset, depth, value)
        else:
            fault = Fault(kind, src, rng.randint(0, 6000 * n if rng.random() < 0.7 else 80_000))
    pops = rng.randint(0, n)
    pop_mode = rng.choice(("both", "both", "eof"))
    ending = rng.choice(("a_close", "b_close", "both_close", "a_abort", "b_close_plain"))
    return Plan(
        seed=seed,
        layers=layers,
        chunking=chunking,
        delayed=delayed,
        delay=delay,
        fault=fault,
        pops=pops,
        pop_mode=pop_mode,
        ending=ending,
        max_message=max_message,
        in_flight=rng.random() < 0.5,
        flow=rng.random() < 0.3,
        repush=pops > 0 and rng.random() < 0.3,
        early=rng.choice((None, None, None, None, "stop", "close")),
    )


# -- certificates ------------------------------------------------------------------


@functools.cache
def fault_ca() -> OnionCA:
    """Server keys are RSA: fixed-length signatures, so the records of a
    seeded case are laid out the same on every run."""
    return OnionCA(trustme.CA(key_type=trustme.KeyType.RSA), server_key_type=trustme.KeyType.RSA)


@functools.cache
def _context(kind: str, depth: int, engine: str, version: str | None) -> Any:
    ca = fault_ca()
    if kind == "server":
        return ca.server_context(depth, engine, version=version)  # type: ignore[arg-type]
    return ca.client_context(engine, version=version)  # type: ignore[arg-type]


# -- the faulty pipe ----------------------------------------------------------------


class Wire:
    """One direction of the network: what the sender's kernel took and the
    receiver has not read yet, then maybe a FIN."""

    def __init__(self) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.fin = False
        self.fin_delivered = False
        self.ready_at: float | None = None
        #: Stalled or cut: what is sent from now on is lost.
        self.blackhole = False
        #: An RST follows what is in flight (the sender's socket is gone).
        self.rst = False

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0
        self.ready_at = None


class FaultPipe(MemoryPipe):
    """A :class:`MemoryPipe` with a network in the middle, moving bytes by
    itself on the loop, one random step per callback.

    A sender's transport hands its bytes to the network (up to
    ``WIRE_CAPACITY`` in flight, like a kernel's buffers) whether or not the
    receiver is reading, and a closing transport is gone once its bytes and
    FIN are handed over, as with asyncio over TCP.  The network delivers in
    randomly sized pieces (cutting writes apart and joining them), lets one
    direction lag, and applies the plan's wire fault.
    """

    def __init__(self, plan: Plan, rng: random.Random) -> None:
        super().__init__(auto=False)
        self.plan = plan
        self.rng = rng
        self.wires = {"a": Wire(), "b": Wire()}  # by sender
        self.delivered = {"a": 0, "b": 0}
        self._tick: asyncio.Handle | None = None
        self.fired: str | None = None
        self.ticks = 0

    # scheduling
    def kick(self) -> None:
        if self._tick is None:
            self._tick = self.loop.call_soon(self._run_tick)

    def _run_tick(self) -> None:
        self._tick = None
        self.ticks += 1
        actions, wake = self._actions(self.loop.time())
        if actions:
            kind, src = self.rng.choice(actions)
            getattr(self, f"_do_{kind}")(src)
            if self._tick is None and self._actions(self.loop.time())[0]:
                if self.rng.random() < 0.1:
                    self._tick = self.loop.call_later(0.0002, self._run_tick)
                else:
                    self._tick = self.loop.call_soon(self._run_tick)
            elif self._tick is None:
                self._kick_at(self._actions(self.loop.time())[1])
        else:
            self._kick_at(wake)

    def _kick_at(self, when: float | None) -> None:
        if when is not None and self._tick is None:
            self._tick = self.loop.call_at(when, self._run_tick)

    def _actions(self, now: float) -> tuple[list[tuple[str, MemoryTransport]], float | None]:
        """What can happen now, and when something may become possible."""
        actions: list[tuple[str, MemoryTransport]] = []
        wake: float | None = None
        for src in (self.a, self.b):
            dst, wire = src.peer, self.wires[src.name]
            if not src.lost:
                if src.outgoing and wire.size < WIRE_CAPACITY:
                    actions.append(("send", src))
                elif not src.outgoing and (src.closing or src.eof_written) and not wire.fin:
                    actions.append(("fin", src))
            if wire.rst and not dst.lost and not wire.chunks and wire.fin <= wire.fin_delivered:
                actions.append(("rst", src))  # after the FIN, if one is on its way
            if wire.chunks or (wire.fin and not wire.fin_delivered):
                if dst.lost:
                    actions.append(("drop", src))
                elif dst.reading:  # else resume_reading() kicks
                    if wire.ready_at is None or now >= wire.ready_at:
                        actions.append(("deliver", src))
                    else:
                        wake = wire.ready_at if wake is None else min(wake, wire.ready_at)
        return actions, wake

    # steps
    def _do_send(self, src: MemoryTransport) -> None:
        """The sender's kernel takes what its transport buffered."""
        wire = self.wires[src.name]
        data = src.drop_outgoing()
        src.update_flow()
        if wire.blackhole or not data:
            return
        if wire.ready_at is None:
            lag = self.plan.delay if src.name == self.plan.delayed else 0.0
            wire.ready_at = self.loop.time() + lag
        wire.chunks.append(data)
        wire.size += len(data)

    def _do_fin(self, src: MemoryTransport) -> None:
        wire = self.wires[src.name]
        wire.fin = True
        if wire.blackhole:
            wire.fin_delivered = True
        if src.closing:
            self.lose(src, None)

    def _do_drop(self, src: MemoryTransport) -> None:
        """Bytes for a socket that is gone: TCP answers with an RST, which
        arrives after whatever that socket had sent (its FIN included)."""
        wire = self.wires[src.name]
        had_data = bool(wire.chunks)
        wire.clear()
        wire.fin_delivered = True
        if had_data and not src.lost:
            self.wires[src.peer.name].rst = True

    def _do_rst(self, src: MemoryTransport) -> None:
        self.wires[src.name].rst = False
        self.reset(src.peer)

    def _do_deliver(self, src: MemoryTransport) -> None:
        wire, dst, name = self.wires[src.name], src.peer, src.name
        if not wire.chunks:
            wire.fin_delivered = True
            keep = dst.protocol.eof_received()  # type: ignore[union-attr]
            if not keep:
                dst.close()
            return
        data = self._take(wire, self._piece_size(wire.size))
        fault = self.plan.fault
        action = None
        if (
            fault is not None
            and fault.depth == 0
            and fault.src == name
            and self.fired is None
            and self.delivered[name] + len(data) >= fault.offset
        ):
            cut = fault.offset - self.delivered[name]
            rest, data = data[cut:], data[:cut]
            if rest:
                wire.chunks.appendleft(rest)
                wire.size += len(rest)
            action = fault.kind
        self.delivered[name] += len(data)
        self.sent[name] += data
        if data:
            dst.protocol.data_received(data)  # type: ignore[union-attr]
        if action is not None:
            self.fire(action, src)

    def fire(self, action: str, src: MemoryTransport) -> None:
        self.fired = f"{action} after {self.delivered[src.name]} bytes {src.name}->{src.peer.name}"
        dst, wire = src.peer, self.wires[src.name]
        if action == "reset":
            self.reset(src)
            self.reset(dst)
        else:  # eof, stall: nothing more arrives from src, ever
            wire.blackhole = True
            wire.clear()
            wire.fin_delivered = True  # a FIN from src will never arrive either
            if action == "eof" and not dst.lost:
                keep = dst.protocol.eof_received()  # type: ignore[union-attr]
                if not keep:
                    dst.close()
        self.kick()

    def _piece_size(self, total: int) -> int:
        mode = self.plan.chunking
        if mode == "mixed":
            mode = self.rng.choice(CHUNKINGS[:-1])
        if mode == "dribble":
            n = self.rng.randint(1, 3)
        elif mode == "small":
            n = self.rng.randint(1, 64)
        elif mode == "medium":
            n = self.rng.randint(1, 4096)
        elif mode == "random":
            n = self.rng.randint(1, total)
        else:
            n = total
        return min(n, total)

    @staticmethod
    def _take(wire: Wire, n: int) -> bytes:
        out = bytearray()
        while n > 0 and wire.chunks:
            head = wire.chunks[0]
            if len(head) <= n:
                out += wire.chunks.popleft()
                n -= len(head)
            else:
                out += head[:n]
                wire.chunks[0] = head[n:]
                n = 0
        wire.size -= len(out)
        if not wire.chunks:
            wire.ready_at = None
        return bytes(out)

    def reset(self, t: MemoryTransport) -> None:
        # An RST: nothing in flight either way survives.
        self.wires[t.name].clear()
        self.wires[t.peer.name].clear()
        super().reset(t)


# -- the applications ----------------------------------------------------------------


class App(asyncio.Protocol):
    """Records what it receives; checks clean endings as they happen."""

    def __init__(self, case: Case, side: str) -> None:
        self.case = case
        self.side = side
        self.received = bytearray()
        self.lost: list[BaseException | None] = []
        self.eofs = 0
        self.answer_eof = False
        #: The script is about to call stop_tls() itself: keep the
        #: connection open when the peer's close_notify comes first.
        self.expect_stop = False
        self.writing_events: list[str] = []
        self.changed = asyncio.Event()
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.changed.set()
        case = self.case
        if case.plan.flow and case.rng.random() < 0.2:
            # Pause reading for a while: deliveries wait, handshakes and
            # shutdowns must not.
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            loop.call_later(case.rng.uniform(0, 0.05), self.transport.resume_reading)

    def pause_writing(self) -> None:
        self.writing_events.append("pause")

    def resume_writing(self) -> None:
        self.writing_events.append("resume")

    def eof_received(self) -> bool:
        self.eofs += 1
        self.case.check_clean_end(self.side, "eof_received()")
        self.changed.set()
        if self.answer_eof and self.transport.layers:
            self.answer_eof = False
            self.case.stop(self.side)
            if self.case.rng.random() < 0.5:
                self.case.send(self.side)
            return True
        if self.expect_stop and self.transport.layers:
            return True
        # The connection will now be closed by the chain: that is this
        # side's last word at this depth.
        self.case.mark(self.side)
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.changed.set()


# -- one case ----------------------------------------------------------------------------


@dataclasses.dataclass
class Message:
    side: str
    depth: int
    marker: bytes


class Case:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rng = random.Random(f"{plan.seed}/script")
        self.pipe = FaultPipe(plan, random.Random(f"{plan.seed}/pipe"))
        self.apps = {"a": App(self, "a"), "b": App(self, "b")}
        self.onions = {s: onion_tls.OnionProtocol(self.apps[s]) for s in "ab"}
        self.pipe.connect(self.onions["a"], self.onions["b"])
        self.sent = {"a": bytearray(), "b": bytearray()}
        self.depth = {"a": 0, "b": 0}
        #: marks[side][depth]: how much ``side`` had sent when it spoke its
        #: last word (close_notify or FIN) at ``depth``.
        self.marks: dict[str, dict[int, int]] = {"a": {}, "b": {}}
        self.messages: list[Message] = []
        self.futures: list[tuple[str, asyncio.Future[Any]]] = []
        self.stops: dict[str, list[asyncio.Future[Any]]] = {"a": [], "b": []}
        #: The bytes each receiving layer was fed: (side, depth) -> stream.
        self.fed: dict[tuple[str, int], bytearray] = {}
        self.fault_hit: dict[str, Any] | None = None
        self.violations: list[str] = []
        self.closed_by_app = {"a": False, "b": False}
        self.notes: list[str] = []
        self.plain_eofs: list[tuple[str, str]] = []
        #: Closed during a handshake: what it had not read yet may be lost.
        self.early_closer: str | None = None
        self.early_depth = 0
        #: ... and what both had sent before that handshake began (what
        #: was queued in the handshake is never sent: rule 13).
        self.sent_before_early: dict[str, int] = {}

    # -- actions --------------------------------------------------------------

    def transport(self, side: str) -> onion_tls.OnionTransport:
        return self.apps[side].transport

    def send(self, side: str, size: int | None = None) -> None:
        t = self.transport(side)
        if t.is_closing():
            return
        if size is None:
            size = self._message_size()
        marker = self.rng.randbytes(16)
        body = marker + self.rng.randbytes(max(0, size - 16))
        self.messages.append(Message(side, self.depth[side], marker))
        self.sent[side] += body
        if self.rng.random() < 0.3 and len(body) > 2:
            cut = self.rng.randint(1, len(body) - 1)
            t.writelines([body[:cut], body[cut:]])
        else:
            t.write(body)

    def _message_size(self) -> int:
        top = self.plan.max_message
        r = self.rng.random()
        if r < 0.7:
            return self.rng.randint(16, min(2000, top))
        if r < 0.95:
            return self.rng.randint(16, min(40_000, top))
        return self.rng.randint(16, top)

    def mark(self, side: str) -> None:
        self.marks[side][self.depth[side]] = len(self.sent[side])

    def push(self, side: str, depth: int) -> asyncio.Future[Any]:
        lp = self.plan.layers[depth - 1]
        t = self.transport(side)
        if side == lp.client:
            ctx = _context("client", depth, lp.client_engine, lp.version)
            fut = t.start_tls(
                ctx,
                server_hostname=OnionCA.hostname(depth),
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        else:
            ctx = _context("server", depth, lp.server_engine, lp.version)
            fut = t.start_tls(ctx, server_side=True, handshake_timeout=HANDSHAKE_TIMEOUT)
        self.depth[side] = depth
        self._tap(side, depth)
        self.futures.append((f"{side}: start_tls({depth})", fut))
        return fut

    def stop(self, side: str) -> asyncio.Future[Any]:
        t = self.transport(side)
        depth = self.depth[side]
        fut = t.stop_tls(timeout=STOP_TIMEOUT)
        self.mark(side)
        self.depth[side] = depth - 1
        self.futures.append((f"{side}: stop_tls({depth})", fut))
        self.stops[side].append(fut)
        fut.add_done_callback(functools.partial(self._stopped, side, depth))
        return fut

    def _stopped(self, side: str, depth: int, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.check_clean_end(side, f"stop_tls({depth}) resolved", depth=depth)

    def close(self, side: str) -> None:
        if self.transport(side).is_closing():
            return
        self.mark(side)
        self.closed_by_app[side] = True
        self.transport(side).close()

    def _tap(self, side: str, depth: int) -> None:
        """Record (and, for a flip/insert fault, corrupt) what the new layer
        of ``side`` at ``depth`` is fed."""
        layer = self.onions[side].layer_chain.innermost()
        assert layer is not None and layer.depth == depth
        stream = self.fed.setdefault((side, depth), bytearray())
        fault = self.plan.fault
        aimed = fault is not None and fault.depth == depth and fault.src == _other(side)
        original = layer.receive
        case = self

        def receive(data: bytes) -> None:
            if aimed and case.fault_hit is None and layer.state.value in _READING:
                assert fault is not None
                pos = fault.offset - len(stream)
                if 0 <= pos < len(data):
                    # Feed what comes before the target first: if that ends
                    # the session (a close_notify), the target byte belongs
                    # to the layer beneath, in clear, and is left alone.
                    if pos:
                        stream.extend(data[:pos])
                        original(data[:pos])
                        data = data[pos:]
                        successor = layer.outer.inner
                        if successor is not layer:
                            # Popped by what it just read: the rest goes
                            # where the chain now sends it.
                            successor.receive(data)
                            return
                    if layer.state.value in _READING:
                        if fault.kind == "flip":
                            data = bytes([data[0] ^ fault.value[0]]) + data[1:]
                        else:
                            data = fault.value + data
                        case.fault_hit = {"depth": depth, "time": case.pipe.loop.time()}
            stream.extend(data)
            original(data)

        layer.receive = receive  # type: ignore[method-assign]

    # -- waiting ---------------------------------------------------------------

    @property
    def any_lost(self) -> bool:
        return any(app.lost for app in self.apps.values())

    async def wait_until(self, cond: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            remaining = deadline - loop.time()
            if remaining < 1e-6:  # not <= 0: float sums never quite get there
                return False
            for app in self.apps.values():
                app.changed.clear()
            waiters = [asyncio.ensure_future(app.changed.wait()) for app in self.apps.values()]
            try:
                await asyncio.wait(waiters, timeout=min(remaining, 1.0))
            finally:
                for w in waiters:
                    w.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        return True

    def delivered_all(self) -> bool:
        return all(
            len(self.apps[_other(s)].received) >= self.sent_before_early.get(s, len(self.sent[s]))
            for s in "ab"
            if _other(s) != self.early_closer
        )

    async def exchange(self) -> None:
        for side in "ab":
            for _ in range(self.rng.randint(0, 3)):
                self.send(side)
        await self.wait_until(lambda: self.delivered_all() or self.any_lost, DATA_WAIT)

    async def settle(self, futs: list[asyncio.Future[Any]]) -> bool:
        """Wait for ``futs``; True if all succeeded."""
        results = await asyncio.gather(*futs, return_exceptions=True)
        ok = True
        for r in results:
            if isinstance(r, BaseException):
                if not isinstance(r, OnionError):
                    self.violations.append(f"a future failed with a non-OnionError: {r!r}")
                ok = False
        return ok

    # -- the script -----------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._script()
        except LayerStateError as exc:
            # Misuse is only legitimate once the connection is going away.
            if not any(self.transport(s).is_closing() for s in "ab"):
                raise
            self.note(f"script stopped: {exc}")
        await self._ending()

    def note(self, text: str) -> None:
        self.notes.append(text)

    async def _script(self) -> None:
        plan = self.plan
        if plan.flow:
            for side in "ab":
                self.transport(side).set_write_buffer_limits(high=self.rng.randint(1000, 20_000))
        await self.exchange()
        if not await self._push_all(1):
            return
        for _ in range(plan.pops):
            if self.any_lost or not self.transport("a").layers or not await self._pop():
                return
        if plan.repush and not self.any_lost:
            await self._push_all(self.depth["a"] + 1)

    async def _push_all(self, first_depth: int) -> bool:
        for depth in range(first_depth, len(self.plan.layers) + 1):
            if self.any_lost:
                return False
            order = list("ab")
            self.rng.shuffle(order)
            early = self.plan.early if depth == len(self.plan.layers) else None
            if early == "close":
                self.sent_before_early = {s: len(self.sent[s]) for s in "ab"}
            futs = [self.push(side, depth) for side in order]
            if self.rng.random() < 0.3:
                self.send(self.rng.choice("ab"))  # queued until the handshake is done
            if early == "close":
                # close() while the handshake runs ends it at once (rule 13):
                # both handshakes fail, the closer's peer loses the
                # connection with a HandshakeError of this depth.
                self.early_closer = order[0]
                self.early_depth = depth
                self.close(order[0])
                await self.settle(futs)
                return False
            if early == "stop":
                # stop_tls() before the handshake is done: the layer comes up,
                # then closes; the peer answers from eof_received().
                self.apps[order[1]].answer_eof = True
                futs.append(self.stop(order[0]))
            if not await self.settle(futs):
                return False
            if early == "stop":
                answered = await self.wait_until(
                    lambda s=order[1]: bool(self.stops[s]) or self.any_lost, DATA_WAIT
                )
                self.apps[order[1]].answer_eof = False
                if not answered or not await self.settle(self.stops[order[1]][-1:]):
                    return False
            await self.exchange()
        return True

    async def _pop(self) -> bool:
        """Pop the innermost layer on both sides; False if that failed."""
        plan = self.plan
        first = self.rng.choice("ab")
        second = _other(first)
        if plan.in_flight:
            self.send(second)  # crosses first's close_notify on the wire
        if plan.pop_mode == "eof":
            self.apps[second].answer_eof = True
            self.stop(first)
            if self.rng.random() < 0.5:
                self.send(first)  # held, then sent through the layer beneath
            answered = await self.wait_until(
                lambda s=second: (
                    (bool(self.stops[s]) and not self.apps[s].answer_eof) or self.any_lost
                ),
                DATA_WAIT,
            )
            self.apps[second].answer_eof = False
            if not answered:
                return False
        else:
            self.apps[second].expect_stop = True
            self.stop(first)
            if self.rng.random() < 0.5:
                self.send(first)
            if self.rng.random() < 0.5:
                await asyncio.sleep(self.rng.uniform(0, 0.01))
            self.apps[second].expect_stop = False
            if self.transport(second).is_closing():
                return False
            self.stop(second)
        pending = [f for s in "ab" for f in self.stops[s][-1:]]
        if not await self.settle(pending):
            return False
        await self.exchange()
        return True

    async def _ending(self) -> None:
        ending = self.plan.ending
        await self.wait_until(lambda: self.delivered_all() or self.any_lost, DATA_WAIT)
        if not self.any_lost:
            if ending == "a_close":
                self.close("a")
            elif ending == "b_close":
                self.close("b")
            elif ending == "both_close":
                self.close("a")
                self.close("b")
            elif ending == "a_abort":
                self.closed_by_app["a"] = True
                self.transport("a").abort()
            else:  # b_close_plain: b pops what is left first, then closes
                while self.transport("b").layers and not self.any_lost:
                    if self.transport("a").is_closing() or self.transport("b").is_closing():
                        break
                    self.apps["a"].answer_eof = True
                    fut = self.stop("b")
                    await self.settle([fut])
                    self.apps["a"].answer_eof = False
                    for f in self.stops["a"][-1:]:
                        await self.settle([f])
                    await self.wait_until(lambda: self.delivered_all() or self.any_lost, DATA_WAIT)
                self.close("b")
        both_lost = lambda: all(app.lost for app in self.apps.values())  # noqa: E731
        if await self.wait_until(both_lost, END_WAIT):
            return
        if self.pipe.fired and "stall" in self.pipe.fired:
            # A silent peer: the application gives up, as it would.
            for side in "ab":
                if not self.apps[side].lost:
                    self.closed_by_app[side] = True
                    self.transport(side).close()
            if await self.wait_until(both_lost, END_WAIT):
                return
        self.violations.append(
            "the connection did not end: "
            + ", ".join(f"{s} lost={self.apps[s].lost!r}" for s in "ab")
        )
        for side in "ab":
            self.transport(side).abort()
        await self.wait_until(both_lost, END_WAIT)

    # -- checks -------------------------------------------------------------------

    def check_clean_end(self, side: str, what: str, depth: int | None = None) -> None:
        """``side`` saw the peer's clean last word at ``depth``: everything the
        peer sent before it must be here."""
        peer = _other(side)
        t = self.transport(side)
        if depth is None:
            depth = len(t.layers)
            if self.depth[side] != depth:
                return  # a stop of ours is under way: not a last word we can pin
            fired = self.pipe.fired or ""
            if depth == 0 and fired.startswith("eof"):
                return  # plaintext has no close_notify: a cut is undetectable
        mark = self.marks[peer].get(depth)
        if mark is None:
            problem = f"{side}: {what} at depth {depth}, but {peer} never closed that depth"
            if depth == 0:
                # A plaintext FIN: legitimate if the peer's stack closed the
                # socket after an error of its own (known only at the end).
                self.plain_eofs.append((peer, problem))
            else:
                self.violations.append(problem)
            return
        # Delivered, or waiting for the application to resume reading.
        chain = self.onions[side].layer_chain
        waiting = chain.held_size() - sum(len(layer.held) for layer in chain.layers())
        have = len(self.apps[side].received) + waiting
        if have < mark:
            self.violations.append(
                f"{side}: {what} at depth {depth} with {have} of the {mark} bytes "
                f"{peer} sent before its close (silent truncation)"
            )

    def check(self, errors: list[dict[str, Any]], hang: str | None) -> list[str]:
        out = list(self.violations)
        for peer, problem in self.plain_eofs:
            if not any(e is not None for e in self.apps[peer].lost):
                out.append(problem)
        if hang is not None:
            out.append(f"hang: {hang}")
        for ctx in errors:
            exc = ctx.get("exception")
            tb = "".join(traceback.format_exception(exc)) if exc else ""
            out.append(f"loop exception handler: {ctx.get('message')} {exc!r}\n{tb}")
        for name, fut in self.futures:
            if not fut.done():
                out.append(f"future never resolved: {name}")
        for side in "ab":
            app = self.apps[side]
            if len(app.lost) != 1:
                out.append(f"{side}: connection_lost called {len(app.lost)} times: {app.lost!r}")
            peer = _other(side)
            got, sent = bytes(app.received), bytes(self.sent[peer])
            if not sent.startswith(got):
                at = next(
                    (i for i, (x, y) in enumerate(zip(got, sent, strict=False)) if x != y),
                    len(sent),
                )
                out.append(
                    f"{side} received {len(got)} bytes that are not a prefix of the "
                    f"{len(sent)} {peer} sent (first difference at byte {at})"
                )
            for exc in app.lost:
                out.extend(self._check_error(side, exc))
            events = app.writing_events
            if any(e == events[i - 1] for i, e in enumerate(events) if i) or events[:1] == [
                "resume"
            ]:
                out.append(f"{side}: pause_writing/resume_writing out of turn: {events}")
        # Nothing in clear, nothing in a weaker layer.
        for msg in self.messages:
            if msg.depth == 0:
                continue
            receiver = _other(msg.side)
            if msg.marker in self.pipe.sent[msg.side]:
                out.append(f"data {msg.side} wrote at depth {msg.depth} crossed the wire in clear")
            for d in range(2, msg.depth + 1):
                if msg.marker in self.fed.get((receiver, d), b""):
                    out.append(
                        f"data {msg.side} wrote at depth {msg.depth} was carried by layer "
                        f"{d - 1} outside layer {d}"
                    )
        out.extend(self._check_outcome())
        return out

    def _check_error(self, side: str, exc: BaseException | None) -> list[str]:
        if exc is None:
            return []
        fired = self.pipe.fired or ""
        if isinstance(exc, OnionError):
            if exc.depth is not None and f"TLS layer {exc.depth}" not in str(exc):
                return [f"{side}: error does not name its depth: {exc}"]
            return []
        peer = self.apps[_other(side)]
        peer_failed = any(e is not None for e in peer.lost)
        plaintext = not self.transport(side).layers
        if (
            isinstance(exc, ConnectionResetError)
            and plaintext
            and (fired.startswith("reset") or self.closed_by_app[_other(side)] or peer_failed)
        ):
            # The peer reset the connection (an abort after its error); under
            # a layer it would have to be an OnionError naming the depth.
            return []
        return [f"{side}: connection_lost got {exc!r}, not an OnionError"]

    def _early_close_outcome(self, exc: BaseException | None) -> bool:
        """What close() during the last handshake makes happen (rule 13): a
        HandshakeError of that depth, on both sides."""
        return (
            self.early_closer is not None
            and isinstance(exc, HandshakeError)
            and exc.depth == self.early_depth
        )

    def _check_outcome(self) -> list[str]:
        out: list[str] = []
        lost = {s: self.apps[s].lost[0] if self.apps[s].lost else None for s in "ab"}
        aborted = self.plan.ending == "a_abort"
        fired = self.pipe.fired is not None or self.fault_hit is not None
        complete = self.delivered_all()
        if not fired and not aborted:
            for s in "ab":
                if lost[s] is not None and not self._early_close_outcome(lost[s]):
                    out.append(f"{s}: no fault happened, yet connection_lost({lost[s]!r})")
            if not complete:
                out.append(
                    "no fault happened, yet not everything was delivered: "
                    + ", ".join(
                        f"{_other(s)} got {len(self.apps[_other(s)].received)} of "
                        f"{len(self.sent[s])} from {s}"
                        for s in "ab"
                    )
                )
            for name, fut in self.futures:
                if fut.done() and not fut.cancelled() and fut.exception() is not None:
                    if self._early_close_outcome(fut.exception()):
                        continue
                    out.append(f"no fault happened, yet {name} failed: {fut.exception()}")
        if self.fault_hit is not None:
            k = self.fault_hit["depth"]
            depths = [
                e.depth for e in lost.values() if isinstance(e, OnionError) and e.depth is not None
            ]
            harmed = not complete or any(e is not None for e in lost.values())
            if harmed and not any(d >= k for d in depths):
                out.append(
                    f"corruption at depth {k} did harm, but no error names depth >= {k}: {lost!r}"
                )
        if self.eof_inside_tls is not None:
            # EOF is honest: a FIN inside an open layer is a truncation.
            dst = self.eof_inside_tls
            if not isinstance(lost[dst], (TruncatedError, HandshakeError)):
                out.append(
                    f"{dst}: a TCP EOF without close_notify inside an open TLS layer "
                    f"ended with {lost[dst]!r}, not a TruncatedError"
                )
        return out

    #: The side that got an ``eof`` fault while a TLS layer was open.
    eof_inside_tls: str | None = None


_READING = frozenset({"handshaking", "open", "closing"})


def run_case(seed: int, *, debug: bool = True) -> tuple[Plan, list[str], Case]:
    plan = make_plan(seed)
    box: dict[str, Case] = {}

    async def main() -> None:
        case = Case(plan)
        box["case"] = case
        _watch_eof(case)
        try:
            await case.run()
        except Exception:  # noqa: BLE001 - a failing case is reported with its seed
            case.violations.append("the script raised:\n" + traceback.format_exc())
            for side in "ab":
                case.transport(side).abort()
            await case.wait_until(lambda: all(app.lost for app in case.apps.values()), END_WAIT)

    errors, hang = run_virtual(main, debug=debug)
    case = box["case"]
    return plan, case.check(errors, hang), case


def _watch_eof(case: Case) -> None:
    """Note whether the receiving side still had an open TLS layer when an
    ``eof`` fault cut its stream."""
    fault = case.plan.fault
    if fault is None or fault.kind != "eof":
        return
    pipe = case.pipe
    fire = pipe.fire

    def watched(action: str, src: MemoryTransport) -> None:
        dst = src.peer.name
        transport = case.transport(dst)
        open_states = {"handshaking", "open", "closing"}
        if not transport.is_closing() and any(
            layer.state.value in open_states for layer in case.onions[dst].layer_chain.layers()
        ):
            case.eof_inside_tls = dst
        fire(action, src)

    pipe.fire = watched  # type: ignore[method-assign]


def failure_text(plan: Plan, problems: list[str], case: Case) -> str:
    lines = [
        f"fault case failed -- replay: python stress/faults.py --seed {plan.seed} -v",
        plan.describe(),
        f"fired: {case.pipe.fired or case.fault_hit or 'nothing'}",
        f"lost: a={case.apps['a'].lost!r} b={case.apps['b'].lost!r}",
        *(f"note: {n}" for n in case.notes),
        *problems,
    ]
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(SEEDS), ids=lambda s: f"seed{s}")
def test_fault_case(seed: int) -> None:
    plan, problems, case = run_case(seed, debug=seed % DEBUG_EVERY == 0)
    assert not problems, failure_text(plan, problems, case)
