"""Servers for the proxy tests, all on 127.0.0.1: a scriptable HTTP CONNECT
proxy, origins, and a runner for the real ``proxy.py`` package.

* :class:`ConnectProxy` - an asyncio CONNECT proxy, plain or TLS-terminating
  (asyncio's own TLS, so the far side of every hop is not onion_tls), with
  optional Basic authentication and scripted behaviour: a canned reply
  (403, 502, malformed, HTTP/1.0, 1xx then 200, bare LF, huge), closing or
  stalling after the request, bytes sent right behind the reply, the reply
  dribbled one byte at a time, or the reply held back until the upstream
  has spoken (so both leave in one write).
* :func:`echo_origin` - an origin that answers each line with ``echo: line``,
  over TLS (asyncio's) or in plain text with a banner first.
* :func:`silent_server` - accepts and never says anything (a stalled TLS
  proxy).
* :class:`ProxyPy` - ``python -m proxy`` (the ``proxy.py`` package) in a
  subprocess of its own, plain or serving TLS, with ``--basic-auth``.

Every server is an async context manager that closes every connection it
made when it exits, so tests leave no transport or task behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import trustme

OK_REPLY = b"HTTP/1.1 200 Connection established\r\n\r\n"
Mode = Literal["tunnel", "close", "stall"]


@dataclass
class Seen:
    """One CONNECT request as the kit's proxy received it."""

    request_line: str
    headers: dict[str, str]
    credentials: tuple[str, str] | None


@dataclass
class _Conns:
    """The connections and tasks a server owns, closed on exit."""

    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def track(self, *writers: asyncio.StreamWriter) -> None:
        self.writers.update(writers)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)

    async def close(self) -> None:
        for w in self.writers:
            w.transport.abort()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        self.writers.clear()


async def _server_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext) -> bool:
    """Be the TLS server on an accepted connection (asyncio's TLS): what
    ``StreamWriter.start_tls`` does, plus one check.

    Not ``start_server(ssl=...)``: in debug mode asyncio reports every failed
    accept handshake to the loop's exception handler, which the suite treats
    as a failure, and several tests make the client give up on purpose.
    Not ``StreamWriter.start_tls`` itself: when the peer leaves during the
    handshake, ``loop.start_tls`` returns ``None`` (Python 3.11-3.13) and the
    writer would be left with no transport.

    Returns False when the handshake failed: the socket is closed then, and
    its protocol is asyncio's TLS one, so the writer must not wait for a
    close it will never be told of.
    """
    loop = asyncio.get_running_loop()
    transport = writer.transport
    protocol = transport.get_protocol()
    assert isinstance(protocol, asyncio.StreamReaderProtocol)
    try:
        new = await loop.start_tls(
            transport, protocol, context, server_side=True, ssl_handshake_timeout=10
        )
    except (TimeoutError, OSError, ssl.SSLError):
        return False
    if new is None:
        transport.abort()
        return False
    # The two private steps of StreamWriter.start_tls (asyncio/streams.py).
    writer._transport = new  # type: ignore[attr-defined]
    protocol._replace_writer(writer)  # type: ignore[attr-defined]
    return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()


class ConnectProxy:
    """A CONNECT proxy for the suite.

    Args:
      tls: serve TLS (a server ``ssl.SSLContext``) instead of plain TCP.
      auth: require Basic authentication with this (user, password).
      mode: ``tunnel`` (reply, then relay), ``close`` (read the request,
        close without a word), ``stall`` (read the request, never answer).
      reply: the raw reply to send instead of ``200 Connection
        established``; with ``tunnel=False`` the connection is closed after
        it (a refusal).
      tunnel: relay after ``reply``.
      after_reply: bytes sent in the same write, right behind the reply.
      dribble: send the reply one byte per write.
      coalesce: hold the reply until the upstream's first bytes and send
        both in one write.
    """

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        mode: Mode = "tunnel",
        reply: bytes | None = None,
        tunnel: bool = True,
        after_reply: bytes = b"",
        dribble: bool = False,
        coalesce: bool = False,
    ) -> None:
        self.tls = tls
        self.auth = auth
        self.mode = mode
        self.reply = reply
        self.tunnel = tunnel
        self.after_reply = after_reply
        self.dribble = dribble
        self.coalesce = coalesce
        self.seen: list[Seen] = []
        #: client connections that have ended
        self.ended = 0
        self._ended = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns = _Conns()
        self._stop = asyncio.Event()

    def url(self, userinfo: str = "") -> str:
        scheme = "https" if self.tls is not None else "http"
        at = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{at}127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._stop.set()
        self._server.close()
        await self._conns.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.track(writer)
        try:
            if self.tls is not None and not await _server_tls(writer, self.tls):
                return
            await self._serve_and_close(reader, writer)
        finally:
            self.ended += 1
            self._ended.set()

    async def wait_ended(self, count: int) -> None:
        """Wait until ``count`` client connections have ended."""
        while self.ended < count:
            self._ended.clear()
            await asyncio.wait_for(self._ended.wait(), 10)

    async def _serve_and_close(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await self._serve(reader, writer)
        except (
            TimeoutError,
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        if not first.isalpha():
            # Not HTTP (a ClientHello to a plain proxy): answer as servers do.
            writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        head = (first + await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        creds = _basic(headers.get("proxy-authorization"))
        self.seen.append(Seen(request_line, headers, creds))
        if self.auth is not None and creds != self.auth:
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="kit"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        if self.mode == "close":
            return
        if self.mode == "stall":
            # Never answer; notice the client leaving (or the kit closing).
            left = asyncio.ensure_future(reader.read())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([left, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in (left, stop):
                t.cancel()
            await asyncio.wait([left, stop])
            return
        if self.reply is not None and not self.tunnel:
            await self._send_reply(writer, self.reply + self.after_reply)
            return
        method, target, _version = request_line.split(" ")
        assert method == "CONNECT", request_line
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        self._conns.track(up_writer)
        try:
            reply = (self.reply if self.reply is not None else OK_REPLY) + self.after_reply
            if self.coalesce:
                reply += await asyncio.wait_for(up_reader.read(65536), 5)
            await self._send_reply(writer, reply)
            # Either direction ending ends the tunnel.
            relay = [
                asyncio.ensure_future(_pipe(reader, up_writer)),
                asyncio.ensure_future(_pipe(up_reader, writer)),
            ]
            try:
                await asyncio.wait(relay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in relay:
                    t.cancel()
                await asyncio.wait(relay)
        finally:
            await _close(up_writer)

    async def _send_reply(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not self.dribble:
            writer.write(data)
            await writer.drain()
            return
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)


def _basic(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    scheme, _, b64 = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    user, _, password = base64.b64decode(b64).decode().partition(":")
    return user, password


# -- origins ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_origin(
    tls: ssl.SSLContext | None = None, *, banner: bytes = b""
) -> AsyncIterator[int]:
    """An origin answering each line with ``echo: line``; ``banner`` is sent
    first (a server that speaks first).  Yields its port."""
    conns = _Conns()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.track(writer)
        if tls is not None and not await _server_tls(writer, tls):
            return
        try:
            if banner:
                writer.write(banner)
            while line := await reader.readline():
                writer.write(b"echo: " + line)
                await writer.drain()
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            await _close(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await conns.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never sends a byte.  Yields its port."""
    conns = _Conns()
    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.track(writer)
        try:
            await stop.wait()
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        stop.set()
        server.close()
        await conns.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def closed_port() -> AsyncIterator[int]:
    """A port on 127.0.0.1 where nothing listens (bound, never listening)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


def server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    return ctx


# -- proxy.py -----------------------------------------------------------------------


class ProxyPy:
    """The ``proxy.py`` package's server, ``python -m proxy``, in its own
    process group on 127.0.0.1 (port chosen by the system).

    Args:
      workdir: where its port file, log and certificate files go.
      leaf: serve TLS with this certificate (``--cert-file/--key-file``).
      basic_auth: ``"user:password"`` for ``--basic-auth``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        leaf: trustme.LeafCert | None = None,
        basic_auth: str | None = None,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        port_file = workdir / "port"
        self.log = workdir / "proxy.log"
        args = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-acceptors",
            "1",
            "--num-workers",
            "1",
            "--log-level",
            "WARNING",
            "--log-file",
            str(self.log),
        ]
        if leaf is not None:
            cert, key = workdir / "cert.pem", workdir / "key.pem"
            leaf.cert_chain_pems[0].write_to_path(str(cert))
            leaf.private_key_pem.write_to_path(str(key))
            args += ["--cert-file", str(cert), "--key-file", str(key)]
        if basic_auth is not None:
            args += ["--basic-auth", basic_auth]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"}
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            self.port = self._wait_listening(port_file)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, port_file: Path) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy.py exited: {self.log.read_text(errors='replace')}")
            text = port_file.read_text() if port_file.exists() else ""
            if text.endswith("\n"):
                port = int(text.split()[0])
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    return port
            time.sleep(0.05)
        raise RuntimeError("proxy.py did not start listening within 20 s")

    def url(self, userinfo: str = "", *, tls: bool) -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"{'https' if tls else 'http'}://{at}127.0.0.1:{self.port}"

    def stop(self) -> None:
        """End the process group this object started (proxy.py and its
        workers), then reap the process."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        # Workers that outlived it are in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
