"""A small Responses-API gateway: FastAPI + MCPAuthMiddleware + the official MCP client.

For each ``{"type": "mcp"}`` tool of a ``POST /v1/responses`` request it lists the server's
tools (an ``mcp_list_tools`` output item) and calls the one named by ``input`` when the
server has it (an ``mcp_call`` item), with the caller's own credential for that server. No
LLM is involved. A failure at the MCP server (a 401 for a missing or wrong token) becomes an
``mcp_call``/``mcp_list_tools`` error item, not a crash.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from fastapi import FastAPI
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware, MCPBearerAuth


def _error_text(exc: BaseException) -> str:
    """A short reason for an MCP failure, without anything from the request."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_error_text(e) for e in exc.exceptions)
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"MCP server answered HTTP {exc.response.status_code}"
    return type(exc).__name__


async def run_mcp_tool(
    http: httpx2.AsyncClient,
    tool: dict[str, Any],
    call: str | None,
) -> list[dict[str, Any]]:
    """The output items for one MCP tool: its tool list, and one call if asked for."""
    label = tool.get("server_label")
    items: list[dict[str, Any]] = []
    try:
        async with (
            streamable_http_client(tool["server_url"], http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = await session.list_tools()
            names = [t.name for t in listed.tools]
            items.append(
                {
                    "type": "mcp_list_tools",
                    "id": f"mcpl_{uuid.uuid4().hex}",
                    "server_label": label,
                    "tools": [
                        {"name": t.name, "input_schema": t.input_schema} for t in listed.tools
                    ],
                }
            )
            if call in names:
                result = await session.call_tool(call, {})
                text = "".join(getattr(c, "text", "") for c in getattr(result, "content", []))
                items.append(
                    {
                        "type": "mcp_call",
                        "id": f"mcp_{uuid.uuid4().hex}",
                        "server_label": label,
                        "name": call,
                        "arguments": "{}",
                        "output": text,
                        "error": None,
                    }
                )
    except Exception as exc:  # any MCP failure is reported, not raised
        items.append(
            {
                "type": "mcp_call",
                "id": f"mcp_{uuid.uuid4().hex}",
                "server_label": label,
                "name": call,
                "arguments": "{}",
                "output": None,
                "error": _error_text(exc),
            }
        )
    return items


def create_app(config: MCPAuthConfig | None = None) -> FastAPI:
    """The gateway app; ``config`` defaults to ``MCPAuthConfig.from_env()``."""
    http = httpx2.AsyncClient(auth=MCPBearerAuth(), timeout=10.0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await http.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig.from_env())

    @app.post("/v1/responses")
    async def create_response(body: dict[str, Any]) -> dict[str, Any]:
        call = body.get("input") if isinstance(body.get("input"), str) else None
        output: list[dict[str, Any]] = []
        for tool in body.get("tools") or []:
            if isinstance(tool, dict) and tool.get("type") == "mcp":
                output.extend(await run_mcp_tool(http, tool, call))
        return {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "status": "completed",
            "model": body.get("model", ""),
            "output": output,
        }

    return app
