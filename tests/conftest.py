"""Test harness: every ``async def`` test runs in a fresh event loop in debug
mode; anything that reaches the loop's exception handler, and any task still
pending at the end, fails the test."""

from __future__ import annotations

import inspect

import pytest

from onion_tls.pytest_plugin import run_async_test


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if inspect.iscoroutinefunction(fn):
        argnames = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in argnames}
        run_async_test(fn, kwargs)
        return True
    return None
