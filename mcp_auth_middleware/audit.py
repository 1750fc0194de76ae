"""The audit trail (structlog): where each credential came from, never the credential.

Logger ``mcp_auth_middleware.audit``; one event per resolved server credential and one per
rejection. Tokens appear only as a fingerprint (first 12 hex of their SHA-256); server URLs
are logged without their query string, which may carry secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, overload

import structlog

from mcp_auth_middleware.errors import CredentialRejected
from mcp_auth_middleware.resolve import Resolved

__all__ = ["AUDIT_LOGGER", "CREDENTIAL_REJECTED", "CREDENTIAL_RESOLVED", "Auditor"]

AUDIT_LOGGER: Final = "mcp_auth_middleware.audit"
CREDENTIAL_RESOLVED: Final = "mcp_credential_resolved"
CREDENTIAL_REJECTED: Final = "mcp_credential_rejected"


@overload
def _printable(value: str, limit: int = ...) -> str: ...
@overload
def _printable(value: str | None, limit: int = ...) -> str | None: ...
def _printable(value: str | None, limit: int = 256) -> str | None:
    """A caller-chosen string made safe for any renderer: no control characters (a newline
    in a console log could forge a line), bounded length."""
    if value is None or (value.isprintable() and len(value) <= limit):
        return value
    return repr(value[:limit])[1:-1]


class Auditor:
    """Emits the audit events of one middleware instance."""

    def __init__(self) -> None:
        self._log: Any = structlog.get_logger(AUDIT_LOGGER)

    def resolved(
        self, items: Sequence[Resolved], *, method: str, path: str, request_id: str | None
    ) -> None:
        path = _printable(path, 2048)
        request_id = _printable(request_id)
        info = self._log.info
        for cred, shadowed in items:
            server = cred.server
            info(
                CREDENTIAL_RESOLVED,
                source=str(cred.source),
                shadowed=list(shadowed),
                server_url=None if server is None else server.loggable,
                server_label=_printable(cred.server_label),
                fingerprint=cred.fingerprint,
                method=method,
                path=path,
                request_id=request_id,
            )

    def rejected(
        self, exc: CredentialRejected, *, method: str, path: str, request_id: str | None
    ) -> None:
        self._log.warning(
            CREDENTIAL_REJECTED,
            code=exc.code,
            param=_printable(exc.param),
            source=exc.source,
            method=method,
            path=_printable(path, 2048),
            request_id=_printable(request_id),
        )
