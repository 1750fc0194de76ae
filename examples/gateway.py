"""A small Responses and tool-runtime gateway: FastAPI + MCPAuthMiddleware + the ``mcp`` client.

No LLM is involved. Routes:

* ``POST /v1/responses`` (OpenAI SDK) and ``/v1/openai/v1/responses`` (llama-stack-client
  0.2.x): for each ``{"type": "mcp"}`` tool, list the server's tools (``mcp_list_tools``) and
  call the one named by ``input`` if it has it (``mcp_call``). ``"stream": true`` announces the
  same work as server-sent events (``response.created``, ``response.output_item.added/done``,
  ``response.mcp_list_tools.*``, ``response.mcp_call.*``, ``response.completed``).
* ``POST /v1/tool-runtime/invoke``: call ``tool_name`` with ``kwargs`` on ``mcp_endpoint.uri``,
  or on the server ``tool_servers`` configures for it, with the top-level ``authorization``.

The gateway never reads a token: the middleware scopes the caller's credentials and
``MCPBearerAuth`` on the one shared MCP HTTP client picks the right one per outgoing request.
A failure at the MCP server (a 401 for a missing or wrong token) becomes an error item or an
error result, not a crash, and is never retried with any other credential.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import anyio
import httpx2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ContentBlock, TextContent
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    current_credentials,
    use_credentials,
)

Item = dict[str, Any]
SendEvent = Callable[[Item], Awaitable[None]]

_SECRET_KEYS = ("authorization", "headers")  # never echoed back in ``response.tools``
_http_errors: ContextVar[list[int]] = ContextVar("gateway_mcp_http_errors")


class MCPFailure(Exception):
    """The MCP server refused or failed; ``error`` is OpenAI's ``McpToolCallError`` shape."""

    def __init__(self, kind: str, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.error: Item = {"type": kind, "code": code, "message": message}


def _failure(exc: BaseException, http_errors: list[int]) -> MCPFailure:
    if http_errors:  # the SDK reports an HTTP error as a generic JSON-RPC one: use the status
        return MCPFailure(
            "http_error", http_errors[0], f"MCP server answered HTTP {http_errors[0]}"
        )
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _failure(exc.exceptions[0], http_errors)
    if isinstance(exc, MCPError):
        return MCPFailure("mcp_protocol_error", exc.code, exc.message)
    return MCPFailure("mcp_protocol_error", -32603, type(exc).__name__)


async def _note_http_error(response: httpx2.Response) -> None:
    errors = _http_errors.get(None)
    if errors is not None and response.is_error:
        errors.append(response.status_code)


class MCPSessions:
    """Opens MCP sessions that carry the current request's credential, ``limit`` at most at once.

    An open streamable-HTTP session holds a pooled connection for its GET stream: with as many
    open sessions as pool connections, none can POST and all stall until the pool timeout. So
    sessions are capped and the pool sized above the cap.
    """

    def __init__(self, limit: int = 50) -> None:
        self.limiter = anyio.CapacityLimiter(limit)
        self.http = httpx2.AsyncClient(
            auth=MCPBearerAuth(),
            timeout=30.0,
            limits=httpx2.Limits(max_connections=2 * limit),
            event_hooks={"response": [_note_http_error]},
        )

    @asynccontextmanager
    async def open(self, server_url: str) -> AsyncIterator[ClientSession]:
        """An initialised session; any failure, in the block too, raises :class:`MCPFailure`.

        The one place sessions are made: a credential-keyed session pool would plug in here.
        """
        http_errors: list[int] = []
        reset = _http_errors.set(http_errors)  # the transport's tasks inherit this list
        try:
            async with (
                self.limiter,
                streamable_http_client(server_url, http_client=self.http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                yield session
        except Exception as exc:
            raise _failure(exc, http_errors) from exc
        finally:
            _http_errors.reset(reset)


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


async def run_mcp_tool(sessions: MCPSessions, tool: Item, call: str | None, out: Output) -> None:
    """List one MCP server's tools, and call ``call`` on it when it has that tool."""
    label = str(tool.get("server_label") or "")
    listing: Item = dict(type="mcp_list_tools", id=_id("mcpl"), server_label=label, tools=[])
    await out.add(listing)
    called: Item | None = None
    try:
        async with sessions.open(str(tool.get("server_url"))) as session:
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


async def run_response(sessions: MCPSessions, body: Item, out: Output) -> Item:
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
            await run_mcp_tool(sessions, tool, call, out)
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
) -> FastAPI:
    """The gateway app; ``config`` defaults to ``MCPAuthConfig.from_env()``.

    ``tool_servers`` maps a tool-runtime ``tool_name`` to the URL of the MCP server that has
    it, for invocations that name no ``mcp_endpoint``.
    """
    servers = dict(tool_servers or {})
    sessions = MCPSessions(max_sessions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sessions.http:
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig.from_env())

    @app.post("/v1/responses", response_model=None)
    @app.post("/v1/openai/v1/responses", response_model=None)  # llama-stack-client 0.2.x
    async def responses(request: Request, body: Item) -> Response:
        flat = request.url.path.startswith("/v1/openai/")  # llama-stack: ``error`` is a string
        if body.get("stream") is True:
            return EventStream(lambda send: run_response(sessions, body, Output(send, flat)))
        return JSONResponse(await run_response(sessions, body, Output(None, flat)))

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
