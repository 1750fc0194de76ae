"""The long fuzz run: the generators of ``tests/test_hostile.py``, 100,000+ cases, counted.

Three targets, each against a reference written from docs/reference.md:

* ``body``: ``parse_body`` + the body source vs ``json.loads`` + the same source ("Refusals":
  "no input can make the middleware and the application see different credentials");
* ``provider-data``: the provider-data source vs a model of the reference's sections;
* ``middleware``: whole requests (body, provider-data header, ``X-MCP-*`` header) through the
  middleware as raw ASGI: the app gets the exact bytes, or a documented 4xx answers.

Nothing stops at the first finding: every case is classified and the classes are counted,
with the first example of each finding class (inputs are generated, never real tokens).
Case ``i`` of a target is generated from ``random.Random(f"{seed}/{target}/{i}")``, so any
case can be regenerated alone.
Exit status 1 when anything crashed or disagreed.

Run from the repository root::

    python benchmarks/fuzz_long.py                 # 100,000 body + 50,000 + 50,000 cases
    python benchmarks/fuzz_long.py --cases 1000    # a quick look
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_auth_middleware import MCPAuthConfig
from tests.test_hostile import (
    Request,
    Rolled,
    body_verdict,
    drive,
    gen_body,
    gen_provider_data,
    gen_request,
    parsed_verdict,
    provider_data_verdict,
    reference_body,
    reference_provider_data,
)


def classify_body(raw: bytes) -> str:
    try:
        ours = parsed_verdict(raw)
    except Exception as exc:
        return f"CRASH {type(exc).__name__}"
    reference = reference_body(raw)
    if reference is None:
        if ours in (("not-json",), ("read", frozenset()), ("refused", "invalid_body", "body")):
            return "agree: nothing read from a body the app cannot parse"
        return "DIFFER: middleware reads a body the app cannot parse"
    if ours == ("not-json",):
        return "DIFFER: app parses a body the middleware does not read"
    theirs = body_verdict(reference)
    if ours != theirs:
        return f"DIFFER: {ours[0]} vs app {theirs[0]}"
    return f"agree: {ours[0]}"


def classify_provider_data(value: str) -> str:
    try:
        ours = provider_data_verdict(value)
    except Exception as exc:
        return f"CRASH {type(exc).__name__}"
    theirs = reference_provider_data(value)
    if ours != theirs:
        return f"DIFFER: {ours[0]} vs spec {theirs[0]}"
    return f"agree: {ours[0]}"


async def classify_request(request: Request) -> str:
    body, headers = request
    try:
        outcome = await drive(body, headers=headers, config=CONFIG)
    except Exception as exc:
        return f"CRASH {type(exc).__name__}"
    if outcome.status == 200:
        if [seen.body for seen in outcome.seen] != [body]:
            return "WRONG: the app got other bytes"
        return "200 app called with the exact bytes"
    if outcome.status not in (400, 413) or outcome.seen:
        return f"WRONG: status {outcome.status}, app called {len(outcome.seen)}x"
    return f"{outcome.status} {outcome.code}"


CONFIG = MCPAuthConfig(server_headers=True)


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.firsts: dict[tuple[str, str], str] = {}

    def add(self, target: str, verdict: str, case: Any) -> None:
        key = (target, verdict)
        self.counts[key] += 1
        if verdict[0].isupper() and key not in self.firsts:  # CRASH, DIFFER, WRONG
            self.firsts[key] = repr(case)[:240]


def run(
    target: str,
    cases: int,
    seed: int,
    gen: Callable[[Rolled], Any],
    classify: Callable[[Any], str],
    tally: Tally,
) -> None:
    for i in range(cases):
        case = gen(Rolled(random.Random(f"{seed}/{target}/{i}")))
        tally.add(target, classify(case), case)


async def run_requests(cases: int, seed: int, tally: Tally) -> None:
    for i in range(cases):
        case = gen_request(Rolled(random.Random(f"{seed}/middleware/{i}")))
        tally.add("middleware", await classify_request(case), case)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="body cases (default 100000)")
    parser.add_argument("--seed", type=int, default=20261126)
    args = parser.parse_args()
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)  # no audit noise

    tally = Tally()
    started = time.monotonic()
    run("body", args.cases, args.seed, gen_body, classify_body, tally)
    run(
        "provider-data",
        args.cases // 2,
        args.seed,
        gen_provider_data,
        classify_provider_data,
        tally,
    )
    anyio.run(run_requests, args.cases // 2, args.seed, tally)
    elapsed = time.monotonic() - started

    total = sum(tally.counts.values())
    findings = sum(n for (_, verdict), n in tally.counts.items() if verdict[0].isupper())
    print(f"{'target':<14} {'cases':>8}  outcome")
    for (target, verdict), n in sorted(tally.counts.items()):
        print(f"{target:<14} {n:>8}  {verdict}")
    for (target, verdict), example in sorted(tally.firsts.items()):
        print(f"\nfirst {target} case of {verdict!r}:\n  {example}")
    print(f"\n{total} cases in {elapsed:.0f} s (seed {args.seed}); findings: {findings}")
    print("result:", "FAIL" if findings else "PASS")
    return 1 if findings else 0


def _drop(*_: Any) -> Any:
    raise structlog.DropEvent


if __name__ == "__main__":
    sys.exit(main())
