"""Per-request, per-server MCP credentials for Starlette and FastAPI gateways.

See SPEC-level documentation in ``docs/`` and the README for the contract.
"""

from mcp_auth_middleware.audit import AUDIT_LOGGER, CREDENTIAL_REJECTED, CREDENTIAL_RESOLVED
from mcp_auth_middleware.config import MCPAuthConfig, ProviderDataMode
from mcp_auth_middleware.context import current_credentials, use_credentials
from mcp_auth_middleware.credentials import CredentialSource, MCPCredential, MCPCredentials
from mcp_auth_middleware.downstream import InsecureTransportError, MCPBearerAuth, mcp_headers
from mcp_auth_middleware.errors import CredentialRejected
from mcp_auth_middleware.middleware import MCPAuthMiddleware
from mcp_auth_middleware.sources.base import MCPCredentialSource, SourceRequest

__version__ = "0.1.0"

__all__ = [
    "AUDIT_LOGGER",
    "CREDENTIAL_REJECTED",
    "CREDENTIAL_RESOLVED",
    "CredentialRejected",
    "CredentialSource",
    "InsecureTransportError",
    "MCPAuthConfig",
    "MCPAuthMiddleware",
    "MCPBearerAuth",
    "MCPCredential",
    "MCPCredentialSource",
    "MCPCredentials",
    "ProviderDataMode",
    "SourceRequest",
    "current_credentials",
    "mcp_headers",
    "use_credentials",
]
