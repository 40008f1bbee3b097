"""A model-based test of the connection lifecycle (hypothesis stateful).

Two onion ends, ``a`` and ``b``, joined by an in-memory pipe that moves
nothing until the machine says so (``MemoryPipe(auto=False)``).  The machine
drives them with random sequences of: push a layer (both ends, random TLS
roles, engines and version), pop (one end, or both at once, the other end
answering from ``eof_received`` by its policy or later), writes of 1 B to
100 KB, ``close()``, ``abort()``, pause/resume reading, the raw socket closed
under an end (a TCP EOF without close_notify), a peer that floods while the
other end is paused, stopping or undecided, a non-onion peer that pipelines
plaintext right after its close_notify, and delivery of the bytes in
different cuts (whole writes, random splits, one byte at a time, several
writes coalesced into one read).

The model keeps, per direction, the byte stream written and the depth each
byte was written at: the number of layers, minus one while a ``stop_tls`` is
pending (DESIGN rules 3 and 5: writes during a handshake go inside the new
layer, writes during a pending stop go beneath, after the pop).  After every
step it checks:

* order: each end receives a prefix of what the other wrote, in order;
* depth: each byte is delivered at the depth it was written at (the number
  of layers of the receiving end at delivery), never weaker, never stronger;
* bounds (rule 12): bytes delivered to an end by the pipe minus bytes its
  application got stay under 1 MiB while the end is open;
* ``connection_lost`` at most once per end; exactly once after ``abort()``
  or once a ``close()`` has nothing left to wait for; every ``start_tls`` /
  ``stop_tls`` future done once its end is lost;
* a clean close (``close()`` on one end while nothing is in flight towards
  it, nobody aborted or cut the socket) ends both ends with
  ``connection_lost(None)`` (issue 10, defect 7);
* a TCP EOF without close_notify under open layers is a ``TruncatedError``
  at the other end, never a clean EOF (rule 7);
* once a layer is up, every error the application sees is an ``OnionError``
  (rule 14);
* nothing reaches the event loop's exception handler.

``ONION_MODEL_EXAMPLES`` sets the number of examples (``nox -s fuzz`` runs
thousands); ``ONION_MODEL_SKIP`` (comma separated check names, see
:data:`CHECKS`) silences checks while triaging one defect.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from onion_tls import OnionError, OnionProtocol, OnionTransport, TruncatedError
from onion_tls.testing import MemoryPipe, MemoryTransport, OnionCA, dribble

EXAMPLES = int(os.environ.get("ONION_MODEL_EXAMPLES", "300"))
STEPS = int(os.environ.get("ONION_MODEL_STEPS", "30"))
CHECKS = frozenset(
    {"order", "depth", "bound", "lost", "futures", "clean", "truncation", "errtype", "loop"}
)
SKIP = frozenset(s for s in os.environ.get("ONION_MODEL_SKIP", "").split(",") if s)
assert SKIP <= CHECKS, f"ONION_MODEL_SKIP: unknown checks {sorted(SKIP - CHECKS)}"

MAX_DEPTH = 3
READ_SIZE = 64 * 1024  # what one read from the socket gives at most
BOUND = 1024 * 1024  # rule 12: what an end may hold (about the read high-water mark)
Policy = str  # what eof_received does with a peer's close_notify
POLICIES = ("stop", "stop_write", "later", "close")
MODES = ("whole", "coalesce", "split", "dribble")

_CA = OnionCA()
_CONTEXTS: dict[tuple[Any, ...], Any] = {}


def context(depth: int, engine: str, server: bool, version: str | None) -> Any:
    key = (depth, engine, server, version)
    if key not in _CONTEXTS:
        if server:
            _CONTEXTS[key] = _CA.server_context(depth, engine, version=version)  # type: ignore[arg-type]
        else:
            _CONTEXTS[key] = _CA.client_context(engine, version=version)  # type: ignore[arg-type]
    return _CONTEXTS[key]


class End:
    """One end: its transport, what its application saw, what it wrote."""

    def __init__(self, name: str, raw: MemoryTransport, dirty: list[str]) -> None:
        self.name = name
        #: (shared by both ends) what happened after which a clean end is
        #: not owed.
        self.dirty = dirty
        self.raw = raw
        self.peer: End
        self.transport: OnionTransport
        self.stream = random.Random(name)
        # what this end's application wrote (the model of one direction)
        self.out = bytearray()
        self.seg_ends: list[int] = []  # end offsets of the written segments
        self.seg_depths: list[int] = []
        #: the peer's pops done when each segment was written
        self.seg_pops: list[int] = []
        # what this end's application received
        self.received = 0
        self.eofs = 0
        self.lost: list[BaseException | None] = []
        self.layers_at_lost = 0
        self.violations: list[tuple[str, str]] = []
        # the application's behaviour
        self.policy: Policy = "stop"
        self.keep_half_open = False
        self.answers = 0  # data_received answers left
        self.answer_size = 1
        self.pending_eof = False  # a close_notify the app has not decided on
        self.paused = False
        # what the machine did to this end
        self.starts: list[asyncio.Future[Any]] = []
        self.stops: list[asyncio.Future[Any]] = []
        self.close_called = False
        self.aborted = False
        self.raw_cut = False
        self.wrote_in_stop = False

    # -- state --------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self.transport.layers)

    def stop_pending(self) -> bool:
        return any(not f.done() for f in self.stops)

    def start_pending(self) -> bool:
        return any(not f.done() for f in self.starts)

    def usable(self) -> bool:
        return not (
            self.lost or self.aborted or self.transport.is_closing() or self.raw.is_closing()
        )

    def violation(self, check: str, what: str) -> None:
        if check not in SKIP:
            self.violations.append((check, what))

    # -- what the application does -------------------------------------------

    def write(self, n: int) -> None:
        data = self.stream.randbytes(n)
        if self.transport.is_closing():
            self.transport.write(data)  # dropped, as asyncio does
            return
        # Rules 3 and 5: inside a layer being handshaken, beneath a layer
        # being stopped.
        depth = self.depth - (1 if self.stop_pending() else 0)
        if self.stop_pending():
            self.wrote_in_stop = True
        if self.peer.close_called:
            self.dirty.append(f"{self.name}: wrote after the peer's close()")
        self.record(data, depth)
        self.transport.write(data)

    def pops(self) -> int:
        """Layers this end has popped (stop_tls futures resolved)."""
        return sum(1 for f in self.stops if f.done() and not f.cancelled() and not f.exception())

    def record(self, data: bytes, depth: int) -> None:
        self.out += data
        pops = self.peer.pops()
        if self.seg_depths and self.seg_depths[-1] == depth and self.seg_pops[-1] == pops:
            self.seg_ends[-1] = len(self.out)
        else:
            self.seg_ends.append(len(self.out))
            self.seg_depths.append(depth)
            self.seg_pops.append(pops)

    def note_close(self) -> None:
        """This end closes: a clean end is owed only if nothing is on its
        way towards it (else the peer gets a reset, as on TCP)."""
        p = self.peer
        if self.start_pending() or p.start_pending():
            self.dirty.append(f"{self.name}: close() during a handshake")
        if p.lost or p.transport.get_write_buffer_size() or p.raw.get_write_buffer_size():
            self.dirty.append(f"{self.name}: close() with bytes in flight towards it")
        self.close_called = True

    def stop_tls(self) -> None:
        self.pending_eof = False
        self.stops.append(self.transport.stop_tls())

    # -- what the application protocol is told --------------------------------

    def on_data(self, data: bytes) -> None:
        depth = self.depth
        peer = self.peer
        start, end = self.received, self.received + len(data)
        if end > len(peer.out) or peer.out[start:end] != data:
            self.violation(
                "order",
                f"{self.name} got {len(data)} B at offset {start} that are not what "
                f"{peer.name} wrote there (written: {len(peer.out)} B)",
            )
        else:
            i = bisect.bisect_right(peer.seg_ends, start)
            j = bisect.bisect_left(peer.seg_ends, end)
            pops = self.pops()
            for w, w_pops in zip(peer.seg_depths[i : j + 1], peer.seg_pops[i : j + 1], strict=True):
                # Bytes received inside a layer may reach the application
                # after that layer was popped (they waited in the backlog
                # while it paused reading): the contract pops a layer when
                # the close_notifies have crossed, not when the app has read
                # everything that came inside it.  Never the other way.
                if depth == w or (depth < w and w - depth <= pops - w_pops):
                    continue
                self.violation(
                    "depth",
                    f"{self.name} got bytes {start}..{end} at depth {depth}; "
                    f"{peer.name} wrote them at depth {w}",
                )
                break
        self.received = end
        if self.answers > 0 and not self.transport.is_closing():
            self.answers -= 1
            self.write(self.answer_size)

    def on_eof(self) -> bool:
        self.eofs += 1
        if not self.transport.layers:
            # The socket's EOF in plaintext: keep the half-open connection
            # (as asyncio's streams do) or close.
            if self.keep_half_open:
                return True
            self.note_close()
            return False
        if self.policy in ("stop", "stop_write"):
            if self.stop_pending() or self.transport.is_closing():
                return True
            try:
                self.stop_tls()
            except OnionError as exc:
                self.violation("loop", f"{self.name}: stop_tls() from eof_received: {exc!r}")
                return True
            if self.policy == "stop_write":
                self.write(self.answer_size)
            return True
        if self.policy == "later":
            self.pending_eof = True
            return True
        self.note_close()
        return False

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        # Layers whose handshake was done ("once a layer is up", rule 14).
        self.layers_at_lost = sum(1 for layer in self.transport.layers if layer.version)


class App(asyncio.Protocol):
    def __init__(self, end: End) -> None:
        self.end = end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        self.end.transport = transport

    def data_received(self, data: bytes) -> None:
        self.end.on_data(data)

    def eof_received(self) -> bool:
        return self.end.on_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.end.on_lost(exc)


def cuts(rng: random.Random) -> Callable[[bytes], Iterable[bytes]]:
    def split(data: bytes) -> Iterable[bytes]:
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 5, 17, 300, 5000, 16389, 70000))
            yield data[i : i + n]
            i += n

    return split


sides = st.sampled_from("ab")
#: (TLS server end, engine of a, engine of b, version) of one layer
LayerChoice = tuple[str, str, str, "str | None"]
layer_choices = st.tuples(
    sides,
    st.sampled_from(("pyopenssl", "stdlib")),
    st.sampled_from(("pyopenssl", "stdlib")),
    st.sampled_from((None, "TLSv1.2")),
)
modes = st.sampled_from(MODES)
seeds = st.integers(0, 2**32 - 1)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop.set_debug(True)
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.pipe: MemoryPipe = self.loop.run_until_complete(self._make_pipe())
        #: Something happened after which a clean end is not owed.
        self.dirty: list[str] = []
        self.a = End("a", self.pipe.a, self.dirty)
        self.b = End("b", self.pipe.b, self.dirty)
        self.a.peer, self.b.peer = self.b, self.a
        self.call(lambda: self.pipe.connect(OnionProtocol(App(self.a)), OnionProtocol(App(self.b))))
        self.rng = random.Random(0)
        #: The last thing done was a settle() that moved nothing more.
        self.quiet = False

    @staticmethod
    async def _make_pipe() -> MemoryPipe:
        return MemoryPipe(auto=False)

    # -- driving the loop and the pipe -------------------------------------------

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` inside the loop (as an application callback would),
        then let the loop run."""

        async def inside() -> Any:
            return fn()

        self.quiet = False
        result = self.loop.run_until_complete(inside())
        self.spin()
        return result

    def spin(self) -> None:
        async def turns() -> None:
            for _ in range(6):
                await asyncio.sleep(0)

        self.loop.run_until_complete(turns())

    def end(self, side: str) -> End:
        return self.a if side == "a" else self.b

    def prepare(self, t: MemoryTransport, mode: str) -> None:
        """Re-cut what ``t`` will send: one step of the pipe is one read of
        at most READ_SIZE bytes (a socket read), except with dribble/split
        where the read is cut further."""
        items = list(t.outgoing)
        if not items:
            return
        pieces: list[bytes] = []
        if mode == "coalesce":
            joined = b"".join(items)
            pieces = [joined[i : i + READ_SIZE] for i in range(0, len(joined), READ_SIZE)]
        else:
            for item in items:
                pieces += [item[i : i + READ_SIZE] for i in range(0, len(item), READ_SIZE)]
        t.outgoing.clear()
        t.outgoing.extend(pieces)
        if mode == "dribble" and len(pieces[0]) <= 2048:
            self.pipe.chunker = dribble(1)
        elif mode in ("split", "dribble"):
            self.pipe.chunker = cuts(self.rng)
        else:
            self.pipe.chunker = None

    def deliver_from(self, t: MemoryTransport, mode: str, steps: int) -> bool:
        moved = False
        for _ in range(steps):
            self.prepare(t, mode)
            if not self.pipe.step(t):
                break
            moved = True
            self.quiet = False
            self.spin()
            self.check_bounds()
        return moved

    def settle(self, mode: str = "whole") -> None:
        for _ in range(200):
            moved = self.deliver_from(self.pipe.a, mode, 400)
            moved = self.deliver_from(self.pipe.b, mode, 400) or moved
            self.spin()
            if not moved:
                self.quiet = True
                return

    # -- rules ---------------------------------------------------------------------

    @initialize(
        policy_a=st.sampled_from(POLICIES),
        policy_b=st.sampled_from(POLICIES),
        answers_a=st.sampled_from((0, 3)),
        answers_b=st.sampled_from((0, 3)),
        half_open=st.tuples(st.booleans(), st.booleans()),
        layers=st.lists(layer_choices, max_size=MAX_DEPTH),
        seed=seeds,
    )
    def setup(
        self,
        policy_a: str,
        policy_b: str,
        answers_a: int,
        answers_b: int,
        half_open: tuple[bool, bool],
        layers: list[LayerChoice],
        seed: int,
    ) -> None:
        """The applications' behaviour, and the layers already up."""
        self.a.policy, self.b.policy = policy_a, policy_b
        self.a.answers, self.b.answers = answers_a, answers_b
        self.a.keep_half_open, self.b.keep_half_open = half_open
        self.rng.seed(seed)
        for choice in layers:
            self._push(*choice)
        self.settle()

    def _push_ok(self) -> bool:
        a, b = self.a, self.b
        return (
            all(e.usable() and not e.stop_pending() and not e.pending_eof for e in (a, b))
            and a.depth == b.depth < MAX_DEPTH
        )

    @precondition(_push_ok)
    @rule(
        choice=layer_choices,
        then_write=st.lists(
            st.tuples(sides, st.sampled_from((1, 5000, 70_000, 300_000))), max_size=3
        ),
    )
    def push(self, choice: LayerChoice, then_write: list[tuple[str, int]]) -> None:
        self._push(*choice, then_write=then_write)

    def _push(
        self,
        tls_server: str,
        engine_a: str,
        engine_b: str,
        version: str | None,
        then_write: list[tuple[str, int]] = (),  # type: ignore[assignment]
    ) -> None:
        """Both ends start_tls, once nothing is in flight and both read (as
        after a STARTTLS exchange); then maybe writes, which wait in the
        handshaking layer (some larger than an engine's write slice)."""
        a, b = self.a, self.b
        for e in (a, b):
            if e.paused:
                e.paused = False
                self.call(e.transport.resume_reading)
        self.settle()
        if not self._push_ok():
            return
        depth = a.depth + 1
        engines = {"a": engine_a, "b": engine_b}

        def go() -> None:
            for e in (a, b):
                server = e.name == tls_server
                ctx = context(depth, engines[e.name], server, version)
                e.starts.append(
                    e.transport.start_tls(
                        ctx,
                        server_side=server,
                        server_hostname=None if server else _CA.hostname(depth),
                    )
                )
            for side, n in then_write:
                self.end(side).write(n)

        self.call(go)

    @precondition(lambda self: any(e.depth and e.usable() for e in (self.a, self.b)))
    @rule(side=sides, both=st.booleans(), then_write=st.sampled_from((0, 0, 1, 5000)))
    def stop(self, side: str, both: bool, then_write: int) -> None:
        """stop_tls on one end (the other answers by its eof policy, or a
        later rule), or on both at once; then maybe a write (held until the
        pop, then sent beneath)."""
        e = self.end(side)
        if not (e.depth and e.usable() and not e.stop_pending()):
            return

        def go() -> None:
            e.stop_tls()
            p = e.peer
            if both and p.depth and p.usable() and not p.stop_pending():
                p.stop_tls()
            if then_write:
                e.write(then_write)

        self.call(go)

    @rule(
        side=sides,
        sizes=st.lists(
            st.one_of(st.integers(1, 100), st.integers(1, 3000), st.integers(1, 100_000)),
            min_size=1,
            max_size=4,
        ),
    )
    def write(self, side: str, sizes: list[int]) -> None:
        """Writes in one turn of the loop (small ones are gathered)."""
        e = self.end(side)
        if e.lost:
            return

        def go() -> None:
            for n in sizes:
                e.write(n)

        self.call(go)

    @rule(
        side=sides,
        policy=st.sampled_from(POLICIES),
        answers=st.integers(0, 3),
        half_open=st.booleans(),
    )
    def behaviour(self, side: str, policy: str, answers: int, half_open: bool) -> None:
        """Change what the application does on EOF and on data."""
        e = self.end(side)
        e.policy, e.answers, e.keep_half_open = policy, answers, half_open

    @precondition(lambda self: any(not e.lost for e in (self.a, self.b)))
    @rule(side=sides, how=st.sampled_from(("close", "close", "abort", "tcp_eof")))
    def end_it(self, side: str, how: str) -> None:
        """close(), abort(), or the socket under the end closed (a TCP EOF
        without close_notify)."""
        e = self.end(side)
        if how == "close":
            if e.usable():
                e.note_close()
                self.call(e.transport.close)
        elif how == "abort":
            if not e.lost:
                self.dirty.append(f"{side}: abort()")
                e.aborted = True
                self.call(e.transport.abort)
        else:
            self.tcp_eof(e)

    @rule(side=sides, paused=st.booleans())
    def reading(self, side: str, paused: bool) -> None:
        """pause_reading() / resume_reading()."""
        e = self.end(side)
        if e.lost or e.transport.is_closing():
            return
        e.paused = paused
        self.call(e.transport.pause_reading if paused else e.transport.resume_reading)

    @rule(side=sides, mode=modes, steps=st.integers(1, 4))
    def deliver(self, side: str, mode: str, steps: int) -> None:
        """Move a few reads' worth from one end to the other."""
        self.deliver_from(self.end(side).raw, mode, steps)

    @rule(mode=modes)
    def pump(self, mode: str) -> None:
        """Move everything that can move, both ways."""
        self.settle(mode)

    @precondition(
        lambda self: any(
            e.usable()
            and e.peer.usable()
            and not e.peer.stop_pending()
            and (e.paused or e.stop_pending() or e.pending_eof)
            for e in (self.a, self.b)
        )
    )
    @rule(victim=sides, megabytes=st.integers(1, 3))
    def flood(self, victim: str, megabytes: int) -> None:
        """The peer writes megabytes (ignoring pause_writing) while the
        victim is paused, stopping or undecided: the victim's memory stays
        bounded (rule 12)."""
        v = self.end(victim)
        p = v.peer
        if not (v.usable() and p.usable() and not p.stop_pending()):
            return
        if not (v.paused or v.stop_pending() or v.pending_eof):
            return
        for _ in range(megabytes * 16):
            if not p.usable() or p.stop_pending():
                break
            self.call(lambda: p.write(64 * 1024))
            self.deliver_from(p.raw, "whole", 4)

    @precondition(
        lambda self: any(
            e.depth == 1 and e.stop_pending() and not e.start_pending() and e.usable()
            for e in (self.a, self.b)
        )
    )
    @rule(side=sides, size=st.sampled_from((1, 1000, 3_000_000)))
    def pipeline_plaintext(self, side: str, size: int) -> None:
        """A peer that is not onion_tls: right after its close_notify on
        layer 1 it sends plaintext (its next command) without waiting for
        ours.  What follows a close_notify is held for the layer beneath,
        bounded (rule 12), and delivered in plaintext after the pop."""
        e = self.end(side)
        if not (
            e.depth == 1
            and e.stop_pending()
            and not e.start_pending()
            and e.usable()
            and not e.wrote_in_stop
        ):
            return
        self.dirty.append(f"{side}: a raw peer")
        sent = 0
        while sent < size and not e.raw.is_closing():
            n = min(64 * 1024, size - sent)
            data = e.stream.randbytes(n)
            e.record(data, 0)
            e.raw.write(data)
            sent += n
            self.deliver_from(e.raw, "whole", 4)

    def tcp_eof(self, e: End) -> None:
        """The socket under ``e`` is closed, no close_notify: the other
        end sees a truncation when it has open layers (rule 7)."""
        p = e.peer
        if e.raw.is_closing():
            return
        owed = (
            p.depth > 0
            and p.usable()
            and not p.paused
            and not p.stop_pending()
            and not p.pending_eof
            and not e.stop_pending()
            and not e.start_pending()
            and not p.start_pending()
            and not e.transport.is_closing()
            and not self.dirty
        )
        self.dirty.append(f"{e.name}: TCP EOF without close_notify")
        e.raw_cut = True
        eofs = p.eofs
        self.call(e.raw.close)
        self.settle()
        if owed and "truncation" not in SKIP:
            assert p.eofs == eofs, f"{p.name}: a TCP EOF under layers was reported as a clean EOF"
            assert p.lost, f"{p.name}: not told of a TCP EOF under layers"
            assert isinstance(p.lost[0], TruncatedError), (
                f"{p.name}: a TCP EOF under layers gave {p.lost[0]!r}, not a TruncatedError"
            )

    # -- invariants ----------------------------------------------------------------

    def check_bounds(self) -> None:
        if "bound" in SKIP:
            return
        for e in (self.a, self.b):
            if not e.usable():
                continue
            delivered = len(self.pipe.sent[e.peer.name])
            held = delivered - e.received
            what = (
                f"{e.name} holds {held} B ({delivered} B delivered by the pipe, "
                f"{e.received} B given to the app; paused={e.paused}, "
                f"stop pending={e.stop_pending()}, undecided eof={e.pending_eof})"
            )
            # One assert per edge, so hypothesis tells the bugs apart.
            if e.pending_eof:
                assert held <= BOUND, f"bound behind a close_notify: {what}"
            elif e.stop_pending():
                assert held <= BOUND, f"bound while a stop is pending: {what}"
            else:
                assert held <= BOUND, f"bound: {what}"

    @invariant()
    def holds(self) -> None:
        if "loop" not in SKIP:
            assert not self.loop_errors, f"event loop exception handler: {self.loop_errors!r}"
        for e in (self.a, self.b):
            for check, what in e.violations:
                # One assert per check, so hypothesis tells the bugs apart.
                if check == "order":
                    raise AssertionError(f"order: {what}")
                if check == "depth":
                    raise AssertionError(f"depth: {what}")
                raise AssertionError(f"{check}: {what}")
        self.check_bounds()
        for e in (self.a, self.b):
            if "lost" not in SKIP:
                assert len(e.lost) <= 1, f"{e.name}: connection_lost called {len(e.lost)} times"
                if e.aborted:
                    assert e.lost, f"{e.name}: abort() without connection_lost"
                if (
                    e.close_called
                    and not e.stop_pending()
                    and self.quiet
                    and not e.raw.get_write_buffer_size()
                ):
                    assert e.lost, f"{e.name}: close() with nothing left to do, still not lost"
            if e.lost and "futures" not in SKIP:
                pending = [f for f in e.starts + e.stops if not f.done()]
                assert not pending, f"{e.name}: lost, futures still pending: {pending!r}"
            if e.lost and e.lost[0] is not None:
                exc = e.lost[0]
                if not self.dirty and "clean" not in SKIP:
                    raise AssertionError(
                        f"clean: {e.name} got connection_lost({exc!r}) after a clean close"
                    )
                if e.layers_at_lost and "errtype" not in SKIP:
                    assert isinstance(exc, OnionError), (
                        f"errtype: {e.name} lost with {e.layers_at_lost} layers up: {exc!r}"
                    )

    def teardown(self) -> None:
        try:
            for e in (self.a, self.b):
                if not e.lost:
                    self.dirty.append(f"{e.name}: abort() (teardown)")
                    e.aborted = True
                    self.call(e.transport.abort)
            self.settle()
            self.spin()
            self.holds()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # No "explain" phase: it traces every line of the TLS code and takes
    # many minutes.  One bug at a time in the normal suite (each distinct
    # bug costs up to minutes of shrinking); all of them under the env var.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    report_multiple_bugs=bool(os.environ.get("ONION_MODEL_ALL_BUGS")),
)


# The whole run is one test: its time grows with the examples (and a failure
# spends a while shrinking).
@pytest.mark.timeout(max(300, EXAMPLES // 2))
def test_lifecycle_model() -> None:
    run_state_machine_as_test(Lifecycle, settings=SETTINGS)


# -- the minimal sequences the machine found on the code of issue 10 ---------------
# Replayed as plain tests: each one failed on that code (the defect named).

L1 = ("a", "pyopenssl", "pyopenssl", None)
REPLAYS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "defect1-writes-reordered-across-a-pop": [
        (
            "setup",
            {
                "policy_a": "stop_write",
                "policy_b": "stop",
                "answers_a": 0,
                "answers_b": 1,
                "half_open": (False, False),
                "layers": [L1, L1],
                "seed": 0,
            },
        ),
        ("stop", {"side": "b", "both": False, "then_write": 1}),
        ("pump", {"mode": "coalesce"}),
    ],
    "defect2-unbounded-while-a-stop-is-pending": [
        (
            "setup",
            {
                "policy_a": "stop",
                "policy_b": "stop",
                "answers_a": 0,
                "answers_b": 0,
                "half_open": (False, False),
                "layers": [L1],
                "seed": 0,
            },
        ),
        ("stop", {"side": "a", "both": False, "then_write": 0}),
        ("reading", {"side": "a", "paused": True}),
        ("flood", {"victim": "a", "megabytes": 1}),
    ],
    "defect3-unbounded-behind-a-close-notify": [
        (
            "setup",
            {
                "policy_a": "stop",
                "policy_b": "later",
                "answers_a": 0,
                "answers_b": 0,
                "half_open": (False, False),
                "layers": [L1],
                "seed": 0,
            },
        ),
        ("stop", {"side": "a", "both": False, "then_write": 0}),
        ("pipeline_plaintext", {"side": "a", "size": 3_000_000}),
    ],
    "defect7-clean-close-answered-by-stop-is-a-reset": [
        (
            "setup",
            {
                "policy_a": "stop",
                "policy_b": "stop",
                "answers_a": 0,
                "answers_b": 0,
                "half_open": (False, True),
                "layers": [L1],
                "seed": 0,
            },
        ),
        ("end_it", {"side": "a", "how": "close"}),
        ("pump", {"mode": "whole"}),
    ],
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_lifecycle_replay(name: str) -> None:
    machine = Lifecycle()
    try:
        machine.holds()
        for method, kwargs in REPLAYS[name]:
            getattr(machine, method)(**kwargs)
            machine.holds()
    finally:
        machine.teardown()
