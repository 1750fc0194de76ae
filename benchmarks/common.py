"""Shared pieces of the benchmark suite: request bodies, the apps under test, an in-process
ASGI driver and the interleaved, median-of-rounds measurement.

Apps (all serve ``/{path}`` for GET and POST and answer ``ok``; the endpoint reads its body
on POST, as any JSON endpoint does):

* ``bare``: a Starlette app, nothing else.
* ``passthrough``: bare + a no-op pure-ASGI middleware (a control: the noise floor).
* ``ours``: bare + ``MCPAuthMiddleware`` with the audit log and telemetry off
  (``ours_audit``: both on, as by default; ``ours_paths``: ``paths=("/v1/responses",)``).
* ``floor``: bare + a pure-ASGI middleware that buffers the body, makes one ``bytes``
  substring scan over it and replays the server's original messages.
* ``decode_floor``: the floor with one msgspec decode (into a struct that names only the
  fields the middleware reads) instead of the scan, and a ``ContextVar`` set around the app:
  the least any pure-Python reader that must decode can do, with no header pass, no checks
  and no credential objects.
* ``basehttp``: bare + a ``BaseHTTPMiddleware`` that does the job the way users write it:
  ``await request.json()``, pick the MCP tools' ``authorization``, scope them in a
  ``ContextVar`` around ``call_next``.
* ``bare_audit``: bare whose endpoint also emits one structlog event like our audit event.

Times are CPU seconds of this process (``time.process_time``): on a shared machine they do
not count the time another process held the core. Wall times are kept alongside.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware

KB: Final = 1024
MB: Final = 1024 * 1024
#: uvicorn hands a body to the app in pieces of up to 64 KiB (its read high-water mark).
CHUNK: Final = 64 * KB
#: glibc settings, read at start-up only: child processes get them through their
#: environment. 32 MiB is the largest mmap threshold glibc accepts (more is ignored).
#: Setting it also freezes glibc's dynamic trim threshold at 128 KiB, so every free at the
#: top of the heap gives the pages back and the next big body faults them in again:
#: ``mmap_only`` shows that, ``tuned`` raises the trim threshold as well.
MALLOC_ENVS: Final[dict[str, dict[str, str]]] = {
    "default": {},
    "mmap_only": {"MALLOC_MMAP_THRESHOLD_": str(32 * MB)},
    "tuned": {"MALLOC_MMAP_THRESHOLD_": str(32 * MB), "MALLOC_TRIM_THRESHOLD_": str(256 * MB)},
}


def child_env(malloc: str) -> dict[str, str]:
    """This process's environment without ``MALLOC_*`` settings, plus ``malloc``'s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(MALLOC_ENVS[malloc])
    return env


RESPONSES_PATH: Final = "/v1/responses"

_WORDS = (
    "the gateway forwards each tool call to the remote server with the caller's own "
    'credential, and a "quoted" word or a newline\n now and then; '
)


def mcp_tool(i: int) -> dict[str, Any]:
    """The ``i``-th MCP tool of a Responses request, with its credential."""
    return {
        "type": "mcp",
        "server_label": f"srv{i}",
        "server_url": f"https://mcp{i}.example.com/mcp",
        "authorization": f"tok-{i:05d}-" + "a" * 36,
        "require_approval": "never",
    }


def responses_body(size: int, tools: int = 1) -> bytes:
    """A Responses request of exactly ``size`` bytes (or the smallest one holding ``tools``).

    ``tools`` come last, as the OpenAI client orders the fields, so a substring scan for
    ``"authorization"`` reads the whole body; ``input`` is a list of ~1 KB messages.
    """
    doc: dict[str, Any] = {
        "model": "llama-3.3-70b",
        "input": [],
        "tools": [mcp_tool(i) for i in range(tools)],
        "stream": False,
    }
    messages: list[dict[str, Any]] = doc["input"]
    total = len(json.dumps(doc))
    text = (_WORDS * (1000 // len(_WORDS) + 1))[:1000]
    full = len(json.dumps({"type": "message", "role": "user", "content": text}))
    empty = len(json.dumps({"type": "message", "role": "user", "content": ""}))
    while total + 2 * (full + empty + 2) < size:  # whole messages, room left for the last
        total += full + (2 if messages else 0)
        messages.append({"type": "message", "role": "user", "content": text})
    last = size - total - empty - (2 if messages else 0)
    if last >= 0:  # the last message pads to the exact size (plain letters: no escapes)
        messages.append({"type": "message", "role": "user", "content": "y" * last})
    return json.dumps(doc).encode()


# Headers of a request from the OpenAI Python client (so the header loop costs what it will).
_CLIENT_HEADERS: Final = [
    (b"host", b"127.0.0.1:8321"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"accept", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.99.0"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-package-version", b"1.99.0"),
    (b"x-stainless-os", b"Linux"),
    (b"x-stainless-arch", b"x64"),
    (b"x-stainless-runtime", b"CPython"),
    (b"x-stainless-runtime-version", b"3.11.7"),
    (b"authorization", b"Bearer gateway-api-key"),
    (b"x-stainless-retry-count", b"0"),
]


@dataclass(frozen=True)
class HTTPRequest:
    """One request as a test client would send it."""

    method: str
    path: str
    body: bytes = b""
    content_type: bytes | None = b"application/json"
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [*_CLIENT_HEADERS, *self.extra_headers]
        if self.method != "GET":
            if self.content_type is not None:
                headers.append((b"content-type", self.content_type))
            headers.append((b"content-length", str(len(self.body)).encode()))
        return headers

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": self.headers(),
            "server": ("127.0.0.1", 8321),
            "client": ("127.0.0.1", 50000),
            "state": {},
        }


def post_json(body: bytes, path: str = RESPONSES_PATH) -> HTTPRequest:
    return HTTPRequest("POST", path, body)


# --------------------------------------------------------------------------------- apps


async def _endpoint(request: Request) -> Response:
    if request.method != "GET":
        await request.body()
    return PlainTextResponse("ok")


_bench_log: Any = structlog.get_logger("bench.audit")
_FINGERPRINT: Final = "0123456789ab"


async def _endpoint_audit(request: Request) -> Response:
    """The baseline of the audit row: read the body and emit one event like ours."""
    await request.body()
    _bench_log.info(
        "mcp_credential_resolved",
        source="body",
        shadowed=[],
        server_url="https://mcp0.example.com/mcp",
        server_label="srv0",
        fingerprint=_FINGERPRINT,
        method=request.method,
        path=request.scope["path"],
        request_id=None,
    )
    return PlainTextResponse("ok")


def _starlette(endpoint: Callable[[Request], Awaitable[Response]] = _endpoint) -> Starlette:
    return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


class PassThrough:
    """A no-op pure-ASGI middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Floor:
    """The least any body-reading middleware does: buffer, one ``bytes`` scan, replay.

    It joins the server's chunks for the scan and replays the original messages (so the
    app's own ``request.body()`` makes the only other copy), like ``MCPAuthMiddleware``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.found = 0

    def look(self, raw: bytes) -> object:
        """The one pass over the body; what it returns (unless ``None``) is scoped."""
        if b'"authorization"' in raw:
            self.found += 1
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        raw = (
            messages[0].get("body", b"")
            if len(messages) == 1
            else b"".join(m.get("body", b"") for m in messages)
        )
        seen = self.look(raw)
        del raw
        pending = iter(messages)

        async def replay() -> Message:
            for message in pending:
                return message
            return await receive()

        if seen is None:
            await self.app(scope, replay, send)
            return
        token = decoded.set(seen)
        try:
            await self.app(scope, replay, send)
        finally:
            decoded.reset(token)


class _FloorTool(msgspec.Struct, gc=False):
    type: Any = None
    server_url: Any = None
    server_label: Any = None
    authorization: Any = None
    headers: Any = None


class _FloorFields(msgspec.Struct, gc=False):
    tools: list[_FloorTool] | None = None
    authorization: Any = None
    mcp_endpoint: Any = None


_floor_decode = msgspec.json.Decoder(_FloorFields).decode


class DecodeFloor(Floor):
    """The floor with one msgspec decode into a struct that names only the fields the
    middleware reads (the least a pure-Python reader that must decode can do) instead of
    the scan, and a ``ContextVar`` set around the app to the decoded fields: nothing is
    checked, no credential is built."""

    def look(self, raw: bytes) -> object:
        try:
            return _floor_decode(raw)
        except (msgspec.MsgspecError, ValueError):
            return None


#: What ``DecodeFloor`` scopes.
decoded: ContextVar[object] = ContextVar("bench_decoded", default=None)

#: What the user-written alternative scopes: server URL -> token.
user_credentials: ContextVar[dict[str, str] | None] = ContextVar("bench_creds", default=None)


def _pick_credentials(document: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    tools = document.get("tools") if isinstance(document, dict) else None
    if isinstance(tools, list):
        for tool in tools:
            if (
                isinstance(tool, dict)
                and tool.get("type") == "mcp"
                and isinstance(tool.get("authorization"), str)
                and isinstance(tool.get("server_url"), str)
            ):
                found[tool["server_url"]] = tool["authorization"]
    return found


class BaseHTTPCredentials(BaseHTTPMiddleware):
    """What a user writes instead: ``request.json()`` + a ``ContextVar`` around the app."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method in ("POST", "PUT", "PATCH") and request.headers.get(
            "content-type", ""
        ).startswith("application/json"):
            try:
                document = await request.json()
            except ValueError:
                document = None
            token = user_credentials.set(_pick_credentials(document))
            try:
                return await call_next(request)
            finally:
                user_credentials.reset(token)
        return await call_next(request)


def build_app(name: str) -> ASGIApp:
    """The app under test called ``name`` (see the module docstring)."""
    if name == "bare":
        return _starlette()
    if name == "bare_audit":
        return _starlette(_endpoint_audit)
    app = _starlette()
    if name == "passthrough":
        app.add_middleware(PassThrough)
    elif name == "floor":
        app.add_middleware(Floor)
    elif name == "decode_floor":
        app.add_middleware(DecodeFloor)
    elif name == "basehttp":
        app.add_middleware(BaseHTTPCredentials)
    elif name == "ours":
        app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(audit=False, telemetry=False))
    elif name == "ours_audit":
        app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(audit=True))
    elif name == "ours_paths":
        app.add_middleware(
            MCPAuthMiddleware,
            config=MCPAuthConfig(audit=False, telemetry=False, paths=(RESPONSES_PATH,)),
        )
    else:
        raise ValueError(f"unknown app {name!r}")
    return app


def ours_with(**config: Any) -> ASGIApp:
    """A bare app behind ``MCPAuthMiddleware`` with these settings."""
    app = _starlette()
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(**config))
    return app


_PROVIDER_DATA = json.dumps(
    {"mcp_headers": {"https://mcp1.example.com/mcp": {"Authorization": "Bearer tok-pd"}}}
).encode()

#: The cases ``bench_instructions.py`` counts one by one:
#: name -> (request, middleware config, the bare app to compare with).
CASES: dict[str, tuple[HTTPRequest, dict[str, Any], str]] = {
    "1 KB, 1 credential": (
        post_json(responses_body(1 * KB)),
        {"audit": False, "telemetry": False},
        "bare",
    ),
    "1 KB, audit on": (post_json(responses_body(1 * KB)), {"audit": True}, "bare_audit"),
    "10 tools": (
        post_json(responses_body(1 * KB, tools=10)),
        {"audit": False, "telemetry": False},
        "bare",
    ),
    "provider-data header": (  # the provider-data source asked too
        HTTPRequest(
            "POST",
            RESPONSES_PATH,
            responses_body(1 * KB),
            extra_headers=((b"x-llamastack-provider-data", _PROVIDER_DATA),),
        ),
        {"audit": False, "telemetry": False},
        "bare",
    ),
    "text/plain": (
        HTTPRequest("POST", "/v1/files", b"x" * KB, b"text/plain"),
        {"audit": False, "telemetry": False},
        "bare",
    ),
    "GET": (HTTPRequest("GET", "/v1/models"), {"audit": False, "telemetry": False}, "bare"),
    "path not in paths": (
        post_json(responses_body(1 * KB), "/v1/chat/completions"),
        {"audit": False, "telemetry": False, "paths": (RESPONSES_PATH,)},
        "bare",
    ),
}


def configure_json_logging(path: str) -> Callable[[], None]:
    """structlog as a service would set it up: JSON lines to a file. Returns a closer."""
    out = open(path, "w")  # noqa: SIM115 - closed by the returned function
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    return out.close


# ------------------------------------------------------------------------ ASGI driver


async def call(app: ASGIApp, request: HTTPRequest, scope: dict[str, Any]) -> int:
    """One request through ``app``; the body arrives in ``CHUNK``-sized messages."""
    body = request.body
    size = len(body)
    pos = 0
    done = False
    status = 0

    async def receive() -> Message:
        nonlocal pos, done
        if done:
            return {"type": "http.disconnect"}
        if size <= CHUNK:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        piece = body[pos : pos + CHUNK]
        pos += CHUNK
        done = pos >= size
        return {"type": "http.request", "body": piece, "more_body": not done}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(scope), receive, send)
    return status


async def _batch(app: ASGIApp, request: HTTPRequest, calls: int) -> tuple[float, float]:
    scope = request.scope()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call(app, request, scope)
    return time.process_time() - cpu, time.perf_counter() - wall


@dataclass
class Variant:
    """An (app, request) pair measured in a group."""

    name: str
    app: ASGIApp
    request: HTTPRequest
    calls: int = 0
    cpu: list[float] = field(default_factory=list)  # seconds per call, one per round
    wall: list[float] = field(default_factory=list)


def calibrate(
    loop: asyncio.AbstractEventLoop,
    name: str,
    app: ASGIApp,
    request: HTTPRequest,
    *,
    batch_s: float,
    min_calls: int = 3,
    expect: int = 200,
) -> int:
    """Check the answer, warm up, and size a batch to take about ``batch_s`` of CPU."""
    status = loop.run_until_complete(call(app, request, request.scope()))
    if status != expect:
        raise RuntimeError(f"{name}: status {status}, expected {expect}")
    n = 1
    while True:
        cpu, _ = loop.run_until_complete(_batch(app, request, n))
        if cpu >= batch_s / 4 or n >= 4096:
            break
        n *= 4
    return max(min_calls, round(batch_s / max(cpu / n, 1e-7)))


def timed_batch(
    loop: asyncio.AbstractEventLoop, app: ASGIApp, request: HTTPRequest, calls: int
) -> tuple[float, float]:
    """(CPU, wall) seconds per call over one batch of ``calls`` requests."""
    cpu, wall = loop.run_until_complete(_batch(app, request, calls))
    return cpu / calls, wall / calls


def measure(
    variants: Sequence[Variant],
    *,
    rounds: int,
    batch_s: float = 0.02,
    min_calls: int = 3,
    expect: int = 200,
) -> dict[str, Variant]:
    """Time every variant in every round, interleaved, rotating the order each round."""
    loop = asyncio.new_event_loop()
    try:
        for v in variants:
            v.calls = calibrate(
                loop, v.name, v.app, v.request, batch_s=batch_s, min_calls=min_calls, expect=expect
            )
        gc.collect()
        gc.freeze()  # what exists now is never collected: gc.collect() stays cheap
        for r in range(rounds):
            shift = r % len(variants)
            gc.collect()
            for v in [*variants[shift:], *variants[:shift]]:
                cpu, wall = timed_batch(loop, v.app, v.request, v.calls)
                v.cpu.append(cpu)
                v.wall.append(wall)
    finally:
        gc.unfreeze()
        loop.close()
    return {v.name: v for v in variants}


# -------------------------------------------------------------------------------- stats


def ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of the per-round ratio ``a/b``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def spread(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """The interquartile range of the per-round ratios ``a/b`` (how noisy the median is)."""
    return quartiles([x / y for x, y in zip(a, b, strict=True)])


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles of ``values``."""
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def extra_ratio(a: Sequence[float], floor: Sequence[float], base: Sequence[float]) -> float:
    """``median(a - base) / median(floor - base)``, over per-round differences (``inf`` when
    the floor's extra is not positive). A ratio of medians: per-round ratios of two small
    differences would be dominated by noise."""
    floor_extra = median_diff(floor, base)
    return median_diff(a, base) / floor_extra if floor_extra > 0 else float("inf")


def median_diff(a: Sequence[float], base: Sequence[float]) -> float:
    """Median over rounds of the per-round difference ``a - base``."""
    return statistics.median(x - y for x, y in zip(a, base, strict=True))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def publish(
    results: dict[str, Any], report: Callable[[dict[str, Any]], None], json_path: str | None
) -> None:
    """A benchmark's ending: print its table, and write its results to ``json_path`` if given."""
    report(results)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(results, out, indent=1)


def library_fingerprint() -> dict[str, str]:
    """Which code was measured: git HEAD, whether the package differs from it, a hash."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted((root / "mcp_auth_middleware").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())

    def git(*args: str) -> str:
        try:
            done = subprocess.run(  # noqa: S603 - fixed arguments
                ["git", *args],  # noqa: S607 - git from PATH
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return "?"
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "mcp_auth_middleware")
    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "package_modified": "yes" if dirty and dirty != "?" else "no",
        "sha256": digest.hexdigest()[:12],
    }
