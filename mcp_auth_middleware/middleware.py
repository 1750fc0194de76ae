"""The ASGI middleware. Read top to bottom, it follows a request:

decide whether to read -> read and cap the body -> ask each enabled source -> resolve ->
audit -> scope -> call the app -> reset.
"""

from __future__ import annotations

import fnmatch
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
    MESSAGES,
    CredentialRejected,
    error_body,
)
from mcp_auth_middleware.resolve import resolve
from mcp_auth_middleware.sources.base import MCPCredentialSource, ParsedBody, SourceRequest
from mcp_auth_middleware.sources.body import BodySource, check_tool_headers, parse_body
from mcp_auth_middleware.sources.provider_data import ProviderDataSource
from mcp_auth_middleware.sources.server_header import ServerHeaderSource

__all__ = ["MCPAuthMiddleware"]

_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_JSON: Final = re.compile(rb"\s*application/([a-z0-9!#$&^_.+-]+\+)?json\s*(;.*)?", re.I | re.S)

_correlation_id: ContextVar[str | None] | None
try:  # asgi-correlation-id's request id, when that middleware is installed
    from asgi_correlation_id import correlation_id as _correlation_id
except ImportError:  # pragma: no cover - exercised when the package is absent
    _correlation_id = None


class MCPAuthMiddleware:
    """Pull per-server MCP credentials from each request and scope them for its lifetime.

    Only JSON requests (``application/json`` or ``+json``, or no ``Content-Type``, which
    FastAPI reads as JSON too) with a body method (POST, PUT, PATCH) on ``config.paths`` are
    read; everything else, and every non-HTTP scope, goes straight to the application. A
    refused request gets an OpenAI-style JSON error and the application is not called.

    Trust assumption: the request headers and body are the caller's own. Put this middleware
    after whatever authenticates the caller, so that an unauthenticated request never gets
    as far as having its credentials scoped.
    """

    def __init__(self, app: ASGIApp, *, config: MCPAuthConfig | None = None) -> None:
        self.app = app
        self.config = config = config if config is not None else MCPAuthConfig()
        builtin: dict[str, MCPCredentialSource] = {}
        if config.body:
            builtin[CredentialSource.BODY.value] = BodySource()
        if config.server_headers:
            builtin[CredentialSource.SERVER_HEADER.value] = ServerHeaderSource()
        if config.provider_data is not ProviderDataMode.IGNORE:
            builtin[CredentialSource.PROVIDER_DATA.value] = ProviderDataSource(
                config.provider_data_header, config.provider_data
            )
        builtin_names = frozenset(builtin)
        builtin.update((source.name, source) for source in config.sources)
        self._sources: tuple[MCPCredentialSource, ...] = tuple(
            builtin[name] for name in config.precedence if name in builtin
        )
        # Built-in sources return lists of credentials; only custom ones need checking.
        self._checked = tuple(
            (source, source.name, source.name not in builtin_names) for source in self._sources
        )
        self._active = config.enabled and bool(self._sources)
        self._read_body = any(source.needs_body for source in self._sources)
        self._check_headers = config.body  # a disabled body source reads no tool
        self._paths = (
            None
            if config.paths is None
            else re.compile("|".join(fnmatch.translate(p) for p in config.paths)).match
        )
        self._max_body = config.max_body_bytes
        self._auditor = Auditor() if config.audit else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self._active
            or scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or (self._paths is not None and not self._paths(scope["path"]))
        ):
            await self.app(scope, receive, send)
            return
        raw = scope["headers"]
        if type(raw) is not list:
            raw = list(raw)
        # First value wins, as in Starlette's ``request.headers.get()``: reading another
        # Content-Type than the application reads would let a body slip past the checks.
        headers: dict[bytes, bytes] = dict(reversed(raw))
        content_type = headers.get(b"content-type")
        if (
            content_type is not None
            and content_type != b"application/json"
            and not _JSON.fullmatch(content_type)
        ):
            await self.app(scope, receive, send)
            return
        await _Request(self, scope, receive, send, headers, len(headers) != len(raw)).run()


class _Request:
    """One inspected request: all per-request state lives here, never on the middleware."""

    __slots__ = ("duplicates", "headers", "mw", "receive", "request_id", "scope", "send")

    def __init__(
        self,
        mw: MCPAuthMiddleware,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        duplicates: bool,
    ) -> None:
        self.mw = mw
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = headers
        self.duplicates = duplicates
        self.request_id: str | None = None

    async def run(self) -> None:
        # ``prepare`` does the reading in a frame of its own, gone before the app runs: no
        # frame on the stack while the app runs holds the body (tracebacks that render
        # locals, such as structlog's ``dict_tracebacks``, must not find a token there).
        prepared = await self.prepare()
        if prepared is None:
            return
        scope, receive, credentials = prepared
        del prepared
        token = _credentials.set(credentials)
        try:
            await self.mw.app(scope, receive, self.send)
        finally:
            _credentials.reset(token)

    async def prepare(self) -> tuple[Scope, Receive, MCPCredentials] | None:
        """Read, parse, ask the sources, resolve, audit; ``None`` if answered already."""
        mw = self.mw
        messages: list[Message] = []
        body: ParsedBody | None = None
        raw = b""
        if mw._read_body:
            length = self.headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > mw._max_body:
                await self.reject(_too_large(mw._max_body))
                return None
            read = await self.read_body(messages)
            if read is None:
                return None  # client went away, or too large (answered)
            raw = read
            body = parse_body(raw)
        try:
            if body is not None and body.tools and mw._check_headers:
                check_tool_headers(body)
            scope = self.scope
            request = SourceRequest(
                scope, scope["method"], scope["path"], None, body, self.headers, self.duplicates
            )
            found: list[tuple[str, list[MCPCredential]]] = []
            for source, name, custom in mw._checked:
                got: Any = source.read(request)
                if custom:
                    if inspect.isawaitable(got):
                        got = await got
                    got = _as_list(got, name)
                if got:
                    found.append((name, got))
        except CredentialRejected as exc:
            await self.reject(exc)
            return None
        if not found:
            credentials = EMPTY_CREDENTIALS
        else:
            credentials, resolved = resolve(found)
            if mw._auditor is not None:
                mw._auditor.resolved(
                    resolved,
                    method=self.scope["method"],
                    path=self.scope["path"],
                    request_id=self.get_request_id(),
                )
        scope = self.scope
        if mw.config.redact_body and body is not None and _has_body_credentials(body):
            try:
                raw, scope = _redact(raw, scope)
            except (ValueError, RecursionError):
                # msgspec read it but json.loads cannot: the application could not parse it
                # either, and we will not hand it a body with credentials still inside.
                await self.reject(CredentialRejected(INVALID_BODY, "body", source="body"))
                return None
            messages = [{"type": "http.request", "body": raw, "more_body": False}]
        return scope, _replay(messages, self.receive), credentials

    async def read_body(self, messages: list[Message]) -> bytes | None:
        """Buffer the body with a cap; ``None`` if the client left or it was too large."""
        size = 0
        limit = self.mw._max_body
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return None  # http.disconnect: nobody is left to answer
            messages.append(message)
            size += len(message.get("body", b""))
            if size > limit:
                await self.reject(_too_large(limit))
                return None
            if not message.get("more_body", False):
                break
        if len(messages) == 1:
            return bytes(messages[0].get("body", b""))
        return b"".join(m.get("body", b"") for m in messages)

    def get_request_id(self) -> str | None:
        if self.request_id is None:
            value = _correlation_id.get() if _correlation_id is not None else None
            if not value:
                header = self.headers.get(b"x-request-id")
                value = header[:128].decode("latin-1") if header else None
            self.request_id = value
        return self.request_id

    async def reject(self, exc: CredentialRejected) -> None:
        auditor = self.mw._auditor
        if auditor is not None:
            auditor.rejected(
                exc,
                method=self.scope["method"],
                path=self.scope["path"],
                request_id=self.get_request_id(),
            )
        payload = error_body(exc.message, code=exc.code, param=exc.param)
        await self.send(
            {
                "type": "http.response.start",
                "status": exc.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": payload})


def _too_large(limit: int) -> CredentialRejected:
    message = MESSAGES[BODY_TOO_LARGE].format(limit=limit)
    return CredentialRejected(BODY_TOO_LARGE, "body", status=413, message=message)


def _as_list(creds: Iterable[MCPCredential], name: str) -> list[MCPCredential]:
    items = creds if type(creds) is list else list(creds)
    for cred in items:
        if type(cred) is not MCPCredential and not isinstance(cred, MCPCredential):
            raise TypeError(f"credential source {name!r} returned a {type(cred).__name__}")
    return items


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered messages, then defers to the server's."""
    if not messages:
        return receive
    pending = iter(messages)

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return replay


def _has_body_credentials(body: ParsedBody) -> bool:
    return body.authorization not in (None, "") or any(
        tool.authorization not in (None, "") for tool in body.tools
    )


def _redact(raw: bytes, scope: Scope) -> tuple[bytes, Scope]:
    """Remove every ``authorization`` value the body sources read; fix Content-Length."""
    document = json.loads(raw)
    document.pop("authorization", None)
    tools = document.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "mcp":
                tool.pop("authorization", None)
    new = json.dumps(document).encode()
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(new)).encode()))
    return new, {**scope, "headers": headers}
