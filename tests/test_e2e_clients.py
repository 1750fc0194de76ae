"""End to end with the real client SDKs: openai / llama-stack-client -> gateway -> MCP server.

Everything runs on 127.0.0.1 under uvicorn: ``examples.gateway`` (FastAPI with
``MCPAuthMiddleware``) and the testing kit's ``RecordingMCPServer``, a real MCP server that
verifies bearer tokens and records which user each tool call came from. The callers use the
SDKs exactly as their users would; the MCP server's answer and its record say whose token
arrived.

The gateway reuses MCP sessions (``MCPSessionPool``) unless told not to; the tests whose path
differs between the two run with both (``reuse`` and ``per-request``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import llama_stack_client
import openai
import pytest
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseMcpCallCompletedEvent,
    ResponseMcpCallFailedEvent,
    ResponseMcpCallInProgressEvent,
    ResponseMcpListToolsCompletedEvent,
    ResponseMcpListToolsFailedEvent,
    ResponseMcpListToolsInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseStreamEvent,
)
from openai.types.responses.response_output_item import McpCall, McpListTools
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from examples import gateway as gateway_module
from examples.gateway import MCPSessions, create_app
from mcp_auth_middleware import (
    CREDENTIAL_REJECTED,
    CREDENTIAL_RESOLVED,
    MCPAuthConfig,
    ProviderDataMode,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.errors import AUTHORIZATION_IN_HEADERS, AUTHORIZATION_IN_PROVIDER_DATA
from mcp_auth_middleware.testing import Call, RecordingMCPServer, serve
from mcp_auth_middleware.testing.pytest_plugin import MCPServerFactory

pytestmark = pytest.mark.e2e

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
CAROL = "carol-token-5555555555"
DAVE = "dave-token-7777777777"
WRONG = "nobodys-token-000000"
USERS = {ALICE: "alice", BOB: "bob", CAROL: "carol", DAVE: "dave"}
TIMEOUT = 10.0  # per SDK request; the SDKs' retries are off, so every wait is bounded
BOTH_MODES = pytest.mark.parametrize("reuse_sessions", [True, False], ids=["reuse", "per-request"])


@pytest.fixture
def mcp(mcp_server_factory: MCPServerFactory) -> RecordingMCPServer:
    return mcp_server_factory(USERS)


@pytest.fixture
def mcp_url(mcp: RecordingMCPServer) -> str:
    return mcp.url


def _gateway(mcp_url: str, config: MCPAuthConfig) -> Any:
    return serve(create_app(config, tool_servers={"whoami": mcp_url}))


@pytest.fixture
def reuse_sessions() -> bool:
    """The gateway's default; ``BOTH_MODES`` runs a test with ``False`` too."""
    return True


@pytest.fixture
def gateway_app(mcp_url: str, reuse_sessions: bool) -> FastAPI:
    config = MCPAuthConfig()
    return create_app(config, tool_servers={"whoami": mcp_url}, reuse_sessions=reuse_sessions)


@pytest.fixture
def gateway(gateway_app: FastAPI) -> Iterator[str]:
    with serve(gateway_app) as base:
        yield base


def _sessions(app: FastAPI) -> MCPSessions:
    sessions: MCPSessions = app.state.mcp_sessions
    return sessions


def _openai(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway}/v1", api_key="not-used", max_retries=0, timeout=TIMEOUT
    )


def _llama_stack(gateway: str, provider_data: dict[str, Any] | None = None) -> Any:
    return llama_stack_client.LlamaStackClient(
        base_url=gateway, provider_data=provider_data, max_retries=0, timeout=TIMEOUT
    )


def _mcp_tool(mcp_url: str, token: str | None, **extra: Any) -> Any:
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": "whoami",
        "server_url": mcp_url,
        "require_approval": "never",
        **extra,
    }
    if token is not None:
        tool["authorization"] = token
    return tool


def _bearer_for(mcp_url: str, token: str) -> dict[str, Any]:
    """Legacy ``X-LlamaStack-Provider-Data`` content for one MCP server."""
    return {"mcp_headers": {mcp_url: {"Authorization": f"Bearer {token}"}}}


def _whoami(
    client: openai.OpenAI, mcp_url: str, token: str | None, *, stream: bool
) -> tuple[Response, list[ResponseStreamEvent]]:
    """Ask the gateway to call ``whoami``; the final response and the stream's events."""
    tools = [_mcp_tool(mcp_url, token)]
    if not stream:
        return client.responses.create(model="m", input="whoami", tools=tools), []
    with client.responses.create(model="m", input="whoami", tools=tools, stream=True) as events:
        seen = list(events)
    assert isinstance(seen[-1], ResponseCompletedEvent)
    return seen[-1].response, seen


def _calls(response: Response) -> tuple[McpListTools, McpCall]:
    listing, call = response.output
    assert isinstance(listing, McpListTools)
    assert isinstance(call, McpCall)
    return listing, call


# --- openai ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_openai_tool_authorization_reaches_the_mcp_server_as_its_user(
    mcp: RecordingMCPServer, mcp_url: str, gateway: str, stream: bool
) -> None:
    """``tools[].authorization`` -> mcp_list_tools + mcp_call answered for that user."""
    with _openai(gateway) as client:
        response, _ = _whoami(client, mcp_url, ALICE, stream=stream)
    listing, call = _calls(response)
    assert [t.name for t in listing.tools] == ["whoami"]
    assert (call.name, call.output, call.error, call.status) == (
        "whoami",
        "alice",
        None,
        "completed",
    )
    assert mcp.calls == [Call(user="alice", tool="whoami")]
    # Every HTTP request the server got (handshake, listing, call, stream) carried alice's.
    assert {(r.auth, r.user, r.token) for r in mcp.requests} == {
        ("accepted", "alice", fingerprint(ALICE))
    }
    assert ALICE not in response.model_dump_json()  # the echoed tools carry no token


def test_openai_stream_parses_into_the_sdk_event_types(mcp_url: str, gateway: str) -> None:
    """Every SSE event becomes its typed SDK model, in Responses order, numbered in sequence."""
    with _openai(gateway) as client:
        _, events = _whoami(client, mcp_url, BOB, stream=True)
    assert [type(e) for e in events] == [
        ResponseCreatedEvent,
        ResponseOutputItemAddedEvent,
        ResponseMcpListToolsInProgressEvent,
        ResponseMcpListToolsCompletedEvent,
        ResponseOutputItemDoneEvent,
        ResponseOutputItemAddedEvent,
        ResponseMcpCallInProgressEvent,
        ResponseMcpCallCompletedEvent,
        ResponseOutputItemDoneEvent,
        ResponseCompletedEvent,
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = [e.item for e in events if isinstance(e, ResponseOutputItemDoneEvent)]
    assert isinstance(done[1], McpCall)
    assert done[1].output == "bob"
    assert BOB not in "".join(e.model_dump_json() for e in events)


def test_openai_authorization_in_tool_headers_is_a_bad_request(
    mcp: RecordingMCPServer, mcp_url: str, gateway: str
) -> None:
    """A token smuggled in ``headers`` is refused before the gateway runs, naming the field."""
    tool = _mcp_tool(mcp_url, None, headers={"Authorization": f"Bearer {ALICE}"})
    with _openai(gateway) as client, pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="m", input="whoami", tools=[tool])
    assert raised.value.param == "tools[0].headers"
    assert raised.value.code == AUTHORIZATION_IN_HEADERS
    assert "tools[0].headers" in raised.value.message
    assert mcp.calls == []


@BOTH_MODES
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("token", [None, WRONG], ids=["missing", "wrong"])
def test_mcp_servers_401_is_an_mcp_call_error_never_a_retry_as_someone_else(
    mcp: RecordingMCPServer,
    mcp_url: str,
    gateway_app: FastAPI,
    gateway: str,
    token: str | None,
    stream: bool,
) -> None:
    """The 401 is reported in the output; no other caller's token is ever tried instead, not
    even alice's pooled session, and the refused session is not pooled."""
    with _openai(gateway) as client:
        _whoami(client, mcp_url, ALICE, stream=False)  # alice's credential was used before
        response, events = _whoami(client, mcp_url, token, stream=stream)
    listing, call = _calls(response)
    assert listing.error is not None
    assert call.status == "failed"
    assert call.output is None
    assert call.error is not None
    assert call.error.model_dump() == {
        "type": "http_error",
        "code": 401,
        "message": "MCP server answered HTTP 401",
    }
    if stream:
        kinds = {type(e) for e in events}
        assert {ResponseMcpListToolsFailedEvent, ResponseMcpCallFailedEvent} <= kinds
    # Only alice's own call ran; the refused token is the only one the server turned down.
    assert mcp.calls == [Call(user="alice", tool="whoami")]
    assert set(mcp.rejected) == (set() if token is None else {fingerprint(token)})
    # At the HTTP level too: after alice's request, only the caller's own token (or none).
    later = {(r.auth, r.token) for r in mcp.requests if r.user != "alice"}
    assert later == ({("absent", None)} if token is None else {("refused", fingerprint(token))})
    pool = _sessions(gateway_app).pool
    assert pool is None or len(pool) == 1  # alice's


async def _overloaded(request: Request) -> PlainTextResponse:
    return PlainTextResponse("overloaded", status_code=503)


@BOTH_MODES
def test_an_mcp_servers_http_error_is_reported_with_its_status(reuse_sessions: bool) -> None:
    """Not only a 401: a server (or the proxy before it) answering 503 gives an ``http_error``
    503 in the output, and nothing is pooled."""
    overloaded = Starlette(routes=[Route("/mcp", _overloaded, methods=["GET", "POST", "DELETE"])])
    app = create_app(MCPAuthConfig(), reuse_sessions=reuse_sessions)
    with serve(overloaded) as base, serve(app) as gateway, _openai(gateway) as client:
        response, _ = _whoami(client, f"{base}/mcp", ALICE, stream=False)
    _, call = _calls(response)
    assert call.error is not None
    assert call.error.model_dump() == {
        "type": "http_error",
        "code": 503,
        "message": "MCP server answered HTTP 503",
    }
    pool = _sessions(app).pool
    assert pool is None or len(pool) == 0


# --- llama-stack-client ------------------------------------------------------------------


def test_llama_stack_provider_data_reaches_the_mcp_server_as_its_user(
    mcp: RecordingMCPServer, mcp_url: str, gateway: str
) -> None:
    """The legacy ``X-LlamaStack-Provider-Data`` ``mcp_headers`` carry the caller's token."""
    tool = _mcp_tool(mcp_url, None)
    with _llama_stack(gateway, provider_data=_bearer_for(mcp_url, BOB)) as client:
        response = client.responses.create(model="m", input="whoami", tools=[tool])
    calls = [item for item in response.output if item.type == "mcp_call"]
    assert [(c.output, c.error) for c in calls] == [("bob", None)]
    assert mcp.calls == [Call(user="bob", tool="whoami")]
    assert mcp.tokens_seen == {fingerprint(BOB)}


@pytest.mark.parametrize("with_endpoint", [False, True], ids=["configured-server", "mcp_endpoint"])
def test_llama_stack_tool_runtime_authorization_reaches_the_mcp_server(
    mcp: RecordingMCPServer, mcp_url: str, gateway: str, with_endpoint: bool
) -> None:
    """A top-level ``authorization`` (sent with ``extra_body``) on ``tool_runtime.invoke_tool``:
    bound to ``mcp_endpoint.uri`` by the middleware, or to the gateway's configured server by
    the gateway, explicitly."""
    extra: dict[str, Any] = {"authorization": CAROL}
    if with_endpoint:
        extra["mcp_endpoint"] = {"uri": mcp_url}
    with _llama_stack(gateway) as client:
        result = client.tool_runtime.invoke_tool(tool_name="whoami", kwargs={}, extra_body=extra)
    assert (result.content, result.error_code, result.error_message) == ("carol", None, None)
    assert mcp.calls == [Call(user="carol", tool="whoami")]


def test_llama_stack_tool_runtime_wrong_token_is_an_error_result(
    mcp: RecordingMCPServer, gateway: str
) -> None:
    with _llama_stack(gateway) as client:
        result = client.tool_runtime.invoke_tool(
            tool_name="whoami", kwargs={}, extra_body={"authorization": WRONG}
        )
    assert (result.content, result.error_code) == (None, 401)
    assert mcp.calls == []
    assert set(mcp.rejected) == {fingerprint(WRONG)}


def _invoke_as(client: Any, token: str) -> Any:
    """``tool_runtime.invoke_tool("whoami")`` with ``token`` (the configured server)."""
    return client.tool_runtime.invoke_tool(
        tool_name="whoami", kwargs={}, extra_body={"authorization": token}
    )


REFUSED_WITHIN = 10  # calls (50 ms apart) until a revoked token's pooled session is gone


def test_a_token_revoked_while_its_session_is_pooled_is_refused_and_not_reused(
    mcp: RecordingMCPServer, gateway_app: FastAPI, gateway: str
) -> None:
    """The MCP server stops accepting alice's token while her session is pooled: her calls
    fail (never answered, never with another token, no hang), soon with the server's 401 and
    nothing left pooled; once the token is valid again a fresh session serves her."""
    pool = _sessions(gateway_app).pool
    assert pool is not None
    assert isinstance(mcp.tokens, dict)
    with _llama_stack(gateway) as client:
        assert _invoke_as(client, ALICE).content == "alice"
        del mcp.tokens[ALICE]
        refusals = []
        for _ in range(REFUSED_WITHIN):
            result = _invoke_as(client, ALICE)
            refusals.append((result.content, result.error_code))
            if result.error_code == 401:
                break
            time.sleep(0.05)
        # The first call to meet the refusal ends alice's pooled session ("Connection closed");
        # the session leaves the pool as soon as it stops serving (see the test below).
        assert all(content is None and code is not None for content, code in refusals)
        assert refusals[-1] == (None, 401)
        assert len(pool) == 0
        mcp.tokens[ALICE] = "alice"
        assert _invoke_as(client, ALICE).content == "alice"
    assert pool.stats.opened == 2
    assert mcp.calls == [Call(user="alice", tool="whoami")] * 2
    assert set(mcp.rejected) == {fingerprint(ALICE)}


CLOSE_DELAY = 0.5  # s: how long a pooled session's HTTP client takes to close, below


class _SlowToClose(httpx2.AsyncClient):
    async def __aexit__(self, *exc_info: Any) -> None:
        await anyio.sleep(CLOSE_DELAY)
        await super().__aexit__(*exc_info)


def test_a_session_whose_transport_failed_is_never_lent_again(
    mcp: RecordingMCPServer, mcp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with closing a session made slow (its HTTP client takes ``CLOSE_DELAY``):
    the call right after the one that ended alice's session must open a fresh session and
    get the 401, not the dead session's "Connection closed"."""
    pooled_client = gateway_module._pooled_client

    def slow_to_close(*, auth: httpx2.Auth, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
        hooks = pooled_client(auth=auth, timeout=timeout).event_hooks
        return _SlowToClose(auth=auth, timeout=timeout, event_hooks=hooks)

    monkeypatch.setattr(gateway_module, "_pooled_client", slow_to_close)
    assert isinstance(mcp.tokens, dict)
    app = create_app(MCPAuthConfig(), tool_servers={"whoami": mcp_url})
    with serve(app) as gateway, _llama_stack(gateway) as client:
        assert _invoke_as(client, ALICE).content == "alice"
        del mcp.tokens[ALICE]
        assert _invoke_as(client, ALICE).content is None  # ends the session
        result = _invoke_as(client, ALICE)  # well within CLOSE_DELAY
        assert (result.content, result.error_code) == (None, 401)


def test_llama_stack_provider_data_is_refused_once_the_migration_is_finished(
    mcp: RecordingMCPServer, mcp_url: str
) -> None:
    """``provider_data="reject"``: the client raises its BadRequestError, which points to the
    ``authorization`` parameter; the MCP server is never called."""
    tool = _mcp_tool(mcp_url, None)
    with (
        _gateway(mcp_url, MCPAuthConfig(provider_data=ProviderDataMode.REJECT)) as gateway,
        _llama_stack(gateway, provider_data=_bearer_for(mcp_url, BOB)) as client,
        pytest.raises(llama_stack_client.BadRequestError) as raised,
    ):
        client.responses.create(model="m", input="whoami", tools=[tool])
    assert raised.value.status_code == 400
    body: Any = raised.value.body
    error = body["error"]
    assert error["code"] == AUTHORIZATION_IN_PROVIDER_DATA
    assert "'authorization' parameter" in error["message"]
    assert BOB not in json.dumps(raised.value.body)
    assert mcp.calls == []


# --- the documented FastAPI stack -----------------------------------------------------------

ORIGIN = "https://app.example.com"


def test_documented_stack_order_puts_the_correlation_id_on_audit_events(
    audit_log: list[dict[str, Any]], mcp_url: str
) -> None:
    """docs/integrations.md: CORS outermost, then asgi-correlation-id, then ours. Audit events
    carry the id the response reports, and a rejection still gets CORS and the id."""
    app = create_app(MCPAuthConfig(), tool_servers={"whoami": mcp_url})  # MCPAuthMiddleware
    app.add_middleware(CorrelationIdMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[ORIGIN],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID"],
    )
    order = [getattr(m.cls, "__name__", "?") for m in app.user_middleware]  # outermost first
    assert order == ["CORSMiddleware", "CorrelationIdMiddleware", "MCPAuthMiddleware"]
    origin = {"Origin": ORIGIN}
    with serve(app) as gateway, _openai(gateway) as client:
        ok = client.responses.with_raw_response.create(
            model="m", input="whoami", tools=[_mcp_tool(mcp_url, ALICE)], extra_headers=origin
        )
        smuggled = _mcp_tool(mcp_url, None, headers={"Authorization": f"Bearer {ALICE}"})
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(
                model="m", input="whoami", tools=[smuggled], extra_headers=origin
            )
    refused = raised.value.response
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    events = {e["event"]: e for e in audit_log if e["event"].startswith("mcp_credential_")}
    assert events[CREDENTIAL_RESOLVED]["request_id"] == ok.headers["x-request-id"]
    assert events[CREDENTIAL_REJECTED]["request_id"] == refused.headers["x-request-id"]


# --- many callers at once ----------------------------------------------------------------

PER_USER = 24  # x 5 callers = 120 requests in flight at once
CONCURRENT_TIMEOUT = 40.0  # they share one CPU with both servers: ~10-20 s in all


@BOTH_MODES
@pytest.mark.anyio
async def test_concurrent_callers_each_reach_the_mcp_server_only_as_themselves(
    mcp: RecordingMCPServer, mcp_url: str, gateway_app: FastAPI, gateway: str, reuse_sessions: bool
) -> None:
    """120 requests at once through one gateway: alice, bob and carol with ``authorization``
    (AsyncOpenAI), dave with provider data (AsyncLlamaStackClient), and mallory with a wrong
    token, who only ever gets her own 401 and never anyone's answer. With reuse, each user's
    requests share the one session their token opened; without, each opens its own."""
    answers: list[tuple[str, str | None]] = []
    client: Any = {"max_retries": 0, "timeout": CONCURRENT_TIMEOUT}

    async with (
        openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="not-used", **client) as oai,
        llama_stack_client.AsyncLlamaStackClient(
            base_url=gateway, provider_data=_bearer_for(mcp_url, DAVE), **client
        ) as lls,
    ):

        async def by_body(who: str, token: str) -> None:
            tools = [_mcp_tool(mcp_url, token)]
            response = await oai.responses.create(model="m", input="whoami", tools=tools)
            _, call = _calls(response)
            answers.append((who, call.output if call.error is None else call.error.type))

        async def by_provider_data() -> None:
            tools = [_mcp_tool(mcp_url, None)]
            response = await lls.responses.create(model="m", input="whoami", tools=tools)
            outputs = [item.output for item in response.output if item.type == "mcp_call"]
            answers.append(("dave", outputs[0]))

        with anyio.fail_after(CONCURRENT_TIMEOUT + 5):
            async with anyio.create_task_group() as tasks:
                for _ in range(PER_USER):
                    for token in (ALICE, BOB, CAROL):
                        tasks.start_soon(by_body, USERS[token], token)
                    tasks.start_soon(by_body, "http_error", WRONG)  # mallory: her 401
                    tasks.start_soon(by_provider_data)

    assert len(answers) == 5 * PER_USER
    assert [who for who, answer in answers if answer != who] == []
    # The MCP server's own record: each user's calls under their own token, exactly.
    assert Counter(c.user for c in mcp.calls) == {user: PER_USER for user in USERS.values()}
    assert set(mcp.rejected) == {fingerprint(WRONG)}
    pool = _sessions(gateway_app).pool
    if not reuse_sessions:
        assert pool is None
        return
    assert pool is not None
    # One session per user, opened once; each request borrowed it twice (list, call). The
    # wrong token's sessions failed to open and were never pooled, so never lent.
    stats = pool.stats
    assert stats.opened == len(USERS)
    assert stats.reused == 2 * len(mcp.calls) - stats.opened
    assert (stats.temporary, stats.evicted, stats.replaced) == (0, 0, 0)
    assert len(pool) == len(USERS)
