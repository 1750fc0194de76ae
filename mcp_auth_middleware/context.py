"""The request-scoped credentials: one ``ContextVar``, an accessor and a scoping helper.

The variable holds a :class:`CredentialsScope`, not the credentials themselves. Every context
copied during a request (a spawned task, a worker started then, ``contextvars.copy_context()``)
shares that one scope object, so when the request ends and the scope is closed, all of them
see an empty set at once: credentials live exactly as long as their request (or their
``use_credentials`` block), however long a copy of the context lives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from mcp_auth_middleware.credentials import EMPTY_CREDENTIALS, MCPCredential, MCPCredentials

__all__ = ["current_credentials", "use_credentials"]


class CredentialsScope:
    """``with CredentialsScope(credentials):`` scopes ``credentials`` for the block; the
    package's own way in (the middleware's, once per request: a class, not a generator, so
    it costs a few hundred nanoseconds). Closed on exit: every context copied inside the
    block sees an empty set from then on. Not re-entrant: one object, one block.
    """

    __slots__ = ("_token", "credentials")

    def __init__(self, credentials: MCPCredentials) -> None:
        self.credentials = credentials

    def __enter__(self) -> MCPCredentials:
        self._token = _credentials.set(self)
        return self.credentials

    def __exit__(self, *exc_info: object) -> None:
        self.credentials = EMPTY_CREDENTIALS
        _credentials.reset(self._token)

    def __repr__(self) -> str:
        return f"<credentials scope: {len(self.credentials)} credential(s)>"


_credentials: ContextVar[CredentialsScope | None] = ContextVar(
    "mcp_auth_middleware.credentials", default=None
)


def current_credentials() -> MCPCredentials:
    """The credentials of the request being served; an empty set outside a request and,
    once the request has ended, in anything that outlived it."""
    scope = _credentials.get()
    return EMPTY_CREDENTIALS if scope is None else scope.credentials


def inside_scope() -> bool:
    """Whether a request or a ``use_credentials`` block has scoped credentials here."""
    return _credentials.get() is not None


@contextmanager
def use_credentials(
    credentials: MCPCredentials | Iterable[MCPCredential],
) -> Iterator[MCPCredentials]:
    """Scope ``credentials`` for the ``with`` block (tests, workers, background jobs).

    The previous value is restored on exit, whatever happens in the block; tasks and copied
    contexts that outlive the block see an empty set from then on.
    """
    if not isinstance(credentials, MCPCredentials):
        credentials = MCPCredentials(credentials)
    with CredentialsScope(credentials) as scoped_credentials:
        yield scoped_credentials
