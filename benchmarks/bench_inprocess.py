"""In-process cost of the middleware, as ratios to a bare Starlette app measured in one run.

Each group drives the ASGI apps directly (no sockets), interleaved round by round (the order
rotates), ``calls`` requests per batch sized to ~``--batch-ms``; the figure quoted is the
median over rounds of the per-round ratio, which holds when the machine's speed drifts.
Times are this process's CPU time per request (wall time is in the JSON too).

Suites:

* ``small``: 1 KB JSON POST with one MCP credential (ours, audit off / on, the floor, the
  user-written alternatives) and the requests with nothing to read (GET, a body that is no
  JSON object, another path).
* ``tools``: 1, 10, 100, 128 (``max_tools``) MCP tools (each with its own server and token)
  in a request.
* ``sizes``: 1 KB .. 10 MB bodies for bare / ours / floor / decode floor (the bound: our
  decode and nothing else) / BaseHTTPMiddleware. Big-body
  cost depends on glibc's ``MALLOC_MMAP_THRESHOLD_``, which is read at start-up: run this
  suite in a child process with and without it (``run_all.py`` does).

Run: ``python benchmarks/bench_inprocess.py [--suite small|tools|sizes|all] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
from typing import Any

import common
from common import (
    KB,
    MALLOC_ENVS,
    MB,
    HTTPRequest,
    Variant,
    build_app,
    measure,
    post_json,
    responses_body,
)

SIZES = (1 * KB, 10 * KB, 100 * KB, 1 * MB, 10 * MB)
TOOL_COUNTS = (1, 10, 100, 128)  # 128: max_tools, the most a request may carry


def _us(values: list[float]) -> float:
    return common.median(values) * 1e6


def suite_small(rounds: int, batch_s: float) -> dict[str, Any]:
    fd, log_path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    try:
        cred = post_json(responses_body(1 * KB))
        get = HTTPRequest("GET", "/v1/models")
        text = HTTPRequest("POST", "/v1/files", b"x" * KB, b"text/plain")
        other = post_json(responses_body(1 * KB), "/v1/chat/completions")
        apps = {
            name: build_app(name)
            for name in (
                "bare",
                "passthrough",
                "ours",
                "floor",
                "decode_floor",
                "basehttp",
                "bare_audit",
                "ours_audit",
                "ours_paths",
            )
        }
        plan = [
            ("bare", "bare", cred),
            ("passthrough", "passthrough", cred),
            ("ours", "ours", cred),
            ("floor", "floor", cred),
            ("decode_floor", "decode_floor", cred),
            ("basehttp", "basehttp", cred),
            ("bare_audit", "bare_audit", cred),
            ("ours_audit", "ours_audit", cred),
            ("bare@get", "bare", get),
            ("ours@get", "ours", get),
            ("bare@text", "bare", text),
            ("ours@text", "ours", text),
            ("bare@other_path", "bare", other),
            ("ours_paths@other_path", "ours_paths", other),
        ]
        res = measure(
            [Variant(name, apps[app], req) for name, app, req in plan],
            rounds=rounds,
            batch_s=batch_s,
        )
    finally:
        close()
        os.unlink(log_path)

    def r(a: str, b: str) -> float:
        return common.ratio(res[a].cpu, res[b].cpu)

    pairs = {
        "cred_1k": ("ours", "bare"),
        "audit_1k": ("ours_audit", "bare_audit"),
        "get": ("ours@get", "bare@get"),
        "non_json": ("ours@text", "bare@text"),
        "other_path": ("ours_paths@other_path", "bare@other_path"),
        "control_passthrough": ("passthrough", "bare"),
    }

    return {
        "rounds": rounds,
        "per_call_us": {name: _us(v.cpu) for name, v in res.items()},
        "per_call_wall_us": {name: _us(v.wall) for name, v in res.items()},
        "ratios": {
            "cred_1k": r("ours", "bare"),
            "cred_1k_wall": common.ratio(res["ours"].wall, res["bare"].wall),
            "control_passthrough": r("passthrough", "bare"),
            "floor_1k": r("floor", "bare"),
            "decode_floor_1k": r("decode_floor", "bare"),
            "basehttp_1k": r("basehttp", "bare"),
            "audit_1k": r("ours_audit", "bare_audit"),
            "get": r("ours@get", "bare@get"),
            "non_json": r("ours@text", "bare@text"),
            "other_path": r("ours_paths@other_path", "bare@other_path"),
        },
        "iqr": {k: common.spread(res[a].cpu, res[b].cpu) for k, (a, b) in pairs.items()},
        "extra_us": {
            "ours": common.median_diff(res["ours"].cpu, res["bare"].cpu) * 1e6,
            "ours_audit": common.median_diff(res["ours_audit"].cpu, res["bare"].cpu) * 1e6,
            "bare_audit": common.median_diff(res["bare_audit"].cpu, res["bare"].cpu) * 1e6,
        },
    }


def suite_tools(rounds: int, batch_s: float) -> dict[str, Any]:
    fd, log_path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    try:
        bare, ours, audit = build_app("bare"), build_app("ours"), build_app("ours_audit")
        out: dict[str, Any] = {"rounds": rounds}
        for n in TOOL_COUNTS:
            req = post_json(responses_body(1 * KB, tools=n))
            res = measure(
                [
                    Variant("bare", bare, req),
                    Variant("ours", ours, req),
                    Variant("ours_audit", audit, req),
                ],
                rounds=rounds,
                batch_s=batch_s,
            )
            extra = common.median_diff(res["ours"].cpu, res["bare"].cpu) * 1e6
            out[str(n)] = {
                "body_bytes": len(req.body),
                "bare_us": _us(res["bare"].cpu),
                "ours_us": _us(res["ours"].cpu),
                "ours_audit_us": _us(res["ours_audit"].cpu),
                "ratio": common.ratio(res["ours"].cpu, res["bare"].cpu),
                "extra_us": extra,
                "extra_per_tool_us": extra / n,
                "audit_extra_us": common.median_diff(res["ours_audit"].cpu, res["bare"].cpu) * 1e6,
            }
    finally:
        close()
        os.unlink(log_path)
    return out


class Worker:
    """One app in a child process of its own, timing batches on request (JSON lines).

    Big bodies go through glibc's allocator, whose state (dynamic mmap and trim thresholds)
    is per process and shaped by what the process did before: each app gets its own
    process, as in production, while the parent still interleaves them round by round.
    """

    def __init__(self, app: str, malloc: str) -> None:
        self.app = app
        self.proc = subprocess.Popen(  # noqa: S603 - our own arguments
            [sys.executable, __file__, "--worker", app],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=common.child_env(malloc),
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        proc = self.proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 300)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"worker {self.app} gave no answer (exit {proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def worker(app_name: str) -> None:
    """The child side of :class:`Worker`."""
    app = build_app(app_name)
    loop = asyncio.new_event_loop()
    requests: dict[int, HTTPRequest] = {}
    frozen = False
    for line in sys.stdin:
        command = json.loads(line)
        size = command["size"]
        if size not in requests:
            requests[size] = post_json(responses_body(size))
        request = requests[size]
        if command["op"] == "calibrate":
            calls = common.calibrate(loop, app_name, app, request, batch_s=command["batch_s"])
            answer: dict[str, Any] = {"calls": calls}
        else:
            if not frozen:
                gc.collect()
                gc.freeze()
                frozen = True
            gc.collect()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            cpu, wall = common.timed_batch(loop, app, request, command["calls"])
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            answer = {"cpu": cpu, "wall": wall, "faults": faults / command["calls"]}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    loop.close()


def suite_sizes(
    rounds: int, batch_s: float, malloc: str, sizes: tuple[int, ...] = SIZES
) -> dict[str, Any]:
    names = ("bare", "ours", "floor", "decode_floor", "basehttp")
    out: dict[str, Any] = {"rounds": rounds, "malloc": malloc, "env": MALLOC_ENVS[malloc]}
    out["sizes"] = {}
    workers = {name: Worker(name, malloc) for name in names}
    try:
        for size in sizes:
            calls = {
                name: w.ask(op="calibrate", size=size, batch_s=batch_s)["calls"]
                for name, w in workers.items()
            }
            cpu: dict[str, list[float]] = {name: [] for name in names}
            faults: dict[str, list[float]] = {name: [] for name in names}
            for r in range(rounds):
                shift = r % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    got = workers[name].ask(op="batch", size=size, calls=calls[name])
                    cpu[name].append(got["cpu"])
                    faults[name].append(got["faults"])
            bare = cpu["bare"]
            row: dict[str, Any] = {"per_call_us": {n: _us(cpu[n]) for n in names}}
            row["page_faults_per_call"] = {n: common.median(faults[n]) for n in names}
            row["extra_us"] = {n: common.median_diff(cpu[n], bare) * 1e6 for n in names[1:]}
            row["ratio"] = {n: common.ratio(cpu[n], bare) for n in names[1:]}
            row["extra_vs_floor"] = {
                n: common.extra_ratio(cpu[n], cpu["floor"], bare)
                for n in ("ours", "decode_floor", "basehttp")
            }
            # How much the figure moves: the quartiles of the same ratio taken round by round.
            for n, key in (("ours", "extra_vs_floor_iqr"), ("decode_floor", "decode_floor_iqr")):
                per_round = [
                    (o - b) / (f - b)
                    for o, f, b in zip(cpu[n], cpu["floor"], bare, strict=True)
                    if f > b
                ]
                row[key] = common.quartiles(per_round) if len(per_round) >= 4 else None
            out["sizes"][str(size)] = row
    finally:
        for w in workers.values():
            w.close()
    return out


def _fmt_size(size: int) -> str:
    return f"{size // MB} MB" if size >= MB else f"{size // KB} KB"


def report(results: dict[str, Any]) -> None:
    """A human-readable summary on stderr (``run_all.py`` prints the table of targets)."""
    say = sys.stderr.write
    if "small" in results:
        small = results["small"]
        say(f"small ({small['rounds']} rounds), CPU µs per request, median:\n")
        for name, us in small["per_call_us"].items():
            say(f"  {name:24} {us:9.1f}\n")
        for key, value in small["ratios"].items():
            iqr = small["iqr"].get(key)
            tail = f"  (IQR of rounds {iqr[0]:.3f}-{iqr[1]:.3f})" if iqr else ""
            say(f"  {key:24} {value:8.3f}x{tail}\n")
    if "tools" in results:
        tools = results["tools"]
        say("tools: n  body  bare µs  ours µs  ratio  extra µs  /tool  audit-on extra µs\n")
        for n in TOOL_COUNTS:
            t = tools[str(n)]
            say(
                f"  {n:5} {t['body_bytes']:7} {t['bare_us']:8.1f} {t['ours_us']:8.1f} "
                f"{t['ratio']:6.2f}x {t['extra_us']:8.1f} {t['extra_per_tool_us']:6.2f} "
                f"{t['audit_extra_us']:9.1f}\n"
            )
    for key, sizes in results.items():
        if not key.startswith("sizes"):
            continue
        say(f"sizes, malloc {sizes['malloc']} {sizes['env']}, CPU µs per request:\n")
        for size_key, row in sizes["sizes"].items():
            size = int(size_key)
            per = "  ".join(f"{n}={v:.0f}" for n, v in row["per_call_us"].items())
            ev = "  ".join(f"{n}={v:.2f}" for n, v in row["extra_vs_floor"].items())
            pf = " ".join(f"{v:.0f}" for v in row["page_faults_per_call"].values())
            say(f"  {_fmt_size(size):6} {per}   extra/floor's: {ev}   faults/req: {pf}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--suite", choices=("small", "tools", "sizes", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-ms", type=float, default=20.0, help="target time per batch")
    parser.add_argument(
        "--malloc",
        choices=(*MALLOC_ENVS, "all"),
        default="all",
        help="glibc settings of the sizes suite's worker processes",
    )
    parser.add_argument(
        "--sizes",
        type=lambda text: tuple(int(x) for x in text.split(",")),
        default=SIZES,
        help="body sizes of the sizes suite, comma-separated bytes",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    batch_s = args.batch_ms / 1000
    results: dict[str, Any] = {}
    if args.suite in ("small", "all"):
        results["small"] = suite_small(args.rounds, batch_s)
    if args.suite in ("tools", "all"):
        results["tools"] = suite_tools(args.rounds, batch_s)
    if args.suite in ("sizes", "all"):
        for malloc in MALLOC_ENVS if args.malloc == "all" else (args.malloc,):
            # mmap_only only changes MB-sized buffers: its 1 MB and 10 MB points suffice
            sizes = args.sizes if malloc != "mmap_only" else tuple(s for s in args.sizes if s >= MB)
            results[f"sizes_{malloc}"] = suite_sizes(args.rounds, batch_s, malloc, sizes)
    common.publish(results, report, args.json)


if __name__ == "__main__":
    main()
