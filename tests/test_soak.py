"""The soak (``slow``): 50 users at once through the real gateway to the real MCP server.

Runs the engine, ``tests/soak.py``, as its command line in a subprocess bounded by a
timeout: the gateway under uvicorn in its own process group on a free 127.0.0.1 port (one
process, then ``--workers 2``), the MCP server under uvicorn in a thread of the engine.
Mixed sources (body, provider-data header, ``X-MCP-whoami-Authorization``), a tenth
malformed, a tenth of the rest streamed. ``MCP_AUTH_SOAK_REQUESTS`` sets the number of
requests of the one-process run (400; ``make soak SOAK_REQUESTS=10000`` for the full soak);
the two-worker run sends 30 % of that, at least 300.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_PROVIDER_DATA,
)
from tests.soak import MALFORMED, VALID_KINDS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "tests" / "soak.py"
USERS = 50
REQUESTS = int(os.environ.get("MCP_AUTH_SOAK_REQUESTS", "400"))
WORKER_REQUESTS = max(300, REQUESTS * 3 // 10)
# The codes a malformed request gets: the wire contract, spelled out here.
CODES = {AUTHORIZATION_IN_HEADERS, CONFLICTING_CREDENTIALS, INVALID_AUTHORIZATION}
CODES |= {INVALID_PROVIDER_DATA}


def _soak(tmp_path: Path, requests: int, *extra: str) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    # The engine sends nothing after ``cap`` seconds (400 requests take 15 to 40 s); past its
    # own bound plus start-up and shut-down, it is killed.
    cap = max(90, requests // 5)
    command = [sys.executable, str(SOAK), "--requests", str(requests), "--users", str(USERS)]
    command += ["--concurrency", str(USERS), "--seconds", str(cap), "--json", str(out), *extra]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=cap + 90, check=False
    )
    assert out.exists(), f"{done.stdout}\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert (done.returncode, result["violations"]) == (0, []), done.stdout
    return result


def _check(result: dict[str, Any], requests: int) -> None:
    malformed = round(requests * 0.1)
    valid = requests - malformed
    assert result["done"] == result["sent"] == requests
    # 50 distinct users in flight at once, every one answered as itself, and only as itself.
    assert result["max_users_in_flight"] == USERS
    assert result["users_answered"] == USERS
    assert result["answered_own"] == result["mcp_calls"] == valid
    assert result["mcp_calls_match_answers"] is True
    assert result["cross_user_tokens"] == 0
    assert result["answered_other"] == result["unanswered"] == result["valid_refused"] == 0
    assert result["mcp_cross_user_sessions"] == result["mcp_cross_user_headers"] == 0
    assert result["mcp_requests_without_token"] == result["mcp_requests_unknown_token"] == 0
    assert result["mcp_rejected_tokens"] == 0  # no decoy (shadowed) token was ever sent
    assert result["streamed"] > 0
    # Every malformed request refused with its own code; nothing else refused; no 5xx.
    assert result["malformed"] == result["malformed_ok"] == malformed
    assert result["malformed_wrong"] == 0
    assert {key.split()[1] for key in result["rejected"]} == CODES
    assert all(key.startswith("400 ") for key in result["rejected"])
    assert sum(result["rejected"].values()) == malformed
    assert result["statuses"] == {"200": valid, "400": malformed}
    assert result["five_xx"] == 0
    assert result["transport_errors"] == {}
    assert set(result["by_kind"]) == {*VALID_KINDS, *MALFORMED}
    # Nothing secret in the gateway's log (audit events included) or in its answers.
    assert result["tokens_in_gateway_log"] == result["tokens_in_answers"] == 0
    assert result["audit_rejected"] == malformed
    assert result["rss_growth_mib"] <= result["max_rss_growth_mib"]


def test_soak_fifty_users_one_gateway_process(tmp_path: Path) -> None:
    """``REQUESTS`` requests from 50 concurrent users over one uvicorn gateway process."""
    result = _check_run(tmp_path, REQUESTS)
    assert result["workers"] == 1
    assert result["rss_end_mib"] > 0


def test_soak_fifty_users_two_workers_stateless(tmp_path: Path) -> None:
    """``uvicorn --workers 2``: requests of one user land on either worker, all answered right."""
    result = _check_run(tmp_path, WORKER_REQUESTS, "--workers", "2")
    assert result["workers"] == 2
    assert "--workers" in result["command"]
    served = {pid: n for pid, n in result["worker_requests"].items() if pid != "?"}
    assert len(served) == 2
    assert sum(served.values()) == WORKER_REQUESTS
    assert result["users_on_several_workers"] > 0
    assert len(result["worker_rss_mib"]) == 2


def _check_run(tmp_path: Path, requests: int, *extra: str) -> dict[str, Any]:
    result = _soak(tmp_path, requests, *extra)
    _check(result, requests)
    return result
