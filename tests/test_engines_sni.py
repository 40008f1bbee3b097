"""The server name a client sent, read from its ClientHello (a server layer
reads it from the records it frames, whatever its engine, so both engines
report it alike - also when the ClientHello is split over several records,
which TLS allows)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from onion_tls import OnionError
from onion_tls._chain import Chain
from onion_tls._engines import new_engine
from onion_tls._layer import Layer
from onion_tls._sni import ClientHelloSNI
from onion_tls.testing import ENGINES, OnionCA


def _client_hello(ca: OnionCA, engine: Any, server_hostname: str | None) -> bytes:
    ctx = ca.client_context(engine)
    if engine == "stdlib":
        ctx.check_hostname = False
    client = new_engine(
        ctx, server_side=False, server_hostname=server_hostname, session=None, depth=1
    )
    assert client.do_handshake() is False
    hello = client.take_output()
    assert hello[0] == 22 and hello[5] == 1
    return hello


def _refragment(hello: bytes, size: int) -> bytes:
    """The same handshake bytes in records of at most ``size`` bytes."""
    body = hello[5:]
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += hello[:3] + len(piece).to_bytes(2, "big") + piece
    return bytes(out)


@pytest.mark.parametrize("client_engine", ENGINES)
def test_reader_on_real_client_hellos(onion_ca: OnionCA, client_engine: Any) -> None:
    rng = random.Random(5)
    for name in ("layer1.onion.test", None, "127.0.0.1"):
        hello = _client_hello(onion_ca, client_engine, name)
        expected = None if name == "127.0.0.1" else name  # no SNI for addresses
        for size in (len(hello), 40, 7, 1, rng.randint(2, 30)):
            reader = ClientHelloSNI()
            for record in _records(_refragment(hello, size)):
                reader.feed_record(record)
            assert reader.done
            assert reader.name == expected


def test_reader_gives_up_on_what_is_not_a_client_hello() -> None:
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"):
        reader = ClientHelloSNI()
        reader.feed_record(junk)
        assert reader.done and reader.name is None
    reader = ClientHelloSNI()
    reader.feed_record(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03")  # truncated body
    assert reader.name is None  # nothing raised; the TLS engine will refuse it


class _Hooks:
    """A chain's hooks that only keep what goes to the socket."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write_raw(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def failed(self, exc: OnionError) -> None:
        raise AssertionError(exc)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
def test_server_layers_read_a_fragmented_client_hello(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any
) -> None:
    hello = _client_hello(onion_ca, client_engine, "layer1.onion.test")
    hooks = _Hooks()
    chain = Chain(hooks)  # type: ignore[arg-type]
    engine = new_engine(
        onion_ca.server_context(1, server_engine),
        server_side=True,
        server_hostname=None,
        session=None,
        depth=chain.next_depth(),
    )
    layer: Layer = chain.push(engine)
    chain.begin(layer, b"")
    stream = _refragment(hello, 64)
    for i in range(0, len(stream), 23):  # records split across reads, too
        chain.feed(stream[i : i + 23])
    assert layer.requested_server_name == "layer1.onion.test"
    assert layer.view.server_hostname == "layer1.onion.test"
    reply = bytes(hooks.out)
    assert reply[0] == 22 and reply[5] == 2  # ServerHello: the engine took it too


def _records(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        size = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        out.append(stream[pos : pos + 5 + size])
        pos += 5 + size
    return out
