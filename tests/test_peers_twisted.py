"""Interoperability with Twisted's TLSMemoryBIOProtocol (nested factories).

Twisted (tests/peers/twisted_peer.py, in its own process) sets up two nested
TLS layers when the connection opens; the onion_tls side pushes both layers
at once, without waiting for the first handshake (the second ClientHello is
queued inside the first layer until it is up), then exchanges lines.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from onion_tls.testing import Engine, OnionCA

from .test_peers_trio import peer_process, read_line, write_certs

pytest.importorskip("twisted", reason="twisted is a test dependency (pip install twisted)")

PEER = Path(__file__).parent / "peers" / "twisted_peer.py"


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
@pytest.mark.parametrize("we_listen", [False, True], ids=["twisted-listens", "onion-listens"])
async def test_two_nested_layers_against_twisted(
    onion_ca: OnionCA, tmp_path: Path, engine: Engine, we_listen: bool
) -> None:
    ours = ["c", "s"]
    theirs = ",".join("s" if r == "c" else "c" for r in ours)
    write_certs(onion_ca, len(ours), tmp_path)
    async with peer_process(PEER, we_listen, "--roles", theirs, "--dir", str(tmp_path)) as (
        proc,
        rec,
    ):
        t = rec.transport
        rec.eof_result = False  # the peer's close_notify ends the connection
        futures = []
        for depth, role in enumerate(ours, 1):
            if role == "c":
                ctx = onion_ca.client_context(engine)
                futures.append(t.start_tls(ctx, server_hostname=onion_ca.hostname(depth)))
            else:
                ctx = onion_ca.server_context(depth, engine)
                futures.append(t.start_tls(ctx, server_side=True))
        t.write(b"written before any handshake finished\n")
        layers = await asyncio.gather(*futures)
        assert [layer.depth for layer in layers] == [1, 2]
        assert await read_line(rec) == b"echo: written before any handshake finished"
        big = b"x" * 200_000
        t.write(big + b"\n")
        assert await read_line(rec) == b"echo: " + big
        t.write(b"QUIT\n")
        assert await read_line(rec) == b"BYE"
        exc = await rec.wait_lost()
        # Twisted closes every layer with close_notify before the socket.
        assert exc is None, exc
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert b"twisted peer: done" in out, err.decode()
