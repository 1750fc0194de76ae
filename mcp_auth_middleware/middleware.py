"""The ASGI middleware. Read top to bottom, it follows a request:

decide whether the path is guarded -> check the framing headers -> read the body if it may be
a JSON object -> ask each source -> resolve -> audit -> scope -> call the app -> reset.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_auth_middleware.audit import Auditor
from mcp_auth_middleware.config import MCPAuthConfig, ProviderDataMode
from mcp_auth_middleware.context import _credentials
from mcp_auth_middleware.credentials import (
    EMPTY_CREDENTIALS,
    CredentialSource,
    MCPCredential,
    MCPCredentials,
)
from mcp_auth_middleware.errors import (
    BODY_TOO_LARGE,
    INVALID_BODY,
    INVALID_CONTENT_LENGTH,
    MESSAGES,
    UNSUPPORTED_CONTENT_ENCODING,
    CredentialRejected,
    error_body,
)
from mcp_auth_middleware.paths import path_matcher
from mcp_auth_middleware.resolve import resolve
from mcp_auth_middleware.sources.base import (
    MCPCredentialSource,
    ParsedBody,
    RequestHeaders,
    SourceRequest,
)
from mcp_auth_middleware.sources.body import BodySource, parse_body
from mcp_auth_middleware.sources.provider_data import ProviderDataSource
from mcp_auth_middleware.sources.server_header import ServerHeaderSource

__all__ = ["MCPAuthMiddleware"]

# The first byte that is not JSON whitespace, a NUL (UTF-16/32) or a byte-order-mark byte.
# Only a body whose first such byte is "{" can be a JSON object for any parser.
_SIGNIFICANT: Final = re.compile(rb"[^ \t\r\n\x00\xef\xbb\xbf\xfe\xff]")
_CONTENT_LENGTH: Final = re.compile(rb"[0-9]{1,18}")
_HTTP_1: Final = frozenset({"1.0", "1.1"})
_NO_BODY: Final = frozenset({"GET", "HEAD"})

_correlation_id: ContextVar[str | None] | None
try:  # asgi-correlation-id's request id, when that middleware is installed
    from asgi_correlation_id import correlation_id as _correlation_id
except ImportError:  # pragma: no cover - exercised when the package is absent
    _correlation_id = None


class MCPAuthMiddleware:
    """Pull per-server MCP credentials from each request and scope them for its lifetime.

    On a guarded path (all, or ``config.paths``) every HTTP request is read: its headers by
    the header sources, and its body, whatever its method and ``Content-Type``, unless the
    body cannot be a JSON object (its first significant byte is not ``{``: a form, an upload,
    a JSON array), which goes to the application unbuffered. A refused request gets an
    OpenAI-style JSON error and the application is not called. Every other scope, and every
    other path, goes straight to the application.

    Trust assumption: the request headers and body are the caller's own. Put this middleware
    after whatever authenticates the caller, so that an unauthenticated request never gets
    as far as having its credentials scoped.
    """

    def __init__(self, app: ASGIApp, *, config: MCPAuthConfig | None = None) -> None:
        self.app = app
        self.config = config = config if config is not None else MCPAuthConfig.from_env()
        self._sources = _sources_of(config)
        self._active = config.enabled and bool(self._sources)
        self._reads_body = any(source.needs_body for source in self._sources)
        self._guards = None if config.paths is None else path_matcher(config.paths)
        self._auditor = Auditor() if config.audit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self._active
            or (self._guards is not None and not self._guards(scope))
        ):
            await self.app(scope, receive, send)
            return
        headers = RequestHeaders(scope["headers"])
        try:
            body_comes = _body_comes(scope, headers)
        except CredentialRejected as exc:
            await self._reject(scope, send, headers, exc)
            return
        prepared = await self._prepare(scope, receive, send, headers, body_comes)
        if prepared is None:
            return  # refused (answered), or the client went away
        scope, replay, credentials = prepared
        del prepared
        # No local of this frame holds the body or a bare token while the application runs:
        # ``replay`` and ``credentials`` hide theirs from repr (and so from tracebacks that
        # render locals, such as Sentry's or structlog's ``dict_tracebacks``).
        token = _credentials.set(credentials)
        try:
            await self.app(scope, replay, send)
        finally:
            _credentials.reset(token)

    async def _prepare(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: RequestHeaders,
        body_comes: int | None,
    ) -> tuple[Scope, Receive, MCPCredentials] | None:
        """Read the body, ask the sources, resolve, audit; redact if asked to. What the
        application gets, or ``None`` if the request was answered (refused) or the client
        went away. Its frame is gone before the application runs."""
        replay = receive
        parsed: ParsedBody | None = None
        body: _Body | None = None
        try:
            if self._reads_body and body_comes is not None:
                body = await self._read(receive, body_comes)
                if body is None:
                    return None  # http.disconnect: nobody is left to answer
                replay = _Replay(body.messages, receive)
                if body.may_be_object:
                    parsed = parse_body(body.data(), max_tools=self.config.max_tools)
            request = SourceRequest(
                scope, scope["method"], scope["path"], body=parsed, raw_headers=headers
            )
            found: list[tuple[str, list[MCPCredential]]] = []
            for source in self._sources:
                got: Any = source.read(request)
                if inspect.isawaitable(got):
                    got = await got
                got = _as_list(got, source.name)
                if got:
                    found.append((source.name, got))
        except CredentialRejected as exc:
            await self._reject(scope, send, headers, exc)
            return None
        credentials, resolved = resolve(found) if found else (EMPTY_CREDENTIALS, ())
        if self._auditor is not None and resolved:
            self._auditor.resolved(
                resolved,
                method=scope["method"],
                path=scope["path"],
                request_id=_request_id(headers),
            )
        if self.config.redact_body and body is not None and _names_credentials(parsed):
            try:
                redacted = _redact(body.data())
            except (ValueError, RecursionError):
                # msgspec read it but json.loads cannot: the application could not parse it
                # either, and we will not hand it a body with credentials still inside.
                invalid = CredentialRejected(INVALID_BODY, "body", source="body")
                await self._reject(scope, send, headers, invalid)
                return None
            length = (b"content-length", str(len(redacted)).encode())
            scope = {
                **scope,
                "headers": [*((k, v) for k, v in scope["headers"] if k != length[0]), length],
            }
            replay = _Replay([{"type": "http.request", "body": redacted}], receive)
        return scope, replay, credentials

    async def _read(self, receive: Receive, length: int) -> _Body | None:
        """The body's first messages, and all of them if it may be a JSON object.

        ``length`` is the declared Content-Length (0 when undeclared). Raises
        ``body_too_large`` for a JSON-object body over ``max_body_bytes``; ``None`` if the
        client went away.
        """
        limit = self.config.max_body_bytes
        messages: list[Message] = []
        size = 0
        first: bytes | None = None  # the first significant byte, once seen
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            messages.append(message)
            chunk = message.get("body", b"")
            size += len(chunk)
            if first is None and chunk:
                found = _SIGNIFICANT.search(chunk)
                if found is not None:
                    first = found.group()
                    if first != b"{":  # not a JSON object: the rest streams unread
                        return _Body(messages, may_be_object=False)
                    if length > limit:
                        raise _too_large(limit)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                return _Body(messages, may_be_object=first is not None)

    async def _reject(
        self, scope: Scope, send: Send, headers: RequestHeaders, exc: CredentialRejected
    ) -> None:
        if self._auditor is not None:
            self._auditor.rejected(
                exc, method=scope["method"], path=scope["path"], request_id=_request_id(headers)
            )
        payload = error_body(exc.message, code=exc.code, param=exc.param)
        await send(
            {
                "type": "http.response.start",
                "status": exc.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _sources_of(config: MCPAuthConfig) -> tuple[MCPCredentialSource, ...]:
    """The enabled sources in precedence order. The provider-data source in ``reject`` mode
    runs even when ``precedence`` leaves it out: it refuses, it never supplies."""
    builtin: dict[str, MCPCredentialSource] = {}
    if config.body:
        builtin[CredentialSource.BODY.value] = BodySource()
    if config.server_headers:
        builtin[CredentialSource.SERVER_HEADER.value] = ServerHeaderSource()
    if config.provider_data is not ProviderDataMode.IGNORE:
        builtin[CredentialSource.PROVIDER_DATA.value] = ProviderDataSource(
            config.provider_data_header, config.provider_data
        )
    named = {**builtin, **{source.name: source for source in config.sources}}
    ordered = [named[name] for name in config.precedence if name in named]
    provider_data = builtin.get(CredentialSource.PROVIDER_DATA.value)
    if provider_data is not None and provider_data not in ordered:
        assert config.provider_data is ProviderDataMode.REJECT  # config checks the others
        ordered.append(provider_data)
    return tuple(ordered)


def _body_comes(scope: Scope, headers: RequestHeaders) -> int | None:
    """Whether a body may come: ``None`` if certainly not, else its declared length (0 when
    undeclared or declared 0). Only an HTTP/1 GET or HEAD without a Content-Length above 0
    or a Transfer-Encoding certainly has none: HTTP/2 and later need neither header to send
    a body, and a body that arrives despite a Content-Length of 0 is read like any other.
    Raises ``invalid_content_length`` and ``unsupported_content_encoding``."""
    lengths = headers.values(b"content-length")
    length = None
    if lengths:
        values = {value.strip(b" \t") for value in lengths}
        if len(values) != 1 or not _CONTENT_LENGTH.fullmatch(next(iter(values))):
            raise CredentialRejected(INVALID_CONTENT_LENGTH, "Content-Length")
        length = int(next(iter(values)))
    if (
        not length
        and scope["method"] in _NO_BODY
        and scope.get("http_version", "1.0") in _HTTP_1
        and not headers.values(b"transfer-encoding")
    ):
        return None
    for value in headers.values(b"content-encoding"):
        for coding in value.split(b","):
            if coding.strip(b" \t").lower() not in (b"", b"identity"):
                raise CredentialRejected(
                    UNSUPPORTED_CONTENT_ENCODING, "Content-Encoding", status=415
                )
    return length or 0


class _Body:
    """The messages of a request body as the server sent them; ``repr`` hides their bytes."""

    __slots__ = ("may_be_object", "messages")

    def __init__(self, messages: list[Message], *, may_be_object: bool) -> None:
        self.messages = messages
        #: Whether its first significant byte is ``{`` (and it was read whole).
        self.may_be_object = may_be_object

    def data(self) -> bytes:
        if len(self.messages) == 1:
            return bytes(self.messages[0].get("body", b""))
        return b"".join(message.get("body", b"") for message in self.messages)

    def __repr__(self) -> str:
        return f"<request body: {len(self.messages)} messages>"


class _Replay:
    """The ``receive`` the application gets: the buffered messages in order, then the
    server's own (so ``http.disconnect`` still arrives). ``repr`` hides the body."""

    __slots__ = ("_pending", "_receive")

    def __init__(self, messages: list[Message], receive: Receive) -> None:
        self._pending = messages[::-1]
        self._receive = receive

    async def __call__(self) -> Message:
        if self._pending:
            return self._pending.pop()
        return await self._receive()

    def __repr__(self) -> str:
        return f"<replayed request body: {len(self._pending)} messages pending>"


def _as_list(creds: Iterable[MCPCredential], name: str) -> list[MCPCredential]:
    items = creds if type(creds) is list else list(creds)
    for cred in items:
        if not isinstance(cred, MCPCredential):
            raise TypeError(f"credential source {name!r} returned a {type(cred).__name__}")
    return items


def _request_id(headers: RequestHeaders) -> str | None:
    """asgi-correlation-id's request id, else the first ``X-Request-ID`` (bounded)."""
    value = _correlation_id.get() if _correlation_id is not None else None
    if value:
        return value
    header = headers.first(b"x-request-id")
    return None if header is None else header[:128].decode("latin-1") or None


def _too_large(limit: int) -> CredentialRejected:
    message = MESSAGES[BODY_TOO_LARGE].format(limit=limit)
    return CredentialRejected(BODY_TOO_LARGE, "body", status=413, message=message)


def _names_credentials(parsed: ParsedBody | None) -> bool:
    return parsed is not None and (
        parsed.authorization not in (None, "")
        or any(tool.authorization not in (None, "") for tool in parsed.tools)
    )


def _redact(raw: bytes) -> bytes:
    """The body without the ``authorization`` values the body source reads."""
    document = json.loads(raw)
    document.pop("authorization", None)
    tools = document.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "mcp":
                tool.pop("authorization", None)
    return json.dumps(document).encode()
