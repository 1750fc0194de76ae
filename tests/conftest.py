"""Shared fixtures: an asyncio anyio backend, a structlog capture, context hygiene; the
testing kit's fixtures (``mcp_server``, ``mcp_server_factory``, ``mcp_audit_log``) loaded
the way an integrator loads them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mcp_auth_middleware import current_credentials
from mcp_auth_middleware.testing import AuditLog
from tests.helpers import NothingSource, Sources

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
