"""A token goes only where its credential says: no origin fallback, no path tricks.

Two kinds of proof:

* generated paths, each decided by ``MCPBearerAuth``'s matching and by the resolvers that
  servers and front ends run (the standard library's RFC 3986 resolution, percent-decoding,
  merged slashes, backslashes as separators, ``;`` parameters stripped, and a real Starlette
  router under uvicorn): whenever a token is attached, every resolver delivers the request
  under that credential's server, and a plain path is matched as before;
* real MCP servers sharing one origin (mounted at ``/a`` and ``/b``, as hosting platforms run
  them), over streamable HTTP and SSE, with the ``mcp`` SDK's clients and the pool, and
  servers that try to steer the client elsewhere (an SSE ``endpoint`` event, a redirect);
* the attacks on those rules: an endpoint outside its stream's server, ``mcp_headers`` on a
  path servers resolve differently, routers that match the path as sent, a request without
  credentials inside another scope, a custom source's own error, queries servers read alike.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urljoin

import anyio
import httpx2
import pytest
from httpx2._sse import _SSEParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPBearerAuth,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
    mcp_headers,
    use_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.endpoints import _EndpointEvent
from mcp_auth_middleware.sessions import MCPSessionPool
from mcp_auth_middleware.sources.base import SourceRequest
from mcp_auth_middleware.testing import RecordingMCPServer, serve
from mcp_auth_middleware.urls import AmbiguousPath, parse_server_url
from tests.helpers import client, make_app, raw_http

Recording = RecordingMCPServer
A_TOKEN = "a-token-0123456789"
B_TOKEN = "b-token-9876543210"
USERS = {A_TOKEN: "alice", B_TOKEN: "bob"}
WAIT = 10.0


def credentials(origin: str, paths: dict[str, str]) -> MCPCredentials:
    return MCPCredentials(
        MCPCredential(token=token, source="body", server_url=origin + path)
        for path, token in paths.items()
    )


def attached(creds: MCPCredentials, url: str) -> str | None:
    """The token ``MCPBearerAuth`` puts on a request to ``url``."""
    return sent(creds, url)[0]


def sent(creds: MCPCredentials, url: str) -> tuple[str | None, str]:
    """The token ``MCPBearerAuth`` puts on a request to ``url``, and the path on the wire
    (httpx2 resolves literal dot segments itself; percent-encoded ones it sends as given)."""
    request = httpx2.Request("GET", url)
    cred = MCPBearerAuth(credentials=creds, allow_insecure_http=True).credential_for(request)
    wire = request.url.raw_path.decode("ascii").partition("?")[0]
    return (None if cred is None else cred.token.get_secret_value()), wire


# --- generated paths against resolvers ---------------------------------------------------

H = "https://hub.example.com"
SERVERS = {"/a": "tok-a", "/b": "tok-b", "/a/mcp": "tok-amcp"}
CREDS = credentials(H, SERVERS)

PIECES = [
    "a", "b", "mcp", "x", "A", "", ".", "..", "%2e", "%2E", "%2e%2e", ".%2e", "%2E.",
    "%2f", "%2F", "%5c", "%5C", "\\", "..;", ".;x", "a;x", ";", "%61", "%62", "%25",
    "%252e%252e", "%00", "%zz", "~", "%7e", "x.y", "...", "%3b",
]  # fmt: skip
paths = st.lists(st.sampled_from(PIECES), min_size=1, max_size=7).map(lambda p: "/" + "/".join(p))


def _prefix_route(path: str) -> str | None:
    """The token of the longest whole-segment prefix among ``SERVERS`` (no dot handling)."""
    best = None
    for server, token in SERVERS.items():
        if (path == server or path.startswith(server + "/")) and (
            best is None or len(server) > len(best[0])
        ):
            best = (server, token)
    return None if best is None else best[1]


def _rfc(path: str) -> str:
    """The standard library's RFC 3986 resolution of an absolute path: ``urljoin`` of it as a
    relative reference (``./`` first, so ``//a`` is no network path), keeping the ``;`` that
    ``urljoin`` would take for empty parameters and drop."""
    resolved = urljoin("http://h/", "." + path.replace(";", "%3B"))
    return resolved[len("http://h") :].replace("%3B", ";")


RESOLVERS: dict[str, Any] = {
    # uvicorn decodes, Starlette routes what it got: dot segments kept as names
    "decode-only": lambda p: unquote(p),
    # RFC 3986 resolution on the path as sent, then decoded
    "rfc-then-decode": lambda p: unquote(_rfc(p)),
    # a normalising front end: decode, then remove dot segments
    "decode-then-rfc": lambda p: _rfc(unquote(p)),
    # one that merges slashes first (nginx's merge_slashes)
    "merge-decode-rfc": lambda p: _rfc(re.sub("/+", "/", unquote(p))),
    # one that takes a backslash for a slash
    "backslash-decode-rfc": lambda p: _rfc(unquote(p).replace("\\", "/")),
    # one that strips ``;`` path parameters from each segment (servlet containers)
    "params-decode-rfc": lambda p: _rfc(
        "/".join(s.partition(";")[0] for s in unquote(p).split("/"))
    ),
    # one that decodes twice
    "double-decode-rfc": lambda p: _rfc(unquote(unquote(p))),
}


def _trim(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


@settings(max_examples=3000, deadline=None)
@given(path=paths)
def test_a_token_is_attached_only_where_every_resolver_agrees(path: str) -> None:
    token, wire = sent(CREDS, H + path)
    if token is not None:
        for name, resolve in RESOLVERS.items():
            assert _prefix_route(_trim(resolve(wire))) == token, (name, path, wire)
    if all(c.isalnum() or c == "/" for c in wire) and "//" not in wire:  # a plain path
        assert token == _prefix_route(_trim(wire)), path


@settings(max_examples=400, deadline=None)
@given(path=paths)
def test_a_server_url_is_normalised_or_refused(path: str) -> None:
    """A credential's own URL: dot segments resolved as the stdlib does, or refused."""
    try:
        server = parse_server_url(H + path)
    except AmbiguousPath:
        return
    expected = _trim(_rfc(unquote(path))) or "/"
    assert unquote(server.path) == expected


def test_the_issue_cases_get_no_token() -> None:
    creds = credentials(H, {"/a": "tok-a", "/b": "tok-b"})
    for path in ["/a/%2e%2e/b/x", "/a/..%2Fb/x", "/a/..;/b/x", "/a\\..\\b/x", "/a/%2E%2E/b"]:
        assert attached(creds, H + path) is None, path
    only_b = credentials(H, {"/b/mcp": "tok-b"})
    assert attached(only_b, H + "/a/mcp") is None  # the origin's only credential: not A's
    assert attached(only_b, H + "/b/mcp/../mcp") == "tok-b"


# --- a real router: Starlette mounts under uvicorn --------------------------------------


def _echo(name: str) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(name)

    return Starlette(routes=[Route("/{rest:path}", endpoint, methods=["GET"])])


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    routes: list[Any] = []
    for server in sorted(SERVERS, key=len, reverse=True):  # the most specific first
        routes += [Route(server, _echo(SERVERS[server])), Mount(server, _echo(SERVERS[server]))]
    app = Starlette(routes=routes)
    with serve(app) as url:
        yield url


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=paths)
def test_a_real_router_delivers_a_tokened_request_to_its_server(router: str, path: str) -> None:
    token, wire = sent(CREDS, H + path)
    if token is None:
        return
    host = router.removeprefix("http://")
    status, body = raw_http(
        router, f"GET {wire} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert (status, body.decode()) == (200, token), path


# --- real MCP servers sharing one origin --------------------------------------------------


@asynccontextmanager
async def shared_origin(
    transport: str,
) -> AsyncIterator[tuple[str, RecordingMCPServer, RecordingMCPServer]]:
    """Two recording MCP servers on one origin, at ``/a`` and ``/b``."""
    servers = (RecordingMCPServer(USERS, name="a"), RecordingMCPServer(USERS, name="b"))
    apps = [s.app(transport) for s in servers]  # type: ignore[arg-type]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if transport == "streamable-http":
                for s in servers:
                    await stack.enter_async_context(s.server.session_manager.run())
            yield

    app = Starlette(routes=[Mount("/a", app=apps[0]), Mount("/b", app=apps[1])], lifespan=lifespan)
    with serve(app) as url:
        yield (url, *servers)


@asynccontextmanager
async def mcp_session(url: str, auth: MCPBearerAuth) -> AsyncIterator[ClientSession]:
    async with contextlib.AsyncExitStack() as stack:
        if url.endswith("/sse"):
            transport: Any = sse_client(url, auth=auth)
        else:
            http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth))
            transport = streamable_http_client(url, http_client=http)
        streams = await stack.enter_async_context(transport)
        session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
        await session.initialize()
        yield session


async def whoami(url: str, auth: MCPBearerAuth) -> str:
    with anyio.fail_after(WAIT):
        async with mcp_session(url, auth) as session:
            result = await session.call_tool("whoami", {})
    return str((result.structured_content or {}).get("result"))


ENDPOINTS = {"streamable-http": "/mcp", "sse": "/sse"}


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_each_server_on_a_shared_origin_gets_only_its_own_token(transport: str) -> None:
    async with shared_origin(transport) as (base, a, b):
        end = ENDPOINTS[transport]
        creds = credentials(base, {f"/a{end}": A_TOKEN, f"/b{end}": B_TOKEN})
        with use_credentials(creds):
            assert await whoami(f"{base}/a{end}", MCPBearerAuth()) == "alice"
            assert await whoami(f"{base}/b{end}", MCPBearerAuth()) == "bob"
    assert a.tokens_seen == {fingerprint(A_TOKEN)}
    assert b.tokens_seen == {fingerprint(B_TOKEN)}
    # SSE: the message posts went to each server's announced endpoint, with its token
    posts = [r for r in (*a.requests, *b.requests) if r.method == "POST"]
    assert posts
    assert all(r.auth == "accepted" for r in posts)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_server_the_caller_gave_no_token_gets_none(transport: str) -> None:
    """The origin's only credential is B's: A receives no token at all (it answers 401)."""
    async with shared_origin(transport) as (base, a, _b):
        end = ENDPOINTS[transport]
        only_b = credentials(base, {f"/b{end}": B_TOKEN})
        with use_credentials(only_b), contextlib.suppress(Exception):  # A's 401, however raised
            await whoami(f"{base}/a{end}", MCPBearerAuth())
    assert a.requests
    assert {r.auth for r in a.requests} == {"absent"}
    assert a.calls == []


@pytest.mark.anyio
async def test_the_pool_sends_no_token_to_a_server_it_has_none_for() -> None:
    async with shared_origin("streamable-http") as (base, a, _b):
        with use_credentials(credentials(base, {"/b/mcp": B_TOKEN})):
            async with MCPSessionPool(allow_insecure_http=True) as pool:
                with anyio.fail_after(WAIT), contextlib.suppress(MCPError):  # A's 401
                    await pool.call_tool(f"{base}/a/mcp", "whoami", {})
                result = await pool.call_tool(f"{base}/b/mcp", "whoami", {})
                assert (result.structured_content or {}).get("result") == "bob"
    assert a.requests
    assert {r.auth for r in a.requests} == {"absent"}


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["https://h/a/%2e%2e/b/x", "https://h/a/..%2Fb/x", "https://h/b"])
async def test_the_pool_refuses_an_explicit_credential_outside_its_server(url: str) -> None:
    cred = MCPCredential(token=A_TOKEN, source="body", server_url="https://h/a")
    async with MCPSessionPool() as pool:
        with pytest.raises(ValueError, match=r"server|path") as caught:
            await pool.call_tool(url, "whoami", {}, credential=cred)
    assert A_TOKEN not in str(caught.value)


# --- servers that steer the client ------------------------------------------------------


def steering_sse(endpoint: str, seen: list[str | None]) -> ASGIApp:
    """An SSE endpoint that announces ``endpoint`` as its message URL and records the
    Authorization of every request it gets."""

    async def stream(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))

        async def events() -> AsyncIterator[bytes]:
            yield f"event: endpoint\r\ndata: {endpoint}\r\n\r\n".encode()
            await anyio.sleep(WAIT)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/sse", stream)])


async def try_sse_session(url: str) -> None:
    """Open an SSE session with ``MCPBearerAuth`` and try to initialize it (a steering
    server never answers): what reached whom is what the servers recorded."""
    with anyio.move_on_after(3):
        async with (
            sse_client(url, auth=MCPBearerAuth()) as (read, write),
            ClientSession(read, write) as session,
        ):
            with contextlib.suppress(MCPError, TimeoutError), anyio.fail_after(2):
                await session.initialize()


def recorder(seen: list[str | None]) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        seen.append(request.headers.get("authorization"))
        return PlainTextResponse("accepted", status_code=202)

    return Starlette(routes=[Route("/{rest:path}", endpoint, methods=["GET", "POST"])])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "endpoint",
    [
        "/b/mcp?session_id=1",  # B's own server URL: the stream's credential and B's disagree
        "/a/%2e%2e/b/mcp?session_id=1",  # a dot segment: servers resolve it differently
        "/b/elsewhere?session_id=1",  # outside A's directory
        "http://127.0.0.2:1/a/messages?session_id=1",  # another origin
    ],
)
async def test_an_sse_server_cannot_steer_a_token_with_its_endpoint_event(endpoint: str) -> None:
    stream_seen: list[str | None] = []
    b_seen: list[str | None] = []
    app = Starlette(
        routes=[Mount("/a", app=steering_sse(endpoint, stream_seen)), Mount("/b", recorder(b_seen))]
    )
    with serve(app) as base:
        creds = credentials(base, {"/a/sse": A_TOKEN, "/b/mcp": B_TOKEN})
        with use_credentials(creds):
            await try_sse_session(f"{base}/a/sse")
    assert stream_seen == [f"Bearer {A_TOKEN}"]
    # A's token never leaves A's directory; B's goes only to B's own server URL
    allowed = {None, f"Bearer {B_TOKEN}"} if endpoint.startswith("/b/mcp?") else {None}
    assert set(b_seen) <= allowed, "a steered request carried a token"


@pytest.mark.anyio
@pytest.mark.parametrize("location", ["/a/%2e%2e/b/mcp", "/b/mcp", "/a/..%2Fb/mcp"])
async def test_a_redirect_that_leaves_the_server_carries_no_token(location: str) -> None:
    """The ``mcp`` SDK follows a same-origin 307 through the auth: the next hop carries
    only what its own URL allows, which here is nothing (or B's own token at B's URL)."""
    seen: list[tuple[str, str | None]] = []

    async def redirect(request: Request) -> Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        return RedirectResponse(location, status_code=307)

    async def target(request: Request) -> Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        return PlainTextResponse("", status_code=401)

    app = Starlette(
        routes=[
            Route("/a/mcp", redirect, methods=["POST"]),
            Route("/{rest:path}", target, methods=["POST", "GET", "DELETE"]),
        ]
    )
    with serve(app) as base:
        creds = credentials(base, {"/a/mcp": A_TOKEN, "/b/mcp": B_TOKEN})
        with use_credentials(creds), anyio.move_on_after(WAIT), contextlib.suppress(Exception):
            await whoami(f"{base}/a/mcp", MCPBearerAuth())
    assert seen[0] == ("/a/mcp", f"Bearer {A_TOKEN}")
    later = {auth for _, auth in seen[1:]}
    assert seen[1:]
    assert later <= ({None, f"Bearer {B_TOKEN}"} if location == "/b/mcp" else {None})


# --- the endpoint event, read as the SDK's parser reads it ---------------------------------

FIELDS = st.sampled_from(
    [
        "event: endpoint",
        "event:endpoint",
        "event: message",
        ": hi",
        "id: 1",
        "retry: 5",
        "event",
        "data",
        "eventx: endpoint",
        "event: endpoint ",
    ]
)
DATA = st.text(st.sampled_from("/am?=_1é:\u2028 "), max_size=12).map(lambda d: "data: " + d)
LINES = st.lists(st.one_of(FIELDS, DATA, st.just("")), max_size=14)
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=1500, deadline=None)
@given(lines=LINES, ending=ENDINGS, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_the_endpoint_event_is_the_one_the_sdk_parser_reads(
    lines: list[str], ending: str, cuts: list[int]
) -> None:
    """Differential against httpx2's SSE parser (the one the ``mcp`` SDK's ``sse_client``
    uses), on generated streams cut into chunks anywhere, even inside a character. The
    stream stays open, so neither side flushes a last line that may still grow."""
    raw = (ending.join(lines) + ending + ending).encode()
    reference = _SSEParser()
    expected = next(
        (e.data for e in reference.decode(raw.decode()) if e.event == "endpoint"),
        None,
    )
    reader = _EndpointEvent()
    got = None
    bounds = sorted({0, len(raw), *(c for c in cuts if c < len(raw))})
    for start, end in itertools.pairwise(bounds):
        got = reader.feed(raw[start:end])
        if got is not None:
            break
    assert got == expected


CLIENTS = ["httpx.Client", "httpx.AsyncClient", "httpx2.Client", "httpx2.AsyncClient"]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", CLIENTS)
async def test_an_announced_endpoint_carries_the_stream_s_token_only_while_it_is_open(
    kind: str,
) -> None:
    """Any client, sync or async, httpx or httpx2: the endpoint the stream announced gets
    the stream's token while the stream is open, and nothing once it is closed."""
    import httpx

    posts: list[str | None] = []
    announcing = steering_sse("/a/messages/?session_id=7", [])
    server_a = Starlette(routes=[*announcing.routes, *recorder(posts).routes])  # type: ignore[attr-defined]
    app = Starlette(routes=[Mount("/a", app=server_a)])
    lib = httpx if kind.startswith("httpx.") else httpx2
    with serve(app) as base, use_credentials(credentials(base, {"/a/sse": A_TOKEN})):
        endpoint = f"{base}/a/messages/?session_id=7"
        if kind.endswith("AsyncClient"):
            async with lib.AsyncClient(auth=MCPBearerAuth()) as c:
                async with c.stream("GET", f"{base}/a/sse") as stream:
                    lines = stream.aiter_lines()  # held: a dropped iterator closes the stream
                    async for line in lines:
                        if line.startswith("data:"):
                            break
                    await c.post(endpoint)
                    await c.post(f"{base}/a/messages/?session_id=8")  # not announced
                await c.post(endpoint)
        else:
            with lib.Client(auth=MCPBearerAuth()) as c:
                with c.stream("GET", f"{base}/a/sse") as stream:
                    sync_lines = stream.iter_lines()
                    for line in sync_lines:
                        if line.startswith("data:"):
                            break
                    c.post(endpoint)
                    c.post(f"{base}/a/messages/?session_id=8")
                c.post(endpoint)
    assert posts == [f"Bearer {A_TOKEN}", None, None]


# --- the SSE endpoint of a stream under its credential's server ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", ["/c/messages/?session_id=1", "/messages/?session_id=1"])
async def test_a_stream_under_a_credential_s_server_binds_no_endpoint_outside_it(
    endpoint: str,
) -> None:
    """A token for ``/a`` (the server) opens ``/a/sse``: the server's directory is ``/a``
    itself, not ``/``, so an endpoint event naming a neighbour (``/c``, the origin's root)
    gets no token."""
    stream_seen: list[str | None] = []
    c_seen: list[str | None] = []
    app = Starlette(
        routes=[Mount("/a", app=steering_sse(endpoint, stream_seen)), Mount("/", recorder(c_seen))]
    )
    with serve(app) as base, use_credentials(credentials(base, {"/a": A_TOKEN})):
        await try_sse_session(f"{base}/a/sse")
    assert stream_seen == [f"Bearer {A_TOKEN}"]
    assert c_seen, "the client never posted to the announced endpoint"
    assert not any(c_seen), "the neighbour received A's token"


# --- mcp_headers and the paths servers resolve differently ------------------------------


@pytest.mark.parametrize("path", ["/a/%2e%2e/b/mcp", "/a/%2E./b/mcp", "/a/.%2e/b/mcp"])
def test_mcp_headers_gives_no_token_where_servers_disagree(path: str) -> None:
    """uvicorn + Starlette deliver ``/a/%2e%2e/b/mcp`` to the server mounted at ``/a``; the
    URL normalises to ``/b/mcp``, so an exact lookup alone would hand A B's token."""
    app = Starlette(routes=[Mount("/a", _echo("server-a")), Mount("/b", _echo("server-b"))])
    with serve(app) as base:
        host = base.removeprefix("http://")
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        assert raw_http(base, request.encode()) == (200, b"server-a")
        creds = credentials(base, {"/a/mcp": A_TOKEN, "/b/mcp": B_TOKEN})
        with use_credentials(creds):
            assert "Authorization" not in set(mcp_headers(base + path))  # names only
            assert mcp_headers(base + "/b/mcp")["Authorization"] == f"Bearer {B_TOKEN}"


# --- a router that matches the path as sent ---------------------------------------------


@pytest.mark.parametrize("path", ["/%61/mcp", "/%61", "/%62/mcp"])
def test_a_raw_path_router_sees_the_same_server(path: str) -> None:
    creds = credentials(H, {"/a": "tok-a", "/b": "tok-b"})
    token, wire = sent(creds, H + path)
    routed = next(
        (t for p, t in (("/a", "tok-a"), ("/b", "tok-b")) if wire == p or wire.startswith(p + "/")),
        None,
    )  # the raw router: prefix match on the path as sent
    agrees = token is None or token == routed  # no token value in a failure's output
    assert agrees, (path, wire)


# --- a request without credentials served inside another scope ---------------------------


@pytest.mark.anyio
async def test_a_request_without_credentials_sees_none_inside_another_scope() -> None:
    app = make_app()
    with use_credentials(credentials(H, {"/a": A_TOKEN})):
        async with client(app) as http:
            response = await http.post("/v1/responses", json={"input": "hi"})
    assert response.status_code == 200
    assert [c["server_url"] for c in response.json()["credentials"]] == []


# --- a custom source that fails with the token in its exception --------------------------

VAULT_SECRET = "vault-secret-5f3a9c"


class FailingVault:
    """A vault source whose parser fails, quoting what it parsed (``int()``, pydantic and
    many clients do)."""

    name = "vault"
    needs_body = False

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        raise ValueError(f"cannot parse the vault's answer {{'token': '{VAULT_SECRET}'}}")


@pytest.mark.anyio
async def test_a_failing_custom_source_s_error_holds_no_secret() -> None:
    app = make_app(MCPAuthConfig(sources=(FailingVault(),)))
    async with client(app) as http:
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any error, as long as it is clean
            await http.post("/v1/responses", json={"input": "hi"})
    rendered = "".join(traceback.format_exception(caught.value))
    leaked = VAULT_SECRET in rendered
    assert not leaked, "the source's secret is in the traceback"


# --- the pool and a URL servers resolve differently ---------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/a/%2e%2e/b/mcp", "/a/.%2E/b/mcp", "/b/mcp/%2e/"])
async def test_the_pool_opens_no_session_to_a_url_servers_resolve_differently(path: str) -> None:
    """The pool keys sessions by the normalised URL (``/b/mcp``) but connects to the URL as
    given, which uvicorn + Starlette route to ``/a``: it refuses such a URL."""
    async with shared_origin("streamable-http") as (base, a, b):
        default = MCPCredential(token=B_TOKEN, source="body")  # the unbound tool-runtime one
        async with MCPSessionPool(allow_insecure_http=True) as pool:
            with anyio.fail_after(WAIT), pytest.raises(ValueError, match=r"dot segments|ambiguous"):
                await pool.call_tool(base + path, "whoami", {}, credential=default)
            with anyio.fail_after(WAIT):
                result = await pool.call_tool(f"{base}/b/mcp", "whoami", {}, credential=default)
    assert (result.structured_content or {}).get("result") == "bob"
    assert a.requests == [], "a session under B's key was opened to server A"
    assert {r.auth for r in b.requests} == {"accepted"}


# --- queries servers read alike ------------------------------------------------------------


@pytest.mark.parametrize("query", ["tenant=%78", "tenant=x&", "tenant=y&tenant=x"])
def test_a_query_a_server_reads_as_another_credential_s_gets_not_this_one(query: str) -> None:
    async def tenant(request: Request) -> Response:
        return PlainTextResponse(request.query_params.get("tenant", ""))

    with serve(Starlette(routes=[Route("/mcp", tenant)])) as base:
        host = base.removeprefix("http://")
        request = f"GET /mcp?{query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        assert raw_http(base, request.encode()) == (200, b"x")  # the server reads tenant x
    creds = credentials(H, {"/mcp?tenant=x": "tok-x", "/mcp": "tok-y"})
    token, _ = sent(creds, f"{H}/mcp?{query}")
    agrees = token in (None, "tok-x")  # no token value in a failure's output
    assert agrees, query


# --- the endpoint binding's limits, with an in-memory transport ----------------------------

Seen = list[tuple[str, str | None, str | None]]


def _sse_transport(events: dict[str, list[bytes]], seen: Seen) -> httpx2.MockTransport:
    """Event streams by path, sent chunk by chunk (anything else: 202), recording what each
    request carried."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        carried = (request.headers.get("authorization"), request.headers.get("x-api-key"))
        seen.append((request.url.path, *carried))
        chunks = events.get(request.url.path)
        if chunks is None:
            return httpx2.Response(202)
        event_stream = {"content-type": "text/event-stream"}
        return httpx2.Response(200, headers=event_stream, content=iter(chunks))

    return httpx2.MockTransport(handler)


def _stream_and_post(events: dict[str, list[bytes]], creds: MCPCredentials, *posts: str) -> Seen:
    """Open each event stream and read its chunks but a last one (``: open``), so that it
    stays open (a stream read to its end is closed), then post to ``posts``."""
    seen: Seen = []
    auth = MCPBearerAuth(credentials=creds)
    held = []
    with contextlib.ExitStack() as stack:
        transport = _sse_transport({p: [*c, b": open\n"] for p, c in events.items()}, seen)
        client = stack.enter_context(httpx2.Client(transport=transport, auth=auth))
        for path, chunks in events.items():
            response = stack.enter_context(client.stream("GET", H + path))
            held.append(response.iter_raw())
            for _ in chunks:
                next(held[-1])
        for post in posts:
            client.post(H + post)
    return seen


ENDPOINT = b"event: endpoint\ndata: /a/messages/?session_id=1\n\n"


def test_an_endpoint_event_after_the_first_64_kib_binds_nothing() -> None:
    padding = [b": padding\n" * 1_000] * 7  # 70 KB of comments first
    seen = _stream_and_post(
        {"/a/sse": [*padding, ENDPOINT]},
        credentials(H, {"/a/sse": A_TOKEN}),
        "/a/messages/?session_id=1",
    )
    assert [auth for _, auth, _ in seen] == [f"Bearer {A_TOKEN}", None]


def test_a_header_only_server_s_stream_gives_its_endpoint_the_headers() -> None:
    entry = MCPServerHeaders(
        headers={"X-Api-Key": "api-key-1"}, source="provider_data", server_url=H + "/a/sse"
    )
    creds = MCPCredentials(headers=[entry])
    seen = _stream_and_post({"/a/sse": [ENDPOINT]}, creds, "/a/messages/?session_id=1", "/b")
    assert seen == [
        ("/a/sse", None, "api-key-1"),
        ("/a/messages/", None, "api-key-1"),
        ("/b", None, None),
    ]
    assert MCPBearerAuth(credentials=creds).headers_for(httpx2.Request("POST", H + "/b")) is None


def test_bindings_are_bounded_the_oldest_going_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mcp_auth_middleware.endpoints.MAX_BINDINGS", 2)
    events = {
        f"/s{i}/sse": [f"event: endpoint\ndata: /s{i}/m?session_id={i}\n\n".encode()]
        for i in range(3)
    }
    creds = credentials(H, {f"/s{i}/sse": f"token-of-s{i}-0123" for i in range(3)})
    seen = _stream_and_post(events, creds, *(f"/s{i}/m?session_id={i}" for i in range(3)))
    posted = [auth for path, auth, _ in seen if path.endswith("/m")]
    assert posted == [None, "Bearer token-of-s1-0123", "Bearer token-of-s2-0123"]


def test_mcp_headers_gives_no_headers_where_dot_segments_disagree() -> None:
    entry = MCPServerHeaders(
        headers={"X-Api-Key": "api-key-1"}, source="provider_data", server_url=H + "/b"
    )
    creds = MCPCredentials(
        [MCPCredential(token=A_TOKEN, source="body", server_url=H + "/a")], headers=[entry]
    )
    with use_credentials(creds):
        assert mcp_headers(H + "/b") == {"X-Api-Key": "api-key-1"}
        assert mcp_headers(H + "/a/../b") == {}  # B's URL normalised; routed under /a as sent
