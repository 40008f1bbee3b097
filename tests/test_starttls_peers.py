"""STARTTLS against software we did not write: the stdlib's own clients
(smtplib, imaplib, poplib, ftplib's FTP_TLS with ``auth()`` and ``ccc()``)
against our server helpers, and our SMTP client helper against aiosmtpd's
server.  Real sockets on 127.0.0.1; the stdlib clients run in a thread and
check the server's certificate for 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import imaplib
import poplib
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP as AioSMTP

from onion_tls import OnionError, StreamWriter, open_connection
from onion_tls import starttls as st
from onion_tls.streams import start_server
from onion_tls.testing import ENGINES, Engine, OnionCA

WAIT = 10.0

Handler = Callable[[asyncio.StreamReader, StreamWriter], Awaitable[Any]]


@pytest.fixture(scope="module")
def ip_cert(onion_ca: OnionCA) -> Any:
    """A server certificate for 127.0.0.1: the name the stdlib clients check
    (they pass the host they connected to as ``server_hostname``)."""
    return onion_ca.ca.issue_cert("127.0.0.1")


def ip_server_context(cert: Any, engine: Engine) -> Any:
    if engine == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    else:
        from OpenSSL import SSL

        ctx = SSL.Context(SSL.TLS_METHOD)
    cert.configure_cert(ctx)
    return ctx


def stdlib_client_context(onion_ca: OnionCA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # verifies the chain and the name
    onion_ca.ca.configure_trust(ctx)
    return ctx


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[int, asyncio.Future[Any]]]:
    """Serve one connection with ``handler``; yields the port and a future
    for what the handler returned (set once its connection is closed)."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def cb(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = await handler(reader, writer)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            error = exc
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OnionError):
                await writer.wait_closed()
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    server = await start_server(cb, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], done
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait([done], timeout=WAIT)


def words(line: bytes) -> tuple[str, str]:
    verb, _, arg = line.decode().strip().partition(" ")
    return verb.upper(), arg


# -- smtplib ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_smtplib_starttls_against_our_server(
    onion_ca: OnionCA, ip_cert: Any, engine: Engine
) -> None:
    """smtplib.SMTP.starttls(): EHLO, STARTTLS, 220, TLS; then EHLO again
    and a command and its reply inside the layer."""

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[str]:
        await st.smtp_serve_starttls(reader, writer, ip_server_context(ip_cert, engine))
        seen = []
        while line := await reader.readline():
            verb, arg = words(line)
            seen.append(verb)
            if verb == "EHLO":
                writer.write(b"250-127.0.0.1\r\n250 SIZE 1000\r\n")
            elif verb == "XECHO":
                writer.write(f"250 echo at depth {len(writer.layers)}: {arg}\r\n".encode())
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"500 what?\r\n")
        return seen

    def client(port: int) -> list[Any]:
        with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as smtp:
            got: list[Any] = [smtp.starttls(context=stdlib_client_context(onion_ca))]
            got.append(smtp.ehlo())
            got.append(smtp.has_extn("starttls"))
            got.append(smtp.docmd("XECHO", "hello inside"))
            assert isinstance(smtp.sock, ssl.SSLSocket)
            got.append(smtp.sock.version())
        return got

    async with serve(handler) as (port, done):
        started, ehlo, offers, echo, version = await asyncio.to_thread(client, port)
        assert await asyncio.wait_for(done, WAIT) == ["EHLO", "XECHO", "QUIT"]
    assert started == (220, b"2.0.0 Ready to start TLS")
    assert ehlo == (250, b"127.0.0.1\nSIZE 1000")
    assert offers is False  # what the plain-text EHLO said is forgotten
    assert echo == (250, b"echo at depth 1: hello inside")
    assert version == "TLSv1.3"


# -- imaplib ----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_imaplib_starttls_against_our_server(
    onion_ca: OnionCA, ip_cert: Any, engine: Engine
) -> None:
    """imaplib.IMAP4.starttls(): CAPABILITY, STARTTLS, OK, TLS; imaplib asks
    CAPABILITY again inside, then a command both ways, then LOGOUT."""

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[str]:
        await st.imap_serve_starttls(reader, writer, ip_server_context(ip_cert, engine))
        seen = []
        while line := await reader.readline():
            tag, _, rest = line.decode().strip().partition(" ")
            verb, arg = words(rest.encode())
            seen.append(verb)
            if verb == "CAPABILITY":
                writer.write(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n".encode())
            elif verb == "XECHO":
                depth = len(writer.layers)
                writer.write(f"* XECHO depth {depth}: {arg}\r\n{tag} OK XECHO done\r\n".encode())
            elif verb == "LOGOUT":
                writer.write(f"* BYE see you\r\n{tag} OK LOGOUT done\r\n".encode())
                break
            else:
                writer.write(f"{tag} BAD what?\r\n".encode())
        return seen

    def client(port: int) -> list[Any]:
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=WAIT)
        try:
            before = tuple(imap.capabilities)
            got: list[Any] = [before, imap.starttls(ssl_context=stdlib_client_context(onion_ca))]
            got.append(tuple(imap.capabilities))
            got.append(imap.xatom("XECHO", "hello"))
            got.append(imap.response("XECHO"))
        finally:
            got.append(imap.logout()[0])
        return got

    async with serve(handler) as (port, done):
        before, started, after, xecho, untagged, bye = await asyncio.to_thread(client, port)
        assert await asyncio.wait_for(done, WAIT) == ["CAPABILITY", "XECHO", "LOGOUT"]
    assert "STARTTLS" in before
    assert started[0] == "OK"
    assert after == ("IMAP4REV1", "AUTH=PLAIN")  # asked again, inside the layer
    assert xecho[0] == "OK"
    assert untagged == ("XECHO", [b"depth 1: hello"])
    assert bye == "BYE"


# -- poplib -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_poplib_stls_against_our_server(
    onion_ca: OnionCA, ip_cert: Any, engine: Engine
) -> None:
    """poplib.POP3.stls(): CAPA, STLS, +OK, TLS; then CAPA, STAT, RETR (a
    message from the server) and QUIT inside the layer."""
    message = [b"Subject: inside", b"", b"sent at depth %d"]

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[str]:
        await st.pop3_serve_stls(reader, writer, ip_server_context(ip_cert, engine))
        body = b"\r\n".join(message) % len(writer.layers)
        seen = []
        while line := await reader.readline():
            verb, _ = words(line)
            seen.append(verb)
            if verb == "CAPA":
                writer.write(b"+OK\r\nUSER\r\nTOP\r\n.\r\n")
            elif verb == "STAT":
                writer.write(b"+OK 1 %d\r\n" % len(body))
            elif verb == "RETR":
                writer.write(b"+OK %d octets\r\n%s\r\n.\r\n" % (len(body), body))
            elif verb == "QUIT":
                writer.write(b"+OK bye\r\n")
                break
            else:
                writer.write(b"-ERR what?\r\n")
        return seen

    def client(port: int) -> list[Any]:
        pop = poplib.POP3("127.0.0.1", port, timeout=WAIT)
        try:
            got: list[Any] = [pop.stls(context=stdlib_client_context(onion_ca))]
            got += [pop.capa(), pop.stat(), pop.retr(1)[1]]
        finally:
            got.append(pop.quit())
        return got

    async with serve(handler) as (port, done):
        started, caps, stat, lines, bye = await asyncio.to_thread(client, port)
        assert await asyncio.wait_for(done, WAIT) == ["CAPA", "STAT", "RETR", "QUIT"]
    assert started == b"+OK begin TLS negotiation"
    assert caps == {"USER": [], "TOP": []}  # no STLS any more: this is the new CAPA
    assert stat[0] == 1
    assert lines == [b"Subject: inside", b"", b"sent at depth 1"]
    assert bye == b"+OK bye"


# -- ftplib -----------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_ftplib_auth_tls_and_ccc_against_our_server(
    onion_ca: OnionCA, ip_cert: Any, engine: Engine
) -> None:
    """ftplib.FTP_TLS: auth() (AUTH TLS, 234, TLS), a command both ways
    inside, ccc() (CCC, 200, close_notify both ways: our server pops the
    layer with stop_tls), then a command both ways in plain text."""

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[str]:
        await st.ftp_serve_auth_tls(reader, writer, ip_server_context(ip_cert, engine))
        seen = []
        while line := await reader.readline():
            verb, arg = words(line)
            seen.append(f"{verb}@{len(writer.layers)}")
            if verb == "CCC":
                popped = await st.ftp_serve_ccc(reader, writer)
                assert popped.depth == 1 and writer.layers == ()
            elif verb == "XECHO":
                writer.write(f"200 echo at depth {len(writer.layers)}: {arg}\r\n".encode())
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"502 what?\r\n")
        return seen

    def client(port: int) -> list[Any]:
        ftp = ftplib.FTP_TLS(context=stdlib_client_context(onion_ca), timeout=WAIT)
        try:
            got: list[Any] = [ftp.connect("127.0.0.1", port), ftp.auth()]
            got.append(ftp.sendcmd("XECHO secret"))
            got.append(ftp.ccc())
            got.append(ftp.sendcmd("XECHO plain"))
        finally:
            got.append(ftp.quit())
        return got

    async with serve(handler) as (port, done):
        welcome, auth, inside, ccc, plain, bye = await asyncio.to_thread(client, port)
        seen = await asyncio.wait_for(done, WAIT)
    assert seen == ["XECHO@1", "CCC@1", "XECHO@0", "QUIT@0"]
    assert welcome == "220 FTP ready (onion_tls)"
    assert auth == "234 AUTH TLS successful"
    assert inside == "200 echo at depth 1: secret"
    assert ccc.startswith("200 CCC ok")
    assert plain == "200 echo at depth 0: plain"
    assert bye == "221 bye"


# -- aiosmtpd ----------------------------------------------------------------------


class Inbox:
    """An aiosmtpd handler that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, envelope.rcpt_tos, envelope.original_content, bool(session.ssl))
        )
        return "250 2.0.0 Message accepted"


@contextlib.asynccontextmanager
async def aiosmtpd_server(tls_context: Any, **kw: Any) -> AsyncIterator[tuple[int, Inbox]]:
    inbox = Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AioSMTP(inbox, tls_context=tls_context, hostname="mx.test", **kw),
        "127.0.0.1",
        0,
    )
    try:
        yield server.sockets[0].getsockname()[1], inbox
    finally:
        server.close()
        await server.wait_closed()


async def smtp_command(reader: asyncio.StreamReader, writer: StreamWriter, line: bytes) -> bytes:
    writer.write(line + b"\r\n")
    reply = b""
    while True:
        part = await asyncio.wait_for(reader.readline(), WAIT)
        reply += part
        if part[3:4] != b"-":
            return reply


@pytest.mark.parametrize("engine", ENGINES)
async def test_smtp_starttls_against_aiosmtpd(onion_ca: OnionCA, engine: Engine) -> None:
    """Our client helper against aiosmtpd with ``require_starttls``: the
    upgrade, then EHLO again and a whole mail sent inside the layer, which
    aiosmtpd receives over TLS."""
    async with aiosmtpd_server(onion_ca.server_context(1, "stdlib"), require_starttls=True) as (
        port,
        inbox,
    ):
        reader, writer = await open_connection("127.0.0.1", port)
        try:
            layer = await st.smtp_starttls(
                reader,
                writer,
                onion_ca.client_context(engine),
                server_hostname=onion_ca.hostname(1),
                local_hostname="client.test",
            )
            assert layer.engine == engine and writer.layers == (layer,)
            ehlo = await smtp_command(reader, writer, b"EHLO client.test")
            assert ehlo.startswith(b"250-mx.test") and b"STARTTLS" not in ehlo
            assert (await smtp_command(reader, writer, b"MAIL FROM:<a@client.test>"))[:3] == b"250"
            assert (await smtp_command(reader, writer, b"RCPT TO:<b@mx.test>"))[:3] == b"250"
            assert (await smtp_command(reader, writer, b"DATA"))[:3] == b"354"
            body = b"Subject: onion\r\n\r\nsent inside TLS\r\n."
            assert (await smtp_command(reader, writer, body))[:3] == b"250"
            assert (await smtp_command(reader, writer, b"QUIT"))[:3] == b"221"
            # aiosmtpd closes its TLS (close_notify): the end of the layer's data.
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OnionError):
                await writer.wait_closed()
    [(sender, rcpts, content, over_tls)] = inbox.messages
    assert (sender, rcpts, over_tls) == ("a@client.test", ["b@mx.test"], True)
    assert content == b"Subject: onion\r\n\r\nsent inside TLS\r\n"


async def test_smtp_starttls_refused_by_aiosmtpd(onion_ca: OnionCA) -> None:
    """aiosmtpd without a TLS context: STARTTLS is not in its EHLO reply;
    sent anyway (``ehlo=False``) it answers 454.  Both are refusals that
    quote the server, and the connection stays usable in plain text."""
    async with aiosmtpd_server(None) as (port, _):
        reader, writer = await open_connection("127.0.0.1", port)
        try:
            with pytest.raises(st.StartTLSRefusedError, match="does not offer STARTTLS") as info:
                await st.smtp_starttls(reader, writer, onion_ca.client_context())
            assert "250-mx.test" in str(info.value)
            with pytest.raises(
                st.StartTLSRefusedError, match="refused STARTTLS: '454 TLS not available'"
            ):
                await st.smtp_starttls(
                    reader, writer, onion_ca.client_context(), greeting=False, ehlo=False
                )
            assert writer.layers == ()
            assert (await smtp_command(reader, writer, b"QUIT"))[:3] == b"221"
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OnionError):
                await writer.wait_closed()
