"""A testing kit for integrations of mcp-auth-middleware (``pip install
'mcp-auth-middleware[testing]'``).

* :class:`RecordingMCPServer`: a real MCP server (the ``mcp`` SDK) that verifies bearer
  tokens against a dict of token -> user and records what every HTTP request carried, by
  fingerprint, never the token itself.
* :func:`serve` / :func:`serve_async`: run any ASGI app under uvicorn on 127.0.0.1, on a
  free port, in a background thread; yield its base URL.
* :func:`capture_audit`: the structlog events (the audit events among them) as dicts.
* ``mcp_auth_middleware.testing.pytest_plugin``: pytest fixtures over the above, loaded with
  ``pytest_plugins = ["mcp_auth_middleware.testing.pytest_plugin"]`` in your top-level
  ``conftest.py``.

See ``docs/testing.md``.
"""

from __future__ import annotations

try:
    import mcp.server.auth.settings  # noqa: F401  (mcp 2.x, or 1.x: both serve the same server)
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without them
    raise ImportError(
        "mcp_auth_middleware.testing needs the 'testing' extra: "
        "pip install 'mcp-auth-middleware[testing]' (missing: "
        f"{exc.name or exc})"
    ) from exc

from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing.audit import AuditLog, capture_audit, write_json_lines
from mcp_auth_middleware.testing.server import (
    PUBLIC_HEADERS,
    Call,
    RecordedRequest,
    RecordingMCPServer,
    TokenMap,
    Transport,
)
from mcp_auth_middleware.testing.serving import listening_socket, serve, serve_async

__all__ = [
    "PUBLIC_HEADERS",
    "AuditLog",
    "Call",
    "RecordedRequest",
    "RecordingMCPServer",
    "TokenMap",
    "Transport",
    "capture_audit",
    "fingerprint",
    "listening_socket",
    "serve",
    "serve_async",
    "write_json_lines",
]
