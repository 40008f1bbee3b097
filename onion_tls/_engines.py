"""The engine factory: the engine that fits a context's type (sans-IO).

Owns :func:`new_engine`.  It sits above both engines (:mod:`._stdlib`,
:mod:`._pyopenssl`) and below the adapter that calls it, so neither engine
imports it back.  pyOpenSSL's engine is imported the first time a pyOpenSSL
context is given: an application that only uses ``ssl.SSLContext`` never
loads it.

Imports: :mod:`._engine`, :mod:`._stdlib`, :mod:`._pyopenssl` (when first
needed).
"""

from __future__ import annotations

import ssl

from ._engine import Engine
from ._stdlib import StdlibEngine

__all__ = ["new_engine"]


def new_engine(
    context: object,
    *,
    server_side: bool,
    server_hostname: str | None,
    session: object | None,
    depth: int,
) -> Engine:
    """Build the engine that fits ``context``'s type, for the layer that
    will be at ``depth``."""
    if session is not None and server_side:
        raise ValueError(
            "session is only meaningful for a client layer: a server resumes "
            "the sessions its clients offer"
        )
    if isinstance(context, ssl.SSLContext):
        return StdlibEngine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
            depth=depth,
        )
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        SSL = None  # type: ignore[assignment]
    if SSL is not None and isinstance(context, SSL.Context):
        from ._pyopenssl import pyopenssl_engine

        return pyopenssl_engine(
            context,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
            depth=depth,
        )
    raise TypeError(
        f"context must be an ssl.SSLContext or an OpenSSL.SSL.Context, not {type(context).__name__}"
    )
