"""Instructions per request, counted by valgrind's callgrind: a figure that noise does not move.

On a shared machine the time ratios move by about 0.1x between runs, more than most single
changes gain or lose. The number of instructions a request executes does not move: the same
interpreter, packages and inputs give the same count on every run, whatever else the machine
is doing. It is not time. It leaves out cache misses and mispredicted branches, which is
where a request's cost beyond its count goes (``docs/performance.md``). Read it to see
whether a change adds or removes work; the targets are the time tables'.

One child process runs every case under callgrind: for each (app, request), a warm-up, then
``--requests`` requests between two calls of ``os.getppid()``. callgrind writes its counters
out at each call (``--dump-before=getppid``), so each measured stretch is a file of its own
and the start-up and imports count nowhere.

Run: ``python benchmarks/bench_instructions.py [--requests 300] [--json FILE]``. Needs
valgrind (Debian's ``valgrind`` package); about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
from common import KB, HTTPRequest, build_app, post_json, responses_body

#: (case, app, request) in the order the child runs them; each case's first app is its base.
CASES: tuple[tuple[str, str, str], ...] = (
    ("1 KB, 1 credential", "bare", "cred"),
    ("1 KB, 1 credential", "passthrough", "cred"),
    ("1 KB, 1 credential", "floor", "cred"),
    ("1 KB, 1 credential", "ours", "cred"),
    ("1 KB, audit on", "bare_audit", "cred"),
    ("1 KB, audit on", "ours_audit", "cred"),
    ("10 tools", "bare", "tools10"),
    ("10 tools", "ours", "tools10"),
    ("text/plain", "bare", "text"),
    ("text/plain", "ours", "text"),
    ("GET", "bare", "get"),
    ("GET", "ours", "get"),
    ("path not in paths", "bare", "other"),
    ("path not in paths", "ours_paths", "other"),
)
WARM_UP = 100


def _requests() -> dict[str, HTTPRequest]:
    return {
        "cred": post_json(responses_body(1 * KB)),
        "tools10": post_json(responses_body(1 * KB, tools=10)),
        "text": HTTPRequest("POST", "/v1/files", b"x" * KB, b"text/plain"),
        "get": HTTPRequest("GET", "/v1/models"),
        "other": post_json(responses_body(1 * KB), "/v1/chat/completions"),
    }


def child(requests: int) -> None:
    """Run under callgrind: each measured stretch between two ``os.getppid()`` calls."""
    fd, log_path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    try:
        made = _requests()
        apps = {name: build_app(name) for _, name, _ in CASES}

        async def run(app: Any, request: HTTPRequest, calls: int) -> None:
            scope = request.scope()
            for _ in range(calls):
                await common.call(app, request, scope)

        loop = asyncio.new_event_loop()
        for _, name, key in CASES:
            loop.run_until_complete(run(apps[name], made[key], WARM_UP))
            gc.collect()
            os.getppid()  # callgrind dumps here: what came before is not counted
            loop.run_until_complete(run(apps[name], made[key], requests))
            os.getppid()  # ... and here: this file holds the measured requests
        loop.close()
    finally:
        close()
        os.unlink(log_path)


def _total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {path.name}")


def measure(requests: int) -> dict[str, Any]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("bench_instructions: valgrind not found (Debian's valgrind package)")
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(  # noqa: S603 - our own arguments
            [
                valgrind,
                "--tool=callgrind",
                "--dump-before=getppid",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                "--requests",
                str(requests),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Dump k is what ran before the k-th getppid: odd ones are warm-ups (and start-up).
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(dumps) != 2 * len(CASES):
            raise RuntimeError(
                f"expected {2 * len(CASES)} callgrind dumps, found {len(dumps)}: does this"
                " libc call getppid() elsewhere?"
            )
        counts = [_total(dumps[2 * i + 1]) / requests for i in range(len(CASES))]
    per_case: dict[str, dict[str, float]] = {}
    for (case, app, _), count in zip(CASES, counts, strict=True):
        per_case.setdefault(case, {})[app] = count
    return {"requests": requests, "instructions_per_request": per_case}


def report(results: dict[str, Any]) -> None:
    print(
        f"Instructions per request (callgrind, {results['requests']} requests each;"
        " ratio to the case's base app)"
    )
    print(f"  {'case':<22}{'app':<13}{'instructions':>14}{'ratio':>9}{'extra':>10}")
    for case, apps in results["instructions_per_request"].items():
        base = next(iter(apps.values()))
        for app, count in apps.items():
            print(
                f"  {case:<22}{app:<13}{count:>14,.0f}{count / base:>8.3f}x{count - base:>+10,.0f}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per case")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.requests)
        return
    results = measure(args.requests)
    common.publish(results, report, args.json)


if __name__ == "__main__":
    main()
