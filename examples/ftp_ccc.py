"""FTP's CCC, "Clear Command Channel" (RFC 4217): TLS up, log in, back to
plaintext, TLS up again, all on one connection.

    python examples/ftp_ccc.py

An FTP client protects its login with ``AUTH TLS``, then sends ``CCC`` so
that the rest of the control channel is plaintext again (a NAT or firewall
on the way can then read the ``PORT``/``PASV`` commands).  That needs an
*unwrap*: both sides exchange close_notify and carry on, in plaintext, on
the same TCP connection.  asyncio's own TLS cannot unwrap; here it is
``await writer.stop_tls()``.

The example runs a small FTP-like server, a client, and a wire tap between
them that records every byte, to show what crossed the network in clear.
The second ``AUTH TLS`` resumes the first TLS session.
"""

from __future__ import annotations

import asyncio
import ssl

import trustme

import onion_tls

CA = trustme.CA()
SERVER_CERT = CA.issue_cert("ftp.example")
PASSWORD = "correct horse battery staple"


# -- the server -----------------------------------------------------------------


class FTPServer:
    def __init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        SERVER_CERT.configure_cert(self.context)
        self.done = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        try:
            await self.session(reader, writer)
        finally:
            writer.close()
            self.done.set_result(None)

    async def session(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        user = None
        logged_in = False
        writer.write(b"220 ftp.example ready\r\n")
        while line := await reader.readline():
            command, _, arg = line.rstrip(b"\r\n").decode().partition(" ")
            command = command.upper()
            tls = bool(writer.layers)
            if command == "AUTH" and arg == "TLS" and not tls:
                writer.write(b"234 AUTH TLS ok, start the handshake\r\n")
                await writer.start_tls(self.context)
            elif command in ("USER", "PASS") and not tls:
                writer.write(b"534 Log in inside TLS (AUTH TLS first)\r\n")
            elif command == "USER":
                user = arg
                writer.write(b"331 Password required\r\n")
            elif command == "PASS":
                logged_in = user == "alice" and arg == PASSWORD
                writer.write(b"230 Logged in\r\n" if logged_in else b"530 Login incorrect\r\n")
            elif command == "CCC" and tls and logged_in:
                # The reply goes inside TLS; then our close_notify.  The
                # stop resolves when the client's close_notify answers.
                writer.write(b"200 CCC ok, the command channel is plaintext now\r\n")
                await writer.stop_tls()
            elif not logged_in:
                writer.write(b"530 Not logged in\r\n")
            elif command == "PWD":
                writer.write(b'257 "/home/alice" is the current directory\r\n')
            elif command == "QUIT":
                writer.write(b"221 Goodbye\r\n")
                return
            else:
                writer.write(b"502 Command not implemented\r\n")


# -- the client -----------------------------------------------------------------


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.context = ssl.create_default_context()
        CA.configure_trust(self.context)

    async def command(self, text: str) -> str:
        self.writer.write(text.encode() + b"\r\n")
        reply = (await self.reader.readline()).decode().rstrip()
        where = f"TLS, depth {len(self.writer.layers)}" if self.writer.layers else "plaintext"
        shown = "PASS ********" if text.startswith("PASS") else text
        print(f"client [{where:>16}]  {shown:<24} -> {reply}")
        return reply

    async def auth_tls(self, session: object = None) -> onion_tls.TLSLayer:
        assert (await self.command("AUTH TLS")).startswith("234")
        layer = await self.writer.start_tls(
            self.context, server_hostname="ftp.example", session=session
        )
        print(
            f"client: TLS up ({layer.version}), session resumed: "
            f"{'yes' if layer.session_reused else 'no'}"
        )
        return layer

    async def ccc(self) -> None:
        assert (await self.command("CCC")).startswith("200")
        # The server has sent its close_notify: for the reader, that is the
        # end of the TLS session's data (an EOF), not of the connection.
        popped = await self.writer.stop_tls()
        print(f"client: layer {popped.depth} unwrapped; layers now {self.writer.layers}")


async def session(port: int) -> None:
    reader, writer = await onion_tls.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    print(f"client: {(await reader.readline()).decode().rstrip()}")
    first = await client.auth_tls()
    await client.command("USER alice")
    assert (await client.command(f"PASS {PASSWORD}")).startswith("230")
    await client.ccc()
    await client.command("PWD")  # still logged in: same connection, same session
    await client.auth_tls(session=first.session)
    await client.command("PWD")
    await client.command("QUIT")
    writer.close()
    await writer.wait_closed()


# -- a wire tap between them ------------------------------------------------------


class WireTap:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.wire = bytearray()  # both directions, as they crossed the network

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self.pipe(reader, up_writer), self.pipe(up_reader, writer))

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.wire += data
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def seen(self, text: str) -> str:
        return "yes" if text.encode() in self.wire else "no"


async def main() -> None:
    server = FTPServer()
    ftp = await onion_tls.start_server(server.handle, "127.0.0.1", 0)
    tap = WireTap(ftp.sockets[0].getsockname()[1])
    tap_tasks: set[asyncio.Task[None]] = set()

    async def tapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tap_tasks.add(task)
        await tap.handle(reader, writer)

    middle = await asyncio.start_server(tapped, "127.0.0.1", 0)
    try:
        await session(middle.sockets[0].getsockname()[1])
        await asyncio.wait_for(asyncio.gather(server.done, *tap_tasks), 10)
    finally:
        for s in (middle, ftp):
            s.close()
            await s.wait_closed()
    print(f"tap: the password crossed the wire in clear: {tap.seen(PASSWORD)}")
    print(f"tap: 'USER alice' crossed the wire in clear: {tap.seen('USER alice')}")
    print(f"tap: 'PWD' after CCC crossed the wire in clear: {tap.seen('PWD')}")
    assert tap.seen(PASSWORD) == "no" and tap.seen("PWD") == "yes"


if __name__ == "__main__":
    asyncio.run(main())
