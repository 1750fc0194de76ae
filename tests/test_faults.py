"""Faults: whatever goes wrong during a request, its credentials end with it and leak nowhere.

Each case drives the middleware in the test's own task (so that ``current_credentials()``
afterwards really checks the reset) through a fault: the client leaving mid-body or
mid-stream, the request being cancelled, the application raising, an MCP server that is
down, slow, or answers 401 or 500. Then the next request on the same app must see only its
own credentials. Leak checks collect the *names* of the places a secret was found, so no
failure prints one.
"""

from __future__ import annotations

import json
import socket
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import httpx
import httpx2
import pytest
import structlog
from anyio import to_thread
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.testing import LogCapture

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    current_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing import serve
from tests.helpers import asgi_scope, jbody, mcp_tool, sdk_http, streamable_session

TOKEN_A: Final = "fault-caller-a-token-1234567890"
TOKEN_B: Final = "fault-caller-b-token-0987654321"
URL_A: Final = "https://a.example.com/mcp"
URL_B: Final = "https://b.example.com/mcp"
TIMEOUT: Final = 10.0  # every wait is bounded by this


def fingerprints() -> list[str]:
    """Fingerprints of the credentials in scope (never the tokens)."""
    return sorted(c.fingerprint for c in current_credentials())


A: Final = [fingerprint(TOKEN_A)]
B: Final = [fingerprint(TOKEN_B)]


def body_a() -> bytes:
    return jbody({"tools": [mcp_tool(URL_A, TOKEN_A, "a")]})


def body_b() -> bytes:
    return jbody({"tools": [mcp_tool(URL_B, TOKEN_B, "b")]})


def leaks(places: dict[str, str], secrets: dict[str, str] | None = None) -> list[str]:
    """``place: secret`` for each secret found in each place (names only)."""
    secrets = secrets if secrets is not None else {"TOKEN_A": TOKEN_A, "TOKEN_B": TOKEN_B}
    return [f"{p}: {s}" for p, text in places.items() for s, v in secrets.items() if v in text]


# --- the application ------------------------------------------------------------------------


@dataclass
class Probe:
    """A Starlette app with one route per fault; it records what each request saw."""

    seen: list[list[str]] = field(default_factory=list)  # fingerprints, per handler call
    chunks: list[list[str]] = field(default_factory=list)  # fingerprints, per stream chunk
    closed: threading.Event = field(default_factory=threading.Event)  # the stream's finally
    entered: threading.Event = field(default_factory=threading.Event)  # a handler started
    first_chunk: threading.Event = field(default_factory=threading.Event)

    def app(self, config: MCPAuthConfig | None = None, debug: bool = False) -> Starlette:
        app = Starlette(
            debug=debug,
            routes=[
                Route("/echo", self.echo, methods=["POST"]),
                Route("/stream", self.stream, methods=["POST"]),
                Route("/stream-then-fail", self.stream_then_fail, methods=["POST"]),
                Route("/wait", self.wait, methods=["POST"]),
                Route("/raise", self.raise_, methods=["POST"]),
            ],
        )
        app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig())
        return app

    async def echo(self, request: Request) -> Response:
        await request.body()
        self.seen.append(fingerprints())
        return JSONResponse(fingerprints())

    async def _events(self, fail: bool) -> AsyncIterator[str]:
        try:
            for i in range(int(TIMEOUT / 0.01)):  # bounded: ends by itself after ~TIMEOUT
                self.chunks.append(fingerprints())
                yield f"data: {i}\n\n"
                self.first_chunk.set()
                if fail:
                    raise RuntimeError("stream failed")
                await anyio.sleep(0.01)
        finally:
            self.closed.set()

    async def stream(self, request: Request) -> Response:
        await request.body()
        return StreamingResponse(self._events(fail=False), media_type="text/event-stream")

    async def stream_then_fail(self, request: Request) -> Response:
        await request.body()
        return StreamingResponse(self._events(fail=True), media_type="text/event-stream")

    async def wait(self, request: Request) -> Response:
        await request.body()
        self.seen.append(fingerprints())
        self.entered.set()
        await anyio.sleep(TIMEOUT)  # cancelled long before
        return Response(status_code=504)

    async def raise_(self, request: Request) -> Response:
        """Fails before it reads the body: any token left in a frame is the middleware's."""
        raise RuntimeError("handler failed")


@dataclass
class Exchange:
    sent: list[Message]
    receives: int

    @property
    def status(self) -> int | None:
        return self.sent[0]["status"] if self.sent else None


async def call(
    app: ASGIApp,
    path: str,
    chunks: list[bytes],
    *,
    then: Callable[[], Awaitable[Message]] | None = None,
    complete: bool = True,
    send_fails_after: int | None = None,
    spec_version: str = "2.3",
) -> Exchange:
    """One request, in this task: ``chunks`` as body messages, then ``then()`` for every
    further ``receive()`` (default: ``http.disconnect``). ``send_fails_after``: the client is
    gone after that many ``send()`` calls (ASGI 2.4: ``send`` raises ``OSError``).
    ``complete=False``: the last chunk says more is coming."""
    scope = asgi_scope()
    scope["path"], scope["raw_path"] = path, path.encode()
    scope["asgi"] = {"version": "3.0", "spec_version": spec_version}
    pending = [
        {"type": "http.request", "body": c, "more_body": not complete or i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    exchange = Exchange([], 0)

    async def receive() -> Message:
        exchange.receives += 1
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_fails_after is not None and len(exchange.sent) >= send_fails_after:
            raise OSError("client gone")
        exchange.sent.append(message)

    with anyio.fail_after(TIMEOUT):
        await app(scope, receive, send)
    return exchange


async def next_request_is_clean(app: ASGIApp, probe: Probe) -> None:
    """The same app, the next request: only its own credentials."""
    exchange = await call(app, "/echo", [body_b()])
    assert exchange.status == 200
    assert json.loads(b"".join(m.get("body", b"") for m in exchange.sent[1:])) == B
    assert probe.seen[-1] == B


def halves(body: bytes, parts: int) -> list[bytes]:
    size = max(1, len(body) // parts)
    return [body[i : i + size] for i in range(0, len(body), size)]


# --- the client goes away ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("received", [0, 1, 3], ids=lambda n: f"after-{n}-chunks")
async def test_client_gone_mid_body_the_app_is_not_called(received: int) -> None:
    """The body never completes: nothing to answer, nobody to answer, nothing scoped."""
    probe = Probe()
    app = probe.app()
    exchange = await call(app, "/echo", halves(body_a(), 5)[:received], complete=False)
    assert exchange.sent == []
    assert probe.seen == []
    assert fingerprints() == []
    await next_request_is_clean(app, probe)


@pytest.mark.anyio
async def test_client_gone_mid_stream_asgi_2_3_the_stream_ends_and_the_scope_is_reset() -> None:
    """Starlette listens for ``http.disconnect`` (which the middleware hands on after the
    replayed body) and cancels the stream."""
    probe = Probe()
    app = probe.app()

    async def disconnect_after_first_chunk() -> Message:
        assert await to_thread.run_sync(probe.first_chunk.wait, TIMEOUT)
        return {"type": "http.disconnect"}

    await call(app, "/stream", [body_a()], then=disconnect_after_first_chunk)
    assert probe.closed.is_set()
    assert probe.chunks
    assert all(seen == A for seen in probe.chunks)
    assert fingerprints() == []
    await next_request_is_clean(app, probe)


@pytest.mark.anyio
async def test_client_gone_mid_stream_asgi_2_4_the_error_passes_and_the_scope_is_reset() -> None:
    """ASGI 2.4: ``send`` raises ``OSError``; Starlette turns it into ``ClientDisconnect``,
    which passes through the middleware to the server untouched."""
    probe = Probe()
    app = probe.app()

    async def never() -> Message:
        await anyio.sleep(TIMEOUT)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnect):
        await call(app, "/stream", [body_a()], then=never, send_fails_after=2, spec_version="2.4")
    # (Starlette leaves closing the generator to the garbage collector on this path.)
    assert all(seen == A for seen in probe.chunks)
    assert fingerprints() == []
    await next_request_is_clean(app, probe)


@pytest.mark.anyio
@pytest.mark.e2e
async def test_sse_client_gone_over_a_real_socket_ends_the_stream_and_the_next_request_is_clean(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = Probe()
    with serve(probe.app()) as base:
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
            with anyio.fail_after(TIMEOUT):
                async with client.stream("POST", "/stream", content=body_a()) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            break  # ... and leave
            assert await to_thread.run_sync(probe.closed.wait, TIMEOUT)
            answer = await client.post("/echo", content=body_b())
    assert answer.json() == B
    assert probe.chunks
    assert all(seen == A for seen in probe.chunks)
    assert leaks({"server log": caplog.text}) == []


# --- cancellation ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("stage", ["reading-the-body", "in-the-handler", "streaming"])
async def test_a_cancelled_request_resets_the_scope_at_every_stage(stage: str) -> None:
    """A cancel scope around the call (a server shutting down, a timeout middleware)."""
    probe = Probe()
    app = probe.app()
    reached = threading.Event()
    chunks, complete = [body_a()], True
    path = {"reading-the-body": "/echo", "in-the-handler": "/wait", "streaming": "/stream"}[stage]
    if stage == "reading-the-body":
        chunks, complete = halves(body_a(), 2)[:1], False  # then receive() blocks

    async def block() -> Message:
        if stage == "reading-the-body":
            reached.set()
        await anyio.sleep(TIMEOUT)
        return {"type": "http.disconnect"}

    event = {"reading-the-body": reached, "in-the-handler": probe.entered}.get(
        stage, probe.first_chunk
    )

    async def cancel_when_reached(scope: anyio.CancelScope) -> None:
        assert await to_thread.run_sync(event.wait, TIMEOUT)
        scope.cancel()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_reached, scope)
            await call(app, path, chunks, then=block, complete=complete)
    assert scope.cancelled_caught
    assert fingerprints() == []
    if stage == "in-the-handler":
        assert probe.seen == [A]
    if stage == "streaming":
        assert probe.closed.is_set()
        assert all(seen == A for seen in probe.chunks)
    else:
        assert probe.chunks == []
    await next_request_is_clean(app, probe)


# --- the application raises --------------------------------------------------------------


@pytest.mark.anyio
async def test_an_error_mid_stream_passes_through_and_resets_the_scope() -> None:
    probe = Probe()
    app = probe.app()
    with pytest.raises(RuntimeError, match="stream failed"):
        await call(app, "/stream-then-fail", [body_a()])
    assert probe.chunks == [A]
    assert probe.closed.is_set()
    assert fingerprints() == []
    await next_request_is_clean(app, probe)


def _frame_holders(exc: BaseException, secret: str) -> list[str]:
    """``function:variable`` of every traceback frame (this file's excluded) whose local
    variable's ``repr`` holds ``secret``: what error trackers that capture locals record."""
    holders = []
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename != __file__:
            for name, value in frame.f_locals.items():
                try:
                    text = repr(value)
                except Exception:  # pragma: no cover - a repr that raises
                    text = ""
                if secret in text:
                    holders.append(f"{frame.f_code.co_qualname}:{name}")
        tb = tb.tb_next
    return holders


# redact_body off, and on (the body then replaced by a redacted copy).
REDACT = [pytest.param(False, id="redact-off"), pytest.param(True, id="redact-on")]


@pytest.mark.anyio
@pytest.mark.parametrize("pieces", [1, 3], ids=["one-message", "three-messages"])
@pytest.mark.parametrize("redact", REDACT)
async def test_no_frame_of_a_failing_request_holds_the_token(redact: bool, pieces: int) -> None:
    """The app fails before it reads the body; error trackers that capture the locals of each
    frame (Sentry's default, ``traceback`` with ``capture_locals``, rich and structlog
    tracebacks with ``show_locals``) must find no token in the middleware's frames (the
    reference's "Scope and lifetime" and "Audit log and telemetry")."""
    probe = Probe()
    app = probe.app(MCPAuthConfig(redact_body=redact))
    body = jbody({"authorization": TOKEN_A})
    step = -(-len(body) // pieces)
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    with pytest.raises(RuntimeError, match="handler failed") as caught:
        await call(app, "/raise", chunks)
    assert _frame_holders(caught.value, TOKEN_A) == []
    assert fingerprints() == []
    await next_request_is_clean(app, probe)


class ErrorReporter:
    """The outermost middleware of many apps: log the exception (Starlette has answered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log: Any = structlog.get_logger("errors")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            self.log.exception("request failed")


@pytest.fixture
def structlog_dict_tracebacks() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog configured for JSON logs with structured tracebacks (``dict_tracebacks``,
    whose ``show_locals`` is on by default)."""
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.dict_tracebacks, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**old)


@pytest.mark.anyio
@pytest.mark.parametrize("redact", REDACT)
async def test_a_structured_error_log_of_a_failing_request_names_no_token(
    redact: bool, structlog_dict_tracebacks: list[MutableMapping[str, Any]]
) -> None:
    """Same bug as above, seen where it lands: one JSON log line (``dict_tracebacks``) of an
    outer error-reporting middleware. LIBRARY BUG at the time of writing."""
    probe = Probe()
    app = ErrorReporter(probe.app(MCPAuthConfig(redact_body=redact)))
    exchange = await call(app, "/raise", [jbody({"authorization": TOKEN_A})])
    assert exchange.status == 500
    errors = [e for e in structlog_dict_tracebacks if e["event"] == "request failed"]
    assert len(errors) == 1
    assert "exception" in errors[0]
    logged = json.dumps(structlog_dict_tracebacks, default=repr)
    assert leaks({"structlog dict_tracebacks": logged}) == []
    await next_request_is_clean(ErrorReporter(probe.app()), probe)


@pytest.mark.anyio
@pytest.mark.parametrize("redact", REDACT)
@pytest.mark.parametrize("accept", ["text/html", "text/plain"])
async def test_starlettes_debug_error_page_names_no_token(redact: bool, accept: str) -> None:
    """The debug page shows frames' source lines and the error, not their locals."""
    probe = Probe()
    app = probe.app(MCPAuthConfig(redact_body=redact), debug=True)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/raise", content=jbody({"authorization": TOKEN_A}), headers={"accept": accept}
        )
    assert response.status_code == 500
    assert "handler failed" in response.text  # the debug page, not the plain 500
    assert leaks({"debug page": response.text}) == []
    assert fingerprints() == []


class Tool(BaseModel):
    """An application's strict tool model: unknown fields are refused, and echoed."""

    model_config = ConfigDict(extra="forbid")
    type: str
    server_label: str
    server_url: str


class Responses(BaseModel):
    tools: list[Tool]


@pytest.mark.anyio
@pytest.mark.parametrize("redact", REDACT)
async def test_with_redact_body_a_validation_error_cannot_echo_the_token(redact: bool) -> None:
    """FastAPI's 422 echoes each offending ``input``: a strict model refuses the unknown
    ``authorization`` and sends the token back (and into any log or store of answers). With
    ``redact_body`` the application never has it, so nothing it answers can hold it."""
    api = FastAPI()

    @api.post("/v1/responses")
    async def responses(body: Responses) -> dict[str, int]:  # pragma: no cover - refused
        return {"tools": len(body.tools)}

    api.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(redact_body=redact))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.post(
            "/v1/responses",
            content=jbody({"tools": [mcp_tool(URL_A, TOKEN_A, "a", extra=1)]}),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 422
    refused = sorted(e["loc"][-1] for e in response.json()["detail"])
    if redact:
        assert refused == ["extra"]
        assert leaks({"422 answer": response.text}) == []
    else:  # what redact_body is for: the app's own error echoes the token
        assert refused == ["authorization", "extra"]


# --- the MCP server fails --------------------------------------------------------------------


@dataclass
class Upstream:
    """An MCP server that fails on purpose, by path; it records the tokens that reached it."""

    release: threading.Event = field(default_factory=threading.Event)
    tokens: list[str | None] = field(default_factory=list)  # fingerprints

    async def endpoint(self, request: Request) -> Response:
        auth = request.headers.get("authorization")
        self.tokens.append(None if auth is None else fingerprint(auth.removeprefix("Bearer ")))
        if request.url.path == "/slow":
            await to_thread.run_sync(self.release.wait, TIMEOUT)  # released at teardown
            return JSONResponse({})
        if request.url.path == "/401":
            return Response(status_code=401, headers={"www-authenticate": "Bearer"})
        return Response("upstream failed", status_code=500)


@dataclass
class Failing:
    base: str
    down: str
    upstream: Upstream


@pytest.fixture(scope="module")
def failing() -> Iterator[Failing]:
    upstream = Upstream()
    app = Starlette(routes=[Route("/{path:path}", upstream.endpoint, methods=["GET", "POST"])])
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with serve(app) as base:
        yield Failing(base, down, upstream)
        upstream.release.set()


async def call_with_httpx(url: str) -> int:
    async with httpx.AsyncClient(auth=MCPBearerAuth(), timeout=0.5) as client:
        return (
            await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        ).status_code


async def call_with_httpx2(url: str) -> int:
    async with httpx2.AsyncClient(auth=MCPBearerAuth(), timeout=0.5) as client:
        return (
            await client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        ).status_code


async def call_with_mcp_sdk(url: str) -> int:
    """The installed SDK's client (2.x on httpx2, 1.x on httpx)."""
    client = sdk_http.AsyncClient(auth=MCPBearerAuth(), timeout=0.5)
    async with client, streamable_session(url, client):
        pass
    return 200  # pragma: no cover - every server here fails


CALLERS: Final[dict[str, Callable[[str], Awaitable[int]]]] = {
    "httpx": call_with_httpx,
    "httpx2": call_with_httpx2,
    "mcp-sdk": call_with_mcp_sdk,
}


def gateway() -> Starlette:
    """Calls the MCP server of the body's first tool; answers what happened, as text."""

    async def respond(request: Request) -> Response:
        body = await request.json()
        url = body["tools"][0]["server_url"]
        try:
            with anyio.fail_after(TIMEOUT):
                outcome: dict[str, Any] = {"status": await CALLERS[body["client"]](url)}
        except Exception as exc:
            outcome = {
                "error": type(exc).__name__,
                "text": "".join(traceback.format_exception(exc)),
            }
        outcome["seen"] = fingerprints()
        return JSONResponse(outcome)

    app = Starlette(routes=[Route("/v1/responses", respond, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware)
    return app


@pytest.mark.anyio
@pytest.mark.e2e
@pytest.mark.parametrize("client_name", list(CALLERS))
@pytest.mark.parametrize(
    ("server", "expected"),
    [
        pytest.param("down", "ConnectError", id="down"),
        pytest.param("/slow", "ReadTimeout", id="slow"),
        pytest.param("/401", "MCPUpstreamAuthError", id="401"),  # raised by MCPBearerAuth
        pytest.param("/500", 500, id="500"),
    ],
)
async def test_a_failing_mcp_server_leaks_nothing_and_the_next_request_is_clean(
    failing: Failing,
    client_name: str,
    server: str,
    expected: str | int,
    audit_log: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = failing.down + "/mcp" if server == "down" else failing.base + server
    failing.upstream.tokens.clear()
    app = gateway()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        body = {"client": client_name, "tools": [mcp_tool(url, TOKEN_A, "a")]}
        first = await client.post("/v1/responses", content=jbody(body))
        assert fingerprints() == []
        body = {"client": "httpx", "tools": [mcp_tool(failing.base + "/500", TOKEN_B, "b")]}
        second = await client.post("/v1/responses", content=jbody(body))
    outcome = first.json()
    assert outcome["seen"] == A
    if client_name == "mcp-sdk":
        assert "error" in outcome  # the SDK raises for every failure
    elif isinstance(expected, int):
        assert outcome.get("status") == expected
    else:
        assert outcome.get("error") == expected
    assert second.json()["seen"] == B
    # The token went to its own server only, once per hop, and nowhere else.
    sent = failing.upstream.tokens
    assert set(sent) <= {fingerprint(TOKEN_A), fingerprint(TOKEN_B)}
    assert fingerprint(TOKEN_B) in sent
    places = {
        "answer": first.text,
        "audit log": json.dumps(audit_log, default=repr),
        "server log": caplog.text,
    }
    assert leaks(places) == []
    assert fingerprints() == []
