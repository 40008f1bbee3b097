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
made when it exits, so tests leave no transport or task behind.  The servers
are written on asyncio's public protocol API (:class:`_Conn`), with no stream
internals, so they behave the same on every Python the suite runs on.
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
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trustme

OK_REPLY = b"HTTP/1.1 200 Connection established\r\n\r\n"
Mode = Literal["tunnel", "close", "stall"]


@dataclass
class Seen:
    """One CONNECT request as the kit's proxy received it."""

    request_line: str
    headers: dict[str, str]
    credentials: tuple[str, str] | None


class _Conn(asyncio.Protocol):
    """One connection of the kit's servers, on asyncio's public protocol API
    only (``loop.create_server``/``create_connection``/``start_tls``, no
    stream internals): a read buffer with the ``StreamReader`` calls the kit
    uses, flow-controlled writes, and server-side TLS by ``loop.start_tls``
    (asyncio's TLS).

    Not ``asyncio.start_server`` with ``StreamWriter.start_tls``: when the
    peer leaves during the handshake ``loop.start_tls`` returns ``None``
    (Python 3.11-3.13) and the writer would be left with no transport, and
    replacing the transport by hand needs private stream internals, which
    changed in Python 3.13 (``StreamReaderProtocol._replace_writer`` became
    ``_replace_transport``).  Not ``start_server(ssl=...)`` either: in debug
    mode asyncio reports every failed accept handshake to the loop's
    exception handler, which the suite treats as a failure, and several
    tests make the client give up on purpose.
    """

    #: the longest head ``readuntil`` looks through (as StreamReader's limit)
    LIMIT = 2**16

    def __init__(self, handler: Callable[[_Conn], Coroutine[Any, Any, None]] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._handler = handler
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._handler is not None:
            self.task = self._loop.create_task(self._handler(self))
            self.task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        # A handler that fails reaches the loop's exception handler (so the
        # test fails), as with asyncio.start_server's callback (3.12+).
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.abort()
            self._loop.call_exception_handler(
                {"message": "proxy_kit: unhandled exception in a handler", "exception": exc}
            )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Plain TCP: keep the write side open (half-close), as asyncio's
        # streams do; over TLS asyncio ignores the answer.
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()
        self._gone()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_drains()

    # -- internals
    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    def _release_drains(self) -> None:
        for w in self._drain_waiters:
            if not w.done():
                w.set_result(None)

    def _gone(self) -> None:
        self._eof = True
        self._release_drains()
        if not self._closed.done():
            self._closed.set_result(None)

    async def _wait_data(self) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            return
        self._data_waiter = self._loop.create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None
        if self._error is not None:
            raise self._error

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    # -- TLS
    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """Be the TLS server on this connection.  Returns False when the
        handshake failed: the socket is closed then, and this protocol is
        never told so (asyncio's TLS protocol keeps ``connection_lost`` to
        itself during the handshake), so it marks itself closed."""
        assert self.transport is not None
        try:
            new = await self._loop.start_tls(
                self.transport, self, context, server_side=True, ssl_handshake_timeout=10
            )
        except (TimeoutError, OSError, ssl.SSLError):
            self._gone()
            return False
        if new is None:  # the peer left during the handshake
            self.transport.abort()
            self._gone()
            return False
        self.transport = new
        self.tls = True
        return True

    # -- reading (StreamReader's semantics)
    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            while not self._eof:
                await self._wait_data()
            return self._take(len(self._buffer))
        while not self._buffer and not self._eof:
            await self._wait_data()
        if self._error is not None:
            raise self._error
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), n)
            await self._wait_data()
        return self._take(n)

    async def readuntil(self, separator: bytes) -> bytes:
        while True:
            at = self._buffer.find(separator)
            if at >= 0:
                return self._take(at + len(separator))
            if len(self._buffer) > self.LIMIT:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", len(self._buffer)
                )
            if self._eof:
                raise asyncio.IncompleteReadError(self._take(len(self._buffer)), None)
            await self._wait_data()

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    # -- writing and closing (StreamWriter's semantics)
    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            # Let connection_lost run, so a write loop sees the loss.
            await asyncio.sleep(0)
        if self._error is not None:
            raise self._error
        if self._closed.done():
            raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            self._drain_waiters.remove(waiter)
        if self._closed.done():
            raise ConnectionResetError("Connection lost")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


@dataclass
class _Conns:
    """The connections (and their handlers' tasks) a server owns, closed on
    exit."""

    conns: set[_Conn] = field(default_factory=set)

    def factory(self, handler: Callable[[_Conn], Coroutine[Any, Any, None]]) -> Callable[[], _Conn]:
        """A protocol factory for ``loop.create_server``: each accepted
        connection runs ``handler(conn)`` in a task of its own."""

        def make() -> _Conn:
            conn = _Conn(handler)
            self.conns.add(conn)
            return conn

        return make

    async def connect(self, host: str, port: int) -> _Conn:
        """A plain TCP connection out, closed on exit like the rest."""
        _, conn = await asyncio.get_running_loop().create_connection(_Conn, host, port)
        self.conns.add(conn)
        return conn

    async def close(self) -> None:
        for c in self.conns:
            c.abort()
        tasks = {c.task for c in self.conns if c.task is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        self.conns.clear()


async def _serve(
    conns: _Conns, handler: Callable[[_Conn], Coroutine[Any, Any, None]]
) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(conns.factory(handler), "127.0.0.1", 0)


async def _close(conn: _Conn) -> None:
    conn.close()
    with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
        await asyncio.wait_for(conn.wait_closed(), 2)


async def _pipe(src: _Conn, dst: _Conn) -> None:
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
        self._server = await _serve(self._conns, self._handle)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._stop.set()
        self._server.close()
        await self._conns.close()
        await self._server.wait_closed()

    async def _handle(self, conn: _Conn) -> None:
        try:
            if self.tls is not None and not await conn.start_tls(self.tls):
                return
            await self._serve_and_close(conn)
        finally:
            self.ended += 1
            self._ended.set()

    async def wait_ended(self, count: int) -> None:
        """Wait until ``count`` client connections have ended."""
        while self.ended < count:
            self._ended.clear()
            await asyncio.wait_for(self._ended.wait(), 10)

    async def _serve_and_close(self, conn: _Conn) -> None:
        try:
            await self._serve(conn)
        except (
            TimeoutError,
            OSError,
            ssl.SSLError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            await _close(conn)

    async def _serve(self, conn: _Conn) -> None:
        first = await conn.readexactly(1)
        if not first.isalpha():
            # Not HTTP (a ClientHello to a plain proxy): answer as servers do.
            conn.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
            return
        head = (first + await conn.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        creds = _basic(headers.get("proxy-authorization"))
        self.seen.append(Seen(request_line, headers, creds))
        if self.auth is not None and creds != self.auth:
            conn.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="kit"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        if self.mode == "close":
            return
        if self.mode == "stall":
            # Never answer; notice the client leaving (or the kit closing).
            left = asyncio.ensure_future(conn.read())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([left, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in (left, stop):
                t.cancel()
            await asyncio.wait([left, stop])
            return
        if self.reply is not None and not self.tunnel:
            await self._send_reply(conn, self.reply + self.after_reply)
            return
        method, target, _version = request_line.split(" ")
        assert method == "CONNECT", request_line
        host, _, port = target.rpartition(":")
        try:
            up = await self._conns.connect(host.strip("[]"), int(port))
        except OSError:
            conn.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            reply = (self.reply if self.reply is not None else OK_REPLY) + self.after_reply
            if self.coalesce:
                reply += await asyncio.wait_for(up.read(65536), 5)
            await self._send_reply(conn, reply)
            # Either direction ending ends the tunnel.
            relay = [
                asyncio.ensure_future(_pipe(conn, up)),
                asyncio.ensure_future(_pipe(up, conn)),
            ]
            try:
                await asyncio.wait(relay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for r in relay:
                    r.cancel()
                await asyncio.wait(relay)
        finally:
            await _close(up)

    async def _send_reply(self, conn: _Conn, data: bytes) -> None:
        if not self.dribble:
            conn.write(data)
            await conn.drain()
            return
        for i in range(len(data)):
            conn.write(data[i : i + 1])
            await conn.drain()
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

    async def handle(conn: _Conn) -> None:
        if tls is not None and not await conn.start_tls(tls):
            return
        try:
            if banner:
                conn.write(banner)
            while line := await conn.readline():
                conn.write(b"echo: " + line)
                await conn.drain()
        except (TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            await _close(conn)

    server = await _serve(conns, handle)
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

    async def handle(conn: _Conn) -> None:
        try:
            await stop.wait()
        finally:
            conn.abort()

    server = await _serve(conns, handle)
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
