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
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import common
from common import CASES, HTTPRequest, build_app, ours_with

WARM_UP = 100
#: The controls, measured on the first case only.
CONTROLS = ("passthrough", "floor", "decode_floor")


def plan() -> list[tuple[str, str, HTTPRequest, Callable[[], Any]]]:
    """(case, app, request, make the app), in the order the child runs them: each case's
    base app first (``common.CASES``), then on the first case the controls, then ours."""
    runs: list[tuple[str, str, HTTPRequest, Callable[[], Any]]] = []
    for index, (case, (request, config, base)) in enumerate(CASES.items()):
        runs.append((case, base, request, partial(build_app, base)))
        if index == 0:
            runs += [(case, name, request, partial(build_app, name)) for name in CONTROLS]
        runs.append((case, "ours", request, partial(ours_with, **config)))
    return runs


def child(requests: int) -> None:
    """Run under callgrind: each measured stretch between two ``os.getppid()`` calls."""
    fd, log_path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    try:
        runs = [(build(), request) for _, _, request, build in plan()]

        async def run(app: Any, request: HTTPRequest, calls: int) -> None:
            scope = request.scope()
            for _ in range(calls):
                await common.call(app, request, scope)

        loop = asyncio.new_event_loop()
        for app, request in runs:
            loop.run_until_complete(run(app, request, WARM_UP))
            gc.collect()
            os.getppid()  # callgrind dumps here: what came before is not counted
            loop.run_until_complete(run(app, request, requests))
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
        runs = plan()
        if len(dumps) != 2 * len(runs):
            raise RuntimeError(
                f"expected {2 * len(runs)} callgrind dumps, found {len(dumps)}: does this"
                " libc call getppid() elsewhere?"
            )
        counts = [_total(dumps[2 * i + 1]) / requests for i in range(len(runs))]
    per_case: dict[str, dict[str, float]] = {}
    for (case, app, _, _), count in zip(runs, counts, strict=True):
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
