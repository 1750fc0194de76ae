"""The example gateway as a ``uvicorn --factory`` target, configured from the environment.

.. code-block:: shell

    MCP_AUTH_SERVER_HEADERS=true python -m uvicorn examples.gateway_app:create_gateway \\
        --factory --workers 2 --host 127.0.0.1 --port 8000

The middleware's settings come from ``MCP_AUTH_*`` (``MCPAuthConfig.from_env()``).
``GATEWAY_WORKER_HEADER=1`` adds an ``X-Gateway-Worker: <pid>`` header to every answer, so a
client can tell which worker process served it (used by ``tests/soak.py``).
``GATEWAY_REUSE_SESSIONS=1`` / ``0``, when set, is passed on as ``create_app``'s
``reuse_sessions`` (MCP session pool on / off); unset, the gateway's default applies.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.gateway import create_app
from mcp_auth_middleware import MCPAuthConfig

__all__ = ["WORKER_HEADER", "create_gateway"]

WORKER_HEADER = "x-gateway-worker"


class _WorkerHeader:
    """Outermost pure-ASGI wrapper: names this process in every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_worker(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_worker)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def create_gateway() -> ASGIApp:
    """The gateway of ``examples.gateway`` with ``MCPAuthConfig.from_env()``."""
    options: dict[str, Any] = {}
    reuse = os.environ.get("GATEWAY_REUSE_SESSIONS", "").strip().lower()
    if reuse:
        if reuse not in _TRUE + _FALSE:
            raise ValueError(f"GATEWAY_REUSE_SESSIONS: expected 1 or 0, got {reuse!r}")
        if "reuse_sessions" not in inspect.signature(create_app).parameters:
            raise ValueError("GATEWAY_REUSE_SESSIONS: this gateway has no session pool option")
        options["reuse_sessions"] = reuse in _TRUE
    app: ASGIApp = create_app(MCPAuthConfig.from_env(), **options)
    if os.environ.get("GATEWAY_WORKER_HEADER", "").strip().lower() in _TRUE:
        app = _WorkerHeader(app)
    return app
