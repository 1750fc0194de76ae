"""Server identity: URL normalisation and matching of outgoing requests.

Two URLs name the same MCP server when they are equal after normalisation: scheme and host
lower-cased, default port dropped, empty path equal to ``/``, one trailing slash ignored,
fragment and user-info dropped. Scheme, port, path and query stay significant, so a token
given for ``https://h/mcp`` is never sent to ``http://h/mcp``, ``https://h:8443/mcp`` or
``https://h/other``.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import urlsplit

__all__ = [
    "MAX_SERVER_URL_LENGTH",
    "ServerURL",
    "is_loopback_host",
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


class ServerURL(NamedTuple):
    """A parsed, normalised server URL; ``str()`` of it via :attr:`url`."""

    scheme: str
    host: str
    port: int | None
    path: str
    query: str

    #: The canonical string form (computed once: parsed URLs are cached).
    url: str
    #: The form for logs: the query (which may carry secrets) replaced by a marker.
    loggable: str

    @property
    def origin(self) -> tuple[str, str, int | None]:
        return (self.scheme, self.host, self.port)

    def __repr__(self) -> str:  # the query may hold secrets: the loggable form only
        return f"ServerURL({self.loggable!r})"

    def __str__(self) -> str:
        return self.__repr__()


def _normalize_path(path: str) -> str:
    if not path:
        return "/"
    if len(path) > 1 and path.endswith("/"):
        return path[:-1]
    return path


@lru_cache(maxsize=1024)
def parse_server_url(url: str) -> ServerURL:
    """Parse an absolute ``http``/``https`` URL into its normalised parts.

    Raises ``ValueError`` (with a message that does not repeat the URL) when it is not one.
    Cached: a gateway talks to few servers, and their URLs repeat on every request.
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
    request's URL, say): default port dropped, empty path ``/``, one trailing slash ignored."""
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    path = _normalize_path(path)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    base = f"{scheme}://{netloc}{path}"
    if not query:
        return ServerURL(scheme, host, port, path, "", base, base)
    return ServerURL(scheme, host, port, path, query, f"{base}?{query}", f"{base}?…")


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
