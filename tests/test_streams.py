"""onion_tls streams: open_connection / start_server / StreamWriter, over
loopback sockets and in memory, both engines."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import onion_tls
from onion_tls import HandshakeError, LayerStateError, StreamWriter, TruncatedError
from onion_tls.testing import ENGINES, Engine, OnionCA, dribble, stream_pair

Handler = Callable[[asyncio.StreamReader, StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler, **kw: Any) -> AsyncIterator[int]:
    """A loopback onion_tls server; yields its port; waits for handlers."""
    done: list[tuple[asyncio.Task[None], StreamWriter]] = []

    async def wrapped(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        done.append((task, writer))
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await onion_tls.start_server(wrapped, "127.0.0.1", 0, **kw)
    ok = False
    try:
        yield server.sockets[0].getsockname()[1]
        ok = True
    finally:
        server.close()
        await server.wait_closed()
        for task, writer in done:
            if not ok:  # the test failed: don't wait for the client
                writer.transport.abort()
            await asyncio.gather(task, return_exceptions=not ok)


# -- open_connection / start_server -------------------------------------------


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_ssl_gives_depth_one_then_nest_and_unwrap_over_loopback(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        assert [layer.depth for layer in writer.layers] == [1]
        while line := await reader.readline():
            if line == b"UP\n":
                writer.write(b"OK\n")
                await writer.start_tls(onion_ca.server_context(2, server_engine))
            elif line == b"DOWN\n":
                writer.write(b"OK\n")
                await writer.stop_tls()
            elif line.startswith(b"BLOB "):
                writer.write(await reader.readexactly(int(line[5:])))
                await writer.drain()
            else:
                writer.write(b"%d:%s" % (len(writer.layers), line))

    async with serving(handler, ssl=onion_ca.server_context(1, server_engine)) as port:
        reader, writer = await onion_tls.open_connection(
            "127.0.0.1",
            port,
            ssl=onion_ca.client_context(client_engine),
            server_hostname=onion_ca.hostname(1),
        )
        transport = writer.transport
        (layer1,) = writer.layers
        assert (layer1.depth, layer1.server_side, layer1.engine) == (1, False, client_engine)
        assert layer1.server_hostname == "layer1.onion.test"
        writer.write(b"a\n")
        assert await reader.readline() == b"1:a\n"

        writer.write(b"UP\n")
        assert await reader.readline() == b"OK\n"
        layer2 = await writer.start_tls(
            onion_ca.client_context(client_engine), server_hostname=onion_ca.hostname(2)
        )
        assert layer2.depth == 2 and writer.layers == (layer1, layer2)
        writer.write(b"b\n")
        assert await reader.readline() == b"2:b\n"
        assert writer.get_extra_info("ssl_object") is layer2.ssl_object
        assert writer.get_extra_info("peername")[0] == "127.0.0.1"

        # Big enough to need flow control through both layers.
        blob = bytes(range(256)) * 2048
        writer.write(b"DOWN\n")
        assert await reader.readline() == b"OK\n"
        popped = await writer.stop_tls()
        assert popped is layer2 and writer.layers == (layer1,)
        writer.write(b"BLOB %d\n" % len(blob))
        writer.write(blob)
        await writer.drain()
        assert await reader.readexactly(len(blob)) == blob
        assert writer.transport is transport  # one transport for the whole life
        writer.close()
        await writer.wait_closed()


async def test_server_hostname_defaults_to_host(onion_ca: OnionCA) -> None:
    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        await reader.read()

    async with serving(handler, ssl=onion_ca.server_context(1, "stdlib")) as port:
        with pytest.raises(HandshakeError) as info:
            # The certificate is for layer1.onion.test, not 127.0.0.1.
            await onion_tls.open_connection(
                "127.0.0.1", port, ssl=onion_ca.client_context("pyopenssl")
            )
    assert info.value.depth == 1
    assert "127.0.0.1" in str(info.value)


async def test_failed_server_handshake_never_calls_the_callback(
    onion_ca: OnionCA, caplog: pytest.LogCaptureFixture
) -> None:
    called = []

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        called.append(writer)

    caplog.set_level(logging.INFO, logger="onion_tls")
    async with serving(handler, ssl=onion_ca.server_context(1, "pyopenssl")) as port:
        untrusting = OnionCA().client_context("stdlib")  # another CA
        with pytest.raises(HandshakeError):
            await onion_tls.open_connection(
                "127.0.0.1", port, ssl=untrusting, server_hostname=onion_ca.hostname(1)
            )
        for _ in range(200):
            if "handshake failed" in caplog.text:
                break
            await asyncio.sleep(0.005)
    assert called == []
    assert "handshake failed, connection dropped" in caplog.text


async def test_callback_exception_goes_to_the_exception_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:

        async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
            raise ValueError("boom")

        server = await onion_tls.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await onion_tls.open_connection("127.0.0.1", port)
        assert await reader.read() == b""  # the server aborted the connection
        writer.close()
        server.close()
        await server.wait_closed()
        for _ in range(10):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert [ctx["message"] for ctx in seen] == ["Unhandled exception in client_connected_cb"]
    assert isinstance(seen[0]["exception"], ValueError)


# -- layers over streams, in memory --------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("chunk", [None, 1], ids=["whole", "dribble1"])
async def test_three_layers_up_and_down_same_reader(
    onion_ca: OnionCA, engine: Engine, chunk: int | None
) -> None:
    pair = await stream_pair(chunker=dribble(chunk) if chunk else None)
    (cr, cw), (sr, sw) = pair.client, pair.server
    for depth in (1, 2, 3):
        lc, ls = await pair.start_tls(onion_ca, engine=engine, swap_roles=depth == 2)
        assert lc.depth == ls.depth == depth
        assert lc.server_side is (depth == 2)
        cw.write(b"c%d\n" % depth)
        sw.write(b"s%d\n" % depth)
        assert await sr.readline() == b"c%d\n" % depth
        assert await cr.readline() == b"s%d\n" % depth
    for depth in (3, 2, 1):
        cw.write(b"last words at %d\n" % depth)
        lc, ls = await pair.stop_tls()
        assert lc.depth == depth
        assert await sr.readline() == b"last words at %d\n" % depth
        cw.write(b"now at %d\n" % (depth - 1))
        assert await sr.readline() == b"now at %d\n" % (depth - 1)
    assert cw.layers == sw.layers == ()
    await pair.aclose()


@pytest.mark.parametrize("engine", ENGINES)
async def test_peer_close_notify_is_a_layer_eof_and_the_reader_goes_on(
    onion_ca: OnionCA, engine: Engine
) -> None:
    # coalesce: the server's last inner data, its close_notify and the
    # plaintext behind it reach the client in one read.
    pair = await stream_pair(auto=False, coalesce=True)
    (cr, cw), (_sr, sw) = pair.client, pair.server
    pair.pipe.auto = True
    await pair.start_tls(onion_ca, engine=engine)
    pair.pipe.auto = False

    sw.write(b"inside, then bye")
    stop = sw.stop_tls()  # the server speaks first
    sw.write(b"plaintext right behind")  # held until the pop, then plain
    pair.pipe.pump()
    assert await cr.read() == b"inside, then bye"  # read() to EOF: the layer's data
    assert cr.at_eof()
    assert cw.layers[0].state == "peer closed"
    assert await cr.read(10) == b""

    popped = await asyncio.wait_for(_pumped(pair, cw.stop_tls()), 5)
    assert popped.depth == 1 and cw.layers == ()
    assert not cr.at_eof()
    pair.pipe.auto = True
    pair.pipe.kick()
    assert (await stop).depth == 1
    assert await cr.readexactly(22) == b"plaintext right behind"
    sw.write(b"more\n")
    assert await cr.readline() == b"more\n"
    sw.write_eof()
    assert await cr.read() == b""  # a plaintext EOF is final
    await pair.aclose()


async def _pumped(pair: Any, fut: Awaitable[Any]) -> Any:
    task = asyncio.ensure_future(fut)
    while not task.done():
        pair.pipe.pump()
        await asyncio.sleep(0)
    return task.result()


async def test_both_layers_closed_by_peer_then_unwrapped_one_by_one(onion_ca: OnionCA) -> None:
    # The peer only shuts its writing side, so our close_notify answers reach it.
    pair = await stream_pair(half_close=True)
    (cr, cw), (_sr, sw) = pair.client, pair.server
    await pair.start_tls(onion_ca)
    await pair.start_tls(onion_ca)
    sw.write(b"x")
    sw.close()  # close_notify on layer 2, then layer 1, then EOF
    assert await cr.read() == b"x"
    assert [layer.state for layer in cw.layers] == ["peer closed", "peer closed"]
    await cw.stop_tls()
    # Layer 1's close_notify came while layer 2 was open above it: now that
    # layer 1 is the innermost, its EOF is the reader's.
    assert await asyncio.wait_for(cr.read(), 5) == b""
    await cw.stop_tls()
    assert await asyncio.wait_for(cr.read(), 5) == b""
    await pair.aclose()


# -- initial bytes, explicitly ------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_pipelined_client_hello_is_given_with_take_buffered(
    onion_ca: OnionCA, engine: Engine
) -> None:
    pair = await stream_pair(coalesce=True)
    (_cr, cw), (sr, sw) = pair.client, pair.server
    cw.write(b"STARTTLS\n")
    fc = cw.start_tls(onion_ca.client_context(engine), server_hostname=onion_ca.hostname(1))
    assert await sr.readline() == b"STARTTLS\n"
    early = sw.take_buffered()
    assert early[:1] == b"\x16"  # the ClientHello came in the same read
    ls = await sw.start_tls(onion_ca.server_context(1, engine), initial_bytes=early)
    assert ls.server_side and (await fc).version == ls.version
    await pair.aclose()


async def test_start_tls_refuses_while_the_reader_holds_bytes(onion_ca: OnionCA) -> None:
    pair = await stream_pair(coalesce=True)
    (_cr, cw), (sr, sw) = pair.client, pair.server
    # An attacker appends a command behind STARTTLS (CVE-2011-0411 class).
    cw.write(b"STARTTLS\nRCPT TO:<victim>\n")
    assert await sr.readline() == b"STARTTLS\n"
    with pytest.raises(LayerStateError, match=r"holds 17 unread byte\(s\)"):
        sw.start_tls(onion_ca.server_context(1))
    assert sw.layers == ()  # nothing was pushed
    assert sw.take_buffered() == b"RCPT TO:<victim>\n"  # dropped by the app
    fs = sw.start_tls(onion_ca.server_context(1))
    await cw.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
    await fs
    cw.write(b"MAIL FROM:<me>\n")
    assert await sr.readline() == b"MAIL FROM:<me>\n"  # only protected commands
    await pair.aclose()


async def test_take_buffered_resumes_a_paused_reader() -> None:
    pair = await stream_pair(limit=16)
    (_cr, cw), (_sr, sw) = pair.client, pair.server
    cw.write(b"x" * 100)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sw.transport.is_reading()  # > 2 * limit buffered
    assert sw.take_buffered() == b"x" * 100
    assert sw.transport.is_reading()
    await pair.aclose()


# -- flow control, closing, errors --------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
async def test_drain_waits_for_flow_control(onion_ca: OnionCA, depth: int) -> None:
    pair = await stream_pair()
    (_cr, cw), (sr, _sw) = pair.client, pair.server
    for _ in range(depth):
        await pair.start_tls(onion_ca)
    pair.pipe.auto = False
    cw.transport.set_write_buffer_limits(high=4096)
    cw.write(b"z" * 100_000)
    drains = [asyncio.ensure_future(cw.drain()) for _ in range(2)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert not any(d.done() for d in drains)  # nothing moves: still paused
    pair.pipe.auto = True
    pair.pipe.kick()
    got = await sr.readexactly(100_000)
    await asyncio.gather(*drains)
    assert got == b"z" * 100_000
    await pair.aclose()


async def test_truncation_reaches_reader_drain_and_wait_closed(onion_ca: OnionCA) -> None:
    pair = await stream_pair()
    (cr, cw), (_sr, sw) = pair.client, pair.server
    await pair.start_tls(onion_ca)
    pair.pipe.b.write_eof()  # the server's socket sends FIN, no close_notify
    with pytest.raises(TruncatedError):
        await cr.read()
    with pytest.raises(TruncatedError):
        await cw.drain()
    with pytest.raises(TruncatedError):
        await cw.wait_closed()
    sw.transport.abort()
    await pair.aclose()


async def test_write_eof_only_in_plaintext(onion_ca: OnionCA) -> None:
    pair = await stream_pair()
    (_cr, cw), (sr, _sw) = pair.client, pair.server
    assert cw.can_write_eof()
    await pair.start_tls(onion_ca)
    assert not cw.can_write_eof()
    with pytest.raises(LayerStateError):
        cw.write_eof()
    await pair.stop_tls()
    cw.write(b"end")
    cw.write_eof()
    assert await sr.read() == b"end"
    await pair.aclose()


async def test_unclosed_writer_warns() -> None:
    pair = await stream_pair()
    writer_ref = pair.client.writer
    del pair
    with pytest.warns(ResourceWarning, match="unclosed <onion_tls.StreamWriter"):
        del writer_ref
        gc.collect()
    for _ in range(10):
        await asyncio.sleep(0)


def test_streamreader_internals_still_there() -> None:
    # streams.py reaches into these three; a Python that renames them must
    # fail here, not in a user's upgrade.
    loop = asyncio.new_event_loop()
    try:
        reader = asyncio.StreamReader(loop=loop)
        assert isinstance(reader._buffer, bytearray)  # type: ignore[attr-defined]
        assert reader._eof is False  # type: ignore[attr-defined]
        assert callable(reader._maybe_resume_transport)  # type: ignore[attr-defined]
    finally:
        loop.close()


async def test_unwrap_while_the_reader_is_full_keeps_every_byte(onion_ca: OnionCA) -> None:
    # The reader pauses the transport (its buffer is over 2 * limit) with
    # the layer's close_notify not yet handed over; the application unwraps
    # without reading first.  Nothing is lost and no stale EOF appears.
    pair = await stream_pair(limit=1024, coalesce=True)
    (cr, cw), (_sr, sw) = pair.client, pair.server
    await pair.start_tls(onion_ca, engine="stdlib")
    inside = bytes(range(256)) * 64
    sw.write(inside)
    stop = sw.stop_tls()
    sw.write(b"after the unwrap")
    for _ in range(50):
        await asyncio.sleep(0)
    assert not cw.transport.is_reading()
    await asyncio.gather(cw.stop_tls(), stop)
    assert await cr.readexactly(len(inside)) == inside
    assert await cr.readexactly(16) == b"after the unwrap"
    sw.write(b"!")
    assert await cr.readexactly(1) == b"!"
    await pair.aclose()


async def test_open_connection_ssl_true_uses_the_default_context(onion_ca: OnionCA) -> None:
    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        await reader.read()

    async with serving(handler, ssl=onion_ca.server_context(1)) as port:
        with pytest.raises(HandshakeError, match=r"certificate verify failed|unknown ca|issuer"):
            await onion_tls.open_connection("127.0.0.1", port, ssl=True, server_hostname="x")


async def test_take_buffered_takes_what_waited_behind_a_full_reader(onion_ca: OnionCA) -> None:
    # Three records in one read: the first fills the reader (limit 16, so
    # it pauses above 32 bytes), the other two wait inside the onion.
    pair = await stream_pair(limit=16, coalesce=True)
    (_cr, cw), (_sr, sw) = pair.client, pair.server
    await pair.start_tls(onion_ca)
    for part in (b"a" * 40, b"b" * 40, b"STARTTLS\n"):
        cw.write(part)
    fc = cw.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(2))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not sw.transport.is_reading()
    early = sw.take_buffered()
    assert early.startswith(b"a" * 40 + b"b" * 40 + b"STARTTLS\n")
    ls = await sw.start_tls(onion_ca.server_context(2), initial_bytes=early[89:])
    assert ls.depth == (await fc).depth == 2
    await pair.aclose()


async def test_a_drain_waiting_when_the_connection_fails_raises_the_error(
    onion_ca: OnionCA,
) -> None:
    pair = await stream_pair()
    (_cr, cw), (_sr, sw) = pair.client, pair.server
    await pair.start_tls(onion_ca)
    pair.pipe.auto = False
    cw.transport.set_write_buffer_limits(high=1024)
    cw.write(b"q" * 10_000)
    drain = asyncio.ensure_future(cw.drain())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not drain.done()
    pair.pipe.b.outgoing.clear()
    pair.pipe.b.write_eof()  # the server's socket: FIN without close_notify
    pair.pipe.a.drop_outgoing()
    pair.pipe.pump()
    with pytest.raises(TruncatedError):
        await drain
    sw.transport.abort()
    await pair.aclose()
