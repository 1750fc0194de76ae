"""What every credential source shares: the protocol, the request view, token checks.

A source is any object with a ``name``, a ``needs_body`` flag and a ``read(request)`` method
that returns the credentials it finds (an iterable of :class:`MCPCredential`, or an awaitable
of one, for sources that do I/O such as a token vault). It refuses a request by raising
:class:`~mcp_auth_middleware.errors.CredentialRejected`. The built-in sources implement the
same protocol; the middleware asks each enabled source in ``config.precedence`` order and
keeps, per server, the first source's credential.
"""

from __future__ import annotations

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
    "check_token",
    "parse_token",
]

#: Longest accepted ``authorization`` value (the token with any ``Bearer`` prefix).
MAX_TOKEN_LENGTH: Final = 8192


class MCPTool:
    """One ``{"type": "mcp"}`` item of a Responses ``tools`` list, fields as sent.

    Not a tuple on purpose: JSON log renderers would serialise a tuple's fields, tokens
    included; ``repr`` shows ``[secure]`` instead.
    """

    __slots__ = ("authorization", "headers", "position", "server_label", "server_url")

    #: Always ``"mcp"``: other tools are not kept.
    type = "mcp"

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

    @classmethod
    def _of(cls, tools: Iterable[Any], authorization: Any, mcp_endpoint: Any) -> ParsedBody:
        """From decoded tools (anything with the fields of :class:`MCPTool` and a ``type``)."""
        return cls(
            tuple(
                MCPTool(position, t.server_url, t.server_label, t.authorization, t.headers)
                for position, t in enumerate(tools)
                if t.type == "mcp"
            ),
            authorization,
            mcp_endpoint,
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
    ``body`` is ``None`` when the request body was not read (no source needs it, or it is
    not a JSON object). ``scope`` is the ASGI scope (``scope.get("user")`` for an
    authenticated user, ``scope["state"]`` for what earlier middleware stored).
    """

    __slots__ = (
        "_body",
        "_duplicates",
        "_envelope",
        "_first",
        "_headers",
        "method",
        "path",
        "scope",
    )

    def __init__(
        self,
        scope: Scope,
        method: str,
        path: str,
        headers: Mapping[str, Sequence[str]] | None = None,
        body: ParsedBody | None = None,
        _first: Mapping[bytes, bytes] | None = None,
        _duplicates: bool = True,
        _envelope: Any = None,
    ) -> None:
        self.scope = scope
        self.method = method
        self.path = path
        self._body = body
        # The decoded body (the middleware's): ``body`` is built from it on first use.
        self._envelope = _envelope
        self._headers = headers
        # The raw headers, first value per name (the middleware's one C-level pass), and
        # whether any name occurs twice (then ``headers`` has the whole story).
        self._first = _first
        self._duplicates = _duplicates

    @property
    def body(self) -> ParsedBody | None:
        body = self._body
        if body is None and self._envelope is not None:
            envelope = self._envelope
            body = self._body = ParsedBody._of(
                envelope.tools or (), envelope.authorization, envelope.mcp_endpoint
            )
        return body

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
        if self._first is not None and not self._duplicates:
            value = self._first.get(name.lower().encode("latin-1"))
            return () if value is None else (value.decode("latin-1"),)
        return self.headers.get(name.lower(), ())

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
    ) -> Iterable[MCPCredential] | Awaitable[Iterable[MCPCredential]]:
        """The credentials this request carries for this source (may be async)."""
        ...


def check_token(value: Any, *, require_bearer: bool) -> str | None:
    """The bare token of an ``authorization`` value, or ``None`` if it is not acceptable.

    ``Bearer <token>`` (scheme in any case, one or more spaces) has its prefix stripped;
    with ``require_bearer`` nothing else is accepted. The token must be 1 to 8192 printable
    ASCII characters without whitespace: anything else could split or inject a header.
    """
    if type(value) is not str or len(value) > MAX_TOKEN_LENGTH:
        return None
    if value[:7].lower() == "bearer ":
        token = value[7:].lstrip(" ")
    elif require_bearer or (len(value) == 6 and value.lower() == "bearer"):
        return None  # no scheme where one is required, or a scheme with no token
    else:
        token = value
    # isprintable() on ASCII admits 0x20-0x7E: with no space, exactly the visible characters.
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        return None
    return token


def parse_token(value: Any, *, param: str, source: str, require_bearer: bool) -> str:
    """:func:`check_token`, raising ``invalid_authorization`` for ``param`` on failure.

    The value never appears in the error.
    """
    token = check_token(value, require_bearer=require_bearer)
    if token is None:
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=source)
    return token
