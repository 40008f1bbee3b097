"""STARTTLS done right: an SMTP-like server and client, and two attacks that
fail against them.

    python examples/starttls_smtp.py

STARTTLS upgrades a plaintext connection to TLS in the middle of it.  The
classic bugs sit exactly at the switch: bytes that arrived in plaintext
*before* the upgrade are read afterwards as if TLS had protected them
(CVE-2011-0411 in servers, the "NO STARTTLS" response injections in clients).
onion_tls never feeds such bytes to a new layer by itself, and its
``start_tls`` refuses to run while the reader still holds unread bytes: the
application must say what they are.

Three runs, on 127.0.0.1, certificates made on the spot (trustme):

1. an honest client and the server;
2. a man in the middle appends commands behind the client's ``STARTTLS``:
   the server discards them, they are never executed;
3. a man in the middle appends a fake reply behind the server's ``220``:
   the client refuses to start TLS over it.

The server also shows the other half of the rule: it reads the first bytes
of the client's handshake itself (to check that TLS really follows) and
hands them to the new layer with ``initial_bytes``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trustme

import onion_tls

Handler = Callable[[asyncio.StreamReader, Any], Awaitable[None]]

CA = trustme.CA()
SERVER_CERT = CA.issue_cert("mail.example")


# -- the server -----------------------------------------------------------------


class MailServer:
    def __init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        SERVER_CERT.configure_cert(self.context)
        self.accepted: list[str] = []  # the mail commands the server executed

    async def handle(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        try:
            await self.session(reader, writer)
        except (ConnectionError, onion_tls.OnionError) as exc:
            print(f"server: connection ended: {exc}")
        finally:
            writer.close()

    async def session(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP onion_tls example\r\n")
        while line := await reader.readline():
            command = line.rstrip(b"\r\n").decode("ascii", "replace")
            verb = command.split(" ", 1)[0].upper()
            tls = bool(writer.layers)
            print(f"server: [{'TLS' if tls else 'plaintext'}] {command}")
            if verb == "EHLO":
                writer.write(
                    b"250 mail.example\r\n" if tls else b"250-mail.example\r\n250 STARTTLS\r\n"
                )
            elif verb == "STARTTLS" and not tls:
                if not await self.starttls(reader, writer):
                    return
            elif verb in ("MAIL", "RCPT"):
                if not tls:
                    writer.write(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                else:
                    self.accepted.append(command)
                    writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                return
            else:
                writer.write(b"502 5.5.2 Command not recognized\r\n")

    async def starttls(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> bool:
        writer.write(b"220 2.0.0 Ready to start TLS\r\n")
        # Whatever came behind STARTTLS, before the client could have seen
        # our 220, is plaintext that nothing protects: someone on the path
        # may have injected it.  Drop it; never execute it.
        if injected := writer.take_buffered():
            print(f"server: discarded {len(injected)} bytes sent in plaintext after STARTTLS:")
            for line in injected.splitlines():
                print(f"server:     {line.decode('ascii', 'replace')}  (never executed)")
        # The client's next bytes must be a TLS handshake record.  The server
        # reads them to check; they are the start of the new layer, so they
        # are handed to it explicitly.
        first = await reader.read(65536)
        if not first:
            print("server: the client went away instead of starting TLS")
            return False
        if first[:1] != b"\x16":
            writer.write(b"554 5.7.0 TLS handshake expected\r\n")
            return False
        layer = await writer.start_tls(self.context, initial_bytes=first)
        print(
            f"server: TLS up ({layer.version}); the {len(first)} handshake bytes read "
            "ahead were given to the new layer as initial_bytes"
        )
        return True


# -- the client -----------------------------------------------------------------


async def reply(reader: asyncio.StreamReader) -> str:
    """One SMTP reply (multi-line replies have '-' after the code)."""
    lines = []
    while True:
        line = (await reader.readline()).decode().rstrip("\r\n")
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line)
        if line[3:4] != "-":
            return " | ".join(lines)


async def send_mail(port: int) -> None:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    reader, writer = await onion_tls.open_connection("127.0.0.1", port)
    try:
        print(f"client: {await reply(reader)}")
        writer.write(b"EHLO client.example\r\n")
        print(f"client: {await reply(reader)}")
        writer.write(b"STARTTLS\r\n")
        print(f"client: {await reply(reader)}")
        try:
            layer = await writer.start_tls(context, server_hostname="mail.example")
        except onion_tls.LayerStateError as exc:
            # Bytes came behind the 220, in plaintext: a real server sends
            # nothing there.  Taking them as TLS replies is the bug; refuse.
            print(f"client: refused to start TLS: {exc.reason.split(';')[0]}")
            print(f"client: (those bytes were {writer.take_buffered()!r})")
            return
        print(f"client: TLS up with mail.example ({layer.version}, {layer.cipher})")
        for command in (b"EHLO client.example", b"MAIL FROM:<alice@example.org>"):
            writer.write(command + b"\r\n")
            print(f"client: {await reply(reader)}")
        writer.write(b"RCPT TO:<bob@example.net>\r\nQUIT\r\n")
        print(f"client: {await reply(reader)}")
        print(f"client: {await reply(reader)}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, onion_tls.OnionError):
            pass


# -- a man in the middle, for runs 2 and 3 -----------------------------------


class ManInTheMiddle:
    """Relays bytes, and once appends ``payload`` right behind ``marker``
    in the direction ``towards`` ("server" or "client")."""

    def __init__(self, target_port: int, towards: str, marker: bytes, payload: bytes) -> None:
        self.target_port = target_port
        self.towards = towards
        self.marker = marker
        self.payload = payload

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self.pipe(reader, up_writer, self.towards == "server"),
            self.pipe(up_reader, writer, self.towards == "client"),
        )

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inject: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if inject and self.marker in data:
                    at = data.index(self.marker)
                    end = data.index(b"\n", at) + 1
                    data = data[:end] + self.payload + data[end:]  # one write, one segment
                    inject = False
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


# -- the three runs -----------------------------------------------------------


async def run(title: str, server: MailServer, mitm: ManInTheMiddle | None) -> None:
    print(f"\n=== {title}")
    handlers: set[asyncio.Task[None]] = set()

    def spawn(handler: Handler) -> Handler:
        # Keeps each connection's task, so the run can wait for it to end.
        async def cb(reader: asyncio.StreamReader, writer: Any) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            await handler(reader, writer)

        return cb

    smtp = await onion_tls.start_server(spawn(server.handle), "127.0.0.1", 0)
    port = smtp.sockets[0].getsockname()[1]
    servers = [smtp]
    if mitm is not None:
        mitm.target_port = port
        middle = await asyncio.start_server(spawn(mitm.handle), "127.0.0.1", 0)
        servers.append(middle)
        port = middle.sockets[0].getsockname()[1]
    try:
        await send_mail(port)
        await asyncio.wait_for(asyncio.gather(*handlers), 10)
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


async def main() -> None:
    honest = MailServer()
    await run("1. an honest client", honest, None)
    assert honest.accepted == ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>"]

    attacked = MailServer()
    injected = b"RSET\r\nMAIL FROM:<mallory@evil.example>\r\n"
    await run(
        "2. a man in the middle injects commands behind the client's STARTTLS",
        attacked,
        ManInTheMiddle(0, "server", b"STARTTLS", injected),
    )
    assert not any("mallory" in c for c in attacked.accepted), attacked.accepted
    print(f"server: executed only {attacked.accepted}")

    fooled = MailServer()
    await run(
        "3. a man in the middle injects a reply behind the server's 220",
        fooled,
        ManInTheMiddle(0, "client", b"220 2.0.0", b"250 2.1.0 Ok (injected)\r\n"),
    )
    assert fooled.accepted == []


if __name__ == "__main__":
    asyncio.run(main())
