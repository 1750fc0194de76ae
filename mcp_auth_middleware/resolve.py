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
    supplies one for the same server is recorded as shadowed. Within one source there is no
    order to decide by: a source that gives two credentials for one server (or two known
    only by the same label, or two defaults) is a broken source, and ``ValueError`` says so.
    The built-in sources refuse such requests themselves, naming the field.
    """
    if len(found) == 1:  # one source: nothing to shadow (the usual request)
        source, creds = found[0]
        return _one_per_server(source, creds), tuple([(cred, ()) for cred in creds])
    winners: dict[tuple[str, str], MCPCredential] = {}
    shadowed: dict[tuple[str, str], list[str]] = {}
    for source, creds in found:
        _one_per_server(source, creds)
        for cred in creds:
            key = credential_key(cred)
            if key in winners:
                shadowed.setdefault(key, []).append(source)
            else:
                winners[key] = cred
    resolved = tuple(
        [(cred, tuple(shadowed[key]) if key in shadowed else ()) for key, cred in winners.items()]
    )
    return MCPCredentials(winners.values()), resolved


def _one_per_server(source: str, creds: Sequence[MCPCredential]) -> MCPCredentials:
    """``creds`` as a set, which refuses two for one server (see :class:`MCPCredentials`)."""
    try:
        return MCPCredentials(creds)
    except ValueError as exc:
        raise ValueError(f"credential source {source!r}: {exc}") from None
