"""``make demo``: two callers, each with their own token, through one gateway to one MCP server.

Everything runs on 127.0.0.1: a real MCP server (the official ``mcp`` SDK) that verifies
bearer tokens, and a FastAPI gateway with ``MCPAuthMiddleware``. Alice sends her token in the
body parameter, Bob in the legacy provider-data header. The demo prints what the MCP server
answered each caller and the audit events, then stops everything and exits 0 (1 if the MCP
server did not see each caller as themselves).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import httpx
import structlog

from examples.gateway import create_app
from examples.mcp_server import make_mcp_server, serve
from mcp_auth_middleware import MCPAuthConfig

TOKENS = {"alice-demo-token": "alice", "bob-demo-token": "bob"}


def main() -> int:
    audit: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        audit.append(dict(event))
        return event

    structlog.configure(
        processors=[keep, structlog.processors.JSONRenderer()],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    for noisy in ("mcp", "httpx", "httpx2", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mcp = make_mcp_server(TOKENS)
    gateway = create_app(MCPAuthConfig())
    with serve(mcp.server.streamable_http_app()) as mcp_base, serve(gateway) as gw_base:
        server_url = f"{mcp_base}/mcp"
        tool = {"type": "mcp", "server_label": "whoami", "server_url": server_url}
        requests = [
            ("alice (body parameter)", {"authorization": "alice-demo-token"}, {}),
            (
                "bob (X-LlamaStack-Provider-Data)",
                {},
                {
                    "X-LlamaStack-Provider-Data": json.dumps(
                        {"mcp_headers": {server_url: {"Authorization": "Bearer bob-demo-token"}}}
                    )
                },
            ),
        ]
        answers = []
        with httpx.Client(base_url=gw_base, timeout=30) as client:
            for who, extra, headers in requests:
                body = {"model": "demo", "input": "whoami", "tools": [{**tool, **extra}]}
                response = client.post("/v1/responses", json=body, headers=headers)
                response.raise_for_status()
                calls = [i for i in response.json()["output"] if i["type"] == "mcp_call"]
                answer = calls[0]["output"] if calls else None
                answers.append(answer)
                print(f"{who:36} -> MCP server says: {answer}")
            # A smuggled Authorization in the tool's headers never reaches the gateway code.
            smuggled = {**tool, "headers": {"Authorization": "Bearer alice-demo-token"}}
            refused = client.post("/v1/responses", json={"model": "demo", "tools": [smuggled]})
            print(
                f"{'mallory (Authorization in headers)':36} -> {refused.status_code} "
                f"{refused.json()['error']['code']}"
            )
    print("\naudit events:")
    for event in audit:
        print("  " + json.dumps(event, sort_keys=True))
    print(f"\nMCP server's log of tool calls: {[(c.user, c.tool) for c in mcp.calls]}")
    ok = (
        answers == ["alice", "bob"]
        and [c.user for c in mcp.calls] == ["alice", "bob"]
        and refused.status_code == 400
    )
    print("demo:", "OK, each caller reached the MCP server as themselves" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
