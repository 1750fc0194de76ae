"""Which server entry an outgoing request gets: the downstream matching rule.

An entry (a credential, or a header-only entry) is keyed by its normalised server URL. A
request gets the entry of its exact URL, else the one whose path is the longest
whole-segment prefix of the request's path on the same origin; an entry with a query only
for exactly that query. Where servers could route the request differently (dot segments
kept or removed, a query they read alike) and the answer would differ, it gets none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar
from urllib.parse import parse_qsl

from mcp_auth_middleware.urls import ServerURL, path_is_prefix

__all__ = ["match_entry"]


class _BoundEntry(Protocol):
    @property
    def server(self) -> ServerURL | None: ...


_E = TypeVar("_E", bound=_BoundEntry)


def match_entry(by_url: Mapping[str, _E], request: ServerURL) -> _E | None:
    """The entry for an outgoing request: the exact URL, else the longest whole-segment
    path prefix on the same origin; the same with the request's dot segments kept, or none
    (see :meth:`MCPCredentials.match_request`). ``by_url`` holds entries bound to a URL,
    keyed by it."""
    chosen = by_url.get(request.url)
    if chosen is None:
        chosen = _longest_prefix(by_url, request, request.path)
    if (
        request.literal_path != request.path
        and _longest_prefix(by_url, request, request.literal_path) is not chosen
    ):
        return None
    return chosen


def _longest_prefix(by_url: Mapping[str, _E], request: ServerURL, path: str) -> _E | None:
    """The entry whose path is the longest whole-segment prefix of ``path`` on the request's
    origin; an entry with a query only for exactly that query. ``None`` also when the
    request's query differs from such an entry's in bytes but a server may read the two
    alike (``tenant=%78``, ``tenant=x&``, ``tenant=y&tenant=x``)."""
    best: _E | None = None
    best_rank = (-1, False)
    for entry in by_url.values():
        server = entry.server
        assert server is not None
        if server.origin != request.origin or not path_is_prefix(server.path, path):
            continue
        if server.query and server.query != request.query:
            if _read_alike(server.query, request.query):
                return None
            continue
        rank = (len(server.path), bool(server.query))
        if rank > best_rank:
            best, best_rank = entry, rank
    return best


def _read_alike(query: str, other: str) -> bool:
    """Whether a server may read two different query strings as the same parameters
    (decoded; a repeated key's last value, or its first)."""

    def readings(text: str) -> set[frozenset[tuple[str, str]]]:
        pairs = parse_qsl(text, keep_blank_values=True)
        return {frozenset(dict(pairs).items()), frozenset(dict(reversed(pairs)).items())}

    return bool(readings(query) & readings(other))
