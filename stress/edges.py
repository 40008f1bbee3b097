"""How much a flooding or stalling peer can make one connection hold, at
each edge of its life (DESIGN rules 12 and 13).  Figures for the notes;
not a test (the suite proves the bounds with smaller floods).

    python stress/edges.py [--mb 200] [--close-timeout 2]

Edges, each with a peer that sends ``--mb`` megabytes as fast as it can:

* paused     - the application paused reading;
* stop       - the application paused reading and called stop_tls(); the
               peer never answers its close_notify;
* peer-close - the peer sent close_notify, then floods the bytes beneath;
               the application has not decided (eof_received said "keep").

"held" is measured black-box: bytes the pipe delivered to the victim's
socket side minus bytes its application received.  Then ``close()``
towards a loopback peer that never reads: how long until it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import time
from typing import Any

from onion_tls import OnionProtocol, OnionTransport
from onion_tls.testing import OnionCA, memory_pair

CHUNK = 64 * 1024


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.received = 0
        self.eofs = 0
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)

    def eof_received(self) -> bool:
        self.eofs += 1
        return True  # undecided: keep the connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


async def flood(edge: str, megabytes: int, ca: OnionCA) -> tuple[int, int]:
    pair = await memory_pair(App, App, auto=False)
    pipe = pair.pipe
    victim, peer = pair.server, pair.client
    vapp = pair.server_protocol
    assert isinstance(vapp, App)
    fs = victim.start_tls(ca.server_context(1), server_side=True)
    manual: ssl.SSLObject | None = None
    if edge == "peer-close":
        # A hand-driven TLS peer (an onion stack never sends after its
        # close_notify): its ciphertext goes out as plaintext of ``peer``.
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        manual = ca.client_context("stdlib").wrap_bio(inc, out, server_hostname=ca.hostname(1))
        papp = pair.client_protocol
        assert isinstance(papp, App)
        original = papp.data_received

        def feed(data: bytes) -> None:
            original(data)
            inc.write(data)

        papp.data_received = feed  # type: ignore[method-assign]
        for _ in range(20):
            try:
                manual.do_handshake()
                break
            except ssl.SSLWantReadError:
                peer.write(out.read())
                pipe.pump()
                await asyncio.sleep(0)
        peer.write(out.read())
        pipe.pump()
    else:
        fc = peer.start_tls(ca.client_context(), server_hostname=ca.hostname(1))
        while not fc.done():
            pipe.pump()
            await asyncio.sleep(0)
    while not fs.done():
        pipe.pump()
        await asyncio.sleep(0)
    if edge != "peer-close":
        victim.pause_reading()
    if edge == "stop":
        victim.stop_tls(timeout=None)
    if edge == "peer-close":
        assert manual is not None
        try:
            manual.unwrap()
        except ssl.SSLWantReadError:
            pass
        peer.write(out.read())
    start = len(pipe.sent["a"])
    peak = 0
    block = os.urandom(CHUNK)
    total = megabytes * 1024 * 1024
    sent = 0
    while sent < total:
        peer.write(block)  # inside the layer, or beneath it after close_notify
        sent += CHUNK
        pipe.pump()
        held = len(pipe.sent["a"]) - start - vapp.received
        peak = max(peak, held)
        if sent % (8 * CHUNK) == 0:
            await asyncio.sleep(0)
    delivered = len(pipe.sent["a"]) - start
    victim.abort()
    peer.abort()
    for _ in range(5):
        await asyncio.sleep(0)
    return peak, delivered


async def close_towards_a_stalled_peer(ca: OnionCA, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    app = App()
    _, onion = await loop.create_connection(lambda: OnionProtocol(app), "127.0.0.1", port)
    peer, _ = await loop.sock_accept(listener)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    transport: OnionTransport = onion.transport
    # The peer answers the handshake (a thread-free manual server), then
    # stops reading for good.
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = ca.server_context(1, "stdlib").wrap_bio(inc, out, server_side=True)
    fut = transport.start_tls(
        ca.client_context("stdlib"), server_hostname=ca.hostname(1), shutdown_timeout=timeout
    )
    while not fut.done():
        try:
            data = await asyncio.wait_for(loop.sock_recv(peer, 65536), 0.05)
            inc.write(data)
        except TimeoutError:
            pass
        try:
            srv.do_handshake()
        except ssl.SSLWantReadError:
            pass
        if out.pending:
            await loop.sock_sendall(peer, out.read())
    transport.write(b"x" * (16 * 1024 * 1024))
    began = time.monotonic()
    transport.close()
    while not app.lost:
        await asyncio.sleep(0.01)
    took = time.monotonic() - began
    peer.close()
    listener.close()
    print(f"  connection_lost({type(app.lost[0]).__name__})")
    return took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--close-timeout", type=float, default=2.0)
    args = parser.parse_args()
    ca = OnionCA()
    for edge in ("paused", "stop", "peer-close"):
        began = time.monotonic()
        peak, delivered = await flood(edge, args.mb, ca)
        print(
            f"{edge:10s}: peer sent {args.mb} MB; the victim took {delivered / 1024:,.0f} KiB "
            f"off the wire, held at most {peak / 1024:,.0f} KiB "
            f"({time.monotonic() - began:.1f} s)"
        )
    print(f"close() towards a peer that never reads, shutdown_timeout={args.close_timeout:g} s:")
    took = await close_towards_a_stalled_peer(ca, args.close_timeout)
    print(f"  ended after {took:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
