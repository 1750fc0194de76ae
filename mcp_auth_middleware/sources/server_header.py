"""Per-server headers: ``X-MCP-<server_label>-Authorization: Bearer <token>`` (off by default).

LiteLLM's convention, for callers that cannot put a token in the body (a browser app whose
gateway adds it from a cookie). The label is matched case-insensitively against the body's
MCP tools, whose ``server_url`` the credential is then bound to; a label that no tool carries
gives a credential known by its (lower-cased) label only. Two headers whose labels name the
same server with different tokens are refused (``conflicting_credentials``).
"""

from __future__ import annotations

from typing import Final

from mcp_auth_middleware.credentials import CredentialSource, MCPCredential
from mcp_auth_middleware.errors import (
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_SERVER_URL,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import MCPTool, SourceRequest, parse_token
from mcp_auth_middleware.urls import parse_server_url

__all__ = ["PREFIX", "SUFFIX", "ServerHeaderSource"]

_SOURCE: Final = CredentialSource.SERVER_HEADER.value
PREFIX: Final = "x-mcp-"
SUFFIX: Final = "-authorization"


class ServerHeaderSource:
    """Credentials from ``X-MCP-<label>-Authorization`` headers (see the module docstring)."""

    name = _SOURCE
    needs_body = True  # the body's tools give each label its server URL

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        found: list[MCPCredential] = []
        by_server: dict[str, MCPCredential] = {}  # normalised server URL -> credential
        labels = request.body.labels() if request.body is not None else {}
        for key, values in request.headers.items():
            if not (key.startswith(PREFIX) and key.endswith(SUFFIX)):
                continue
            label = key[len(PREFIX) : -len(SUFFIX)]
            if not label:
                continue
            param = f"X-MCP-{label}-Authorization"
            if len(values) > 1:
                raise CredentialRejected(INVALID_AUTHORIZATION, param, source=_SOURCE)
            token = parse_token(values[0], param=param, source=_SOURCE, require_bearer=True)
            server = _server_url_for(labels.get(label.casefold(), []), param)
            if server is None:  # no tool with this label has a URL: known by the label only
                cred = MCPCredential(
                    token=token, source=CredentialSource.SERVER_HEADER, server_label=label
                )
                found.append(cred)
                continue
            url, tool = server
            cred = MCPCredential(
                token=token,
                source=CredentialSource.SERVER_HEADER,
                server_url=tool.server_url,
                server_label=tool.server_label,
            )
            previous = by_server.setdefault(url, cred)
            if previous is cred:
                found.append(cred)
            elif not previous.same_token(cred):  # another label, the same server
                raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_SOURCE)
        return found


def _server_url_for(tools: list[MCPTool], param: str) -> tuple[str, MCPTool] | None:
    """The normalised server URL of the MCP tools that carry a header's label, with the first
    of them (whose URL and label the credential takes); ``None`` if none has a URL.

    Refused: a tool's URL that is not a valid server URL, and tools that name different
    servers (``param`` is the header, which is then ambiguous).
    """
    urls = set()
    for tool in tools:
        if isinstance(tool.server_url, str):
            try:
                urls.add(parse_server_url(tool.server_url).url)
            except ValueError:
                raise CredentialRejected(
                    INVALID_SERVER_URL, f"tools[{tool.position}].server_url", source=_SOURCE
                ) from None
    if len(urls) > 1:
        raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_SOURCE)
    if not urls:
        return None
    return urls.pop(), next(t for t in tools if isinstance(t.server_url, str))
