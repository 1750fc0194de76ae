"""Peak memory of one 10 MB request, beyond what the process held before it.

Each (app, malloc setting, repetition) runs in a fresh child process: build the app and
the body, warm up with 1 KB requests, then

* RSS: reset the kernel's high-water mark (``/proc/self/clear_refs`` = 5), send one 10 MB
  request in 64 KiB messages, read ``VmHWM`` - the RSS before;
* tracemalloc: the peak of Python-allocated memory during a second 10 MB request.

The figure for the target is ``(peak(ours) - peak(bare)) / body size`` (one buffered copy
= 1.0). Children run two at a time (memory does not care about the shared cores).

Run: ``python benchmarks/bench_memory.py [--reps 3] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
from common import KB, MB, build_app, post_json, responses_body

APPS = ("bare", "ours", "floor", "basehttp")
BODY = 10 * MB
ENVS = ("default", "tuned")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def child(name: str) -> dict[str, float]:
    app = build_app(name)
    big = post_json(responses_body(BODY))
    small = post_json(responses_body(1 * KB))
    loop = asyncio.new_event_loop()
    try:
        for _ in range(50):
            loop.run_until_complete(common.call(app, small, small.scope()))
        gc.collect()
        _malloc_trim()  # building the body left free heap pages resident: give them back
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
        status = loop.run_until_complete(common.call(app, big, big.scope()))
        if status != 200:
            raise RuntimeError(f"{name}: status {status}")
        rss_peak = (_status_kb("VmHWM") - before) * KB
        gc.collect()
        tracemalloc.start()
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loop.run_until_complete(common.call(app, big, big.scope()))
        traced_peak = tracemalloc.get_traced_memory()[1] - current
        tracemalloc.stop()
    finally:
        loop.close()
    return {"rss_peak": float(rss_peak), "traced_peak": float(traced_peak)}


def _spawn(name: str, env_name: str) -> dict[str, float]:
    env = common.child_env(env_name)
    done = subprocess.run(  # noqa: S603 - our own arguments
        [sys.executable, __file__, "--child", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(reps: int, apps: tuple[str, ...] = APPS) -> dict[str, Any]:
    jobs = [(env, name) for _ in range(reps) for env in ENVS for name in apps]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outs = list(pool.map(lambda job: _spawn(job[1], job[0]), jobs))
    results: dict[str, Any] = {"body_bytes": BODY, "reps": reps}
    for env in ENVS:
        per: dict[str, dict[str, float]] = {}
        for name in apps:
            got = [o for (e, n), o in zip(jobs, outs, strict=True) if e == env and n == name]
            per[name] = {
                key: common.median([g[key] for g in got]) for key in ("rss_peak", "traced_peak")
            }
        results[env] = {
            "peak_bytes": per,
            "beyond_bare_per_body": {
                name: {
                    key: (per[name][key] - per["bare"][key]) / BODY
                    for key in ("rss_peak", "traced_peak")
                }
                for name in apps
                if name != "bare"
            },
        }
    return results


def report(results: dict[str, Any]) -> None:
    say = sys.stderr.write
    say(f"peak memory of one 10 MB request (median of {results['reps']}), MB:\n")
    for env in ENVS:
        res = results[env]
        say(f"  malloc {env}:\n")
        for name, peak in res["peak_bytes"].items():
            beyond = res["beyond_bare_per_body"].get(name)
            tail = (
                f"  beyond bare: rss {beyond['rss_peak']:.2f}x, traced {beyond['traced_peak']:.2f}x"
                if beyond
                else ""
            )
            say(
                f"    {name:10} rss {peak['rss_peak'] / MB:6.1f}  "
                f"traced {peak['traced_peak'] / MB:6.1f}{tail}\n"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--apps",
        type=lambda text: tuple(text.split(",")),
        default=APPS,
        help=f"comma-separated, from {','.join(APPS)} (bare is needed)",
    )
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return
    results = run(args.reps, args.apps)
    common.publish(results, report, args.json)


if __name__ == "__main__":
    main()
