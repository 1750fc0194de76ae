"""Where the middleware's time goes on one request: in place, in isolation, and cProfile.

1. In place (ablation): ours is measured interleaved with copies of itself in which one
   step after another is replaced by its precomputed result (``decode_body``,
   ``read_credentials``, the credential set, the audit event); the drop at each step is what
   that step costs inside a real request. What is left is the header pass, buffering, the
   middleware's glue, the ``ContextVar`` and the replay.
2. In isolation: the same steps with ``timeit`` (best of 7, hot caches: a lower bound).
3. cProfile of ``--calls`` requests, per request: the functions with the most own time,
   and the library's functions by cumulative time (the profiler inflates small calls).

Monkeypatching happens in this process only; the library's files are not touched.
Run: ``python benchmarks/profile_request.py [--size 1024] [--tools 1] [--audit]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import timeit
from collections.abc import Callable
from typing import Any

import common
from common import CHUNK, KB, HTTPRequest, Variant, build_app, measure, post_json, responses_body
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_auth_middleware import middleware
from mcp_auth_middleware.audit import Auditor
from mcp_auth_middleware.context import _credentials
from mcp_auth_middleware.credentials import _credential_set
from mcp_auth_middleware.resolve import resolve
from mcp_auth_middleware.sources.body import decode_body, read_credentials

Patch = tuple[Any, str, Any]


def _best_us(fn: Callable[[], object], budget_s: float = 0.05, repeat: int = 7) -> float:
    number = 1
    while True:
        t = timeit.timeit(fn, number=number)
        if t >= budget_s / 5 or number >= 1 << 20:
            break
        number *= 4
    number = max(1, int(number * budget_s / 5 / max(t, 1e-9)))
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


class Patched:
    """Runs ``app`` with some library attributes replaced, then restores them, so that
    ablations can be interleaved with the unpatched app in one measurement."""

    def __init__(self, app: ASGIApp, patches: list[Patch]) -> None:
        self.app = app
        self.patches = patches

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self.patches]
        for owner, name, value in self.patches:
            setattr(owner, name, value)
        try:
            await self.app(scope, receive, send)
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


def ablation(request: HTTPRequest, audit: bool, rounds: int) -> list[tuple[str, float]]:
    envelope = decode_body(request.body)
    assert envelope is not None
    found = read_credentials(envelope.tools or (), envelope.authorization, envelope.mcp_endpoint)
    resolved = resolve([("body", found)])
    credentials = resolved[0]

    steps: list[tuple[str, list[Patch]]] = [
        (
            "decode_body (msgspec + agreement checks)",
            [(middleware, "decode_body", lambda b: envelope)],
        ),
        (
            "read_credentials (tokens, URLs, MCPCredential)",
            [(middleware, "read_credentials", lambda *a: found)],
        ),
        (
            "the credential set (resolve, or the one-credential set)",
            [
                (middleware, "resolve", lambda f: resolved),
                (middleware, "_credential_set", lambda items: credentials),
            ],
        ),
    ]
    if audit:
        steps.append(("audit event(s)", [(Auditor, "resolved", lambda *a, **k: None)]))
    ours = build_app("ours_audit" if audit else "ours")
    text = HTTPRequest("POST", "/v1/files", request.body, b"text/plain")
    variants = [
        Variant("bare", Patched(build_app("bare"), []), request),
        Variant("ours", Patched(ours, []), request),
    ]
    patches: list[Patch] = []
    for name, patch in steps:
        patches = patches + patch
        variants.append(Variant(f"- {name}", Patched(ours, patches), request))
    variants += [
        Variant("floor", Patched(build_app("floor"), []), request),
        Variant("bare@text", Patched(build_app("bare"), []), text),
        Variant("ours@text", Patched(build_app("ours"), []), text),
    ]
    res = measure(variants, rounds=rounds, batch_s=0.004)

    def extra(name: str, base: str = "bare") -> float:
        return common.median_diff(res[name].cpu, res[base].cpu) * 1e6

    out = [
        (f"bare app, per request (median {common.median(res['bare'].cpu) * 1e6:.1f} µs)", 0.0),
        ("ours: extra over bare, end to end", extra("ours")),
    ]
    previous = "ours"
    for name, _ in steps:
        out.append((f"  {name}", extra(previous) - extra(f"- {name}")))
        previous = f"- {name}"
    out.append(("  the rest: header pass, buffering, glue, ContextVar, replay", extra(previous)))
    out.append(
        (
            "    of which the content-type check (a text/plain request)",
            extra("ours@text", "bare@text"),
        )
    )
    out.append(("(floor: buffer + bytes scan + replay, extra over bare)", extra("floor")))
    return out


def stages(request: HTTPRequest, audit: bool) -> list[tuple[str, float]]:
    scope = request.scope()
    raw = request.body
    chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)] or [b""]
    headers = scope["headers"]
    watched = frozenset((b"content-type", b"content-length", b"x-llamastack-provider-data"))
    envelope = decode_body(raw)
    assert envelope is not None
    tools, authorization, endpoint = (
        envelope.tools or (),
        envelope.authorization,
        envelope.mcp_endpoint,
    )
    found = read_credentials(tools, authorization, endpoint)
    credentials, resolved = resolve([("body", found)])

    def header_pass() -> None:
        for name, _ in headers:
            if name in watched:
                pass

    out = [
        ("header pass (names we read)", _best_us(header_pass)),
        ("join chunks" if len(chunks) > 1 else "bytes(body)", _best_us(lambda: b"".join(chunks))),
        ("decode_body", _best_us(lambda: decode_body(raw))),
        ("read_credentials", _best_us(lambda: read_credentials(tools, authorization, endpoint))),
        (
            "the credential set",
            _best_us(
                (lambda: _credential_set((found[0],)))
                if len(found) == 1
                else (lambda: resolve([("body", found)]))
            ),
        ),
        (
            "ContextVar set + reset",
            _best_us(lambda: _credentials.reset(_credentials.set(credentials))),
        ),
    ]
    if audit:
        auditor = Auditor()
        out.append(
            (
                "audit event(s) (structlog JSON to a file)",
                _best_us(
                    lambda: auditor.resolved(
                        resolved, {"method": "POST", "path": "/v1/responses"}, None
                    )
                ),
            )
        )
    return out


_LIB_FILES = (
    "middleware.py",
    "body.py",
    "base.py",
    "resolve.py",
    "credentials.py",
    "audit.py",
    "provider_data.py",
    "urls.py",
    "context.py",
)


def profile(request: HTTPRequest, audit: bool, calls: int, top: int) -> None:
    app = build_app("ours_audit" if audit else "ours")
    scope = request.scope()
    loop = asyncio.new_event_loop()

    async def many() -> None:
        for _ in range(calls):
            await common.call(app, request, scope)

    try:
        loop.run_until_complete(many())  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        loop.run_until_complete(many())
        profiler.disable()
    finally:
        loop.close()
    stats = pstats.Stats(profiler)
    rows: list[tuple[float, float, int, str]] = []
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = func if path == "~" else f"{os.path.basename(path)}:{line}({func})"
        rows.append((tottime / calls * 1e6, cumtime / calls * 1e6, ncalls // calls, name))
    say = sys.stdout.write
    say(f"\ncProfile, per request ({calls} requests; the profiler inflates small functions)\n")
    say(f"{'own µs':>8} {'cum µs':>8} {'calls':>6}  function (most own time)\n")
    for own, cum, n, name in sorted(rows, reverse=True)[:top]:
        say(f"{own:8.2f} {cum:8.2f} {n:6}  {name}\n")
    say("\nthe library's functions by cumulative time:\n")
    ours = [r for r in rows if r[3].split(":")[0] in _LIB_FILES]
    for own, cum, n, name in sorted(ours, key=lambda r: -r[1])[:top]:
        say(f"{own:8.2f} {cum:8.2f} {n:6}  {name}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1 * KB, help="body bytes")
    parser.add_argument("--tools", type=int, default=1)
    parser.add_argument("--audit", action="store_true", help="audit on (JSON lines to a file)")
    parser.add_argument("--calls", type=int, default=0, help="profiled requests (default: auto)")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--top", type=int, default=22)
    args = parser.parse_args(argv)
    fd, log_path = tempfile.mkstemp(prefix="bench-audit-", suffix=".jsonl")
    os.close(fd)
    close = common.configure_json_logging(log_path)
    try:
        request = post_json(responses_body(args.size, tools=args.tools))
        calls = args.calls or max(5, min(5000, 5_000_000 // max(args.size, 1)))
        say = sys.stdout.write
        say(
            f"body {len(request.body)} bytes, {args.tools} MCP tool(s), "
            f"audit {'on' if args.audit else 'off'}, "
            f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}\n\n"
            f"in place (ablation; CPU µs, median of {args.rounds} rounds of per-round diffs):\n"
        )
        for name, us in ablation(request, args.audit, args.rounds):
            say(f"  {us:9.2f} µs  {name}\n" if us else f"  {name}\n")
        say("\nin isolation (best of 7; hot caches, so a lower bound):\n")
        for name, us in stages(request, args.audit):
            say(f"  {us:9.2f} µs  {name}\n")
        profile(request, args.audit, calls, args.top)
    finally:
        close()
        os.unlink(log_path)


if __name__ == "__main__":
    main()
