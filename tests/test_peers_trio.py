"""Interoperability with trio's SSLStream, a TLS stack we did not write.

A trio program (tests/peers/trio_peer.py, in its own process) nests one
``trio.SSLStream`` per layer and unwraps with ``SSLStream.unwrap()``; the
onion_tls side pushes and pops the matching layers on one transport.  Roles
alternate per depth, and both engines are used on our side.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import onion_tls
from onion_tls.testing import Engine, OnionCA

from .helpers import Recorder

pytest.importorskip("trio", reason="trio is a test dependency (pip install trio)")

PEER = Path(__file__).parent / "peers" / "trio_peer.py"


@contextlib.asynccontextmanager
async def peer_process(
    script: Path, we_listen: bool, *args: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Recorder]]:
    """Run a peer program and connect an onion_tls :class:`Recorder` to it:
    we listen and it connects (``--connect PORT``), or it listens
    (``--listen``, printing its port) and we connect."""
    loop = asyncio.get_running_loop()
    accepted: list[Recorder] = []
    listener = None
    if we_listen:

        def make() -> Recorder:
            accepted.append(Recorder())
            return accepted[-1]

        listener = await loop.create_server(onion_tls.wrap(make), "127.0.0.1", 0)
        where = ["--connect", str(listener.sockets[0].getsockname()[1])]
    else:
        where = ["--listen"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *where,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            if we_listen:
                while not accepted:
                    await asyncio.sleep(0.01)
                rec = accepted[0]
            else:
                port = int(await proc.stdout.readline())
                _, onion = await loop.create_connection(onion_tls.wrap(Recorder), "127.0.0.1", port)
                rec = onion.transport.get_protocol()  # type: ignore[assignment]
        await rec.wait_for(lambda: rec.made, "connection_made")
        yield proc, rec
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if listener is not None:
            listener.close()
            await listener.wait_closed()


def write_certs(ca: OnionCA, depth: int, where: Path) -> None:
    ca.ca.cert_pem.write_to_path(str(where / "ca.pem"))
    for d in range(1, depth + 1):
        ca.server_cert(d).private_key_and_cert_chain_pem.write_to_path(str(where / f"layer{d}.pem"))


async def read_line(rec: Recorder) -> bytes:
    await rec.wait_for(lambda: b"\n" in rec.data, "a line")
    line, _, rest = bytes(rec.data).partition(b"\n")
    rec.data[:] = rest
    return line


def take_buffered(rec: Recorder) -> bytes:
    rest = bytes(rec.data)
    rec.data.clear()
    return rest


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
@pytest.mark.parametrize("we_listen", [False, True], ids=["trio-listens", "onion-listens"])
async def test_nested_and_unwrapped_against_trio(
    onion_ca: OnionCA, tmp_path: Path, engine: Engine, we_listen: bool
) -> None:
    depth = 3
    # Our TLS role per depth; trio takes the other one.
    ours = ["c", "s", "c"]
    theirs = ",".join("s" if r == "c" else "c" for r in ours)
    write_certs(onion_ca, depth, tmp_path)
    async with peer_process(PEER, we_listen, "--roles", theirs, "--dir", str(tmp_path)) as (
        proc,
        rec,
    ):
        t = rec.transport

        for d in range(1, depth + 1):
            t.write(b"STARTTLS %d\n" % d)
            assert await read_line(rec) == b"GO %d" % d
            # When trio is the TLS client its ClientHello may already sit
            # behind "GO d": it is handed over explicitly.
            early = take_buffered(rec)
            if ours[d - 1] == "c":
                assert early == b""
                ctx = onion_ca.client_context(engine)
                fut = t.start_tls(ctx, server_hostname=onion_ca.hostname(d))
            else:
                ctx = onion_ca.server_context(d, engine)
                fut = t.start_tls(ctx, server_side=True, initial_bytes=early)
            layer = await fut
            assert layer.depth == d
            t.write(b"PING %d\n" % d)
            assert await read_line(rec) == b"PONG %d %s" % (d, layer.version.encode())  # type: ignore[union-attr]

        for d in range(depth, 0, -1):
            t.write(b"UNWRAP %d\n" % d)
            assert await read_line(rec) == b"BYE %d" % d
            popped = await t.stop_tls()
            assert popped.depth == d
            assert len(t.layers) == d - 1
            t.write(b"PING %d\n" % (d - 1))
            expected = b"PONG 0 plaintext" if d == 1 else b"PONG %d " % (d - 1)
            assert (await read_line(rec)).startswith(expected)
        # trio's close_notify reaches eof_received() only when it came before
        # our stop_tls() (it races with it); never more than once per layer
        assert rec.eofs <= depth
        t.write(b"QUIT\n")
        await rec.wait_lost()
        assert rec.lost == [None]
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"trio peer: done" in out
