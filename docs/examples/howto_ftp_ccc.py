"""How-to: FTP's CCC: TLS for the login, then plain text again on the same
control connection.

    python docs/examples/howto_ftp_ccc.py

The server is a few lines of FTP around ``ftp_serve_auth_tls`` and
``ftp_serve_ccc``; the client uses ``ftp_auth_tls`` and ``ftp_ccc``.
"""

from __future__ import annotations

import asyncio
import contextlib

import onion_tls
from onion_tls import starttls
from onion_tls.testing import OnionCA

CA = OnionCA()


async def ftp_server(reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
    try:
        await starttls.ftp_serve_auth_tls(reader, writer, CA.server_context(1))
        while line := await reader.readline():
            command = line.strip().decode()
            verb = command.split()[0].upper()
            if verb == "CCC":
                # 200 inside the layer, then close_notify both ways: plain text
                await starttls.ftp_serve_ccc(reader, writer)
            elif verb == "USER":
                writer.write(b"331 password please\r\n")
            elif verb == "PASS":
                writer.write(b"230 logged in\r\n")
            elif verb == "PWD":
                depth = len(writer.layers)
                writer.write(b'257 "/home/alice" (depth %d)\r\n' % depth)
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
    except (onion_tls.OnionError, ConnectionError) as exc:
        print(f"server: {exc}")
    finally:
        writer.close()


async def main() -> None:
    server = await onion_tls.start_server(ftp_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # [client]
    reader, writer = await onion_tls.open_connection("127.0.0.1", port)
    await starttls.ftp_auth_tls(reader, writer, CA.client_context(), server_hostname=CA.hostname(1))
    for command in (b"USER alice", b"PASS s3cret"):  # the password travels inside TLS
        writer.write(command + b"\r\n")
        print(f"[TLS]   {command.split()[0].decode()} -> {(await reader.readline()).strip()!r}")

    popped = await starttls.ftp_ccc(reader, writer)  # back to plain text
    print(f"CCC: layer {popped.depth} popped, layers now {writer.layers}")

    writer.write(b"PWD\r\n")  # the same reader and writer, in plain text now
    print(f"[plain] PWD -> {(await reader.readline()).strip()!r}")
    writer.write(b"QUIT\r\n")
    print(f"[plain] QUIT -> {(await reader.readline()).strip()!r}")
    # [/client]
    writer.close()
    with contextlib.suppress(ConnectionError, onion_tls.OnionError):
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
