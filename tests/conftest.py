"""Shared fixtures: an asyncio anyio backend, a structlog capture, context hygiene."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import structlog
from structlog.testing import LogCapture

from mcp_auth_middleware import current_credentials


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
def audit_log() -> Iterator[list[dict[str, Any]]]:
    """The structlog events emitted during the test (audit events included)."""
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        # LogCapture types its entries loosely; they are plain dicts.
        yield cast(list[dict[str, Any]], capture.entries)
    finally:
        structlog.configure(**old)
