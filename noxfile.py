"""Development sessions: tests, lint, typecheck, docs, demo, bench."""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, warnings as errors, asyncio debug mode on."""
    session.install("-e", ".[test]")
    session.env["PYTHONASYNCIODEBUG"] = "1"
    session.run("pytest", "-W", "error", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, then import-linter: imports only go downward through the
    package's floors and the sans-IO core never imports asyncio (the
    contracts are in pyproject.toml, [tool.importlinter])."""
    session.install("ruff", "import-linter")
    paths = [
        p
        for p in ("onion_tls", "tests", "examples", "stress", "docs", "noxfile.py")
        if Path(p).exists()
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "onion_tls")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, warnings as errors, into docs/_build/html;
    then the ``>>>`` examples of the pages and docstrings (doctest).  The
    pages' other code runs in the test suite (tests/test_docs_examples.py)."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest"
    )


@nox.session
def demo(session: nox.Session) -> None:
    session.install(".")
    session.run("python", "-m", "onion_tls", "demo", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    """Long runs, each bounded and stopping by itself: thousands of seeded
    fault cases, 1,000 concurrent two-layer loopback connections, 10,000
    connect/push/pop/close cycles with memory measured.  Pick some with
    ``nox -s stress -- faults load leaks``."""
    session.install("-e", ".[test]")
    wanted = set(session.posargs) or {"faults", "load", "leaks"}
    if "faults" in wanted:
        session.run("python", "stress/faults.py", "--count", "3000")
    if "load" in wanted:
        session.run("python", "stress/load.py", "--connections", "1000")
    if "leaks" in wanted:
        session.run("python", "stress/leaks.py", "--cycles", "10000", "--progress")


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzz the byte-handling code: hypothesis with many more examples, then
    atheris (coverage-guided) for a bounded time; pass libFuzzer flags after
    ``--`` (default ``-max_total_time=300``)."""
    session.install("-e", ".[test]", "atheris")
    session.env["ONION_FUZZ_EXAMPLES"] = "2000"
    session.run("pytest", "-W", "error", "-p", "no:cacheprovider", "tests/test_fuzz.py")
    flags = session.posargs or ["-max_total_time=300"]
    session.run("python", "stress/fuzz_atheris.py", *flags)


@nox.session
def bench(session: nox.Session) -> None:
    """onion_tls against asyncio's own TLS, side by side; uvloop too.
    Options go after ``--``, e.g. ``nox -s bench -- --quick --depths 1-2``."""
    session.install(".", "uvloop")
    session.run("python", "-m", "onion_tls", "bench", *session.posargs)
