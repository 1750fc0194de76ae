"""In-process cost of the middleware, as a ratio to a bare Starlette app, in one run.

Each case drives the ASGI app directly (no sockets, no client library) with a prepared
scope and body, N calls per round, the two apps alternating round by round; the figure
quoted is the median over rounds of the per-round ratio ours/bare, which holds when the
machine's speed drifts. Run: ``make bench`` (or ``python benchmarks/bench_inprocess.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware


async def endpoint(request: Request) -> PlainTextResponse:
    if request.method != "GET":
        await request.body()
    return PlainTextResponse("ok")


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


def our_app(**config: Any) -> Starlette:
    app = bare_app()
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(**config))
    return app


@dataclass
class Case:
    name: str
    method: str
    path: str
    content_type: bytes | None
    body: bytes
    config: dict[str, Any]


def json_body(size: int) -> bytes:
    tool = {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.com/mcp",
        "authorization": "tok-" + "a" * 40,
    }
    doc: dict[str, Any] = {"model": "m", "tools": [tool], "input": ""}
    doc["input"] = "x" * max(0, size - len(json.dumps(doc)))
    return json.dumps(doc).encode()


CASES = [
    Case("GET, uninspected", "GET", "/v1/models", None, b"", {"audit": False}),
    Case(
        "POST text/plain, uninspected",
        "POST",
        "/v1/files",
        b"text/plain",
        b"x" * 1024,
        {"audit": False},
    ),
    Case(
        "POST JSON, path not in paths",
        "POST",
        "/v1/chat",
        b"application/json",
        json_body(1024),
        {"audit": False, "paths": ("/v1/responses",)},
    ),
    Case(
        "POST 1 KB JSON, one credential, audit off",
        "POST",
        "/v1/responses",
        b"application/json",
        json_body(1024),
        {"audit": False},
    ),
]


def make_scope(case: Case) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if case.content_type is not None:
        headers.append((b"content-type", case.content_type))
    if case.method != "GET":
        headers.append((b"content-length", str(len(case.body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": case.method,
        "scheme": "http",
        "path": case.path,
        "raw_path": case.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


async def drive(app: ASGIApp, case: Case, calls: int) -> float:
    """Seconds per call over ``calls`` calls."""
    scope = make_scope(case)
    request: Message = {"type": "http.request", "body": case.body, "more_body": False}

    async def send(message: Message) -> None:
        return None

    started = time.perf_counter()
    for _ in range(calls):
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return request

        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / calls


def measure(case: Case, rounds: int, calls: int) -> tuple[float, float, float]:
    bare, ours = bare_app(), our_app(**case.config)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(drive(bare, case, calls // 4))  # warm-up
        loop.run_until_complete(drive(ours, case, calls // 4))
        bare_t, ours_t, ratios = [], [], []
        for _ in range(rounds):
            b = loop.run_until_complete(drive(bare, case, calls))
            o = loop.run_until_complete(drive(ours, case, calls))
            bare_t.append(b)
            ours_t.append(o)
            ratios.append(o / b)
    finally:
        loop.close()
    return statistics.median(bare_t), statistics.median(ours_t), statistics.median(ratios)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=4000)
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    out: Callable[[str], None] = print
    out(f"in-process ASGI, {args.rounds} rounds x {args.calls} calls, median of per-round ratios")
    out(f"{'case':44} {'bare µs':>9} {'ours µs':>9} {'ratio':>7}")
    for case in CASES:
        bare, ours, ratio = measure(case, args.rounds, args.calls)
        out(f"{case.name:44} {bare * 1e6:9.2f} {ours * 1e6:9.2f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
