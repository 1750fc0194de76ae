"""The middleware under Litestar, Quart and a plain ASGI app, as each is written.

Each framework serves the same four routes, in its own idiom (its JSON parsing, its streaming
response, its background tasks, its worker threads for sync handlers):

* ``POST /v1/responses``: parses the body the framework's way; answers what it parsed and
  the credentials in scope;
* ``POST /v1/stream``: a streaming response whose generator reads the credentials after
  each chunk, long after the handler returned;
* ``POST /v1/background``: schedules a background task that records the credentials
  (Litestar and Quart; a plain ASGI app has no such thing). Litestar runs it before the
  request ends, so it sees them; Quart runs it after, so it sees none unless the handler
  passes them on with ``use_credentials``, which the Quart route does as a second record;
* ``POST /v1/tools``: a sync handler (run in a worker thread by Litestar and Quart) that
  takes no body and reads provider-data header credentials.

Every route records where it ran and what it saw in a ``Seen``, so a test can tell "refused
before the handler" from "handled". Starlette and FastAPI have their own tests
(``test_fastapi.py`` and most others).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar, MediaType, Response, post
from litestar.background_tasks import BackgroundTask
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.params import JSONBody
from litestar.response import Stream
from quart import Quart
from quart import Response as QuartResponse
from quart import request as quart_request
from starlette.types import Receive, Scope, Send

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredentials,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.errors import AUTHORIZATION_IN_HEADERS
from mcp_auth_middleware.testing import serve
from tests.helpers import PROVIDER_DATA, client, describe, eventually, mcp_tool, provider_data

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
STREAM_CHUNKS = 3
TIMEOUT = 10.0  # every request and wait in this file


def tokens_in_scope() -> dict[str, str]:
    """The current credentials as ``{server_url: token}`` (tests only: tokens included)."""
    return {str(c.server_url): c.token.get_secret_value() for c in current_credentials()}


@dataclass
class Seen:
    """What the app's handlers saw, in order: ``(route, parsed body or None, credentials)``.
    Appended to from the server's threads; read after a bounded wait."""

    calls: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    background: threading.Event = field(default_factory=threading.Event)
    lifespan: list[tuple[str, int]] = field(default_factory=list)

    def record(self, route: str, parsed: Any = None) -> dict[str, Any]:
        seen = describe(current_credentials())
        self.calls.append((route, parsed, seen))
        return seen

    def routes(self) -> list[str]:
        return [route for route, _, _ in self.calls]


@dataclass
class FrameworkApp:
    name: str
    app: Any  # the ASGI callable a server runs
    seen: Seen


# --- Litestar ----------------------------------------------------------------------------


def litestar_app(config: MCPAuthConfig) -> FrameworkApp:
    seen = Seen()

    @post("/v1/responses", status_code=200)
    async def responses(
        data: JSONBody[dict[str, Any]], credentials: NamedDependency[MCPCredentials]
    ) -> dict[str, Any]:
        assert credentials is current_credentials()
        return seen.record("responses", data)

    @post("/v1/stream", status_code=200)
    async def stream(data: JSONBody[dict[str, Any]]) -> Stream:
        seen.record("stream", data)

        async def chunks() -> AsyncIterator[str]:
            for _ in range(STREAM_CHUNKS):
                await anyio.sleep(0.01)
                yield json.dumps(tokens_in_scope()) + "\n"

        return Stream(chunks(), media_type=MediaType.TEXT)

    @post("/v1/background", status_code=200)
    async def background(data: JSONBody[dict[str, Any]]) -> Response[dict[str, Any]]:
        async def task() -> None:
            seen.record("background")
            seen.background.set()

        return Response(seen.record("background-handler", data), background=BackgroundTask(task))

    @post("/v1/tools", status_code=200, sync_to_thread=True)
    def tools() -> dict[str, Any]:
        return seen.record("tools")

    app = Litestar(
        [responses, stream, background, tools],
        # Litestar types its ASGI apps with TypedDicts, the middleware with Starlette's aliases.
        middleware=[DefineMiddleware(MCPAuthMiddleware, config=config)],  # type: ignore[arg-type]
        dependencies={"credentials": Provide(current_credentials, sync_to_thread=False)},
        on_startup=[lambda: seen.lifespan.append(("startup", len(current_credentials())))],
        on_shutdown=[lambda: seen.lifespan.append(("shutdown", len(current_credentials())))],
    )
    return FrameworkApp("litestar", app, seen)


# --- Quart -------------------------------------------------------------------------------


def quart_app(config: MCPAuthConfig) -> FrameworkApp:
    seen = Seen()
    app = Quart(__name__)

    @app.post("/v1/responses")
    async def responses() -> dict[str, Any]:
        return seen.record("responses", await quart_request.get_json(silent=True))

    @app.post("/v1/stream")
    async def stream() -> tuple[AsyncIterator[bytes], int, dict[str, str]]:
        seen.record("stream", await quart_request.get_json(silent=True))

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(STREAM_CHUNKS):
                await anyio.sleep(0.01)
                yield (json.dumps(tokens_in_scope()) + "\n").encode()

        return chunks(), 200, {"Content-Type": "text/plain"}

    @app.post("/v1/background")
    async def background() -> dict[str, Any]:
        given = current_credentials()  # Quart runs the task after the request has ended

        async def task() -> None:
            await anyio.sleep(0.01)  # after the response has gone
            seen.record("background")
            with use_credentials(given):
                seen.record("background-given")
            seen.background.set()

        app.add_background_task(task)
        return seen.record("background-handler", await quart_request.get_json(silent=True))

    @app.post("/v1/tools")
    def tools() -> dict[str, Any]:
        return seen.record("tools")

    @app.after_request
    async def after(response: QuartResponse) -> QuartResponse:
        response.headers["X-After-Request"] = "ran"
        return response

    @app.before_serving
    async def startup() -> None:
        seen.lifespan.append(("startup", len(current_credentials())))

    @app.after_serving
    async def shutdown() -> None:
        seen.lifespan.append(("shutdown", len(current_credentials())))

    # Quart types asgi_app as a method, with TypedDict scopes (see the Litestar note above).
    app.asgi_app = MCPAuthMiddleware(app.asgi_app, config=config)  # type: ignore[arg-type,assignment,method-assign]
    return FrameworkApp("quart", app, seen)


# --- a plain ASGI app --------------------------------------------------------------------


async def _json_response(send: Send, status: int, payload: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


def asgi_app(config: MCPAuthConfig) -> FrameworkApp:
    seen = Seen()

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            phase = message["type"].removeprefix("lifespan.")
            seen.lifespan.append((phase, len(current_credentials())))
            await send({"type": f"{message['type']}.complete"})
            if phase == "shutdown":
                return

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        assert scope["type"] == "http"
        if scope["path"] == "/v1/tools":  # reads no body, as a handler with no body param
            return await _json_response(send, 200, seen.record("tools"))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:  # whatever the Content-Type, as Starlette's request.json() and Litestar do
            parsed = json.loads(body)
        except ValueError:
            return await _json_response(send, 400, {"detail": "Send JSON."})
        if scope["path"] != "/v1/stream":
            return await _json_response(send, 200, seen.record("responses", parsed))
        seen.record("stream", parsed)
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(start | {"headers": [(b"content-type", b"text/plain")]})
        for _ in range(STREAM_CHUNKS):
            await anyio.sleep(0.01)
            chunk = (json.dumps(tokens_in_scope()) + "\n").encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return FrameworkApp("asgi", MCPAuthMiddleware(app, config=config), seen)


FRAMEWORKS: dict[str, Callable[[MCPAuthConfig], FrameworkApp]] = {
    "litestar": litestar_app,
    "quart": quart_app,
    "asgi": asgi_app,
}


@pytest.fixture(params=FRAMEWORKS.keys())
def framework(request: pytest.FixtureRequest) -> FrameworkApp:
    return FRAMEWORKS[request.param](MCPAuthConfig())


def _body(*tools: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "input": "hi", "tools": list(tools)}


async def _stream_lines(c: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, str]]:
    async with c.stream("POST", "/v1/stream", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        return [json.loads(line) async for line in r.aiter_lines() if line]


# --- in process ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_handler_sees_the_body_credentials_and_the_body_as_sent(
    framework: FrameworkApp,
) -> None:
    body = _body(mcp_tool(URL, token="Bearer tok-1", label="a"), mcp_tool(OTHER, token="tok-2"))
    async with client(framework.app) as c:
        r = await c.post("/v1/responses", json=body)
        await c.post("/v1/responses", json=_body())
    assert r.status_code == 200, r.text
    assert {(c["server_url"], c["token"], c["source"]) for c in r.json()["credentials"]} == {
        (URL, "tok-1", "body"),
        (OTHER, "tok-2", "body"),
    }
    [(_, parsed, _), (_, _, seen_after)] = framework.seen.calls
    assert parsed == body  # the framework parsed the same bytes, authorization included
    assert seen_after["credentials"] == []  # the next request carries nothing
    assert len(current_credentials()) == 0  # nor does the test, outside both


@pytest.mark.anyio
async def test_a_streaming_generator_sees_the_credentials_after_the_handler_returned(
    framework: FrameworkApp,
) -> None:
    async with client(framework.app) as c:
        lines = await _stream_lines(c, _body(mcp_tool(URL, token="tok-s")))
        bare = await _stream_lines(c, _body(mcp_tool(URL, token=None)))
    assert lines == [{URL: "tok-s"}] * STREAM_CHUNKS
    assert bare == [{}] * STREAM_CHUNKS


@pytest.mark.anyio
@pytest.mark.parametrize("framework", ["litestar", "quart"], indirect=True)  # plain ASGI: none
async def test_a_background_task_sees_the_credentials_only_while_the_request_lasts(
    framework: FrameworkApp,
) -> None:
    """Litestar runs background tasks inside the request: they see its credentials. Quart
    runs them after it ended: they see none, unless the handler passes them on."""
    async with client(framework.app) as c:
        r = await c.post("/v1/background", json=_body(mcp_tool(URL, token="tok-bg")))
        assert r.status_code == 200
        await eventually(framework.seen.background.is_set, seconds=TIMEOUT)
    seen = {route: s["credentials"] for route, _, s in framework.seen.calls}
    expected = [(URL, "tok-bg")]
    if framework.name == "quart":
        assert seen["background"] == []
        assert [(c["server_url"], c["token"]) for c in seen["background-given"]] == expected
    else:
        assert [(c["server_url"], c["token"]) for c in seen["background"]] == expected


@pytest.mark.anyio
async def test_a_sync_handler_sees_provider_data_credentials(framework: FrameworkApp) -> None:
    """The header alone (the handler reads no body); Litestar and Quart run it in a thread."""
    headers = provider_data({URL: {"Authorization": "Bearer pd-1", "X-Tenant": "t1"}})
    async with client(framework.app) as c:
        r = await c.post("/v1/tools", json={}, headers=headers)
    assert r.status_code == 200, r.text
    [cred] = r.json()["credentials"]
    assert (cred["server_url"], cred["token"], cred["source"]) == (URL, "pd-1", "provider_data")
    assert cred["headers"] == {"X-Tenant": "t1"}


REFUSED = {
    "authorization-in-headers": (
        _body(mcp_tool(URL, token=None, headers={"Authorization": "Bearer smuggled"})),
        {},
        "tools[0].headers",
        AUTHORIZATION_IN_HEADERS,
    ),
    "invalid-authorization": (
        _body(mcp_tool(URL, token="has space")),
        {},
        "tools[0].authorization",
        "invalid_authorization",
    ),
    "invalid-provider-data": (_body(), {PROVIDER_DATA: "not json"}, PROVIDER_DATA, None),
}


@pytest.mark.anyio
@pytest.mark.parametrize("route", ["/v1/responses", "/v1/stream"])
@pytest.mark.parametrize(("body", "headers", "param", "code"), REFUSED.values(), ids=REFUSED)
async def test_a_bad_request_gets_the_openai_400_and_no_handler_runs(
    framework: FrameworkApp,
    route: str,
    body: dict[str, Any],
    headers: dict[str, str],
    param: str,
    code: str | None,
) -> None:
    async with client(framework.app) as c:
        r = await c.post(route, json=body, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    if code is not None:
        assert error["code"] == code
    assert "smuggled" not in r.text
    assert framework.seen.calls == []


CONTENT_TYPES = [
    None,
    "",
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/vnd.api+json",
    "application/json, text/plain",
    "text/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
]


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=repr)
async def test_no_body_the_framework_parses_reaches_its_handler_unchecked(
    framework: FrameworkApp, content_type: str | None
) -> None:
    """Whatever the Content-Type: either the middleware read the body (and refused the
    smuggled token) or the handler got no parsed body."""
    body = json.dumps(_body(mcp_tool(URL, token=None, headers={"Authorization": "Bearer x"})))
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with client(framework.app) as c:
        r = await c.post("/v1/responses", content=body, headers=headers)
    assert r.status_code in (200, 400, 415), r.text
    assert [parsed for _, parsed, _ in framework.seen.calls if parsed is not None] == []


@pytest.mark.anyio
async def test_litestar_parses_a_text_plain_body_as_json_and_the_middleware_reads_it() -> None:
    """Litestar decodes ``data`` from a ``text/plain`` body: the middleware reads any body
    that may be a JSON object, so the smuggled Authorization never reaches the handler."""
    framework = litestar_app(MCPAuthConfig())
    body = _body(mcp_tool(URL, token=None, headers={"Authorization": "Bearer x"}))
    async with client(framework.app) as c:
        r = await c.post(
            "/v1/responses", content=json.dumps(body), headers={"Content-Type": "text/plain"}
        )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == AUTHORIZATION_IN_HEADERS
    assert framework.seen.calls == []


@pytest.mark.anyio
async def test_where_the_middleware_sits_in_each_framework(framework: FrameworkApp) -> None:
    """Litestar runs app-level middleware after routing: an unknown path is its 404, the body
    unread. Quart's ``asgi_app`` and a plain app are wrapped whole: the middleware answers
    first, so Quart's ``after_request`` hooks never see its 400s."""
    smuggled = _body(mcp_tool(URL, token=None, headers={"Authorization": "Bearer x"}))
    async with client(framework.app) as c:
        unknown = await c.post("/no/such/route", json=smuggled)
        refused = await c.post("/v1/responses", json=smuggled)
        fine = await c.post("/v1/responses", json=_body())
    assert unknown.status_code == (404 if framework.name == "litestar" else 400)
    assert refused.status_code == 400
    assert fine.status_code == 200
    if framework.name == "quart":
        assert fine.headers["X-After-Request"] == "ran"
        assert "X-After-Request" not in refused.headers
    assert framework.seen.routes() == ["responses"]


# --- over HTTP, under uvicorn -------------------------------------------------------------


@pytest.fixture
def served(framework: FrameworkApp) -> Iterator[tuple[FrameworkApp, str]]:
    with serve(framework.app) as base:
        yield framework, base
    # uvicorn ran the app's lifespan, which never sees a request's credentials.
    assert framework.seen.lifespan == [("startup", 0), ("shutdown", 0)]


async def _concurrent_streams(c: httpx.AsyncClient, tokens: list[str]) -> dict[str, list[Any]]:
    lines: dict[str, list[Any]] = {}

    async def one(token: str) -> None:
        lines[token] = await _stream_lines(c, _body(mcp_tool(URL, token=token)))

    async with anyio.create_task_group() as tg:
        for token in tokens:
            tg.start_soon(one, token)
    return lines


@pytest.mark.e2e
@pytest.mark.anyio
async def test_over_http_each_request_sees_its_own_credentials_and_nothing_after(
    served: tuple[FrameworkApp, str],
) -> None:
    framework, base = served
    smuggled = _body(mcp_tool(URL, token=None, headers={"Authorization": "Bearer smuggled"}))
    headers = provider_data({OTHER: {"Authorization": "Bearer pd-http"}})
    keep_alive = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=base, limits=keep_alive, timeout=TIMEOUT) as c:
        streamed = await _stream_lines(c, _body(mcp_tool(URL, token="tok-http")))
        refused = await c.post("/v1/responses", json=smuggled)
        from_header = await c.post("/v1/tools", json={}, headers=headers)
        bare = await c.post("/v1/responses", json=_body())
    assert streamed == [{URL: "tok-http"}] * STREAM_CHUNKS
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == AUTHORIZATION_IN_HEADERS
    [cred] = from_header.json()["credentials"]
    assert (cred["server_url"], cred["token"]) == (OTHER, "pd-http")
    assert bare.json()["credentials"] == []
    assert framework.seen.routes() == ["stream", "tools", "responses"]

    # Interleaved streams on separate connections: each sees only its own token throughout.
    tokens = [f"tok-{i}" for i in range(8)]
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as c:
        lines = await _concurrent_streams(c, tokens)
    assert lines == {token: [{URL: token}] * STREAM_CHUNKS for token in tokens}
