"""Attacks on "a token goes only where its credential says", each a real server or resolver.

* an SSE stream opened under a credential's server binds no endpoint outside that server;
* ``mcp_headers`` gives no token for a URL whose path servers resolve differently;
* a router that matches the path as sent (no percent-decoding) sees the same server;
* a request that carries no credentials sees none, even when served inside another scope;
* a custom source's own error holds no secret;
* the pool opens no session to a URL that servers route elsewhere than its key says;
* a query a server reads as a query-bound credential's gets no other credential's token.
"""

from __future__ import annotations

import contextlib
import traceback

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPBearerAuth,
    MCPCredential,
    mcp_headers,
    use_credentials,
)
from mcp_auth_middleware.sessions import MCPSessionPool
from mcp_auth_middleware.sources.base import SourceRequest
from mcp_auth_middleware.testing import serve
from tests.helpers import client, make_app, raw_http
from tests.test_token_reach import (
    A_TOKEN,
    B_TOKEN,
    WAIT,
    H,
    _echo,
    credentials,
    recorder,
    sent,
    shared_origin,
    steering_sse,
)

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
    with (
        serve(app) as base,
        use_credentials(credentials(base, {"/a": A_TOKEN})),
        anyio.move_on_after(3),
    ):
        async with (
            sse_client(f"{base}/a/sse", auth=MCPBearerAuth()) as (read, write),
            ClientSession(read, write) as session,
        ):
            with contextlib.suppress(MCPError, TimeoutError), anyio.fail_after(2):
                await session.initialize()
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


@pytest.mark.xfail(
    strict=True,
    reason="percent-encoded unreserved characters are decoded before matching; a router "
    "that matches the raw path (Envoy without normalize_path, HAProxy path_beg) routes "
    "/%61/x to its default backend, which then receives A's token",
)
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
@pytest.mark.xfail(
    strict=True,
    reason="the middleware sets no scope for a request without credentials, so the request "
    "sees whatever scope its caller's context holds (an in-process ASGI call, a second "
    "middleware further in)",
)
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
@pytest.mark.xfail(
    strict=True,
    reason="an exception a custom source raises (other than CredentialRejected and "
    "InvalidCredential) propagates unchanged, with whatever secret its message quotes",
)
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
            with anyio.fail_after(WAIT), pytest.raises(ValueError, match="dot segments"):
                await pool.call_tool(base + path, "whoami", {}, credential=default)
            with anyio.fail_after(WAIT):
                result = await pool.call_tool(f"{base}/b/mcp", "whoami", {}, credential=default)
    assert (result.structured_content or {}).get("result") == "bob"
    assert a.requests == [], "a session under B's key was opened to server A"
    assert {r.auth for r in b.requests} == {"accepted"}


# --- queries servers read alike ------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="a credential with a query matches only that exact query string; a request whose "
    "query a server reads as the same (percent-encoded, a trailing '&', the key repeated: "
    "the last value wins) falls to the credential without a query at that path",
)
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
