"""Shared fixtures: an asyncio anyio backend, a structlog capture, context hygiene; the
testing kit's fixtures (``mcp_server``, ``mcp_server_factory``, ``mcp_audit_log``) loaded
the way an integrator loads them; with the ``mcp`` SDK 1.x installed (``make test-mcp1``), the
modules that need 2.x are skipped, each with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_auth_middleware import current_credentials
from mcp_auth_middleware.testing import AuditLog
from tests.helpers import MCP_MAJOR, MCP_VERSION, NothingSource, Sources

pytest_plugins = ["pytester", "mcp_auth_middleware.testing.pytest_plugin"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_credentials_outside_requests() -> Iterator[None]:
    """Every test starts and ends with no credentials in scope."""
    assert len(current_credentials()) == 0
    yield
    assert len(current_credentials()) == 0


@pytest.fixture
def audit_log(mcp_audit_log: AuditLog) -> AuditLog:
    """The structlog events emitted during the test (audit events included): the kit's
    ``mcp_audit_log`` under the name the tests use."""
    return mcp_audit_log


@pytest.fixture(
    params=[
        pytest.param((), id="built-in-sources"),
        pytest.param((NothingSource(),), id="with-custom-source"),
    ]
)
def extra_sources(request: pytest.FixtureRequest) -> Sources:
    """The ``sources`` setting a test runs with: none, then a custom source that supplies
    nothing. With a custom source the middleware asks a source on every request of a guarded
    path, so a test that takes this fixture holds either way."""
    sources: Sources = request.param
    return sources


# Test modules that need the mcp SDK 2.x, and why. Only a virtualenv with mcp 1.x skips them
# (``make test-mcp1``); with 2.x they run, and a module missing from this list that cannot be
# imported on 1.x fails that run's collection instead of being skipped quietly.
NEEDS_MCP2 = {
    "test_sessions.py": "MCPSessionPool is written for mcp 2.x",
    "test_reprs.py": "it covers MCPSessionPool, which is written for mcp 2.x",
    "test_exact_url.py": "it covers MCPSessionPool, which is written for mcp 2.x",
    "test_e2e_clients.py": "the example gateway uses MCPSessionPool and the mcp 2.x client",
    "test_demo.py": "the demo runs the example gateway (MCPSessionPool, the mcp 2.x client)",
    "test_soak.py": "the soak runs the example gateway (MCPSessionPool, the mcp 2.x client)",
    "test_e2e_carriers.py": "the example gateway uses MCPSessionPool and the mcp 2.x client",
    "test_upstream.py": "it covers MCPSessionPool and the mcp 2.x server's refusals",
    "test_token_reach.py": "it covers MCPSessionPool; MCPBearerAuth's SSE endpoints on 1.x are "
    "in test_e2e_mcp.py",
}


def _needs_mcp2(reason: str) -> str:
    return f"needs mcp 2.x ({MCP_VERSION} installed): {reason}"


class _NeedsMCP2(pytest.Module):
    def collect(self) -> list[pytest.Item]:
        pytest.skip(_needs_mcp2(NEEDS_MCP2[self.path.name]), allow_module_level=True)


def pytest_pycollect_makemodule(
    module_path: Path, parent: pytest.Collector
) -> pytest.Module | None:
    if MCP_MAJOR < 2 and module_path.name in NEEDS_MCP2:
        return _NeedsMCP2.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With mcp 1.x, skip the tests marked ``mcp2(reason=...)``, each with its reason."""
    if MCP_MAJOR >= 2:
        return
    for item in items:
        marker = item.get_closest_marker("mcp2")
        if marker is not None:
            reason = marker.kwargs["reason"]
            item.add_marker(
                pytest.mark.skip(reason=f"needs mcp 2.x ({MCP_VERSION} installed): {reason}")
            )


def pytest_report_header() -> str:
    return f"mcp SDK {MCP_VERSION}"
