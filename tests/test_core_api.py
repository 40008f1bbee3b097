"""The transport API: get_extra_info keys, the layers tuple and its views,
LayerStateError on misuse, abort() sends nothing more, close() is orderly
(close_notify on every layer, innermost out), one transport object for the
whole connection, set_protocol, BufferedProtocol applications."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from OpenSSL import SSL

from onion_tls import (
    HandshakeError,
    LayerStateError,
    OnionError,
    OnionProtocol,
    OnionTransport,
    TLSLayer,
    TruncatedError,
)
from onion_tls.testing import Engine, OnionCA

from .helpers import (
    ENGINE_PAIR_IDS,
    ENGINE_PAIRS,
    KINDS,
    WAIT,
    Recorder,
    connect,
    san,
    settle,
    start_layer,
)


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_get_extra_info_answers_from_the_innermost_layer(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    async with connect(kind) as pair:  # type: ignore[arg-type]
        transport = pair.client
        # plaintext: the layer keys are absent, the rest passes through
        assert transport.get_extra_info("layers") == ()
        for key in ("ssl_object", "peercert", "cipher", "sslcontext", "ssl_version"):
            assert transport.get_extra_info(key) is None
            assert transport.get_extra_info(key, "dflt") == "dflt"
        peername = transport.get_extra_info("peername")
        sockname = transport.get_extra_info("sockname")
        if kind == "loopback":
            assert peername[0] == "127.0.0.1" and sockname[0] == "127.0.0.1"
            assert transport.get_extra_info("socket") is not None
        else:
            assert peername == ("memory", "b")
        assert transport.get_extra_info("no such key", 42) == 42

        contexts: list[Any] = []
        for depth, version in ((1, "TLSv1.2"), (2, "TLSv1.3"), (3, "TLSv1.2")):
            cctx = onion_ca.client_context(client_engine, version=version)
            sctx = onion_ca.server_context(depth, server_engine, version=version)
            contexts.append(cctx)
            fs = pair.server.start_tls(sctx, server_side=True)
            fc = transport.start_tls(cctx, server_hostname=onion_ca.hostname(depth))
            lc, _ = await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
            obj = transport.get_extra_info("ssl_object")
            if client_engine == "stdlib":
                assert isinstance(obj, ssl.SSLObject)
                assert transport.get_extra_info("cipher") == obj.cipher()
                assert transport.get_extra_info("peercert") == obj.getpeercert()
            else:
                assert isinstance(obj, SSL.Connection)
            assert obj is lc.ssl_object
            assert transport.get_extra_info("sslcontext") is cctx
            assert pair.server.get_extra_info("sslcontext") is sctx
            assert transport.get_extra_info("ssl_version") == version
            cipher = transport.get_extra_info("cipher")
            assert isinstance(cipher, tuple) and len(cipher) == 3
            name, proto, bits = cipher
            assert isinstance(name, str) and name == lc.cipher
            assert proto in (version, "TLSv1/SSLv3")
            assert isinstance(bits, int) and bits >= 128
            assert cipher[0] == pair.server.get_extra_info("cipher")[0]
            peercert = transport.get_extra_info("peercert")
            assert isinstance(peercert, dict)
            assert peercert["subjectAltName"] == (("DNS", onion_ca.hostname(depth)),)
            assert "notAfter" in peercert and "issuer" in peercert
            assert pair.server.get_extra_info("peercert") is None  # no client cert
            layers = transport.get_extra_info("layers")
            assert layers == transport.layers
            assert [x.depth for x in layers] == list(range(1, depth + 1))
            assert transport.get_extra_info("peername") == peername
        # the outer layers are still reachable through the views
        views = transport.layers
        assert [v.version for v in views] == ["TLSv1.2", "TLSv1.3", "TLSv1.2"]
        assert [san(v.peer_certificate) for v in views] == [
            [onion_ca.hostname(d)] for d in (1, 2, 3)
        ]
        assert all(v.engine == client_engine and not v.server_side for v in views)
        assert all(v.engine == server_engine and v.server_side for v in pair.server.layers)


async def test_layers_views_stay_readable_after_the_pop(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        lc, _ = await start_layer(pair, onion_ca, 1, client_engine="stdlib")
        assert isinstance(lc, TLSLayer)
        assert [v.depth for v in pair.client.layers] == [1]
        assert lc.state == "open"
        assert "depth=1" in repr(lc)
        popped, _ = await asyncio.wait_for(pair.stop_tls(), WAIT)
        assert popped.depth == 1
        assert pair.client.layers == ()
        assert popped.state == "closed"
        assert popped.version == "TLSv1.3"
        assert san(popped.peer_certificate) == [onion_ca.hostname(1)]


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
async def test_alpn_and_sni_per_depth(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    async with connect("memory") as pair:
        for depth, proto in ((1, "h2"), (2, "onion/2"), (3, "http/1.1")):
            sctx = onion_ca.server_context(depth, server_engine, alpn=["x", proto])
            cctx = onion_ca.client_context(client_engine, alpn=[proto, "y"])
            fs = pair.server.start_tls(sctx, server_side=True)
            fc = pair.client.start_tls(cctx, server_hostname=onion_ca.hostname(depth))
            lc, ls = await asyncio.wait_for(asyncio.gather(fc, fs), WAIT)
            assert lc.alpn_protocol == ls.alpn_protocol == proto
            assert lc.server_hostname == onion_ca.hostname(depth)
        assert [v.alpn_protocol for v in pair.client.layers] == ["h2", "onion/2", "http/1.1"]


async def test_one_transport_object_for_the_whole_connection(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        transport = pair.c.transport
        assert transport is pair.client
        assert isinstance(transport, OnionTransport)
        assert "depth=0" in repr(transport)
        await start_layer(pair, onion_ca, 1)
        await start_layer(pair, onion_ca, 2, swap_roles=True)
        assert pair.c.transport is transport and pair.client is transport
        assert "depth=2" in repr(transport)
        await asyncio.wait_for(pair.stop_tls(), WAIT)
        assert pair.c.transport is transport


# -- misuse ----------------------------------------------------------------------


async def test_layer_state_errors_on_misuse(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        t = pair.client
        with pytest.raises(LayerStateError, match="no TLS layer to stop") as info:
            t.stop_tls()
        assert info.value.depth is None
        assert "onion connection" in str(info.value)
        assert t.can_write_eof()
        with pytest.raises(ValueError, match="server_hostname"):
            t.start_tls(onion_ca.server_context(1), server_side=True, server_hostname="x")
        with pytest.raises(TypeError, match="context must be"):
            t.start_tls(object())
        assert t.layers == ()
        # the connection is unaffected by refused calls
        t.write(b"still fine")
        await pair.s.expect(b"still fine")

        await start_layer(pair, onion_ca, 1)
        assert not t.can_write_eof()
        with pytest.raises(LayerStateError, match="no half-close"):
            t.write_eof()
        # start_tls while a stop is pending
        pair.s.eof_result = True
        stop = t.stop_tls()
        again = t.stop_tls()  # a new future for the same pop (rule 13)
        assert again is not stop
        with pytest.raises(LayerStateError, match="stop_tls\\(\\) is in progress") as info:
            t.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(2))
        assert info.value.depth == 1
        assert "TLS layer 1" in str(info.value)
        # the server's layer is "peer closed": nothing can start inside it
        await pair.s.wait_eof()
        with pytest.raises(LayerStateError, match="inside a layer that is peer closed"):
            pair.server.start_tls(onion_ca.server_context(2), server_side=True)
        pair.server.stop_tls()
        assert await asyncio.wait_for(stop, WAIT) is await asyncio.wait_for(again, WAIT)
        # after close(): every layer call is refused, writes are dropped
        t.close()
        assert t.is_closing()
        with pytest.raises(LayerStateError, match=r"closing|closed"):
            t.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
        with pytest.raises(LayerStateError, match=r"closing|closed"):
            t.stop_tls()
        t.write(b"dropped")
        assert await pair.c.wait_lost() is None
        with pytest.raises(LayerStateError):
            t.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))


async def test_start_tls_before_connection_made_is_refused(onion_ca: OnionCA) -> None:
    onion = OnionProtocol(Recorder())
    with pytest.raises(LayerStateError, match="not connected"):
        onion.transport.start_tls(onion_ca.client_context())
    with pytest.raises(LayerStateError, match="not connected"):
        onion.transport.stop_tls()


async def test_write_type_errors(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        with pytest.raises(TypeError):
            pair.client.write("text")  # type: ignore[arg-type]
        pair.client.write(b"")
        pair.client.write(bytearray(b"ba"))
        pair.client.write(memoryview(b"mv"))
        pair.client.writelines([b"1", bytearray(b"2"), memoryview(b"3")])
        await pair.s.expect(b"bamv123")


# -- abort and close ---------------------------------------------------------------


@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_abort_sends_nothing_more(onion_ca: OnionCA, engine: Engine) -> None:
    async with connect("memory") as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        assert pair.pipe is not None
        pair.pipe.auto = False
        fc = pair.client.start_tls(
            onion_ca.client_context(engine), server_hostname=onion_ca.hostname(3)
        )
        pair.client.write(b"written just before abort")
        before = bytes(pair.pipe.sent["a"])
        pair.client.abort()
        assert pair.client.is_closing()
        pair.pipe.auto = True
        pair.pipe.kick()
        with pytest.raises(HandshakeError, match="aborted") as info:
            await asyncio.wait_for(fc, WAIT)
        assert info.value.depth == 3
        assert await pair.c.wait_lost() is None
        lost = await pair.s.wait_lost()
        # A reset under a layer: an OnionError naming the depth (rule 14).
        assert isinstance(lost, TruncatedError) and lost.depth == 2, lost
        assert isinstance(lost.__cause__, ConnectionResetError)
        assert bytes(pair.pipe.sent["a"]) == before  # not even close_notify
        assert bytes(pair.s.data) == b""
        assert pair.s.eofs == 0
        await settle()
        assert len(pair.c.lost) == 1 and len(pair.s.lost) == 1


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS, ids=ENGINE_PAIR_IDS)
@pytest.mark.parametrize("kind", KINDS)
async def test_close_is_orderly_innermost_out(
    onion_ca: OnionCA, kind: str, client_engine: Engine, server_engine: Engine
) -> None:
    """close() sends close_notify on layer 3, then 2, then 1, then closes
    the socket.  Had layer 1 been closed first, the server would have seen a
    truncation of layers 2 and 3; it sees one clean EOF instead."""
    async with connect(kind) as pair:  # type: ignore[arg-type]
        for d in (1, 2, 3):
            await start_layer(
                pair,
                onion_ca,
                d,
                client_engine=client_engine,
                server_engine=server_engine,
                swap_roles=d == 2,
            )
        pair.s.eof_result = True
        pair.client.write(b"last words")
        pair.client.close()
        pair.client.write(b"after close: dropped")
        assert await pair.c.wait_lost() is None
        await pair.s.wait_eof()
        await pair.s.expect(b"last words")
        await settle(50)
        assert pair.s.eofs == 1
        assert pair.s.transcript()[-1] == ("eof", 3)
        assert [v.state for v in pair.server.layers] == ["peer closed"] * 3
        assert not pair.s.lost
        pair.server.close()
        assert await pair.s.wait_lost() is None


async def test_close_flushes_held_and_handshake_writes(onion_ca: OnionCA) -> None:
    """close() while a stop is pending sends the held writes beneath after
    the pop; close() during a handshake sends the queued writes inside the
    new layer once it is up, then closes."""
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1)
        await start_layer(pair, onion_ca, 2, swap_roles=True)

        def answer() -> None:
            pair.server.stop_tls()
            pair.s.on_eof = None

        pair.s.on_eof = answer
        stop = pair.client.stop_tls()
        pair.client.write(b"held beneath")
        pair.client.close()
        assert await pair.c.wait_lost() is None
        assert (await stop).depth == 2
        await pair.s.expect(b"held beneath")
        assert pair.s.received_at(1) == b"held beneath"
        await pair.s.wait_eof(2)  # then layer 1's close_notify
        assert pair.s.transcript()[-1] == ("eof", 1)
        pair.server.close()
        assert await pair.s.wait_lost() is None

    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1)
        fs = pair.server.start_tls(onion_ca.server_context(2), server_side=True)
        fc = pair.client.start_tls(
            onion_ca.client_context("stdlib"), server_hostname=onion_ca.hostname(2)
        )
        pair.client.write(b"queued in the handshake")
        pair.client.close()
        # Rule 13: close() during a handshake ends the connection promptly
        # and fails that handshake; what was queued inside it is never sent
        # (never in a weaker layer either).
        with pytest.raises(
            HandshakeError, match=r"closed \(close\(\)\) before the handshake"
        ) as ci:
            await asyncio.wait_for(fc, WAIT)
        assert ci.value.depth == 2
        assert await pair.c.wait_lost() is None
        with pytest.raises(HandshakeError) as si:
            await asyncio.wait_for(fs, WAIT)
        assert si.value.depth == 2
        assert await pair.s.wait_lost() is si.value
        assert bytes(pair.s.data) == b""


# -- the application protocol ------------------------------------------------------


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = bytearray(7)  # small: deliveries are cut to fit
        self.data = bytearray()
        self.lost: list[BaseException | None] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buf[:nbytes]

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


async def test_buffered_protocol_and_set_protocol(onion_ca: OnionCA) -> None:
    async with connect("memory") as pair:
        await start_layer(pair, onion_ca, 1, client_engine="stdlib", server_engine="pyopenssl")
        first = pair.c
        buffered = BufferedRecorder()
        pair.client.set_protocol(buffered)
        assert pair.client.get_protocol() is buffered
        pair.server.write(b"through layer 1 into a BufferedProtocol")
        for _ in range(200):
            if len(buffered.data) >= 39:
                break
            await asyncio.sleep(0)
        assert buffered.data == b"through layer 1 into a BufferedProtocol"
        assert bytes(first.data) == b""
        pair.client.set_protocol(first)
        pair.server.write(b"back")
        await first.expect(b"back")


async def test_errors_are_onion_errors_with_depth() -> None:
    from onion_tls import TLSProtocolError, TLSTimeoutError, TruncatedError

    for cls in (HandshakeError, LayerStateError, TLSProtocolError, TLSTimeoutError, TruncatedError):
        assert issubclass(cls, OnionError)
        exc = cls("why", depth=4)
        assert exc.depth == 4 and exc.reason == "why"
        assert str(exc).startswith("TLS layer 4") and str(exc).endswith(": why")
        assert "depth 4" in str(exc)
    assert str(OnionError("why")) == "onion connection: why"
    assert issubclass(TLSTimeoutError, TimeoutError)


@pytest.mark.parametrize("call", ["abort", "close", "stop_tls"])
@pytest.mark.parametrize("engine", ["pyopenssl", "stdlib"])
async def test_transport_calls_from_inside_data_received(
    onion_ca: OnionCA, engine: Engine, call: str
) -> None:
    """Three records arrive in one read; the application reacts to the first
    one.  After abort() or close() nothing more is delivered (as asyncio
    transports do); after stop_tls() the rest (sent before any
    close_notify) still is, inside the layer, and the stop completes."""
    async with connect("memory", coalesce=True) as pair:
        for d in (1, 2):
            await start_layer(pair, onion_ca, d, client_engine=engine, server_engine=engine)
        cli = pair.c
        stops: list[asyncio.Future[TLSLayer]] = []

        def react(data: bytes) -> None:
            cli.on_data = None
            if call == "abort":
                pair.client.abort()
            elif call == "close":
                pair.client.close()
            else:
                stops.append(pair.client.stop_tls())

        cli.on_data = react
        pair.s.eof_result = True
        for word in (b"one;", b"two;", b"three;"):
            pair.server.write(word)
        if call == "stop_tls":
            await pair.s.wait_eof()
            pair.server.stop_tls()
            assert (await asyncio.wait_for(stops[0], WAIT)).depth == 2
            await cli.expect(b"one;two;three;")
            assert cli.received_at(2) == b"one;two;three;"
            return
        assert await cli.wait_lost() is None
        assert cli.chunks == [b"one;"]
        assert cli.eofs == 0
        if call == "close":
            await pair.s.wait_eof()  # orderly: close_notify came
        else:
            lost = await pair.s.wait_lost()
            assert isinstance(lost, TruncatedError) and lost.depth == 2, lost
            assert isinstance(lost.__cause__, ConnectionResetError)
