"""pytest fixtures of the testing kit. Load them in your top-level ``conftest.py``::

    pytest_plugins = ["mcp_auth_middleware.testing.pytest_plugin"]

(or ``-p mcp_auth_middleware.testing.pytest_plugin`` in ``addopts``). They are not loaded
automatically for everyone who installs the package: fixtures appear only where asked for.

* ``mcp_server``: a :class:`RecordingMCPServer` for the users of ``mcp_server_tokens``,
  serving streamable HTTP on 127.0.0.1; ``mcp_server.url`` is its endpoint.
* ``mcp_server_tokens``: token -> user for ``mcp_server`` (a :class:`TokenMap`); override it
  in your conftest.
* ``mcp_server_factory``: ``mcp_server_factory(tokens, name=..., transport=...,
  public_headers=...)`` starts one more server; all are stopped at the end of the test.
* ``mcp_audit_log``: the structlog events of the test (audit events included), as an
  :class:`AuditLog`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from typing import Protocol

import pytest

from mcp_auth_middleware.testing import (
    AuditLog,
    RecordingMCPServer,
    TokenMap,
    Transport,
    capture_audit,
)

__all__ = [
    "MCPServerFactory",
    "mcp_audit_log",
    "mcp_server",
    "mcp_server_factory",
    "mcp_server_tokens",
]


class MCPServerFactory(Protocol):
    """The type of the ``mcp_server_factory`` fixture."""

    def __call__(
        self,
        tokens: Mapping[str, str],
        *,
        name: str = ...,
        transport: Transport = ...,
        public_headers: Iterable[str] = ...,
    ) -> RecordingMCPServer: ...


@pytest.fixture
def mcp_server_factory() -> Iterator[MCPServerFactory]:
    """Start recording MCP servers on 127.0.0.1; each is stopped when the test ends."""
    with ExitStack() as stack:

        def start(
            tokens: Mapping[str, str],
            *,
            name: str = "whoami",
            transport: Transport = "streamable-http",
            public_headers: Iterable[str] = (),
        ) -> RecordingMCPServer:
            server = RecordingMCPServer(tokens, name=name, public_headers=public_headers)
            stack.enter_context(server.running(transport))
            return server

        yield start


@pytest.fixture
def mcp_server_tokens() -> TokenMap:
    """Token -> user of the ``mcp_server`` fixture. Override it to choose your own, as a
    :class:`TokenMap`: pytest shows a failing test's fixture values, and a ``TokenMap``
    shows fingerprints where a plain dict would show the tokens."""
    return TokenMap({"alice-test-token": "alice", "bob-test-token": "bob"})


@pytest.fixture
def mcp_server(
    mcp_server_factory: MCPServerFactory, mcp_server_tokens: Mapping[str, str]
) -> RecordingMCPServer:
    """A recording MCP server (streamable HTTP) for ``mcp_server_tokens``; ``.url`` is set."""
    return mcp_server_factory(mcp_server_tokens)


@pytest.fixture
def mcp_audit_log() -> Iterator[AuditLog]:
    """The structlog events emitted during the test, the middleware's audit events among
    them (``mcp_audit_log.resolved``, ``.rejected``)."""
    with capture_audit() as log:
        yield log
