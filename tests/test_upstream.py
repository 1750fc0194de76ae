"""Upstream refusals: an MCP server answers 401 or 403 to a request that carried a credential.

Parsing and the error itself in process; then against a real MCP server (the ``mcp`` SDK's,
refusing as the MCP authorization spec says: ``GuardedMCPServer``) on 127.0.0.1: plain
httpx/httpx2 clients, the SDK's streamable HTTP and SSE clients, and a gateway under uvicorn
called by the real ``openai`` package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import httpx2
import llama_stack_client
import openai
import pydantic
import pytest
from fastapi import FastAPI
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseOutputItem,
    ResponseOutputItemDoneEvent,
)
from openai.types.responses.mcp_tool_call_error import HTTPError
from openai.types.responses.response_output_item import McpCall
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mcp_auth_middleware import (
    CREDENTIAL_REFUSED_UPSTREAM,
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPCredential,
    MCPUpstreamAuthError,
    upstream_refusals,
    use_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.fastapi import MCPCredentialsDep
from mcp_auth_middleware.testing import AuditLog, serve
from mcp_auth_middleware.testing.server import Transport
from mcp_auth_middleware.upstream import capture_refusals, find_refusal
from tests.helpers import ASGIProbe, GuardedMCPServer, mcp_tool, run_asgi

ALICE = "alice-token-0123456789"
READER = "reader-token-2222222222"  # known, but without the "mcp" scope: 403
WRONG = "nobodys-token-000000000"  # unknown: 401
TOKENS = (ALICE, READER, WRONG)
WAIT = 5.0


@pytest.fixture
def guarded() -> GuardedMCPServer:
    return GuardedMCPServer({ALICE: "alice", READER: "reader"}, scopes={READER: ["read"]})


@pytest.fixture
def server_url(guarded: GuardedMCPServer) -> Iterator[str]:
    with guarded.running() as url:
        yield url


def cred(url: str, token: str, label: str | None = "crm") -> MCPCredential:
    return MCPCredential(token=token, source="body", server_url=url, server_label=label)


def assert_no_token(*texts: str) -> None:
    for text in texts:
        for token in TOKENS:
            assert token not in text, "a token appears in an error, log or answer"


# --- parsing the challenge (in process) ---------------------------------------------------


def refusal(status: int, challenge: str | None, token: str = ALICE) -> MCPUpstreamAuthError:
    url = "https://user:pw@mcp.example.com/mcp?key=secret"
    # As the wire carries it: bytes, any of them (HTTP/2 does not forbid what h11 would).
    headers = [] if challenge is None else [(b"www-authenticate", challenge.encode("latin-1"))]
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("POST", url))
    return MCPUpstreamAuthError.from_response(response, cred(url, token))


SPEC_CHALLENGE = (
    'Bearer error="insufficient_scope", scope="files:read files:write", '
    'resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp", '
    'error_description="Required scope: files:write"'
)


def test_the_spec_challenge_is_read() -> None:
    exc = refusal(403, SPEC_CHALLENGE)
    assert (exc.status, exc.error, exc.scope) == (
        403,
        "insufficient_scope",
        "files:read files:write",
    )
    assert exc.resource_metadata == (
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    )
    # The credential's server, without user-info or query; its label, source, fingerprint.
    assert exc.server_url == "https://mcp.example.com/mcp"
    assert (exc.server_label, exc.source, exc.fingerprint) == ("crm", "body", fingerprint(ALICE))
    assert exc.code == "mcp_server_forbidden"
    assert str(exc) == (
        "MCP server 'crm' (https://mcp.example.com/mcp) refused the credential "
        "(403 insufficient_scope); it asks for scope 'files:read files:write' and "
        "authorization per its resource metadata "
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp."
    )


@pytest.mark.parametrize(
    ("challenge", "expected"),
    [
        (None, (None, None, None)),
        ("Bearer", (None, None, None)),
        ('Basic realm="x"', (None, None, None)),
        ("Bearer error=invalid_token, scope=mcp", ("invalid_token", "mcp", None)),
        # The SDK hands back an empty quoted value as the two quotes: nothing is asked.
        ('Bearer error="invalid_token", scope=""', ("invalid_token", None, None)),
        # Control characters (a terminal escape, C1 controls, NUL) never reach a message.
        ('Bearer scope="a\x1b[31mb\x85\x9bc\x00d"', (None, "a[31mbcd", None)),
        ('Bearer error="x\ty"', ("xy", None, None)),
    ],
)
def test_odd_challenges_are_read_safely(
    challenge: str | None, expected: tuple[str | None, str | None, str | None]
) -> None:
    exc = refusal(401, challenge)
    assert (exc.error, exc.scope, exc.resource_metadata) == expected
    assert exc.code == "mcp_server_unauthorized"
    assert str(exc).isprintable()


def test_challenge_values_are_bounded() -> None:
    long = "s" * 100_000
    exc = refusal(
        401, f'Bearer error="{long}", scope="{long}", resource_metadata="https://x/{long}"'
    )
    assert (len(exc.error or ""), len(exc.scope or ""), len(exc.resource_metadata or "")) == (
        64,
        512,
        2048,
    )
    assert len(str(exc)) < 3000


def test_a_challenge_that_echoes_the_token_does_not_carry_it() -> None:
    exc = refusal(
        401, f'Bearer error="invalid_token", scope="{ALICE}", resource_metadata="{ALICE}"'
    )
    assert (exc.error, exc.scope, exc.resource_metadata) == ("invalid_token", None, None)
    assert_no_token(str(exc), repr(exc))
    # Nor a part of it: a long token is looked for before values are cut to their bounds,
    # and control characters cannot hide it.
    long = "L" * 4000
    hidden = "\x01".join(long)
    exc = refusal(401, f'Bearer error="x", scope="{hidden}"', token=long)
    assert exc.scope is None


def test_str_repr_and_pickle_hold_no_token_and_keep_every_field() -> None:
    exc = refusal(403, SPEC_CHALLENGE)
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes
    assert repr(copy) == repr(exc)
    assert str(copy) == str(exc)
    assert_no_token(str(exc), repr(exc), exc.error_body().decode())
    assert "secret" not in repr(exc)
    assert "pw" not in repr(exc)


def test_refusals_are_found_inside_nested_exception_groups() -> None:
    exc = refusal(401, None)
    group = ExceptionGroup("outer", [ValueError("x"), ExceptionGroup("inner", [exc])])
    assert find_refusal(group) is exc
    assert find_refusal(ValueError("x")) is None


# --- Responses output items ----------------------------------------------------------------


def test_output_items_are_what_the_openai_package_parses() -> None:
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseOutputItem)
    exc = refusal(401, 'Bearer error="invalid_token", scope="mcp"')
    call = adapter.validate_python(exc.mcp_call_item("search", {"q": "x"}))
    assert (call.type, call.name, call.server_label, call.status) == (
        "mcp_call",
        "search",
        "crm",
        "failed",
    )
    assert json.loads(call.arguments) == {"q": "x"}
    assert (call.error.type, call.error.code, call.error.message) == (
        "http_error",
        401,
        str(exc),
    )
    listed = adapter.validate_python(exc.mcp_list_tools_item(item_id="mcpl_1"))
    assert (listed.type, listed.id, listed.tools, listed.error) == (
        "mcp_list_tools",
        "mcpl_1",
        [],
        str(exc),
    )


# --- the middleware: 424 before the response starts --------------------------------------


REFUSED = refusal(401, 'Bearer error="invalid_token", scope="mcp"')


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raised",
    [
        REFUSED,
        ExceptionGroup("tg", [REFUSED]),
        ExceptionGroup("outer", [ExceptionGroup("inner", [REFUSED, REFUSED])]),
    ],
    ids=["bare", "group", "nested"],
)
async def test_a_refusal_escaping_before_the_response_is_answered_424(
    raised: Exception, audit_log: AuditLog
) -> None:
    app = MCPAuthMiddleware(ASGIProbe(fail=raised), config=MCPAuthConfig())
    body = json.dumps({"tools": [mcp_tool(token=ALICE)]}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", b"req-42"),
    ]
    answer = await run_asgi(app, [body], headers=headers)
    assert answer.status == 424
    assert answer.error == {
        "message": str(REFUSED),
        "type": "external_connector_error",
        "param": "tools",
        "code": "mcp_server_unauthorized",
    }
    [event] = audit_log.named(CREDENTIAL_REFUSED_UPSTREAM)
    assert {k: event[k] for k in ("method", "path", "request_id", "status", "source")} == {
        "method": "POST",
        "path": "/v1/responses",
        "request_id": "req-42",
        "status": 401,
        "source": "body",
    }


async def refuse_after_start(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise ExceptionGroup("tg", [REFUSED])


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("app", "raised"),
    [
        (refuse_after_start, ExceptionGroup),
        (ASGIProbe(fail=ExceptionGroup("tg", [REFUSED, KeyError("bug")])), ExceptionGroup),
        (ASGIProbe(fail=KeyError("bug")), KeyError),
    ],
    ids=["after-start", "with-another-error", "no-refusal"],
)
async def test_other_failures_are_re_raised(app: Any, raised: type[BaseException]) -> None:
    middleware = MCPAuthMiddleware(app, config=MCPAuthConfig())
    body = json.dumps({"tools": [mcp_tool(token=ALICE)]}).encode()
    with pytest.raises(raised):
        await run_asgi(middleware, [body], headers=[(b"content-length", b"%d" % len(body))])


# --- MCPBearerAuth with plain clients, against a real server ----------------------------


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "status", "error"),
    [(WRONG, 401, "invalid_token"), (READER, 403, "insufficient_scope")],
)
async def test_plain_httpx2_raises_the_servers_refusal(
    server_url: str, token: str, status: int, error: str
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with use_credentials([cred(server_url, token)]), capture_refusals() as recorded:
        async with httpx2.AsyncClient(auth=MCPBearerAuth(), timeout=WAIT) as client:
            with pytest.raises(MCPUpstreamAuthError) as caught:
                await client.post(server_url, json=body)
    exc = caught.value
    assert (exc.status, exc.error, exc.scope) == (status, error, "mcp")
    assert exc.resource_metadata is not None
    assert exc.resource_metadata.endswith("/.well-known/oauth-protected-resource/mcp")
    assert (exc.server_url, exc.fingerprint) == (server_url, fingerprint(token))
    assert recorded == [exc]


@pytest.mark.e2e
def test_sync_httpx_raises_it_and_a_request_without_credential_gets_its_response(
    server_url: str,
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    with httpx.Client(auth=MCPBearerAuth(), timeout=WAIT) as client:
        with use_credentials([cred(server_url, WRONG)]), pytest.raises(MCPUpstreamAuthError):
            client.post(server_url, json=body)
        # No credential went out: the 401 is the server's answer, as without the auth.
        other = cred("https://elsewhere.example/mcp", WRONG)
        with use_credentials([other]):
            assert client.post(server_url, json=body).status_code == 401


# --- the mcp SDK's own clients --------------------------------------------------------------


async def list_tools_via_sdk(url: str, transport: Transport, *, revoke: Any = None) -> None:
    """Open a session with the SDK's client for ``transport`` through ``MCPBearerAuth`` and
    list the tools; with ``revoke``, list them, call ``revoke()``, and list them again (a
    request, rather than the ``initialized`` notification, meets the refusal). The SDK's SSE
    transport never answers a request whose POST failed: that one waits one second at most
    (``TimeoutError``)."""
    if transport == "sse":
        async with (
            sse_client(url, auth=MCPBearerAuth()) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            if revoke is not None:
                await session.list_tools()
                revoke()
            with anyio.fail_after(1.0):
                await session.list_tools()
        return
    async with (
        httpx2.AsyncClient(auth=MCPBearerAuth(), timeout=WAIT) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        if revoke is not None:
            await session.list_tools()
            revoke()
        await session.list_tools()


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
@pytest.mark.parametrize(("token", "status"), [(WRONG, 401), (READER, 403)])
async def test_the_sdk_client_lets_the_refusal_out(
    guarded: GuardedMCPServer, transport: Transport, token: str, status: int
) -> None:
    """Refused when opening: streamable HTTP raises it in an ExceptionGroup, SSE bare."""
    with (
        guarded.running(transport) as url,
        use_credentials([cred(url, token)]),
        anyio.fail_after(WAIT),
        pytest.raises(BaseException) as caught,  # noqa: PT011 - checked below
    ):
        await list_tools_via_sdk(url, transport)
    exc = find_refusal(caught.value)
    assert exc is not None, repr(caught.value)
    assert (exc.status, exc.scope, exc.fingerprint) == (status, "mcp", fingerprint(token))
    if transport == "sse":
        assert caught.value is exc


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_token_revoked_mid_session_is_a_refusal(
    guarded: GuardedMCPServer, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    """Streamable HTTP lets it out; the SSE transport swallows it (the request waits until
    its timeout), and the request's record still holds it. What the SDK logs of it (its
    transports log what they swallow, with tracebacks) holds no token."""
    caplog.set_level(logging.DEBUG)
    with (
        guarded.running(transport) as url,
        use_credentials([cred(url, ALICE)]),
        capture_refusals() as recorded,
        anyio.fail_after(WAIT),
        pytest.raises(BaseException) as caught,  # noqa: PT011 - checked below
    ):
        await list_tools_via_sdk(url, transport, revoke=guarded.tokens.clear)
    [exc] = recorded
    assert (exc.status, exc.error, exc.fingerprint) == (401, "invalid_token", fingerprint(ALICE))
    assert_no_token(caplog.text)
    if transport == "sse":
        assert "refused the credential" in caplog.text  # "Error in post_writer", logged
        assert find_refusal(caught.value) is None
        assert [type(e) for e in _leaves(caught.value)] == [TimeoutError], repr(caught.value)
    else:
        assert find_refusal(caught.value) is exc


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


# --- a gateway under uvicorn, called by the openai package ---------------------------------


def sse_event(number: int, event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': number})}\n\n"


def create_gateway(*, transport: Transport = "streamable-http") -> Starlette:
    """The README quick start's shape: the SDK client through MCPBearerAuth, errors left to
    escape; ``/v1/responses?continue=1`` turns a refusal into an ``mcp_list_tools`` item
    instead, and ``/v1/refusals`` answers what ``upstream_refusals()`` recorded."""

    async def responses(request: Request) -> Response:
        body = await request.json()
        if body.get("stream"):
            return StreamingResponse(stream(body), media_type="text/event-stream")
        output: list[dict[str, Any]] = []
        for tool in body["tools"]:
            try:
                await list_tools_via_sdk(tool["server_url"], transport)
            except Exception as exc:
                refusal = find_refusal(exc)
                if refusal is None or "continue" not in request.query_params:
                    raise
                output.append(refusal.mcp_list_tools_item())
        return JSONResponse(
            {
                "id": "resp_1",
                "object": "response",
                "created_at": 0,
                "model": body["model"],
                "status": "completed",
                "output": output,
            }
        )

    async def stream(body: dict[str, Any]) -> AsyncIterator[str]:
        """A Responses stream that has started before the MCP server is called: the refusal
        becomes a failed ``mcp_call`` item."""
        response = {"id": "resp_1", "object": "response", "created_at": 0, "model": "m"}
        created = {"type": "response.created", "response": {**response, "status": "in_progress"}}
        yield sse_event(0, created)
        try:
            await list_tools_via_sdk(body["tools"][0]["server_url"], transport)
            item: dict[str, Any] = {}  # pragma: no cover - the server refuses here
        except Exception as exc:
            refusal = find_refusal(exc)
            if refusal is None:  # pragma: no cover
                raise
            item = refusal.mcp_call_item("search", {"q": "x"})
        done: dict[str, Any] = {"type": "response.output_item.done", "output_index": 0}
        yield sse_event(1, {**done, "item": item})
        completed = {**response, "status": "completed", "output": [item]}
        yield sse_event(2, {"type": "response.completed", "response": completed})

    async def refusals(request: Request) -> JSONResponse:
        body = await request.json()
        with contextlib.suppress(Exception):  # what it was, upstream_refusals() says
            await list_tools_via_sdk(body["tools"][0]["server_url"], transport)
        return JSONResponse([exc.status for exc in upstream_refusals()])

    app = Starlette(
        routes=[
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/openai/v1/responses", responses, methods=["POST"]),  # llama-stack's
            Route("/v1/refusals", refusals, methods=["POST"]),
        ]
    )
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    return app


@pytest.fixture
def gateway() -> Iterator[str]:
    with serve(create_gateway()) as url:
        yield url


def openai_client(gateway: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway + "/v1", api_key="gateway-key", max_retries=0)


def mcp_tools(url: str, token: str) -> list[Any]:
    return [
        {
            "type": "mcp",
            "server_label": "crm",
            "server_url": url,
            "authorization": token,
            "require_approval": "never",
        }
    ]


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("token", "code"), [(WRONG, "mcp_server_unauthorized"), (READER, "mcp_server_forbidden")]
)
async def test_openai_raises_its_error_with_the_code_and_the_audit_names_the_source(
    server_url: str, gateway: str, audit_log: AuditLog, token: str, code: str
) -> None:
    async with openai_client(gateway) as client:
        with anyio.fail_after(2 * WAIT), pytest.raises(openai.APIStatusError) as caught:
            await client.responses.create(
                model="m",
                input="hello",
                tools=mcp_tools(server_url, token),
                extra_headers={"X-Request-ID": "req-7"},
            )
    error = caught.value
    assert (error.status_code, error.code, error.type, error.param) == (
        424,
        code,
        "external_connector_error",
        "tools",
    )
    message = error.body["message"] if isinstance(error.body, dict) else ""
    assert message.startswith(f"MCP server 'crm' ({server_url}) refused the credential")
    assert "scope 'mcp'" in message
    assert "/.well-known/oauth-protected-resource/mcp" in message
    [event] = audit_log.named(CREDENTIAL_REFUSED_UPSTREAM)
    assert {k: v for k, v in event.items() if k not in ("timestamp", "level")} == {
        "event": CREDENTIAL_REFUSED_UPSTREAM,
        "logger": "mcp_auth_middleware.audit",
        "source": "body",
        "fingerprint": fingerprint(token),
        "status": 401 if token == WRONG else 403,
        "server_url": server_url,
        "server_label": "crm",
        "method": "POST",
        "path": "/v1/responses",
        "request_id": "req-7",
    }
    assert_no_token(str(error), json.dumps(error.body), *(json.dumps(e) for e in audit_log))


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_gateway_that_goes_on_answers_an_mcp_list_tools_item_with_the_error(
    server_url: str, gateway: str
) -> None:
    async with openai_client(gateway) as client:
        with anyio.fail_after(2 * WAIT):
            response = await client.responses.create(
                model="m",
                input="hello",
                tools=mcp_tools(server_url, WRONG),
                extra_query={"continue": "1"},
            )
    [item] = response.output
    assert item.type == "mcp_list_tools"
    assert item.server_label == "crm"
    assert item.error is not None
    assert "refused the credential (401 invalid_token)" in item.error


@pytest.mark.e2e
@pytest.mark.anyio
async def test_upstream_refusals_reports_what_the_sse_transport_swallowed(
    guarded: GuardedMCPServer,
) -> None:
    """The application swallowed the error; the request's record says which server refused
    which credential."""
    with guarded.running("sse") as url, serve(create_gateway(transport="sse")) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=WAIT) as client:
            answer = await client.post("/v1/refusals", json={"tools": mcp_tools(url, WRONG)})
    assert answer.json() == [401]


def create_readme_app(http: httpx2.AsyncClient) -> FastAPI:
    """The README's FastAPI quick start, as printed there (``http`` is its client)."""
    app = FastAPI()
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())

    @app.post("/v1/responses")
    async def create_response(
        body: dict[str, Any], credentials: MCPCredentialsDep
    ) -> dict[str, Any]:
        outputs = []
        for tool in body.get("tools", []):
            if tool.get("type") != "mcp":
                continue
            async with streamable_http_client(tool["server_url"], http_client=http) as (r, w):  # noqa: SIM117 - as printed
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    listed = await session.list_tools()
            outputs.append(
                {
                    "server_label": tool.get("server_label"),
                    "tools": [t.name for t in listed.tools],
                    "authenticated": credentials.for_server(tool["server_url"]) is not None,
                }
            )
        return {"output": outputs}

    return app


@pytest.mark.e2e
@pytest.mark.anyio
async def test_the_readme_quick_start_answers_a_refused_token_with_424(server_url: str) -> None:
    http = httpx2.AsyncClient(auth=MCPBearerAuth())
    with serve(create_readme_app(http)) as gateway:
        async with http, httpx.AsyncClient(base_url=gateway, timeout=WAIT) as client:
            refused = await client.post(
                "/v1/responses", json={"tools": mcp_tools(server_url, WRONG)}
            )
            accepted = await client.post(
                "/v1/responses", json={"tools": mcp_tools(server_url, ALICE)}
            )
    assert refused.status_code == 424
    assert refused.json()["error"]["code"] == "mcp_server_unauthorized"
    assert accepted.status_code == 200
    assert accepted.json()["output"][0]["authenticated"] is True


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_stream_that_started_reports_the_refusal_as_a_failed_mcp_call_item(
    server_url: str, gateway: str
) -> None:
    async with openai_client(gateway) as client:
        with anyio.fail_after(2 * WAIT):
            stream = await client.responses.create(
                model="m", input="hello", tools=mcp_tools(server_url, READER), stream=True
            )
            events = [event async for event in stream]
    assert [event.type for event in events] == [
        "response.created",
        "response.output_item.done",
        "response.completed",
    ]
    done, completed = events[1], events[2]
    assert isinstance(done, ResponseOutputItemDoneEvent)
    assert isinstance(completed, ResponseCompletedEvent)
    item = done.item
    assert isinstance(item, McpCall)
    assert (item.status, item.name, item.server_label) == ("failed", "search", "crm")
    assert isinstance(item.error, HTTPError)
    assert item.error.code == 403
    assert "403 insufficient_scope" in item.error.message
    assert completed.response.output == [item]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_llama_stack_client_raises_its_status_error_with_the_code(
    server_url: str, gateway: str
) -> None:
    async with llama_stack_client.AsyncLlamaStackClient(
        base_url=gateway, max_retries=0, timeout=2 * WAIT
    ) as client:
        with pytest.raises(llama_stack_client.APIStatusError) as caught:
            await client.responses.create(
                model="m", input="hello", tools=mcp_tools(server_url, WRONG)
            )
    assert caught.value.status_code == 424
    body: Any = caught.value.body
    assert (body["error"]["code"], body["error"]["type"]) == (
        "mcp_server_unauthorized",
        "external_connector_error",
    )
    assert_no_token(json.dumps(body))
