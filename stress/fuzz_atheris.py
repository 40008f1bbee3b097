"""Coverage-guided fuzzing of the byte-handling code with atheris.

    python stress/fuzz_atheris.py -max_total_time=120 [libFuzzer flags]

The same targets and properties as ``tests/test_fuzz.py`` (hypothesis),
driven by libFuzzer over instrumented onion_tls code.  The first input byte
chooses the target:

0. RecordFramer: the input, cut where the next bytes say;
1. a handshaking server layer (engine chosen by a byte) fed the input;
2. an open session: a real peer's records (data, maybe close_notify), with
   the input's flips/inserts/drops applied and cut anywhere, fed to the
   other side's layer.

A property violated or an exception escaping is a crash: libFuzzer stops,
saves the input as ``crash-*`` and the run fails.  It prints the number of
executions (``stat::number_of_executed_units``) at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

with atheris.instrument_imports(include=["onion_tls"]):
    import onion_tls  # noqa: F401 - instrument the whole package
    from onion_tls._records import RecordFramer  # noqa: F401

import test_fuzz as tf  # noqa: E402 - the helpers and properties

ENGINES = ("pyopenssl", "stdlib")


def chunk_points(fdp: atheris.FuzzedDataProvider) -> list[int]:
    return [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 12))]


def target_framer(fdp: atheris.FuzzedDataProvider) -> None:
    points = chunk_points(fdp)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    tf.check_framer_stream(tf.cut(data, points))


def target_handshake(fdp: atheris.FuzzedDataProvider) -> None:
    engine = ENGINES[fdp.ConsumeIntInRange(0, 1)]
    points = chunk_points(fdp)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    server = tf.Side()
    server.push(tf._ctx("server", engine, None), server_side=True)
    for chunk in tf.cut(data, points):
        server.feed(chunk)
    tf.check_layer_outcome(server, b"")


def target_open(fdp: atheris.FuzzedDataProvider) -> None:
    client_engine = ENGINES[fdp.ConsumeIntInRange(0, 1)]
    server_engine = ENGINES[fdp.ConsumeIntInRange(0, 1)]
    version = (None, "TLSv1.2")[fdp.ConsumeIntInRange(0, 1)]
    close = fdp.ConsumeBool()
    mutations = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        kind = ("flip", "insert", "drop")[fdp.ConsumeIntInRange(0, 2)]
        pos = fdp.ConsumeIntInRange(0, 1 << 16)
        if kind == "flip":
            mutations.append((kind, pos, fdp.ConsumeIntInRange(1, 255)))
        elif kind == "insert":
            mutations.append((kind, pos, fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8)) or b"\0"))
        else:
            mutations.append((kind, pos, fdp.ConsumeIntInRange(1, 64)))
    points = chunk_points(fdp)
    message = fdp.ConsumeBytes(fdp.remaining_bytes()) or b"x"
    client, server = tf.established(client_engine, server_engine, version)
    client.chain.write(message)
    if close:
        client.chain.stop_tls()
    wire = tf.mutate(client.take(), mutations)
    for chunk in tf.cut(wire, points):
        server.feed(chunk)
    tf.check_layer_outcome(server, message)
    if server.hooks.eofs:
        assert bytes(server.hooks.data) == message


TARGETS = (target_framer, target_handshake, target_open)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def seed_corpus(path: str) -> None:
    """A few real inputs to start from: records, a ClientHello, data."""
    client = tf.Side()
    client.push(
        tf._ctx("client", "pyopenssl", None), server_side=False, hostname="layer1.onion.test"
    )
    hello = client.take()
    seeds = {
        "framer": b"\x00\x00" + tf.record(22, b"\x01" * 40) + tf.record(23, b"x" * 100),
        "hello-pyopenssl": b"\x01\x00\x00" + hello,
        "hello-stdlib": b"\x01\x01\x00" + hello,
        "open": b"\x02\x00\x01\x00\x01\x00\x00" + b"hello, nested world",
    }
    for name, data in seeds.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = tempfile.mkdtemp(prefix="onion-fuzz-")
        seed_corpus(corpus)
        args.append(corpus)
    if not any(a.startswith("-print_final_stats") for a in args):
        args.append("-print_final_stats=1")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
