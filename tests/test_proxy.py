"""``onion_tls.proxy``: connections through chains of HTTP CONNECT proxies.

Real TLS (trustme certificates from :class:`~onion_tls.testing.OnionCA`) on
real 127.0.0.1 sockets.  The proxies are the suite's own
(:class:`proxy_kit.ConnectProxy`, which can fail on purpose) and the
``proxy.py`` package's server; the proxies' and origins' TLS is asyncio's
(or proxy.py's), never onion_tls, so each hop is checked against a
different stack.  The proxy at hop N presents ``layerN.onion.test``; the
origin presents ``layer3.onion.test`` (or the depth it sits at).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import io
import re
import ssl
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from onion_tls import HandshakeError, OnionError, StreamWriter
from onion_tls._cli_client import Options, Step, run_client
from onion_tls.proxy import (
    MAX_REPLY_HEAD,
    Proxy,
    ProxyAuthenticationError,
    ProxyError,
    ProxyHandshakeError,
    ProxyTimeoutError,
    open_connection,
)
from onion_tls.testing import ENGINES, Engine, OnionCA

from .proxy_kit import (
    ConnectProxy,
    ProxyPy,
    closed_port,
    echo_origin,
    server_context,
    silent_server,
)
from .test_cli import cli_env

name = OnionCA.hostname


def hop(
    kit: ConnectProxy | str,
    depth: int,
    ca: OnionCA,
    engine: Engine = "stdlib",
    **kw: Any,
) -> Proxy:
    """The Proxy for a kit proxy (or URL) that presents ``layer{depth}``."""
    url = kit if isinstance(kit, str) else kit.url()
    ctx = ca.client_context(engine) if url.startswith("https") else None
    return Proxy.from_url(url, ssl=ctx, server_hostname=name(depth), **kw)


async def roundtrip(reader: asyncio.StreamReader, writer: StreamWriter, text: bytes) -> None:
    writer.write(text + b"\n")
    assert await asyncio.wait_for(reader.readline(), 10) == b"echo: " + text + b"\n"


async def close(writer: StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OnionError, ConnectionError):
        await asyncio.wait_for(writer.wait_closed(), 10)


@contextlib.asynccontextmanager
async def tls_origin(ca: OnionCA, depth: int) -> AsyncIterator[int]:
    async with echo_origin(ca.server_context(depth, "stdlib")) as port:
        yield port


# -- Proxy: URLs ----------------------------------------------------------------------


def test_proxy_from_url_parses_schemes_ports_and_decodes_credentials() -> None:
    p = Proxy.from_url("HTTPS://al%20ice:p%40ss%3Aw%C3%B6rd@proxy.example:3128")
    assert (p.scheme, p.host, p.port) == ("https", "proxy.example", 3128)
    assert (p.username, p.password) == ("al ice", "p@ss:wörd")
    assert p.url == "https://proxy.example:3128"  # no credentials in messages
    assert "wörd" not in repr(p) and "p@ss" not in repr(p)
    # RFC 7617: base64 of UTF-8 "user:password".
    assert p.authorization() == "Basic YWwgaWNlOnBAc3M6d8O2cmQ="
    assert Proxy.from_url("http://10.0.0.1").port == 80
    assert Proxy.from_url("https://10.0.0.1/").port == 443
    v6 = Proxy.from_url("http://[::1]:8080")
    assert (v6.host, v6.address, v6.url) == ("::1", "[::1]:8080", "http://[::1]:8080")
    assert Proxy.from_url("http://u@h:1").authorization() == "Basic dTo="
    assert Proxy.from_url("http://h:1").authorization() is None
    assert Proxy.from_url("https://h:1", server_hostname="").tls_name() is None
    assert Proxy.from_url("https://h:1").tls_name() == "h"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5://h:1080", "the scheme must be http:// or https://"),
        ("h:3128", "the scheme must be http:// or https://"),
        ("http://:3128", "no host"),
        ("http://h:3128/path", "no path, query or fragment"),
        ("http://h:3128?q=1", "no path, query or fragment"),
        ("http://h:99999", "out of range"),
        ("http://u:secret@h:port", "bad proxy URL 'http://u:***@h:port'"),
    ],
)
def test_proxy_from_url_rejects_what_is_not_a_proxy_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        Proxy.from_url(url)
    assert "secret" not in str(info.value)


def test_proxy_rejects_inconsistent_options() -> None:
    with pytest.raises(ValueError, match="ssl= is for https:// proxies"):
        Proxy.from_url("http://h:1", ssl=ssl.create_default_context())
    with pytest.raises(ValueError, match="cannot contain ':'"):
        Proxy("http", "h", 1, username="a:b")
    with pytest.raises(ValueError, match="not a host name"):
        Proxy("http", "h\r\nX-Injected: 1", 1)
    with pytest.raises(ValueError, match="positive"):
        Proxy("http", "h", 1, timeout=0)


def test_proxy_errors_name_the_hop_and_keep_the_depth() -> None:
    p = Proxy.from_url("https://u:pw@127.0.0.1:8443")
    e = ProxyError("the proxy refused CONNECT x:1: 403 Forbidden", hop=2, proxy=p, hops=3, depth=1)
    assert str(e) == (
        "proxy hop 2 of 3 (https://127.0.0.1:8443, depth 1): "
        "the proxy refused CONNECT x:1: 403 Forbidden"
    )
    assert (e.hop, e.proxy, e.depth, e.status) == (2, p, 1, None)
    assert e.reason == "the proxy refused CONNECT x:1: 403 Forbidden"
    assert isinstance(e, OnionError)
    plain = ProxyError("why", hop=1, proxy=p)
    assert str(plain) == "proxy hop 1 (https://127.0.0.1:8443, plaintext): why"
    assert plain.depth is None
    t = ProxyTimeoutError("slow", hop=1, proxy=p, hops=1)
    assert isinstance(t, TimeoutError) and isinstance(t, ProxyError)
    assert str(t) == "proxy hop 1 of 1 (https://127.0.0.1:8443, plaintext): slow"
    h = ProxyHandshakeError("bad cert", hop=1, proxy=p, hops=1, depth=1)
    assert isinstance(h, HandshakeError) and isinstance(h, ProxyError)
    assert issubclass(ProxyAuthenticationError, ProxyError)


# -- chains through the kit's proxies ---------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
async def test_two_https_proxies_then_the_origin_at_depth_3(
    onion_ca: OnionCA, engine: Engine
) -> None:
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib")) as p1,
        ConnectProxy(tls=onion_ca.server_context(2, "stdlib"), auth=("bob", "p@ss wörd")) as p2,
        tls_origin(onion_ca, 3) as origin,
    ):
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[
                hop(p1, 1, onion_ca, engine),
                hop(p2.url("bob:p%40ss%20w%C3%B6rd"), 2, onion_ca, engine),
            ],
            ssl=onion_ca.client_context(engine),
            server_hostname=name(3),
        )
        try:
            layers = writer.layers
            assert [layer.depth for layer in layers] == [1, 2, 3]
            assert [layer.server_hostname for layer in layers] == [name(1), name(2), name(3)]
            assert {layer.engine for layer in layers} == {engine}
            assert all(layer.version == "TLSv1.3" for layer in layers)
            await roundtrip(reader, writer, b"through two proxies")
        finally:
            await close(writer)
        # What each proxy was asked, and the credentials as the proxy decoded them.
        assert [s.request_line for s in p1.seen] == [f"CONNECT 127.0.0.1:{p2.port} HTTP/1.1"]
        assert p1.seen[0].headers["host"] == f"127.0.0.1:{p2.port}"
        assert p1.seen[0].credentials is None
        assert [s.request_line for s in p2.seen] == [f"CONNECT 127.0.0.1:{origin} HTTP/1.1"]
        assert p2.seen[0].credentials == ("bob", "p@ss wörd")


async def test_plain_then_https_proxy_and_the_caller_pushes_the_origin(
    onion_ca: OnionCA,
) -> None:
    """Returned at the proxies' depth (1: the https hop), the caller pushes
    the origin's TLS with start_tls; engines mixed along the way."""
    async with (
        ConnectProxy() as p1,
        ConnectProxy(tls=onion_ca.server_context(2, "stdlib")) as p2,
        tls_origin(onion_ca, 2) as origin,
    ):
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[p1.url(), hop(p2, 2, onion_ca, "pyopenssl")],
        )
        try:
            assert [(la.depth, la.engine) for la in writer.layers] == [(1, "pyopenssl")]
            layer = await writer.start_tls(
                onion_ca.client_context("stdlib"),
                server_hostname=name(2),
                initial_bytes=writer.take_buffered(),
            )
            assert (layer.depth, layer.engine) == (2, "stdlib")
            await roundtrip(reader, writer, b"pushed by the caller")
        finally:
            await close(writer)


async def test_no_proxies_is_a_direct_connection(onion_ca: OnionCA) -> None:
    async with tls_origin(onion_ca, 1) as origin:
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[],
            ssl=onion_ca.client_context("stdlib"),
            server_hostname=name(1),
        )
        try:
            assert len(writer.layers) == 1
            await roundtrip(reader, writer, b"direct")
        finally:
            await close(writer)


async def test_bytes_right_behind_the_reply_stay_in_the_reader() -> None:
    """A server that speaks first: the proxy sends its 200 and the origin's
    banner in one write; the banner is the caller's, not lost, not parsed."""
    async with (
        echo_origin(banner=b"220 origin ready\r\n") as origin,
        ConnectProxy(coalesce=True) as p1,
    ):
        reader, writer = await open_connection("127.0.0.1", origin, proxies=[p1.url()])
        try:
            assert writer.layers == ()
            assert await asyncio.wait_for(reader.readline(), 10) == b"220 origin ready\r\n"
            await roundtrip(reader, writer, b"plain")
        finally:
            await close(writer)


async def test_bytes_right_behind_the_reply_are_given_to_the_next_layer(
    onion_ca: OnionCA,
) -> None:
    """Bytes after the reply head belong to the tunnel: they are the first
    bytes the next TLS layer reads (initial_bytes), not refused as unread
    plaintext and not dropped.  Here they are not TLS, so that layer's
    handshake fails, naming hop 2 at depth 2."""
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib"), after_reply=b"not TLS\r\n") as p1,
        ConnectProxy(tls=onion_ca.server_context(2, "stdlib")) as p2,
        tls_origin(onion_ca, 3) as origin,
    ):
        with pytest.raises(ProxyHandshakeError) as info:
            await open_connection(
                "127.0.0.1",
                origin,
                proxies=[hop(p1, 1, onion_ca), hop(p2, 2, onion_ca)],
                hop_timeout=10,
            )
    e = info.value
    assert (e.hop, e.depth) == (2, 2)
    assert str(e).startswith(f"proxy hop 2 of 2 (https://127.0.0.1:{p2.port}, depth 2): ")
    assert "the TLS handshake with the proxy failed" in e.reason
    assert "plain text" in e.reason or "TLS record" in e.reason
    assert p2.seen == []  # the junk never reached proxy 2 as a request


REPLIES = {
    "http/1.0": b"HTTP/1.0 200 Connection established\r\n\r\n",
    "headers": b"HTTP/1.1 200 OK\r\nProxy-Agent: kit\r\nVia: 1.1 kit\r\n\r\n",
    "no reason phrase": b"HTTP/1.1 200\r\n\r\n",
    "204 is a 2xx": b"HTTP/1.1 204 No Content\r\n\r\n",
    "2xx with a length to ignore": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    "bare LF": b"HTTP/1.1 200 Connection established\nProxy-Agent: kit\n\n",
    "1xx first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
}


@pytest.mark.parametrize("reply", list(REPLIES))
@pytest.mark.parametrize("dribble", [False, True], ids=["one-write", "byte-by-byte"])
async def test_reply_forms_accepted(onion_ca: OnionCA, reply: str, dribble: bool) -> None:
    async with (
        ConnectProxy(
            tls=onion_ca.server_context(1, "stdlib"), reply=REPLIES[reply], dribble=dribble
        ) as p1,
        tls_origin(onion_ca, 2) as origin,
    ):
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[hop(p1, 1, onion_ca, "pyopenssl")],
            ssl=onion_ca.client_context("pyopenssl"),
            server_hostname=name(2),
        )
        try:
            assert len(writer.layers) == 2
            await roundtrip(reader, writer, reply.encode())
        finally:
            await close(writer)


# -- failures name the hop and the reason -------------------------------------------

FAILURES: dict[str, tuple[dict[str, Any], type[ProxyError], int | None, str]] = {
    # name: (kit options, error type, status, words in the reason)
    "403": (
        {"reply": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "tunnel": False},
        ProxyError,
        403,
        "the proxy refused CONNECT 127.0.0.1:{origin}: 403 Forbidden "
        "(forbidden by the proxy's policy)",
    ),
    "407": (
        {"auth": ("u", "right")},
        ProxyAuthenticationError,
        407,
        "the proxy requires authentication (407 Proxy Authentication Required; it asks for: "
        'Basic realm="kit"); give user:password@ in the proxy URL',
    ),
    "502": (
        {"reply": b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "tunnel": False},
        ProxyError,
        502,
        "the proxy refused CONNECT 127.0.0.1:{origin}: 502 Bad Gateway "
        "(the proxy could not reach 127.0.0.1:{origin})",
    ),
    "redirect": (
        {"reply": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://x/\r\n\r\n"},
        ProxyError,
        307,
        "307 Temporary Redirect (a redirect to http://x/, not followed)",
    ),
    "close": (
        {"mode": "close"},
        ProxyError,
        None,
        "the proxy closed the connection without replying",
    ),
    "close mid-reply": (
        {"reply": b"HTTP/1.1 200 Conn", "tunnel": False},
        ProxyError,
        None,
        "the proxy closed the connection in the middle of its reply (after 17 bytes)",
    ),
    "malformed": (
        {"reply": b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "tunnel": False},
        ProxyError,
        None,
        "malformed reply: b'SSH-2.0-OpenSSH_9.6\\r\\n' is not an HTTP status line",
    ),
    "a TLS answer": (
        {"reply": b"\x15\x03\x03\x00\x02\x02\x46", "tunnel": False},
        ProxyError,
        None,
        "(a TLS record: is it an https:// proxy?)",
    ),
    "huge head": (
        {"reply": b"HTTP/1.1 200 OK\r\n" + (b"X-Pad: " + b"a" * 1000 + b"\r\n") * 70},
        ProxyError,
        None,
        f"the proxy's reply head is longer than {MAX_REPLY_HEAD} bytes",
    ),
    "huge line": (
        {"reply": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n"},
        ProxyError,
        None,
        f"the proxy's reply head is longer than {MAX_REPLY_HEAD} bytes",
    ),
    "stall": (
        {"mode": "stall"},
        ProxyTimeoutError,
        None,
        "no reply to CONNECT 127.0.0.1:{origin} within 0.3 s",
    ),
}


@pytest.mark.parametrize("where", ["hop 1, plaintext", "hop 2, inside TLS"])
@pytest.mark.parametrize("failure", list(FAILURES))
async def test_failures_name_the_hop_and_the_reason(
    onion_ca: OnionCA, failure: str, where: str
) -> None:
    options, error, status, words = FAILURES[failure]
    async with contextlib.AsyncExitStack() as stack:
        origin = await stack.enter_async_context(tls_origin(onion_ca, 3))
        bad = await stack.enter_async_context(ConnectProxy(**options))
        proxies: list[str | Proxy] = [bad.url()]
        if where.startswith("hop 2"):
            first = await stack.enter_async_context(
                ConnectProxy(tls=onion_ca.server_context(1, "stdlib"))
            )
            proxies.insert(0, hop(first, 1, onion_ca))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(error) as info:
            await open_connection(
                "127.0.0.1",
                origin,
                proxies=proxies,
                ssl=onion_ca.client_context("stdlib"),
                server_hostname=name(3),
                hop_timeout=0.3 if failure == "stall" else 10,
            )
        assert loop.time() - started < 5
    e = info.value
    n = len(proxies)
    depth = 1 if n == 2 else None
    assert (e.hop, e.depth, e.status, e.proxy.port) == (n, depth, status, bad.port)
    assert e.reason.endswith(words.format(origin=origin)), e.reason
    prefix = f"proxy hop {n} of {n} (http://127.0.0.1:{bad.port}, "
    assert str(e).startswith(prefix + ("depth 1): " if depth else "plaintext): "))


async def test_a_reply_line_longer_than_a_small_reader_limit() -> None:
    async with (
        ConnectProxy(reply=b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n") as p1,
        echo_origin() as origin,
    ):
        with pytest.raises(ProxyError) as info:
            await open_connection("127.0.0.1", origin, proxies=[p1.url()], limit=1024)
    assert info.value.reason == (
        "a line of the proxy's reply is longer than the reader's limit (1024 bytes)"
    )


async def test_407_with_wrong_credentials_says_they_were_refused() -> None:
    async with ConnectProxy(auth=("u", "right")) as p1, echo_origin() as origin:
        with pytest.raises(ProxyAuthenticationError) as info:
            await open_connection("127.0.0.1", origin, proxies=[p1.url("u:wrong")])
    assert info.value.reason.startswith(
        "the proxy refused the credentials (407 Proxy Authentication Required"
    )
    assert "wrong" not in str(info.value)
    assert p1.seen[0].credentials == ("u", "wrong")


async def test_unreachable_origin_is_the_last_hops_502(onion_ca: OnionCA) -> None:
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib")) as p1,
        ConnectProxy() as p2,
        closed_port() as nowhere,
    ):
        with pytest.raises(ProxyError) as info:
            await open_connection(
                "127.0.0.1", nowhere, proxies=[hop(p1, 1, onion_ca), p2.url()], hop_timeout=10
            )
    assert (info.value.hop, info.value.status, info.value.depth) == (2, 502, 1)
    assert f"(the proxy could not reach 127.0.0.1:{nowhere})" in str(info.value)


@pytest.mark.parametrize("engine", ENGINES)
async def test_tls_with_a_proxy_fails_as_a_handshake_error_of_that_hop(
    onion_ca: OnionCA, engine: Engine
) -> None:
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib")) as p1,
        ConnectProxy(tls=onion_ca.server_context(2, "stdlib")) as p2,
        tls_origin(onion_ca, 3) as origin,
    ):
        wrong_name = Proxy.from_url(
            p2.url(), ssl=onion_ca.client_context(engine), server_hostname="other.onion.test"
        )
        with pytest.raises(ProxyHandshakeError) as info:
            await open_connection(
                "127.0.0.1",
                origin,
                proxies=[hop(p1, 1, onion_ca, engine), wrong_name],
                hop_timeout=10,
            )
    e = info.value
    assert isinstance(e, HandshakeError)
    assert (e.hop, e.depth, e.status) == (2, 2, None)
    assert "the TLS handshake with the proxy failed" in e.reason
    assert "hostname mismatch" in e.reason
    assert p2.seen == []


async def test_https_to_a_plain_proxy_fails_at_that_hop(onion_ca: OnionCA) -> None:
    async with ConnectProxy() as plain, echo_origin() as origin:
        proxy = Proxy.from_url(
            plain.url().replace("http://", "https://"),
            ssl=onion_ca.client_context("stdlib"),
            server_hostname=name(1),
        )
        with pytest.raises(ProxyHandshakeError) as info:
            await open_connection("127.0.0.1", origin, proxies=[proxy], hop_timeout=10)
    assert (info.value.hop, info.value.depth) == (1, 1)
    # The plain proxy answered the ClientHello with "HTTP/1.1 400 ...".
    assert info.value.reason.startswith("the TLS handshake with the proxy failed: ")


async def test_a_proxy_that_never_speaks_tls_times_out(onion_ca: OnionCA) -> None:
    async with silent_server() as port, echo_origin() as origin:
        proxy = Proxy.from_url(
            f"https://127.0.0.1:{port}",
            ssl=onion_ca.client_context("pyopenssl"),
            server_hostname=name(1),
            timeout=0.3,  # the hop's own timeout wins over hop_timeout
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ProxyTimeoutError) as info:
            await open_connection("127.0.0.1", origin, proxies=[proxy], hop_timeout=30)
        assert loop.time() - started < 5
    e = info.value
    assert (e.hop, e.depth) == (1, 1)
    assert e.reason == "the TLS handshake with the proxy did not finish within 0.3 s"
    assert isinstance(e, TimeoutError)


async def test_the_first_proxy_cannot_be_reached() -> None:
    async with closed_port() as port:
        with pytest.raises(ProxyError) as info:
            await open_connection("origin.test", 443, proxies=[f"http://127.0.0.1:{port}"])
    e = info.value
    assert (e.hop, e.depth) == (1, None)
    assert str(e).startswith(
        f"proxy hop 1 of 1 (http://127.0.0.1:{port}, plaintext): could not connect to the proxy: "
    )
    assert isinstance(e.__cause__, ConnectionRefusedError)


async def test_the_origins_handshake_failure_is_a_handshake_error_at_its_depth(
    onion_ca: OnionCA,
) -> None:
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib")) as p1,
        tls_origin(onion_ca, 2) as origin,
    ):
        with pytest.raises(HandshakeError) as info:
            await open_connection(
                "127.0.0.1",
                origin,
                proxies=[hop(p1, 1, onion_ca)],
                ssl=onion_ca.client_context("stdlib"),
                server_hostname="wrong.onion.test",
            )
    assert not isinstance(info.value, ProxyError)
    assert info.value.depth == 2
    assert "hostname mismatch" in str(info.value)


async def test_cancelling_mid_chain_aborts_the_connection(onion_ca: OnionCA) -> None:
    async with (
        ConnectProxy(tls=onion_ca.server_context(1, "stdlib")) as p1,
        ConnectProxy(mode="stall") as p2,
    ):
        task = asyncio.ensure_future(
            open_connection("127.0.0.1", 9, proxies=[hop(p1, 1, onion_ca), p2.url()])
        )
        for _ in range(200):
            if p2.seen:
                break
            await asyncio.sleep(0.01)
        assert p2.seen, "the CONNECT never reached proxy 2"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The abort travels: proxy 1 drops its tunnel, proxy 2 sees its
        # client leave.
        await p2.wait_ended(1)
        await p1.wait_ended(1)


# -- against the proxy.py package ---------------------------------------------------

#
# proxy.py (PyPI ``proxy.py``) runs in its own processes; A and B serve TLS
# (``--cert-file/--key-file``: TLS with the proxy itself, not interception),
# B asks for Basic authentication, C is plain.


def _proxy_py_version() -> str | None:
    try:
        version = importlib.metadata.version("proxy.py")
    except importlib.metadata.PackageNotFoundError:
        return None
    return version if importlib.util.find_spec("proxy") is not None else None


PROXY_PY = _proxy_py_version()
needs_proxy_py = pytest.mark.skipif(
    not PROXY_PY, reason="the proxy.py package (pip install proxy.py) is not installed"
)
B_USER, B_PASSWORD = "bob", "p@ss wörd:1"
B_USERINFO = "bob:p%40ss%20w%C3%B6rd%3A1"


class ProxyPyServers:
    def __init__(self, root: Path, ca: OnionCA) -> None:
        self.servers: list[ProxyPy] = []
        try:
            self.a = self._start(ProxyPy(root / "a", leaf=ca.server_cert(1)))
            self.b = self._start(
                ProxyPy(root / "b", leaf=ca.server_cert(2), basic_auth=f"{B_USER}:{B_PASSWORD}")
            )
            self.c = self._start(ProxyPy(root / "c"))
        except BaseException:
            self.stop()
            raise

    def _start(self, server: ProxyPy) -> ProxyPy:
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="module")
def proxy_py(
    onion_ca: OnionCA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyPyServers]:
    if not PROXY_PY:
        pytest.skip("the proxy.py package (pip install proxy.py) is not installed")
    servers = ProxyPyServers(tmp_path_factory.mktemp("proxy_py"), onion_ca)
    try:
        yield servers
    finally:
        servers.stop()


ENGINE_MIXES = {
    "pyopenssl": ("pyopenssl", "pyopenssl", "pyopenssl"),
    "stdlib": ("stdlib", "stdlib", "stdlib"),
    "mixed": ("pyopenssl", "stdlib", "pyopenssl"),
}


@needs_proxy_py
@pytest.mark.parametrize("mix", list(ENGINE_MIXES))
async def test_proxy_py_two_https_proxies_then_the_origin_at_depth_3(
    onion_ca: OnionCA, proxy_py: ProxyPyServers, mix: str
) -> None:
    e1, e2, e3 = ENGINE_MIXES[mix]
    async with tls_origin(onion_ca, 3) as origin:
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[
                hop(proxy_py.a.url(tls=True), 1, onion_ca, e1),
                hop(proxy_py.b.url(B_USERINFO, tls=True), 2, onion_ca, e2),
            ],
            ssl=onion_ca.client_context(e3),
            server_hostname=name(3),
            hop_timeout=10,
        )
        try:
            layers = writer.layers
            assert [(la.depth, la.engine) for la in layers] == [(1, e1), (2, e2), (3, e3)]
            assert [la.server_hostname for la in layers] == [name(1), name(2), name(3)]
            for la in layers:
                assert la.peer_certificate is not None
            for i in range(3):
                await roundtrip(reader, writer, f"inside three layers, line {i}".encode())
        finally:
            await close(writer)


@needs_proxy_py
async def test_proxy_py_plain_then_https_proxy(onion_ca: OnionCA, proxy_py: ProxyPyServers) -> None:
    async with tls_origin(onion_ca, 2) as origin:
        reader, writer = await open_connection(
            "127.0.0.1",
            origin,
            proxies=[
                proxy_py.c.url(tls=False),
                hop(proxy_py.a.url(tls=True), 1, onion_ca, "stdlib"),
            ],
            ssl=onion_ca.client_context("pyopenssl"),
            server_hostname=name(2),
            hop_timeout=10,
        )
        try:
            assert [la.server_hostname for la in writer.layers] == [name(1), name(2)]
            await roundtrip(reader, writer, b"plain, then TLS, then TLS")
        finally:
            await close(writer)


@needs_proxy_py
@pytest.mark.parametrize("userinfo", ["", "bob:wrong"])
async def test_proxy_py_407_names_hop_2(
    onion_ca: OnionCA, proxy_py: ProxyPyServers, userinfo: str
) -> None:
    with pytest.raises(ProxyAuthenticationError) as info:
        await open_connection(
            "127.0.0.1",
            9,
            proxies=[
                hop(proxy_py.a.url(tls=True), 1, onion_ca),
                hop(proxy_py.b.url(userinfo, tls=True), 2, onion_ca),
            ],
            hop_timeout=10,
        )
    e = info.value
    assert (e.hop, e.depth, e.status) == (2, 2, 407)
    assert str(e).startswith(f"proxy hop 2 of 2 (https://127.0.0.1:{proxy_py.b.port}, depth 2): ")
    if userinfo:
        assert e.reason.startswith("the proxy refused the credentials (407 ")
        assert "wrong" not in str(e)
    else:
        assert e.reason.startswith("the proxy requires authentication (407 ")
        assert "it asks for: Basic" in e.reason


@needs_proxy_py
async def test_proxy_py_502_for_an_unreachable_origin(
    onion_ca: OnionCA, proxy_py: ProxyPyServers
) -> None:
    async with closed_port() as nowhere:
        with pytest.raises(ProxyError) as info:
            await open_connection(
                "127.0.0.1",
                nowhere,
                proxies=[hop(proxy_py.a.url(tls=True), 1, onion_ca), proxy_py.c.url(tls=False)],
                hop_timeout=10,
            )
    # C is reached through A; A's TLS is layer 1; C's CONNECT fails.
    e = info.value
    assert (e.hop, e.depth, e.status) == (2, 1, 502)
    assert f"(the proxy could not reach 127.0.0.1:{nowhere})" in e.reason


# -- the command line: client --proxy URL ---------------------------------------------


@pytest.fixture(scope="module")
def ip_cert(onion_ca: OnionCA) -> trustme.LeafCert:
    """A proxy certificate for 127.0.0.1, the name a --proxy URL gives."""
    return onion_ca.ca.issue_cert("127.0.0.1")


@pytest.mark.parametrize("engine", ENGINES)
async def test_cli_client_through_two_proxies(
    onion_ca: OnionCA, ip_cert: trustme.LeafCert, tmp_path: Path, engine: Engine
) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    async with (
        ConnectProxy(tls=server_context(ip_cert)) as p1,
        ConnectProxy(auth=("me", "s3cret")) as p2,
        tls_origin(onion_ca, 2) as origin,
    ):
        out = io.StringIO()
        steps = [Step("push", name(2)), Step("send", "hi"), Step("expect", "echo: hi")]
        status = await run_client(
            "127.0.0.1",
            origin,
            steps,
            Options(cafile=cafile, engine=engine, timeout=10),
            use_stdin=False,
            out=out,
            proxies=[p1.url(), p2.url("me:s3cret")],
        )
    text = out.getvalue()
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0] == (
        f"* connecting to 127.0.0.1:{origin} through 2 proxy hop(s): "
        f"https://127.0.0.1:{p1.port} -> http://127.0.0.1:{p2.port}"
    )
    assert f"* hop 1: TLS with the proxy 127.0.0.1:{p1.port}, layer 1" in lines
    assert f"*   verification: ok (chain to --cafile {cafile}, name 127.0.0.1)" in lines
    assert f"* hop 1: tunnel to 127.0.0.1:{p2.port} open" in lines
    assert f"* hop 2: the proxy 127.0.0.1:{p2.port}, CONNECT in the clear" in lines
    assert f"* hop 2: tunnel to 127.0.0.1:{origin} open" in lines
    assert any(
        line.startswith(f"* connected to 127.0.0.1:{origin} (inside 1 layer(s))") for line in lines
    )
    assert f"* layer 2: TLS handshake with {name(2)} (client, {engine})" in lines
    assert "< echo: hi" in lines
    assert "* closing: close_notify on 2 layer(s), then the socket" in lines
    assert p2.seen[0].credentials == ("me", "s3cret")


async def test_cli_client_says_which_hop_failed(
    onion_ca: OnionCA, ip_cert: trustme.LeafCert
) -> None:
    async with (
        ConnectProxy(tls=server_context(ip_cert)) as p1,
        ConnectProxy(auth=("me", "s3cret")) as p2,
    ):
        out = io.StringIO()
        status = await run_client(
            "127.0.0.1",
            9,
            [Step("push", name(2))],
            Options(insecure=True, engine="pyopenssl", timeout=10),
            use_stdin=False,
            out=out,
            proxies=[p1.url(), p2.url()],
        )
    text = out.getvalue()
    assert status == 1
    assert (
        f"! proxy hop 2 of 2 (http://127.0.0.1:{p2.port}, depth 1): the proxy requires "
        "authentication (407 Proxy Authentication Required"
    ) in text
    assert "TLS handshake with" not in text  # no step ran


async def run_cli(*args: str) -> tuple[int, str, str]:
    """``python -m onion_tls ...`` in a subprocess, without blocking the
    loop the test's servers run in."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "onion_tls",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_proxy_flag_through_two_https_proxies_depth_3(
    onion_ca: OnionCA, ip_cert: trustme.LeafCert, tmp_path: Path
) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    async with (
        ConnectProxy(tls=server_context(ip_cert)) as p1,
        ConnectProxy(tls=server_context(ip_cert), auth=("me", "p@ss")) as p2,
        tls_origin(onion_ca, 3) as origin,
    ):
        status, out, err = await run_cli(
            "client",
            "--proxy",
            p1.url(),
            "--proxy",
            p2.url("me:p%40ss"),
            f"127.0.0.1:{origin}",
            "--cafile",
            cafile,
            "--tls",
            name(3),
            "--send",
            "deep",
            "--expect",
            "echo: deep",
            "--no-stdin",
        )
    assert status == 0, out + err
    assert err == ""
    assert f"* hop 2: TLS with the proxy 127.0.0.1:{p2.port}, layer 2" in out
    assert f"* connected to 127.0.0.1:{origin} (inside 2 layer(s))" in out
    assert f"* layer 3: TLS handshake with {name(3)} (client, stdlib)" in out
    assert "< echo: deep" in out
    assert "* closing: close_notify on 3 layer(s), then the socket" in out
    assert p2.seen[0].credentials == ("me", "p@ss")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("socks5://127.0.0.1:1080", "--proxy: bad proxy URL 'socks5://127.0.0.1:1080'"),
        ("http://u:secret@127.0.0.1:x", "--proxy: bad proxy URL 'http://u:***@127.0.0.1:x'"),
    ],
)
async def test_cli_proxy_usage_errors(url: str, message: str) -> None:
    status, _out, err = await run_cli("client", "--proxy", url, "127.0.0.1:1", "--no-stdin")
    assert status == 2
    assert message in err
    assert "secret" not in err
