"""The test suite's own kit: what only onion_tls's tests need, on top of
:mod:`onion_tls.testing` (what users get: ``OnionCA``, ``memory_pair`` /
``OnionPair``, ``stream_pair``, ``MemoryPipe``, ``dribble``).  Tests import it
relatively: ``from .helpers import Recorder, connect``.

* :class:`Recorder` - the application protocol of the suite: records
  everything the onion transport tells it, with awaitable reads (no
  sleep-polling).  Subclass it for an application that acts.
* :func:`connect` - an async context manager giving a connected
  :class:`Pair` of onion stacks, either in memory (``memory_pair``) or over
  real 127.0.0.1 loopback sockets; on exit both ends are torn down and every
  transport is closed, so no test leaks an unclosed transport.
  :func:`recorder_pair` is the in-memory pair without the teardown, for tests
  that close it themselves (:func:`close_both`).
* Pushing layers: :func:`start_layer` (an ``OnionCA`` identity for a depth,
  through ``OnionPair.start_tls``, bounded by ``WAIT``) and
  :func:`start_layer_with` (contexts the test made itself, a session to
  resume); :func:`ping` checks both directions at the innermost layer.
* :class:`ManualTLS` - a hand-driven ``ssl.SSLObject`` peer inside an onion
  connection, for what a well-behaved onion peer never does.
* :class:`PlainCA`, :func:`rich_subject`, :func:`rich_san`, :func:`san` -
  certificates trustme does not make (chosen serials and dates, every kind
  of name), and reading names back.
* Parametrization: ``KINDS``, ``ENGINE_MODES`` / :func:`engines_for`,
  ``ENGINE_PAIRS``, ``MIXED``.

Not here, on purpose: ``tests/contract_kit.py`` (black-box acceptance tests
from DESIGN.md alone: public API only, with its own PKI and app) and
``tests/proxy_kit.py`` (the servers of the proxy tests).

Waiting is bounded by ``WAIT`` seconds only to turn a hang into a readable
failure; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from onion_tls import OnionProtocol, OnionTransport, TLSLayer
from onion_tls.testing import Chunker, Engine, MemoryPipe, OnionCA, OnionPair, memory_pair

__all__ = [
    "ENGINE_MODES",
    "ENGINE_PAIRS",
    "ENGINE_PAIR_IDS",
    "KINDS",
    "MIXED",
    "WAIT",
    "ManualTLS",
    "Pair",
    "PlainCA",
    "Recorder",
    "close_both",
    "connect",
    "engines_for",
    "loopback_pair",
    "ping",
    "recorder_pair",
    "rich_san",
    "rich_subject",
    "san",
    "settle",
    "start_layer",
    "start_layer_with",
]

WAIT = 10.0
KINDS = ("memory", "loopback")
Kind = Literal["memory", "loopback"]


# -- the application -----------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records data, EOFs, losses and flow-control calls in order.

    ``eof_result`` is what ``eof_received()`` returns (``None``: keep the
    connection open while a TLS layer is left, close it on the raw EOF).
    ``on_data`` (if set) is called from inside ``data_received`` with the
    chunk, after it was recorded; ``on_eof`` likewise from ``eof_received``.
    ``changed`` is set on every event: a subclass that records something of
    its own sets it too, and waits on it as :meth:`wait_for` does.
    """

    def __init__(self) -> None:
        self.transport: OnionTransport
        self.data = bytearray()
        self.chunks: list[bytes] = []
        self.at_depth: list[tuple[int, bytes]] = []
        self.events: list[tuple[Any, ...]] = []
        self.eofs = 0
        self.lost: list[BaseException | None] = []
        self.eof_result: bool | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_eof: Callable[[], None] | None = None
        self.made = False
        self.changed = asyncio.Event()

    @property
    def _changed(self) -> asyncio.Event:
        # The name the subclasses in test_engines_mixed.py and
        # test_interop_asyncio.py use (from the engine tests' former kit).
        return self.changed

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, OnionTransport)
        assert not self.made, "connection_made called twice"
        self.transport = transport
        self.made = True
        self.changed.set()

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        assert data, "data_received(b'')"
        assert not self.lost, "data_received after connection_lost"
        self.data += data
        self.chunks.append(data)
        #: (number of layers at delivery, data): which depth the data came through
        self.at_depth.append((len(self.transport.layers), data))
        self.events.append(("data", data, len(self.transport.layers)))
        if self.on_data is not None:
            self.on_data(data)
        self.changed.set()

    def eof_received(self) -> bool | None:
        assert not self.lost, "eof_received after connection_lost"
        self.eofs += 1
        self.events.append(("eof", len(self.transport.layers)))
        if self.on_eof is not None:
            self.on_eof()
        self.changed.set()
        if self.eof_result is None:
            return bool(self.transport.layers)
        return self.eof_result

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.events.append(("lost", exc))
        self.changed.set()

    def pause_writing(self) -> None:
        self.events.append(("pause_writing",))
        self.changed.set()

    def resume_writing(self) -> None:
        self.events.append(("resume_writing",))
        self.changed.set()

    # -- waiting ----------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], what: str = "condition") -> None:
        """Wait until ``predicate()`` holds, re-checking after every event."""
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"gave up waiting for {what}; data={bytes(self.data[-200:])!r} "
                f"events={self.summary()}"
            ) from None

    async def read_exactly(self, n: int) -> bytes:
        """The next ``n`` bytes; fails at once if the connection ends first."""
        await self.wait_for(lambda: len(self.data) >= n or bool(self.lost), f"{n} bytes")
        if len(self.data) < n:
            raise AssertionError(f"lost ({self.lost}) with {bytes(self.data)!r}")
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def expect(self, expected: bytes) -> None:
        got = await self.read_exactly(len(expected))
        assert got == expected, f"expected {expected[:100]!r}..., got {got[:100]!r}..."

    async def wait_eof(self, count: int = 1) -> None:
        await self.wait_for(lambda: self.eofs >= count, f"eof_received #{count}")

    async def wait_lost(self) -> BaseException | None:
        await self.wait_for(lambda: bool(self.lost), "connection_lost")
        return self.lost[0]

    def received_at(self, depth: int) -> bytes:
        """Everything delivered while ``depth`` layers were stacked."""
        return b"".join(data for d, data in self.at_depth if d == depth)

    def transcript(self) -> list[tuple[Any, ...]]:
        """What the application saw, independent of chunking: data merged
        per depth run, EOFs (with the depth they came at) and the loss."""
        out: list[tuple[Any, ...]] = []
        for ev in self.events:
            if ev[0] == "data":
                if out and out[-1][0] == "data" and out[-1][2] == ev[2]:
                    out[-1] = ("data", out[-1][1] + ev[1], ev[2])
                else:
                    out.append(ev)
            elif ev[0] == "lost":
                exc = ev[1]
                out.append(("lost", None if exc is None else (type(exc), str(exc))))
            elif ev[0] == "eof":
                out.append(ev)
        return out

    def summary(self) -> list[Any]:
        out: list[Any] = []
        for ev in self.events:
            if ev[0] == "data":
                out.append(("data", len(ev[1]), ev[2]))
            else:
                out.append(ev)
        return out


# -- connected pairs -----------------------------------------------------------


class Pair(OnionPair):
    """Two connected onion stacks (in memory or over loopback sockets)."""

    def __init__(
        self,
        kind: Kind,
        pipe: MemoryPipe | None,
        client: OnionProtocol,
        server: OnionProtocol,
        listener: asyncio.Server | None = None,
    ) -> None:
        super().__init__(pipe, client, server)  # type: ignore[arg-type]
        self.kind = kind
        self.listener = listener

    @property
    def c(self) -> Recorder:
        proto = self.client.get_protocol()
        assert isinstance(proto, Recorder)
        return proto

    @property
    def s(self) -> Recorder:
        proto = self.server.get_protocol()
        assert isinstance(proto, Recorder)
        return proto

    async def teardown(self) -> None:
        """Abort whatever is still open and wait for both connection_lost."""
        for onion in (self.client_onion, self.server_onion):
            if not onion.connection_gone:
                onion.transport.abort()
        for rec in (self.c, self.s):
            await rec.wait_lost()
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()
        # let the socket transports finish closing
        for _ in range(3):
            await asyncio.sleep(0)


async def loopback_pair(
    client_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    server_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
) -> Pair:
    """Connect two onion stacks over a real 127.0.0.1 TCP connection."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[OnionProtocol] = loop.create_future()

    def server_side() -> OnionProtocol:
        onion = OnionProtocol(server_factory())
        assert not accepted.done(), "a second connection reached the test listener"
        accepted.set_result(onion)
        return onion

    listener = await loop.create_server(server_side, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: OnionProtocol(client_factory()), "127.0.0.1", port
    )
    async with asyncio.timeout(WAIT):
        server = await accepted
    # the server's connection_made runs in the accept callback
    rec = server.transport.get_protocol()
    if isinstance(rec, Recorder):
        await rec.wait_for(lambda: rec.made, "server connection_made")
    return Pair("loopback", None, client, server, listener)


async def _memory(
    client_factory: Callable[[], asyncio.BaseProtocol],
    server_factory: Callable[[], asyncio.BaseProtocol],
    **kw: Any,
) -> Pair:
    mp = await memory_pair(client_factory, server_factory, **kw)
    return Pair("memory", mp.pipe, mp.client_onion, mp.server_onion)


@contextlib.asynccontextmanager
async def connect(
    kind: Kind,
    client_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    server_factory: Callable[[], asyncio.BaseProtocol] = Recorder,
    *,
    auto: bool = True,
    chunker: Chunker | None = None,
    coalesce: bool = False,
) -> AsyncIterator[Pair]:
    """A connected :class:`Pair`; torn down (and checked closed) on exit."""
    if kind == "memory":
        pair = await _memory(
            client_factory, server_factory, auto=auto, chunker=chunker, coalesce=coalesce
        )
    else:
        assert auto and chunker is None and not coalesce, "memory-only options"
        pair = await loopback_pair(client_factory, server_factory)
    try:
        yield pair
    finally:
        if pair.pipe is not None and not pair.pipe.auto:
            pair.pipe.auto = True
            pair.pipe.kick()
        await pair.teardown()


async def recorder_pair(**kw: Any) -> tuple[Pair, Recorder, Recorder]:
    """Two :class:`Recorder` applications connected in memory
    (``memory_pair``'s options); the test closes them (:func:`close_both`)."""
    pair = await _memory(Recorder, Recorder, **kw)
    return pair, pair.c, pair.s


async def close_both(pair: OnionPair) -> None:
    """Close both ends; both applications see a clean connection_lost."""
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    pair.client.close()
    pair.server.close()
    assert await client.wait_lost() is None
    assert await server.wait_lost() is None


# -- layers --------------------------------------------------------------------


async def start_layer(
    pair: Pair,
    ca: OnionCA,
    depth: int,
    *,
    client_engine: Engine = "pyopenssl",
    server_engine: Engine = "pyopenssl",
    swap_roles: bool = False,
    version: str | None = None,
    mutual: bool = False,
) -> tuple[TLSLayer, TLSLayer]:
    """Push one layer on both sides; returns (client app's view, server
    app's view).  With ``swap_roles`` the client application is the TLS
    server of this layer."""
    return await asyncio.wait_for(
        pair.start_tls(
            ca,
            depth,
            client_engine=client_engine,
            server_engine=server_engine,
            swap_roles=swap_roles,
            version=version,
            mutual=mutual,
        ),
        WAIT,
    )


async def start_layer_with(
    pair: OnionPair,
    client_ctx: Any,
    server_ctx: Any,
    *,
    server_hostname: str | None,
    session: object | None = None,
) -> tuple[TLSLayer, TLSLayer]:
    """Push one layer on both sides with contexts the test made (and a
    session to resume); returns (client's view, server's view)."""
    fs = pair.server.start_tls(server_ctx, server_side=True)
    fc = pair.client.start_tls(client_ctx, server_hostname=server_hostname, session=session)
    lc, ls = await asyncio.gather(fc, fs)
    return lc, ls


async def ping(pair: OnionPair, tag: bytes = b"ping") -> None:
    """One round trip at the current innermost layer (both directions)."""
    client: Recorder = pair.client_protocol  # type: ignore[assignment]
    server: Recorder = pair.server_protocol  # type: ignore[assignment]
    pair.client.write(tag)
    assert await server.read_exactly(len(tag)) == tag
    pair.server.write(tag[::-1])
    assert await client.read_exactly(len(tag)) == tag[::-1]


async def settle(rounds: int = 20) -> None:
    """Let call_soon callbacks (memory pipe pumps, flushes) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- parametrization -----------------------------------------------------------


def engines_for(mode: str, depth: int) -> tuple[Engine, Engine]:
    """(TLS client engine, TLS server engine) of a layer for a test mode."""
    if mode == "pyopenssl":
        return "pyopenssl", "pyopenssl"
    if mode == "stdlib":
        return "stdlib", "stdlib"
    # mixed: the engines alternate per depth and differ across the wire
    return ("pyopenssl", "stdlib") if depth % 2 else ("stdlib", "pyopenssl")


ENGINE_MODES = ("pyopenssl", "stdlib", "mixed")
#: (TLS client engine, TLS server engine)
ENGINE_PAIRS: list[tuple[Engine, Engine]] = [
    ("pyopenssl", "pyopenssl"),
    ("stdlib", "stdlib"),
    ("pyopenssl", "stdlib"),
    ("stdlib", "pyopenssl"),
]
ENGINE_PAIR_IDS = ["pp", "ss", "ps", "sp"]

#: Each depth's engine on the client side and on the server side: every
#: layer's two ends use different engines (issue 3, "mixed stacks").
MIXED = {
    1: ("stdlib", "pyopenssl"),
    2: ("pyopenssl", "stdlib"),
    3: ("stdlib", "pyopenssl"),
}


# -- a hand-driven TLS peer ----------------------------------------------------


class ManualTLS:
    """A hand-driven TLS endpoint (``ssl.SSLObject``) whose ciphertext
    travels as application data of an onion transport ``rec.transport`` (at
    whatever depth that transport is).  It lets a test do what a well-behaved
    onion peer never does: send bytes right after its close_notify, send
    garbage after the handshake, vanish mid-shutdown."""

    def __init__(
        self,
        rec: Recorder,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.rec = rec
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.plaintext = bytearray()
        self.peer_closed = False

    def take(self) -> bytes:
        """Ciphertext produced so far (not sent)."""
        return self.outgoing.read()

    def send(self, extra: bytes = b"") -> None:
        data = self.take() + extra
        if data:
            self.rec.transport.write(data)

    def _feed(self) -> None:
        if self.rec.data:
            self.incoming.write(bytes(self.rec.data))
            self.rec.data.clear()

    async def _more(self) -> None:
        await self.rec.wait_for(lambda: bool(self.rec.data), "bytes for the manual TLS peer")
        self._feed()

    async def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self.send()
                await self._more()
            else:
                self.send()
                return

    def encrypt(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.take()

    def close_notify(self) -> bytes:
        """Our close_notify, as bytes (not sent)."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        return self.take()

    def pump_reads(self) -> None:
        """Decrypt whatever has arrived."""
        self._feed()
        while True:
            try:
                data = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                return
            if not data:
                self.peer_closed = True
                return
            self.plaintext += data

    async def read_until_close_notify(self) -> bytes:
        """Application data up to the peer's close_notify (which must come)."""
        while True:
            self.pump_reads()
            if self.peer_closed:
                return bytes(self.plaintext)
            await self._more()


# -- certificates trustme does not make ----------------------------------------


def san(cert: x509.Certificate | None) -> list[str]:
    """The DNS names of a certificate's subjectAltName."""
    assert cert is not None, "no peer certificate"
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


class PlainCA:
    """A CA made with cryptography directly, for certificates trustme does
    not make (chosen serials and dates, every kind of name)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onion test CA")])
        now = dt.datetime.now(dt.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=3650))
            .not_valid_after(now + dt.timedelta(days=36500))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        *,
        serial: int,
        not_before: dt.datetime,
        not_after: dt.datetime,
        subject: x509.Name,
        san: list[x509.GeneralName],
        extras: bool = True,
    ) -> tuple[x509.Certificate, bytes]:
        """Returns (certificate, PEM of key + certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if extras:
            b = b.add_extension(
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier("http://ocsp.onion.test/"),
                        ),
                        x509.AccessDescription(
                            x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier("http://ca.onion.test/ca.der"),
                        ),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier("http://crl.onion.test/a")],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        ),
                        x509.DistributionPoint(
                            full_name=[x509.UniformResourceIdentifier("http://crl.onion.test/b")],
                            relative_name=None,
                            reasons=None,
                            crl_issuer=None,
                        ),
                    ]
                ),
                critical=False,
            )
        cert = b.sign(self.key, hashes.SHA256())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ) + cert.public_bytes(serialization.Encoding.PEM)
        return cert, pem


def rich_subject() -> x509.Name:
    return x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Berlin")]
            ),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Onion Ltd"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Layers"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "tls@onion.test")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.SERIAL_NUMBER, "42")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "test")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "rich.test")]),
        ]
    )


def rich_san() -> list[x509.GeneralName]:
    return [
        x509.DNSName("rich.test"),
        x509.DNSName("*.rich.test"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("tls@onion.test"),
        x509.UniformResourceIdentifier("https://rich.test/"),
        x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dir name")])),
    ]


# -- a hand-driven pyOpenSSL peer (tests that need what a correct stack never sends) --


class RawTLS:
    """A pyOpenSSL session driven by hand over an onion transport: its
    ciphertext is written with ``transport.write``, so it runs at the depth
    just inside the transport's layers.  No OP_NO_RENEGOTIATION, no checks:
    the test decides what it sends."""

    def __init__(
        self, transport: asyncio.Transport, ctx: SSL.Context, *, server_side: bool
    ) -> None:
        self.transport = transport
        self.conn = SSL.Connection(ctx, None)
        if server_side:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.plain = bytearray()
        self.error: SSL.Error | None = None
        self.peer_closed = False
        self.handshake_done = False
        #: Cut every ciphertext write into pieces of this many bytes.
        self.piece: int | None = None
        #: While set, what arrives is buffered but not answered.
        self.hold = False
        self.held = 0

    def start(self) -> None:
        self.pump()

    def feed(self, data: bytes) -> None:
        self.conn.bio_write(data)
        if self.hold:
            self.held += len(data)
        else:
            self.pump()

    def release(self) -> None:
        self.hold = False
        self.pump()

    def pump(self) -> None:
        try:
            if not self.handshake_done:
                self.conn.do_handshake()
                self.handshake_done = True
            while True:
                self.plain += self.conn.recv(65536)
        except SSL.WantReadError:
            pass
        except SSL.ZeroReturnError:
            self.peer_closed = True
        except SSL.Error as exc:
            self.error = exc
        self.flush()

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)
        self.flush()

    def flush(self) -> None:
        while True:
            try:
                out = self.conn.bio_read(65536)
            except SSL.WantReadError:
                return
            if self.transport.is_closing():
                return
            if self.piece is None:
                self.transport.write(out)
            else:
                for i in range(0, len(out), self.piece):
                    self.transport.write(out[i : i + self.piece])

    def write_raw(self, data: bytes) -> None:
        """Bytes of layer k's stream that no correct engine would send."""
        self.transport.write(data)


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)
