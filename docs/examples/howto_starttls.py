"""How-to: STARTTLS in one call, for SMTP, IMAP, POP3, FTP and PostgreSQL.

    python docs/examples/howto_starttls.py

For each protocol, a server on 127.0.0.1 runs the server helper of
``onion_tls.starttls`` and the client runs the client helper; then both
talk inside the new layer.  Last, a server that refuses the upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import onion_tls
from onion_tls import starttls
from onion_tls.testing import OnionCA

CA = OnionCA()
Helper = Callable[..., Awaitable[onion_tls.TLSLayer]]

# protocol -> (client helper, server helper)
HELPERS: dict[str, tuple[Helper, Helper]] = {
    "smtp": (starttls.smtp_starttls, starttls.smtp_serve_starttls),
    "imap": (starttls.imap_starttls, starttls.imap_serve_starttls),
    "pop3": (starttls.pop3_stls, starttls.pop3_serve_stls),
    "ftp": (starttls.ftp_auth_tls, starttls.ftp_serve_auth_tls),
    "postgres": (starttls.postgres_ssl_request, starttls.postgres_serve_ssl_request),
}


async def upgrade(protocol: str) -> None:
    client_helper, server_helper = HELPERS[protocol]

    # [server]
    async def serve(reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        try:
            await server_helper(reader, writer, CA.server_context(1))
            # From here on, the conversation is inside TLS and is yours.
            writer.write(b"secret: " + await reader.readline())
            await writer.drain()
        except (onion_tls.OnionError, ConnectionError) as exc:
            print(f"  server: {exc}")
        finally:
            writer.close()

    # [/server]

    server = await onion_tls.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # [client]
        reader, writer = await onion_tls.open_connection("127.0.0.1", port)
        layer = await client_helper(
            reader, writer, CA.client_context(), server_hostname=CA.hostname(1)
        )
        writer.write(b"hello\n")  # inside the new layer
        answer = await reader.readline()
        # [/client]
        print(f"{protocol}: layer {layer.depth} {layer.version}, server answered {answer!r}")
        writer.close()
        with contextlib.suppress(ConnectionError, onion_tls.OnionError):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def refused() -> None:
    async def no_tls(reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        writer.write(b"220 mail.example ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-mail.example\r\n250 STARTTLS\r\n")
        await reader.readline()  # STARTTLS
        writer.write(b"454 4.7.0 TLS not available due to temporary reason\r\n")
        await reader.readline()  # QUIT
        writer.close()

    server = await onion_tls.start_server(no_tls, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # [refused]
    reader, writer = await onion_tls.open_connection("127.0.0.1", port)
    try:
        # starttls() picks the helper by name, as `openssl s_client -starttls smtp`
        await starttls.starttls("smtp", reader, writer, CA.client_context())
    except starttls.StartTLSRefusedError as exc:
        print(f"refused: {exc.reply}")  # the server's reply, quoted
        writer.write(b"QUIT\r\n")  # still a working plaintext connection
    finally:
        writer.close()
    # [/refused]
    with contextlib.suppress(ConnectionError, onion_tls.OnionError):
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def main() -> None:
    for protocol in HELPERS:
        await upgrade(protocol)
    await refused()


if __name__ == "__main__":
    asyncio.run(main())
