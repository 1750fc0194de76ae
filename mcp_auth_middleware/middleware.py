"""The ASGI middleware. Read top to bottom, it follows a request:

decide whether to read -> read and cap the body -> ask each enabled source -> resolve ->
audit -> scope -> call the app -> reset.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import operator
import re
from collections.abc import Callable, Iterable
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
    _credential_set,
)
from mcp_auth_middleware.errors import (
    BODY_TOO_LARGE,
    INVALID_BODY,
    MESSAGES,
    CredentialRejected,
    error_body,
)
from mcp_auth_middleware.resolve import Resolved, resolve
from mcp_auth_middleware.sources.base import MCPCredentialSource, SourceRequest
from mcp_auth_middleware.sources.body import BodySource, decode_body, read_credentials
from mcp_auth_middleware.sources.provider_data import ProviderDataSource
from mcp_auth_middleware.sources.server_header import ServerHeaderSource

__all__ = ["MCPAuthMiddleware"]

_BODY: Final = CredentialSource.BODY.value
_PROVIDER_DATA: Final = CredentialSource.PROVIDER_DATA.value
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_server_of: Final = operator.attrgetter("_server")
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
        # The usual request takes the inlined path of ``__call__``: only the body and the
        # provider-data header are read, and the request carries no provider-data header.
        names = {source.name for source in self._sources}
        self._body_only = (
            _BODY in names and names <= {_BODY, _PROVIDER_DATA} and not config.redact_body
        )
        self._provider_data_key = (
            config.provider_data_header.lower().encode("latin-1")
            if _PROVIDER_DATA in names
            else None
        )
        # The header names ``__call__`` reads (lower case, as ASGI servers send them); the
        # request id only for the audit.
        self._watched = frozenset(
            name
            for name in (
                b"content-type",
                b"content-length",
                self._provider_data_key,
                b"x-request-id" if config.audit else None,
            )
            if name is not None
        )
        self._paths = None if config.paths is None else _path_matcher(config.paths)
        self._max_body = config.max_body_bytes
        self._auditor = Auditor.for_config(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self._active
            or scope["type"] != "http"
            or scope["method"] not in _BODY_METHODS
            or (self._paths is not None and not self._paths(scope["path"]))
        ):
            await self.app(scope, receive, send)
            return
        # One pass over the headers, for the names we read. First value wins, as in
        # Starlette's ``request.headers.get()``: reading another Content-Type than the
        # application reads would let a body slip past the checks.
        raw = scope["headers"]
        content_type = length = request_id = None
        general = not self._body_only
        watched = self._watched
        provider_key = self._provider_data_key
        for name, value in raw:
            if name in watched:
                if name == b"content-type":
                    if content_type is None:
                        content_type = value
                elif name == b"content-length":
                    if length is None:
                        length = value
                elif name == provider_key:
                    general = True
                elif request_id is None:  # X-Request-ID, for the audit
                    request_id = value
        if (
            content_type is not None
            and content_type != b"application/json"
            and not _JSON.fullmatch(content_type)
        ):
            await self.app(scope, receive, send)
            return
        if (
            length is not None
            and self._read_body
            and length.isdigit()
            and int(length) > self._max_body
        ):
            await _reject(self, scope, send, _too_large(self._max_body))
            return
        if general:
            await _Request(self, scope, receive, send, raw).run()
            return
        # The usual request: only the body can carry credentials. The general path's steps,
        # inlined (on every request, each call and object costs).
        message = await receive()
        if message["type"] != "http.request":
            return  # http.disconnect: nobody is left to answer
        if message.get("more_body", False):
            messages = [message]
            body = await _read_rest(self, scope, receive, send, messages)
            if body is None:
                return
            replay = _replay(messages, receive)
            del messages
        else:
            body = message.get("body", b"")
            if len(body) > self._max_body:
                await _reject(self, scope, send, _too_large(self._max_body))
                return
            replay = _replay_one(message, receive)
        del message
        envelope = decode_body(body)
        del body
        try:
            found = (
                None
                if envelope is None
                else read_credentials(
                    envelope.tools or (), envelope.authorization, envelope.mcp_endpoint
                )
            )
        except CredentialRejected as exc:
            del envelope
            await _reject(self, scope, send, exc)
            return
        del envelope
        if not found:
            credentials = EMPTY_CREDENTIALS
        else:
            # Nothing to resolve when every credential names its server: read_credentials
            # gives each server once. Label-only ones may share a label: resolve() decides.
            auditor = self._auditor
            if len(found) == 1 or None not in map(_server_of, found):
                credentials = _credential_set(tuple(found))
                if auditor is not None:
                    resolved: tuple[Resolved, ...] = tuple([(cred, ()) for cred in found])
            else:
                credentials, resolved = resolve(((_BODY, found),))
            if auditor is not None:
                auditor.resolved(resolved, scope, _request_id_of(request_id))
        # No local of this frame holds the body or a bare token while the application runs
        # (tracebacks that render locals, such as structlog's ``dict_tracebacks``, must not
        # find one): ``replay`` and ``credentials`` hide theirs.
        token = _credentials.set(credentials)
        try:
            await self.app(scope, replay, send)
        finally:
            _credentials.reset(token)


class _Request:
    """A request that a source other than the body may answer for (a provider-data or
    per-server header, a custom source), or that ``redact_body`` rewrites: every enabled
    source is asked, in precedence order."""

    __slots__ = ("duplicates", "headers", "mw", "receive", "scope", "send")

    def __init__(
        self, mw: MCPAuthMiddleware, scope: Scope, receive: Receive, send: Send, raw: Any
    ) -> None:
        self.mw = mw
        self.scope = scope
        self.receive = receive
        self.send = send
        if type(raw) is not list:
            raw = list(raw)
        self.headers: dict[bytes, bytes] = dict(reversed(raw))  # first value wins
        self.duplicates = len(self.headers) != len(raw)

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
        scope = self.scope
        messages: list[Message] = []
        envelope = None
        raw = b""
        if mw._read_body:
            read = await _read_rest(mw, scope, self.receive, self.send, messages)
            if read is None:
                return None  # client went away, or too large (answered)
            raw = read
            envelope = decode_body(raw)
        try:
            request = SourceRequest(
                scope,
                scope["method"],
                scope["path"],
                None,
                None,
                self.headers,
                self.duplicates,
                envelope,
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
            await _reject(mw, scope, self.send, exc)
            return None
        if not found:
            credentials = EMPTY_CREDENTIALS
        else:
            credentials, resolved = resolve(found)
            if mw._auditor is not None:
                mw._auditor.resolved(
                    resolved, scope, _request_id_of(self.headers.get(b"x-request-id"))
                )
        if mw.config.redact_body and envelope is not None and _has_body_credentials(envelope):
            try:
                raw, scope = _redact(raw, scope)
            except (ValueError, RecursionError):
                # msgspec read it but json.loads cannot: the application could not parse it
                # either, and we will not hand it a body with credentials still inside.
                invalid = CredentialRejected(INVALID_BODY, "body", source="body")
                await _reject(mw, scope, self.send, invalid)
                return None
            messages = [{"type": "http.request", "body": raw, "more_body": False}]
        return scope, _replay(messages, self.receive), credentials


async def _read_rest(
    mw: MCPAuthMiddleware,
    scope: Scope,
    receive: Receive,
    send: Send,
    messages: list[Message],
) -> bytes | None:
    """Buffer the body (after ``messages``, read already) with a cap; ``None`` if the
    client left or it was too large (answered)."""
    size = sum(len(m.get("body", b"")) for m in messages) if messages else 0
    limit = mw._max_body
    more = not messages or messages[-1].get("more_body", False)
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect: nobody is left to answer
        messages.append(message)
        size += len(message.get("body", b""))
        if size > limit:
            break
        more = message.get("more_body", False)
    if size > limit:
        await _reject(mw, scope, send, _too_large(limit))
        return None
    if len(messages) == 1:
        return bytes(messages[0].get("body", b""))
    return b"".join(m.get("body", b"") for m in messages)


def _path_matcher(patterns: Iterable[str]) -> Callable[[str], object]:
    """Whether a path matches one of the fnmatch ``patterns``: a set lookup for the literal
    ones (the usual configuration), a regular expression for the others."""
    literal = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [p for p in patterns if p not in literal]
    if not globs:
        return literal.__contains__
    match = re.compile("|".join(fnmatch.translate(p) for p in globs)).match
    if not literal:
        return match
    return lambda path: path in literal or match(path)


def _request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """asgi-correlation-id's request id, else the first ``X-Request-ID`` (bounded)."""
    for name, header in headers:
        if name == b"x-request-id":
            return _request_id_of(header)
    return _request_id_of(None)


def _request_id_of(header: bytes | None) -> str | None:
    """:func:`_request_id`, given the first ``X-Request-ID`` value (or ``None``)."""
    value = _correlation_id.get() if _correlation_id is not None else None
    if value:
        return value
    return None if header is None else header[:128].decode("latin-1") or None


async def _reject(mw: MCPAuthMiddleware, scope: Scope, send: Send, exc: CredentialRejected) -> None:
    auditor = mw._auditor
    if auditor is not None:
        auditor.rejected(exc, scope, _request_id(scope["headers"]))
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
    if len(messages) == 1:
        return _replay_one(messages[0], receive)
    pending = iter(messages)

    async def replay() -> Message:
        for message in pending:
            return message
        return await receive()

    return replay


def _replay_one(message: Message, receive: Receive) -> Receive:
    """:func:`_replay` of one message."""
    pending = [message]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _has_body_credentials(envelope: Any) -> bool:
    return envelope.authorization not in (None, "") or any(
        tool.type == "mcp" and tool.authorization not in (None, "") for tool in envelope.tools or ()
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
