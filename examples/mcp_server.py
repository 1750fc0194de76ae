"""A real MCP server that knows its users by bearer token, and ``serve(app)`` to run any ASGI
app under uvicorn on 127.0.0.1 (an OS-chosen port) in a background thread.

.. code-block:: python

    mcp = make_mcp_server({"alice-token": "alice"})
    with serve(mcp.server.streamable_http_app()) as base_url:
        ...  # POST {base_url}/mcp with Authorization: Bearer alice-token
    assert mcp.calls == [Call(user="alice", tool="whoami")]

Used by the demo and by the end-to-end tests.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from mcp_auth_middleware.credentials import fingerprint

__all__ = ["Call", "RecordingMCPServer", "make_mcp_server", "serve"]

STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Call:
    """One tool call the server ran: who made it (by their token) and which tool."""

    user: str
    tool: str


@dataclass
class RecordingMCPServer:
    """An :class:`MCPServer` whose token verifier is a dict of token -> user name.

    ``calls`` records every tool call; ``rejected`` the fingerprints of tokens it refused.
    """

    tokens: Mapping[str, str]
    calls: list[Call] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    server: MCPServer = field(init=False)

    async def verify_token(self, token: str) -> AccessToken | None:
        user = self.tokens.get(token)
        if user is None:
            self.rejected.append(fingerprint(token))
            return None
        return AccessToken(token=token, client_id=user, subject=user, scopes=["mcp"])

    def __post_init__(self) -> None:
        self.server = MCPServer(
            "whoami",
            token_verifier=self,
            # INFO would make MCPServer install a rich root log handler (logging.basicConfig).
            log_level="WARNING",
            auth=AuthSettings(
                issuer_url="https://auth.example.com",  # type: ignore[arg-type]
                resource_server_url="http://127.0.0.1/mcp",  # type: ignore[arg-type]
                required_scopes=["mcp"],
                # The verifier above is the audience check: every token it knows is ours.
                validate_token_resource=False,
            ),
        )

        @self.server.tool()
        def whoami() -> str:
            """The user the caller's bearer token belongs to."""
            access = get_access_token()
            user = "<anonymous>" if access is None else access.client_id
            self.calls.append(Call(user=user, tool="whoami"))
            return user


def make_mcp_server(tokens: Mapping[str, str]) -> RecordingMCPServer:
    """A recording MCP server with one tool, ``whoami``, for the users in ``tokens``."""
    return RecordingMCPServer(dict(tokens))


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a thread; yield its base URL.

    The port is chosen by the OS. Start-up and shut-down waits are bounded; open streams
    (SSE) are cut after a short graceful period.
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only then (else ~40 ms per keep-alive reply).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        ws="none",
        lifespan="auto",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        waited = 0.0
        while not server.started:
            if not thread.is_alive() or waited > STARTUP_TIMEOUT:
                raise RuntimeError("uvicorn did not start")
            thread.join(0.01)
            waited += 0.01
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():  # pragma: no cover - a stuck connection
            server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT)
        sock.close()
