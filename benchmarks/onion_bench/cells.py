"""The matrix of measurements: which cells exist, how they are named, and the
settings every connection of the bench shares (TLS 1.3 suite, key exchange,
the depth of the idle-memory figure)."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

IMPLS = ("onion_tls", "asyncio")
IDLE_DEPTH = 2  # the depth of the idle connections of the memory figure
CIPHER = "TLS_AES_256_GCM_SHA384"
GROUP = "X25519"
_KINDS = ("sink", "echo")
_SIZES = (64 * 1024, 1024)
_APPS = ("plain", "buffered")


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload at one depth."""

    kind: str  # "sink", "echo" or "handshake"
    size: int  # bytes per write (0 for handshakes)
    app: str  # "plain" or "buffered"
    depth: int

    @property
    def name(self) -> str:
        if self.kind == "handshake":
            return "handshake"
        return f"{self.kind}-{self.size // 1024}k-{self.app}"

    @property
    def listener(self) -> str:
        """The server listener this cell connects to."""
        app = "plain" if self.kind == "handshake" else self.app
        return f"{self.kind}/{app}/{self.depth}"

    @property
    def unit(self) -> str:
        return "conn/s" if self.kind == "handshake" else "MB/s"

    @property
    def cost_unit(self) -> str:
        """CPU time of client and server together, per connection or byte."""
        return "ms/conn" if self.kind == "handshake" else "ns/B"

    @property
    def cost_scale(self) -> float:
        return 1e3 if self.kind == "handshake" else 1e9


def build_cells(depths: Iterable[int], only: Sequence[str] = ()) -> list[Cell]:
    cells = []
    for depth in depths:
        for kind in _KINDS:
            for size in _SIZES:
                for app in _APPS:
                    cells.append(Cell(kind, size, app, depth))
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
