"""Twisted's ``TLSMemoryBIOProtocol`` (pyOpenSSL), on Twisted's default
reactor: the peer that gathers small writes (``BufferingTLSTransport``
joins the writes of one reactor iteration, up to 64 KB, into one TLS
write).

Layers: the first is a ``TLSMemoryBIOFactory`` around the application's
factory, as Twisted applications do.  A layer inside another is a
``TLSMemoryBIOProtocol`` wrapped by the one outside it (Twisted's way of
stacking TLS): it is built and connected to the outer one (its transport)
when the server's ``R`` has arrived inside the outer layer, and from then
on the outer layer hands its plaintext straight to it (the outer
``TLSMemoryBIOProtocol``'s ``wrappedProtocol`` becomes the inner one, as if
the factories had been nested from the start).

* contexts: ``optionsForClientTLS`` (Twisted's hostname check with
  service_identity, SNI) and ``CertificateOptions`` for the servers, raised
  and capped to TLS 1.3, their pyOpenSSL contexts pinned to
  TLS_AES_256_GCM_SHA384 and X25519 like every other implementation's;
* server: sink answers ``K`` when a ``dataReceived`` ends in the 1 byte,
  echo ``write``s back what it receives (its buffering is bounded by the
  client's 1 MiB window), pingpong too (over a TCP_NODELAY socket),
  handshake and idle do nothing;
* client: the measurements of ``workloads.py`` written for Twisted: the
  application is a streaming producer registered on the innermost layer,
  writes ``batch`` chunks per reactor iteration while not paused;
  coroutines over Deferreds, the reactor in a thread of the client worker
  (it cannot be restarted between commands); the pingpong client writes
  each next byte from ``dataReceived``, TCP_NODELAY set on its socket.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet import reactor as _reactor
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer  # type: ignore[import-untyped]

from .cells import CIPHER, Cell, hostname
from .common import (
    BATCH,
    CLOSE_TIMEOUT,
    ECHO_WINDOW,
    HOST,
    MAX_HANDSHAKES,
    PING,
    Meter,
    same_key_exchange,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["TwistedClient", "TwistedServer"]

reactor: Any = _reactor  # the default reactor (epoll on Linux)

_TLS13 = {"raiseMinimumTo": TLSVersion.TLSv1_3, "lowerMaximumSecurityTo": TLSVersion.TLSv1_3}


def _pin(ctx: Any) -> None:
    """The suite and key exchange every implementation uses."""
    ctx.set_tls13_ciphersuites(CIPHER.encode())
    same_key_exchange(ctx)


def _client_creator(certs: Path, depth: int) -> Any:
    ca = Certificate.loadPEM((certs / "ca.pem").read_bytes())
    creator = optionsForClientTLS(hostname(depth), trustRoot=ca, extraCertificateOptions=_TLS13)
    # The CertificateOptions that optionsForClientTLS made (its context is
    # made once and shared by every connection): this module's only use of
    # a Twisted private attribute.
    _pin(creator._createConnection.__self__.getContext())
    return creator


def _server_creator(certs: Path, depth: int) -> Any:
    load: Any = PrivateCertificate.loadPEM  # (not annotated)
    identity = load((certs / f"server{depth}.pem").read_bytes())
    options = CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original, **_TLS13
    )
    _pin(options.getContext())
    return options


def _splice(outer: Any, inner_factory: Any) -> None:
    """Put a new TLS layer, made by ``inner_factory``, inside ``outer``
    (a ``TLSMemoryBIOProtocol`` whose handshake is done): ``outer`` is its
    transport and hands it all the plaintext from now on."""
    inner = inner_factory.buildProtocol(outer.getPeer())
    outer.wrappedProtocol = inner
    inner.makeConnection(outer)


# -- server ----------------------------------------------------------------------------


class _Sink(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data[-1] == 1:
            transport: Any = self.transport
            transport.write(b"K")


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        transport.write(data)


class _Pong(_Echo):
    """Writes back the 1 byte that arrives, over a TCP_NODELAY socket
    (Twisted leaves Nagle on; ``setTcpNoDelay`` reaches the TCP transport
    through the layers, each forwarding what it lacks to its transport)."""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.setTcpNoDelay(True)


class _Idle(Protocol):
    pass


_SERVER_APPS: dict[str, type[Protocol]] = {"sink": _Sink, "echo": _Echo, "pingpong": _Pong}


@implementer(IHandshakeListener)
class _Climb(Protocol):
    """Inside a server layer that is not the last: once its handshake is
    done, send ``R`` inside it and put the next layer in (one callback, so
    the client's next ClientHello finds it in place)."""

    def __init__(self, inner_factory: Any) -> None:
        self._inner_factory = inner_factory

    def handshakeCompleted(self) -> None:
        outer: Any = self.transport
        outer.write(b"R")
        _splice(outer, self._inner_factory)


class _ClimbFactory(Factory):
    def __init__(self, inner_factory: Any) -> None:
        self._inner_factory = inner_factory

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Climb(self._inner_factory)


class TwistedServer:
    def __init__(self, spec: dict[str, Any]) -> None:
        certs = Path(spec["certs"])
        self._creators = {d: _server_creator(certs, d) for d in range(1, spec["depths"] + 1)}

    def _factory(self, kind: str, depth: int) -> Any:
        wrapped: Any = Factory.forProtocol(_SERVER_APPS.get(kind, _Idle))
        for d in range(depth, 1, -1):
            wrapped = _ClimbFactory(TLSMemoryBIOFactory(self._creators[d], False, wrapped))
        return TLSMemoryBIOFactory(self._creators[1], False, wrapped)

    def run(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        ports = {}
        for name in listeners:
            kind, _, depth = name.split("/")
            factory = self._factory(kind, int(depth))
            port = reactor.listenTCP(0, factory, backlog=1024, interface=HOST)
            ports[name] = port.getHost().port
        reactor.callWhenRunning(ready, ports)
        reactor.run()

    def stop(self) -> None:
        reactor.callFromThread(reactor.stop)


# -- client ----------------------------------------------------------------------------


@implementer(IHandshakeListener, IPushProducer)
class _Client(Protocol):
    """The client's application (and, below it, each layer's set-up):
    counts what arrives, follows flow control as a streaming producer."""

    def __init__(self) -> None:
        self.received = 0
        self.readies = 0
        self.paused = False
        self.shaken = False
        self.ended = False
        self.lost: Deferred[None] = Deferred()
        self._waiter: Deferred[None] | None = None

    def handshakeCompleted(self) -> None:
        self.shaken = True
        self._wake()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self._wake()

    def connectionLost(self, reason: Any = None) -> None:
        self.ended = True
        if not self.lost.called:
            self.lost.callback(None)
        self._wake()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        pass

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def wait(self) -> Deferred[None]:
        """Until something arrives, writing resumes, or the connection ends."""
        if self.ended:
            raise ConnectionError("the connection was lost during the measurement")
        self._waiter = Deferred()
        return self._waiter

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            await self.wait()


class _Pinger(_Client):
    """The pingpong client's application: each answer that arrives sends the
    next byte from ``dataReceived``, until the deadline."""

    deadline = 0.0  # set when the measurement starts
    finished = False

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if time.perf_counter() < self.deadline:
            transport: Any = self.transport
            transport.write(PING)
        else:
            self.finished = True
            self._wake()


class _Setup(_Client):
    """Inside a client layer that is not the last: counts the ``R`` bytes."""

    def dataReceived(self, data: bytes) -> None:
        self.readies += data.count(b"R")
        self._wake()


def _once(proto: _Client) -> Any:
    """A factory (an ``IProtocolFactory``) for one connection: ``proto``."""
    return _Once(proto)


class _Once(ClientFactory):
    """Builds the one protocol it is given; a failed connect ends it."""

    def __init__(self, proto: _Client) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._proto

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self._proto.connectionLost(reason)


def _cipher_of(transport: Any) -> str:
    name = transport.getHandle().get_cipher_name()
    return str(name) if name else "?"


class TwistedClient:
    def __init__(self, spec: dict[str, Any]) -> None:
        certs = Path(spec["certs"])
        self._creators = {d: _client_creator(certs, d) for d in range(1, spec["depths"] + 1)}
        running = threading.Event()
        reactor.callWhenRunning(running.set)
        threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        ).start()
        if not running.wait(30.0):
            raise RuntimeError("the reactor did not start")

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] != "run":
            return {"error": f"the Twisted peer does not run {cmd['cmd']}"}
        cell = Cell(**cmd["cell"])
        measure = {
            "sink": self._sink,
            "echo": self._echo,
            "pingpong": self._pingpong,
            "handshake": self._handshakes,
        }
        coro = measure[cell.kind](cmd["port"], cell, cmd["seconds"])
        return threads.blockingCallFromThread(reactor, _in_reactor, coro)

    async def _connect(self, port: int, depth: int, app: _Client) -> Any:
        """The innermost layer (a ``TLSMemoryBIOProtocol``), every handshake done."""
        hops: list[_Client] = [_Setup() for _ in range(depth - 1)]
        hops.append(app)
        first = hops[0]
        factory = TLSMemoryBIOFactory(self._creators[1], True, _once(first))
        reactor.connectTCP(HOST, port, factory, timeout=30)
        await first.until(lambda: first.shaken)
        for d in range(2, depth + 1):
            setup, hop = hops[d - 2], hops[d - 1]
            await setup.until(lambda: setup.readies >= 1)  # noqa: B023 - awaited here
            _splice(setup.transport, TLSMemoryBIOFactory(self._creators[d], True, _once(hop)))
            await hop.until(lambda: hop.shaken)  # noqa: B023 - awaited here
        return app.transport

    async def _close(self, transport: Any, app: _Client) -> None:
        transport.loseConnection()
        if app.ended:
            return
        timer = reactor.callLater(CLOSE_TIMEOUT, transport.abortConnection)
        await app.lost
        if timer.active():
            timer.cancel()

    async def _sink(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        app = _Client()
        t = await self._connect(port, cell.depth, app)
        cipher = _cipher_of(t)
        t.registerProducer(app, True)
        size = cell.size
        chunk = bytes(size)
        batch = max(1, BATCH // size)
        sent = 0
        meter = Meter()
        deadline = meter.start + seconds
        while True:
            for _ in range(batch):
                t.write(chunk)
            sent += batch * size
            if time.perf_counter() >= deadline:
                break
            if app.paused:
                await app.until(lambda: not app.paused)
            else:
                await deferLater(reactor, 0)
        t.write(bytes(size - 1) + b"\x01")
        sent += size
        await app.until(lambda: app.received >= 1)
        result = meter.rate(sent, cipher)
        t.unregisterProducer()
        await self._close(t, app)
        return result

    async def _echo(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        app = _Client()
        t = await self._connect(port, cell.depth, app)
        cipher = _cipher_of(t)
        t.registerProducer(app, True)
        size = cell.size
        chunk = bytes(size)
        batch = max(1, BATCH // size)
        sent = 0
        meter = Meter()
        deadline = meter.start + seconds
        while time.perf_counter() < deadline:
            n = 0
            while n < batch and not app.paused and sent - app.received < ECHO_WINDOW:
                t.write(chunk)
                sent += size
                n += 1
            if n < batch:
                await app.wait()
            else:
                await deferLater(reactor, 0)
        await app.until(lambda: app.received >= sent)
        result = meter.rate(sent, cipher)
        t.unregisterProducer()
        await self._close(t, app)
        return result

    async def _pingpong(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        app = _Pinger()
        t = await self._connect(port, cell.depth, app)
        cipher = _cipher_of(t)
        t.setTcpNoDelay(True)  # (forwarded to the TCP transport, as the server's)
        meter = Meter()
        app.deadline = meter.start + seconds
        t.write(PING)  # the application's dataReceived sends the next ones
        await app.until(lambda: app.finished)
        result = meter.round_trips(app.received, cipher)
        await self._close(t, app)
        return result

    async def _handshakes(self, port: int, cell: Cell, seconds: float) -> dict[str, Any]:
        count = 0
        busy = 0.0
        cipher = "?"
        cpu = time.process_time()
        end = time.perf_counter() + seconds
        while count < 3 or (time.perf_counter() < end and count < MAX_HANDSHAKES):
            app = _Client()
            t0 = time.perf_counter()
            t = await self._connect(port, cell.depth, app)
            busy += time.perf_counter() - t0
            count += 1
            cipher = _cipher_of(t)
            await self._close(t, app)
        cpu = time.process_time() - cpu
        return {"value": count / busy, "cipher": cipher, "cpu": cpu, "work": count}


def _in_reactor(coro: Coroutine[Any, Any, dict[str, Any]]) -> Deferred[dict[str, Any]]:
    return Deferred.fromCoroutine(coro)
