"""``make demo`` end to end: it proves its claims, prints them readably, writes the audit
events as JSON lines, and fails (exit 1) when a claim does not hold."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from examples import demo
from mcp_auth_middleware import AUDIT_LOGGER, MCPAuthConfig
from mcp_auth_middleware.testing import RecordedRequest, fingerprint

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``python -m examples.demo --audit-log PATH``, once: its output and the audit log."""
    audit = tmp_path_factory.mktemp("demo") / "audit.jsonl"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "examples.demo", "--audit-log", str(audit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    return done.stdout, audit


def test_the_demo_proves_its_claims_and_exits_0(demo_run: tuple[str, Path]) -> None:
    out, audit = demo_run
    lines = out.splitlines()
    assert max(len(line) for line in lines[:-2]) <= 100  # the last two name the file
    assert lines[-3:] == [
        "demo: OK",
        f"audit events: 7 JSON lines in {audit}",
        f"the migration report: python -m mcp_auth_middleware.report {audit}",
    ]
    assert sum(line.startswith("  ok   ") for line in lines) == 5
    assert "FAIL" not in out
    # Every caller answered as themselves by both servers; mallory refused.
    for user in ("alice", "bob", "carol"):
        assert f"calendar: {user:8} files: {user}" in out
    assert "400 authorization_in_headers" in out
    # Each server's own record names each caller's token for it, by fingerprint.
    for user in ("alice", "bob", "carol"):
        for server in ("calendar", "files"):
            assert f"token {fingerprint(demo.token(user, server))} -> {user}" in out
    # Precedence and shadowing, with request ids.
    carol = [line for line in lines if line.startswith("  carol    demo-carol")]
    assert len(carol) == 2
    assert all('body           ["provider_data"]' in line for line in carol)
    # The fingerprint explained, with a digest the reader can recompute.
    digest = hashlib.sha256(b"alice-calendar-token").hexdigest()[:12]
    assert f"printf %s alice-calendar-token | sha256sum | cut -c1-12   ->  {digest}" in out
    # The audit events as JSON lines, in the agreed shape.
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(events) == 7
    for event in events:
        assert list(event)[:4] == ["event", "timestamp", "level", "logger"]
        assert event["logger"] == AUDIT_LOGGER
        stamp = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        assert stamp.utcoffset() == datetime.timedelta(0)
    assert [e["level"] for e in events] == ["info"] * 6 + ["warning"]
    assert {e["request_id"] for e in events} == {f"demo-{u}" for u in demo.USERS[:3]} | {
        "demo-mallory"
    }
    assert [e["shadowed"] for e in events if e["request_id"] == "demo-carol"] == [
        ["provider_data"]
    ] * 2
    # Each event names the caller the gateway authenticated.
    assert {e["request_id"]: e["caller"] for e in events} == {
        f"demo-{u}": u for u in ("alice", "bob", "carol", "mallory")
    }


def test_the_migration_report_reads_the_demos_audit_log(demo_run: tuple[str, Path]) -> None:
    """Per caller: alice on the body only, bob still all on the legacy header, carol sending
    both (the body won, her provider data shadowed, and so counted as legacy)."""
    _, audit = demo_run
    done = subprocess.run(
        [sys.executable, "-m", "mcp_auth_middleware.report", str(audit)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = {
        line.split()[0]: line.split()[2:]
        for line in done.stdout.split("== per caller ==")[1].split("==")[0].splitlines()[2:]
        if line.strip()
    }
    # body, provider_data, total, shadowed, legacy share
    assert rows == {
        "alice": ["2", "0", "2", "0", "0.0%"],
        "bob": ["0", "2", "2", "0", "100.0%"],
        "carol": ["2", "0", "2", "2", "100.0%"],
    }
    assert "mallory" in done.stdout.split("== rejections ==")[1]


def test_the_demo_fails_when_the_body_does_not_win() -> None:
    """With provider data first, carol's shadowed tokens are the ones sent: check 3 and 4 fail
    (the servers answer ``carol-legacy``), so ``main`` would exit 1."""
    outcome = demo.run(MCPAuthConfig(precedence=("provider_data", "body", "server_header")))
    assert outcome.answers["carol"] == {"calendar": "carol-legacy", "files": "carol-legacy"}
    lines: list[str] = []
    assert demo.report(outcome, lines.append) is False
    assert lines[-1] == "demo: FAILED"
    failed = [line for line in lines if line.startswith("  FAIL")]
    assert any("carol: the body won" in line for line in failed)
    assert any("exactly the tokens sent for it" in line for line in failed)


def test_main_exits_1_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = demo.run
    config = MCPAuthConfig(precedence=("provider_data", "body", "server_header"))
    monkeypatch.setattr(demo, "run", lambda: real_run(config))
    monkeypatch.setattr(demo, "print", lambda *args: None, raising=False)
    assert demo.main([]) == 1


def test_a_token_at_the_wrong_server_fails_the_first_check() -> None:
    """The leak check reads the servers' records: one request with a files token at the
    calendar server is enough."""
    leaked = RecordedRequest(
        method="POST",
        path="/mcp",
        status=401,
        auth="refused",
        user=None,
        token=fingerprint(demo.token("alice", "files")),
        headers={},
        secret_headers={},
    )
    clean = demo.Outcome(records={"calendar": [], "files": []})
    assert demo.foreign_tokens(clean) == {"calendar": set(), "files": set()}
    dirty = replace(clean, records={"calendar": [leaked], "files": []})
    assert demo.foreign_tokens(dirty) == {"calendar": {leaked.token}, "files": set()}
    [(ok, claim), *_] = demo.checks(dirty)
    assert not ok
    assert claim.startswith("each token reached only its own server (calendar: 1 foreign")
