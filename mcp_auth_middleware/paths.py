"""Which requests are guarded: ``config.paths`` against the request's path.

Routers match the *route path*: the request path without the ``root_path`` that ``uvicorn
--root-path`` or a mounting application put in front of it. So a pattern is matched against
the route path (as Starlette computes it) and against the full path, each as it is and with
runs of ``/`` merged and one trailing ``/`` removed (forms that some routers or proxies treat
as the same route), and case-insensitively (some routers, BlackSheep's, ignore case). A
request is guarded if any form matches, and so is any path holding a control
character (Starlette's route patterns end in ``$``, which also matches before a final
newline, so ``/v1/responses%0A`` reaches the ``/v1/responses`` route): when in doubt, it is
read.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Final

from starlette.types import Scope

__all__ = ["path_matcher", "route_path"]

_SLASHES: Final = re.compile("//+")


def route_path(path: str, root_path: str) -> str:
    """``path`` without ``root_path``, as Starlette's router sees it."""
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    return path[len(root_path) :] if path[len(root_path)] == "/" else path


def _forms(path: str, root_path: str) -> set[str]:
    forms = {path, route_path(path, root_path) or "/"}
    for form in list(forms):
        merged = _SLASHES.sub("/", form)
        forms.add(merged)
        if len(merged) > 1 and merged.endswith("/"):
            forms.add(merged[:-1])
    return forms


def path_matcher(patterns: Iterable[str]) -> Callable[[Scope], bool]:
    """Whether a request's path matches one of the fnmatch ``patterns`` (see the module
    docstring): a set lookup for the literal patterns, a regular expression for the others."""
    patterns = tuple(patterns)
    globs = [p for p in patterns if any(c in p for c in "*?[")]
    literal = frozenset(p.lower() for p in patterns if p not in globs)
    glob = (
        re.compile("|".join(fnmatch.translate(p) for p in globs), re.IGNORECASE).match
        if globs
        else None
    )

    def matches(path: str) -> bool:
        return path.lower() in literal or (glob is not None and glob(path) is not None)

    def guards(scope: Scope) -> bool:
        path: str = scope["path"]
        root_path: str = scope.get("root_path", "")
        if not root_path and "//" not in path and path[-1:] != "/" and path.isprintable():
            return matches(path)  # the usual request: one form
        return not path.isprintable() or any(matches(form) for form in _forms(path, root_path))

    return guards
