"""Logging under "onion_tls": per depth, handshake start and end, alerts,
unwrap and errors, for both engines; payload only behind the switch."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import pytest

import onion_tls
from onion_tls.testing import ENGINES, OnionCA

from .helpers import MIXED, close_both, ping, recorder_pair
from .helpers import start_layer_with as start_layer

SECRET = b"PAYLOAD-do-not-log"


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="onion_tls")
    return caplog


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "onion_tls"]


@pytest.mark.parametrize("payload_debug", [False, True])
async def test_lifecycle_is_logged_per_depth(
    onion_ca: OnionCA, debug_log: pytest.LogCaptureFixture, payload_debug: bool
) -> None:
    pair, _, _ = await recorder_pair()
    for depth in (1, 2):
        client_engine, server_engine = MIXED[depth]
        await start_layer(
            pair,
            onion_ca.client_context(client_engine, alpn=["x"]),  # type: ignore[arg-type]
            onion_ca.server_context(depth, server_engine, alpn=["x"]),  # type: ignore[arg-type]
            server_hostname=onion_ca.hostname(depth),
        )
    onion_tls.set_payload_debug(payload_debug)
    try:
        await ping(pair, SECRET)
    finally:
        onion_tls.set_payload_debug(False)
    await pair.stop_tls()
    await close_both(pair)

    lines = _lines(debug_log)
    for depth in (1, 2):
        client_engine, server_engine = MIXED[depth]
        for side, engine in (("client", client_engine), ("server", server_engine)):
            head = f"layer {depth}: handshake"
            started = [x for x in lines if x.startswith(f"{head} started ({side}, {engine}")]
            done = [x for x in lines if x.startswith(f"{head} done ({side}, {engine}, TLSv1.3, ")]
            assert len(started) == len(done) == 1, (depth, side, lines)
            assert "resumed=False" in done[0]
            assert "alpn=x" in done[0]
            assert f"sni={onion_ca.hostname(depth)}" in done[0]
    # unwrap of layer 2 on both sides, close_notify both ways for each engine
    assert lines.count("layer 2: popped (unwrapped)") == 2
    assert lines.count("layer 2: alert sent: warning close_notify") == 2
    assert lines.count("layer 2: alert received: warning close_notify") == 2
    assert "layer 1: alert sent: warning close_notify" in lines
    text = "\n".join(lines)
    if payload_debug:
        assert f"layer 2: encrypted {len(SECRET)} bytes of plaintext: {SECRET!r}" in lines
        assert f"layer 2: decrypted {len(SECRET)} bytes of plaintext: {SECRET!r}" in lines
        assert f"layer 2: decrypted {len(SECRET)} bytes of plaintext: {SECRET[::-1]!r}" in lines
    else:
        assert "plaintext" not in text
        assert "PAYLOAD" not in text and "DAOLYAP" not in text


@pytest.mark.parametrize("client_engine", ENGINES)
async def test_failures_and_alerts_are_logged(
    onion_ca: OnionCA, debug_log: pytest.LogCaptureFixture, client_engine: str
) -> None:
    server_engine = "stdlib" if client_engine == "pyopenssl" else "pyopenssl"
    pair, client, server = await recorder_pair()
    fs = pair.server.start_tls(onion_ca.server_context(1, server_engine), server_side=True)  # type: ignore[arg-type]
    fc = pair.client.start_tls(
        onion_ca.client_context(client_engine),  # type: ignore[arg-type]
        server_hostname="wrong.onion.test",
    )
    await asyncio.gather(fc, fs, return_exceptions=True)
    await client.wait_lost()
    await server.wait_lost()
    lines = _lines(debug_log)
    assert (
        "failed: TLS layer 1 (depth 1): certificate verify failed: hostname mismatch: "
        "certificate is not valid for 'wrong.onion.test'"
    ) in lines
    assert any(x.startswith("failed: TLS layer 1 (depth 1): the peer refused:") for x in lines)
    received = [x for x in lines if x.startswith("layer 1: alert received: ")]
    assert received, lines
    if client_engine == "pyopenssl":
        # only pyOpenSSL shows the alerts it sends; OpenSSL checks the name
        # (the direct path), so the alert is the stdlib engine's
        assert "layer 1: alert sent: fatal bad_certificate" in lines
    else:
        assert received == ["layer 1: alert received: fatal bad_certificate"]


def test_payload_switch_from_the_environment() -> None:
    code = "import onion_tls._log as l; print(l.switch.on)"
    env = dict(os.environ, ONION_TLS_DEBUG_PAYLOAD="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    env["ONION_TLS_DEBUG_PAYLOAD"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
