"""Run the whole benchmark suite and print one table: each target, what we measured, PASS/MISS.

Steps (each a child process, so glibc settings can differ per process):

1. in-process 1 KB cases and the user-written alternatives (``bench_inprocess --suite small``);
2. cost vs the number of MCP tools (``--suite tools``);
3. cost vs body size, 1 KB .. 10 MB, one worker process per app, for glibc's default
   malloc, ``MALLOC_MMAP_THRESHOLD_`` alone, and with ``MALLOC_TRIM_THRESHOLD_`` too
   (``--suite sizes``), plotted to ``docs/perf-body-size.png``;
4. peak memory of a 10 MB request (``bench_memory``);
5. instructions per request under valgrind's callgrind (``bench_instructions``; skipped
   without valgrind): the in-process cases as counts that do not move between runs;
6. the worst bodies the default limits admit: how long one holds the event loop
   (``bench_worst``);
7. over HTTP: uvicorn + wrk (``bench_http``).

All ratios are medians over rounds of per-round ratios measured side by side in one run;
in-process figures are CPU time per request. ``--quick`` takes about two minutes, the default
4-7 minutes on a 2-core machine. The numbers are for reading, not asserting: a MISS does
not change the exit status.

Run: ``python benchmarks/run_all.py [--quick] [--json FILE] [--no-plot]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import library_fingerprint

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Plan:
    small_rounds: int
    small_batch_ms: float
    batch_ms: float
    tools_rounds: int
    sizes_rounds: int
    sizes_malloc: tuple[str, ...]
    sizes: str
    memory_reps: int
    memory_apps: str
    http_rounds: int
    http_duration: int
    instruction_requests: int
    worst_repeats: int

    @property
    def http_quick(self) -> bool:
        return self.http_duration < 2


_ALL_SIZES = ",".join(str(n * 1024) for n in (1, 10, 100, 1024, 10240))
FULL = Plan(
    101,
    4,
    20,
    9,
    21,
    ("default", "mmap_only", "tuned"),
    _ALL_SIZES,
    1,
    "bare,ours,floor,basehttp",
    5,
    3,
    300,
    5,
)
QUICK = Plan(
    41, 4, 10, 5, 5, ("default", "tuned"), "1024,1048576,10485760", 1, "bare,ours", 2, 1, 100, 3
)


def _child(label: str, script: str, args: list[str], log: Any) -> dict[str, Any]:
    fd, out = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    started = time.monotonic()
    sys.stderr.write(f"  {label} ...")
    sys.stderr.flush()
    try:
        subprocess.run(  # noqa: S603 - our own scripts and arguments
            [sys.executable, str(HERE / script), *args, "--json", out],
            stdout=log,
            stderr=log,
            check=True,
            timeout=900,
        )
        result: dict[str, Any] = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    sys.stderr.write(f" {time.monotonic() - started:.0f} s\n")
    return result


def run(plan: Plan, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {}
    common = ["--batch-ms", str(plan.batch_ms)]
    small_args = ["--suite", "small", "--rounds", str(plan.small_rounds)]
    small_args += ["--batch-ms", str(plan.small_batch_ms)]
    results["inprocess_small"] = _child(
        "in-process, 1 KB cases",
        "bench_inprocess.py",
        small_args,
        log,
    )["small"]
    results["inprocess_tools"] = _child(
        "in-process, number of MCP tools",
        "bench_inprocess.py",
        ["--suite", "tools", "--rounds", str(plan.tools_rounds), *common],
        log,
    )["tools"]
    sizes: dict[str, Any] = {}
    for malloc in plan.sizes_malloc:
        size_args = ["--suite", "sizes", "--malloc", malloc, "--sizes", plan.sizes]
        sizes.update(
            _child(
                f"in-process, body sizes, malloc {malloc}",
                "bench_inprocess.py",
                [*size_args, "--rounds", str(plan.sizes_rounds), *common],
                log,
            )
        )
    results["inprocess_sizes"] = sizes
    results["memory"] = _child(
        "peak memory, 10 MB",
        "bench_memory.py",
        ["--reps", str(plan.memory_reps), "--apps", plan.memory_apps],
        log,
    )
    if shutil.which("valgrind") is not None:
        results["instructions"] = _child(
            "instructions per request (callgrind)",
            "bench_instructions.py",
            ["--requests", str(plan.instruction_requests)],
            log,
        )
    results["worst"] = _child(
        "the worst bodies the limits admit",
        "bench_worst.py",
        ["--repeats", str(plan.worst_repeats)],
        log,
    )
    http_args = ["--rounds", str(plan.http_rounds), "--duration", str(plan.http_duration)]
    results["http"] = _child(
        "HTTP, uvicorn",
        "bench_http.py",
        http_args + (["--quick"] if plan.http_quick else []),
        log,
    )
    return results


# ------------------------------------------------------------------------------ the table

Row = tuple[str, str, str, str]  # case, measured, target, result


def _check(value: float, target: float, *, at_least: bool = False) -> str:
    ok = value >= target if at_least else value <= target
    return "PASS" if ok else "MISS"


def _x(value: float) -> str:
    return f"{value:.2f}x"


def _ratio_or_na(value: float) -> str:
    return _x(value) if value != float("inf") else "n/a (floor's extra <= 0)"


def rows(results: dict[str, Any]) -> list[Row | str]:
    """The table: one section per step, in the order they ran."""
    return [
        *_small_rows(results["inprocess_small"]),
        *_tools_rows(results["inprocess_tools"]),
        *_instruction_rows(results.get("instructions")),
        *_size_rows(results["inprocess_sizes"]),
        *_memory_rows(results["memory"]),
        *_worst_rows(results.get("worst")),
        *_http_rows(results["http"]),
    ]


def _small_rows(small: dict[str, Any]) -> list[Row | str]:
    """The 1 KB cases: ours, the floors, the control, BaseHTTPMiddleware."""
    out: list[Row | str] = []
    r, us = small["ratios"], small["per_call_us"]
    out.append(f"In-process ASGI, CPU time, median of {small['rounds']} rounds of per-round ratios")
    ours_extra, decode_extra = r["cred_1k"] - 1, r["decode_floor_1k"] - 1
    to_decode = ours_extra / decode_extra if decode_extra > 0 else float("inf")
    out.append(
        (
            "1 KB JSON POST, 1 credential (audit, telemetry off): our extra / decode floor's",
            f"{_x(to_decode)} (ours {_x(r['cred_1k'])}, decode floor "
            f"{_x(r['decode_floor_1k'])} of bare; {us['bare']:.0f} -> {us['ours']:.0f} µs)",
            "<= 2.0x",
            _check(to_decode, 2.0),
        )
    )
    basehttp_extra = r["basehttp_1k"] - 1
    cheaper = basehttp_extra / ours_extra if ours_extra > 0 else float("inf")
    out.append(
        (
            "  BaseHTTPMiddleware doing the same job: its extra / ours",
            f"{_x(cheaper)} ({_x(r['basehttp_1k'])} of bare)",
            ">= 10x",
            _check(cheaper, 10.0, at_least=True),
        )
    )
    out.append(
        (
            "  same, audit on (JSON lines to a file) / bare+1 event",
            f"{_x(r['audit_1k'])} ({us['bare_audit']:.0f} -> {us['ours_audit']:.0f} µs)",
            "",
            "info",
        )
    )
    for key, label, name in (
        ("get", "GET / bare", "@get"),
        ("non_json", "POST text/plain 1 KB / bare", "@text"),
        ("other_path", "POST JSON, path not in `paths` / bare", "@other_path"),
    ):
        ours_name = "ours_paths" if key == "other_path" else "ours"
        lo, hi = small["iqr"][key]
        out.append(
            (
                label,
                f"{r[key]:.3f}x, IQR {lo:.2f}-{hi:.2f} ({us['bare' + name]:.1f} -> "
                f"{us[ours_name + name]:.1f} µs)",
                "<= 1.03x",
                _check(r[key], 1.03),
            )
        )
    lo, hi = small["iqr"]["control_passthrough"]
    out.append(
        (
            "(control) no-op pure-ASGI middleware / bare",
            f"{r['control_passthrough']:.3f}x, IQR {lo:.2f}-{hi:.2f}",
            "",
            "info",
        )
    )
    for key, label in (
        ("floor_1k", "(floor) buffer + bytes scan + replay, 1 KB / bare"),
        ("decode_floor_1k", "(bound) floor with our decode + a ContextVar, 1 KB / bare"),
    ):
        out.append((label, _x(r[key]), "", "info"))

    return out


def _tools_rows(tools: dict[str, Any]) -> list[Row | str]:
    """Cost against the number of MCP tools."""
    out: list[Row | str] = []
    out.append("Cost vs number of MCP tools (1 KB+ body, audit off unless said)")
    for n in ("1", "10", "100", "128"):
        t = tools[n]
        out.append(
            (
                f"{n} tool{'s' if n != '1' else ''} ({t['body_bytes'] / 1024:.0f} KB): ours / bare",
                f"{_x(t['ratio'])} (+{t['extra_us']:.0f} µs, {t['extra_per_tool_us']:.1f}/tool; "
                f"audit on +{t['audit_extra_us']:.0f} µs)",
                "",
                "info",
            )
        )

    return out


def _size_rows(sizes: dict[str, Any]) -> list[Row | str]:
    """Big bodies, one process per app, per glibc malloc setting."""
    out: list[Row | str] = []
    out.append(
        "Big bodies: ours' extra over bare / the decode floor's extra, one process per app "
        "(page faults/req: bare/decode floor/ours)"
    )
    for data in sizes.values():
        name = data["malloc"]
        targeted = name in ("default", "tuned")
        for size, label in ((str(2**20), "1 MB"), (str(10 * 2**20), "10 MB")):
            row = data["sizes"].get(size)
            if row is None:
                continue
            by_floor = row["extra_vs_floor"]
            bound = by_floor.get("decode_floor")
            value = by_floor["ours"] / bound if bound else float("inf")
            extra, faults = row["extra_us"], row["page_faults_per_call"]
            # Page faults that differ between the apps mean glibc's allocator is in another
            # state in each process (its dynamic mmap threshold): the times do not compare.
            compared = (faults["bare"], faults["decode_floor"], faults["ours"])
            comparable = value != float("inf") and value > 0 and _same(compared)
            out.append(
                (
                    f"{label}, malloc {name}: our extra / decode floor's",
                    f"{_ratio_or_na(value)} (+{extra['ours'] / 1000:.2f} ms vs "
                    f"+{extra['decode_floor'] / 1000:.2f} ms; floor "
                    f"+{extra['floor'] / 1000:.2f} ms; bare "
                    f"{row['per_call_us']['bare'] / 1000:.2f} ms; page faults/req "
                    f"{faults['bare']:.0f}/{faults['decode_floor']:.0f}/{faults['ours']:.0f})",
                    "<= 1.15x" if targeted else "",
                    (_check(value, 1.15) if comparable else "n/a") if targeted else "info",
                )
            )
            out.append(
                (
                    f"  BaseHTTPMiddleware, {label}, malloc {name}",
                    f"{_ratio_or_na(row['extra_vs_floor']['basehttp'])} "
                    f"(+{extra['basehttp'] / 1000:.2f} ms)",
                    "",
                    "info",
                )
            )

    return out


def _memory_rows(memory: dict[str, Any]) -> list[Row | str]:
    """Peak memory of one 10 MB request."""
    out: list[Row | str] = []
    body_mb = memory["body_bytes"] / 2**20
    out.append(f"Peak memory of one {body_mb:.0f} MB request, beyond the bare app, per body size")
    for env in ("default", "tuned"):
        res = memory[env]
        beyond = res["beyond_bare_per_body"]
        peak = res["peak_bytes"]
        value = beyond["ours"]["rss_peak"]
        out.append(
            (
                f"ours, peak RSS, malloc {env}",
                f"{_x(value)} (bare {peak['bare']['rss_peak'] / 2**20:.1f} MB, ours "
                f"{peak['ours']['rss_peak'] / 2**20:.1f} MB; tracemalloc "
                f"{_x(beyond['ours']['traced_peak'])})",
                "<= 1.25x",
                _check(value, 1.25),
            )
        )
        for other in ("floor", "basehttp"):
            if other in beyond:
                out.append(
                    (
                        f"  {other}, peak RSS, malloc {env}",
                        _x(beyond[other]["rss_peak"]),
                        "",
                        "info",
                    )
                )

    return out


def _worst_rows(worst: dict[str, Any] | None) -> list[Row | str]:
    """The worst bodies the default limits admit."""
    if worst is None:
        return []
    out: list[Row | str] = []
    out.append("The worst bodies the default limits admit, wall time holding the event loop")
    out.append(
        (
            "the worst of them",
            f"{worst['worst_ms']:.1f} ms ({worst['worst']})",
            "<= 100 ms",
            _check(worst["worst_ms"], 100.0),
        )
    )

    return out


def _http_rows(http: dict[str, Any]) -> list[Row | str]:
    """Over HTTP: uvicorn against the load generator."""
    out: list[Row | str] = []
    apps = http["apps"]
    ours, bare = apps["ours"], apps["bare"]
    out.append(
        f"HTTP: uvicorn+httptools+uvloop (CPU 0), {http['client']} (CPU 1), 1 KB + credential, "
        f"{http['connections']} conns, {http['rounds']} x {http['duration_s']:.0f} s"
    )
    decode = apps.get("decode_floor")
    if decode is not None:
        to_decode = ours["rps_ratio"] / decode["rps_ratio"]
        out.append(
            (
                "ours / decode floor, requests/s",
                f"{_x(to_decode)} ({decode['rps']:.0f} -> {ours['rps']:.0f}/s; ours / bare "
                f"{_x(ours['rps_ratio'])}, {bare['rps']:.0f}/s)",
                ">= 0.90x",
                _check(to_decode, 0.90, at_least=True),
            )
        )
    out.append(
        (
            "ours / bare, p99 latency",
            f"{_x(ours['p99_ratio'])} ({bare['p99_ms']:.1f} -> {ours['p99_ms']:.1f} ms)",
            "",
            "info",
        )
    )
    out.append(
        (
            "ours / bare, server CPU time per request",
            f"{_x(ours['cpu_ratio'])} ({bare['cpu_per_request_us']:.0f} -> "
            f"{ours['cpu_per_request_us']:.0f} µs)",
            "",
            "info",
        )
    )
    for name, label in (
        ("floor", "floor (buffer + bytes scan + replay)"),
        ("decode_floor", "(bound) decode floor"),
        ("basehttp", "BaseHTTPMiddleware"),
    ):
        if name in apps:
            a = apps[name]
            out.append(
                (
                    f"  {label} / bare: req/s, p99, CPU/req",
                    f"{_x(a['rps_ratio'])}, {_x(a['p99_ratio'])}, {_x(a['cpu_ratio'])}",
                    "",
                    "info",
                )
            )
    errors = sum(a["errors"] for a in apps.values())
    if errors:
        out.append(("HTTP errors (non-2xx, socket) in the runs", str(errors), "0", "MISS"))
    return out


def _instruction_rows(counts: dict[str, Any] | None) -> list[Row | str]:
    """The in-process cases again, as instructions per request: no target, no noise."""
    title = "Instructions per request (callgrind): the same every run; not time"
    if counts is None:
        return [f"{title}: skipped, valgrind is not installed"]
    out: list[Row | str] = [title]
    for case, apps in counts["instructions_per_request"].items():
        base_app, base = next(iter(apps.items()))
        for app, count in list(apps.items())[1:]:
            out.append(
                (
                    f"{case}: {app} / {base_app}",
                    f"{count / base:.3f}x ({base:,.0f} -> {count:,.0f})",
                    "",
                    "info",
                )
            )
    return out


def _same(values: Any) -> bool:
    """Whether the values are within 10 % of each other (page faults per request)."""
    low, high = min(values), max(values)
    return bool(high - low <= 0.1 * high)


def render(table: list[Row | str]) -> str:
    widths = [0, 0, 0, 0]
    for row in table:
        if not isinstance(row, str):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    header: Row = ("case", "measured", "target", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = "+".join("-" * (w + 2) for w in widths)

    def fmt(row: Row) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))

    lines = [fmt(header), line]
    for row in table:
        if isinstance(row, str):
            lines.append(f"== {row}")
        else:
            lines.append(fmt(row))
    misses = sum(1 for row in table if not isinstance(row, str) and row[3] == "MISS")
    passes = sum(1 for row in table if not isinstance(row, str) and row[3] == "PASS")
    lines.append(line)
    lines.append(f"{passes} PASS, {misses} MISS")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="about two minutes, fewer rounds")
    parser.add_argument("--json", help="also write every raw figure to this file")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--log", help="the steps' own output (default: a temporary file)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.monotonic()
    before = library_fingerprint()
    sys.stderr.write(f"benchmarks ({'quick' if args.quick else 'full'}):\n")
    log_path = args.log or tempfile.mkstemp(prefix="bench-run-", suffix=".log")[1]
    with open(log_path, "w") as log:
        results = run(plan, log)
    if not args.log:
        os.unlink(log_path)
    if not args.no_plot:
        from bench_plot import plot

        sys.stderr.write(f"  plot: {plot(results['inprocess_sizes'])}\n")
    sys.stderr.write(f"  total {time.monotonic() - started:.0f} s\n\n")
    after = library_fingerprint()
    results["library"] = after
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    changed = (
        ""
        if after["sha256"] == before["sha256"]
        else f"  CHANGED DURING THE RUN (was {before['sha256']}): rerun"
    )
    print(
        f"mcp_auth_middleware at git {after['head']} (package modified since: "
        f"{after['package_modified']}), sources sha256 {after['sha256']}{changed}"
    )
    print(render(rows(results)))


if __name__ == "__main__":
    main()
