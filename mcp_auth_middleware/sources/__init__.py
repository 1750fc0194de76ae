"""Credential sources: the protocol they share and the built-in ones."""

from mcp_auth_middleware.sources.base import (
    MCPCredentialSource,
    MCPTool,
    ParsedBody,
    SourceRequest,
    parse_token,
)

__all__ = ["MCPCredentialSource", "MCPTool", "ParsedBody", "SourceRequest", "parse_token"]
