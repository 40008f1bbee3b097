"""How-to: see what each layer does: the ``onion_tls`` logger and
``SSLKEYLOGFILE``.

    python docs/examples/howto_debugging.py

Two layers in memory (``onion_tls.testing.stream_pair``), with DEBUG
logging on and the TLS secrets of both layers written to a key log file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile

from onion_tls.testing import OnionCA, stream_pair


async def two_layers() -> None:
    ca = OnionCA()
    async with stream_pair() as pair:
        await pair.start_tls(ca, engine="stdlib")
        await pair.start_tls(ca, engine="pyopenssl")
        pair.client.writer.write(b"ping\n")
        await pair.server.reader.readline()
        await pair.stop_tls()


def main() -> None:
    keylog = os.path.join(tempfile.mkdtemp(), "keys.log")
    # [setup]
    os.environ["SSLKEYLOGFILE"] = keylog  # read when each layer is made
    logging.basicConfig(stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("onion_tls").setLevel(logging.DEBUG)
    # [/setup]
    asyncio.run(two_layers())
    with open(keylog) as f:
        labels = sorted({line.split()[0] for line in f if line.strip()[:1].isalpha()})
    print("key log labels:", ", ".join(labels))


if __name__ == "__main__":
    main()
