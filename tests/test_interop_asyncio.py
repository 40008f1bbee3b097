"""Interoperability with asyncio's own TLS, over loopback sockets.

asyncio's side nests its layers with ``ssl=`` on the listening/connecting
call (depth 1) and ``StreamWriter.start_tls`` (``loop.start_tls`` over its
own TLS transport, Python 3.11+) for the next ones; onion_tls is on the
other end, with either engine or both mixed.  The two sides step down a
layer with a tiny line protocol: the TLS client sends ``STARTTLS``, the
server answers ``GO`` and starts its layer at once, the client starts its
own on reading ``GO``.  Each layer has its own ALPN protocol and SNI name,
checked on both sides.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import pytest

import onion_tls
from onion_tls.testing import OnionCA

from .helpers import Recorder

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="asyncio nests start_tls over TLS from Python 3.11"
)

ONION_ENGINES = {
    "pyopenssl": {1: "pyopenssl", 2: "pyopenssl", 3: "pyopenssl"},
    "stdlib": {1: "stdlib", 2: "stdlib", 3: "stdlib"},
    "mixed": {1: "stdlib", 2: "pyopenssl", 3: "stdlib"},
}
PAYLOAD = bytes(range(256)) * 300


def _alpn(depth: int) -> str:
    return f"onion-{depth}"


class LineEnd(Recorder):
    """The onion_tls application: reads lines."""

    async def readline(self) -> bytes:
        while b"\n" not in self.data:
            if self.lost:
                raise AssertionError(f"lost ({self.lost}) with {bytes(self.data)!r}")
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 10)
        line, _, rest = bytes(self.data).partition(b"\n")
        self.data[:] = rest
        return line + b"\n"


class OnionServerEnd(LineEnd):
    """onion_tls as the TLS server of every layer: depth 1 starts at once;
    each ``STARTTLS`` line is answered with ``GO`` and the next layer."""

    ca: OnionCA
    engines: dict[int, str]
    instances: list[OnionServerEnd]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.instances.append(self)
        self.started = [self._start(1)]
        self.task = asyncio.ensure_future(self._serve())

    def _start(self, depth: int) -> asyncio.Future[onion_tls.TLSLayer]:
        ctx = self.ca.server_context(depth, self.engines[depth], alpn=[_alpn(depth)])  # type: ignore[arg-type]
        return self.transport.start_tls(ctx, server_side=True)

    async def _serve(self) -> None:
        await self.started[0]
        while True:
            line = await self.readline()
            if line == b"STARTTLS\n":
                self.transport.write(b"GO\n")
                self.started.append(self._start(len(self.transport.layers) + 1))
                await self.started[-1]
            elif line == b"INFO\n":
                layer = self.transport.layers[-1]
                self.transport.write(
                    f"{layer.depth} {layer.alpn_protocol} {layer.server_hostname} "
                    f"{layer.version}\n".encode()
                )
            elif line.startswith(b"ECHO "):
                size = int(line[5:])
                self.transport.write(await self.read_exactly(size))
            elif line == b"BYE\n":
                self.transport.close()
                return


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        # asyncio answers a close_notify it read with its own, but onion_tls
        # (like asyncio itself) closes the socket right after sending its
        # close_notify: asyncio's answer may find the socket gone, and
        # wait_closed() reports that.  The close was clean on the wire.
        pass


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("onion_engines", sorted(ONION_ENGINES))
async def test_asyncio_client_onion_server(
    onion_ca: OnionCA, onion_engines: str, depth: int
) -> None:
    loop = asyncio.get_running_loop()
    ends: list[OnionServerEnd] = []

    class Server(OnionServerEnd):
        ca = onion_ca
        engines = ONION_ENGINES[onion_engines]
        instances = ends

    server = await loop.create_server(onion_tls.wrap(Server), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]

        def client_ctx(d: int) -> ssl.SSLContext:
            ctx: ssl.SSLContext = onion_ca.client_context("stdlib", alpn=["other", _alpn(d)])
            return ctx

        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx(1), server_hostname=onion_ca.hostname(1)
        )
        for d in range(2, depth + 1):
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            await writer.start_tls(client_ctx(d), server_hostname=onion_ca.hostname(d))
        sslobj = writer.get_extra_info("ssl_object")
        assert sslobj.selected_alpn_protocol() == _alpn(depth)
        writer.write(b"INFO\n")
        info = (await reader.readline()).decode().split()
        assert info == [str(depth), _alpn(depth), onion_ca.hostname(depth), sslobj.version()]
        writer.write(b"ECHO %d\n" % len(PAYLOAD) + PAYLOAD)
        assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD

        (end,) = ends
        views = end.transport.layers
        assert len(views) == depth
        assert [v.engine for v in views] == [ONION_ENGINES[onion_engines][v.depth] for v in views]
        for view in views:
            assert view.alpn_protocol == _alpn(view.depth)
            assert view.server_hostname == onion_ca.hostname(view.depth)
        # asyncio and onion_tls describe the innermost session the same way
        assert end.transport.get_extra_info("cipher") == writer.get_extra_info("cipher")
        assert writer.get_extra_info("peercert")["subjectAltName"] == (
            ("DNS", onion_ca.hostname(depth)),
        )

        writer.write(b"BYE\n")
        # onion_tls closes every layer with close_notify, then the socket
        assert await reader.read() == b""
        writer.close()
        await _closed(writer)
        await end.task
        assert await end.wait_lost() is None


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("onion_engines", sorted(ONION_ENGINES))
async def test_onion_client_asyncio_server(
    onion_ca: OnionCA, onion_engines: str, depth: int
) -> None:
    engines = ONION_ENGINES[onion_engines]
    seen_sni: list[str | None] = []
    done = asyncio.get_running_loop().create_future()

    def server_ctx(d: int) -> ssl.SSLContext:
        ctx: ssl.SSLContext = onion_ca.server_context(d, "stdlib", alpn=[_alpn(d)])
        ctx.sni_callback = lambda obj, name, c: seen_sni.append(name)  # type: ignore[func-returns-value]
        return ctx

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if line == b"STARTTLS\n":
                    writer.write(b"GO\n")
                    await writer.start_tls(server_ctx(len(seen_sni) + 1))
                elif line.startswith(b"ECHO "):
                    size = int(line[5:])
                    writer.write(await reader.readexactly(size))
                elif line == b"INFO\n":
                    obj = writer.get_extra_info("ssl_object")
                    cipher = writer.get_extra_info("cipher")
                    writer.write(f"{obj.selected_alpn_protocol()} {cipher[0]}\n".encode())
                elif line == b"":
                    break  # EOF: the client's close_notify of the innermost layer
            writer.close()
            await _closed(writer)
            done.set_result(None)
        except BaseException as exc:
            done.set_exception(exc)
            raise

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx(1))
    async with server:
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        _, onion = await loop.create_connection(onion_tls.wrap(LineEnd), "127.0.0.1", port)
        end: LineEnd = onion.transport.get_protocol()  # type: ignore[assignment]

        def start(d: int) -> asyncio.Future[onion_tls.TLSLayer]:
            ctx = onion_ca.client_context(engines[d], alpn=[_alpn(d), "other"])  # type: ignore[arg-type]
            return end.transport.start_tls(ctx, server_hostname=onion_ca.hostname(d))

        await start(1)
        for d in range(2, depth + 1):
            end.transport.write(b"STARTTLS\n")
            assert await end.readline() == b"GO\n"
            await start(d)
        assert seen_sni == [onion_ca.hostname(d) for d in range(1, depth + 1)]
        for view in end.transport.layers:
            assert view.engine == engines[view.depth]
            assert view.alpn_protocol == _alpn(view.depth)
            assert view.server_hostname == onion_ca.hostname(view.depth)
            assert view.version == "TLSv1.3"
        end.transport.write(b"INFO\n")
        cipher = end.transport.get_extra_info("cipher")[0]
        assert (await end.readline()).decode().split() == [_alpn(depth), cipher]
        end.transport.write(b"ECHO %d\n" % len(PAYLOAD) + PAYLOAD)
        assert await end.read_exactly(len(PAYLOAD)) == PAYLOAD

        end.transport.close()
        await done
        assert await end.wait_lost() is None
