"""Small builders shared by the tests: a fresh app per test, requests through ASGITransport."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredential,
    MCPCredentials,
    current_credentials,
)
from mcp_auth_middleware.sources.base import SourceRequest

PROVIDER_DATA = "X-LlamaStack-Provider-Data"
ROOT = Path(__file__).resolve().parent.parent


class NothingSource:
    """A custom source that supplies nothing. Its presence alone sends every request down
    the middleware's general path (each source asked in turn) instead of the inlined
    body-only one: tests run a case both ways with it."""

    name = "nothing"
    needs_body = False

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        return []


def describe(creds: MCPCredentials) -> dict[str, Any]:
    """A JSON-able view of a credential set (tokens included: tests only)."""
    return {
        "credentials": sorted(
            (
                {
                    "server_url": c.server_url,
                    "server_label": c.server_label,
                    "source": str(c.source),
                    "token": c.token.get_secret_value(),
                    "headers": dict(c.headers),
                }
                for c in creds
            ),
            key=lambda d: json.dumps(d, sort_keys=True),
        ),
        "default": None if creds.default is None else creds.default.token.get_secret_value(),
    }


class Recorder:
    """An app that records each call: the body it received and the credentials in scope."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def endpoint(self, request: Request) -> JSONResponse:
        body = await request.body()
        seen = describe(current_credentials())
        self.calls.append({"body": body, **seen})
        return JSONResponse(seen)


def make_app(config: MCPAuthConfig | None = None, recorder: Recorder | None = None) -> Starlette:
    recorder = recorder or Recorder()
    app = Starlette(
        routes=[
            Route(
                "/{path:path}", recorder.endpoint, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
            )
        ]
    )
    app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig())
    app.state.recorder = recorder
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def mcp_tool(
    url: str = "https://mcp.example.com/mcp", token: Any = "tok", label: str = "srv", **extra: Any
) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "mcp", "server_url": url, "server_label": label}
    if token is not ...:
        tool["authorization"] = token
    tool.update(extra)
    return tool


def provider_data(mapping: dict[str, dict[str, str]], **other: Any) -> dict[str, str]:
    return {PROVIDER_DATA: json.dumps({"mcp_headers": mapping, **other})}


def asgi_scope(
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    *,
    method: str = "POST",
    path: str = "/v1/responses",
) -> dict[str, Any]:
    """An HTTP scope as an ASGI server hands it over (header names lower-cased)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


def run_python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a child process, from the repository's root (so that ``tests``
    and the package import), bounded in time; a non-zero exit fails the test with its
    stderr."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done
