"""Every example in examples/ runs with one command and says what it should.

Each runs in a subprocess (``python -W error examples/NAME.py``), so an
exception the example did not expect, a warning (an unclosed transport, a
coroutine never awaited), or an asyncio error report fails the test through
the exit status or stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

EXPECTED = {
    "https_proxy.py": [
        "client: layer 1 up with proxy.example: TLSv1.3",
        "proxy:  CONNECT origin.example:443 -> 127.0.0.1:",
        "client: layer 2 up with origin.example inside layer 1: TLSv1.3",
        "via pyopenssl",
        "client: HTTP/1.1 200 OK  body: 'hello from origin.example, you asked for /index.txt'",
        "(TLS records); the request in clear: no",
    ],
    "starttls_smtp.py": [
        "=== 1. an honest client",
        "handshake bytes read ahead were given to the new layer as initial_bytes",
        "server: [TLS] MAIL FROM:<alice@example.org>",
        "server: discarded 40 bytes sent in plaintext after STARTTLS:",
        "server:     MAIL FROM:<mallory@evil.example>  (never executed)",
        "server: executed only ['MAIL FROM:<alice@example.org>', 'RCPT TO:<bob@example.net>']",
        "client: refused to start TLS: the reader holds 25 unread byte(s)",
        "client: (those bytes were b'250 2.1.0 Ok (injected)\\r\\n')",
    ],
    "ftp_ccc.py": [
        "client: TLS up (TLSv1.3), session resumed: no",
        "client [    TLS, depth 1]  PASS ********            -> 230 Logged in",
        "client: layer 1 unwrapped; layers now ()",
        'client [       plaintext]  PWD                      -> 257 "/home/alice"',
        "client: TLS up (TLSv1.3), session resumed: yes",
        "tap: the password crossed the wire in clear: no",
        "tap: 'PWD' after CCC crossed the wire in clear: yes",
    ],
    "onion_relay.py": [
        "client: layer 2 up with relay2.example inside layer 1 (pyopenssl)",
        "client: layer 3 up with relay3.example inside layer 2 (stdlib)",
        "client: the exit echoed 'the quick brown fox, three layers deep'",
        "relay1.example: forwarded",
        "(TLS records, starting 16 03 01); could read the message: no",
        "relay3.example: forwarded 39 bytes (plaintext",
    ],
}


def run_example(name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # This checkout's onion_tls, whatever is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # Debug mode (set by nox) reports slow callbacks on stderr when the
    # machine is busy; -W error still turns every warning into a failure.
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name: str) -> None:
    proc = run_example(name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    missing = [line for line in EXPECTED[name] if line not in proc.stdout]
    assert not missing, f"missing {missing!r} in:\n{proc.stdout}"
