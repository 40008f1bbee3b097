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


NUMBER = re.compile(r"\d+(?:\.\d+)?")
RATIO = re.compile(r"\d+\.\d\dx")
BEST = re.compile(r"(asyncio|uvloop|twisted|trio)\*? \d+(?:\.\d+)?")


def parse_block(table: str, title: str) -> tuple[list[str], list[list[str]]]:
    """The column names of the block whose header starts with ``title``
    (``throughput``, ``CPU cost``) and its rows, as lists of texts: cell
    name, depth, one value per implementation, best peer, the ratios."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title + " "))

    def split(line: str) -> list[str]:
        first, *groups, best, ratios = line.split("|")
        name, depth = first.rsplit(None, 1)
        values = [v for group in groups for v in group.split()]
        return [name.strip(), depth, *values, best.strip(), *ratios.split()]

    header = split(lines[start])
    body = []
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if "|" not in line:
            break
        row = split(line)
        if row[1] == "d":  # the next block's header
            break
        body.append(row)
    return header, body


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
    # sink and echo x 64k and 1k x plain and buffered, pingpong plain and
    # buffered, plus handshakes, per depth
    assert len(cells) == 3 * 11
    names = {c.name for c in cells}
    assert {"sink-64k-plain", "sink-1k-buffered", "echo-64k-buffered", "handshake"} <= names
    assert {"pingpong", "pingpong-buffered"} <= names
    assert [c.name for c in bench_cells.build_cells([1], ["pingpong"])] == ["pingpong"]
    only = bench_cells.build_cells([2], ["sink-64k-*", "handshake"])
    assert [(c.name, c.depth) for c in only] == [
        ("sink-64k-plain", 2),
        ("sink-64k-buffered", 2),
        ("handshake", 2),
    ]


def test_implementations(bench_cells: ModuleType) -> None:
    impls = bench_cells.build_impls(["asyncio", "uvloop"], list(bench_cells.PEERS))
    assert [i.name for i in impls] == [
        "onion_tls",
        "onion_tls+uvloop",
        "asyncio",
        "uvloop",
        "twisted",
        "trio",
        "sslsocket",
    ]
    by_name = {i.name: i for i in impls}
    cell = bench_cells.Cell
    buffered2, plain2 = cell("sink", 1024, "buffered", 2), cell("sink", 1024, "plain", 2)
    assert by_name["uvloop"].runs(buffered2) and by_name["uvloop"].is_peer
    assert not by_name["twisted"].runs(buffered2)
    assert by_name["trio"].stand_in(buffered2) == plain2  # its plain rate stands in
    c_path = by_name["sslsocket"]
    assert not c_path.is_peer and not c_path.runs(plain2) and c_path.stand_in(buffered2) is None
    assert c_path.runs(cell("echo", 1024, "buffered", 1))
    assert [i.name for i in bench_cells.build_impls(["asyncio"], [])] == ["onion_tls"]


@pytest.mark.timeout(300)  # worker processes on a busy machine
def test_quick_bench_every_peer_every_cell() -> None:
    """Every cell at depths 1-2 on onion_tls and every peer (all installed
    in the test environment): each produced a number, and the table gives
    the best peer and the ratios, and the depth-1 sink against the C path."""
    for module in ("twisted", "trio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    loops = ["asyncio", "uvloop"] if HAVE_UVLOOP else ["asyncio"]
    proc = run_cli(
        "--quick",
        "--depths",
        "1-2",
        "--loops",
        ",".join(loops),
        "--peers",
        "asyncio,twisted,trio,sslsocket",
        "--seconds",
        "0.05",
        "--idle",
        "20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "TLS_AES_256_GCM_SHA384" in out
    assert "!" not in out, out  # no failed cell
    onions = ["onion", "onion+uv"][: len(loops)]
    columns = [*onions, "asyncio", "uvloop"][: len(onions) + len(loops)]
    columns += ["twisted", "trio", "C-path"]
    ratio_heads = ["ratio", "ratio+uv"][: len(loops)]
    names = [
        f"{kind}-{size}-{app}"
        for kind in ("sink", "echo")
        for size in ("64k", "1k")
        for app in ("plain", "buffered")
    ] + ["pingpong", "pingpong-buffered", "handshake"]
    for title, best_head in (("throughput", "best peer"), ("CPU cost", "cheapest peer")):
        header, body = parse_block(out, title)
        assert header == [title, "d", *columns, best_head, *ratio_heads], header
        assert sorted((row[0], row[1]) for row in body) == sorted(
            (name, d) for name in names for d in ("1", "2")
        ), out
        for row in body:
            name, depth, *values = row[: 2 + len(columns)]
            best, *ratios = row[2 + len(columns) :]
            for column, value in zip(columns, values, strict=True):
                no_api = column in ("twisted", "trio") and name.endswith("-buffered")
                if no_api or (column == "C-path" and depth != "1"):
                    assert value == "n/a", (column, row)
                else:
                    assert NUMBER.fullmatch(value) and float(value) > 0, (column, row)
            assert BEST.fullmatch(best), row
            assert len(ratios) == len(loops) and all(RATIO.fullmatch(r) for r in ratios), row
    c_path = re.findall(r"^  (plain|buffered): +(.*)$", out, re.MULTILINE)
    assert [app for app, _ in c_path] == ["plain", "buffered"], out
    for _, text in c_path:
        assert len(re.findall(r"\d+ / \d+ = \d+\.\d\dx", text)) == len(loops), text
    assert len(rows(out, "  peak RSS, MiB, server")) == 1
    idle = [line for line in out.splitlines() if "idle depth-2 KiB/conn (x20)" in line]
    assert len(idle) == 2
    for line in idle:  # onion_tls and asyncio on every loop; the others have no idle figure
        assert re.search(rf"(\s+\d+\.\d){{{2 * len(loops)}}}(\s+n/a){{3}}$", line), line
    # progress goes to stderr, one line per cell and round
    assert "[1/1] handshake depth 2 (conn/s): " in proc.stderr


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
        "--peers",
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
    for title in ("throughput", "CPU cost"):
        header, body = parse_block(proc.stdout, title)
        assert header[2:4] == ["onion", "asyncio"]
        [(name, depth, ours, theirs, best, ratio)] = body
        assert (name, depth) == ("sink-1k-plain", "3")
        assert float(ours) > 0 and float(theirs) > 0
        assert best == f"asyncio {theirs}" and RATIO.fullmatch(ratio)
    assert "idle" not in proc.stdout
    assert "C-path" not in proc.stdout


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
