"""pytest fixtures for testing nested TLS (registered as a ``pytest11`` plugin).

* ``onion_ca`` - a session-wide :class:`onion_tls.testing.OnionCA`.
"""

from __future__ import annotations

import pytest

from .testing import OnionCA


@pytest.fixture(scope="session")
def onion_ca() -> OnionCA:
    """A CA issuing one server (and client) identity per layer depth."""
    return OnionCA()
