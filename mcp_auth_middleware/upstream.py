"""Upstream refusals: an MCP server answered 401 or 403 to a request that carried a credential.

:class:`MCPUpstreamAuthError` says which server refused which credential (by fingerprint) and
what the server asked for in its ``WWW-Authenticate`` challenge (``resource_metadata``,
``scope``, ``error``), which is what the caller needs to get a new token.

Where it comes from:

* :class:`~mcp_auth_middleware.MCPBearerAuth` raises it from its auth flow when the response
  to a request it put a credential on is a 401 or 403 (``client.send`` raises it; the ``mcp``
  SDK's streamable HTTP transport lets it out of ``streamable_http_client`` inside an
  ``ExceptionGroup``, its SSE transport out of ``sse_client`` when the stream is refused).
  It also records it in the current request (:func:`upstream_refusals`), since an SDK
  transport swallows what its background tasks raise (the SSE message POSTs, the GET stream).
* :class:`~mcp_auth_middleware.sessions.MCPSessionPool` raises it from ``call_tool``,
  ``list_tools`` and ``session()``.

The middleware answers a refusal that escapes the application before its response started
with a 424 ``external_connector_error``, as OpenAI's hosted MCP tool does
(:func:`serve_recording_refusals`), and audits each refusal (``mcp_credential_refused_upstream``).

Everything the server sent is untrusted: each value is cut to a bounded length and loses its
control characters before it is stored, so messages and logs show nothing it could forge. No
token appears anywhere: a credential is named by its fingerprint.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from mcp_auth_middleware.audit import request_id_of
from mcp_auth_middleware.errors import error_body
from mcp_auth_middleware.urls import parse_server_url

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Send

    from mcp_auth_middleware.audit import Auditor
    from mcp_auth_middleware.credentials import MCPCredential
    from mcp_auth_middleware.sources.base import SourceRequest

__all__ = [
    "EXTERNAL_CONNECTOR_ERROR",
    "MCP_SERVER_FORBIDDEN",
    "MCP_SERVER_UNAUTHORIZED",
    "REFUSED_STATUSES",
    "MCPUpstreamAuthError",
    "capture_refusals",
    "find_refusal",
    "record_refusal",
    "upstream_refusals",
]

REFUSED_STATUSES: Final = frozenset({401, 403})
EXTERNAL_CONNECTOR_ERROR: Final = "external_connector_error"
MCP_SERVER_UNAUTHORIZED: Final = "mcp_server_unauthorized"
MCP_SERVER_FORBIDDEN: Final = "mcp_server_forbidden"
#: The HTTP status of the answer to a request whose MCP server refused its credential.
FAILED_DEPENDENCY: Final = 424

# Bounds on what a server's challenge may put into an error (characters, after cleaning).
_MAX_ERROR: Final = 64
_MAX_SCOPE: Final = 512
_MAX_URL: Final = 2048
_MAX_LABEL: Final = 256
# Refusals kept per request for upstream_refusals() (the latest ones).
_MAX_RECORDED: Final = 32


def _clean(value: object, limit: int | None) -> str | None:
    """``value`` without control or other non-printable characters, at most ``limit``
    characters; ``None`` for nothing (or only quotes) left."""
    if not isinstance(value, str):
        return None
    text = value if value.isprintable() else "".join(c for c in value if c.isprintable())
    text = text[:limit].strip()
    return None if text.strip('"') == "" else text


def _base_url(url: str | None) -> str | None:
    """``url`` without query, fragment or user-info (normalised); ``None`` if not http(s)."""
    if url is None:
        return None
    try:
        return parse_server_url(url).loggable.partition("?")[0]
    except (TypeError, ValueError):
        return None


def _challenge(response: Any) -> tuple[str | None, str | None, str | None]:
    """``resource_metadata``, ``scope`` and ``error`` of the response's ``WWW-Authenticate``,
    parsed by the ``mcp`` SDK (``(None, None, None)`` without it), without control
    characters (not yet bounded in length)."""
    try:
        from mcp.client.auth.utils import (
            extract_field_from_www_auth,
            extract_resource_metadata_from_www_auth,
            extract_scope_from_www_auth,
        )
    except ImportError:  # pragma: no cover - the ``mcp`` extra is not installed
        return None, None, None
    try:
        metadata = extract_resource_metadata_from_www_auth(response)
        scope = extract_scope_from_www_auth(response)
        error = extract_field_from_www_auth(response, "error")
    except Exception:  # a header the SDK cannot read says nothing we can use
        return None, None, None
    return _clean(metadata, None), _clean(scope, None), _clean(error, None)


class MCPUpstreamAuthError(Exception):
    """An MCP server answered 401 or 403 to a request that carried a credential.

    ``server_url`` is the credential's server (normalised, without query or user-info),
    ``server_label`` its label, ``source`` where it came from, ``fingerprint`` the first 12
    hex of its token's SHA-256, ``status`` the server's answer; ``resource_metadata``,
    ``scope`` and ``error`` are what the server's ``WWW-Authenticate`` challenge named
    (``None`` when absent), bounded in length and without control characters. Neither
    ``str`` nor ``repr`` ever holds a token.
    """

    def __init__(
        self,
        *,
        server_url: str | None,
        status: int,
        server_label: str | None = None,
        source: str | None = None,
        fingerprint: str | None = None,
        resource_metadata: str | None = None,
        scope: str | None = None,
        error: str | None = None,
    ) -> None:
        self.server_url = _base_url(server_url)
        self.server_label = _clean(server_label, _MAX_LABEL)
        self.status = int(status)
        self.source = None if source is None else str(source)
        self.fingerprint = fingerprint
        self.resource_metadata = _clean(resource_metadata, _MAX_URL)
        self.scope = _clean(scope, _MAX_SCOPE)
        self.error = _clean(error, _MAX_ERROR)
        super().__init__(self.message)

    @classmethod
    def from_response(
        cls, response: Any, credential: MCPCredential, *, server_url: str | None = None
    ) -> MCPUpstreamAuthError:
        """The refusal ``response`` (an ``httpx`` or ``httpx2`` response, 401 or 403) says
        of ``credential``. ``server_url`` defaults to the credential's server, else the
        response's request URL."""
        if server_url is None:
            server_url = credential.server_url
        if server_url is None:
            server_url = str(response.request.url)
        metadata, scope, error = _challenge(response)
        # A server may echo what it was sent: no value that holds the token is kept (checked
        # before the values are cut to their bounds, which could leave part of a token).
        secret = credential.token.get_secret_value()
        metadata, scope, error = (
            None if value is not None and secret in value else value
            for value in (metadata, scope, error)
        )
        return cls(
            server_url=server_url,
            status=response.status_code,
            server_label=credential.server_label,
            source=str(credential.source),
            fingerprint=credential.fingerprint,
            resource_metadata=metadata,
            scope=scope,
            error=error,
        )

    @property
    def code(self) -> str:
        """``mcp_server_unauthorized`` (401) or ``mcp_server_forbidden`` (403)."""
        return MCP_SERVER_FORBIDDEN if self.status == 403 else MCP_SERVER_UNAUTHORIZED

    @property
    def message(self) -> str:
        """One line naming the server and what it asked for; no token."""
        if self.server_label:
            name = f"MCP server {self.server_label!r}"
            if self.server_url:
                name += f" ({self.server_url})"
        else:
            name = f"MCP server {self.server_url or '<unknown>'}"
        why = f"{self.status}" if self.error is None else f"{self.status} {self.error}"
        text = f"{name} refused the credential ({why})"
        asks = []
        if self.scope is not None:
            asks.append(f"scope {self.scope!r}")
        if self.resource_metadata is not None:
            asks.append(f"authorization per its resource metadata {self.resource_metadata}")
        if asks:
            text += "; it asks for " + " and ".join(asks)
        return text + "."

    def __reduce__(self) -> Any:
        return (_rebuild, (self._fields(),))

    def _fields(self) -> dict[str, Any]:
        return {
            "server_url": self.server_url,
            "status": self.status,
            "server_label": self.server_label,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "resource_metadata": self.resource_metadata,
            "scope": self.scope,
            "error": self.error,
        }

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self._fields().items())
        return f"MCPUpstreamAuthError({inner})"

    # --- Responses output items -----------------------------------------------------

    def mcp_call_item(
        self,
        name: str,
        arguments: str | dict[str, Any] | None = None,
        *,
        item_id: str | None = None,
    ) -> dict[str, Any]:
        """A Responses ``mcp_call`` output item for a tool call this refusal failed:
        ``status`` ``"failed"``, ``error`` an ``http_error`` with the server's status and
        :attr:`message`. For a gateway that goes on with its other tools, or whose stream
        has already started."""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments or {}, separators=(",", ":"))
        return {
            "type": "mcp_call",
            "id": item_id or _item_id(),
            "server_label": self.server_label or "",
            "name": name,
            "arguments": arguments,
            "output": None,
            "error": {"type": "http_error", "code": self.status, "message": self.message},
            "status": "failed",
        }

    def mcp_list_tools_item(self, *, item_id: str | None = None) -> dict[str, Any]:
        """A Responses ``mcp_list_tools`` output item for a listing this refusal failed: no
        tools, ``error`` :attr:`message`."""
        return {
            "type": "mcp_list_tools",
            "id": item_id or _item_id(),
            "server_label": self.server_label or "",
            "tools": [],
            "error": self.message,
        }

    def error_body(self) -> bytes:
        """The OpenAI-style error document of the 424 answer, as bytes."""
        return error_body(
            self.message, code=self.code, param="tools", type_=EXTERNAL_CONNECTOR_ERROR
        )


def _rebuild(fields: dict[str, Any]) -> MCPUpstreamAuthError:
    return MCPUpstreamAuthError(**fields)


def _item_id() -> str:
    return "mcp_" + secrets.token_hex(16)


def find_refusal(exc: BaseException | None) -> MCPUpstreamAuthError | None:
    """``exc`` if it is a refusal, or the first refusal inside (nested) exception groups."""
    if isinstance(exc, MCPUpstreamAuthError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_refusal(inner)
            if found is not None:
                return found
    return None


def _only_refusals(exc: BaseException) -> MCPUpstreamAuthError | None:
    """The first refusal in ``exc`` if every exception in it is a refusal, else ``None``
    (an unrelated error travelling with a refusal is not hidden behind a 424)."""
    if isinstance(exc, MCPUpstreamAuthError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_only_refusals(inner) for inner in exc.exceptions]
        if found and all(item is not None for item in found):
            return found[0]
    return None


# --- recording, per request ---------------------------------------------------------


class _Refusals:
    """The refusals seen in one request (or one pool call), and who to tell about each.

    For a request the middleware serves, it also passes the application's messages on
    (:meth:`send`), noting whether the response has started."""

    __slots__ = ("_send", "auditor", "errors", "parent", "request", "request_id", "started")

    def __init__(
        self,
        parent: _Refusals | None = None,
        auditor: Auditor | None = None,
        request: SourceRequest | None = None,
        request_id: bytes | None = None,
        send: Send | None = None,
    ) -> None:
        self.parent = parent
        self.errors: list[MCPUpstreamAuthError] = []
        self.auditor = auditor
        self.request = request
        self.request_id = request_id
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        assert self._send is not None
        await self._send(message)

    def add(self, exc: MCPUpstreamAuthError) -> None:
        # Once per refused credential, server and status: one failing session may see the
        # same refusal on its POST, its GET stream and its closing DELETE.
        same = (exc.fingerprint, exc.server_url, exc.status)
        if any((e.fingerprint, e.server_url, e.status) == same for e in self.errors):
            return
        self.errors.append(exc)
        del self.errors[:-_MAX_RECORDED]
        if self.auditor is not None and self.request is not None:
            self.auditor.refused_upstream(exc, self.request, request_id_of(self.request_id))


_refusals: ContextVar[_Refusals | None] = ContextVar(
    "mcp_auth_middleware.upstream_refusals", default=None
)


def record_refusal(exc: MCPUpstreamAuthError) -> None:
    """Record ``exc`` in the current request (and audit it there), once per request for a
    credential, server and status."""
    sink = _refusals.get()
    while sink is not None:
        sink.add(exc)
        sink = sink.parent


def upstream_refusals() -> tuple[MCPUpstreamAuthError, ...]:
    """The refusals :class:`~mcp_auth_middleware.MCPBearerAuth` (or the session pool) met in
    the current request so far, oldest first, one per credential, server and status (the
    latest 32); empty outside a request.

    For what an SDK transport swallows: the ``mcp`` SDK's SSE transport turns a refused
    message POST into ``MCPError("Connection closed")``.
    """
    sink = _refusals.get()
    return () if sink is None else tuple(sink.errors)


@contextmanager
def capture_refusals() -> Iterator[list[MCPUpstreamAuthError]]:
    """Collect the refusals recorded in the block (and in tasks it starts); they are also
    recorded in the enclosing request."""
    sink = _Refusals(_refusals.get())
    token = _refusals.set(sink)
    try:
        yield sink.errors
    finally:
        _refusals.reset(token)


def raise_refusal(credential: MCPCredential | None, response: Any) -> None:
    """Raise (and record) the refusal ``response`` says of ``credential``; nothing when no
    credential went out. The hook of :meth:`MCPBearerAuth.auth_flow`."""
    if credential is None:
        return
    exc = MCPUpstreamAuthError.from_response(response, credential)
    record_refusal(exc)
    raise exc


# --- the middleware's side ------------------------------------------------------------


async def serve_recording_refusals(
    app: ASGIApp,
    request: SourceRequest,
    receive: Receive,
    send: Send,
    auditor: Auditor | None,
    request_id: bytes | None,
) -> None:
    """Call ``app`` for ``request`` with a place to record its upstream refusals (each
    audited as it is recorded). A refusal the application lets escape before its response
    started is answered 424 (``external_connector_error``); after that it is re-raised."""
    sink = _Refusals(None, auditor, request, request_id, send)
    token = _refusals.set(sink)
    refusal: MCPUpstreamAuthError | None = None
    try:
        await app(request.scope, receive, sink.send)
    except Exception as exc:
        refusal = None if sink.started else _only_refusals(exc)
        if refusal is None:
            raise
        sink.add(refusal)
    finally:
        _refusals.reset(token)
    if refusal is not None:
        payload = refusal.error_body()
        await send(
            {
                "type": "http.response.start",
                "status": FAILED_DEPENDENCY,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
