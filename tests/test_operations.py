"""The logging recipes of ``docs/operations.md`` and the migration report.

Each recipe runs as it stands in the docs, in a subprocess (it configures logging for the
whole process), followed by real requests through a Starlette app with authentication
(``tests/audit_recipe.py``). The report then reads the file the middleware wrote.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mcp_auth_middleware import AUDIT_LOGGER, CREDENTIAL_REJECTED, CREDENTIAL_RESOLVED
from mcp_auth_middleware.report import PLOT_EXTRA, main
from tests.audit_recipe import APP_EVENT, CRM_URL, DOCS_URL, TOKENS
from tests.helpers import run_python

RECIPES = ("structlog", "stdlib")
EXPECTED = [  # (event, caller, source, shadowed or code, server) for TRAFFIC, in order
    (CREDENTIAL_RESOLVED, "alice", "body", [], DOCS_URL),
    (CREDENTIAL_RESOLVED, "alice", "body", [], DOCS_URL),
    (CREDENTIAL_RESOLVED, "alice", "body", [], CRM_URL),
    (CREDENTIAL_RESOLVED, "bob", "provider_data", [], DOCS_URL),
    (CREDENTIAL_RESOLVED, "bob", "provider_data", [], CRM_URL),
    (CREDENTIAL_RESOLVED, "carol", "body", ["provider_data"], DOCS_URL),
    (CREDENTIAL_RESOLVED, None, "body", [], DOCS_URL),
    (CREDENTIAL_REJECTED, "dave", "body", "invalid_authorization", None),
]


class Written:
    """One recipe's run: the audit file and what the process printed."""

    def __init__(self, directory: Path, output: str) -> None:
        self.path = directory / "audit.jsonl"
        self.text = self.path.read_text(encoding="utf-8")
        self.output = output

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    runs = {}
    for name in RECIPES:
        directory = tmp_path_factory.mktemp(name)
        done = run_python("-m", "tests.audit_recipe", name, str(directory))
        runs[name] = Written(directory, done.stdout + done.stderr)
    return runs


def run_report(*args: str) -> str:
    out = io.StringIO()
    assert main(list(args), out=out) == 0
    return out.getvalue()


def row(report: str, *cells: str) -> list[str]:
    """The report line whose first columns are ``cells``, split on whitespace."""
    found = [line.split() for line in report.splitlines() if line.split()[: len(cells)] == [*cells]]
    assert len(found) == 1, (cells, report)
    return found[0]


# -- the recipes ------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_writes_one_json_audit_event_per_line(
    written: dict[str, Written], recipe: str
) -> None:
    run = written[recipe]
    events = run.events()
    assert len(events) == len(EXPECTED)
    started = datetime.now(UTC) - timedelta(minutes=5)
    for event, (name, caller, source, detail, server) in zip(events, EXPECTED, strict=True):
        assert event["event"] == name
        assert event["logger"] == AUDIT_LOGGER
        assert event["level"] == ("info" if name == CREDENTIAL_RESOLVED else "warning")
        assert event["timestamp"].endswith("Z")  # TimeStamper(fmt="iso", utc=True)
        when = datetime.fromisoformat(event["timestamp"])
        assert when.utcoffset() == timedelta(0)
        assert started < when <= datetime.now(UTC)
        assert event.get("caller") == caller
        assert event["source"] == source
        assert event["method"] == "POST"
        assert event["path"] == "/v1/responses"
        if name == CREDENTIAL_RESOLVED:
            assert (event["shadowed"], event["server_url"]) == (detail, server)
            assert len(event["fingerprint"]) == 12
        else:
            assert event["code"] == detail


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_keeps_audit_and_application_logs_apart(
    written: dict[str, Written], recipe: str
) -> None:
    run = written[recipe]
    assert APP_EVENT not in run.text
    assert run.output.count(APP_EVENT) == 6  # one per request the application served
    assert "mcp_credential_" not in run.output
    for token in TOKENS:
        assert token not in run.text
        assert token not in run.output


def test_both_recipes_write_the_same_events(written: dict[str, Written]) -> None:
    def stripped(run: Written) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "timestamp"} for e in run.events()]

    assert stripped(written["structlog"]) == stripped(written["stdlib"])


# -- the report on the real log ---------------------------------------------------------


def test_report_on_the_recipes_log_through_the_command_line(written: dict[str, Written]) -> None:
    report = run_python("-m", "mcp_auth_middleware.report", str(written["stdlib"].path)).stdout
    assert "credentials resolved: 7, requests rejected: 1" in report
    assert "skipped" not in report
    day = written["stdlib"].events()[0]["timestamp"][:10]
    # columns: body, provider_data, total, shadowed, legacy
    assert row(report, day)[1:] == ["5", "2", "7", "1", "42.9%"]
    assert row(report, "alice", day)[2:] == ["3", "0", "3", "0", "0.0%"]
    assert row(report, "bob", day)[2:] == ["0", "2", "2", "0", "100.0%"]
    assert row(report, "carol", day)[2:] == ["1", "0", "1", "1", "100.0%"]
    assert row(report, "-", day)[2:] == ["1", "0", "1", "0", "0.0%"]  # no caller
    assert row(report, DOCS_URL, day)[2:] == ["4", "1", "5", "1", "40.0%"]
    assert row(report, CRM_URL, day)[2:] == ["1", "1", "2", "0", "50.0%"]
    still = report.split("== still on provider_data")[1].split("==")[1]
    assert {line.split()[0] for line in still.splitlines()[2:] if line} == {"bob", "carol"}
    assert row(report, "dave", "invalid_authorization")[2] == "1"
    for token in TOKENS:
        assert token not in report


def shifted(events: list[dict[str, Any]], days: list[int]) -> list[str]:
    """The events as JSON lines, the i-th moved ``days[i]`` days back."""
    lines = []
    for event, back in zip(events, days, strict=True):
        when = datetime.fromisoformat(event["timestamp"]) - timedelta(days=back)
        lines.append(json.dumps({**event, "timestamp": when.isoformat().replace("+00:00", "Z")}))
    return lines


def test_report_buckets_over_days_and_hours(written: dict[str, Written], tmp_path: Path) -> None:
    """The real events spread over three days: bob and carol stop using the header."""
    events = written["structlog"].events()
    #        alice x3, bob x2, carol, anonymous, dave (rejected)
    days = [2, 1, 1, 2, 1, 2, 0, 0]
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join(shifted(events, days)) + "\n")
    report = run_report(str(log))
    today = datetime.fromisoformat(events[-1]["timestamp"])
    d2, d1, d0 = ((today - timedelta(days=n)).strftime("%Y-%m-%d") for n in (2, 1, 0))
    assert row(report, d2)[1:] == ["2", "1", "3", "1", "66.7%"]
    assert row(report, d1)[1:] == ["2", "1", "3", "0", "33.3%"]
    assert row(report, d0)[1:] == ["1", "0", "1", "0", "0.0%"]
    assert row(report, "bob", d2)[2:] == ["0", "1", "1", "0", "100.0%"]
    assert row(report, "bob", d1)[2:] == ["0", "1", "1", "0", "100.0%"]
    still = report.split("== still on provider_data (most recent first) ==\n")[1]
    assert [line.split()[0] for line in still.splitlines()[1:3]] == ["bob", "carol"]
    hourly = run_report(str(log), "--bucket", "6h")
    assert f"{d0} " in hourly
    assert ":00" in hourly.split("== per caller")[1]


def test_report_reads_several_files_gzip_and_stdin_alike(
    written: dict[str, Written], tmp_path: Path
) -> None:
    text = written["stdlib"].text
    lines = text.splitlines(keepends=True)
    zipped = tmp_path / "old.jsonl.gz"
    with gzip.open(zipped, "wt", encoding="utf-8") as handle:
        handle.writelines(lines[:4])
    recent = tmp_path / "new.jsonl"
    recent.write_text("".join(lines[4:]))
    whole = run_report(str(written["stdlib"].path))
    assert run_report(str(zipped), str(recent)) == whole


# -- edge cases -------------------------------------------------------------------------


def test_report_of_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "audit.jsonl"
    empty.write_text("")
    report = run_report(str(empty))
    assert "credentials resolved: 0, requests rejected: 0" in report
    assert "no audit events found" in report


JUNK = [
    "not json at all",
    "{truncated",
    "\x00\x01binary\xff",
    "[1, 2, 3]",
    '"a string"',
    json.dumps({"event": "app_handled_request", "logger": "app", "timestamp": "2025-06-02T00Z"}),
    json.dumps(  # the right event name from another logger
        {"event": CREDENTIAL_RESOLVED, "logger": "elsewhere", "source": "body", "timestamp": "x"}
    ),
    json.dumps({"event": CREDENTIAL_RESOLVED, "timestamp": "2025-06-02T10:00:00Z"}),  # no source
    json.dumps({"event": CREDENTIAL_RESOLVED, "source": 3, "timestamp": "2025-06-02T10:00:00Z"}),
]
UNTIMED = [
    json.dumps({"event": CREDENTIAL_RESOLVED, "source": "body"}),
    json.dumps({"event": CREDENTIAL_RESOLVED, "source": "body", "timestamp": "yesterday"}),
    json.dumps({"event": CREDENTIAL_RESOLVED, "source": "body", "timestamp": True}),
]
GOOD = [
    # no logger field (written before it existed), no caller, naive and numeric timestamps
    {"event": CREDENTIAL_RESOLVED, "source": "provider_data", "timestamp": "2025-06-02T10:00:00"},
    {"event": CREDENTIAL_RESOLVED, "source": "body", "timestamp": 1748858400.5},
    {
        "event": CREDENTIAL_RESOLVED,
        "logger": AUDIT_LOGGER,
        "source": "body",
        "shadowed": "provider_data",  # not a list: not counted as shadowed
        "caller": "evil\x1b[2J\nline",
        "server_label": "docs",
        "timestamp": "2025-06-02T12:00:00+02:00",
    },
]


def test_report_skips_junk_and_counts_what_it_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = [*JUNK, *UNTIMED, *map(json.dumps, GOOD), "", "   "]
    log.write_bytes(b"\xff\xfe not UTF-8 \xc3\n" + "\n".join(lines).encode())
    report = run_report(str(log))
    assert "credentials resolved: 3, requests rejected: 0" in report
    assert "skipped lines: 4 not JSON, 6 not an audit event, 3 no usable timestamp" in report
    assert row(report, "2025-06-02")[1:] == ["2", "1", "3", "0", "33.3%"]
    assert row(report, "-", "2025-06-02")[2:] == ["1", "1", "2", "0", "50.0%"]
    assert "\x1b" not in report  # a hostile caller string is escaped, not obeyed
    assert row(report, "evil\\x1b[2J\\nline", "2025-06-02")[2:] == ["1", "0", "1", "0", "0.0%"]
    assert row(report, "label:docs", "2025-06-02")[2] == "1"
    assert row(report, "(default)", "2025-06-02")[2:4] == ["1", "1"]


def test_report_follows_another_legacy_source(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    lines = [
        {"event": CREDENTIAL_RESOLVED, "source": "vault", "timestamp": "2025-06-02T10:00:00Z"},
        {"event": CREDENTIAL_RESOLVED, "source": "body", "timestamp": "2025-06-02T11:00:00Z"},
    ]
    log.write_text("\n".join(map(json.dumps, lines)))
    report = run_report(str(log), "--legacy", "vault")
    assert row(report, "2025-06-02")[1:] == ["1", "1", "2", "0", "50.0%"]
    assert "== still on vault" in report


def test_weekly_buckets_start_on_monday(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    days = ["2025-06-01T23:59:59Z", "2025-06-02T00:00:00Z", "2025-06-08T23:00:00Z"]  # Sun, Mon
    events = [{"event": CREDENTIAL_RESOLVED, "source": "body", "timestamp": t} for t in days]
    log.write_text("\n".join(map(json.dumps, events)))
    report = run_report(str(log), "--bucket", "1w")
    assert row(report, "2025-05-26")[1:4] == ["1", "0", "1"]
    assert row(report, "2025-06-02")[1:4] == ["2", "0", "2"]


@pytest.mark.parametrize("bucket", ["0h", "1y", "h", "-1d", "1.5h"])
def test_report_refuses_a_bad_bucket(
    bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), f"--bucket={bucket}"])
    assert exited.value.code == 2
    assert "30m, 1h, 1d, 1w" in capsys.readouterr().err


def test_report_names_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path / "nope.jsonl")])
    assert exited.value.code == 2
    assert "nope.jsonl" in capsys.readouterr().err


# -- the plot ---------------------------------------------------------------------------


def test_plot_is_a_png(written: dict[str, Written], tmp_path: Path) -> None:
    events = written["structlog"].events()
    log = tmp_path / "audit.jsonl"
    log.write_text("\n".join(shifted(events, [2, 1, 1, 2, 1, 2, 0, 0])) + "\n")
    png = tmp_path / "migration.png"
    out = run_report(str(log), "--plot", str(png))
    assert f"plot written to {png}" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # drawn, not an empty canvas


def test_plot_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    with pytest.raises(SystemExit) as exited:
        main([str(log), "--plot", str(tmp_path / "x.png")])
    assert exited.value.code == 2
    assert PLOT_EXTRA in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_of_nothing_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("")
    with pytest.raises(SystemExit) as exited:
        main([str(log), "--plot", str(tmp_path / "x.png")])
    assert exited.value.code == 1
    assert "nothing to plot" in capsys.readouterr().err
