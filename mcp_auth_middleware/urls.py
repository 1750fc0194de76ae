"""Server identity: URL normalisation, and the path prefix test outgoing requests are
matched by (the matching rule itself is :mod:`mcp_auth_middleware.matching`).

Two URLs name the same MCP server when they are equal after normalisation: scheme and host
lower-cased, default port dropped, empty path equal to ``/``, one trailing slash ignored,
fragment and user-info dropped. Scheme, port, path and query stay significant, so a token
given for ``https://h/mcp`` is never sent to ``http://h/mcp``, ``https://h:8443/mcp`` or
``https://h/other``.

Paths are compared as servers resolve them (RFC 3986, section 6.2.2): percent-encodings
upper-cased, dot segments removed, and a path with dot segments must name the same server
whether they are removed or kept. A path that servers or front ends could resolve
differently is *ambiguous*: a percent-encoded unreserved character (``%61``, ``%2e``: routers
that decode first and routers that match the path as sent disagree), an encoded ``/``,
``\\`` or ``%``, an encoded control character, a malformed percent-encoding, a backslash, a
``;`` in an empty or dot segment, or an empty segment (``//``, which some front ends merge).
A server URL with an ambiguous path is refused; an outgoing request to one gets no token.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "MAX_SERVER_URL_LENGTH",
    "AmbiguousPath",
    "ServerURL",
    "is_loopback_host",
    "normalize_path",
    "normalize_server_url",
    "parse_server_url",
    "path_is_prefix",
    "redacted_url",
    "server_url_of",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longest server URL accepted (browsers' and proxies' practical limit). Longer ones are
#: refused, which also bounds what the parse cache below can hold (1024 x 2 KiB).
MAX_SERVER_URL_LENGTH = 2048


class AmbiguousPath(ValueError):
    """A URL path that servers and front ends may resolve in different ways."""

    def __init__(self, why: str) -> None:
        super().__init__(f"URL path is ambiguous: {why}")


class ServerURL(NamedTuple):
    """A parsed, normalised server URL; ``str()`` of it via :attr:`url`."""

    scheme: str
    host: str
    port: int | None
    #: The path after RFC 3986 normalisation (dot segments removed).
    path: str
    query: str

    #: The canonical string form (computed once: parsed URLs are cached).
    url: str
    #: The form for logs: the query (which may carry secrets) replaced by a marker.
    loggable: str
    #: The path as a server that does not remove dot segments routes it (percent-encoded
    #: unreserved characters decoded, dot segments kept). Equal to :attr:`path` unless the
    #: path has dot segments.
    literal_path: str

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return (self.scheme, self.host, self.port)

    def __repr__(self) -> str:  # the query may hold secrets: the loggable form only
        return f"ServerURL({self.loggable!r})"

    def __str__(self) -> str:
        return self.__repr__()


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%(.{0,2})")
# Encodings a server may decode into a separator, a second round of decoding or a control.
_UNSAFE_ENCODED = frozenset({"2F", "5C", "25", "7F", *(f"{n:02X}" for n in range(0x20))})
_HEX = frozenset("0123456789ABCDEFabcdef")


def _check_percent(match: re.Match[str]) -> str:
    code = match.group(1)
    if len(code) != 2 or not (code[0] in _HEX and code[1] in _HEX):
        raise AmbiguousPath("malformed percent-encoding")
    code = code.upper()
    if code in _UNSAFE_ENCODED:
        raise AmbiguousPath("an encoded separator, percent sign or control character")
    if chr(int(code, 16)) in _UNRESERVED:
        # Routers that decode first (uvicorn, nginx) and routers that match the path as sent
        # (Envoy without normalize_path, HAProxy's path_beg) see different paths.
        raise AmbiguousPath("a percent-encoded letter, digit or one of '-._~'")
    return "%" + code


def _remove_dot_segments(segments: list[str]) -> str:
    """RFC 3986 section 5.2.4 on a path split at ``/`` (the first item empty)."""
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/": the last segment resolved to a directory
    return "/" + "/".join(out)


def _trim(path: str) -> str:
    """An empty path as ``/``, and one trailing slash dropped (``/mcp/`` is ``/mcp``)."""
    if not path:
        return "/"
    if len(path) > 1 and path.endswith("/"):
        return path[:-1]
    return path


def normalize_path(path: str) -> tuple[str, str]:
    """``(path, literal_path)`` of a URL path as sent (see the module docstring).

    Raises :class:`AmbiguousPath` for a path that servers may resolve differently.
    """
    if "\\" in path or not path.isprintable() or not path.isascii():
        raise AmbiguousPath("a backslash, control or non-ASCII character")
    if "//" in path:
        raise AmbiguousPath("an empty segment")
    if "%" in path:
        path = _PERCENT.sub(_check_percent, path)
    if "." not in path and ";" not in path and "%3B" not in path:
        path = _trim(path)
        return path, path
    segments = path.split("/")
    dots = False
    for segment in segments:
        name, params, _ = segment.replace("%3B", ";").partition(";")
        if params and name in ("", ".", ".."):
            # Servlet containers drop ";..." parameters: this segment would become empty
            # (then merged) or a dot segment after a router decided where it goes.
            raise AmbiguousPath("a ';' in an empty or dot segment")
        if name in (".", ".."):
            dots = True
    if not dots:
        path = _trim(path)
        return path, path
    if not path.startswith("/"):
        raise AmbiguousPath("dot segments in a relative path")
    return _trim(_remove_dot_segments(segments)), _trim(path)


@lru_cache(maxsize=1024)
def parse_server_url(url: str) -> ServerURL:
    """Parse an absolute ``http``/``https`` URL into its normalised parts.

    Raises ``ValueError`` (with a message that does not repeat the URL) when it is not one,
    :class:`AmbiguousPath` (a ``ValueError``) when its path is ambiguous. Cached: a gateway
    talks to few servers, and their URLs repeat on every request.
    """
    if not isinstance(url, str) or len(url) > MAX_SERVER_URL_LENGTH:
        raise ValueError(f"server URL must be a string of at most {MAX_SERVER_URL_LENGTH} chars")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise ValueError("server URL must be an absolute http(s) URL of printable ASCII")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("server URL is not a valid absolute http(s) URL") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError("server URL must be an absolute http(s) URL with a host")
    return server_url_of(scheme, host, port, parts.path, parts.query)


def server_url_of(scheme: str, host: str, port: int | None, path: str, query: str) -> ServerURL:
    """The normalised :class:`ServerURL` of parts already split and lower-cased (an outgoing
    request's URL, say): default port dropped, path normalised (:func:`normalize_path`; raises
    :class:`AmbiguousPath`), empty path ``/``, one trailing slash ignored."""
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    path, literal = normalize_path(path)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    base = f"{scheme}://{netloc}{path}"
    if not query:
        return ServerURL(scheme, host, port, path, "", base, base, literal)
    return ServerURL(scheme, host, port, path, query, f"{base}?{query}", f"{base}?…", literal)


def redacted_url(url: Any) -> str | None:
    """``url`` as reprs and logs may show it: no user-info, no query (either may hold a
    secret). ``None`` stays ``None``; anything that is not an http(s) URL is not shown."""
    if url is None:
        return None
    try:
        return parse_server_url(url).loggable
    except (ValueError, TypeError):
        return "[not an http(s) URL]"


def normalize_server_url(url: str) -> str:
    """The canonical string form of an absolute server URL (see the module docstring)."""
    return parse_server_url(url).url


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":  # not "*.localhost": a resolver may ask DNS for those
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def path_is_prefix(prefix: str, path: str) -> bool:
    """``prefix`` is ``path`` or a whole-segment prefix of it (``/mcp`` of ``/mcp/x``)."""
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix) and path[len(prefix)] == "/"
