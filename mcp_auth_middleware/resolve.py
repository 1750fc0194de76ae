"""Precedence and shadowing: many sources' credentials in, one per server out."""

from __future__ import annotations

from collections.abc import Sequence

from mcp_auth_middleware.credentials import (
    Entry,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
    beats,
    entry_key,
)

__all__ = ["Resolved", "credential_key", "resolve"]

#: A winning credential (or header-only entry) and the names of the sources it shadowed.
Resolved = tuple[Entry, tuple[str, ...]]

#: What identifies "the same server" across sources.
credential_key = entry_key


def resolve(
    found: Sequence[tuple[str, Sequence[Entry]]], precedence: Sequence[str] | None = None
) -> tuple[MCPCredentials, tuple[Resolved, ...]]:
    """``found`` is each source's credentials and header-only entries, in precedence order
    (``precedence``: the whole order, which the set keeps for later binding).

    Per server, the first source that supplies a credential wins; a credential beats a
    header-only entry whatever the order (headers alone never take a server's token away),
    and among header-only entries the first source wins. Each loser is recorded as shadowed.
    Within one source there is no order to decide by: a source that gives two entries for one
    server (or two known only by the same label, or two defaults) is a broken source, and
    ``ValueError`` says so. The built-in sources refuse such requests themselves, naming the
    field.
    """
    order = tuple(precedence) if precedence is not None else tuple([name for name, _ in found])
    if len(found) == 1:  # one source: nothing to shadow (the usual request)
        source, entries = found[0]
        return _one_per_server(source, entries, order), tuple([(e, ()) for e in entries])
    winners: dict[tuple[str, str], Entry] = {}
    shadowed: dict[tuple[str, str], list[str]] = {}
    for source, entries in found:
        _one_per_server(source, entries, order)
        for entry in entries:
            key = entry_key(entry)
            incumbent = winners.get(key)
            if incumbent is None:
                winners[key] = entry
            elif beats(entry, incumbent, order):
                winners[key] = entry
                shadowed.setdefault(key, []).insert(0, str(incumbent.source))
            else:
                shadowed.setdefault(key, []).append(source)
    lost = {key: tuple(sources) for key, sources in shadowed.items()}
    resolved = tuple([(entry, lost.get(key, ())) for key, entry in winners.items()])
    credentials = _one_per_server("", list(winners.values()), order)
    return credentials._resolved(lost), resolved


def _one_per_server(
    source: str, entries: Sequence[Entry], order: tuple[str, ...]
) -> MCPCredentials:
    """``entries`` as a set, which refuses two for one server (see :class:`MCPCredentials`)."""
    creds: list[MCPCredential] = []
    headers: list[MCPServerHeaders] = []
    for entry in entries:
        if isinstance(entry, MCPCredential):
            creds.append(entry)
        elif isinstance(entry, MCPServerHeaders):
            headers.append(entry)
    try:
        return MCPCredentials(creds, headers=headers, precedence=order)
    except ValueError as exc:
        raise ValueError(f"credential source {source!r}: {exc}") from None
