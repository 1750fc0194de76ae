"""Per-request, per-server MCP credentials for Starlette and FastAPI gateways.

The contract is ``docs/reference.md``; the README shows how to use it.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from mcp_auth_middleware.audit import (
    AUDIT_LOGGER,
    CREDENTIAL_BOUND,
    CREDENTIAL_REFUSED_UPSTREAM,
    CREDENTIAL_REJECTED,
    CREDENTIAL_RESOLVED,
)
from mcp_auth_middleware.config import HeadersAuthorization, MCPAuthConfig, ProviderDataMode
from mcp_auth_middleware.context import current_credentials, use_credentials
from mcp_auth_middleware.credentials import (
    CredentialSource,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
)
from mcp_auth_middleware.downstream import InsecureTransportError, MCPBearerAuth, mcp_headers
from mcp_auth_middleware.errors import CredentialRejected, CredentialSourceError
from mcp_auth_middleware.middleware import MCPAuthMiddleware
from mcp_auth_middleware.sources.base import MCPCredentialSource, SourceRequest
from mcp_auth_middleware.upstream import MCPUpstreamAuthError, upstream_refusals

if _TYPE_CHECKING:
    from mcp_auth_middleware.sessions import MCPSessionPool, MCPSessionPoolStats

__version__ = "0.1.0"

__all__ = [
    "AUDIT_LOGGER",
    "CREDENTIAL_BOUND",
    "CREDENTIAL_REFUSED_UPSTREAM",
    "CREDENTIAL_REJECTED",
    "CREDENTIAL_RESOLVED",
    "CredentialRejected",
    "CredentialSource",
    "CredentialSourceError",
    "HeadersAuthorization",
    "InsecureTransportError",
    "MCPAuthConfig",
    "MCPAuthMiddleware",
    "MCPBearerAuth",
    "MCPCredential",
    "MCPCredentialSource",
    "MCPCredentials",
    "MCPServerHeaders",
    "MCPSessionPool",
    "MCPSessionPoolStats",
    "MCPUpstreamAuthError",
    "ProviderDataMode",
    "SourceRequest",
    "current_credentials",
    "mcp_headers",
    "upstream_refusals",
    "use_credentials",
]


def __getattr__(name: str) -> object:
    # The session pool needs the optional ``mcp`` package: import it only when asked for.
    if name in ("MCPSessionPool", "MCPSessionPoolStats"):
        from mcp_auth_middleware import sessions

        return getattr(sessions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
