"""The migration report: who still sends credentials through the legacy header.

``python -m mcp_auth_middleware.report AUDIT.jsonl [MORE.jsonl ...]`` reads audit events
written as JSON lines (see ``docs/operations.md``) and prints, per caller and per server and
time bucket, how many credentials came from each source, how many shadowed a legacy one (the
caller sends both), and the share on the legacy header: the credentials that
``provider_data="reject"`` would refuse. ``--plot FILE.png`` draws it (needs matplotlib:
``pip install 'mcp-auth-middleware[report]'``). Lines that are not JSON, not audit events or
without a usable timestamp are skipped and counted.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

from mcp_auth_middleware.audit import (
    AUDIT_LOGGER,
    CREDENTIAL_REJECTED,
    CREDENTIAL_RESOLVED,
    log_safe,
)
from mcp_auth_middleware.credentials import CredentialSource

__all__ = ["Summary", "Tally", "main", "parse_bucket", "plot", "read_events", "render"]

LEGACY: Final = CredentialSource.PROVIDER_DATA.value
UNKNOWN_CALLER: Final = "-"
PLOT_EXTRA: Final = "pip install 'mcp-auth-middleware[report]'"
_BUCKET = re.compile(r"(\d+)([mhdw])")
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SOURCE_ORDER: Final = tuple(s.value for s in CredentialSource)
_MONDAY: Final = 4 * 86400  # 1970-01-05, the first Monday after the epoch

K = TypeVar("K")

# Why a line was skipped.
NOT_JSON: Final = "not JSON"
NOT_AUDIT: Final = "not an audit event"
NO_TIME: Final = "no usable timestamp"


def parse_bucket(text: str) -> int:
    """``30m``, ``1h``, ``1d``, ``1w`` to seconds."""
    match = _BUCKET.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a positive count and a unit, as in 30m, 1h, 1d, 1w"
        )
    return int(match[1]) * _UNIT_SECONDS[match[2]]


@dataclass
class Tally:
    """Credentials of one group in one bucket."""

    sources: Counter[str] = field(default_factory=Counter)
    #: credentials that shadowed a legacy one: the caller sent both
    shadowed: int = 0

    @property
    def total(self) -> int:
        return sum(self.sources.values())

    def legacy_share(self, legacy: str) -> float:
        """Share of credentials sent through ``legacy``, winning or shadowed."""
        total = self.total
        return (self.sources[legacy] + self.shadowed) / total if total else 0.0


@dataclass
class Summary:
    """What the audit lines say, grouped for the report."""

    bucket: int
    legacy: str = LEGACY
    resolved: int = 0
    rejected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first: datetime | None = None
    last: datetime | None = None
    by_bucket: dict[int, Tally] = field(default_factory=dict)
    by_caller: dict[tuple[str, int], Tally] = field(default_factory=dict)
    by_server: dict[tuple[str, int], Tally] = field(default_factory=dict)
    #: (caller, server) -> [credentials on the legacy header, last seen]
    on_legacy: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    #: (caller, code) -> [rejections, last seen]
    rejections: dict[tuple[str, str], list[Any]] = field(default_factory=dict)

    def sources(self) -> list[str]:
        """Every source seen, built-in ones first, in their default precedence."""
        seen: set[str] = set()
        for tally in self.by_bucket.values():
            seen.update(tally.sources)
        seen.add(self.legacy)
        return [s for s in _SOURCE_ORDER if s in seen] + sorted(seen - set(_SOURCE_ORDER))

    def add(self, event: dict[str, Any], when: datetime) -> None:
        if self.first is None or when < self.first:
            self.first = when
        if self.last is None or when > self.last:
            self.last = when
        bucket = _bucket_start(int(when.timestamp()), self.bucket)
        caller = _text(event.get("caller")) or UNKNOWN_CALLER
        if event["event"] == CREDENTIAL_REJECTED:
            self.rejected += 1
            _seen(self.rejections, (caller, _text(event.get("code")) or "?"), when)
            return
        self.resolved += 1
        source: str = event["source"]
        server = _server(event)
        shadowed = event.get("shadowed")
        both = isinstance(shadowed, list) and self.legacy in shadowed
        for tally in (
            _tally(self.by_bucket, bucket),
            _tally(self.by_caller, (caller, bucket)),
            _tally(self.by_server, (server, bucket)),
        ):
            tally.sources[source] += 1
            tally.shadowed += both
        if source == self.legacy or both:
            _seen(self.on_legacy, (caller, server), when)


def _bucket_start(seconds: int, size: int) -> int:
    """Buckets are aligned on the Unix epoch (days start at midnight UTC), weeks on Monday
    (the epoch was a Thursday)."""
    offset = _MONDAY if size % _UNIT_SECONDS["w"] == 0 else 0
    return (seconds - offset) // size * size + offset


def _tally(table: dict[K, Tally], key: K) -> Tally:
    tally = table.get(key)
    if tally is None:
        tally = table[key] = Tally()
    return tally


def _seen(table: dict[tuple[str, str], list[Any]], key: tuple[str, str], when: datetime) -> None:
    entry = table.get(key)
    if entry is None:
        table[key] = [1, when]
    else:
        entry[0] += 1
        entry[1] = max(entry[1], when)


def _text(value: Any) -> str | None:
    return None if value is None else log_safe(str(value))


def _server(event: dict[str, Any]) -> str:
    """The server a credential was for: its URL, else its label, else the unbound default."""
    url = _text(event.get("server_url"))
    if url:
        return url
    label = _text(event.get("server_label"))
    return f"label:{label}" if label else "(default)"


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def read_events(lines: Iterable[str], summary: Summary) -> Summary:
    """Add the audit events among ``lines`` to ``summary``; count the lines skipped."""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            summary.skipped[NOT_JSON] += 1
            continue
        if (
            not isinstance(event, dict)
            or event.get("event") not in (CREDENTIAL_RESOLVED, CREDENTIAL_REJECTED)
            or event.get("logger", AUDIT_LOGGER) != AUDIT_LOGGER
            or (event["event"] == CREDENTIAL_RESOLVED and not isinstance(event.get("source"), str))
        ):
            summary.skipped[NOT_AUDIT] += 1
            continue
        when = _timestamp(event.get("timestamp"))
        if when is None:
            summary.skipped[NO_TIME] += 1
            continue
        summary.add(event, when)
    return summary


# -- rendering --------------------------------------------------------------------------


def _when(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket_label(start: int, size: int) -> str:
    when = datetime.fromtimestamp(start, UTC)
    return when.strftime("%Y-%m-%d") if size % 86400 == 0 else when.strftime("%Y-%m-%d %H:%M")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned text columns, right-aligned numbers."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(header))]
    out = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if number else cell.ljust(width)
            for cell, width, number in zip(row, widths, numeric, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _is_number(cell: str) -> bool:
    return cell.rstrip("%").replace(".", "", 1).isdigit()


def _tally_cells(tally: Tally, sources: Sequence[str], legacy: str) -> list[str]:
    return [
        *(str(tally.sources[s]) for s in sources),
        str(tally.total),
        str(tally.shadowed),
        f"{100 * tally.legacy_share(legacy):.1f}%",
    ]


def _human_bucket(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"  # pragma: no cover - parse_bucket gives whole minutes


def render(summary: Summary) -> str:
    """The report as text."""
    lines = _heading(summary)
    if not summary.resolved and not summary.rejected:
        lines.append("no audit events found")
    else:
        lines += _tables(summary)
    return "\n".join(lines) + "\n"


def _heading(summary: Summary) -> list[str]:
    """The totals, the time span and the lines skipped."""
    lines = [
        f"MCP credential audit: credentials resolved: {summary.resolved}, "
        f"requests rejected: {summary.rejected}"
    ]
    if summary.first is not None and summary.last is not None:
        lines.append(
            f"from {_when(summary.first)} to {_when(summary.last)}, "
            f"buckets of {_human_bucket(summary.bucket)} (UTC)"
        )
    if summary.skipped:
        reasons = ", ".join(
            f"{summary.skipped[why]} {why}"
            for why in (NOT_JSON, NOT_AUDIT, NO_TIME)
            if summary.skipped[why]
        )
        lines.append(f"skipped lines: {reasons}")
    return lines


def _tables(summary: Summary) -> list[str]:
    """All callers, per caller, per server, who is still on the legacy header, rejections."""
    legacy = summary.legacy
    sources = summary.sources()
    counts = [*sources, "total", "shadowed", "legacy"]
    lines = [
        "",
        f"shadowed: credentials that won over a {legacy} credential sent with them (the",
        "  caller sends both).",
        f"legacy: credentials sent through {legacy}, winning or shadowed, as a share of all:",
        f"  what {legacy}=reject would refuse.",
    ]
    if summary.by_bucket:
        lines += ["", "== all callers =="]
        rows = [
            [_bucket_label(b, summary.bucket), *_tally_cells(t, sources, legacy)]
            for b, t in sorted(summary.by_bucket.items())
        ]
        lines += _table(["bucket", *counts], rows)
    for title, name, table in (
        ("per caller", "caller", summary.by_caller),
        ("per server", "server", summary.by_server),
    ):
        if not table:
            continue
        lines += ["", f"== {title} =="]
        rows = [
            [key, _bucket_label(b, summary.bucket), *_tally_cells(t, sources, legacy)]
            for (key, b), t in sorted(table.items())
        ]
        lines += _table([name, "bucket", *counts], rows)
    lines += ["", f"== still on {legacy} (most recent first) =="]
    if summary.on_legacy:
        rows = [
            [caller, server, str(n), _when(last)]
            for (caller, server), (n, last) in sorted(
                summary.on_legacy.items(), key=lambda item: (item[1][1], item[0]), reverse=True
            )
        ]
        lines += _table(["caller", "server", "credentials", "last seen"], rows)
    else:
        lines.append(f"nobody: no credential came through {legacy}")
    if summary.rejections:
        lines += ["", "== rejections =="]
        rows = [
            [caller, code, str(n), _when(last)]
            for (caller, code), (n, last) in sorted(summary.rejections.items())
        ]
        lines += _table(["caller", "code", "requests", "last seen"], rows)
    return lines


# -- plotting ---------------------------------------------------------------------------

_COLORS: Final = {"body": "tab:blue", "server_header": "tab:green"}
_TOP_CALLERS: Final = 8


def plot(summary: Summary, path: Path) -> None:
    """Two panels over the buckets: credentials by source (stacked, legacy on top) with the
    legacy share; the legacy share of each caller that used the legacy header, those seen
    on it most recently first."""
    from matplotlib.figure import Figure  # optional: the ``report`` extra

    figure = Figure(figsize=(12, 7.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    _plot_sources(top, summary)
    _plot_callers(bottom, summary)
    figure.savefig(path, dpi=100)


_OUTSIDE: Final = {"loc": "upper left", "bbox_to_anchor": (1.07, 1.0), "fontsize": "small"}


def _middle(summary: Summary, bucket: int) -> datetime:
    return datetime.fromtimestamp(bucket + summary.bucket // 2, UTC)


def _plot_sources(top: Any, summary: Summary) -> None:
    """Credentials by source per bucket, stacked with the legacy source on top, and the
    legacy share."""
    legacy = summary.legacy
    buckets = sorted(summary.by_bucket)
    x = [_middle(summary, b) for b in buckets]
    width = summary.bucket / 86400 * 0.8  # in days, matplotlib's date unit
    base = [0] * len(buckets)
    for source in [s for s in summary.sources() if s != legacy] + [legacy]:
        heights = [summary.by_bucket[b].sources[source] for b in buckets]
        color = "tab:red" if source == legacy else _COLORS.get(source)
        top.bar(x, heights, width, bottom=base, label=source, color=color)
        base = [a + b for a, b in zip(base, heights, strict=True)]
    both = [summary.by_bucket[b].shadowed for b in buckets]
    hatch = {"fill": False, "hatch": "//", "edgecolor": "tab:red"}
    top.bar(x, both, width, label=f"sent {legacy} too\n(shadowed)", **hatch)
    top.set_ylabel("credentials")
    top.set_title(f"Credentials by source, buckets of {_human_bucket(summary.bucket)} (UTC)")
    share = top.twinx()
    shares = [100 * summary.by_bucket[b].legacy_share(legacy) for b in buckets]
    share.plot(x, shares, color="black", marker="o", label="legacy share (%)")
    share.set_ylim(0, 105)
    share.set_ylabel("legacy share (%)")
    handles, labels = top.get_legend_handles_labels()
    more_handles, more_labels = share.get_legend_handles_labels()
    top.legend(handles + more_handles, labels + more_labels, **_OUTSIDE)


def _plot_callers(bottom: Any, summary: Summary) -> None:
    """The legacy share of each caller that used the legacy header, the most recently seen
    there first."""
    legacy = summary.legacy
    seen: dict[str, list[Any]] = {}  # caller -> [last seen on legacy, credentials]
    for (caller, _), (n, last) in summary.on_legacy.items():
        entry = seen.setdefault(caller, [last, 0])
        entry[0] = max(entry[0], last)
        entry[1] += n
    ranked = sorted(seen, key=lambda c: (seen[c][0], seen[c][1]), reverse=True)
    for caller in ranked[:_TOP_CALLERS]:
        points = [
            (_middle(summary, b), 100 * t.legacy_share(legacy))
            for (c, b), t in sorted(summary.by_caller.items(), key=lambda i: i[0][1])
            if c == caller
        ]
        bottom.plot(*zip(*points, strict=True), marker="o", label=caller)
    title = f"Legacy share per caller (%), the {_TOP_CALLERS} last seen on {legacy}"
    if len(ranked) <= _TOP_CALLERS:
        title = f"Legacy share per caller that used {legacy} (%)"
    bottom.set_title(title)
    if ranked:
        bottom.legend(**_OUTSIDE)
    else:
        bottom.text(0.5, 0.5, f"no caller used {legacy}", ha="center", transform=bottom.transAxes)
    bottom.set_ylim(-5, 105)
    bottom.set_ylabel("legacy share (%)")
    bottom.set_xlabel("time (UTC)")


# -- command line -----------------------------------------------------------------------


def _lines(paths: Sequence[str]) -> Iterator[str]:
    for name in paths:
        if name == "-":
            yield from sys.stdin
            continue
        opener: Any = gzip.open if name.endswith(".gz") else open
        with opener(name, "rt", encoding="utf-8", errors="replace") as handle:
            yield from handle


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mcp_auth_middleware.report",
        description="Which callers still send MCP credentials through the legacy header, "
        "from audit events written as JSON lines.",
    )
    parser.add_argument(
        "files", nargs="+", metavar="AUDIT.jsonl", help="audit log files (.gz read too; - stdin)"
    )
    parser.add_argument(
        "--bucket",
        type=parse_bucket,
        default="1d",
        help="time bucket: 30m, 1h, 6h, 1d (default), 1w",
    )
    parser.add_argument(
        "--legacy",
        default=LEGACY,
        help=f"the source being migrated off (default {LEGACY})",
    )
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw the report")
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.exit(2, f"--plot needs matplotlib: {PLOT_EXTRA}\n")
    summary = Summary(bucket=args.bucket, legacy=args.legacy)
    try:
        read_events(_lines(args.files), summary)
    except OSError as exc:
        parser.exit(2, f"cannot read {exc.filename}: {exc.strerror}\n")
    out.write(render(summary))
    if args.plot is not None:
        if not summary.by_bucket:
            parser.exit(1, "nothing to plot: no credential events\n")
        plot(summary, args.plot)
        out.write(f"\nplot written to {args.plot}\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
