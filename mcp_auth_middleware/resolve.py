"""Precedence and shadowing: many sources' credentials in, one per server out."""

from __future__ import annotations

from collections.abc import Sequence

from mcp_auth_middleware.credentials import MCPCredential, MCPCredentials

__all__ = ["Resolved", "credential_key", "resolve"]

#: A winning credential and the names of the sources it shadowed.
Resolved = tuple[MCPCredential, tuple[str, ...]]


def credential_key(cred: MCPCredential) -> tuple[str, str]:
    """What identifies "the same server" across sources."""
    server = cred.server
    if server is not None:
        return ("url", server.url)
    label = cred.server_label
    if label is not None:
        return ("label", label.casefold())
    return ("default", "")


def resolve(
    found: Sequence[tuple[str, Sequence[MCPCredential]]],
) -> tuple[MCPCredentials, tuple[Resolved, ...]]:
    """``found`` is each source's credentials, in precedence order.

    Per server, the first source that supplies a credential wins; each later source that
    supplies one for the same server is recorded as shadowed.
    """
    if len(found) == 1:  # one source: nothing to shadow (the usual request)
        creds = found[0][1]
        try:
            return MCPCredentials(creds), tuple([(cred, ()) for cred in creds])
        except ValueError:
            pass  # it gave two for one server: the first wins, as below
    winners: dict[tuple[str, str], MCPCredential] = {}
    shadowed: dict[tuple[str, str], list[str]] = {}
    for source, creds in found:
        for cred in creds:
            key = credential_key(cred)
            winner = winners.get(key)
            if winner is None:
                winners[key] = cred
            elif winner.source != source:
                shadowed.setdefault(key, []).append(source)
    resolved = tuple(
        [(cred, tuple(shadowed[key]) if key in shadowed else ()) for key, cred in winners.items()]
    )
    return MCPCredentials(winners.values()), resolved
