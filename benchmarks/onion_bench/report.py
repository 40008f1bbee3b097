"""The table the bench prints: per cell and depth, every implementation's
rate, the best peer and onion_tls's ratio to it; the depth-1 sink against
the C path; the same for CPU cost; then memory."""

from __future__ import annotations

import os
import ssl
import statistics
from typing import TYPE_CHECKING

from .cells import CIPHER, GROUP, IDLE_DEPTH, Cell, Impl

if TYPE_CHECKING:
    from .harness import Options, Results

__all__ = ["table"]

_W = 8  # width of a value column
_NAME = 20  # width of the cell name column


def _fmt(value: float, unit: str) -> str:
    if unit in ("ns/B", "ms/conn"):
        return f"{value:.2f}"
    return f"{value:.0f}" if unit == "conn/s" or value >= 100 else f"{value:.1f}"


def _versions() -> str:
    import platform

    out = [f"Python {platform.python_version()}", f"ssl: {ssl.OPENSSL_VERSION}"]
    try:
        import OpenSSL
        from OpenSSL import SSL

        native = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        out.append(f"pyOpenSSL {OpenSSL.__version__} on {native}")
    except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
        pass
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("uvloop", "Twisted", "trio"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out) + f"; {os.cpu_count()} CPUs"


class _Row:
    """The medians of one cell, per implementation, and what follows from them."""

    def __init__(
        self,
        cell: Cell,
        impls: list[Impl],
        data: dict[tuple[Cell, str], list[float]],
        errors: dict[tuple[Cell, str], str],
        lower_is_better: bool,
    ) -> None:
        self.cell = cell
        self.texts: list[str] = []
        self.best: tuple[str, float] | None = None
        self.onion: list[float | None] = []
        unit = cell.cost_unit if lower_is_better else cell.unit

        def median(c: Cell, impl: Impl) -> float | None:
            vals = data.get((c, impl.name))
            return statistics.median(vals) if vals else None

        for impl in impls:
            value = median(cell, impl) if impl.runs(cell) else None
            if impl.runs(cell):
                failed = (cell, impl.name) in errors
                self.texts.append("fail" if failed else "-" if value is None else _fmt(value, unit))
            else:
                self.texts.append("n/a")
            if impl.is_onion:
                self.onion.append(value)
            stand_in = impl.stand_in(cell)
            if not impl.is_peer or stand_in is None:
                continue
            peer_value = median(stand_in, impl)
            if peer_value is None:
                continue
            better = self.best is None or (
                peer_value < self.best[1] if lower_is_better else peer_value > self.best[1]
            )
            if better:
                star = "" if stand_in == cell else "*"
                self.best = (impl.name + star, peer_value)
        self.best_text = f"{self.best[0]} {_fmt(self.best[1], unit)}" if self.best else "-"
        self.ratios = []
        for ours in self.onion:
            if ours and self.best and self.best[1]:
                r = self.best[1] / ours if lower_is_better else ours / self.best[1]
                self.ratios.append(f"{r:.2f}x")
            else:
                self.ratios.append("-")


def _block(
    title: str,
    impls: list[Impl],
    cells: list[Cell],
    data: dict[tuple[Cell, str], list[float]],
    errors: dict[tuple[Cell, str], str],
    lower_is_better: bool,
) -> list[str]:
    onions = [i for i in impls if i.is_onion]
    peers = [i for i in impls if i.is_peer]
    ceiling = [i for i in impls if not i.is_onion and not i.is_peer]
    groups = [onions, peers, ceiling]
    order = [i for g in groups for i in g]
    best_head = "cheapest peer" if lower_is_better else "best peer"
    ratio_heads = ["ratio" if i.loop == "asyncio" else "ratio+uv" for i in onions]

    def line(name: str, depth: str, texts: list[str], best: str, ratios: list[str]) -> str:
        out = f"{name:<{_NAME}}{depth:>2}"
        pos = 0
        for group in groups:
            if not group:
                continue
            out += " |" + "".join(f" {t:>{_W}}" for t in texts[pos : pos + len(group)])
            pos += len(group)
        out += f" | {best:<18}|" + "".join(f" {r:>{_W}}" for r in ratios)
        return out

    lines = [
        line(title, "d", [i.short for i in order], best_head, ratio_heads),
    ]
    depth_seen = None
    for cell in cells:
        if depth_seen is not None and cell.depth != depth_seen:
            lines.append("")
        depth_seen = cell.depth
        row = _Row(cell, order, data, errors, lower_is_better)
        lines.append(line(cell.name, str(cell.depth), row.texts, row.best_text, row.ratios))
    return lines


def _c_path(impls: list[Impl], cells: list[Cell], res: Results) -> list[str]:
    """The depth-1 sink, 64 KiB writes, as a fraction of the C path."""
    ceiling = [i for i in impls if i.kind == "sslsocket"]
    onions = [i for i in impls if i.is_onion]
    sinks = [c for c in cells if c.kind == "sink" and c.size == 64 * 1024 and c.depth == 1]
    if not ceiling or not sinks:
        return []
    lines = ["depth-1 sink 64 KiB as a fraction of the C path (blocking ssl.SSLSocket):"]
    for cell in sinks:
        c_vals = res.values.get((cell, ceiling[0].name))
        c_rate = statistics.median(c_vals) if c_vals else None
        parts = []
        for impl in onions:
            vals = res.values.get((cell, impl.name))
            if vals and c_rate:
                ours = statistics.median(vals)
                parts.append(f"{impl.name} {ours:.0f} / {c_rate:.0f} = {ours / c_rate:.2f}x")
            else:
                parts.append(f"{impl.name} - (a rate is missing)")
        lines.append(f"  {cell.app + ':':<10}" + ", ".join(parts))
    return lines


def _memory(opts: Options, res: Results) -> list[str]:
    impls = opts.impls
    lines = [f"{'memory':<40}" + "".join(f" {i.short:>{_W}}" for i in impls)]
    for role in ("server", "client"):
        peaks = [res.peak.get((i.name, role)) for i in impls]
        cols = "".join(f" {p / 2**20:>{_W}.1f}" if p else f" {'-':>{_W}}" for p in peaks)
        lines.append(f"  {'peak RSS, MiB, ' + role:<38}{cols}")
    if opts.idle > 0:
        for role in ("server", "client"):
            label = f"idle depth-{IDLE_DEPTH} KiB/conn (x{opts.idle}), {role}"
            cols = ""
            for impl in impls:
                v = res.idle.get((impl.name, role))
                if not impl.has_idle:
                    text = "n/a"
                elif isinstance(v, float):
                    text = f"{v / 1024:.1f}"
                else:
                    text = "error"
                cols += f" {text:>{_W}}"
            lines.append(f"  {label:<38}{cols}")
        for (name, role), v in sorted(res.idle.items()):
            if isinstance(v, str):
                lines.append(f"  ! idle {name} {role}: {v}")
    return lines


_MEANING = {
    "onion_tls": "onion = onion_tls on asyncio",
    "onion_tls+uvloop": "onion+uv = onion_tls on uvloop",
    "asyncio": "asyncio = asyncio's TLS",
    "uvloop": "uvloop = asyncio's TLS API on uvloop (uvloop's TLS)",
    "twisted": "twisted = TLSMemoryBIOProtocol (pyOpenSSL)",
    "trio": "trio = trio.SSLStream",
    "sslsocket": "C-path = blocking ssl.SSLSocket (depth 1; a ceiling, not a peer)",
}


def _legend(impls: list[Impl]) -> list[str]:
    """What the columns and the ratios mean, in lines of at most 100."""
    parts = ["columns: " + "; ".join(_MEANING[i.name] for i in impls)]
    if len([i for i in impls if i.is_onion]) > 1:
        parts.append("ratio = onion_tls / best peer (ratio+uv: onion_tls on uvloop)")
    else:
        parts.append("ratio = onion_tls / best peer")
    if any(i.kind in ("twisted", "trio") for i in impls):
        parts.append("n/a = no such API (best peer* = its plain rate stands for its buffered one)")
    parts.append(
        "CPU cost = client + server CPU time per payload byte (ns/B), per round trip "
        "(us/rt) or per connection (ms/conn); its ratio = cheapest peer / onion_tls "
        "(above 1: onion_tls is cheaper)"
    )
    lines: list[str] = []
    for part in parts:
        line = " "
        for word in part.split(" "):
            if len(line) + 1 + len(word) > 100:
                lines.append(line)
                line = "   "
            line += " " + word
        lines.append(line)
    return lines


def table(opts: Options, cells: list[Cell], results: Results) -> str:
    res = results
    impls = opts.impls
    ciphers = sorted(res.ciphers)
    lines = [
        "onion_tls bench: onion_tls against the best peer, same run, interleaved",
        "  " + _versions(),
        f"  onion_tls engine {opts.engine}; TLS 1.3, negotiated: {', '.join(ciphers) or '?'}, "
        f"key exchange {GROUP}; 127.0.0.1, server and client in separate processes",
        f"  median of {opts.rounds} round(s) of {opts.seconds:g} s per cell; "
        "payload MB/s (10^6 B/s); pingpong = 1-byte round trips/s; "
        "handshake = connections/s with every layer",
    ]
    lines.extend(_legend(impls))
    lines.extend(f"  note: {note}" for note in opts.notes)
    ordered = sorted(cells, key=lambda c: c.depth)
    lines.append("")
    lines.extend(_block("throughput", impls, ordered, res.values, res.errors, False))
    c_path = _c_path(impls, cells, res)
    if c_path:
        lines.append("")
        lines.extend(c_path)
    lines.append("")
    lines.extend(_block("CPU cost", impls, ordered, res.costs, res.errors, True))
    for (cell, name), err in sorted(res.errors.items(), key=lambda kv: str(kv[0])):
        lines.append(f"  ! {cell.name} depth {cell.depth} {name}: {err}")
    lines.append("")
    lines.extend(_memory(opts, res))
    unexpected = [c for c in ciphers if c != CIPHER]
    if unexpected:
        lines.append(f"\n! negotiated {', '.join(unexpected)}, not only {CIPHER}")
    return "\n".join(lines)
