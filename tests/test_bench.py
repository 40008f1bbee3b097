"""Smoke tests of ``python benchmarks/bench.py`` (outside the package): it
runs, stops by itself and prints a complete table.  No timing is asserted."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def rows(table: str, name: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith(name + " ")]


NUM = r"\s+(\d+(?:\.\d+)?)"
CELL = re.compile(rf"\|{NUM}{NUM}\s+(\d+\.\d\d)x")


@pytest.fixture
def bench_cells(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/onion_bench/cells.py``, the bench's matrix (pure functions),
    imported with benchmarks/ on the path for this test only."""
    monkeypatch.syspath_prepend(str(BENCH.parent))
    return importlib.import_module("onion_bench.cells")


def test_parse_depths(bench_cells: ModuleType) -> None:
    assert bench_cells.parse_depths("1-3") == [1, 2, 3]
    assert bench_cells.parse_depths("3,1") == [1, 3]
    assert bench_cells.parse_depths("2") == [2]
    for bad in ("0", "x", "3-1", "1-9"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_cells.parse_depths(bad)


def test_cells_cover_the_matrix(bench_cells: ModuleType) -> None:
    cells = bench_cells.build_cells([1, 2, 3])
    # sink and echo x 64k and 1k x plain and buffered, plus handshakes, per depth
    assert len(cells) == 3 * 9
    names = {c.name for c in cells}
    assert {"sink-64k-plain", "sink-1k-buffered", "echo-64k-buffered", "handshake"} <= names
    only = bench_cells.build_cells([2], ["sink-64k-*", "handshake"])
    assert [(c.name, c.depth) for c in only] == [
        ("sink-64k-plain", 2),
        ("sink-64k-buffered", 2),
        ("handshake", 2),
    ]


@pytest.mark.timeout(300)  # worker processes on a busy machine
def test_quick_bench_prints_a_table() -> None:
    loops = "asyncio,uvloop" if HAVE_UVLOOP else "asyncio"
    proc = run_cli(
        "--quick",
        "--depths",
        "1,2",
        "--loops",
        loops,
        "--seconds",
        "0.1",
        "--idle",
        "20",
        "--only",
        "sink-64k-plain",
        "--only",
        "echo-1k-buffered",
        "--only",
        "handshake",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "TLS_AES_256_GCM_SHA384" in out
    assert "!" not in out, out  # no failed cell
    for loop in loops.split(","):
        assert f"loop {loop}" in out
        assert f"CPU cost, {loop}" in out
    for name in ("sink-64k-plain", "echo-1k-buffered", "handshake"):
        found = rows(out, name)
        # a throughput row and a CPU cost row per loop
        assert len(found) == 2 * len(loops.split(",")), out
        for row in found:
            cells = CELL.findall(row)
            assert len(cells) == 2, row  # depth 1 and depth 2: both measured, with a ratio
            for ours, theirs, ratio in cells:
                assert float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0
    assert len(rows(out, "  peak RSS, MiB, server")) == len(loops.split(","))
    idle = [line for line in out.splitlines() if "idle depth-2 KiB/conn (x20)" in line]
    assert len(idle) == 2 * len(loops.split(","))
    for line in idle:
        assert re.search(r"\d+\.\d\s+\d+\.\d\s+\d+\.\d\dx$", line), line
    # progress goes to stderr, one line per cell and round
    assert "[asyncio 1/1] handshake depth 2" in proc.stderr


@pytest.mark.timeout(300)
def test_quick_bench_stdlib_engine() -> None:
    proc = run_cli(
        "--quick",
        "--engine",
        "stdlib",
        "--depths",
        "3",
        "--loops",
        "asyncio",
        "--seconds",
        "0.1",
        "--idle",
        "0",
        "--only",
        "sink-1k-plain",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "onion_tls engine stdlib" in proc.stdout
    throughput, cost = rows(proc.stdout, "sink-1k-plain")
    assert len(CELL.findall(throughput)) == 1
    assert len(CELL.findall(cost)) == 1
    assert "idle" not in proc.stdout


@pytest.mark.parametrize("side", ["send", "recv"])
@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
def test_datapath_script_runs_each_side_alone(side: str, engine: str) -> None:
    """``stress/datapath.py`` (the in-process cost of one side, for a native
    profiler): it establishes the layers, moves every byte and reports."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    args = ["--depth", "2", "--side", side, "--engine", engine, "--mb", "3", "--size", "1000"]
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(ROOT / "stress" / "datapath.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(
        rf"depth 2 {engine} {side} 1000 B writes: \d+ MB/s, \d+\.\d\d ns/B of CPU\n", proc.stdout
    ), proc.stdout
