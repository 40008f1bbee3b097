"""``python -m onion_tls``: demo (loopback run and serve mode) and client."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from onion_tls._cli_client import Options, Step, StepError, parse_step, parse_target, run_client
from onion_tls._demo import DemoPlan, EchoServer
from onion_tls.streams import start_server
from onion_tls.testing import OnionCA

ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Debug mode (set by nox) reports slow callbacks on stderr when the
    # machine is busy; -W error still turns every warning into a failure.
    env.pop("PYTHONASYNCIODEBUG", None)
    return env


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "onion_tls", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        check=False,
    )


# -- help and usage ---------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    top = cli("--help")
    assert top.returncode == 0
    assert "demo" in top.stdout and "client" in top.stdout
    client = cli("client", "--help")
    assert client.returncode == 0
    for text in ("--tls NAME[,ALPN...]", "--pop", "--cafile", "--insecure", "push NAME", "quit"):
        assert text in client.stdout
    demo = cli("demo", "--help")
    assert demo.returncode == 0
    for text in ("--layers", "--engine", "--port", "--serve", "layerN.onion.test"):
        assert text in demo.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--layers", "0"), "--layers must be at least 1"),
        (("client", "nohost"), "expected HOST:PORT, got 'nohost'"),
        (("client", "h:1", "--key", "k.pem"), "--key needs --cert"),
        (("bench-nope",), "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_parse_step_and_target() -> None:
    assert parse_step("  push layer1.test h2,http/1.1 ") == Step("push", "layer1.test h2,http/1.1")
    assert parse_step("send  hello world") == Step("send", "hello world")
    assert parse_step("EXIT") == Step("quit")
    assert parse_step("# comment") is None
    assert parse_step("") is None
    with pytest.raises(StepError, match=r"unknown command 'hello'.*send hello there"):
        parse_step("hello there")
    with pytest.raises(StepError, match="push needs a server name"):
        parse_step("push")
    with pytest.raises(StepError, match="pop takes no argument"):
        parse_step("pop now")
    assert parse_target("example.org:443") == ("example.org", 443)
    assert parse_target("[::1]:8443") == ("::1", 8443)
    with pytest.raises(ValueError):
        parse_target("example.org")


# -- demo -------------------------------------------------------------------------


def test_demo_default_runs_three_mixed_layers() -> None:
    proc = cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "wrapped  depth 1  client  stdlib" in out
    assert "wrapped  depth 2  server  pyopenssl" in out  # roles swap at even depths
    assert "echo at depth 3: hello from inside 3 layer(s)" in out
    assert "unwrapped depth 1: echo at depth 0: back to 0 layer(s)" in out
    assert out.rstrip().endswith("done, every layer wrapped and unwrapped")


def test_demo_layers_and_engine() -> None:
    proc = cli("demo", "--layers", "5", "--engine", "pyopenssl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("  wrapped  depth") == 5
    assert "depth 5  client  pyopenssl" in proc.stdout
    assert "stdlib" not in proc.stdout


def test_demo_serves_and_the_client_connects(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    server = subprocess.Popen(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "onion_tls",
            "demo",
            "--port",
            "0",
            "--ca-out",
            str(ca),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert server.stdout is not None
        banner = []
        for line in server.stdout:
            banner.append(line)
            if line.startswith("waiting for connections"):
                break
        text = "".join(banner)
        assert "the server of depth N presents the name layerN.onion.test" in text
        port = text.split("listening on 127.0.0.1:")[1].split()[0]
        assert ca.exists()

        # Steps from flags, then commands from standard input.
        commands = "send one\nexpect echo at depth 2: one\npop\nlayers\nsend two\nquit\n"
        client = cli(
            "client",
            f"127.0.0.1:{port}",
            "--cafile",
            str(ca),
            "--tls",
            "layer1.onion.test",
            "--tls",
            "layer2.onion.test,h2",
            "--engine",
            "pyopenssl",
            stdin=commands,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert client.stderr == ""
        out = client.stdout
        assert (
            "* layer 2: TLS handshake with layer2.onion.test (client, pyopenssl, ALPN offered: h2)"
            in out
        )
        assert f"*   verification: ok (chain to --cafile {ca}, name layer2.onion.test)" in out
        assert "< echo at depth 2: one" in out
        assert "* layer 2: unwrapped; 1 layer(s) left" in out
        assert "* layer 1: pyopenssl TLSv1.3" in out
        assert "> two   (inside 1 layer(s))" in out
        assert out.rstrip().endswith("* closed")
    finally:
        # SIGTERM, not Ctrl-C's SIGINT: a test run started as a background
        # job passes SIGINT on ignored, and the server would not stop.
        server.send_signal(signal.SIGTERM)
        rest, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert err == ""
    assert "layer up: depth 2  server" in rest
    assert "echo at depth 2: one" in rest
    assert "layer 2 unwrapped (the peer closed it)" in rest
    assert rest.rstrip().endswith("onion_tls demo server: stopped")


# -- client, in process -------------------------------------------------------------


@asynccontextmanager
async def echo_server(ca: OnionCA) -> AsyncIterator[int]:
    echo = EchoServer(DemoPlan(ca, "stdlib"))
    server = await start_server(echo.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await echo.wait()


async def client_run(port: int, steps: list[Step], opts: Options) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_client("127.0.0.1", port, steps, opts, use_stdin=False, out=out)
    return status, out.getvalue()


async def test_client_pushes_three_layers_and_pops_them(onion_ca: OnionCA, tmp_path: Path) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    steps = [Step("push", f"layer{d}.onion.test") for d in (1, 2, 3)]
    steps += [Step("send", "deep"), Step("expect", "echo at depth 3: deep")]
    steps += [Step("pop"), Step("pop"), Step("send", "x"), Step("expect", "depth 1: x")]
    async with echo_server(onion_ca) as port:
        status, out = await client_run(port, steps, Options(cafile=cafile, timeout=10))
    assert status == 0, out
    for d in (1, 2, 3):
        assert f"* layer {d}: TLSv1.3" in out
    assert "* layer 3: unwrapped; 2 layer(s) left" in out
    assert "* closing: close_notify on 1 layer(s), then the socket" in out


async def test_client_reports_a_failed_handshake(onion_ca: OnionCA, tmp_path: Path) -> None:
    cafile = str(tmp_path / "ca.pem")
    onion_ca.write_ca_pem(cafile)
    steps = [Step("push", "layer1.onion.test"), Step("push", "not-this-name.test")]
    async with echo_server(onion_ca) as port:
        status, out = await client_run(port, steps, Options(cafile=cafile, timeout=10))
    assert status == 1
    assert "! layer 2: handshake failed: certificate verify failed: hostname mismatch" in out
    assert "connection lost" not in out  # said once, not twice


async def test_client_without_the_ca_fails_and_insecure_works(onion_ca: OnionCA) -> None:
    async with echo_server(onion_ca) as port:
        status, out = await client_run(port, [Step("push", "layer1.onion.test")], Options())
        assert status == 1
        assert "unknown CA" in out or "unable to get local issuer" in out
        steps = [Step("push", "layer1.onion.test"), Step("send", "hi"), Step("expect", "hi")]
        status, out = await client_run(port, steps, Options(insecure=True, timeout=10))
        assert status == 0, out
        assert "*   verification: NONE (--insecure)" in out


async def test_client_step_errors(onion_ca: OnionCA) -> None:
    async with echo_server(onion_ca) as port:
        status, out = await client_run(port, [Step("pop")], Options(timeout=10))
        assert status == 1
        assert "! pop: there is no layer, the connection is plaintext" in out
        status, out = await client_run(
            port, [Step("send", "a"), Step("expect", "never")], Options(timeout=0.2)
        )
        assert status == 1
        assert "! expect 'never': not received within 0.2 s" in out


async def test_client_cannot_connect() -> None:
    sock_server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = sock_server.sockets[0].getsockname()[1]
    sock_server.close()
    await sock_server.wait_closed()
    status, out = await client_run(port, [], Options(timeout=5))
    assert status == 1
    assert f"! cannot connect to 127.0.0.1:{port}" in out
