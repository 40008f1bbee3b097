"""What every implementation's worker shares: the workload constants, the
TLS contexts (stdlib and pyOpenSSL, pinned to one suite and key exchange)
and the memory readings.  Imports neither onion_tls nor an event loop, so a
peer's worker loads only its own stack."""

from __future__ import annotations

import os
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

from .cells import CIPHER, GROUP

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = [
    "BATCH",
    "CLOSE_TIMEOUT",
    "ECHO_WINDOW",
    "HOST",
    "MAX_HANDSHAKES",
    "MB",
    "PING",
    "READ_BUFFER",
    "ClientSide",
    "Meter",
    "ServerSide",
    "peak_rss",
    "pyopenssl_context",
    "rss",
    "same_key_exchange",
    "stdlib_context",
]

HOST = "127.0.0.1"
READ_BUFFER = 256 * 1024  # a buffered application's buffer; a plain one's read size
BATCH = 256 * 1024  # bytes written per loop iteration before yielding
ECHO_WINDOW = 1024 * 1024  # bytes in flight in the echo cells
MAX_HANDSHAKES = 5000  # per handshake cell
MB = 1e6
CLOSE_TIMEOUT = 5.0  # seconds a client waits for its connection to end
PING = b"p"  # the client's byte in the pingpong cells (the server answers with it)


class Meter:
    """Wall and CPU time of a cell's measured part, from its creation to
    :meth:`rate` or :meth:`round_trips` (closing the connection afterwards
    is not counted)."""

    __slots__ = ("cpu", "start")

    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.start = time.perf_counter()

    def rate(self, sent: int, cipher: Any) -> dict[str, Any]:
        """The worker's answer for a throughput cell: MB/s of ``sent``."""
        elapsed = time.perf_counter() - self.start
        cpu = time.process_time() - self.cpu
        return {"value": sent / elapsed / MB, "cipher": cipher, "cpu": cpu, "work": sent}

    def round_trips(self, count: int, cipher: Any) -> dict[str, Any]:
        """The worker's answer for a pingpong cell: round trips per second."""
        elapsed = time.perf_counter() - self.start
        cpu = time.process_time() - self.cpu
        return {"value": count / elapsed, "cipher": cipher, "cpu": cpu, "work": count}


def stdlib_context(certs: Path, depth: int | None) -> ssl.SSLContext:
    """A TLS 1.3 context: a server's for ``depth``, or a client's (None)."""
    if depth is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(certs / "ca.pem"))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs / f"server{depth}.pem"))
    # The ssl module cannot choose TLS 1.3 suites; OpenSSL's default order
    # puts TLS_AES_256_GCM_SHA384 first (checked per connection).
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def pyopenssl_context(certs: Path, depth: int | None) -> Any:
    """The same as :func:`stdlib_context`, as an ``OpenSSL.SSL.Context``."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(CIPHER.encode())
    same_key_exchange(ctx)
    if depth is None:
        ctx.load_verify_locations(str(certs / "ca.pem"))
        ctx.set_verify(SSL.VERIFY_PEER)
    else:
        pem = str(certs / f"server{depth}.pem")
        ctx.use_certificate_chain_file(pem)
        ctx.use_privatekey_file(pem)
    return ctx


def same_key_exchange(ctx: Any) -> None:
    """X25519, as the ssl module's OpenSSL picks: pyOpenSSL runs on the
    OpenSSL that ``cryptography`` bundles, whose default (OpenSSL >= 3.5) is
    the hybrid X25519MLKEM768, which costs more per handshake; the bench
    compares the layering, not the key exchanges.  pyOpenSSL has no public
    call for it; skipped if its binding lacks the function."""
    # The benchmarks' only use of pyOpenSSL's private cffi binding
    # (``OpenSSL._util.lib`` and ``Context._context``), kept in this one
    # function.  It is the benchmark's own: onion_tls's private modules
    # (its ``_openssl_ffi``) are not imported from here.  Without the
    # binding the pyOpenSSL contexts keep OpenSSL's default groups.
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - another pyOpenSSL
        return
    set_list = getattr(lib, "SSL_CTX_set1_curves_list", None)
    native = getattr(ctx, "_context", None)
    if set_list is not None and native is not None:
        set_list(native, GROUP.encode())


def rss() -> int:
    """Resident memory now, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class ServerSide(Protocol):
    """A server worker's implementation: it listens for every listener name
    (``kind/app/depth``) and serves until :meth:`stop`."""

    def run(self, listeners: list[str], ready: Callable[[dict[str, int]], None]) -> None:
        """Listen, call ``ready`` with the ports, serve until stopped (blocks)."""

    def stop(self) -> None:
        """Make :meth:`run` return; called from another thread."""


class ClientSide(Protocol):
    """A client worker's implementation: runs one command at a time."""

    def request(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``run`` (a cell: value, cipher, cpu, work), ``idle_open``,
        ``idle_close``, ``rss``; an ``error`` key when it failed."""
