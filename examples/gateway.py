"""A small Responses and tool-runtime gateway: FastAPI + MCPAuthMiddleware + the ``mcp`` client.

No LLM is involved. Routes:

* ``POST /v1/responses`` (OpenAI SDK) and ``/v1/openai/v1/responses`` (llama-stack-client
  0.2.x): for each ``{"type": "mcp"}`` tool, list the server's tools (``mcp_list_tools``) and
  call the one named by ``input`` if it has it (``mcp_call``). ``"stream": true`` announces the
  same work as server-sent events (``response.created``, ``response.output_item.added/done``,
  ``response.mcp_list_tools.*``, ``response.mcp_call.*``, ``response.completed``).
* ``POST /v1/tool-runtime/invoke``: call ``tool_name`` with ``kwargs`` on ``mcp_endpoint.uri``,
  or on the server ``tool_servers`` configures for it, with the top-level ``authorization``.

The gateway never reads a token: the middleware scopes the caller's credentials, and the MCP
sessions pick the caller's own, with the per-server headers that came with them (a tool's
other ``headers``, a provider-data entry's), which it never forwards itself. A tool naming a
``connector_id`` goes to the URL ``connectors`` maps it to (``create_app``), its credential
bound there with ``bind_connector``. By default they come from an ``MCPSessionPool`` (opened in the
lifespan, ``app.state.mcp_sessions.pool``), which lends a caller only a session that their own
credential opened; ``create_app(reuse_sessions=False)`` opens a new session per request
instead. A failure at the MCP server (a 401 for a missing or wrong token) becomes an error
item or an error result, not a crash, and is never retried with any other credential.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ContentBlock, ListToolsResult, TextContent
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.sessions import MCPSessionPool

Item = dict[str, Any]
SendEvent = Callable[[Item], Awaitable[None]]

_SECRET_KEYS = ("authorization", "headers")  # never echoed back in ``response.tools``
_HTTP_TIMEOUT = 30.0


class MCPFailure(Exception):
    """The MCP server refused or failed; ``error`` is OpenAI's ``McpToolCallError`` shape."""

    def __init__(self, kind: str, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.error: Item = {"type": kind, "code": code, "message": message}


def _failure(exc: BaseException) -> MCPFailure:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _failure(exc.exceptions[0])
    if isinstance(exc, httpx2.HTTPStatusError):
        status = exc.response.status_code
        return MCPFailure("http_error", status, f"MCP server answered HTTP {status}")
    if isinstance(exc, MCPError):
        return MCPFailure("mcp_protocol_error", exc.code, exc.message)
    return MCPFailure("mcp_protocol_error", -32603, type(exc).__name__)


async def _raise_http_error(response: httpx2.Response) -> None:
    """Keep the HTTP status of a failure, which the SDK would turn into a bare -32603.

    Raised from this hook, the error ends the session: any error while opening it (no session
    id yet), and a refused credential (401, 403) at any time, which also ends a pooled session
    whose token the server stopped accepting (the call in flight fails with "Connection
    closed"; the next one opens afresh and gets the 401). Other errors on an open session stay
    the SDK's, per call: its 404 is how the pool sees a session the server dropped.
    """
    if response.is_error and (
        response.status_code in (401, 403) or "mcp-session-id" not in response.request.headers
    ):
        response.raise_for_status()


_EVENT_HOOKS = {"response": [_raise_http_error]}


def _pooled_client(*, auth: httpx2.Auth, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    """The HTTP client of one pooled session (its ``auth`` holds that session's credential)."""
    return httpx2.AsyncClient(auth=auth, timeout=timeout, event_hooks=_EVENT_HOOKS)


class ToolSession(Protocol):
    """What a route does on an MCP server: a ``ClientSession``, or :class:`_Borrowing`."""

    async def list_tools(self) -> ListToolsResult: ...

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None = None
    ) -> CallToolResult: ...


@dataclass(frozen=True)
class _Borrowing:
    """One server's sessions in the pool: each call borrows the caller's own pooled session,
    and is retried once on a fresh one if the server had dropped it (e.g. after a restart)."""

    pool: MCPSessionPool
    server_url: str

    async def list_tools(self) -> ListToolsResult:
        return await self.pool.list_tools(self.server_url)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        return await self.pool.call_tool(self.server_url, name, arguments)


class MCPSessions:
    """The one place the routes get MCP sessions, for the current request's credentials.

    ``reuse=True``: from an :class:`MCPSessionPool` keyed by server and credential, at most
    ``max_sessions`` pooled. ``reuse=False``: a new session per request on one shared HTTP
    client whose ``MCPBearerAuth`` reads the request's credentials, ``max_sessions`` open at
    once. (An open streamable-HTTP session holds a connection for its GET stream: with as many
    open sessions as pool connections none could POST, so the pool is sized above the cap.)
    """

    def __init__(self, *, reuse: bool, max_sessions: int) -> None:
        self.reuse, self.max_sessions = reuse, max_sessions
        self.pool: MCPSessionPool | None = None  # while the app runs, with reuse
        self._http: httpx2.AsyncClient | None = None  # while the app runs, without
        self._limiter = anyio.CapacityLimiter(max_sessions)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the app's lifespan: leaving it closes every session."""
        if self.reuse:
            pool = MCPSessionPool(
                max_sessions=self.max_sessions,
                http_timeout=_HTTP_TIMEOUT,
                http_client_factory=_pooled_client,
            )
            async with pool:
                self.pool = pool
                yield
        else:
            self._http = httpx2.AsyncClient(
                auth=MCPBearerAuth(),
                timeout=_HTTP_TIMEOUT,
                limits=httpx2.Limits(max_connections=2 * self.max_sessions),
                event_hooks=_EVENT_HOOKS,
            )
            async with self._http:
                yield

    @asynccontextmanager
    async def open(self, server_url: str) -> AsyncIterator[ToolSession]:
        """Sessions to ``server_url``; any failure, in the block too, raises :class:`MCPFailure`."""
        try:
            if self.pool is not None:
                yield _Borrowing(self.pool, server_url)
                return
            assert self._http is not None, "MCPSessions used outside the app's lifespan"
            async with (
                self._limiter,
                streamable_http_client(server_url, http_client=self._http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session
        except Exception as exc:
            raise _failure(exc) from exc


def _text(content: list[ContentBlock]) -> str:
    return "".join(c.text for c in content if isinstance(c, TextContent))


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Output:
    """One response's output items, and the stream events that announce them when streaming."""

    def __init__(self, send: SendEvent | None, flat_errors: bool) -> None:
        self.items: list[Item] = []
        self.finished: set[str] = set()
        self.flat_errors = flat_errors  # llama-stack-client 0.2.x types ``error`` as a string
        self._send = send
        self._sequence = itertools.count()

    async def emit(self, type_: str, **fields: Any) -> None:
        if self._send is not None:
            await self._send({"type": type_, "sequence_number": next(self._sequence), **fields})

    async def add(self, item: Item) -> None:
        self.items.append(item)
        at = {"item_id": item["id"], "output_index": len(self.items) - 1}
        await self.emit("response.output_item.added", output_index=at["output_index"], item=item)
        await self.emit(f"response.{item['type']}.in_progress", **at)

    async def done(self, item: Item, *, failure: MCPFailure | None = None) -> None:
        if failure is not None and item["type"] == "mcp_call":
            error = failure.message if self.flat_errors else failure.error
            item.update(status="failed", error=error)
        elif failure is not None:
            item["error"] = failure.message  # mcp_list_tools.error is a string in both SDKs
        self.finished.add(item["id"])
        at = {"item_id": item["id"], "output_index": self.items.index(item)}
        outcome = "completed" if failure is None else "failed"
        await self.emit(f"response.{item['type']}.{outcome}", **at)
        await self.emit("response.output_item.done", output_index=at["output_index"], item=item)


def _mcp_call(label: str, name: str) -> Item:
    item = {"type": "mcp_call", "id": _id("mcp"), "server_label": label, "name": name}
    return item | {"arguments": "{}", "output": None, "error": None, "status": "in_progress"}


def server_url_of(tool: Item, connectors: Mapping[str, str]) -> str | None:
    """The MCP server a tool names: its ``server_url``, else the URL its ``connector_id``
    stands for (``None``: a connector this gateway does not know)."""
    if tool.get("server_url") is not None:
        return str(tool["server_url"])
    connector = tool.get("connector_id")
    return connectors.get(connector) if isinstance(connector, str) else None


async def run_mcp_tool(
    sessions: MCPSessions,
    tool: Item,
    call: str | None,
    out: Output,
    connectors: Mapping[str, str] | None = None,
) -> None:
    """List one MCP server's tools, and call ``call`` on it when it has that tool.

    A connector tool (``connector_id``, no ``server_url``) goes to the URL ``connectors``
    gives it, its credential bound to that URL first (``bind_connector``); an unknown
    connector is an error item, and its credential is sent nowhere. The tool's other
    ``headers`` are not read here: the middleware checked them, and the MCP sessions send
    them to that server only.
    """
    label = str(tool.get("server_label") or "")
    listing: Item = dict(type="mcp_list_tools", id=_id("mcpl"), server_label=label, tools=[])
    await out.add(listing)
    called: Item | None = None
    server_url = server_url_of(tool, connectors or {})
    credentials = current_credentials()
    if server_url is not None and tool.get("server_url") is None:
        credentials = credentials.bind_connector(str(tool.get("connector_id")), server_url)
    try:
        if server_url is None:
            raise MCPFailure("mcp_protocol_error", -32602, "unknown connector")
        with use_credentials(credentials):
            async with sessions.open(server_url) as session:
                tools = (await session.list_tools()).tools
                listing["tools"] = [
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                    for t in tools
                ]
                await out.done(listing)
                if call is None or call not in {t.name for t in tools}:
                    return
                await out.add(called := _mcp_call(label, call))
                result = await session.call_tool(call, {})
                if result.is_error:
                    error = {"type": "mcp_tool_execution_error", "content": _text(result.content)}
                    called.update(status="failed", error=error)
                else:
                    called.update(status="completed", output=_text(result.content))
                await out.done(called)
    except MCPFailure as failure:
        if listing["id"] not in out.finished:
            await out.done(listing, failure=failure)
        if call is not None and called is None:
            await out.add(called := _mcp_call(label, call))
        if called is not None and called["id"] not in out.finished:
            await out.done(called, failure=failure)


async def run_response(
    sessions: MCPSessions, body: Item, out: Output, connectors: Mapping[str, str] | None = None
) -> Item:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    response: Item = {
        "id": _id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "model": str(body.get("model", "")),
        "status": "in_progress",
        "output": out.items,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [{k: v for k, v in t.items() if k not in _SECRET_KEYS} for t in tools],
        "text": {"format": {"type": "text"}},
        "error": None,
    }
    await out.emit("response.created", response=response)
    call = body["input"] if isinstance(body.get("input"), str) else None
    for tool in tools:
        if tool.get("type") == "mcp":
            await run_mcp_tool(sessions, tool, call, out, connectors)
    response["status"] = "completed"
    await out.emit("response.completed", response=response)
    return response


class EventStream(Response):
    """Server-sent events written while ``produce`` runs; not a ``StreamingResponse`` over a
    generator, which would hold the MCP session's task group open across ``yield``."""

    def __init__(self, produce: Callable[[SendEvent], Awaitable[object]]) -> None:
        self.produce, self.status_code, self.background = produce, 200, None
        self.raw_headers = [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_event(event: Item) -> None:
            chunk = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await self.produce(send_event)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _invocation(content: str | None, error_code: int | None, error_message: str | None) -> Item:
    """llama-stack's ``ToolInvocationResult``."""
    return {"content": content, "error_code": error_code, "error_message": error_message}


class MCPEndpoint(BaseModel):
    uri: str


class InvokeToolRequest(BaseModel):
    """llama-stack's tool-runtime body; its ``authorization`` is the middleware's, not ours."""

    tool_name: str
    kwargs: dict[str, Any] = {}
    mcp_endpoint: MCPEndpoint | None = None


def create_app(
    config: MCPAuthConfig | None = None,
    *,
    tool_servers: Mapping[str, str] | None = None,
    max_sessions: int = 50,
    reuse_sessions: bool = True,
    connectors: Mapping[str, str] | None = None,
) -> FastAPI:
    """The gateway app; ``config`` defaults to ``MCPAuthConfig.from_env()``.

    ``tool_servers`` maps a tool-runtime ``tool_name`` to the URL of the MCP server that has
    it, for invocations that name no ``mcp_endpoint``. ``reuse_sessions`` keeps each caller's
    MCP sessions open in a pool (``app.state.mcp_sessions.pool``, for its ``stats``); off, each
    request opens and closes its own. ``max_sessions`` bounds either. ``connectors`` maps a
    Responses tool's ``connector_id`` to its MCP server's URL (default: the middleware's
    ``connectors`` setting, which binds their credentials before the route runs).
    """
    servers = dict(tool_servers or {})
    config = config or MCPAuthConfig.from_env()
    known = dict(config.connectors) if connectors is None else dict(connectors)
    sessions = MCPSessions(reuse=reuse_sessions, max_sessions=max_sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sessions.running():
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(MCPAuthMiddleware, config=config)
    app.state.mcp_sessions = sessions

    @app.post("/v1/responses", response_model=None)
    @app.post("/v1/openai/v1/responses", response_model=None)  # llama-stack-client 0.2.x
    async def responses(request: Request, body: Item) -> Response:
        flat = request.url.path.startswith("/v1/openai/")  # llama-stack: ``error`` is a string
        if body.get("stream") is True:
            return EventStream(lambda send: run_response(sessions, body, Output(send, flat), known))
        return JSONResponse(await run_response(sessions, body, Output(None, flat), known))

    @app.post("/v1/tool-runtime/invoke")
    async def invoke_tool(body: InvokeToolRequest) -> Item:
        credentials = current_credentials()
        if body.mcp_endpoint is not None:
            server_url = body.mcp_endpoint.uri  # the middleware bound the token to it
        elif body.tool_name in servers:
            server_url = servers[body.tool_name]
            # The top-level authorization names no server: say which one it is for.
            credentials = credentials.bind_default(server_url)
        else:
            raise HTTPException(404, f"no MCP server is configured for tool {body.tool_name!r}")
        with use_credentials(credentials):
            try:
                async with sessions.open(server_url) as session:
                    result = await session.call_tool(body.tool_name, body.kwargs)
            except MCPFailure as failure:
                return _invocation(None, failure.code, failure.message)
        if result.is_error:
            return _invocation(None, 1, _text(result.content))
        return _invocation(_text(result.content), None, None)

    return app
