"""Development sessions: tests, lint, typecheck, docs, demo, bench."""

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# Every maintained Python this machine has: one that is missing is skipped
# with a message (nox says "Missing interpreters will not be used"), not a
# failure, even under CI (where nox would otherwise insist).
nox.options.error_on_missing_interpreters = False
PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, warnings as errors, asyncio debug mode on, on each
    Python of PYTHONS that is installed (``nox -s tests-3.12`` for one)."""
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
        for p in ("onion_tls", "tests", "examples", "stress", "docs", "benchmarks", "noxfile.py")
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
    fault cases, 10,000 concurrent two-layer loopback connections (server in
    a second process; asyncio's loop, then uvloop; RSS per idle connection
    measured), 10,000 connect/push/pop/close cycles with memory measured.
    Pick some with ``nox -s stress -- faults load leaks``; ``load-baseline``
    runs the load on asyncio's own TLS for comparison."""
    session.install("-e", ".[test]")
    wanted = set(session.posargs) or {"faults", "load", "leaks"}
    if "faults" in wanted:
        session.run("python", "stress/faults.py", "--count", "3000")
    if "load" in wanted or "load-baseline" in wanted:
        session.install("uvloop")
        impls = [i for i, w in (("onion", "load"), ("asyncio", "load-baseline")) if w in wanted]
        for impl in impls:
            for loop in ("asyncio", "uvloop"):
                session.run(
                    "python",
                    "stress/load.py",
                    "--connections",
                    "10000",
                    "--loop",
                    loop,
                    "--impl",
                    impl,
                )
    if "leaks" in wanted:
        session.run("python", "stress/leaks.py", "--cycles", "10000", "--progress")


@nox.session
def fuzz(session: nox.Session) -> None:
    """Fuzz the byte-handling code and the connection lifecycle model:
    hypothesis with many more examples, then
    atheris (coverage-guided) for a bounded time; pass libFuzzer flags after
    ``--`` (default ``-max_total_time=300``)."""
    session.install("-e", ".[test]", "atheris")
    session.env["ONION_FUZZ_EXAMPLES"] = "2000"
    session.env["ONION_MODEL_EXAMPLES"] = "3000"
    session.env["ONION_MODEL_ALL_BUGS"] = "1"
    session.env["PYTHONASYNCIODEBUG"] = "1"
    session.run(
        "pytest",
        "-W",
        "error",
        "-p",
        "no:cacheprovider",
        "tests/test_fuzz.py",
        "tests/test_lifecycle_model.py",
    )
    flags = session.posargs or ["-max_total_time=300"]
    session.run("python", "stress/fuzz_atheris.py", *flags)


@nox.session
def bench(session: nox.Session) -> None:
    """onion_tls against its peers side by side: asyncio's own TLS (on
    asyncio and uvloop), Twisted, trio and the blocking ssl.SSLSocket C path
    (benchmarks/bench.py, on the installed package).  Options go after
    ``--``, e.g. ``nox -s bench -- --quick --depths 1-2 --peers twisted``."""
    # twisted[tls]: pyOpenSSL and service_identity, for TLSMemoryBIOProtocol
    session.install(".", "uvloop", "twisted[tls]", "trio")
    session.run("python", "benchmarks/bench.py", *session.posargs)
