"""SSLKEYLOGFILE: every layer of either engine logs its secrets, and the
log is enough to decrypt a capture of the nested traffic layer by layer -
checked here by doing exactly that, for TLS 1.3 and TLS 1.2."""

from __future__ import annotations

import hmac
import ssl
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from OpenSSL import SSL

from onion_tls.testing import OnionCA

from .helpers import MIXED, close_both, ping, recorder_pair
from .helpers import start_layer_with as start_layer

TLS13_LABELS = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EXPORTER_SECRET",
}


def _read_keylog(path: Path) -> dict[bytes, dict[str, set[bytes]]]:
    """client_random -> label -> the secrets logged for it."""
    entries: dict[bytes, dict[str, set[bytes]]] = defaultdict(lambda: defaultdict(set))
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        label, random_hex, secret_hex = line.split()
        entries[bytes.fromhex(random_hex)][label].add(bytes.fromhex(secret_hex))
    return entries


# -- a tiny TLS record decryptor, enough for what the test sends -------------


def _records(stream: bytes) -> list[tuple[int, bytes, bytes]]:
    """(content type, header, body) of each whole record."""
    out, pos = [], 0
    while pos + 5 <= len(stream):
        size = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        out.append((stream[pos], stream[pos : pos + 5], stream[pos + 5 : pos + 5 + size]))
        pos += 5 + size
    return out


def _handshake_types(data: bytes) -> list[int]:
    types, pos = [], 0
    while pos + 4 <= len(data):
        types.append(data[pos])
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
    return types


_SUITES13 = {
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, hashes.SHA256()),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, hashes.SHA384()),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, hashes.SHA256()),
}


def _expand_label(secret: bytes, label: str, length: int, algo: Any) -> bytes:
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(algo, length, info).derive(secret)


class _Tls13Direction:
    """Decrypts one direction of one TLS 1.3 layer: handshake traffic keys
    until the Finished message, application traffic keys after it."""

    def __init__(self, suite: str, hs_secret: bytes, app_secret: bytes) -> None:
        self.aead, self.key_len, self.algo = _SUITES13[suite]
        self.keys = [self._keys(hs_secret), self._keys(app_secret)]
        self.phase = 0
        self.seq = 0

    def _keys(self, secret: bytes) -> tuple[Any, bytes]:
        key = _expand_label(secret, "key", self.key_len, self.algo)
        return self.aead(key), _expand_label(secret, "iv", 12, self.algo)

    def app_data(self, stream: bytes) -> bytes:
        out = bytearray()
        for ctype, header, body in _records(stream):
            if ctype != 23:
                continue  # ClientHello/ServerHello, compatibility CCS
            aead, iv = self.keys[self.phase]
            nonce = bytes(a ^ b for a, b in zip(iv, self.seq.to_bytes(12, "big"), strict=True))
            inner = aead.decrypt(nonce, body, header).rstrip(b"\x00")
            self.seq += 1
            content, real_type = inner[:-1], inner[-1]
            if real_type == 22 and self.phase == 0 and 20 in _handshake_types(content):
                self.phase, self.seq = 1, 0  # Finished: application keys from now on
            elif real_type == 23:
                out += content
        return bytes(out)


def _prf(secret: bytes, label: bytes, seed: bytes, length: int, digest: str) -> bytes:
    out, a = b"", label + seed
    while len(out) < length:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + label + seed, digest).digest()
    return out[:length]


class _Tls12Direction:
    """Decrypts one direction of one TLS 1.2 AES-GCM layer (RFC 5288)."""

    def __init__(
        self, suite: str, master: bytes, client_random: bytes, server_random: bytes, *, client: bool
    ) -> None:
        assert "GCM" in suite, suite
        key_len = 32 if "AES256" in suite else 16
        digest = "sha384" if suite.endswith("SHA384") else "sha256"
        block = _prf(
            master, b"key expansion", server_random + client_random, 2 * key_len + 8, digest
        )
        keys = (block[:key_len], block[key_len : 2 * key_len])
        salts = (block[2 * key_len : 2 * key_len + 4], block[2 * key_len + 4 :])
        side = 0 if client else 1
        self.aead, self.salt = AESGCM(keys[side]), salts[side]
        self.encrypting = False
        self.seq = 0

    def app_data(self, stream: bytes) -> bytes:
        out = bytearray()
        for ctype, header, body in _records(stream):
            if ctype == 20:
                self.encrypting = True  # ChangeCipherSpec: keys from here
                continue
            if not self.encrypting:
                continue
            explicit, sealed = body[:8], body[8:]
            aad = self.seq.to_bytes(8, "big") + header[:3] + (len(sealed) - 16).to_bytes(2, "big")
            plain = self.aead.decrypt(self.salt + explicit, sealed, aad)
            self.seq += 1
            if ctype == 23:
                out += plain
        return bytes(out)


def _hello_random(stream: bytes) -> bytes:
    ctype, _, body = _records(stream)[0]
    assert ctype == 22 and body[0] in (1, 2)  # ClientHello / ServerHello
    return body[6:38]


def _peel(
    keys: dict[bytes, dict[str, set[bytes]]],
    version: str,
    ciphers: list[str],
    to_server: bytes,
    to_client: bytes,
) -> tuple[list[bytes], bytes, bytes]:
    """Decrypt the capture layer by layer with the key log alone; returns the
    client randoms met and the innermost plaintext of both directions."""
    randoms = []
    for cipher in ciphers:
        client_random = _hello_random(to_server)
        randoms.append(client_random)
        secrets = {label: next(iter(s)) for label, s in keys[client_random].items()}
        if version == "TLSv1.3":
            up = _Tls13Direction(
                cipher,
                secrets["CLIENT_HANDSHAKE_TRAFFIC_SECRET"],
                secrets["CLIENT_TRAFFIC_SECRET_0"],
            )
            down = _Tls13Direction(
                cipher,
                secrets["SERVER_HANDSHAKE_TRAFFIC_SECRET"],
                secrets["SERVER_TRAFFIC_SECRET_0"],
            )
        else:
            server_random = _hello_random(to_client)
            master = secrets["CLIENT_RANDOM"]
            up = _Tls12Direction(cipher, master, client_random, server_random, client=True)
            down = _Tls12Direction(cipher, master, client_random, server_random, client=False)
        to_server, to_client = up.app_data(to_server), down.app_data(to_client)
    return randoms, to_server, to_client


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
async def test_keylog_decrypts_three_mixed_layers(
    onion_ca: OnionCA, version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    pair, _, _ = await recorder_pair()
    ciphers = []
    for depth, (client_engine, server_engine) in MIXED.items():
        cctx = onion_ca.client_context(client_engine, version=version)  # type: ignore[arg-type]
        sctx = onion_ca.server_context(depth, server_engine, version=version)  # type: ignore[arg-type]
        lc, _ = await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(depth))
        assert lc.cipher is not None
        ciphers.append(lc.cipher)
        for ctx in (cctx, sctx):
            if isinstance(ctx, ssl.SSLContext):
                assert ctx.keylog_filename == str(keylog)
    await ping(pair, b"the innermost secret")
    views = pair.client.layers
    await close_both(pair)

    keys = _read_keylog(keylog)
    # One entry set per layer, distinct client randoms: three layers.
    assert len(keys) == 3
    wanted = TLS13_LABELS if version == "TLSv1.3" else {"CLIENT_RANDOM"}
    for labels in keys.values():
        assert set(labels) == wanted
        # Both ends of the layer logged it, and agree on each secret.
        assert all(len(secrets) == 1 for secrets in labels.values())
    raw = keylog.read_text()
    for label in wanted:
        assert raw.count(f"{label} ") == 6  # 3 layers x 2 ends
    # pyOpenSSL layers can tell their client random: it is in the log.
    for view in views:
        if view.engine == "pyopenssl":
            assert view.ssl_object.client_random() in keys

    capture_up, capture_down = bytes(pair.pipe.sent["a"]), bytes(pair.pipe.sent["b"])
    randoms, up, down = _peel(keys, version, ciphers, capture_up, capture_down)
    assert set(randoms) == set(keys)
    assert up == b"the innermost secret"
    assert down == b"terces tsomrenni eht"


async def test_keylog_off_without_the_variable(
    onion_ca: OnionCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    pair, _, _ = await recorder_pair()
    sctx = onion_ca.server_context(1, "stdlib")
    cctx = onion_ca.client_context("pyopenssl")
    await start_layer(pair, cctx, sctx, server_hostname=onion_ca.hostname(1))
    assert sctx.keylog_filename is None
    await close_both(pair)


async def test_keylog_keeps_a_stdlib_contexts_own_file(
    onion_ca: OnionCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context that already names a key log file keeps it."""
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "env.log"))
    own = tmp_path / "own.log"
    sctx = onion_ca.server_context(1, "stdlib")
    sctx.keylog_filename = str(own)
    pctx: SSL.Context = onion_ca.client_context("pyopenssl")
    pair, _, _ = await recorder_pair()
    await start_layer(pair, pctx, sctx, server_hostname=onion_ca.hostname(1))
    await close_both(pair)
    assert sctx.keylog_filename == str(own)
    assert "CLIENT_TRAFFIC_SECRET_0" in own.read_text()  # the server's end
    assert "CLIENT_TRAFFIC_SECRET_0" in (tmp_path / "env.log").read_text()  # the client's


async def test_keylog_pyopenssl_context_reuse(
    onion_ca: OnionCA,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One pyOpenSSL context for two layers logs both; a context that made a
    connection before onion_tls saw it cannot be changed (pyOpenSSL forbids
    it): the layer works and a warning says why nothing is logged."""
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    shared: SSL.Context = onion_ca.client_context("pyopenssl")
    used: SSL.Context = onion_ca.server_context(3, "pyopenssl")
    SSL.Connection(used, None)  # made a connection elsewhere first
    pair, _, _ = await recorder_pair()
    for depth in (1, 2):
        await start_layer(
            pair,
            shared,
            onion_ca.server_context(depth, "stdlib"),
            server_hostname=onion_ca.hostname(depth),
        )
    with caplog.at_level("WARNING", logger="onion_tls"):
        await start_layer(
            pair, onion_ca.client_context("stdlib"), used, server_hostname=onion_ca.hostname(3)
        )
    await ping(pair)
    await close_both(pair)
    assert "cannot log keys" in caplog.text
    keys = _read_keylog(keylog)
    assert len(keys) == 3
    for labels in keys.values():
        assert set(labels) == TLS13_LABELS
    # depth 3: only the stdlib client end logged; depths 1 and 2: both ends
    counts = sorted(
        sum(1 for line in keylog.read_text().splitlines() if r.hex() in line) for r in keys
    )
    assert counts == [5, 10, 10]
