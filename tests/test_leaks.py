"""Nothing outlives its connection.

After a connection has ended - cleanly, after pops, by a failed handshake,
a truncation, an abort, a shutdown timeout - and the application has let go
of it, every object the library made for it (protocol, transport, chain,
layers, engines and the OpenSSL objects under them) must be
collectable: no timer left on the loop, no registry, no callback holds one.

The chain is doubly linked, the protocol and the transport point at each
other, and a pyOpenSSL engine's connection holds the engine's bound
callbacks, so these objects form reference cycles by design: with the
collector off, none of them is freed when the connection ends (measured:
20 of 20 objects of a two-layer pair wait for it).  What must hold is that
the cycle collector frees them all, whatever the ending.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import onion_tls
from onion_tls.testing import OnionCA, memory_pair


class App(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


Refs = list[tuple[str, "weakref.ref[Any]"]]


def watch(pair: Any, refs: Refs) -> None:
    """Weak references to everything the library made for ``pair``."""
    for side, onion in (("client", pair.client_onion), ("server", pair.server_onion)):
        objs: dict[str, Any] = {
            "protocol": onion,
            "transport": onion.transport,
            "chain": onion.layer_chain,
            "app": onion.transport.get_protocol(),
        }
        for layer in onion.layer_chain.layers():
            d = layer.depth
            objs[f"layer {d}"] = layer
            objs[f"layer {d} engine"] = layer.engine
            objs[f"layer {d} {layer.engine.engine_name} object"] = layer.engine.ssl_object
        for name, obj in objs.items():
            key = f"{side} {name}"
            if all(k != key for k, _ in refs):
                refs.append((key, weakref.ref(obj)))


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def run_ending(ca: OnionCA, ending: str, refs: Refs) -> None:
    """One connection, from connect to connection_lost on both sides."""
    pair = await memory_pair(App, App)
    client: App = pair.client_protocol  # type: ignore[assignment]
    server: App = pair.server_protocol  # type: ignore[assignment]
    await pair.start_tls(ca, 1, client_engine="pyopenssl", server_engine="stdlib")
    if ending == "handshake-failure":
        fs = pair.server.start_tls(ca.server_context(2, "pyopenssl"), server_side=True)
        fc = pair.client.start_tls(ca.client_context("stdlib"), server_hostname="wrong.test")
        watch(pair, refs)
        await asyncio.gather(fc, fs, return_exceptions=True)
    else:
        await pair.start_tls(ca, 2, client_engine="stdlib", server_engine="pyopenssl")
        watch(pair, refs)
        pair.client.write(b"x" * 100_000)
        await until(lambda: len(server.data) == 100_000)
        if ending == "close":
            pair.client.close()
        elif ending == "pop-then-close":
            await pair.stop_tls()
            await pair.stop_tls()
            pair.client.close()
        elif ending == "abort":
            pair.client.abort()
        elif ending == "truncation":
            # The client's socket closes under both layers: a TCP FIN with no
            # close_notify (the server sees a truncation).
            pair.pipe.a.close()
        elif ending == "stop-timeout":
            server.eof_received = lambda: True  # type: ignore[method-assign]
            pair.pipe.auto = False  # the network stops: no answer ever comes
            fut = pair.client.stop_tls(timeout=0.05)
            await asyncio.gather(fut, return_exceptions=True)
            pair.pipe.auto = True
            pair.pipe.pump()
        else:  # pragma: no cover
            raise AssertionError(ending)
    await until(lambda: bool(client.lost) and bool(server.lost))


ENDINGS = ["close", "pop-then-close", "abort", "truncation", "stop-timeout", "handshake-failure"]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_everything_is_collectable(onion_ca: OnionCA, ending: str) -> None:
    refs: Refs = []
    await run_ending(onion_ca, ending, refs)
    for _ in range(10):
        await asyncio.sleep(0)
    gc.collect()
    alive = [name for name, ref in refs if ref() is not None]
    assert len(refs) >= 16
    assert not alive, f"still alive after the connection ended ({ending}): {alive}"


async def test_loopback_connection_is_collectable(onion_ca: OnionCA) -> None:
    """The same over real sockets: the event loop's transports let go too."""
    loop = asyncio.get_running_loop()
    refs: Refs = []
    servers: list[App] = []

    def make() -> App:
        servers.append(App())
        return servers[-1]

    srv = await loop.create_server(onion_tls.wrap(make), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]

    async def one() -> None:
        _, onion = await loop.create_connection(onion_tls.wrap(App), "127.0.0.1", port)
        client: App = onion.transport.get_protocol()  # type: ignore[assignment]
        await until(lambda: bool(servers))
        server = servers.pop()
        fs = server.transport.start_tls(onion_ca.server_context(1, "stdlib"), server_side=True)
        fc = client.transport.start_tls(
            onion_ca.client_context("pyopenssl"), server_hostname=onion_ca.hostname(1)
        )
        await asyncio.gather(fc, fs)
        for obj, name in ((onion, "client protocol"), (client.transport, "client transport")):
            refs.append((name, weakref.ref(obj)))
        layer = onion.layer_chain.layers()[0]
        refs.append(("client layer", weakref.ref(layer)))
        refs.append(("client engine", weakref.ref(layer.engine)))
        refs.append(("server app", weakref.ref(server)))
        refs.append(("server transport", weakref.ref(server.transport)))
        client.transport.write(b"ping")
        await until(lambda: server.data == b"ping")
        client.transport.close()
        await until(lambda: bool(client.lost) and bool(server.lost))

    await one()
    srv.close()
    await srv.wait_closed()
    for _ in range(10):
        await asyncio.sleep(0)
    gc.collect()
    alive = [name for name, ref in refs if ref() is not None]
    assert not alive, alive
