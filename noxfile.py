"""Development sessions: tests, lint, typecheck, demo, bench."""

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
    session.install("ruff")
    paths = [
        p for p in ("onion_tls", "tests", "examples", "stress", "noxfile.py") if Path(p).exists()
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", "onion_tls")


@nox.session
def demo(session: nox.Session) -> None:
    session.install(".")
    session.run("python", "-m", "onion_tls", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """onion_tls against asyncio's own TLS, side by side; uvloop too.
    Options go after ``--``, e.g. ``nox -s bench -- --quick --depths 1-2``."""
    session.install(".", "uvloop")
    session.run("python", "-m", "onion_tls", "bench", *session.posargs)
