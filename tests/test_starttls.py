"""STARTTLS in one call (onion_tls.starttls): our client helpers against our
server helpers and against scripted servers that refuse or inject, our
server helpers against scripted clients that inject or pipeline their
ClientHello; and the clearer error when plain text comes where TLS was
expected.  Real TLS (trustme CA), real sockets on 127.0.0.1, both engines."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from onion_tls import HandshakeError, OnionError, StreamWriter, TLSLayer, open_connection
from onion_tls import starttls as st
from onion_tls._records import check_header
from onion_tls.starttls._common import Talk
from onion_tls.streams import start_server
from onion_tls.testing import ENGINES, Engine, OnionCA

WAIT = 10.0

Handler = Callable[[asyncio.StreamReader, StreamWriter], Awaitable[Any]]

ENGINE_PAIRS = [
    ("pyopenssl", "pyopenssl"),
    ("stdlib", "stdlib"),
    ("pyopenssl", "stdlib"),
    ("stdlib", "pyopenssl"),
]

SERVERS: dict[str, Callable[..., Awaitable[TLSLayer]]] = {
    "smtp": st.smtp_serve_starttls,
    "imap": st.imap_serve_starttls,
    "pop3": st.pop3_serve_stls,
    "ftp": st.ftp_serve_auth_tls,
    "postgres": st.postgres_serve_ssl_request,
}


class Outcome:
    """What a server handler returned or raised, once it has finished
    (its connection closed)."""

    def __init__(self) -> None:
        self.finished = asyncio.get_running_loop().create_future()
        self.result: Any = None
        self.error: BaseException | None = None

    async def wait(self) -> Any:
        await asyncio.wait_for(asyncio.shield(self.finished), WAIT)
        if self.error is not None:
            raise self.error
        return self.result


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[int, Outcome]]:
    """An onion_tls server on 127.0.0.1 running ``handler`` for one
    connection; yields its port and the handler's :class:`Outcome`."""
    outcome = Outcome()

    async def cb(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        try:
            outcome.result = await handler(reader, writer)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome.error = exc
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OnionError):
                await writer.wait_closed()
            outcome.finished.set_result(None)

    server = await start_server(cb, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], outcome
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.shield(outcome.finished), WAIT)


async def close(writer: StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OnionError):
        await writer.wait_closed()


# -- our client against our server, every protocol, both engines -------------------


async def ping_pong_server(reader: asyncio.StreamReader, writer: StreamWriter) -> list[bytes]:
    """After the upgrade: answer each line with ``pong`` and the depth it came
    in at; ``CCC`` (FTP) pops the layer; ``QUIT`` ends."""
    seen = []
    while line := await reader.readline():
        seen.append(line)
        if line == b"CCC\r\n":
            popped = await st.ftp_serve_ccc(reader, writer)
            assert popped.depth == 1
            continue
        if line == b"QUIT\r\n":
            writer.write(b"221 bye\r\n")
            await writer.drain()
            break
        writer.write(b"pong inside %d layer(s): " % len(writer.layers) + line)
    return seen


@pytest.mark.parametrize(("client_engine", "server_engine"), ENGINE_PAIRS)
@pytest.mark.parametrize("protocol", st.PROTOCOLS)
async def test_client_and_server_helpers_upgrade(
    onion_ca: OnionCA, protocol: str, client_engine: Engine, server_engine: Engine
) -> None:
    """The client helper and the server helper of each protocol agree: one
    layer on both ends, data both ways inside it (and, for FTP, CCC back to
    plain text with data both ways after it)."""
    sctx = onion_ca.server_context(1, server_engine)

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> Any:
        layer = await SERVERS[protocol](reader, writer, sctx)
        assert layer.server_side and layer.depth == 1 and layer.engine == server_engine
        return await ping_pong_server(reader, writer)

    async with serve(handler) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        try:
            layer = await st.starttls(
                protocol,
                reader,
                writer,
                onion_ca.client_context(client_engine),
                server_hostname=onion_ca.hostname(1),
            )
            assert writer.layers == (layer,)
            assert layer.depth == 1 and not layer.server_side
            assert layer.engine == client_engine and layer.version is not None
            assert layer.peer_certificate is not None
            writer.write(b"hello\r\n")
            assert await reader.readline() == b"pong inside 1 layer(s): hello\r\n"
            if protocol == "ftp":
                popped = await st.ftp_ccc(reader, writer)
                assert popped is layer and writer.layers == ()
                writer.write(b"plain again\r\n")
                assert await reader.readline() == b"pong inside 0 layer(s): plain again\r\n"
            writer.write(b"QUIT\r\n")
            assert await reader.readline() == b"221 bye\r\n"
        finally:
            await close(writer)
        seen = await outcome.wait()
    assert seen[0] == b"hello\r\n"
    assert seen[-1] == b"QUIT\r\n"


async def test_starttls_by_name_refuses_an_unknown_protocol(onion_ca: OnionCA) -> None:
    async with serve(lambda r, w: r.read()) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(ValueError, match=r"unknown STARTTLS protocol 'gopher'.*smtp"):
            await st.starttls("gopher", reader, writer, onion_ca.client_context())
        assert writer.transport.get_extra_info("peername") is not None
        await close(writer)
        await outcome.wait()


async def test_starttls_nests_inside_an_existing_layer(onion_ca: OnionCA) -> None:
    """The helpers work at any depth: SMTP's upgrade inside a TLS layer
    (say, a TLS tunnel) pushes layer 2, and errors name depth 2."""
    sctx1, sctx2 = onion_ca.server_context(1), onion_ca.server_context(2, "stdlib")

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> Any:
        await writer.start_tls(sctx1, server_side=True)
        layer = await st.smtp_serve_starttls(reader, writer, sctx2)
        assert layer.depth == 2
        return await ping_pong_server(reader, writer)

    async with serve(handler) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        await writer.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
        layer = await st.smtp_starttls(
            reader, writer, onion_ca.client_context("stdlib"), server_hostname=onion_ca.hostname(2)
        )
        assert layer.depth == 2 and len(writer.layers) == 2
        writer.write(b"deep\r\nQUIT\r\n")
        assert await reader.readline() == b"pong inside 2 layer(s): deep\r\n"
        assert await reader.readline() == b"221 bye\r\n"
        await close(writer)
        await outcome.wait()


# -- scripted servers: refusals and injections (client side) -------------------------

INJECTED = b"250 injected plain text\r\n"

# (what the server reads: a line prefix, a byte count, or None; what it sends)
Script = list[tuple[bytes | int | None, bytes]]

SCRIPTS: dict[str, Script] = {
    "smtp": [
        (None, b"220 mx.test ESMTP\r\n"),
        (b"EHLO ", b"250-mx.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"),
        (b"STARTTLS\r\n", b"220 2.0.0 go ahead\r\n"),
    ],
    "imap": [
        (None, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
        (b"a001 STARTTLS\r\n", b"a001 OK begin TLS\r\n"),
    ],
    "pop3": [(None, b"+OK ready\r\n"), (b"STLS\r\n", b"+OK begin TLS\r\n")],
    "ftp": [
        (None, b"220-welcome\r\n  to the test\r\n220 ready\r\n"),
        (b"AUTH TLS\r\n", b"234 AUTH TLS ok\r\n"),
    ],
    "postgres": [(8, b"S")],
}

REFUSALS: dict[str, tuple[bytes, str]] = {
    "smtp": (b"454 4.7.0 TLS not available due to temporary reason\r\n", "454 4.7.0 TLS not"),
    "imap": (b"a001 NO [UNAVAILABLE] TLS is down\r\n", "a001 NO [UNAVAILABLE] TLS is down"),
    "pop3": (b"-ERR not now\r\n", "-ERR not now"),
    "ftp": (b"534 policy says no\r\n", "534 policy says no"),
    "postgres": (b"N", "'N'"),
}


def scripted(script: Script, last: bytes) -> Handler:
    """A server that plays ``script``, sending ``last`` instead of its last
    reply, then returns everything it reads until EOF."""

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> bytes:
        for i, (expect, reply) in enumerate(script):
            if isinstance(expect, int):
                got = await reader.readexactly(expect)
                assert got == struct.pack("!II", 8, 80877103), got
            elif expect is not None:
                got = await reader.readline()
                assert got.startswith(expect), got
            writer.write(last if i == len(script) - 1 else reply)
        return await reader.read()

    return handler


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("protocol", st.PROTOCOLS)
async def test_client_refuses_bytes_injected_after_the_go_ahead(
    onion_ca: OnionCA, protocol: str, engine: Engine
) -> None:
    """The server's go-ahead comes with plain text behind it, in the same
    segment (a man in the middle's injection, CVE-2011-0411 style): the
    helper refuses it, pushes no layer, and the error holds the bytes."""
    script = SCRIPTS[protocol]
    handler = scripted(script, script[-1][1] + INJECTED)
    async with serve(handler) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSInjectionError) as info:
            await st.starttls(
                protocol,
                reader,
                writer,
                onion_ca.client_context(engine),
                server_hostname=onion_ca.hostname(1),
            )
        exc = info.value
        assert exc.data == INJECTED
        assert exc.protocol == protocol and exc.depth == 1
        assert isinstance(exc, OnionError)
        assert "refused as injected plain text" in str(exc)
        assert "250 injected plain text" in str(exc)
        assert writer.layers == ()
        await close(writer)
        # Nothing was sent after the upgrade command: no ClientHello.
        assert b"\x16\x03" not in await outcome.wait()


@pytest.mark.parametrize("protocol", st.PROTOCOLS)
async def test_client_says_when_the_server_refuses(onion_ca: OnionCA, protocol: str) -> None:
    """SMTP 454, IMAP NO, POP3 -ERR, FTP 534, PostgreSQL N: a refusal
    with the server's words; the connection is still plain text and
    usable."""
    answer, words = REFUSALS[protocol]
    handler = scripted(SCRIPTS[protocol], answer)
    async with serve(handler) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSRefusedError) as info:
            await st.starttls(
                protocol, reader, writer, onion_ca.client_context(), server_hostname="x"
            )
        assert words in str(info.value)
        assert info.value.protocol == protocol and info.value.depth == 1
        assert writer.layers == ()
        writer.write(b"QUIT\r\n")  # still a working plain-text connection
        writer.write_eof()
        assert await outcome.wait() == b"QUIT\r\n"
        await close(writer)


@pytest.mark.parametrize(
    ("protocol", "script", "message"),
    [
        (
            "smtp",
            [(None, b"220 mx\r\n"), (b"EHLO", b"250-mx\r\n250 SIZE 10\r\n")],
            r"does not offer STARTTLS \(not in its EHLO reply\): '250-mx / 250 SIZE 10'",
        ),
        ("smtp", [(None, b"554 go away\r\n")], r"greeting is not 220: '554 go away'"),
        ("smtp", [(None, b"220 mx\r\n"), (b"EHLO", b"502 no EHLO\r\n")], "refused EHLO"),
        ("smtp", [(None, b"HTTP/1.1 400 Bad\r\n")], "not an SMTP reply: 'HTTP/1.1 400 Bad'"),
        (
            "imap",
            [
                (None, b"* OK hi\r\n"),
                (b"a001 CAPABILITY", b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na001 OK\r\n"),
            ],
            r"does not offer STARTTLS \(capabilities: AUTH=PLAIN IMAP4REV1\)",
        ),
        ("imap", [(None, b"* PREAUTH welcome\r\n")], "pre-authenticated"),
        ("imap", [(None, b"* BYE busy\r\n")], r"greeting is not \* OK: '\* BYE busy'"),
        (
            "imap",
            [(None, b"* OK [CAPABILITY STARTTLS]\r\n"), (b"a001 STARTTLS", b"* BYE bye\r\n")],
            "the server said BYE to STARTTLS",
        ),
        ("pop3", [(None, b"-ERR busy\r\n")], "greeting is not \\+OK: '-ERR busy'"),
        ("ftp", [(None, b"421 too many users\r\n")], "greeting is not 220: '421 too many"),
        ("postgres", [(8, b"E")], "error message \\(not shown"),
        ("postgres", [(8, b"X")], "not an answer to SSLRequest: b'X'"),
    ],
)
async def test_client_refusals_and_odd_servers(
    onion_ca: OnionCA, protocol: str, script: Script, message: str
) -> None:
    """No STARTTLS offered, a refusing greeting, PREAUTH, BYE, a server
    that speaks something else: each a clear StartTLSError."""
    handler = scripted(script, script[-1][1])
    async with serve(handler) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSError, match=message) as info:
            await st.starttls(
                protocol, reader, writer, onion_ca.client_context(), server_hostname="x"
            )
        assert info.value.protocol == protocol
        assert writer.layers == ()
        await close(writer)
        await outcome.wait()


async def test_client_errors_when_the_server_closes_or_is_silent(onion_ca: OnionCA) -> None:
    async def closes(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        writer.write(b"220 mx\r\n250-half a rep")

    async with serve(closes) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSError, match=r"server closed the connection after b'250-"):
            await st.smtp_starttls(reader, writer, onion_ca.client_context())
        await close(writer)
        await outcome.wait()

    async def silent(reader: asyncio.StreamReader, writer: StreamWriter) -> bytes:
        return await reader.read()

    async with serve(silent) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSError, match=r"did not answer within 0.2 s"):
            await st.pop3_stls(reader, writer, onion_ca.client_context(), timeout=0.2)
        await close(writer)
        await outcome.wait()


async def test_a_refused_ehlo_less_starttls_and_a_good_imap_capability_round(
    onion_ca: OnionCA,
) -> None:
    """``ehlo=False`` sends STARTTLS at once; IMAP asks CAPABILITY when the
    greeting has none, and skips untagged lines before the tagged OK."""
    smtp = scripted([(None, b"220 mx\r\n"), (b"STARTTLS", b"")], b"502 unknown command\r\n")
    async with serve(smtp) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSRefusedError, match="refused STARTTLS: '502 unknown"):
            await st.smtp_starttls(reader, writer, onion_ca.client_context(), ehlo=False)
        await close(writer)
        await outcome.wait()

    sctx = onion_ca.server_context(1)

    async def imap(reader: asyncio.StreamReader, writer: StreamWriter) -> Any:
        writer.write(b"* OK no capabilities here\r\n")
        assert await reader.readline() == b"a001 CAPABILITY\r\n"
        writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n* 3 EXISTS {5}\r\nab\r\nc\r\n")
        writer.write(b"a001 OK done\r\n")
        assert await reader.readline() == b"a002 STARTTLS\r\n"
        writer.write(b"* OK [ALERT] untagged first\r\na002 OK go\r\n")
        await writer.start_tls(sctx, server_side=True)
        return await ping_pong_server(reader, writer)

    async with serve(imap) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        layer = await st.imap_starttls(
            reader, writer, onion_ca.client_context(), server_hostname=onion_ca.hostname(1)
        )
        assert layer.depth == 1
        writer.write(b"QUIT\r\n")
        assert await reader.readline() == b"221 bye\r\n"
        await close(writer)
        await outcome.wait()


# -- scripted clients: injections and a pipelined ClientHello (server side) ---------

# (what the client sends; the line prefix it then reads, or None)
ClientScript = list[tuple[bytes, bytes | None]]

CLIENT_SCRIPTS: dict[str, tuple[ClientScript, bytes, bytes, bytes]] = {
    # protocol: (before, upgrade command, the refusal's start, injected)
    "smtp": (
        [(b"", b"220 "), (b"EHLO me\r\n", b"250-")],
        b"STARTTLS\r\n",
        b"501 ",
        b"MAIL FROM:<evil@example.org>\r\n",
    ),
    "imap": (
        [(b"", b"* OK ")],
        b"t1 STARTTLS\r\n",
        b"t1 BAD ",
        b"t2 LOGIN user password\r\n",
    ),
    "pop3": ([(b"", b"+OK ")], b"STLS\r\n", b"-ERR ", b"USER evil\r\n"),
    "ftp": ([(b"", b"220 ")], b"AUTH TLS\r\n", b"501 ", b"USER evil\r\n"),
    "postgres": (
        [],
        struct.pack("!II", 8, 80877103),
        b"E",
        struct.pack("!II", 9, 196608) + b"\0",
    ),
}


async def play(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, script: ClientScript
) -> None:
    for send, expect in script:
        writer.write(send)
        if expect is not None:
            line = await asyncio.wait_for(reader.readline(), WAIT)
            assert line.startswith(expect), line
            while line[3:4] == b"-":  # the rest of a multi-line reply
                line = await asyncio.wait_for(reader.readline(), WAIT)


@pytest.mark.parametrize("protocol", st.PROTOCOLS)
async def test_server_refuses_plain_text_pipelined_after_the_command(
    onion_ca: OnionCA, protocol: str
) -> None:
    """A client (or a man in the middle) sends ``STARTTLS\\r\\n`` and a
    plain-text command in one segment: the server helper answers with an
    error, pushes no layer and raises, holding the injected bytes."""
    before, command, refusal, injected = CLIENT_SCRIPTS[protocol]
    sctx = onion_ca.server_context(1)
    async with serve(lambda r, w: SERVERS[protocol](r, w, sctx)) as (port, outcome):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await play(reader, writer, before)
        writer.write(command + injected)
        answer = await asyncio.wait_for(reader.read(), WAIT)  # then the server closes
        assert answer.startswith(refusal), answer
        with pytest.raises(st.StartTLSInjectionError, match="refused as injected") as info:
            await outcome.wait()
        assert info.value.data == injected
        assert info.value.protocol == protocol
        writer.close()
        await writer.wait_closed()
    if protocol == "postgres":
        assert b"received unencrypted data after SSL request" in answer


class MemoryBIOClient:
    """A stdlib TLS client on memory BIOs, over plain asyncio streams: it can
    send its ClientHello in the same write as the upgrade command, as no
    socket-wrapping client can."""

    def __init__(self, ctx: ssl.SSLContext, hostname: str) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=hostname)

    def client_hello(self) -> bytes:
        with pytest.raises(ssl.SSLWantReadError):
            self.tls.do_handshake()
        return self.outgoing.read()

    async def finish(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                writer.write(self.outgoing.read())
                data = await asyncio.wait_for(reader.read(65536), WAIT)
                assert data, "the server closed during the handshake"
                self.incoming.write(data)
            else:
                writer.write(self.outgoing.read())
                return

    async def exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> bytes:
        self.tls.write(data)
        writer.write(self.outgoing.read())
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                more = await asyncio.wait_for(reader.read(65536), WAIT)
                assert more, "the server closed"
                self.incoming.write(more)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("protocol", ["smtp", "postgres"])
async def test_server_takes_a_client_hello_pipelined_after_the_command(
    onion_ca: OnionCA, protocol: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``STARTTLS\\r\\n`` (or the SSLRequest) and the ClientHello in one
    write: the ClientHello is the new layer's, given to it as initial
    bytes; the handshake completes and data flows."""
    before, command, _, _ = CLIENT_SCRIPTS[protocol]
    sctx = onion_ca.server_context(1, engine)
    early_bytes: list[bytes] = []
    upgrade_server = Talk.upgrade_server

    def spy(talk: Talk, context: Any, early: bytes, timeout: float | None) -> Any:
        early_bytes.append(early)
        return upgrade_server(talk, context, early, timeout)

    monkeypatch.setattr(Talk, "upgrade_server", spy)

    async def handler(reader: asyncio.StreamReader, w: StreamWriter) -> Any:
        layer = await SERVERS[protocol](reader, w, sctx)
        assert layer.engine == engine
        return await ping_pong_server(reader, w)

    async with serve(handler) as (port, outcome):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await play(reader, writer, before)
        client = MemoryBIOClient(onion_ca.client_context("stdlib"), onion_ca.hostname(1))
        writer.write(command + client.client_hello())
        if protocol == "postgres":
            assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"S"
        else:
            assert (await asyncio.wait_for(reader.readline(), WAIT)).startswith(b"220 ")
        await client.finish(reader, writer)
        answer = await client.exchange(reader, writer, b"ping\r\n")
        assert answer == b"pong inside 1 layer(s): ping\r\n"
        await client.exchange(reader, writer, b"QUIT\r\n")
        writer.close()
        await writer.wait_closed()
        with contextlib.suppress(OnionError):  # we left without close_notify
            await outcome.wait()
    # It did come with the command, and was handed to the layer.
    assert len(early_bytes) == 1 and early_bytes[0][:2] == b"\x16\x03"


async def test_server_dialogue_before_the_upgrade(onion_ca: OnionCA) -> None:
    """Before STARTTLS the SMTP server helper answers EHLO (offering
    STARTTLS) and NOOP, 530 to mail commands, 501 to STARTTLS with an
    argument; QUIT ends it with an error that says so."""
    sctx = onion_ca.server_context(1)
    async with serve(lambda r, w: st.smtp_serve_starttls(r, w, sctx, hostname="mx.test")) as (
        port,
        outcome,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = []
        writer.write(b"EHLO me\r\nNOOP\r\nMAIL FROM:<a@b>\r\nSTARTTLS now\r\nQUIT\r\n")
        while line := await asyncio.wait_for(reader.readline(), WAIT):
            lines.append(line)
        assert lines == [
            b"220 mx.test ESMTP ready (onion_tls)\r\n",
            b"250-mx.test greets me\r\n",
            b"250-8BITMIME\r\n",
            b"250 STARTTLS\r\n",
            b"250 2.0.0 OK\r\n",
            b"530 5.7.0 Must issue a STARTTLS command first\r\n",
            b"501 5.5.4 Syntax: STARTTLS\r\n",
            b"221 2.0.0 mx.test closing\r\n",
        ]
        with pytest.raises(st.StartTLSError, match="the client quit before STARTTLS"):
            await outcome.wait()
        writer.close()
        await writer.wait_closed()


async def test_server_errors_plain_startup_and_silence(onion_ca: OnionCA) -> None:
    """PostgreSQL: a GSSENCRequest is answered N, then the SSLRequest S; a
    plain StartupMessage is refused; a silent client times out."""
    sctx = onion_ca.server_context(1)

    async def pg(reader: asyncio.StreamReader, writer: StreamWriter) -> Any:
        await st.postgres_serve_ssl_request(reader, writer, sctx)
        return await ping_pong_server(reader, writer)

    async with serve(pg) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        writer.write(struct.pack("!II", 8, 80877104))  # GSSENCRequest
        assert await reader.readexactly(1) == b"N"
        await st.postgres_ssl_request(
            reader, writer, onion_ca.client_context(), server_hostname=onion_ca.hostname(1)
        )
        writer.write(b"QUIT\r\n")
        assert await reader.readline() == b"221 bye\r\n"
        await close(writer)
        await outcome.wait()

    async with serve(lambda r, w: st.postgres_serve_ssl_request(r, w, sctx)) as (port, outcome):
        reader, writer = await open_connection("127.0.0.1", port)
        writer.write(struct.pack("!II", 9, 196608) + b"\0")  # StartupMessage, protocol 3.0
        with pytest.raises(st.StartTLSError, match="first message is not an SSLRequest"):
            await outcome.wait()
        await close(writer)

    async with serve(lambda r, w: st.imap_serve_starttls(r, w, sctx, timeout=0.2)) as (
        port,
        outcome,
    ):
        reader, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(st.StartTLSError, match=r"IMAP STARTTLS: the client did not answer"):
            await outcome.wait()
        await close(writer)


# -- clearer first errors ---------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_plain_text_where_tls_was_expected_is_shown_as_such(
    onion_ca: OnionCA, engine: Engine
) -> None:
    """A client that starts TLS without waiting for the server's answer
    (here the server refuses with a 500): the handshake error shows the
    reply and says it is plain text, instead of 'content type 53'."""

    async def refuses(reader: asyncio.StreamReader, writer: StreamWriter) -> bytes:
        data = await reader.read(1)
        writer.write(b"500 Syntax error, command unrecognized\r\n")
        return data

    async with serve(refuses) as (port, outcome):
        _, writer = await open_connection("127.0.0.1", port)
        with pytest.raises(HandshakeError) as info:
            await writer.start_tls(
                onion_ca.client_context(engine), server_hostname=onion_ca.hostname(1)
            )
        await close(writer)
        await outcome.wait()
    text = str(info.value)
    assert info.value.depth == 1
    assert (
        "not a TLS record (content type 53) but plain text: b'500 Syntax error, command unreco'"
        "... (did the peer refuse the upgrade, or not speak TLS here?)"
    ) in text, text


def test_first_bytes_shown_as_text_or_hex() -> None:
    assert check_header(b"-ERR no\r\n") == (
        "not a TLS record (content type 45) but plain text: b'-ERR no\\r\\n' "
        "(did the peer refuse the upgrade, or not speak TLS here?)"
    )
    # Text up to the first byte that is not: an SSH banner, then binary.
    assert "plain text: b'SSH-2.0-x\\r\\n'..." in str(check_header(b"SSH-2.0-x\r\n\x00\x01"))
    assert check_header(b"\x00\x01\x02\x03\x04\x05") == (
        "not a TLS record (content type 0), first bytes: 00 01 02 03 04 05"
    )
    assert check_header(bytes(40)) == (
        "not a TLS record (content type 0), first bytes: " + " ".join(["00"] * 16) + "..."
    )
    assert check_header(b"\x16\x01\x00\x00\x05") == (
        "not a TLS record (version byte 0x01), first bytes: 16 01 00 00 05"
    )
    assert check_header(b"\x16\x03\x01\x00\x05") is None
