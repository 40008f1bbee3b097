"""A peer written with trio's SSLStream, for interoperability tests.

It connects to (or accepts from) an onion_tls application and follows a
line protocol in lockstep, nesting one ``trio.SSLStream`` per ``STARTTLS``
and unwrapping with ``SSLStream.unwrap()`` on ``UNWRAP``:

    STARTTLS d -> GO d, then a TLS layer (our role from --roles)
    PING d     -> PONG d <tls version>
    UNWRAP d   -> BYE d, then unwrap() (close_notify both ways)
    QUIT       -> close

Usage: trio_peer.py (--listen | --connect PORT) --roles s,c,... --dir CERTDIR
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

import trio


class Lines:
    def __init__(self, stream: trio.abc.Stream, buffered: bytes = b"") -> None:
        self.stream = stream
        self.buf = bytearray(buffered)

    async def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(f"EOF, buffered {bytes(self.buf)!r}")
            self.buf += data
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf[:] = rest
        return line

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


def context(role: str, depth: int, certdir: Path) -> ssl.SSLContext:
    if role == "s":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certdir / f"layer{depth}.pem")
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(certdir / "ca.pem")
    return ctx


async def serve(stream: trio.abc.Stream, roles: list[str], certdir: Path) -> None:
    stack: list[trio.abc.Stream] = [stream]
    lines = Lines(stream)
    while True:
        words = (await lines.line()).split()
        cmd, arg = words[0], int(words[1]) if len(words) > 1 else 0
        if cmd == b"STARTTLS":
            assert arg == len(stack), (arg, len(stack))
            await lines.send(b"GO %d\n" % arg)
            assert not lines.buf, "lockstep: nothing may follow STARTTLS"
            role = roles[arg - 1]
            tls = trio.SSLStream(
                stack[-1],
                context(role, arg, certdir),
                server_side=role == "s",
                server_hostname=None if role == "s" else f"layer{arg}.onion.test",
                https_compatible=False,
            )
            await tls.do_handshake()
            stack.append(tls)
            lines = Lines(tls)
        elif cmd == b"PING":
            assert arg == len(stack) - 1, (arg, len(stack))
            top = stack[-1]
            version = top.version() if isinstance(top, trio.SSLStream) else "plaintext"
            await lines.send(b"PONG %d %s\n" % (arg, str(version).encode()))
        elif cmd == b"UNWRAP":
            assert arg == len(stack) - 1
            await lines.send(b"BYE %d\n" % arg)
            top = stack.pop()
            assert isinstance(top, trio.SSLStream)
            beneath, trailing = await top.unwrap()
            assert beneath is stack[-1]
            lines = Lines(beneath, bytes(lines.buf) + trailing)
        elif cmd == b"QUIT":
            await stack[0].aclose()
            return
        else:
            raise AssertionError(f"unknown command {cmd!r}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="store_true")
    ap.add_argument("--connect", type=int)
    ap.add_argument("--roles", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    roles = args.roles.split(",")
    if args.listen:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        print(port, flush=True)
        stream = await listeners[0].accept()
        await listeners[0].aclose()
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", args.connect)
    await serve(stream, roles, args.dir)
    print("trio peer: done", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main)
    except Exception as exc:  # report to the test, which shows stderr
        print(f"trio peer failed: {exc!r}", file=sys.stderr, flush=True)
        raise
