"""The matrix of measurements: which cells exist, which implementations
(onion_tls and its peers) measure them, how they are named, and the settings
every connection of the bench shares (TLS 1.3 suite, key exchange, the depth
of the idle-memory figure)."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

LOOPS = ("asyncio", "uvloop")  # the event loops of onion_tls and asyncio's TLS
#: The peers onion_tls is compared with (``--peers``).  ``asyncio`` is
#: asyncio's own TLS on every loop of ``--loops`` (on uvloop: uvloop's TLS);
#: ``sslsocket`` is the blocking ``ssl.SSLSocket`` at depth 1: the C path, a
#: ceiling rather than a peer (not a candidate for "best peer").
PEERS = ("asyncio", "twisted", "trio", "sslsocket")
#: The Python packages a peer needs in the worker processes.
PEER_MODULES = {"twisted": "twisted", "trio": "trio"}
IDLE_DEPTH = 2  # the depth of the idle connections of the memory figure
CIPHER = "TLS_AES_256_GCM_SHA384"
GROUP = "X25519"
_KINDS = ("sink", "echo")
_SIZES = (64 * 1024, 1024)
_APPS = ("plain", "buffered")
PINGPONG_SIZE = 1  # bytes each way per round trip of the pingpong cells
#: Per kind: the rate's unit, the CPU cost's unit (client + server CPU
#: time per unit of work) and its scale from seconds.
_UNITS = {
    "sink": ("MB/s", "ns/B", 1e9),
    "echo": ("MB/s", "ns/B", 1e9),
    "handshake": ("conn/s", "ms/conn", 1e3),
    "pingpong": ("rt/s", "us/rt", 1e6),
}


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload at one depth."""

    kind: str  # "sink", "echo", "pingpong" or "handshake"
    size: int  # bytes per write (1 for pingpong, 0 for handshakes)
    app: str  # "plain" or "buffered"
    depth: int

    @property
    def name(self) -> str:
        if self.kind == "handshake":
            return "handshake"
        if self.kind == "pingpong":
            return "pingpong" if self.app == "plain" else f"pingpong-{self.app}"
        return f"{self.kind}-{self.size // 1024}k-{self.app}"

    @property
    def listener(self) -> str:
        """The server listener this cell connects to."""
        app = "plain" if self.kind == "handshake" else self.app
        return f"{self.kind}/{app}/{self.depth}"

    @property
    def unit(self) -> str:
        return _UNITS[self.kind][0]

    @property
    def cost_unit(self) -> str:
        """CPU time of client and server together, per byte, round trip or
        connection."""
        return _UNITS[self.kind][1]

    @property
    def cost_scale(self) -> float:
        return _UNITS[self.kind][2]


@dataclass(frozen=True)
class Impl:
    """One column of the table: an implementation (and its event loop)."""

    kind: str  # "onion_tls", "asyncio", "twisted", "trio" or "sslsocket"
    loop: str = "asyncio"  # the event loop of onion_tls and asyncio's TLS

    @property
    def name(self) -> str:
        """``onion_tls``, ``onion_tls+uvloop``, ``asyncio``, ``uvloop``,
        ``twisted``, ``trio``, ``sslsocket``."""
        if self.kind == "onion_tls":
            return "onion_tls" if self.loop == "asyncio" else f"onion_tls+{self.loop}"
        if self.kind == "asyncio":
            return self.loop
        return self.kind

    @property
    def short(self) -> str:
        """The column header."""
        if self.kind == "onion_tls":
            return "onion" if self.loop == "asyncio" else "onion+uv"
        return {"sslsocket": "C-path"}.get(self.kind, self.name)

    @property
    def is_onion(self) -> bool:
        return self.kind == "onion_tls"

    @property
    def is_peer(self) -> bool:
        """A candidate for the best peer (the C path is a ceiling, not a peer)."""
        return self.kind not in ("onion_tls", "sslsocket")

    @property
    def has_idle(self) -> bool:
        """Measured in the idle-memory figure (depth 2, asyncio-style apps)."""
        return self.kind in ("onion_tls", "asyncio")

    def runs(self, cell: Cell) -> bool:
        """Whether this implementation measures ``cell``: the C path only at
        depth 1; Twisted and trio have no BufferedProtocol notion (their
        applications receive ``bytes``), so only the plain variant."""
        if self.kind == "sslsocket":
            return cell.depth == 1
        if self.kind in ("twisted", "trio"):
            return cell.app == "plain"
        return True

    def stand_in(self, cell: Cell) -> Cell | None:
        """The cell whose rate stands for this implementation in ``cell``'s
        row when it looks for the best peer: the cell itself, or the plain
        variant for a peer without a buffered API; None if it has neither."""
        if self.runs(cell):
            return cell
        plain = Cell(cell.kind, cell.size, "plain", cell.depth)
        return plain if self.runs(plain) else None


def build_impls(loops: Sequence[str], peers: Sequence[str]) -> list[Impl]:
    """onion_tls on every loop, then the peers (asyncio on every loop)."""
    impls = [Impl("onion_tls", loop) for loop in loops]
    for peer in PEERS:
        if peer not in peers:
            continue
        if peer == "asyncio":
            impls.extend(Impl("asyncio", loop) for loop in loops)
        else:
            impls.append(Impl(peer))
    return impls


def build_cells(depths: Iterable[int], only: Sequence[str] = ()) -> list[Cell]:
    cells = []
    for depth in depths:
        for kind in _KINDS:
            for size in _SIZES:
                for app in _APPS:
                    cells.append(Cell(kind, size, app, depth))
        for app in _APPS:
            cells.append(Cell("pingpong", PINGPONG_SIZE, app, depth))
        cells.append(Cell("handshake", 0, "plain", depth))
    if only:
        cells = [c for c in cells if any(fnmatch.fnmatch(c.name, p) for p in only)]
    return cells


def hostname(depth: int) -> str:
    return f"layer{depth}.onion.test"


def parse_depths(text: str) -> list[int]:
    """``1-3`` or ``1,3`` (the ``--depths`` option) as a sorted list."""
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad depths {text!r}: use e.g. 1-3 or 1,3") from None
        if not 1 <= first <= last <= 8:
            raise argparse.ArgumentTypeError(f"depths must be within 1-8, not {part!r}")
        out.update(range(first, last + 1))
    return sorted(out)
