"""Session resumption per layer: a second connection resumes the first
one's sessions at every depth, for both engines and every pairing of them,
with TLS 1.3 tickets, TLS 1.2 tickets and TLS 1.2 session ids."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL

from onion_tls.testing import ENGINES, OnionCA

from .helpers import close_both, ping, recorder_pair
from .helpers import start_layer_with as start_layer

PAIRS = [(c, s) for c in ENGINES for s in ENGINES]
MODES = ["TLSv1.3", "TLSv1.2-ticket", "TLSv1.2-session-id"]


def _contexts(
    ca: OnionCA, depth: int, client_engine: Any, server_engine: Any, mode: str
) -> tuple[Any, Any]:
    version = "TLSv1.3" if mode == "TLSv1.3" else "TLSv1.2"
    sctx = ca.server_context(depth, server_engine, version=version)
    if mode == "TLSv1.2-session-id":
        # No tickets: the server keeps the session in its cache, by id.
        if server_engine == "stdlib":
            sctx.options |= ssl.OP_NO_TICKET
        else:
            sctx.set_options(SSL.OP_NO_TICKET)
    cctx = ca.client_context(client_engine, version=version)
    return cctx, sctx


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("client_engine", "server_engine"), PAIRS)
async def test_second_connection_resumes_every_depth(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any, mode: str
) -> None:
    ctxs = {d: _contexts(onion_ca, d, client_engine, server_engine, mode) for d in (1, 2, 3)}
    version = "TLSv1.3" if mode == "TLSv1.3" else "TLSv1.2"

    first, _, _ = await recorder_pair()
    sessions = {}
    for depth, (cctx, sctx) in ctxs.items():
        lc, ls = await start_layer(first, cctx, sctx, server_hostname=onion_ca.hostname(depth))
        assert lc.session_reused is ls.session_reused is False
        # A round trip: in TLS 1.3 the ticket comes after the handshake.
        await ping(first)
        sessions[depth] = lc.session
        assert sessions[depth] is not None
        assert ls.session is None
    await close_both(first)

    second, _, _ = await recorder_pair()
    for depth, (cctx, sctx) in ctxs.items():
        lc, ls = await start_layer(
            second, cctx, sctx, server_hostname=onion_ca.hostname(depth), session=sessions[depth]
        )
        assert lc.session_reused is True, depth
        assert ls.session_reused is True, depth
        assert lc.version == ls.version == version
        # what the views report survives resumption
        assert ls.server_hostname == onion_ca.hostname(depth)
        pem = onion_ca.server_cert(depth).cert_chain_pems[0].bytes()
        assert lc.peer_certificate == x509.load_pem_x509_certificate(pem)
        await ping(second, b"resumed %d" % depth)
    await close_both(second)


@pytest.mark.parametrize("mode", ["TLSv1.3", "TLSv1.2-ticket"])
@pytest.mark.parametrize("engine", ENGINES)
async def test_another_layers_session_is_not_resumed(
    onion_ca: OnionCA, engine: Any, mode: str
) -> None:
    """A session offered to a server that did not make it (another depth,
    another context) gives a full handshake, not a failure."""
    ctx1 = _contexts(onion_ca, 1, engine, engine, mode)
    ctx2 = _contexts(onion_ca, 2, engine, engine, mode)
    first, _, _ = await recorder_pair()
    lc, _ = await start_layer(first, *ctx1, server_hostname=onion_ca.hostname(1))
    await ping(first)
    session = lc.session
    await close_both(first)

    second, _, _ = await recorder_pair()
    cctx2 = ctx1[0]  # same client context (a stdlib session needs it)
    lc, ls = await start_layer(
        second, cctx2, ctx2[1], server_hostname=onion_ca.hostname(2), session=session
    )
    assert lc.session_reused is ls.session_reused is False
    await ping(second)
    await close_both(second)


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_tls13_session_appears_with_the_ticket(
    onion_ca: OnionCA, client_engine: Any, server_engine: Any
) -> None:
    """TLS 1.3: the client's handshake ends before the server's ticket is
    even sent, so ``session`` is None until the ticket has been read."""
    cctx, sctx = _contexts(onion_ca, 1, client_engine, server_engine, "TLSv1.3")
    pair, _, _ = await recorder_pair(auto=False)
    pipe = pair.pipe
    fs = pair.server.start_tls(sctx, server_side=True)
    fc = pair.client.start_tls(cctx, server_hostname=onion_ca.hostname(1))
    client_view = pair.client.layers[0]
    assert pipe.step(pipe.a)  # ClientHello
    while pipe.step(pipe.b):  # ServerHello ... server Finished
        pass
    assert client_view.state == "open"
    assert client_view.version == "TLSv1.3"
    assert not fs.done()
    assert client_view.session is None  # no ticket yet
    while pipe.step(pipe.a):  # client Finished: the server answers with tickets
        pass
    assert client_view.session is None  # still on the wire
    while pipe.step(pipe.b):
        pass
    assert client_view.session is not None
    await asyncio.gather(fc, fs)
    pipe.auto = True
    await close_both(pair)
