"""The audit trail (structlog): where each credential came from, never the credential.

Logger ``mcp_auth_middleware.audit``; one event per resolved server credential and one per
rejection, each with a ``logger`` field naming that logger (so that any renderer shows it)
and, when known, the ``caller`` the application authenticated. Tokens appear only as a
fingerprint (first 12 hex of their SHA-256); server URLs are logged without their query
string, which may carry secrets. The same two points feed OpenTelemetry when it is installed
(:mod:`mcp_auth_middleware.telemetry`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from functools import partial
from typing import TYPE_CHECKING, Any, Final, overload

import structlog
from starlette.types import Scope

from mcp_auth_middleware.credentials import Entry, MCPCredential, OnBind
from mcp_auth_middleware.errors import CredentialRejected
from mcp_auth_middleware.resolve import Resolved

if TYPE_CHECKING:
    from mcp_auth_middleware.config import MCPAuthConfig
    from mcp_auth_middleware.sources.base import SourceRequest
    from mcp_auth_middleware.telemetry import Telemetry
    from mcp_auth_middleware.upstream import MCPUpstreamAuthError

__all__ = [
    "AUDIT_LOGGER",
    "CREDENTIAL_BOUND",
    "CREDENTIAL_REFUSED_UPSTREAM",
    "CREDENTIAL_REJECTED",
    "CREDENTIAL_RESOLVED",
    "Auditor",
    "CallerOf",
    "authenticated_user",
    "log_safe",
    "request_id_of",
]

AUDIT_LOGGER: Final = "mcp_auth_middleware.audit"
CREDENTIAL_RESOLVED: Final = "mcp_credential_resolved"
CREDENTIAL_REJECTED: Final = "mcp_credential_rejected"
CREDENTIAL_REFUSED_UPSTREAM: Final = "mcp_credential_refused_upstream"
CREDENTIAL_BOUND: Final = "mcp_credential_bound"

#: Reads the caller's identity from the request's ASGI scope (``None``: unknown).
CallerOf = Callable[[Scope], str | None]


def authenticated_user(scope: Scope) -> str | None:
    """The caller that Starlette's ``AuthenticationMiddleware`` authenticated (the default
    ``caller`` of :class:`~mcp_auth_middleware.MCPAuthConfig`).

    ``scope["user"]``: its ``identity``, else its ``display_name``; ``None`` when there is no
    user or it is not authenticated. A plain string in ``scope["user"]`` is taken as is.
    """
    user = scope.get("user")
    if user is None or isinstance(user, str):
        return user or None
    try:
        if not user.is_authenticated:
            return None
    except (AttributeError, NotImplementedError):
        return None
    for attribute in ("identity", "display_name"):
        try:
            value = getattr(user, attribute)
        except (AttributeError, NotImplementedError):  # Starlette's BaseUser leaves them so
            continue
        if value:
            return str(value)
    return None


@overload
def log_safe(value: str, limit: int = ...) -> str: ...
@overload
def log_safe(value: str | None, limit: int = ...) -> str | None: ...
def log_safe(value: str | None, limit: int = 256) -> str | None:
    """A caller-chosen string made safe for any renderer: no control characters (a newline
    in a console log could forge a line), bounded length."""
    if value is None or (value.isprintable() and len(value) <= limit):
        return value
    return repr(value[:limit])[1:-1]


_correlation_id: ContextVar[str | None] | None
try:  # asgi-correlation-id's request id, when that middleware is installed
    from asgi_correlation_id import correlation_id as _correlation_id
except ImportError:  # pragma: no cover - exercised when the package is absent
    _correlation_id = None


def request_id_of(header: bytes | None) -> str | None:
    """The request id audit events carry: asgi-correlation-id's, else the request's first
    ``X-Request-ID`` header (``header``, bounded)."""
    value = _correlation_id.get() if _correlation_id is not None else None
    if value:
        return value
    return None if header is None else header[:128].decode("latin-1") or None


class Auditor:
    """Emits the audit events of one middleware instance: structlog events and, when given,
    OpenTelemetry spans and counters."""

    __slots__ = ("_caller", "_log", "_telemetry")

    def __init__(
        self,
        *,
        log: bool = True,
        caller: CallerOf | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._log: Any = structlog.get_logger(AUDIT_LOGGER) if log else None
        self._caller = caller
        self._telemetry = telemetry

    @classmethod
    def for_config(cls, config: MCPAuthConfig) -> Auditor | None:
        """The auditor ``config`` asks for (``audit``, ``caller``, ``telemetry``), or
        ``None`` when there is nothing to record."""
        from mcp_auth_middleware.telemetry import telemetry

        otel = telemetry() if config.telemetry else None
        if not config.audit and otel is None:
            return None
        return cls(log=config.audit, caller=config.caller, telemetry=otel)

    def _caller_of(self, request: SourceRequest) -> str | None:
        if self._caller is None:
            return None
        who = self._caller(request.scope)
        if who is None:
            return None
        return log_safe(who if type(who) is str else str(who))

    def resolved(
        self, items: Sequence[Resolved], request: SourceRequest, request_id: str | None
    ) -> None:
        """One event per credential scoped for ``request``, with the sources it shadowed."""
        if self._telemetry is not None:
            self._telemetry.resolved(items)
        if self._log is None:
            return
        path = log_safe(request.path, 2048)
        request_id = log_safe(request_id)
        # No ``caller`` field when it is unknown, so that a ``caller`` bound in structlog's
        # contextvars shows through.
        who = self._caller_of(request)
        info = self._log.info if who is None else partial(self._log.info, caller=who)
        for entry, shadowed in items:
            info(
                CREDENTIAL_RESOLVED,
                **_fields_of(entry, shadowed),
                method=request.method,
                path=path,
                request_id=request_id,
            )

    def binder(self, request: SourceRequest, request_id: str | None) -> OnBind | None:
        """The hook a request's credential set calls when the application binds a
        credential to a server (``bind_default``, ``bind_connector``): it emits
        ``mcp_credential_bound``, naming what that server gets and the sources it beat."""
        if self._log is None:
            return None
        info = self._log.info
        who = self._caller_of(request)
        context = {
            "method": request.method,
            "path": log_safe(request.path, 2048),
            "request_id": log_safe(request_id),
            **({} if who is None else {"caller": who}),
        }

        def bound(entry: Entry, shadowed: tuple[str, ...]) -> None:
            info(CREDENTIAL_BOUND, **_fields_of(entry, shadowed), **context)

        return bound

    def rejected(
        self, exc: CredentialRejected, request: SourceRequest, request_id: str | None
    ) -> None:
        """The event of a refused request."""
        if self._telemetry is not None:
            self._telemetry.rejected(exc)
        if self._log is None:
            return
        self._warn(
            CREDENTIAL_REJECTED,
            request,
            request_id,
            code=exc.code,
            param=log_safe(exc.param),
            source=exc.source,
        )

    def refused_upstream(
        self, exc: MCPUpstreamAuthError, request: SourceRequest, request_id: str | None
    ) -> None:
        """The event of a credential an MCP server refused (401/403) during ``request``."""
        if self._telemetry is not None:
            self._telemetry.refused_upstream(exc)
        if self._log is None:
            return
        self._warn(
            CREDENTIAL_REFUSED_UPSTREAM,
            request,
            request_id,
            source=exc.source,
            fingerprint=exc.fingerprint,
            status=exc.status,
            server_url=exc.server_url,
            server_label=exc.server_label,
        )

    def _warn(
        self, event: str, request: SourceRequest, request_id: str | None, **fields: Any
    ) -> None:
        """A warning event with the request's method, path, id and caller."""
        who = self._caller_of(request)
        self._log.warning(
            event,
            logger=AUDIT_LOGGER,
            **fields,
            method=request.method,
            path=log_safe(request.path, 2048),
            request_id=log_safe(request_id),
            **({} if who is None else {"caller": who}),
        )


def _fields_of(entry: Entry, shadowed: tuple[str, ...]) -> dict[str, Any]:
    """An audit event's fields for one server's entry: never a token or a header value (a
    header-only entry has no fingerprint; ``headers`` lists names only)."""
    server = entry.server
    fields: dict[str, Any] = {
        "logger": AUDIT_LOGGER,
        "source": str(entry.source),
        "shadowed": list(shadowed),
        "server_url": None if server is None else server.loggable,
        "server_label": log_safe(entry.server_label),
        "fingerprint": entry.fingerprint if isinstance(entry, MCPCredential) else None,
    }
    if entry.headers:
        fields["headers"] = list(entry.headers)
    if entry.connector_id is not None:
        fields["connector_id"] = log_safe(entry.connector_id)
    return fields
