"""``python -m onion_tls client HOST:PORT``: a nested ``openssl s_client``.

Connects in plaintext (or through ``--proxy`` HTTP CONNECT proxies, see
:mod:`onion_tls.proxy`), then runs steps: from the command line first
(``--tls``, ``--pop``, ``--send``, ``--expect``, in the order given), then
from standard input, one command per line.  Each layer's handshake is
printed like ``s_client`` does for its one layer; received data is printed
as it arrives, prefixed with ``<``.

Lines starting with ``*`` are progress, ``!`` errors, ``<`` received data.
Exit status: 0 when every step worked, 1 on a connection, handshake or
``expect`` failure, 2 on a usage error.

Imports: :mod:`._view`, :mod:`.errors`, :mod:`.proxy`, :mod:`.starttls`,
:mod:`.streams` (the top of the package, with :mod:`._demo` and the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from . import proxy
from .errors import HandshakeError, LayerStateError, OnionError
from .streams import StreamWriter, open_connection

if TYPE_CHECKING:
    from collections.abc import Callable

    from cryptography import x509

    from ._view import TLSLayer

COMMANDS = """\
commands (one per line on standard input):
  push NAME [ALPN,...]   push a TLS layer (this side is the TLS client), SNI and
                         the name checked = NAME, offering the ALPN protocols
  pop                    unwrap the innermost layer (close_notify both ways)
  send TEXT              send TEXT and a newline inside the innermost layer
  expect TEXT            wait (up to --timeout) until TEXT has been received
  layers                 list the layers, outermost first
  help                   this list
  quit                   close (close_notify on every layer, innermost first)
end of input is 'quit'."""


@dataclass
class Step:
    kind: str  # push, pop, send, expect, layers, help, quit
    arg: str = ""


@dataclass
class Options:
    cafile: str | None = None
    insecure: bool = False
    engine: str = "stdlib"
    cert: str | None = None
    key: str | None = None
    version: str | None = None
    timeout: float = 30.0
    crlf: bool = False
    starttls: str | None = None  # "PROTO[,NAME]": upgrade first (see starttls_first)


class StepError(Exception):
    """A step failed; the message says why."""


def parse_step(line: str) -> Step | None:
    """One command line -> a Step (None for a blank line)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    word, _, rest = line.partition(" ")
    word = word.lower()
    rest = rest.strip()
    if word in ("push", "tls"):
        if not rest:
            raise StepError("push needs a server name: push NAME [ALPN,...]")
        return Step("push", rest)
    if word in ("send", "expect"):
        if word == "expect" and not rest:
            raise StepError("expect needs the text to wait for")
        return Step(word, rest)
    if word in ("pop", "layers", "help", "quit", "exit"):
        if rest:
            raise StepError(f"{word} takes no argument")
        return Step("quit" if word == "exit" else word)
    raise StepError(f"unknown command {word!r} (to send text, write: send {line})")


class Session:
    """One connection and the steps run on it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        opts: Options,
        out: TextIO,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.opts = opts
        self.out = out
        self.received = bytearray()  # for expect: everything received so far
        self._expect_from = 0
        self._data = asyncio.Event()
        self._reopened = asyncio.Event()
        self.ended: BaseException | None = None
        self.finished = False
        self.closing = False
        self._reported: BaseException | None = None  # said already, by a step
        self._printer = asyncio.get_running_loop().create_task(self._print_incoming())

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- incoming -----------------------------------------------------------------

    async def _print_incoming(self) -> None:
        partial = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    if partial:
                        self._show(partial)
                        partial = b""
                    layers = self.writer.layers
                    if self.closing:
                        return
                    if not layers:
                        self.say("* the peer closed the connection")
                        self.finished = True
                        self._data.set()
                        return
                    self.say(
                        f"* layer {layers[-1].depth}: the peer sent close_notify (the end of "
                        "this layer's data); 'pop' unwraps it, 'quit' closes"
                    )
                    self._reopened.clear()
                    self._data.set()
                    await self._reopened.wait()
                    continue
                self.received += data
                self._data.set()
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    self._show(line)
        except (ConnectionError, OnionError) as exc:
            self.ended = exc
            self.finished = True
            if exc is not self._reported:
                self.say(f"! connection lost: {exc}")
            self._data.set()

    def _show(self, line: bytes) -> None:
        self.say("< " + line.rstrip(b"\r").decode("utf-8", "replace"))

    # -- steps --------------------------------------------------------------------

    async def run(self, step: Step) -> None:
        if self.ended is not None and step.kind not in ("help", "layers", "quit"):
            raise StepError(f"the connection is gone ({self.ended})")
        await getattr(self, "do_" + step.kind)(step.arg)

    async def do_push(self, arg: str) -> None:
        name, _, alpn_text = arg.replace(" ", ",", 1).partition(",")
        alpn = [p for p in alpn_text.replace(" ", ",").split(",") if p]
        depth = len(self.writer.layers) + 1
        ctx = make_context(self.opts, alpn)
        hostname: str | None = name
        if self.opts.insecure and self.opts.engine == "pyopenssl":
            # A pyOpenSSL layer checks every name it is given: no SNI then.
            hostname = None
        self.say(
            f"* layer {depth}: TLS handshake with {name} (client, {self.opts.engine}"
            + (f", ALPN offered: {','.join(alpn)}" if alpn else "")
            + ")"
        )
        early = self.writer.take_buffered()
        if early:
            # Received before the push: plaintext of the current depth, shown
            # as such and never given to the new layer.
            self.received += early
            for line in early.split(b"\n"):
                if line:
                    self._show(line)
        try:
            layer = await self.writer.start_tls(
                ctx,
                server_hostname=hostname,
                handshake_timeout=self.opts.timeout,
            )
        except HandshakeError as exc:
            self._reported = exc  # the connection is closed with this error
            raise StepError(f"layer {depth}: handshake failed: {exc.reason}") from None
        for text in describe_layer(layer, self.opts, name):
            self.say(text)

    async def do_pop(self, arg: str) -> None:
        layers = self.writer.layers
        if not layers:
            raise StepError("pop: there is no layer, the connection is plaintext")
        self.say(f"* layer {layers[-1].depth}: close_notify sent, waiting for the peer's")
        try:
            popped = await self.writer.stop_tls(timeout=self.opts.timeout)
        except OnionError as exc:
            raise StepError(f"pop failed: {exc}") from None
        self._reopened.set()
        rest = self.writer.layers
        now = f"{len(rest)} layer(s) left" if rest else "plaintext now"
        self.say(f"* layer {popped.depth}: unwrapped; {now}")

    async def do_send(self, arg: str) -> None:
        end = b"\r\n" if self.opts.crlf else b"\n"
        self.writer.write(arg.encode() + end)
        await self.writer.drain()
        depth = len(self.writer.layers)
        self.say(f"> {arg}" + (f"   (inside {depth} layer(s))" if depth else "   (plaintext)"))

    async def do_expect(self, arg: str) -> None:
        want = arg.encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.timeout
        while True:
            at = self.received.find(want, self._expect_from)
            if at >= 0:
                self._expect_from = at + len(want)
                self.say(f"* expected {arg!r}: received")
                return
            if self.finished:
                raise StepError(f"expect {arg!r}: the connection ended first")
            left = deadline - loop.time()
            if left <= 0:
                raise StepError(f"expect {arg!r}: not received within {self.opts.timeout:g} s")
            self._data.clear()
            try:
                await asyncio.wait_for(self._data.wait(), left)
            except TimeoutError:
                pass

    async def do_layers(self, arg: str) -> None:
        layers = self.writer.layers
        if not layers:
            self.say("* no layers: plaintext")
        for layer in layers:
            self.say(
                f"* layer {layer.depth}: {layer.engine} {layer.version} {layer.cipher} "
                f"{layer.state}, peer {layer.server_hostname or '?'}"
            )

    async def do_help(self, arg: str) -> None:
        self.say(COMMANDS)

    async def do_quit(self, arg: str) -> None:
        raise EOFError

    async def close(self) -> None:
        self.closing = True
        depth = len(self.writer.layers)
        if not self.writer.is_closing():
            self.say(
                f"* closing: close_notify on {depth} layer(s), then the socket"
                if depth
                else "* closing"
            )
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), self.opts.timeout)
        except (ConnectionError, OnionError, TimeoutError):
            pass
        self._reopened.set()
        self._printer.cancel()
        try:
            await self._printer
        except asyncio.CancelledError:
            pass


# -- contexts and descriptions ------------------------------------------------------


def make_context(opts: Options, alpn: list[str]) -> Any:
    if opts.engine == "pyopenssl":
        from OpenSSL import SSL

        pctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if opts.cafile:
            pctx.load_verify_locations(opts.cafile)
        else:
            pctx.set_default_verify_paths()
        if not opts.insecure:
            pctx.set_verify(SSL.VERIFY_PEER, lambda *a: bool(a[-1]))
        if opts.cert:
            pctx.use_certificate_chain_file(opts.cert)
            pctx.use_privatekey_file(opts.key or opts.cert)
        if opts.version:
            code = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[opts.version]
            pctx.set_min_proto_version(code)
            pctx.set_max_proto_version(code)
        if alpn:
            pctx.set_alpn_protos([p.encode() for p in alpn])
        return pctx
    sctx = ssl.create_default_context(cafile=opts.cafile)
    if opts.insecure:
        sctx.check_hostname = False
        sctx.verify_mode = ssl.CERT_NONE
    if opts.cert:
        sctx.load_cert_chain(opts.cert, opts.key)
    if opts.version:
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[opts.version]
        sctx.minimum_version = sctx.maximum_version = v
    if alpn:
        sctx.set_alpn_protocols(alpn)
    return sctx


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty)"


def describe_layer(layer: TLSLayer, opts: Options, name: str) -> list[str]:
    from cryptography import x509

    d = layer.depth
    lines = [
        f"* layer {d}: {layer.version}, {layer.cipher}, ALPN: {layer.alpn_protocol or '(none)'}, "
        f"session resumed: {'yes' if layer.session_reused else 'no'}"
    ]
    cert = layer.peer_certificate
    if cert is not None:
        lines.append(f"*   subject: {_name(cert.subject)}")
        lines.append(f"*   issuer:  {_name(cert.issuer)}")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName) + [
                str(ip) for ip in san.get_values_for_type(x509.IPAddress)
            ]
            lines.append(f"*   names:   {', '.join(names)}")
        except x509.ExtensionNotFound:
            pass
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        lines.append(f"*   valid:   {start:%Y-%m-%d} to {end:%Y-%m-%d}")
    if opts.insecure:
        lines.append("*   verification: NONE (--insecure)")
    else:
        trust = f"--cafile {opts.cafile}" if opts.cafile else "the system's trust store"
        lines.append(f"*   verification: ok (chain to {trust}, name {name})")
    return lines


# -- main ---------------------------------------------------------------------------


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Standard input, line by line, from a daemon thread (works for a
    terminal, a pipe and a file alike, and never holds up the exit)."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        except (OSError, ValueError, RuntimeError):
            pass
        try:
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:
            pass  # the loop is gone: we are exiting anyway

    threading.Thread(target=pump, name="onion_tls stdin", daemon=True).start()
    return queue


async def run_client(
    host: str,
    port: int,
    steps: list[Step],
    opts: Options,
    *,
    use_stdin: bool = True,
    out: TextIO = sys.stdout,
    proxies: Sequence[str] = (),
) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    if proxies:
        connected = await _connect_through(host, port, proxies, opts, say)
        if connected is None:
            return 1
        reader, writer = connected
    else:
        say(f"* connecting to {host}:{port}")
        try:
            reader, writer = await asyncio.wait_for(open_connection(host, port), opts.timeout)
        except (OSError, TimeoutError) as exc:
            say(f"! cannot connect to {host}:{port}: {exc or 'timed out'}")
            return 1
        local = writer.get_extra_info("sockname")
        say(f"* connected (plaintext), local address {local[0]}:{local[1]}")
    if opts.starttls and not await starttls_first(reader, writer, opts, host, say):
        writer.close()
        with contextlib.suppress(ConnectionError, OnionError):
            await writer.wait_closed()
        say("* closed")
        return 1
    session = Session(reader, writer, opts, out)
    status = 0
    try:
        for step in steps:
            await session.run(step)
        if use_stdin:
            queue = _stdin_lines(asyncio.get_running_loop())
            while (line := await queue.get()) is not None:
                try:
                    step_ = parse_step(line)
                    if step_ is not None:
                        await session.run(step_)
                except StepError as exc:
                    say(f"! {exc}")
                    status = 1
                except LayerStateError as exc:
                    say(f"! {exc.reason}")
                    status = 1
    except EOFError:
        pass
    except (StepError, LayerStateError) as exc:
        say(f"! {exc.reason if isinstance(exc, OnionError) else exc}")
        status = 1
    finally:
        await session.close()
    if session.ended is not None:
        status = 1
    say("* closed")
    return status


async def starttls_first(
    reader: asyncio.StreamReader,
    writer: StreamWriter,
    opts: Options,
    host: str,
    say: Callable[[str], None],
) -> bool:
    """``--starttls PROTO[,NAME]``: the protocol's plain-text upgrade, then
    layer 1 (before the session reads anything).  False when it failed (said
    why already)."""
    from .starttls import StartTLSError, starttls

    assert opts.starttls
    proto, _, name = opts.starttls.partition(",")
    name = name or host
    depth = len(writer.layers) + 1
    hostname: str | None = name
    if opts.insecure and opts.engine == "pyopenssl":
        hostname = None  # as do_push: a pyOpenSSL layer checks every name it is given
    say(
        f"* STARTTLS ({proto}): plain-text upgrade, then layer {depth}: TLS handshake "
        f"with {name} (client, {opts.engine})"
    )
    try:
        layer = await starttls(
            proto,
            reader,
            writer,
            make_context(opts, []),
            server_hostname=hostname,
            timeout=opts.timeout,
            handshake_timeout=opts.timeout,
        )
    except StartTLSError as exc:
        say(f"! {exc.reason}")
        return False
    except HandshakeError as exc:
        say(f"! layer {depth}: handshake failed: {exc.reason}")
        return False
    for text in describe_layer(layer, opts, name):
        say(text)
    return True


def proxy_hops(urls: Sequence[str], opts: Options) -> list[proxy.Proxy]:
    """``--proxy`` URLs -> hops; ``https://`` ones use the TLS options of
    every layer (``--cafile``, ``--insecure``, ``--engine``, ``--cert``...).

    Raises:
        ValueError: a URL that is not ``http://`` or ``https://`` host:port.
    """
    hops = []
    for url in urls:
        hop = proxy.Proxy.from_url(url, timeout=opts.timeout)
        if hop.scheme == "https":
            # As for 'push': with --insecure, a pyOpenSSL layer is given no
            # name to check ("" = no SNI, no name check).
            name = "" if opts.insecure and opts.engine == "pyopenssl" else None
            hop = proxy.Proxy.from_url(
                url, ssl=make_context(opts, []), server_hostname=name, timeout=opts.timeout
            )
        hops.append(hop)
    return hops


async def _connect_through(
    host: str,
    port: int,
    urls: Sequence[str],
    opts: Options,
    say: Callable[[str], None],
) -> tuple[asyncio.StreamReader, StreamWriter] | None:
    """Open the connection through the ``--proxy`` chain and describe each
    hop; None (after saying why) when a hop failed."""
    hops = proxy_hops(urls, opts)
    chain = " -> ".join(h.url for h in hops)
    say(f"* connecting to {host}:{port} through {len(hops)} proxy hop(s): {chain}")
    try:
        reader, writer = await proxy.open_connection(
            host, port, proxies=hops, hop_timeout=opts.timeout
        )
    except OnionError as exc:
        say(f"! {exc}")
        return None
    layers = iter(writer.layers)
    for index, hop in enumerate(hops, 1):
        target = hops[index].address if index < len(hops) else f"{host}:{port}"
        if hop.scheme == "https":
            layer = next(layers)
            say(f"* hop {index}: TLS with the proxy {hop.address}, layer {layer.depth}")
            for text in describe_layer(layer, opts, hop.host):
                say(text)
        else:
            say(f"* hop {index}: the proxy {hop.address}, CONNECT in the clear")
        say(f"* hop {index}: tunnel to {target} open")
    local = writer.get_extra_info("sockname")
    depth = len(writer.layers)
    inside = f"inside {depth} layer(s)" if depth else "plaintext"
    say(f"* connected to {host}:{port} ({inside}), local address {local[0]}:{local[1]}")
    return reader, writer


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
