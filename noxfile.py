"""Developer sessions: ``nox --list`` shows them, ``nox -s tests`` runs one."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("-c", "constraints.txt", "-e", f".{extras}")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest), offline, on the bundled data and files written by the tests."""
    _install(session, "[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common mistakes with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py", "runner.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy."""
    _install(session)
    session.install("mypy", "types-PyYAML")
    session.run("mypy", "src/interp")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML reference from the docstrings (sphinx autodoc) into docs/_build/html."""
    _install(session)
    session.install("sphinx")
    session.run("sphinx-build", "-q", "-b", "html", "docs", "docs/_build/html")


@nox.session
def autodoc(session: nox.Session) -> None:
    """Same as ``docs`` (the name the original runner.py project used)."""
    docs(session)
