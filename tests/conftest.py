"""Test harness: every ``async def`` test runs in a fresh event loop in debug
mode; anything that reaches the loop's exception handler, and any task still
pending at the end, fails the test."""

from __future__ import annotations

import asyncio
import gc
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest

# tests/ is a package (relative imports work), and its folder is on the path
# too, so ``from helpers import ...`` works in any test file as well.
sys.path.insert(0, str(Path(__file__).parent))


def _run(coro_fn: Any, kwargs: dict[str, Any]) -> None:
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        await coro_fn(**kwargs)
        # let close() / connection_lost callbacks run
        for _ in range(5):
            await asyncio.sleep(0)
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            raise AssertionError(f"tasks left pending: {pending!r}")

    runner = asyncio.Runner(debug=True)
    try:
        runner.run(main())
    finally:
        runner.close()
        gc.collect()
    if errors:
        raise AssertionError(f"the loop's exception handler got: {errors!r}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if inspect.iscoroutinefunction(fn):
        argnames = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in argnames}
        _run(fn, kwargs)
        return True
    return None
