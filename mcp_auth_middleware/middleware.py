"""The ASGI middleware. Read top to bottom, it follows a request:

decide whether the path is guarded -> check the framing headers -> read the body if it may be
a JSON object -> ask each source -> resolve -> audit -> scope -> call the app -> reset.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Final, NamedTuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_auth_middleware.audit import Auditor, request_id_of
from mcp_auth_middleware.config import HeadersAuthorization, MCPAuthConfig, ProviderDataMode
from mcp_auth_middleware.context import CredentialsScope, inside_scope
from mcp_auth_middleware.credentials import (
    EMPTY_CREDENTIALS,
    CredentialSource,
    InvalidCredential,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
)
from mcp_auth_middleware.errors import (
    BODY_TOO_LARGE,
    INVALID_AUTHORIZATION,
    INVALID_BODY,
    INVALID_CONTENT_LENGTH,
    INVALID_HEADERS,
    INVALID_SERVER_URL,
    MESSAGES,
    UNSUPPORTED_CHARSET,
    UNSUPPORTED_CONTENT_ENCODING,
    CredentialRejected,
    CredentialSourceError,
    error_body,
)
from mcp_auth_middleware.paths import path_matcher
from mcp_auth_middleware.resolve import resolve
from mcp_auth_middleware.sources.base import MCPCredentialSource, SourceRequest
from mcp_auth_middleware.sources.body import BodySource, parse_body, redact_body
from mcp_auth_middleware.sources.provider_data import ProviderDataSource
from mcp_auth_middleware.sources.server_header import ServerHeaderSource
from mcp_auth_middleware.upstream import serve_recording_refusals

__all__ = ["MCPAuthMiddleware"]

# The first byte that is not JSON whitespace, a NUL (UTF-16/32) or a byte-order-mark byte.
# Only a body whose first such byte is "{" can be a JSON object for any parser.
_SIGNIFICANT: Final = re.compile(rb"[^ \t\r\n\x00\xef\xbb\xbf\xfe\xff]")
_CHARSET: Final = re.compile(rb'charset[ \t]*=[ \t]*"?([^ \t;",]*)')
_UNICODE: Final = frozenset(
    {b"utf-8", b"utf8", b"utf-16", b"utf-16le", b"utf-16be", b"utf-32", b"utf-32le"}
    | {b"utf-32be", b"us-ascii", b"ascii"}
)
_FRAMING_HEADERS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"content-encoding", b"content-type"}
)
_HTTP_1: Final = frozenset({"1.0", "1.1"})
_NO_BODY: Final = frozenset({"GET", "HEAD"})


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
        sources = _sources_of(config)
        self._active = config.enabled and bool(sources)
        self._reads_body = any(source.needs_body for source in sources)
        # Per-server headers (a pattern of names) and custom sources (anything at all) are
        # asked on every request; the provider-data source only when its headers are present.
        custom = set(map(id, config.sources))
        self._sources = tuple(
            _EnabledSource(source, id(source) in custom, isinstance(source, ProviderDataSource))
            for source in sources
        )
        self._asks_every_request = config.server_headers or bool(config.sources)
        # The header names the one pass in ``__call__`` looks for: the framing headers, the
        # request id, and those of the provider-data source.
        self._watched = (
            _FRAMING_HEADERS
            | {b"x-request-id"}
            | {
                name.lower().encode("latin-1")
                for source in sources
                if isinstance(source, ProviderDataSource)
                for name in source.headers
            }
        )
        self._guards = None if config.paths is None else path_matcher(config.paths)
        self._max_tools = config.max_tools
        self._auditor = Auditor.for_config(config)
        self._precedence = tuple(source.name for source in sources)
        self._headers_authorization = config.headers_authorization is HeadersAuthorization.ACCEPT

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self._active
            or (self._guards is not None and not self._guards(scope))
        ):
            await self.app(scope, receive, send)
            return
        length, source_headers, request_id, refusal = _framing(scope, self._watched)
        if refusal is None and length is None and not (source_headers or self._asks_every_request):
            await self._without_credentials(scope, receive, send)  # nothing a source reads
            return
        # From here on only ``request`` holds the scope, whose headers may carry a token:
        # no local of a frame of ours shows it (or the body) in a traceback that renders
        # locals (Sentry's, structlog's ``dict_tracebacks``) while a source, the audit log or
        # the application runs or raises.
        request = SourceRequest(scope, scope["method"], scope["path"])
        del scope
        if refusal is not None:
            await self._refuse(request, send, request_id, refusal)
            return
        prepared = await self._prepare(request, receive, send, length, source_headers, request_id)
        if prepared is None:
            return  # refused (answered), or the client went away
        replay, credentials = prepared
        del prepared
        if not credentials:
            await self._without_credentials(request.scope, replay, send)
            return
        # Closed when the request ends: contexts copied during it (tasks, workers it
        # started) see an empty set from then on.
        with CredentialsScope(credentials):
            # Records the MCP servers' refusals of these credentials (audit, 424).
            await serve_recording_refusals(
                self.app, request, replay, send, self._auditor, request_id
            )

    async def _without_credentials(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application, for a request that carries no credentials. Served inside another
        scope (an in-process call made within ``use_credentials``, an outer middleware), it
        sees an empty set: a request sees its own credentials, never another's."""
        if not inside_scope():
            await self.app(scope, receive, send)
            return
        with CredentialsScope(EMPTY_CREDENTIALS):
            await self.app(scope, receive, send)

    async def _prepare(
        self,
        request: SourceRequest,
        receive: Receive,
        send: Send,
        length: int | None,
        source_headers: bool,
        request_id: bytes | None,
    ) -> tuple[Receive, MCPCredentials] | None:
        """Read the body, ask the sources, resolve, audit; redact if asked to. What the
        application gets (``request.scope`` is replaced when the body is redacted), or
        ``None`` if the request was answered (refused) or the client went away.

        ``length`` is the declared body length (0: undeclared; ``None``: no body can come),
        ``source_headers`` whether a header the provider-data source reads is present.
        """
        replay: Receive = receive
        body: _Replay | None = None
        refusal: CredentialRejected | None = None
        try:
            if self._reads_body and length is not None:
                read = await self._read(receive, length)
                if read is None:
                    return None  # http.disconnect: nobody is left to answer
                replay = body = read[0]
                if read[1]:  # it may be a JSON object, and it was read whole
                    request.decoded = parse_body(body.data(), max_tools=self._max_tools)
            if request.decoded is None and not (source_headers or self._asks_every_request):
                return replay, EMPTY_CREDENTIALS  # nothing any source could read
            found = await self._ask_sources(request, source_headers)
        except CredentialRejected as exc:
            refusal = exc
        if refusal is not None:
            await self._refuse(request, send, request_id, refusal)
            return None
        credentials = self._resolve_and_audit(found, request, request_id)
        if self.config.redact_body and body is not None and request.decoded is not None:
            redacted = self._redacted(request, body, receive)
            if redacted is None:
                # msgspec read it but json.loads cannot: the application could not parse it
                # either, and we will not hand it a body with credentials still inside.
                invalid = CredentialRejected(INVALID_BODY, "body", source="body")
                await self._refuse(request, send, request_id, invalid)
                return None
            replay = redacted
        return replay, credentials

    async def _ask_sources(self, request: SourceRequest, source_headers: bool) -> list[_Found]:
        """What each enabled source finds, in precedence order (sources that find nothing
        left out). Raises the refusal of the first source that refuses; a custom source's
        own error becomes :class:`CredentialSourceError`, its answer is type-checked."""
        found: list[_Found] = []
        for source, custom, own_headers_only in self._sources:
            if own_headers_only and not source_headers:
                continue
            failed: str | None = None
            try:
                got: Any = source.read(request)
                if custom and inspect.isawaitable(got):
                    got = await got
            except InvalidCredential as exc:  # a custom source made a bad credential
                raise _invalid_from(source.name, exc) from None
            except CredentialRejected:
                raise
            except Exception as exc:
                if not custom:
                    raise
                failed = type(exc).__name__
            if failed is not None:
                # Outside the except block: its message, traceback and locals (which may
                # quote a vault's answer) are not chained to what the server logs.
                raise CredentialSourceError(source.name, failed)
            if custom:
                got = _checked(got, source.name)
            if got:
                found.append((source.name, got))
        return found

    def _resolve_and_audit(
        self, found: list[_Found], request: SourceRequest, request_id: bytes | None
    ) -> MCPCredentials:
        """The credentials the sources' findings resolve to, audited."""
        credentials, resolved = (
            resolve(found, self._precedence) if found else (EMPTY_CREDENTIALS, ())
        )
        if self._auditor is not None and resolved:
            self._auditor.resolved(resolved, request, request_id_of(request_id))
            if credentials.default is not None or credentials.unbound_connectors:
                # A later bind_default / bind_connector says which credential won.
                credentials._on_bind = self._auditor.binder(request, request_id_of(request_id))
        return credentials

    def _redacted(self, request: SourceRequest, body: _Replay, receive: Receive) -> _Replay | None:
        """The ``receive`` of a body without the credentials in it (``request.scope`` gets
        its Content-Length); ``None`` if it cannot be re-encoded."""
        redacted = redact_body(body.data(), tool_headers=self._headers_authorization)
        if redacted is None:
            return None
        declared = (b"content-length", str(len(redacted)).encode())
        headers = [(k, v) for k, v in request.scope["headers"] if k != declared[0]]
        request.scope = {**request.scope, "headers": [*headers, declared]}
        return _Replay([{"type": "http.request", "body": redacted}], receive)

    async def _read(self, receive: Receive, length: int) -> tuple[_Replay, bool] | None:
        """The body's first messages, and all of them if it may be a JSON object (then
        True), as the ``receive`` the application gets.

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
                        return _Replay(messages, receive), False
                    if length > limit:
                        raise _too_large(limit)
            if size > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                return _Replay(messages, receive), first is not None

    async def _refuse(
        self,
        request: SourceRequest,
        send: Send,
        request_id: bytes | None,
        exc: CredentialRejected,
    ) -> None:
        """Answer ``exc``'s OpenAI-style error, and audit it. Called outside any ``except``
        block, with the refusal's traceback dropped: its frames may hold the body, and an
        error the audit log raises must not chain to it."""
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        if self._auditor is not None:
            self._auditor.rejected(exc, request, request_id_of(request_id))
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


class _EnabledSource(NamedTuple):
    source: MCPCredentialSource
    #: A custom source: its answer is checked, its own errors are replaced.
    custom: bool
    #: It reads only headers of its own (provider data): not asked when none is present.
    own_headers_only: bool


#: One source's findings: its name and what it found.
_Found = tuple[str, list[MCPCredential | MCPServerHeaders]]


class _Framing(NamedTuple):
    """What the headers say before any body is read."""

    #: The declared body length (0: undeclared; ``None``: no body can come).
    length: int | None
    #: Whether a header the provider-data source reads is present.
    source_headers: bool
    #: The first ``X-Request-ID``.
    request_id: bytes | None
    #: The request's refusal, if the framing refuses it.
    refusal: CredentialRejected | None


def _framing(scope: Scope, watched: frozenset[bytes]) -> _Framing:
    """One pass over the headers, for the names the middleware reads (ASGI servers lower-case
    them).

    Only an HTTP/1 GET or HEAD without a Content-Length above 0 or a Transfer-Encoding
    certainly has no body: HTTP/2 and later need neither header to send one, and a body that
    comes despite a Content-Length of 0 is read like any other. Refused: a Content-Length
    that is not one plain decimal; for a body, a Content-Encoding other than identity, or a
    charset other than UTF-8/16/32 (some frameworks decode a body with the charset it names,
    where no ``{`` byte need appear).
    """
    lengths: list[bytes] = []
    chunked = coded = foreign_charset = source_headers = False
    request_id = None
    for name, value in scope["headers"]:
        if name in watched:
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"content-encoding":
                coded = coded or _coded(value)
            elif name == b"content-type":
                lowered = value.lower()
                if b"charset" in lowered:
                    foreign_charset = foreign_charset or _foreign_charset(lowered)
            elif name == b"x-request-id":
                request_id = request_id or value
            else:
                source_headers = True
    length = _content_length(lengths) if lengths else None
    if length == -1:
        invalid = CredentialRejected(INVALID_CONTENT_LENGTH, "Content-Length")
        return _Framing(None, source_headers, request_id, invalid)
    if not (
        length
        or chunked
        or scope["method"] not in _NO_BODY
        or scope.get("http_version", "1.0") not in _HTTP_1
    ):
        return _Framing(None, source_headers, request_id, None)
    refusal: CredentialRejected | None = None
    if coded:
        refusal = CredentialRejected(UNSUPPORTED_CONTENT_ENCODING, "Content-Encoding", status=415)
    elif foreign_charset:
        refusal = CredentialRejected(UNSUPPORTED_CHARSET, "Content-Type", status=415)
    return _Framing(length or 0, source_headers, request_id, refusal)


def _sources_of(config: MCPAuthConfig) -> tuple[MCPCredentialSource, ...]:
    """The enabled sources in precedence order. The provider-data source in ``reject`` mode
    runs even when ``precedence`` leaves it out: it refuses, it never supplies."""
    builtin: dict[str, MCPCredentialSource] = {}
    if config.body:
        builtin[CredentialSource.BODY.value] = BodySource(
            headers_authorization=config.headers_authorization is HeadersAuthorization.ACCEPT,
            connectors=config.connectors,
        )
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


def _content_length(values: list[bytes]) -> int:
    """The declared length; ``-1`` if it is not one plain decimal of at most 18 digits, or
    several differ."""
    first = values[0].strip(b" \t")
    if len(first) > 18 or not first.isdigit():
        return -1
    if len(values) > 1 and any(value.strip(b" \t") != first for value in values):
        return -1
    return int(first)


def _coded(content_encoding: bytes) -> bool:
    """Whether a Content-Encoding value names a coding other than identity."""
    return any(
        coding.strip(b" \t").lower() not in (b"", b"identity")
        for coding in content_encoding.split(b",")
    )


def _foreign_charset(content_type: bytes) -> bool:
    """Whether a (lower-cased) Content-Type names a charset other than UTF-8/16/32 or ASCII,
    or mentions ``charset`` in any other way than as a plain parameter."""
    named = _CHARSET.findall(content_type)
    return len(named) != content_type.count(b"charset") or any(
        charset not in _UNICODE for charset in named
    )


class _Replay:
    """The ``receive`` the application gets: the buffered messages as the server sent them,
    in order, then the server's own (so ``http.disconnect`` still arrives). ``repr`` hides
    the body, so no traceback that renders locals shows it."""

    __slots__ = ("_messages", "_pending", "_receive")

    def __init__(self, messages: list[Message], receive: Receive) -> None:
        self._messages = messages
        self._pending = messages[::-1]
        self._receive = receive

    def data(self) -> bytes:
        """The buffered body, joined."""
        if len(self._messages) == 1:
            return bytes(self._messages[0].get("body", b""))
        return b"".join(message.get("body", b"") for message in self._messages)

    async def __call__(self) -> Message:
        if self._pending:
            return self._pending.pop()
        return await self._receive()

    def __repr__(self) -> str:
        return f"<request body: {len(self._pending)} of {len(self._messages)} messages pending>"


def _checked(got: Any, name: str) -> list[MCPCredential | MCPServerHeaders]:
    """A custom source's answer: an iterable of credentials (or header-only entries)."""
    items = list(got)
    for cred in items:
        if not isinstance(cred, MCPCredential | MCPServerHeaders):
            raise TypeError(f"credential source {name!r} returned a {type(cred).__name__}")
    return items


_INVALID_FIELD_CODES: Final = {
    "headers": INVALID_HEADERS,
    "server_url": INVALID_SERVER_URL,
}


def _invalid_from(name: str, exc: InvalidCredential) -> CredentialRejected:
    """The 400 for a credential a source could not make (the message names the field and the
    rule, never the value)."""
    code = _INVALID_FIELD_CODES.get(exc.field, INVALID_AUTHORIZATION)
    message = f"Credential source '{name}' gave an invalid credential: {exc}."
    return CredentialRejected(code, name, message=message, source=name)


def _too_large(limit: int) -> CredentialRejected:
    message = MESSAGES[BODY_TOO_LARGE].format(limit=limit)
    return CredentialRejected(BODY_TOO_LARGE, "body", status=413, message=message)
