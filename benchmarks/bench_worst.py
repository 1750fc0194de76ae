"""The worst bodies the default limits admit: how long one blocks the event loop.

With the defaults (``max_body_bytes`` 16 MiB, ``max_tools`` 128, at most 4,096 items in
``tools``), each case below is one request built to cost the middleware as much as a body
of its kind can: many tiny items, long lists of MCP tools with headers, bodies only
``json.loads`` reads, deep nesting, non-ASCII text to validate, header names that are
costly to normalise; and one with ``redact_body`` on. The figure is the wall time
from the middleware's call to the application's (or to the refusal), with the whole body in
one message: the time the event loop cannot serve anyone else.

Run: ``python benchmarks/bench_worst.py [--repeats 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from common import publish

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware
from mcp_auth_middleware.sources.body import JSON_FALLBACK_LIMIT, MAX_HEADERS_JSON, MAX_TOOL_ITEMS

LIMIT = 16 * 1024 * 1024  # max_body_bytes' default
URL = "https://mcp.example.com/mcp"


def _padded(head: bytes, item: bytes, tail: bytes, size: int = LIMIT) -> bytes:
    """``head`` + as many ``item`` (comma-separated) as fit in ``size`` + ``tail``."""
    count = (size - len(head) - len(tail)) // (len(item) + 1)
    return head + b",".join([item] * count) + tail


def _mcp_tool(i: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": f"s{i}",
        "server_url": f"https://mcp{i}.example.com/mcp",
        "authorization": f"token-{i:05d}",
    }
    if headers is not None:
        tool["headers"] = headers
    return tool


def cases() -> dict[str, bytes]:
    """Name -> body, each at most 16 MiB."""
    big_headers = {f"X-H{i}": "v" * 100 for i in range(MAX_HEADERS_JSON // 120)}
    return {
        # Over 1 MiB: the bounded two-step decode.
        "16 MiB of empty items in tools (refused: too many)": _padded(b'{"tools":[', b"{}", b"]}"),
        "16 MiB, 4,096 tools, each padding a skipped field": json.dumps(
            {"tools": [{"type": "function", "x": "a" * (LIMIT // MAX_TOOL_ITEMS - 60)}] * 4096}
        ).encode(),
        "16 MiB, 128 MCP tools with 16 KiB of headers, 4,096 items": json.dumps(
            {
                "tools": [_mcp_tool(i, big_headers) for i in range(128)]
                + [{"type": "function"}] * (MAX_TOOL_ITEMS - 128),
                "input": "x" * (LIMIT - 128 * (MAX_HEADERS_JSON + 200) - 30 * MAX_TOOL_ITEMS),
            }
        ).encode(),
        "16 MiB of numbers in a skipped field, 128 MCP tools": _padded(
            json.dumps({"tools": [_mcp_tool(i) for i in range(128)]}).encode()[:-1] + b',"input":[',
            b"0",
            b"]}",
        ),
        "16 MiB of non-ASCII text beside a credential": json.dumps(
            {"tools": [_mcp_tool(0)], "input": "é" * (LIMIT // 2 - 200)}, ensure_ascii=False
        ).encode(),
        "16 MiB with a NaN (refused: not strict JSON)": _padded(
            b'{"tools":[' + json.dumps(_mcp_tool(0)).encode() + b'],"input":[', b"0", b",NaN]}"
        ),
        # Up to JSON_FALLBACK_LIMIT: what msgspec refuses, json.loads reads.
        "128 KiB of NaN (json.loads decides)": _padded(
            b'{"tools":[' + json.dumps(_mcp_tool(0)).encode() + b'],"input":[',
            b"NaN",
            b"]}",
            JSON_FALLBACK_LIMIT,
        ),
        "128 KiB of empty objects in tools (json.loads decides, refused)": _padded(
            b'{"temperature":NaN,"tools":[', b"{}", b"]}", JSON_FALLBACK_LIMIT
        ),
        "128 KiB of nested arrays in an MCP tool's headers, and a NaN": _padded(
            b'{"tools":[{"type":"mcp","server_label":"s","headers":[',
            b"[]",
            b']}],"n":NaN}',
            JSON_FALLBACK_LIMIT,
        ),
        "1 MiB of empty items in tools (refused: too many)": _padded(
            b'{"tools":[', b"{}", b"]}", 1 << 20
        ),
        "128 MCP tools, header names of combining marks (16 KiB each)": json.dumps(
            {
                "tools": [
                    _mcp_tool(i, {"a" + "\u0301" * 1300 + "\u0316" * 1300: "v"}) for i in range(128)
                ]
            }
        ).encode(),
        "nesting just past json's recursion limit (refused)": b'{"tools":[],"x":'
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
        "redact_body: 16 MiB of small objects beside a credential": _padded(
            json.dumps({"tools": [_mcp_tool(0)]}).encode()[:-1] + b',"input":[',
            b'{"a":1}',
            b"]}",
        ),
    }


async def _once(body: bytes, redact: bool) -> tuple[float, int]:
    """Wall seconds from the middleware's call to the app's call (or the refusal)."""
    marks: list[float] = []
    status = 200

    async def app(scope: Any, receive: Any, send: Any) -> None:
        marks.append(time.perf_counter())

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            marks.append(time.perf_counter())

    config = MCPAuthConfig(audit=False, telemetry=False, redact_body=redact)
    middleware = MCPAuthMiddleware(app, config=config)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/responses",
        "raw_path": b"/v1/responses",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    start = time.perf_counter()
    await middleware(scope, receive, send)
    return marks[0] - start, status


def measure(repeats: int, say: Callable[[str], object]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, body in cases().items():
        assert len(body) <= LIMIT, name
        times = []
        status = 0
        for _ in range(repeats):
            seconds, status = asyncio.run(_once(body, name.startswith("redact_body")))
            times.append(seconds)
        times.sort()
        median_ms = times[len(times) // 2] * 1000
        results[name] = {"bytes": len(body), "status": status, "median_ms": median_ms}
        say(f"  {median_ms:7.1f} ms  {status}  {len(body) / 2**20:5.2f} MiB  {name}\n")
    worst = max(results, key=lambda n: results[n]["median_ms"])
    return {"cases": results, "worst": worst, "worst_ms": results[worst]["median_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.stdout.write("The worst bodies the default limits admit (wall time the loop is held):\n")
    result = measure(args.repeats, sys.stdout.write)
    publish(result, lambda r: print(f"worst: {r['worst_ms']:.1f} ms ({r['worst']})"), args.json)


if __name__ == "__main__":
    main()
