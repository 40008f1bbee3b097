"""TLS 1.3 KeyUpdate from a real peer: ``openssl s_server`` / ``s_client``
send one on the ``K`` (update requested) and ``k`` commands of their
standard input.  Loopback only.

At depth 2 the OpenSSL peer is reached through an in-process relay that
terminates layer 1 and forwards layer 1's plaintext to the OpenSSL process
over a plain loopback connection, so the KeyUpdate arrives inside layer 1.

What must hold, for both engines: data sent before and after the update
arrives whole and in order, the layer stays open, and when the peer asks
for an update (``K``) our side answers with its own KeyUpdate before its
next data (``-msg`` shows both), so the peer decrypts what we send next.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import onion_tls
from onion_tls.testing import ENGINES, OnionCA

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

KEYUPDATE_SENT = ">>> TLS 1.3, Handshake [length 0005], KeyUpdate"
KEYUPDATE_RECEIVED = "<<< TLS 1.3, Handshake [length 0005], KeyUpdate"


class App(asyncio.Protocol):
    def __init__(self, on_made: Callable[[App], None] | None = None) -> None:
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.on_made = on_made
        self.transport: onion_tls.OnionTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, onion_tls.OnionTransport)
        self.transport = transport
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class OpenSSLPeer:
    """An ``openssl s_server``/``s_client`` process and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""

    async def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            m = re.search(pattern, self.out)
            if m is not None:
                return m
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"openssl never printed {pattern!r}; it printed:\n{self.out}")
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(4096), remaining)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"openssl ended before {pattern!r}:\n{self.out}")
            self.out += chunk.decode("latin-1")

    async def expect_count(self, text: str, n: int) -> None:
        await self.expect(f"(?s)({re.escape(text)}.*){{{n}}}")

    def type(self, line: bytes) -> None:
        # The CLI reads its input in whole chunks and takes a command only
        # at the start of one, dropping the rest: type a line at a time and
        # wait for its effect.
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)


@contextlib.asynccontextmanager
async def openssl(*args: str) -> AsyncIterator[OpenSSLPeer]:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    peer = OpenSSLPeer(proc)
    try:
        yield peer
    finally:
        if proc.returncode is None:
            proc.kill()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        await proc.stdout.read()
        await proc.wait()


def pems(ca: OnionCA, depth: int, tmp: Path) -> tuple[str, str, str]:
    leaf = ca.server_cert(depth)
    cert, key, trust = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.ca.cert_pem.write_to_path(str(trust))
    return str(cert), str(key), str(trust)


class Forward(asyncio.Protocol):
    """A plain loopback connection whose bytes go to ``sink``."""

    def __init__(self, sink: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self.sink = sink
        self.on_lost = on_lost
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.sink(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.on_lost()


class Relay(App):
    """Terminates layer 1 (as its server) and joins its plaintext to a plain
    loopback connection to ``port``."""

    def __init__(self, ca: OnionCA, port: int) -> None:
        super().__init__()
        self.ca = ca
        self.port = port
        self.upstream: asyncio.Transport | None = None
        self.pending = bytearray()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        await self.transport.start_tls(self.ca.server_context(1, "pyopenssl"), server_side=True)
        t, _ = await asyncio.get_running_loop().create_connection(
            lambda: Forward(self.transport.write, self._upstream_lost), "127.0.0.1", self.port
        )
        self.upstream = t
        if self.pending:
            t.write(bytes(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending += data
        else:
            self.upstream.write(data)

    def _upstream_lost(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        if self.upstream is not None:
            self.upstream.close()


async def settle_until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("engine", ENGINES)
async def test_key_update_from_openssl_s_server(
    onion_ca: OnionCA, engine: str, depth: int, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    cert, key, _ = pems(onion_ca, depth, tmp_path)
    async with openssl(
        "s_server", "-accept", "127.0.0.1:0", "-cert", cert, "-key", key,
        "-tls1_3", "-naccept", "1", "-msg",
    ) as server:  # fmt: skip
        port = int((await server.expect(r"ACCEPT 127\.0\.0\.1:(\d+)")).group(1))
        relays: list[Relay] = []
        relay_server = None
        if depth == 1:
            _, onion = await loop.create_connection(onion_tls.wrap(App), "127.0.0.1", port)
        else:

            def make_relay() -> Relay:
                relays.append(Relay(onion_ca, port))
                return relays[-1]

            relay_server = await loop.create_server(onion_tls.wrap(make_relay), "127.0.0.1", 0)
            rport = relay_server.sockets[0].getsockname()[1]
            _, onion = await loop.create_connection(onion_tls.wrap(App), "127.0.0.1", rport)
            await onion.transport.start_tls(
                onion_ca.client_context("stdlib"), server_hostname=onion_ca.hostname(1)
            )
        app: App = onion.transport.get_protocol()  # type: ignore[assignment]
        layer = await app.transport.start_tls(
            onion_ca.client_context(engine),
            server_hostname=onion_ca.hostname(depth),  # type: ignore[arg-type]
        )
        assert layer.version == "TLSv1.3" and layer.depth == depth

        server.type(b"one\n")
        await settle_until(lambda: app.data == b"one\n", "one")
        server.type(b"K\n")  # KeyUpdate, and ask us to update ours
        await server.expect(re.escape(KEYUPDATE_SENT))
        server.type(b"two\n")
        await settle_until(lambda: app.data == b"one\ntwo\n", "two (under the new keys)")
        app.transport.write(b"from onion after K\n")
        await server.expect("from onion after K")
        # We answered with our own KeyUpdate, before that data.
        received = server.out.index(KEYUPDATE_RECEIVED)
        assert received < server.out.index("from onion after K")
        server.type(b"k\n")  # KeyUpdate, no answer asked
        await server.expect_count(KEYUPDATE_SENT, 2)
        server.type(b"three\n")
        await settle_until(lambda: app.data == b"one\ntwo\nthree\n", "three")
        app.transport.write(b"still here\n")
        await server.expect("still here")
        assert server.out.count(KEYUPDATE_SENT) == 2
        assert server.out.count(KEYUPDATE_RECEIVED) == 1
        assert app.transport.layers[-1].state == "open"
        app.transport.close()
        await settle_until(lambda: bool(app.lost), "connection_lost")
        assert app.lost == [None]
        if relay_server is not None:
            relay_server.close()
            await relay_server.wait_closed()
            await asyncio.gather(*(r.task for r in relays if r.task is not None))


@pytest.mark.parametrize("engine", ENGINES)
async def test_key_update_from_openssl_s_client(
    onion_ca: OnionCA, engine: str, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    _, _, trust = pems(onion_ca, 1, tmp_path)
    apps: list[App] = []
    layers: list[asyncio.Future[onion_tls.TLSLayer]] = []

    def make() -> App:
        def push(app: App) -> None:
            ctx = onion_ca.server_context(1, engine)  # type: ignore[arg-type]
            layers.append(app.transport.start_tls(ctx, server_side=True))

        apps.append(App(push))
        return apps[-1]

    srv = await loop.create_server(onion_tls.wrap(make), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with openssl(
        "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", trust,
        "-servername", onion_ca.hostname(1), "-verify_return_error", "-tls1_3", "-msg",
    ) as client:  # fmt: skip
        await settle_until(lambda: bool(layers), "the connection")
        layer = await layers[0]
        assert layer.version == "TLSv1.3"
        app = apps[0]
        await client.expect("Verify return code: 0")
        client.type(b"one\n")
        await settle_until(lambda: app.data == b"one\n", "one")
        client.type(b"K\n")
        await client.expect(re.escape(KEYUPDATE_SENT))
        client.type(b"two\n")
        await settle_until(lambda: app.data == b"one\ntwo\n", "two (under the new keys)")
        app.transport.write(b"from onion after K\n")
        await client.expect("from onion after K")
        assert client.out.index(KEYUPDATE_RECEIVED) < client.out.index("from onion after K")
        client.type(b"k\n")
        await client.expect_count(KEYUPDATE_SENT, 2)
        client.type(b"three\n")
        await settle_until(lambda: app.data == b"one\ntwo\nthree\n", "three")
        assert app.transport.layers[-1].state == "open"
        app.transport.close()
        await settle_until(lambda: bool(app.lost), "connection_lost")
        assert app.lost == [None]
    srv.close()
    await srv.wait_closed()
