r"""Tools for testing code that stacks TLS layers, built on trustme.

* :class:`OnionCA` - one CA that issues a distinct server (and client)
  identity per depth and hands out ready contexts for either engine.
* :func:`memory_pair` - two onion stacks connected in memory (no sockets),
  with a :class:`MemoryPipe` you can let run by itself or step by hand, and
  a chunker to dribble the byte stream one byte (or any split) at a time.
* :func:`stream_pair` - the same with onion_tls streams on both ends
  (``asyncio.StreamReader`` + :class:`onion_tls.StreamWriter`), optionally
  with your server handler on one end.

The pytest plugin (:mod:`onion_tls.pytest_plugin`) exposes these as
fixtures: ``onion_ca``, ``onion_engine``, ``onion_pair``.

Example::

    async def test_two_layers(onion_ca):
        pair = await stream_pair()
        for depth in (1, 2):
            await pair.start_tls(onion_ca)
        pair.client.writer.write(b"ping\n")
        assert await pair.server.reader.readline() == b"ping\n"
        await pair.aclose()

Which file: ``_ca.py`` the PKI (:class:`OnionCA`), ``_memory.py`` the
in-memory sockets (:class:`MemoryPipe`, :class:`MemoryTransport`,
:func:`dribble`, and the extension API a pipe subclass may use),
``_pairs.py`` the pairs of stacks (:func:`memory_pair`,
:func:`stream_pair`).  This file only re-exports them.

Imports: its own submodules.
"""

from __future__ import annotations

from ._ca import ENGINES, Engine, OnionCA
from ._memory import Chunker as Chunker  # used by tests, not in __all__
from ._memory import MemoryPipe, MemoryTransport, dribble
from ._pairs import OnionPair, Stream, StreamPair, memory_pair, stream_pair

__all__ = [
    "ENGINES",
    "Engine",
    "MemoryPipe",
    "MemoryTransport",
    "OnionCA",
    "OnionPair",
    "Stream",
    "StreamPair",
    "dribble",
    "memory_pair",
    "stream_pair",
]

# Documented (and shown in reprs) under the public path, as before the split.
for _obj in (OnionCA, MemoryPipe, MemoryTransport, OnionPair, Stream, StreamPair):
    _obj.__module__ = __name__
for _fn in (dribble, memory_pair, stream_pair):
    _fn.__module__ = __name__
del _obj, _fn
