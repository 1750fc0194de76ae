"""The request-scoped credentials: one ``ContextVar``, an accessor and a scoping helper."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mcp_auth_middleware.credentials import EMPTY_CREDENTIALS, MCPCredential, MCPCredentials

__all__ = ["current_credentials", "use_credentials"]

_credentials: ContextVar[MCPCredentials] = ContextVar(
    "mcp_auth_middleware.credentials", default=EMPTY_CREDENTIALS
)


def current_credentials() -> MCPCredentials:
    """The credentials of the request being served; an empty set outside a request."""
    return _credentials.get()


@contextmanager
def use_credentials(
    credentials: MCPCredentials | Iterable[MCPCredential],
) -> Iterator[MCPCredentials]:
    """Scope ``credentials`` for the ``with`` block (tests, workers, background jobs).

    The previous value is restored on exit, whatever happens in the block.
    """
    if not isinstance(credentials, MCPCredentials):
        credentials = MCPCredentials(credentials)
    token = _credentials.set(credentials)
    try:
        yield credentials
    finally:
        _credentials.reset(token)
