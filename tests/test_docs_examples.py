"""The documentation's code runs.

* Every script in ``docs/examples/`` (the tutorial's and the how-to pages'
  code, included in the pages from these files) runs in a subprocess with
  ``-W error`` and prints what the pages say it prints.
* The pytest files there (the tutorial's last step, the testing how-to) pass
  under the installed pytest plugin.
* Every ``Example::`` block of a public module's docstrings compiles, and
  those written as tests (``async def test_...``) run.

The ``>>>`` examples of the pages and docstrings are run by ``nox -s docs``
(``sphinx-build -b doctest``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from onion_tls.pytest_plugin import run_async_test
from onion_tls.testing import OnionCA

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"

# script -> (onion_tls modules it needs, lines its output must hold)
SCRIPTS: dict[str, tuple[tuple[str, ...], list[str]]] = {
    "tutorial_echo.py": (
        (),
        [
            "plaintext: b'0: HELLO'",
            "pushed: 1 TLSv1.3 stdlib",
            "one layer: b'1: HELLO'",
            "pushed: 2 TLSv1.3 pyopenssl",
            "two layers: b'2: HELLO'",
            "layers: [(1, 'layer1.onion.test'), (2, 'layer2.onion.test')]",
            "popped: 2 - layers left: 1",
            "back to one layer: b'1: HELLO'",
        ],
    ),
    "howto_proxy_chain.py": (
        ("onion_tls.proxy",),
        [
            "layer 1: layer1.onion.test (stdlib)",
            "layer 2: layer2.onion.test (pyopenssl)",
            "layer 3: layer3.onion.test (stdlib)",
            "origin says: hello through two proxies",
            "hop 2 refused us with 407: the proxy refused the credentials",
        ],
    ),
    "howto_starttls.py": (
        ("onion_tls.starttls",),
        [
            *(
                f"{p}: layer 1 TLSv1.3, server answered b'secret: hello\\n'"
                for p in ("smtp", "imap", "pop3", "ftp", "postgres")
            ),
            "refused: 454 4.7.0 TLS not available due to temporary reason",
        ],
    ),
    "howto_ftp_ccc.py": (
        ("onion_tls.starttls",),
        [
            "[TLS]   PASS -> b'230 logged in'",
            "CCC: layer 1 popped, layers now ()",
            "[plain] PWD -> b'257 \"/home/alice\" (depth 0)'",
            "[plain] QUIT -> b'221 bye'",
        ],
    ),
    "howto_debugging.py": (
        (),
        [
            "onion_tls DEBUG layer 1: handshake started (client, stdlib, "
            "server_hostname='layer1.onion.test')",
            "onion_tls DEBUG layer 2: handshake done (client, pyopenssl, TLSv1.3",
            "onion_tls DEBUG layer 2: popped (unwrapped)",
            "key log labels: CLIENT_HANDSHAKE_TRAFFIC_SECRET, CLIENT_TRAFFIC_SECRET_0",
        ],
    ),
}

PYTEST_FILES = {"test_tutorial_echo.py": 3, "test_howto_testing.py": 4}

PUBLIC_MODULES = [
    "onion_tls",
    "onion_tls.errors",
    "onion_tls.streams",
    "onion_tls.testing",
    "onion_tls.pytest_plugin",
    "onion_tls.proxy",
    "onion_tls.starttls",
]


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTHONASYNCIODEBUG", None)  # slow-callback reports on a busy machine
    env.pop("SSLKEYLOGFILE", None)
    return subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_every_example_is_tested() -> None:
    found = {p.name for p in EXAMPLES.glob("*.py")}
    assert found == set(SCRIPTS) | set(PYTEST_FILES)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_docs_script(name: str) -> None:
    needs, expected = SCRIPTS[name]
    if missing := _missing(needs):
        pytest.skip(f"{', '.join(missing)} not in this checkout")
    proc = _run(str(EXAMPLES / name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    missing_lines = [line for line in expected if line not in proc.stdout]
    assert not missing_lines, f"missing {missing_lines!r} in:\n{proc.stdout}"


@pytest.mark.parametrize("name", sorted(PYTEST_FILES))
def test_docs_pytest_file(name: str) -> None:
    proc = _run("-m", "pytest", "-p", "no:cacheprovider", "-q", str(EXAMPLES / name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{PYTEST_FILES[name]} passed" in proc.stdout, proc.stdout


def _docstring_examples() -> list[tuple[str, str]]:
    """``(where, code)`` for every ``Example::`` block of the public modules'
    docstrings (module, classes, functions, methods)."""
    found: list[tuple[str, str]] = []
    for name in PUBLIC_MODULES:
        if _missing((name,)):
            continue
        module = importlib.import_module(name)
        objects: list[tuple[str, Any]] = [(name, module)]
        for attr, obj in vars(module).items():
            if getattr(obj, "__module__", None) == name:
                objects.append((f"{name}.{attr}", obj))
                if inspect.isclass(obj):
                    objects += [(f"{name}.{attr}.{m}", v) for m, v in vars(obj).items()]
        for where, obj in objects:
            doc = inspect.getdoc(obj) if not isinstance(obj, (str, bytes)) else None
            for match in re.finditer(r"Example::\n\n((?:[ \t]+.*\n|\n)+)", (doc or "") + "\n"):
                found.append((where, textwrap.dedent(match.group(1))))
    return found


def test_docstring_examples_exist() -> None:
    assert any(where == "onion_tls.testing" for where, _ in _docstring_examples())


@pytest.mark.parametrize(
    "where,code", _docstring_examples(), ids=lambda v: v if v.startswith("onion") else ""
)
def test_docstring_example(where: str, code: str) -> None:
    tree = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)
    tests = [
        n.name
        for n in tree.body  # type: ignore[attr-defined]
        if isinstance(n, ast.AsyncFunctionDef) and n.name.startswith("test_")
    ]
    if not tests:
        return  # an example needing the network (a real proxy...): it compiles
    module = importlib.import_module(where.split(".", 2)[0] + "." + where.split(".")[1])
    namespace: dict[str, Any] = dict(vars(module))
    exec(compile(tree, where, "exec"), namespace)
    for test in tests:
        fixtures = {"onion_ca": OnionCA()}
        params = inspect.signature(namespace[test]).parameters
        run_async_test(namespace[test], {k: v for k, v in fixtures.items() if k in params})
