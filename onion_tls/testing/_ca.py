"""The test PKI: :class:`OnionCA`, one trustme CA that issues a distinct
server (and client) identity per layer depth and hands out ready contexts
for either engine (``ssl.SSLContext`` or pyOpenSSL ``SSL.Context``).

Imports: trustme, ssl, pyOpenSSL (lazily); nothing of onion_tls.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

import trustme

if TYPE_CHECKING:
    from OpenSSL import SSL

__all__ = ["ENGINES", "Engine", "OnionCA"]

Engine = Literal["pyopenssl", "stdlib"]
ENGINES: tuple[Engine, ...] = ("pyopenssl", "stdlib")

_VERSIONS = {
    "TLSv1.2": (ssl.TLSVersion.TLSv1_2, 0x0303),
    "TLSv1.3": (ssl.TLSVersion.TLSv1_3, 0x0304),
}


class OnionCA:
    """A trustme CA that issues one identity per layer depth.

    The server of depth ``d`` is ``layer{d}.onion.test`` (see
    :meth:`hostname`); clients of depth ``d`` present ``client{d}.onion.test``
    when mutual TLS is asked for.

    ``server_key_type`` chooses the key of the server identities (trustme's
    default, ECDSA, when None); e.g. ``trustme.KeyType.RSA`` gives
    signatures of a fixed length, so a handshake's records have the same
    sizes on every run.
    """

    def __init__(
        self, ca: trustme.CA | None = None, *, server_key_type: trustme.KeyType | None = None
    ) -> None:
        self.ca = ca if ca is not None else trustme.CA()
        self.server_key_type = server_key_type
        self._servers: dict[str, trustme.LeafCert] = {}
        self._clients: dict[str, trustme.LeafCert] = {}

    @staticmethod
    def hostname(depth: int) -> str:
        """The server name of ``depth`` (what its certificate is for)."""
        return f"layer{depth}.onion.test"

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (PEM): what a peer must trust."""
        return bytes(self.ca.cert_pem.bytes())

    def write_ca_pem(self, path: str) -> None:
        """Write the CA certificate to ``path`` (for ``--cafile`` and the
        like)."""
        self.ca.cert_pem.write_to_path(path)

    def server_cert(self, depth: int) -> trustme.LeafCert:
        name = self.hostname(depth)
        if name not in self._servers:
            if self.server_key_type is None:
                self._servers[name] = self.ca.issue_cert(name)
            else:
                self._servers[name] = self.ca.issue_cert(name, key_type=self.server_key_type)
        return self._servers[name]

    def client_cert(self, depth: int) -> trustme.LeafCert:
        name = f"client{depth}.onion.test"
        if name not in self._clients:
            self._clients[name] = self.ca.issue_cert(name)
        return self._clients[name]

    def server_context(
        self,
        depth: int,
        engine: Engine = "pyopenssl",
        *,
        version: str | None = None,
        require_client_cert: bool = False,
        alpn: Iterable[str] | None = None,
    ) -> Any:
        """A server context presenting the identity of ``depth``."""
        cert = self.server_cert(depth)
        if engine == "stdlib":
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            cert.configure_cert(sctx)
            if require_client_cert:
                sctx.verify_mode = ssl.CERT_REQUIRED
                self.ca.configure_trust(sctx)
            if version is not None:
                sctx.minimum_version = sctx.maximum_version = _VERSIONS[version][0]
            if alpn is not None:
                sctx.set_alpn_protocols(list(alpn))
            return sctx
        from OpenSSL import SSL

        pctx = SSL.Context(SSL.TLS_METHOD)
        cert.configure_cert(pctx)
        if require_client_cert:
            self.ca.configure_trust(pctx)
            pctx.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1])
            )
        _pyopenssl_version(pctx, version)
        if alpn is not None:
            offered = [p.encode() for p in alpn]

            def select(conn: SSL.Connection, protos: list[bytes]) -> bytes:
                for p in offered:
                    if p in protos:
                        return p
                return b""

            pctx.set_alpn_select_callback(select)
        return pctx

    def client_context(
        self,
        engine: Engine = "pyopenssl",
        *,
        depth: int | None = None,
        version: str | None = None,
        alpn: Iterable[str] | None = None,
        trust: bool = True,
    ) -> Any:
        """A client context trusting this CA; with ``depth``, it also
        presents the client identity of that depth (mutual TLS)."""
        if engine == "stdlib":
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            if trust:
                self.ca.configure_trust(sctx)
            if depth is not None:
                self.client_cert(depth).configure_cert(sctx)
            if version is not None:
                sctx.minimum_version = sctx.maximum_version = _VERSIONS[version][0]
            if alpn is not None:
                sctx.set_alpn_protocols(list(alpn))
            return sctx
        from OpenSSL import SSL

        pctx = SSL.Context(SSL.TLS_METHOD)
        if trust:
            self.ca.configure_trust(pctx)
        if depth is not None:
            self.client_cert(depth).configure_cert(pctx)
        _pyopenssl_version(pctx, version)
        if alpn is not None:
            pctx.set_alpn_protos([p.encode() for p in alpn])
        return pctx


def _pyopenssl_version(ctx: SSL.Context, version: str | None) -> None:
    if version is None:
        return
    from OpenSSL import SSL

    code = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}[version]
    ctx.set_min_proto_version(code)
    ctx.set_max_proto_version(code)
