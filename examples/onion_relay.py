"""A three-hop onion relay: the client wraps three TLS layers, each relay peels
exactly one and forwards the rest, the exit echoes.

    python examples/onion_relay.py

The circuit, all on 127.0.0.1, certificates made on the spot (trustme)::

    client ==L1==> relay1 ==L2==> relay2 ==L3==> relay3 --plain--> echo server
             L2,L3 inside L1  L3 inside L2

* The client opens TCP to relay1 and pushes layer 1 (TLS with relay1).
  Inside it, it asks relay1 to ``EXTEND`` to relay2; relay1 connects and from
  then on pipes bytes.  The client pushes layer 2 (TLS with relay2) inside
  layer 1, asks relay2 to extend to relay3, pushes layer 3 inside layer 2,
  and asks relay3 to extend to the echo server.
* Each relay terminates exactly one layer (it is a plain TLS server, written
  with ``onion_tls.start_server(ssl=...)``) and forwards what is inside: the
  records of the next layer, which it cannot read.
* Each relay records what it forwarded, to show it saw only its own layer:
  relay1 and relay2 pass on TLS records they cannot read; relay3, the exit
  relay, terminates the innermost layer and so sees what goes to the echo
  server (as a Tor exit does).

Layers 1 and 3 use the stdlib engine, layer 2 pyOpenSSL.
"""

from __future__ import annotations

import asyncio
import ssl

import trustme
from OpenSSL import SSL

import onion_tls

CA = trustme.CA()
SECRET = b"the quick brown fox, three layers deep"


class Relay:
    def __init__(self, name: str) -> None:
        self.name = name
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        CA.issue_cert(name).configure_cert(self.context)
        self.forwarded = bytearray()  # what it passed on towards the exit
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        # ssl=: layer 1 of each incoming connection is this relay's layer.
        server = await onion_tls.start_server(self.handle, "127.0.0.1", 0, ssl=self.context)
        self.server = server
        return int(server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: onion_tls.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            line = (await reader.readline()).decode().split()
            if len(line) != 3 or line[0] != "EXTEND":
                writer.write(b"ERROR expected EXTEND host port\n")
                return
            host, port = line[1], int(line[2])
            up_reader, up_writer = await asyncio.open_connection(host, port)
            print(f"{self.name}: peeled one TLS layer, extending to port {port}")
            writer.write(b"EXTENDED\n")
            await asyncio.gather(
                self.pipe(reader, up_writer, self.forwarded),
                self.pipe(up_reader, writer, None),
            )
        finally:
            writer.close()

    @staticmethod
    async def pipe(reader: asyncio.StreamReader, writer: object, tap: bytearray | None) -> None:
        assert isinstance(writer, (asyncio.StreamWriter, onion_tls.StreamWriter))
        try:
            while data := await reader.read(65536):
                if tap is not None:
                    tap += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, onion_tls.OnionError):
            pass
        finally:
            writer.close()

    def report(self) -> str:
        seen = self.forwarded
        readable = SECRET in seen
        kind = "TLS records" if seen[:1] in (b"\x16", b"\x17") else "plaintext"
        return (
            f"{self.name}: forwarded {len(seen)} bytes ({kind}, starting {seen[:3].hex(' ')}); "
            f"could read the message: {'yes' if readable else 'no'}"
        )

    async def stop(self) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), 10)
        self.server.close()
        await self.server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def client_context(engine: str) -> object:
    if engine == "pyopenssl":
        pctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        CA.configure_trust(pctx)
        return pctx
    sctx = ssl.create_default_context()
    CA.configure_trust(sctx)
    return sctx


async def build_circuit(
    relays: list[tuple[str, int]], exit_port: int
) -> tuple[asyncio.StreamReader, onion_tls.StreamWriter]:
    (first_name, first_port), *rest = relays
    reader, writer = await onion_tls.open_connection(
        "127.0.0.1", first_port, ssl=client_context("stdlib"), server_hostname=first_name
    )
    print(f"client: layer 1 up with {first_name}")
    hops = [*rest, ("exit", exit_port)]
    for depth, (name, port) in enumerate(hops, start=2):
        writer.write(b"EXTEND 127.0.0.1 %d\n" % port)
        assert await reader.readline() == b"EXTENDED\n"
        if name == "exit":
            break
        engine = "pyopenssl" if depth == 2 else "stdlib"
        layer = await writer.start_tls(client_context(engine), server_hostname=name)
        print(f"client: layer {layer.depth} up with {name} inside layer {depth - 1} ({engine})")
    return reader, writer


async def main() -> None:
    exit_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    exit_port = exit_server.sockets[0].getsockname()[1]
    relays = [Relay(f"relay{i}.example") for i in (1, 2, 3)]
    ports = [await relay.start() for relay in relays]

    reader, writer = await build_circuit(
        [(r.name, p) for r, p in zip(relays, ports, strict=True)], exit_port
    )
    print(f"client: circuit built, {len(writer.layers)} layers: ", end="")
    print(", ".join(f"{layer.depth}:{layer.engine}/{layer.version}" for layer in writer.layers))
    writer.write(SECRET + b"\n")
    answer = await reader.readline()
    print(f"client: the exit echoed {answer.rstrip().decode()!r}")
    writer.close()  # close_notify on layer 3, then 2, then 1
    await writer.wait_closed()

    for relay in relays:
        await relay.stop()
    exit_server.close()
    await exit_server.wait_closed()
    for relay in relays:
        print(relay.report())
    assert answer == SECRET + b"\n"
    assert [SECRET in r.forwarded for r in relays] == [False, False, True]


if __name__ == "__main__":
    asyncio.run(main())
