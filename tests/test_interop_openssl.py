"""Interoperability with the ``openssl s_server`` and ``openssl s_client``
binaries, one layer, both directions, both engines, TLS 1.2 and 1.3: data
both ways, ALPN and SNI seen on both ends, close_notify and unwrap, and
session resumption across two connections."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import onion_tls
from onion_tls.testing import ENGINES, OnionCA

from .helpers import Recorder

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl binary is not installed")

VERSIONS = ["TLSv1.2", "TLSv1.3"]
_FLAG = {"TLSv1.2": "-tls1_2", "TLSv1.3": "-tls1_3"}
HOST = "layer1.onion.test"


def _files(ca: OnionCA, tmp_path: Path) -> tuple[str, str]:
    ca_pem, leaf_pem = tmp_path / "ca.pem", tmp_path / "leaf.pem"
    ca.ca.cert_pem.write_to_path(str(ca_pem))
    ca.server_cert(1).private_key_and_cert_chain_pem.write_to_path(str(leaf_pem))
    return str(ca_pem), str(leaf_pem)


async def _line(stream: asyncio.StreamReader, pattern: str) -> tuple[str, list[str]]:
    """Read lines until one matches; returns it and every line read."""
    seen = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), 10)
        if not raw:
            raise AssertionError(f"EOF before {pattern!r}: {seen}")
        line = raw.decode(errors="replace").rstrip("\n")
        seen.append(line)
        if re.search(pattern, line):
            return line, seen


def _trace_server_names(trace: str) -> list[str]:
    """The SNI host names in ``-trace`` output (ClientHello extensions)."""
    names = []
    lines = trace.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"extension_type=server_name\(0\), length=(\d+)", line)
        if not m or int(m.group(1)) == 0:
            continue
        hexbytes: list[str] = []
        for dump in lines[i + 1 :]:
            d = re.match(r"\s+[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){0,15}[0-9a-f]{2})", dump)
            if not d:
                break
            hexbytes += re.findall(r"[0-9a-f]{2}", d.group(1))
        data = bytes.fromhex("".join(hexbytes))
        names.append(data[5:].decode())  # list length, type, name length
    return names


# -- onion_tls as the client, openssl s_server as the server -----------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_onion_client_openssl_s_server(
    onion_ca: OnionCA, engine: Any, version: str, tmp_path: Path
) -> None:
    _, leaf_pem = _files(onion_ca, tmp_path)
    # -rev: echo each line reversed; two connections (the second resumes)
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-naccept", "2",
        "-cert", leaf_pem, "-key", leaf_pem, "-alpn", "onion-1", "-rev", "-trace",
        _FLAG[version],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        accept, _ = await _line(proc.stdout, r"^ACCEPT ")
        port = int(accept.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        cctx = onion_ca.client_context(engine, alpn=["other", "onion-1"])
        session = None
        for attempt in (1, 2):
            _, onion = await loop.create_connection(onion_tls.wrap(Recorder), "127.0.0.1", port)
            app: Recorder = onion.transport.get_protocol()  # type: ignore[assignment]
            layer = await app.transport.start_tls(cctx, server_hostname=HOST, session=session)
            assert layer.version == version
            assert layer.alpn_protocol == "onion-1"
            pem = onion_ca.server_cert(1).cert_chain_pems[0].bytes()
            assert layer.peer_certificate == x509.load_pem_x509_certificate(pem)
            app.transport.write(b"hello from onion %d\n" % attempt)
            assert await app.read_exactly(19) == b"%d noino morf olleh\n" % attempt
            assert layer.session_reused is (attempt == 2)
            session = layer.session
            assert session is not None  # TLS 1.3: the ticket came before the echo
            # unwrap: s_server answers our close_notify with its own
            popped = await app.transport.stop_tls()
            assert popped is layer
            assert app.transport.layers == ()
            assert await app.wait_lost() is None  # then the plaintext EOF
        out = (await asyncio.wait_for(proc.stdout.read(), 10)).decode(errors="replace")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert _trace_server_names(out) == [HOST, HOST]
    # the server's own ALPN extension names the protocol it chose
    assert re.search(r"application_layer_protocol_negotiation\(16\), length=10\n\s+onion-1", out)


# -- onion_tls as the server, openssl s_client as the client -----------------------


class EchoServer(Recorder):
    context: Any
    views: list[onion_tls.TLSLayer]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        fut = self.transport.start_tls(self.context, server_side=True)
        fut.add_done_callback(lambda f: self.views.append(f.result()))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())

    def eof_received(self) -> bool:
        self.eofs += 1
        return False  # s_client's close_notify: we are done


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_openssl_s_client_onion_server(
    onion_ca: OnionCA, engine: Any, version: str, tmp_path: Path
) -> None:
    ca_pem, _ = _files(onion_ca, tmp_path)
    views: list[onion_tls.TLSLayer] = []
    apps: list[EchoServer] = []

    class Server(EchoServer):
        context = onion_ca.server_context(1, engine, alpn=["onion-1"])

        def __init__(self) -> None:
            super().__init__()
            self.views = views
            apps.append(self)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(onion_tls.wrap(Server), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        sess = tmp_path / "session.pem"
        outputs = []
        for attempt in (1, 2):
            resume = ["-sess_in", str(sess)] if attempt == 2 else ["-sess_out", str(sess)]
            proc = await asyncio.create_subprocess_exec(
                OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}",
                "-servername", HOST, "-alpn", "other,onion-1",
                "-CAfile", ca_pem, "-verify_return_error", "-verify_hostname", HOST,
                _FLAG[version], *resume,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(b"hello from s_client\n")
                _, seen = await _line(proc.stdout, r"^HELLO FROM S_CLIENT$")
                # let TLS 1.3 tickets reach s_client before it leaves
                proc.stdin.write(b"again\n")
                _, more = await _line(proc.stdout, r"^AGAIN$")
                proc.stdin.close()  # s_client sends close_notify and exits
                rest = (await asyncio.wait_for(proc.stdout.read(), 10)).decode()
                assert await asyncio.wait_for(proc.wait(), 10) == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            outputs.append("\n".join(seen + more) + rest)
            assert await apps[-1].wait_lost() is None
    first, second = outputs
    for out in outputs:
        assert "ALPN protocol: onion-1" in out
        # -verify_hostname with -verify_return_error: the name was checked
        assert "Verify return code: 0 (ok)" in out
        assert f"Protocol  : {version}" in out
    assert "New, " in first and "Reused, " in second
    assert [v.session_reused for v in views] == [False, True]
    for view in views:
        assert view.engine == engine
        assert view.server_hostname == HOST
        assert view.alpn_protocol == "onion-1"
        assert view.version == version
    assert [a.eofs for a in apps] == [1, 1]
