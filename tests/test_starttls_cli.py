"""``python -m onion_tls client --starttls PROTO[,NAME]``: the protocol's
upgrade as layer 1, before the other steps, like ``openssl s_client
-starttls``."""

from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest

from onion_tls import HandshakeError, StreamWriter
from onion_tls import starttls as st
from onion_tls._cli_client import Options, Step, run_client
from onion_tls.starttls._common import UPGRADE
from onion_tls.testing import OnionCA

from .test_cli import cli, cli_env
from .test_starttls import REFUSALS, SCRIPTS, SERVERS, ping_pong_server, scripted, serve


async def client_run(port: int, steps: list[Step], opts: Options) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_client("127.0.0.1", port, steps, opts, use_stdin=False, out=out)
    return status, out.getvalue()


@pytest.mark.parametrize("engine", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("protocol", st.PROTOCOLS)
async def test_client_starttls_then_its_steps(
    onion_ca: OnionCA, tmp_path: Path, protocol: str, engine: str
) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    sctx = onion_ca.server_context(1)

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[bytes]:
        await SERVERS[protocol](reader, writer, sctx)
        return await ping_pong_server(reader, writer)

    opts = Options(
        cafile=cafile, engine=engine, timeout=10, starttls=f"{protocol},layer1.onion.test"
    )
    steps = [Step("send", "hello"), Step("expect", "pong inside 1 layer(s): hello")]
    async with serve(handler) as (port, outcome):
        status, out = await client_run(port, steps, opts)
        assert await outcome.wait() == [b"hello\n"]
    assert status == 0, out
    assert (
        f"* STARTTLS ({protocol}): plain-text upgrade, then layer 1: TLS handshake with "
        f"layer1.onion.test (client, {engine})"
    ) in out
    assert "* layer 1: TLSv1.3" in out
    assert f"*   verification: ok (chain to --cafile {cafile}, name layer1.onion.test)" in out
    assert "> hello   (inside 1 layer(s))" in out
    assert "< pong inside 1 layer(s): hello" in out


@pytest.mark.parametrize("protocol", ["smtp", "postgres"])
async def test_client_starttls_refused(onion_ca: OnionCA, protocol: str) -> None:
    answer, words = REFUSALS[protocol]
    async with serve(scripted(SCRIPTS[protocol], answer)) as (port, outcome):
        status, out = await client_run(port, [Step("send", "never")], Options(starttls=protocol))
        await outcome.wait()
    assert status == 1
    assert f"! {UPGRADE[protocol]}: " in out and words in out
    assert "> never" not in out  # the other steps do not run
    assert out.rstrip().endswith("* closed")


async def test_client_starttls_handshake_failure(onion_ca: OnionCA, tmp_path: Path) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    sctx = onion_ca.server_context(1)
    async with serve(lambda r, w: st.pop3_serve_stls(r, w, sctx)) as (port, outcome):
        opts = Options(cafile=cafile, timeout=10, starttls="pop3,wrong.name.test")
        status, out = await client_run(port, [], opts)
        with pytest.raises(HandshakeError):  # the server's side: the client's alert
            await outcome.wait()
    assert status == 1
    assert "! layer 1: handshake failed: certificate verify failed" in out


async def test_cli_starttls_in_a_subprocess(onion_ca: OnionCA, tmp_path: Path) -> None:
    """The real command line: ``client HOST:PORT --starttls imap,NAME``."""
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    sctx = onion_ca.server_context(1)

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> list[bytes]:
        await st.imap_serve_starttls(reader, writer, sctx)
        return await ping_pong_server(reader, writer)

    async with serve(handler) as (port, outcome):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error",
            "-m",
            "onion_tls",
            "client",
            f"127.0.0.1:{port}",
            "--starttls",
            "imap,layer1.onion.test",
            "--cafile",
            cafile,
            "--send",
            "a1 NOOP",
            "--expect",
            "pong inside 1 layer(s): a1 NOOP",
            "--no-stdin",
            "--timeout",
            "10",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await outcome.wait()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert err == b""
    assert "* STARTTLS (imap): plain-text upgrade, then layer 1" in text
    assert "< pong inside 1 layer(s): a1 NOOP" in text


def test_cli_starttls_usage() -> None:
    helped = cli("client", "--help")
    assert "--starttls PROTO[,NAME]" in helped.stdout
    proc = cli("client", "127.0.0.1:1", "--starttls", "gopher")
    assert proc.returncode == 2
    assert "--starttls: unknown protocol 'gopher' (known: smtp, imap, pop3, ftp, postgres)" in (
        proc.stderr
    )
