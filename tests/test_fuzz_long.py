"""The long fuzz run (``slow``): the generators of ``tests/test_hostile.py`` for 200,000 cases.

Three targets, each against the reference model in ``tests/test_hostile.py``:

* body: ``parse_body`` and the body source against ``json.loads`` and the same source: the
  middleware and the application never see different credentials;
* provider data: the provider-data source against a model of the documented rules;
* middleware: whole requests (body, provider-data header, ``X-MCP-*`` header) through the
  middleware as raw ASGI: the application gets the exact bytes, or a documented 4xx answers.

Nothing stops at the first finding: every case is classified, the classes are counted, and a
failure lists them with the first example of each (inputs are generated, never real tokens).
Case ``i`` of a target comes from ``random.Random(f"{seed}/{target}/{i}")``, so any case can
be regenerated alone. ``MCP_AUTH_FUZZ_LONG_CASES`` sets the number of body cases (100,000;
half as many of each other target), ``MCP_AUTH_FUZZ_LONG_SEED`` the seed.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import structlog

from mcp_auth_middleware import MCPAuthConfig
from mcp_auth_middleware.errors import INVALID_BODY
from mcp_auth_middleware.sources.body import JSON_FALLBACK_LIMIT
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

pytestmark = pytest.mark.slow

CASES = int(os.environ.get("MCP_AUTH_FUZZ_LONG_CASES", "100000"))
SEED = int(os.environ.get("MCP_AUTH_FUZZ_LONG_SEED", "20261126"))
CONFIG = MCPAuthConfig(server_headers=True)


class Tally:
    """How many cases fell in each class; the first case of each finding class."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.counts: Counter[str] = Counter()
        self.firsts: dict[str, str] = {}

    def add(self, verdict: str, case: Any) -> None:
        self.counts[verdict] += 1
        if verdict[0].isupper() and verdict not in self.firsts:  # CRASH, DIFFER, WRONG
            self.firsts[verdict] = repr(case)[:240]

    def case(self, i: int) -> Rolled:
        return Rolled(random.Random(f"{SEED}/{self.target}/{i}"))

    def report(self) -> str:
        lines = [f"{n:>8}  {verdict}" for verdict, n in sorted(self.counts.items())]
        lines += [f"first case of {verdict!r}: {case}" for verdict, case in self.firsts.items()]
        return f"{self.target}, seed {SEED}:\n" + "\n".join(lines)


@pytest.fixture(autouse=True)
def _no_audit_events() -> Iterator[None]:
    """Hundreds of thousands of audit events would only cost time: drop them."""
    old = structlog.get_config()
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)
    yield
    structlog.configure(**old)


def _drop(*_: Any) -> Any:
    raise structlog.DropEvent


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
        if ours == REFUSED_OVER_FALLBACK and _only_json_loads_reads(raw):
            return "agree: refused, only json.loads reads it and it is over 128 KiB"
        return f"DIFFER: {ours[0]} vs app {theirs[0]}"
    return f"agree: {ours[0]}"


#: The documented refusal of a body over ``JSON_FALLBACK_LIMIT`` that msgspec cannot read
#: (a UTF-16 or UTF-32 one, say): reading it with ``json.loads`` could build every object in
#: it, so it is refused even where the application would read it.
REFUSED_OVER_FALLBACK = ("refused", INVALID_BODY, "body")


def _only_json_loads_reads(raw: bytes) -> bool:
    if len(raw) <= JSON_FALLBACK_LIMIT:
        return False
    try:
        msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return True
    return False


def classify_provider_data(value: str) -> str:
    try:
        ours = provider_data_verdict(value)
    except Exception as exc:
        return f"CRASH {type(exc).__name__}"
    theirs = reference_provider_data(value)
    if ours != theirs:
        return f"DIFFER: {ours[0]} vs model {theirs[0]}"
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


def _run(
    target: str, cases: int, gen: Callable[[Rolled], Any], classify: Callable[[Any], str]
) -> Tally:
    tally = Tally(target)
    for i in range(cases):
        case = gen(tally.case(i))
        tally.add(classify(case), case)
    return tally


def test_the_body_reader_agrees_with_the_applications_parser() -> None:
    tally = _run("body", CASES, gen_body, classify_body)
    assert not tally.firsts, tally.report()


def test_the_provider_data_reader_follows_its_rules() -> None:
    tally = _run("provider-data", CASES // 2, gen_provider_data, classify_provider_data)
    assert not tally.firsts, tally.report()


@pytest.mark.anyio
async def test_every_request_reaches_the_app_unchanged_or_is_refused_as_documented() -> None:
    tally = Tally("middleware")
    for i in range(CASES // 2):
        case = gen_request(tally.case(i))
        tally.add(await classify_request(case), case)
    assert not tally.firsts, tally.report()
