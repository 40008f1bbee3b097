"""The table the bench prints: throughput and CPU cost per cell and depth,
onion_tls beside asyncio with their ratio, then memory."""

from __future__ import annotations

import os
import ssl
import statistics
from typing import TYPE_CHECKING

from .cells import CIPHER, GROUP, IDLE_DEPTH, IMPLS, Cell

if TYPE_CHECKING:
    from .harness import LoopResult, Options

__all__ = ["table"]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "conn/s" or value >= 100 else f"{value:.1f}"


def table(opts: Options, cells: list[Cell], results: dict[str, LoopResult]) -> str:
    import platform

    from OpenSSL import SSL

    lines = []
    versions = [f"Python {platform.python_version()}", ssl.OPENSSL_VERSION]
    try:
        import uvloop

        versions.append(f"uvloop {getattr(uvloop, '__version__', '?')}")
    except ImportError:
        pass
    versions.append(f"pyOpenSSL {SSL.__version__}" if hasattr(SSL, "__version__") else "")
    ciphers = sorted(set().union(*(r.ciphers for r in results.values())))
    lines.append("onion_tls bench: onion_tls / asyncio's own TLS, same run, interleaved")
    lines.append("  " + ", ".join(v for v in versions if v) + f"; {os.cpu_count()} CPUs")
    lines.append(
        f"  onion_tls engine {opts.engine}; TLS 1.3, negotiated: {', '.join(ciphers) or '?'}, "
        f"key exchange {GROUP}; 127.0.0.1, server and client in separate processes"
    )
    lines.append(
        f"  median of {opts.rounds} round(s) of {opts.seconds:g} s per cell; "
        "payload MB/s (10^6 B/s); handshake = connections/s with every layer"
    )
    lines.append(
        "  CPU cost: client + server CPU time per payload byte (ns/B) or per connection (ms/conn);"
    )
    lines.append(
        "  its ratio is asyncio / onion_tls (above 1: onion_tls is cheaper); it "
        "depends less on other load"
    )
    depths = sorted({c.depth for c in cells})
    names = list(dict.fromkeys(c.name for c in cells))
    by_key = {(c.name, c.depth): c for c in cells}

    def block(title: str, data: dict[tuple[Cell, str], list[float]], cost: bool) -> None:
        head = f"{title:<22}"
        sub = f"{'':<22}"
        for d in depths:
            head += f"| {'depth ' + str(d):<25}"
            sub += f"| {'onion':>8} {'asyncio':>8} {'ratio':>6} "
        lines.append(head)
        lines.append(sub)
        for name in names:
            row = f"{name:<22}"
            for d in depths:
                cell = by_key.get((name, d))
                if cell is None:
                    row += f"| {'':<25}"
                    continue
                meds: list[float | None] = []
                for impl in IMPLS:
                    vals = data.get((cell, impl))
                    meds.append(statistics.median(vals) if vals else None)
                ours, theirs = meds
                if cost:  # lower is better: the ratio says how much cheaper
                    ratio = f"{theirs / ours:.2f}x" if ours and theirs else "-"
                    cols = " ".join(f"{v:>8.2f}" if v else f"{'-':>8}" for v in meds)
                else:
                    ratio = f"{ours / theirs:.2f}x" if ours and theirs else "-"
                    cols = f"{_fmt(ours, cell.unit):>8} {_fmt(theirs, cell.unit):>8}"
                row += f"| {cols} {ratio:>6} "
            lines.append(row)

    for loop, res in results.items():
        lines.append("")
        block("loop " + loop, res.values, cost=False)
        lines.append("")
        block("CPU cost, " + loop, res.costs, cost=True)
        for (cell, impl), err in sorted(res.errors.items(), key=lambda kv: str(kv[0])):
            lines.append(f"  ! {cell.name} depth {cell.depth} {impl}: {err}")
        lines.append("")
        lines.append(f"{'memory (' + loop + ')':<38}{'onion':>10} {'asyncio':>10} {'ratio':>7}")
        for role in ("server", "client"):
            peaks = [res.peak.get((impl, role)) for impl in IMPLS]
            ours_p, theirs_p = peaks
            ratio = f"{ours_p / theirs_p:.2f}x" if ours_p and theirs_p else "-"
            cols = " ".join(f"{p / 2**20:>10.1f}" if p else f"{'-':>10}" for p in peaks)
            lines.append(f"  {'peak RSS, MiB, ' + role:<36}{cols} {ratio:>7}")
        if opts.idle > 0:
            for role in ("server", "client"):
                idle = [res.idle.get((impl, role)) for impl in IMPLS]
                label = f"idle depth-{IDLE_DEPTH} KiB/conn (x{opts.idle}), {role}"
                cols = " ".join(
                    f"{v / 1024:>10.1f}" if isinstance(v, float) else f"{'error':>10}" for v in idle
                )
                a, b = idle
                ratio = (
                    f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) and b else "-"
                )
                lines.append(f"  {label:<36}{cols} {ratio:>7}")
                for impl, v in zip(IMPLS, idle, strict=True):
                    if isinstance(v, str):
                        lines.append(f"  ! idle {impl} {role}: {v}")
    unexpected = [c for c in ciphers if c != CIPHER]
    if unexpected:
        lines.append(f"\n! negotiated {', '.join(unexpected)}, not only {CIPHER}")
    return "\n".join(lines)
