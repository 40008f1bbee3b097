"""pytest fixtures for testing nested TLS (registered as a ``pytest11`` plugin,
so they are there as soon as onion_tls is installed).

Fixtures:

* ``onion_ca`` - a session-wide :class:`onion_tls.testing.OnionCA`: a
  distinct server (and client) identity per depth, contexts for either
  engine.
* ``onion_engine`` - ``"pyopenssl"`` then ``"stdlib"``: a test that asks for
  it runs once per engine.
* ``onion_pair`` - :func:`onion_tls.testing.stream_pair`: ``await
  onion_pair(handler=None, chunker=dribble(1), auto=False, ...)`` connects
  two onion_tls stream ends in memory.

Marker:

* ``@pytest.mark.onion_tls`` on an ``async def`` test runs it in a fresh
  asyncio event loop in debug mode, and fails it if anything reaches the
  loop's exception handler (an exception nobody retrieved, an error in a
  callback) or if a task is still pending when the test returns.  Not
  needed with pytest-asyncio or anyio; it is there so that the fixtures work
  with nothing else installed.

Imports: :mod:`.testing`, pytest.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import TYPE_CHECKING, Any

import pytest

from .testing import ENGINES, Engine, OnionCA, stream_pair

if TYPE_CHECKING:
    from collections.abc import Callable

_MARKER = "onion_tls"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: run this async test in a fresh asyncio loop (debug mode) and fail it "
        "on errors reported to the loop's exception handler or tasks left pending",
    )


@pytest.fixture(scope="session")
def onion_ca() -> OnionCA:
    """A CA issuing one server (and client) identity per layer depth."""
    return OnionCA()


@pytest.fixture(params=ENGINES)
def onion_engine(request: pytest.FixtureRequest) -> Engine:
    """Each TLS engine in turn: the test runs once per engine."""
    engine: Engine = request.param
    return engine


@pytest.fixture
def onion_pair() -> Callable[..., Any]:
    """``await onion_pair(handler=None, *, chunker=None, auto=True, ...)``:
    two onion_tls stream ends connected in memory (see
    :func:`onion_tls.testing.stream_pair`)."""
    return stream_pair


def run_async_test(
    coro_fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> None:
    """Run ``coro_fn(**kwargs)`` in a fresh debug-mode loop (made by
    ``loop_factory``, e.g. ``uvloop.new_event_loop``); raise AssertionError
    on loop errors or tasks left pending."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        await coro_fn(**kwargs)
        for _ in range(5):  # let close() and connection_lost() callbacks run
            await asyncio.sleep(0)
        me = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not me]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            raise AssertionError(f"tasks left pending when the test returned: {pending!r}")

    with asyncio.Runner(debug=True, loop_factory=loop_factory) as runner:
        try:
            runner.run(main())
        finally:
            gc.collect()
    if errors:
        raise AssertionError(f"the event loop's exception handler was called: {errors!r}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if pyfuncitem.get_closest_marker(_MARKER) is None:
        return None
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    argnames = pyfuncitem._fixtureinfo.argnames
    run_async_test(fn, {name: pyfuncitem.funcargs[name] for name in argnames})
    return True
