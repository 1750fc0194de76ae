"""What every credential source shares: the protocol, the request view, token checks.

A source is any object with a ``name``, a ``needs_body`` flag and a ``read(request)`` method
that returns the credentials it finds (an iterable of :class:`MCPCredential`, or an awaitable
of one, for sources that do I/O such as a token vault). It refuses a request by raising
:class:`~mcp_auth_middleware.errors.CredentialRejected`. The built-in sources implement the
same protocol; the middleware asks each enabled source in ``config.precedence`` order and
keeps, per server, the first source's credential.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from starlette.types import Scope

from mcp_auth_middleware.credentials import MCPCredential
from mcp_auth_middleware.errors import INVALID_AUTHORIZATION, CredentialRejected

__all__ = [
    "MAX_TOKEN_LENGTH",
    "MCPCredentialSource",
    "MCPTool",
    "ParsedBody",
    "SourceRequest",
    "parse_token",
]

#: Longest accepted ``authorization`` value (the token with any ``Bearer`` prefix).
MAX_TOKEN_LENGTH: Final = 8192
# Printable ASCII without space: anything else could split or inject a header.
_TOKEN = re.compile(r"[\x21-\x7e]+")


class MCPTool:
    """One ``{"type": "mcp"}`` item of a Responses ``tools`` list, fields as sent.

    Not a tuple on purpose: JSON log renderers would serialise a tuple's fields, tokens
    included; ``repr`` shows ``[secure]`` instead.
    """

    __slots__ = ("authorization", "headers", "position", "server_label", "server_url")

    def __init__(
        self, position: int, server_url: Any, server_label: Any, authorization: Any, headers: Any
    ) -> None:
        self.position = position
        self.server_url = server_url
        self.server_label = server_label
        self.authorization = authorization
        self.headers = headers

    def __repr__(self) -> str:
        headers = list(self.headers) if isinstance(self.headers, dict) else "[secure]"
        return (
            f"MCPTool(position={self.position}, server_url={self.server_url!r}, "
            f"server_label={self.server_label!r}, authorization=[secure], headers={headers!r})"
        )


class ParsedBody:
    """The parts of a JSON request body that credential sources read.

    ``tools`` are the MCP tools only; ``authorization`` and ``mcp_endpoint`` are the
    tool-runtime top-level fields, as sent (``None`` when absent).
    """

    __slots__ = ("authorization", "mcp_endpoint", "tools")

    def __init__(
        self, tools: tuple[MCPTool, ...] = (), authorization: Any = None, mcp_endpoint: Any = None
    ) -> None:
        self.tools = tools
        self.authorization = authorization
        self.mcp_endpoint = mcp_endpoint

    def __repr__(self) -> str:
        return (
            f"ParsedBody(tools={list(self.tools)!r}, authorization=[secure], "
            f"mcp_endpoint={self.mcp_endpoint!r})"
        )

    def labels(self) -> dict[str, list[MCPTool]]:
        """The MCP tools by server label, case-folded."""
        by_label: dict[str, list[MCPTool]] = {}
        for tool in self.tools:
            if isinstance(tool.server_label, str):
                by_label.setdefault(tool.server_label.casefold(), []).append(tool)
        return by_label


class SourceRequest:
    """The request as a source sees it.

    ``headers`` maps lower-cased header names to all their values (latin-1 decoded);
    ``body`` is ``None`` when the request body was not read (no source needs it, or it is
    not a JSON object). ``scope`` is the ASGI scope (``scope.get("user")`` for an
    authenticated user, ``scope["state"]`` for what earlier middleware stored).
    """

    __slots__ = ("body", "headers", "method", "path", "scope")

    def __init__(
        self,
        scope: Scope,
        method: str,
        path: str,
        headers: Mapping[str, Sequence[str]],
        body: ParsedBody | None = None,
    ) -> None:
        self.scope = scope
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The first value of a header (name matched case-insensitively), or ``None``."""
        values = self.headers.get(name.lower())
        return values[0] if values else None


@runtime_checkable
class MCPCredentialSource(Protocol):
    """The protocol of a credential source (built-in or custom)."""

    #: Its name in ``config.precedence`` and in audit events.
    name: str
    #: Whether it reads the parsed body (so the middleware must buffer it).
    needs_body: bool

    def read(
        self, request: SourceRequest
    ) -> Iterable[MCPCredential] | Awaitable[Iterable[MCPCredential]]:
        """The credentials this request carries for this source (may be async)."""
        ...


def parse_token(value: Any, *, param: str, source: str, require_bearer: bool) -> str:
    """Validate an ``authorization`` value and return the bare token.

    ``Bearer <token>`` (scheme in any case, one or more spaces) has its prefix stripped;
    with ``require_bearer`` nothing else is accepted. The token must be 1 to 8192 printable
    ASCII characters without whitespace. The value never appears in the error.
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_TOKEN_LENGTH
        or value.lower() == "bearer"  # a scheme with no token: a caller's mistake
    ):
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=source)
    if value[:7].lower() == "bearer ":
        token = value[7:].lstrip(" ")
    elif require_bearer:
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=source)
    else:
        token = value
    if not _TOKEN.fullmatch(token):
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=source)
    return token
