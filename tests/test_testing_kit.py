"""onion_tls.testing and the pytest plugin: what the README promises users."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from onion_tls import StreamWriter
from onion_tls.testing import ENGINES, Engine, OnionCA, dribble, stream_pair

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- this block is run by tests/test_testing_kit.py -->"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARK) + len(MARK) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def run_pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    """pytest in a directory of its own, as a user would run it: the plugin
    comes from the pytest11 entry point, not from this suite's conftest."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Debug mode (set by nox) reports slow callbacks on stderr when the
    # machine is busy; -W error still turns every warning into a failure.
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=directory,
        env=env,
        check=False,
    )


def test_readme_snippet_is_a_passing_test_under_20_lines(tmp_path: Path) -> None:
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) < 20
    (tmp_path / "test_shout.py").write_text(snippet)
    proc = run_pytest(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout  # once per engine


def test_the_marker_fails_tests_that_leak(tmp_path: Path) -> None:
    (tmp_path / "test_leaks.py").write_text(
        "import asyncio\n"
        "import pytest\n"
        "pytestmark = pytest.mark.onion_tls\n"
        "async def test_fine(onion_pair):\n"
        "    async with onion_pair() as pair:\n"
        "        pair.client.writer.write(b'x')\n"
        "        assert await pair.server.reader.readexactly(1) == b'x'\n"
        "async def test_leaves_a_task():\n"
        "    asyncio.get_running_loop().create_task(asyncio.sleep(10))\n"
        "async def test_unretrieved_exception():\n"
        "    fut = asyncio.get_running_loop().create_future()\n"
        "    fut.set_exception(ValueError('nobody looked'))\n"
        "    del fut\n"
    )
    proc = run_pytest(tmp_path)
    out = proc.stdout
    assert "2 failed, 1 passed" in out, out + proc.stderr
    assert "tasks left pending when the test returned" in out
    assert "the event loop's exception handler was called" in out
    assert "nobody looked" in out


# -- OnionCA ----------------------------------------------------------------------


def _dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_onion_ca_identities_and_files(onion_ca: OnionCA, tmp_path: Path) -> None:
    assert onion_ca.hostname(3) == "layer3.onion.test"
    assert onion_ca.server_cert(1) is onion_ca.server_cert(1)  # issued once
    assert onion_ca.server_cert(1) is not onion_ca.server_cert(2)
    path = tmp_path / "ca.pem"
    onion_ca.write_ca_pem(str(path))
    assert path.read_bytes() == onion_ca.cert_pem
    assert onion_ca.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize("engine", ENGINES)
async def test_each_depth_presents_its_own_identity(onion_ca: OnionCA, engine: Engine) -> None:
    async with stream_pair() as pair:
        for depth in (1, 2, 3):
            lc, _ = await pair.start_tls(onion_ca, engine=engine)
            assert lc.peer_certificate is not None
            assert _dns_names(lc.peer_certificate) == [f"layer{depth}.onion.test"]


@pytest.mark.parametrize("server_engine", ENGINES)
@pytest.mark.parametrize("client_engine", ENGINES)
async def test_mutual_tls_version_and_alpn_per_layer(
    onion_ca: OnionCA, client_engine: Engine, server_engine: Engine
) -> None:
    async with stream_pair() as pair:
        lc, ls = await pair.start_tls(
            onion_ca, client_engine=client_engine, server_engine=server_engine, mutual=True
        )
        assert ls.peer_certificate is not None
        assert _dns_names(ls.peer_certificate) == ["client1.onion.test"]
        lc, ls = await pair.start_tls(
            onion_ca,
            client_engine=client_engine,
            server_engine=server_engine,
            version="TLSv1.2",
            alpn=["h2", "http/1.1"],
        )
        assert lc.version == ls.version == "TLSv1.2"
        assert lc.alpn_protocol == ls.alpn_protocol == "h2"
        assert ls.peer_certificate is None  # no client certificate asked for here


async def test_client_context_without_trust_fails(onion_ca: OnionCA) -> None:
    async with stream_pair() as pair:
        (_, cw), (_, sw) = pair.client, pair.server
        fs = sw.start_tls(onion_ca.server_context(1), server_side=True)
        fc = cw.start_tls(onion_ca.client_context(trust=False), server_hostname="layer1.onion.test")
        results = await asyncio.gather(fc, fs, return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)


# -- the pipe: stepping and dribbling ---------------------------------------------


async def test_nothing_moves_until_the_pipe_is_stepped(onion_ca: OnionCA) -> None:
    pair = await stream_pair(auto=False)
    (_cr, cw), (sr, sw) = pair.client, pair.server
    assert not pair.pipe.step()  # nothing pending
    fs = sw.start_tls(onion_ca.server_context(1), server_side=True)
    fc = cw.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
    steps = 0
    while not (fc.done() and fs.done()):
        for _ in range(5):
            await asyncio.sleep(0)
        if not (fc.done() and fs.done()):
            assert pair.pipe.step(), "the handshake stalled with nothing in flight"
            steps += 1
    # TLS 1.3, client first: ClientHello, the server's flight, the client's
    # Finished; then the server's session tickets may still be in flight.
    assert 2 <= steps <= 4
    cw.write(b"ping")
    for _ in range(10):
        await asyncio.sleep(0)
    assert sr.at_eof() is False and sw.take_buffered() == b""  # still in the pipe
    pair.pipe.pump()
    assert await sr.readexactly(4) == b"ping"
    pair.pipe.auto = True
    pair.pipe.pump()
    await pair.aclose()


async def test_dribble_cuts_every_write(onion_ca: OnionCA) -> None:
    sizes: list[int] = []
    one_byte = dribble(1)

    def recording(data: bytes) -> list[bytes]:
        pieces = list(one_byte(data))
        sizes.extend(len(p) for p in pieces)
        return pieces

    async with stream_pair(chunker=recording) as pair:
        await pair.start_tls(onion_ca)
        pair.client.writer.write(b"hello\n")
        assert await pair.server.reader.readline() == b"hello\n"
    assert sizes and set(sizes) == {1}
    assert list(dribble(4)(b"abcdefghij")) == [b"abcd", b"efgh", b"ij"]


async def test_a_handler_is_the_tls_server_by_default(onion_ca: OnionCA) -> None:
    seen: list[bool] = []

    async def handler(reader: asyncio.StreamReader, writer: StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        # The client sent its ClientHello right behind STARTTLS: it may be
        # in the reader already, and belongs to the new layer.
        layer = await writer.start_tls(  # server_side inferred
            onion_ca.server_context(1), initial_bytes=writer.take_buffered()
        )
        seen.append(layer.server_side)
        writer.write(await reader.readline())

    async with stream_pair(handler) as pair:
        reader, writer = pair.client
        writer.write(b"STARTTLS\n")
        await writer.start_tls(onion_ca.client_context(), server_hostname=onion_ca.hostname(1))
        writer.write(b"inside\n")
        assert await reader.readline() == b"inside\n"
        assert pair.server_task is not None
        await pair.server_task
    assert seen == [True]
