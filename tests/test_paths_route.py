"""``paths``: a request the router hands to a guarded endpoint is always read.

The reference is the router itself. For generated request paths and root paths (a server's
``--root-path``: the scope's ``root_path`` set and its ``path`` starting with it; or a proxy
that sets ``root_path`` only), each application is first run without the middleware to see
which endpoint Starlette's (or FastAPI's) router dispatches the request to. Whenever that
endpoint's route is one ``paths`` is meant to guard, the same request through the middleware
must be read: its smuggled ``Authorization`` refused, the endpoint not run.

Layouts: the middleware on the whole app; on a sub-app under a ``Mount`` (it then sees the
mount in ``root_path``); on a FastAPI app with a prefixed router and a mounted sub-app.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware
from mcp_auth_middleware.testing import serve
from tests.helpers import (
    AUTHORIZATION_IN_HEADERS,
    Exchange,
    carries_sentinel,
    http_request,
    raw_http,
    run_asgi,
    smuggling_document,
)

METHODS = ["POST"]
# What ``paths`` is meant to guard, as route paths (the router's view, root_path removed).
PATTERNS = ("/v1/responses", "/v1/chat/*", "/api/v1/responses")
GUARDED = frozenset({"responses", "chat", "api-responses", "sub-responses", "fastapi-api"})


def _endpoint(name: str, hits: list[str]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        document = await request.json()
        if carries_sentinel(document):
            hits.append(name)
        return PlainTextResponse(name)

    return endpoint


def _starlette(hits: list[str], guarded: bool) -> ASGIApp:
    app = Starlette(
        routes=[
            Route("/v1/responses", _endpoint("responses", hits), methods=METHODS),
            Route("/v1/chat/{rest:path}", _endpoint("chat", hits), methods=METHODS),
            Route("/health", _endpoint("health", hits), methods=METHODS),
            Mount(
                "/api",
                routes=[
                    Route("/v1/responses", _endpoint("api-responses", hits), methods=METHODS),
                    Route("/other", _endpoint("api-other", hits), methods=METHODS),
                ],
            ),
        ]
    )
    if guarded:
        app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(paths=PATTERNS))
    return app


def _mounted_sub_app(hits: list[str], guarded: bool) -> ASGIApp:
    """The middleware on the sub-app only, configured with the sub-app's own route paths."""
    sub = Starlette(
        routes=[
            Route("/v1/responses", _endpoint("sub-responses", hits), methods=METHODS),
            Route("/health", _endpoint("sub-health", hits), methods=METHODS),
        ]
    )
    if guarded:
        sub.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(paths=("/v1/responses",)))
    return Starlette(
        routes=[
            Mount("/api", app=sub),
            Route("/health", _endpoint("health", hits), methods=METHODS),
        ]
    )


def _fastapi(hits: list[str], guarded: bool) -> ASGIApp:
    app = FastAPI()

    @app.post("/v1/responses")
    async def responses(body: dict[str, Any]) -> str:
        if carries_sentinel(body):
            hits.append("responses")
        return "ok"

    @app.post("/v1/chat/{rest:path}")
    async def chat(rest: str, body: dict[str, Any]) -> str:
        if carries_sentinel(body):
            hits.append("chat")
        return "ok"

    router = APIRouter()

    @router.post("/v1/responses")
    async def api_responses(body: dict[str, Any]) -> str:
        if carries_sentinel(body):
            hits.append("fastapi-api")
        return "ok"

    app.include_router(router, prefix="/api")
    if guarded:
        app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(paths=PATTERNS))
    return app


LAYOUTS: dict[str, Callable[[list[str], bool], ASGIApp]] = {
    "starlette": _starlette,
    "mounted-sub-app": _mounted_sub_app,
    "fastapi": _fastapi,
}


@dataclass
class Built:
    plain: ASGIApp
    guarded: ASGIApp
    hits: list[str]


def _build(layout: str) -> Built:
    hits: list[str] = []
    return Built(LAYOUTS[layout](hits, False), LAYOUTS[layout](hits, True), hits)


BUILT = {layout: _build(layout) for layout in LAYOUTS}


# --- generated paths ---------------------------------------------------------------------------

# Paths start from the routes the apps have, then get mangled; or are made of segments.
ROUTES = ["/v1/responses", "/v1/chat/x", "/v1/chat/", "/api/v1/responses", "/health", "/api/other"]
SEGMENTS = ["v1", "responses", "chat", "api", "health", "x", "prefix", "V1", "", "."]
ENDINGS = ["", "", "", "/", "//", "\n", "/\n", "\n\n", " ", "\r"]
ROOT_PATHS = ["", "", "/prefix", "/prefix/", "/api", "/", "/v1", "/v1/"]


@dataclass(frozen=True)
class Target:
    path: str  # the scope's path
    root_path: str

    def __repr__(self) -> str:
        return f"Target(path={self.path!r}, root_path={self.root_path!r})"


@st.composite
def targets(draw: st.DrawFn) -> Target:
    if draw(st.booleans()):
        path = draw(st.sampled_from(ROUTES))
    else:
        segments = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4))
        path = "".join("/" + segment for segment in segments)
    # Repeat some slashes (the first included).
    slashes = [i for i, c in enumerate(path) if c == "/"]
    for at in sorted(draw(st.sets(st.sampled_from(slashes), max_size=2)), reverse=True):
        path = path[:at] + "/" * draw(st.integers(2, 3)) + path[at + 1 :]
    path += draw(st.sampled_from(ENDINGS))
    root_path = draw(st.sampled_from(ROOT_PATHS))
    if draw(st.booleans()):  # the server's --root-path: the path starts with it
        path = root_path.rstrip("/") + path
    return Target(path, root_path)


async def _send(app: ASGIApp, target: Target) -> Exchange:
    body = json.dumps(smuggling_document()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return await run_asgi(
        app, [body], headers=headers, path=target.path, root_path=target.root_path
    )


async def _dispatched_to(built: Built, target: Target) -> str | None:
    built.hits.clear()
    await _send(built.plain, target)
    return built.hits[0] if built.hits else None


async def assert_read_if_guarded(layout: str, target: Target) -> str | None:
    built = BUILT[layout]
    endpoint = await _dispatched_to(built, target)
    if endpoint in GUARDED:
        built.hits.clear()
        answer = await _send(built.guarded, target)
        assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS), (
            f"{layout}: {target} reaches the guarded endpoint {endpoint!r}; "
            f"the middleware answered {answer.status} {answer.code}"
        )
        assert built.hits == [], f"{layout}: {target} ran {endpoint!r} behind the middleware"
    return endpoint


PATH_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.mark.anyio
@pytest.mark.parametrize("layout", list(LAYOUTS))
@PATH_SETTINGS
@given(target=targets())
@example(target=Target("/api/v1/responses", ""))
@example(target=Target("/prefix/v1/responses", "/prefix"))
@example(target=Target("/v1/responses\n", ""))
async def test_every_request_the_router_sends_to_a_guarded_route_is_read(
    layout: str, target: Target
) -> None:
    await assert_read_if_guarded(layout, target)


# (target, the endpoint: Starlette layout's name, FastAPI layout's name)
NAMED = [
    pytest.param(Target("/v1/responses", ""), "responses", id="plain"),
    pytest.param(Target("/prefix/v1/responses", "/prefix"), "responses", id="root-path-in-path"),
    pytest.param(Target("/v1/responses", "/prefix"), "responses", id="root-path-not-in-path"),
    pytest.param(Target("//v1/responses", "/"), "responses", id="root-path-slash"),
    pytest.param(Target("/v1/chat/a//b/", ""), "chat", id="glob-with-repeated-slashes"),
    pytest.param(Target("/api/v1/responses", ""), "api", id="mount"),
    pytest.param(Target("/prefix/api/v1/responses", "/prefix"), "api", id="mount-root-path"),
    pytest.param(Target("/v1/responses\n", ""), "responses", id="trailing-newline"),
    pytest.param(Target("/prefix/v1/responses\n", "/prefix"), "responses", id="root-newline"),
    pytest.param(Target("/v1/chat/x\n", ""), "chat", id="glob-newline"),
]
API_ENDPOINT = {"starlette": "api-responses", "fastapi": "fastapi-api"}


@pytest.mark.anyio
@pytest.mark.parametrize(("target", "endpoint"), NAMED)
@pytest.mark.parametrize("layout", ["starlette", "fastapi"])
async def test_named_paths_to_guarded_routes_are_read(
    layout: str, target: Target, endpoint: str
) -> None:
    expected = API_ENDPOINT[layout] if endpoint == "api" else endpoint
    assert await assert_read_if_guarded(layout, target) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target",
    [Target("/api/v1/responses", ""), Target("/prefix/api/v1/responses", "/prefix")],
    ids=["mount", "mount-under-root-path"],
)
async def test_the_middleware_on_a_mounted_sub_app_reads_its_own_routes(target: Target) -> None:
    assert await assert_read_if_guarded("mounted-sub-app", target) == "sub-responses"


@pytest.mark.anyio
async def test_an_unguarded_route_passes_through() -> None:
    built = BUILT["starlette"]
    built.hits.clear()
    answer = await _send(built.guarded, Target("/health", ""))
    assert answer.status == 200
    assert built.hits == ["health"]


# --- over real HTTP: uvicorn with and without --root-path -----------------------------------------


# uvicorn --root-path serves behind a proxy that strips the prefix: it puts the prefix back
# in front of the path it receives (scope path "/prefix/v1/responses", root_path "/prefix").
REAL = [
    pytest.param("", "/v1/responses", id="plain"),
    pytest.param("", "/v1/responses%0A", id="encoded-newline"),
    pytest.param("", "/v1/chat/x%0A", id="encoded-newline-glob"),
    pytest.param("/prefix", "/v1/responses", id="root-path"),
    pytest.param("/prefix", "/v1/responses%0A", id="root-path-encoded-newline"),
    pytest.param("/prefix", "/api/v1/responses", id="root-path-mount"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("root_path", "target"), REAL)
@pytest.mark.parametrize("layout", ["starlette", "fastapi"])
def test_over_real_http_a_request_routed_to_a_guarded_endpoint_is_read(
    root_path: str, target: str, layout: str
) -> None:
    hits: list[str] = []
    body = json.dumps(smuggling_document()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    with serve(LAYOUTS[layout](hits, False), root_path=root_path) as base_url:
        plain_status, _ = raw_http(base_url, http_request(target, body, headers))
    assert plain_status == 200
    assert hits, "the router does not dispatch it: the case tests nothing"
    hits.clear()
    with serve(LAYOUTS[layout](hits, True), root_path=root_path) as base_url:
        status, answer = raw_http(base_url, http_request(target, body, headers))
    assert status == 400, f"{target!r} reached a guarded endpoint unread ({status})"
    assert json.loads(answer)["error"]["code"] == AUTHORIZATION_IN_HEADERS
    assert hits == []
