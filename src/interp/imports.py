"""Code a config names by import path (``package.module:name``): found, and called with the keywords it
accepts. Used for models, datasets and stages alike, so their messages read the same. No torch here."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

from .errors import UserError

__all__ = ["accepted_keywords", "call", "import_class", "import_path", "one_line", "registered"]


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def import_path(path: str, where: str, what: str = "factory") -> Any:
    """The object ``package.module:name`` names (``name`` may be dotted); ``where`` (e.g. ``model.arch``)
    starts every error message."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + attr.split(".")):
        raise UserError(f"{where} {path!r}: expected package.module:{what} (Python names separated by dots)")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise UserError(f"{where} {path!r}: {top} is part of Python itself, not a {what} of yours")
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as exc:  # ModuleNotFoundError, or the module failing as it is imported
        raise UserError(f"{where} {path!r}: cannot import module {module_name!r} "
                        f"({type(exc).__name__}: {one_line(exc)})") from None
    for part in attr.split("."):
        if not hasattr(found, part):
            raise UserError(f"{where} {path!r}: module {module_name!r} has no attribute {attr!r}")
        found = getattr(found, part)
    return found


def import_class(path: str, kind: str, base: type, base_name: str) -> Any:
    """The subclass of ``base`` (``base_name``, as users import it) with a ``name`` that
    ``package.module:Class`` names (a stage, a method); a mistake is a ValueError naming it. Registering it
    is the caller's."""
    try:
        found = import_path(path, kind, "Class")
    except UserError as exc:
        raise ValueError(f"{exc} (cannot import it)") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ValueError(f"{kind} {path!r} is not a subclass of {base_name}")
    if not getattr(found, "name", None):
        raise ValueError(f"{kind} {path!r} has no name")
    return found


def registered(name: str, registry: dict[str, Any], kind: str, base: type, base_name: str,
               register: Callable[[Any], Any]) -> Any:
    """``registry[name]``, or the class ``package.module:Class`` names, imported (:func:`import_class`) and
    passed to ``register`` unless its name is registered already; else a ValueError naming the known ones."""
    found = registry.get(name)
    if found is not None:
        return found
    if ":" not in name:
        raise ValueError(f"unknown {kind} {name!r} (known: {', '.join(registry)}, or package.module:Class)")
    found = import_class(name, kind, base, base_name)
    if found.name not in registry:
        register(found)
    return found


def accepted_keywords(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``offered`` that ``function``'s signature accepts (all of them for ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(offered)
    return {k: v for k, v in offered.items() if k in parameters}


def call(path: str, where: str, function: Any, offered: dict[str, Any], extra: dict[str, Any]) -> Any:
    """``function(**accepted offered, **extra)``, with a failure as one UserError line."""
    if not callable(function):
        raise UserError(f"{where} {path!r}: {path.partition(':')[2]!r} is a {type(function).__name__}, not a "
                        "function or class")
    kwargs = {**accepted_keywords(function, offered), **extra}
    try:
        return function(**kwargs)
    except UserError:
        raise
    except Exception as exc:
        called = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise UserError(f"{where} {path!r}: the factory raised {type(exc).__name__} when called with "
                        f"({called}): {one_line(exc)}") from None
