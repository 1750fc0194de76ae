"""What every credential source shares: the protocol, and the request as a source sees it.

A source is any object with a ``name``, a ``needs_body`` flag and a ``read(request)`` method
that returns the credentials it finds (an iterable of :class:`MCPCredential`, or an awaitable
of one, for sources that do I/O such as a token vault). It refuses a request by raising
:class:`~mcp_auth_middleware.errors.CredentialRejected`. The built-in sources implement the
same protocol; the middleware asks each enabled source in ``config.precedence`` order and
keeps, per server, the first source's credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from starlette.types import Scope

from mcp_auth_middleware.checks import MAX_TOKEN_LENGTH, check_token
from mcp_auth_middleware.credentials import MCPCredential, MCPServerHeaders
from mcp_auth_middleware.errors import INVALID_AUTHORIZATION, CredentialRejected
from mcp_auth_middleware.urls import redacted_url

if TYPE_CHECKING:  # body.py imports this module
    from mcp_auth_middleware.sources.body import Body

__all__ = [
    "MAX_TOKEN_LENGTH",
    "MCPCredentialSource",
    "MCPTool",
    "ParsedBody",
    "SourceRequest",
    "check_token",
    "parse_token",
]


class MCPTool:
    """One ``{"type": "mcp"}`` item of a Responses ``tools`` list, fields as sent.

    ``position`` is its place in the request's ``tools`` list (errors name it). Not a tuple on
    purpose: JSON log renderers would serialise a tuple's fields, tokens included; ``repr``
    shows ``[secure]`` instead, and the server URL without its user-info and query.
    """

    __slots__ = (
        "authorization",
        "connector_id",
        "headers",
        "position",
        "server_label",
        "server_url",
    )

    #: Always ``"mcp"``: other tools are not kept.
    type = "mcp"

    def __init__(
        self,
        position: int,
        server_url: Any,
        server_label: Any,
        authorization: Any,
        headers: Any,
        connector_id: Any = None,
    ) -> None:
        self.connector_id = connector_id
        self.position = position
        self.server_url = server_url
        self.server_label = server_label
        self.authorization = authorization
        self.headers = headers

    def __repr__(self) -> str:
        return (
            f"MCPTool(position={self.position}, server_url={redacted_url(self.server_url)!r}, "
            f"server_label={self.server_label!r}, authorization=[secure], headers=[secure])"
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
        return f"ParsedBody(tools={list(self.tools)!r}, authorization=[secure], mcp_endpoint=...)"

    @classmethod
    def of(cls, decoded: Body) -> ParsedBody:
        """The view of the middleware's decoded body: its MCP tools only."""
        return cls(
            tuple(
                MCPTool(
                    position,
                    t.server_url,
                    t.server_label,
                    t.authorization,
                    t.headers,
                    t.connector_id,
                )
                for position, t in enumerate(decoded.tools or ())
                if t.type == "mcp"
            ),
            decoded.authorization,
            decoded.mcp_endpoint,
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

    ``headers`` maps lower-cased header names to all their values (latin-1 decoded), built
    on first use; :meth:`header` and :meth:`header_values` are the cheap way to read one.
    ``body`` is ``None`` when the request body was not read (no source needs it, there is no
    body, or it is not a JSON object); built on first use from ``decoded``, the middleware's
    own decoding of the body, which the built-in body source reads directly. ``scope`` is the
    ASGI scope (``scope.get("user")`` for an authenticated user, ``scope["state"]`` for what
    earlier middleware stored).
    """

    __slots__ = ("_body", "_headers", "decoded", "method", "path", "scope")

    def __init__(
        self,
        scope: Scope,
        method: str,
        path: str,
        headers: Mapping[str, Sequence[str]] | None = None,
        body: ParsedBody | None = None,
        decoded: Body | None = None,
    ) -> None:
        self.scope = scope
        self.method = method
        self.path = path
        self._body = body
        self._headers = headers
        self.decoded = decoded

    @property
    def body(self) -> ParsedBody | None:
        if self._body is None and self.decoded is not None:
            self._body = ParsedBody.of(self.decoded)
        return self._body

    @property
    def headers(self) -> Mapping[str, Sequence[str]]:
        if self._headers is None:
            headers: dict[str, list[str]] = {}
            for raw_name, raw_value in self.scope.get("headers", ()):
                name = raw_name.decode("latin-1").lower()
                headers.setdefault(name, []).append(raw_value.decode("latin-1"))
            self._headers = headers
        return self._headers

    def header_values(self, name: str) -> Sequence[str]:
        """All values of a header (name matched case-insensitively), in order."""
        if self._headers is not None:
            return self._headers.get(name.lower(), ())
        # ASGI servers send the names lower-cased; Starlette's ``Headers`` relies on it too.
        key = name.lower().encode("latin-1")
        headers = self.scope.get("headers", ())
        return [value.decode("latin-1") for raw, value in headers if raw == key]

    def header(self, name: str) -> str | None:
        """The first value of a header (name matched case-insensitively), or ``None``."""
        values = self.header_values(name)
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"SourceRequest(method={self.method!r}, path={self.path!r}, body={self.body!r})"


@runtime_checkable
class MCPCredentialSource(Protocol):
    """The protocol of a credential source (built-in or custom)."""

    #: Its name in ``config.precedence`` and in audit events.
    name: str
    #: Whether it reads the parsed body (so the middleware must buffer it).
    needs_body: bool

    def read(
        self, request: SourceRequest
    ) -> (
        Iterable[MCPCredential | MCPServerHeaders]
        | Awaitable[Iterable[MCPCredential | MCPServerHeaders]]
    ):
        """The credentials this request carries for this source (may be async), and the
        :class:`MCPServerHeaders` of servers it gives headers without a token."""
        ...


def parse_token(value: Any, *, param: str, source: str, require_bearer: bool) -> str:
    """:func:`check_token`, raising ``invalid_authorization`` for ``param`` on failure.

    The value never appears in the error.
    """
    token = check_token(value, require_bearer=require_bearer)
    if token is None:
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=source)
    return token
