"""End to end, over real sockets: caller -> gateway (MCPAuthMiddleware) -> real MCP server.

The gateway is a Responses API in miniature: for each ``{"type": "mcp"}`` tool of a request it
opens an MCP session to the tool's ``server_url`` with the official ``mcp`` SDK over one shared
``httpx2.AsyncClient(auth=MCPBearerAuth())`` and calls ``whoami``. It never touches a token:
the middleware scopes the caller's credentials and ``MCPBearerAuth`` picks one per outgoing
request. The MCP server knows its users by token, so its answer says whose token arrived.

Every test runs on the installed ``mcp`` SDK's client and server: 2.x (its client on httpx2),
and 1.x (its client on httpx; ``make test-mcp1``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
import pytest
from mcp import ClientSession
from mcp.client.sse import sse_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_auth_middleware import (
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPUpstreamAuthError,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing import Call, RecordingMCPServer, serve
from mcp_auth_middleware.testing.pytest_plugin import MCPServerFactory
from mcp_auth_middleware.urls import normalize_server_url
from tests.helpers import (
    MCP_MAJOR,
    mcp_tool,
    provider_data_bearer,
    sdk_http,
    streamable_session,
    structured,
)

if TYPE_CHECKING:
    import httpx2

#: The error an SDK client session raises for an error answer.
MCPError: type[Exception] = (
    import_module("mcp").MCPError
    if MCP_MAJOR >= 2
    else import_module("mcp.shared.exceptions").McpError
)

pytestmark = pytest.mark.e2e

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
WRONG = "nobodys-token-000000"
USERS = {ALICE: "alice", BOB: "bob"}
TIMEOUT = 10.0


# --- the gateway -------------------------------------------------------------------------

# What the gateway's MCP client sent during the current gateway request, one entry per HTTP
# exchange: method, path, status, and the fingerprint of the token it carried (or None).
_hops: ContextVar[list[dict[str, Any]]] = ContextVar("hops")


async def _record_hop(response: httpx2.Response) -> None:
    hops = _hops.get(None)
    if hops is not None:
        auth = response.request.headers.get("Authorization")
        hops.append(
            {
                "method": response.request.method,
                "path": response.request.url.raw_path.decode(),
                "status": response.status_code,
                "token": None if auth is None else fingerprint(auth.removeprefix("Bearer ")),
            }
        )


def _traced_client(
    headers: dict[str, str] | None = None,
    timeout: httpx2.Timeout | None = None,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """``httpx_client_factory`` for ``sse_client``: its own client, hops recorded."""
    return sdk_http.AsyncClient(  # type: ignore[no-any-return]
        headers=headers, timeout=timeout, auth=auth, event_hooks={"response": [_record_hop]}
    )


class Gateway:
    """``POST /v1/responses``: call ``whoami`` on the server of each MCP tool of the body.

    Answers ``{"output": [mcp_call items], "hops": [...]}``. A URL ending in ``/sse`` is
    reached with the SSE transport, any other with streamable HTTP. ``?pool=credential``
    keeps sessions open across requests keyed by server and credential ("Downstream");
    ``?pool=server`` keys them by server only, which is wrong, and shows why.
    """

    def __init__(self) -> None:
        self.auth = MCPBearerAuth()
        self.http = sdk_http.AsyncClient(
            auth=self.auth, timeout=TIMEOUT, event_hooks={"response": [_record_hop]}
        )
        self.sessions: dict[tuple[str, str | None], ClientSession] = {}
        self.app = Starlette(
            routes=[Route("/v1/responses", self.responses, methods=["POST"])],
            lifespan=self.lifespan,
        )
        self.app.add_middleware(MCPAuthMiddleware)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.closing = anyio.Event()
        self.pool_lock = anyio.Lock()
        async with self.http, anyio.create_task_group() as self.tasks:
            yield
            self.closing.set()  # pooled sessions close: one DELETE each, within the client timeout

    async def responses(self, request: Request) -> JSONResponse:
        body = await request.json()
        pool = request.query_params.get("pool")
        hops: list[dict[str, Any]] = []
        reset = _hops.set(hops)
        try:
            output = [
                await self._mcp_call(tool, pool, hops)
                for tool in body.get("tools", [])
                if tool.get("type") == "mcp"
            ]
        finally:
            _hops.reset(reset)
        return JSONResponse({"output": output, "hops": hops})

    async def _mcp_call(
        self, tool: dict[str, Any], pool: str | None, hops: list[dict[str, Any]]
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "mcp_call", "server_label": tool.get("server_label")}
        first_hop = len(hops)
        with anyio.fail_after(TIMEOUT):
            try:
                if pool is None:
                    async with self._session(tool["server_url"]) as session:
                        result = await session.call_tool("whoami", {})
                else:
                    session, item["reused"] = await self._pooled(tool["server_url"], pool)
                    result = await session.call_tool("whoami", {})
            except* (MCPError, MCPUpstreamAuthError, sdk_http.HTTPError):
                failed = [h["status"] for h in hops[first_hop:] if h["status"] >= 400]
                item["error"] = {"mcp_status": failed[0] if failed else None}
            else:
                item["output"] = structured(result).get("result")
        return item

    @asynccontextmanager
    async def _session(self, url: str) -> AsyncIterator[ClientSession]:
        if not url.rstrip("/").endswith("/sse"):
            async with streamable_session(url, self.http) as session:
                yield session
            return
        transport = sse_client(url, auth=self.auth, httpx_client_factory=_traced_client)
        async with transport as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session

    async def _pooled(self, url: str, pool: str) -> tuple[ClientSession, bool]:
        cred = current_credentials().for_server(url)
        key = (normalize_server_url(url), cred.fingerprint if cred and pool != "server" else None)
        async with self.pool_lock:
            if key in self.sessions:
                return self.sessions[key], True
            session: ClientSession = await self.tasks.start(self._hold, url)
            self.sessions[key] = session
            return session, False

    async def _hold(self, url: str, *, task_status: anyio.abc.TaskStatus[ClientSession]) -> None:
        """Own one pooled session (opened in this task, so closed in it) until shutdown.

        The task outlives the opening request, so it scopes the opener's credentials itself
        (``use_credentials``): a context copied from a request sees none once the request has
        ended. The handshake and the session's GET stream carry the opener's token. With the
        mcp SDK 2.x each later message carries the token of the request that sends it (the SDK
        sends in the sender's context); with 1.x, the opener's (it sends from this task).
        """
        with use_credentials(current_credentials()):
            async with self._session(url) as session:
                task_status.started(session)
                await self.closing.wait()


# --- fixtures and helpers -----------------------------------------------------------------


@dataclass
class Upstream:
    mcp: RecordingMCPServer
    url: str

    @property
    def users(self) -> list[str]:
        return [call.user for call in self.mcp.calls]


@pytest.fixture
def mcp_http(mcp_server_factory: MCPServerFactory) -> Upstream:
    """A real MCP server, streamable HTTP at ``/mcp``."""
    mcp = mcp_server_factory(USERS)
    return Upstream(mcp, mcp.url)


@pytest.fixture
def mcp_sse(mcp_server_factory: MCPServerFactory) -> Upstream:
    """A real MCP server, SSE at ``/sse`` (messages posted to ``/messages/?session_id=...``)."""
    mcp = mcp_server_factory(USERS, transport="sse")
    return Upstream(mcp, mcp.url)


@pytest.fixture
def gateway() -> Iterator[str]:
    with serve(Gateway().app) as base_url:
        yield base_url


async def ask(
    gateway: str,
    tools: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
    pool: str | None = None,
) -> dict[str, Any]:
    """POST a Responses-shaped request to the gateway over the socket."""
    async with httpx.AsyncClient(base_url=gateway, timeout=2 * TIMEOUT) as client:
        response = await client.post(
            "/v1/responses",
            json={"model": "m", "input": "who am I?", "tools": tools},
            headers=headers,
            params={} if pool is None else {"pool": pool},
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body_token", "provider_token", "user"),
    [
        pytest.param(ALICE, None, "alice", id="body-parameter"),
        pytest.param(None, BOB, "bob", id="provider-data-header"),
        pytest.param(ALICE, BOB, "alice", id="body-wins-over-provider-data"),
    ],
)
async def test_the_callers_token_reaches_the_mcp_server(
    mcp_http: Upstream, gateway: str, body_token: str | None, provider_token: str | None, user: str
) -> None:
    """Whichever carrier brings the token, the MCP server sees that token's user."""
    headers = None if provider_token is None else provider_data_bearer(mcp_http.url, provider_token)
    token: Any = ... if body_token is None else body_token
    answer = await ask(gateway, [mcp_tool(mcp_http.url, token, label="s")], headers)
    assert answer["output"] == [{"type": "mcp_call", "server_label": "s", "output": user}]
    assert mcp_http.mcp.calls == [Call(user=user, tool="whoami")]
    assert {hop["token"] for hop in answer["hops"]} == {fingerprint(body_token or BOB)}


@pytest.mark.anyio
async def test_a_wrong_token_gets_the_mcp_servers_401_and_no_other_token_is_tried(
    mcp_http: Upstream, gateway: str
) -> None:
    answer = await ask(
        gateway,
        [mcp_tool(mcp_http.url, WRONG, label="s")],
        provider_data_bearer("https://other/mcp", BOB),
    )
    assert answer["output"] == [
        {"type": "mcp_call", "server_label": "s", "error": {"mcp_status": 401}}
    ]
    assert {hop["token"] for hop in answer["hops"]} == {fingerprint(WRONG)}
    assert mcp_http.mcp.rejected == [fingerprint(WRONG)]
    assert mcp_http.mcp.calls == []


@pytest.mark.anyio
async def test_no_credential_goes_out_without_authorization_and_gets_401(
    mcp_http: Upstream, gateway: str
) -> None:
    answer = await ask(gateway, [mcp_tool(mcp_http.url, ..., label="s")])
    assert answer["output"] == [
        {"type": "mcp_call", "server_label": "s", "error": {"mcp_status": 401}}
    ]
    assert [hop["token"] for hop in answer["hops"]] == [None]
    assert mcp_http.mcp.rejected == []
    assert mcp_http.mcp.calls == []


@pytest.mark.anyio
async def test_each_server_gets_only_the_token_given_for_it(
    mcp_http: Upstream, mcp_sse: Upstream, gateway: str
) -> None:
    """Two servers on two origins in one request: each sees its own caller, nobody else's."""
    answer = await ask(
        gateway, [mcp_tool(mcp_http.url, ALICE, label="a"), mcp_tool(mcp_sse.url, BOB, label="b")]
    )
    assert [item.get("output") for item in answer["output"]] == ["alice", "bob"]
    assert mcp_http.users == ["alice"]
    assert mcp_sse.users == ["bob"]
    # Each server's own record of every HTTP request: its own token, never the other's.
    assert mcp_http.mcp.tokens_seen == {fingerprint(ALICE)}
    assert mcp_sse.mcp.tokens_seen == {fingerprint(BOB)}
    for hop in answer["hops"]:
        expected = ALICE if hop["path"] == "/mcp" else BOB
        assert hop["token"] == fingerprint(expected), hop


@pytest.mark.anyio
async def test_a_pooled_session_is_reused_by_a_later_request_with_the_same_token(
    mcp_http: Upstream, gateway: str
) -> None:
    tools = [mcp_tool(mcp_http.url, ALICE, label="s")]
    first = await ask(gateway, tools, pool="credential")
    seen = len(mcp_http.mcp.requests)
    second = await ask(gateway, tools, pool="credential")
    assert first["output"] == [
        {"type": "mcp_call", "server_label": "s", "reused": False, "output": "alice"}
    ]
    assert second["output"] == [
        {"type": "mcp_call", "server_label": "s", "reused": True, "output": "alice"}
    ]
    # The later request sent only its tool call, on the open session, with its own token
    # (the server's own record: mcp 1.x sends it from the task that opened the session).
    sent = [(r.method, r.status, r.token) for r in mcp_http.mcp.requests[seen:]]
    assert sent == [("POST", 200, fingerprint(ALICE))]
    assert mcp_http.users == ["alice", "alice"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("pool", "bob_gets"),
    [
        pytest.param("credential", {"reused": False, "output": "bob"}, id="keyed-by-credential"),
        pytest.param(
            "server",
            # 2.x sends bob's call with bob's token: the server refuses it on alice's session.
            # 1.x sends it from the task that opened the session, with alice's token: bob is
            # answered as alice, and the server cannot tell.
            {"reused": True, "error": {"mcp_status": 404}}
            if MCP_MAJOR >= 2
            else {"reused": True, "output": "alice"},
            id="keyed-by-server-only",
        ),
    ],
)
async def test_pooled_sessions_must_be_keyed_by_credential(
    mcp_http: Upstream, gateway: str, pool: str, bob_gets: dict[str, Any]
) -> None:
    """A session belongs to the token that opened it: bob must never use alice's."""
    await ask(gateway, [mcp_tool(mcp_http.url, ALICE, label="s")], pool=pool)
    seen = len(mcp_http.mcp.requests)
    answer = await ask(gateway, [mcp_tool(mcp_http.url, BOB, label="s")], pool=pool)
    assert answer["output"] == [{"type": "mcp_call", "server_label": "s", **bob_gets}]
    bobs_call = {r.token for r in mcp_http.mcp.requests[seen:] if r.method == "POST"}
    assert bobs_call == {fingerprint(ALICE if bob_gets.get("output") == "alice" else BOB)}
    assert mcp_http.users == ["alice", bob_gets["output"]] if "output" in bob_gets else ["alice"]


@pytest.mark.anyio
@pytest.mark.parametrize("pool", [None, "credential"], ids=["session-per-request", "pooled"])
async def test_one_shared_client_sends_each_concurrent_request_its_own_token(
    mcp_http: Upstream, gateway: str, pool: str | None
) -> None:
    callers = [ALICE, BOB] * 4
    answers: list[dict[str, Any]] = [{} for _ in callers]

    async def run(i: int, token: str) -> None:
        answers[i] = await ask(gateway, [mcp_tool(mcp_http.url, token, label="s")], pool=pool)

    with anyio.fail_after(2 * TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i, token in enumerate(callers):
                tg.start_soon(run, i, token)
    for token, answer in zip(callers, answers, strict=True):
        assert [item["output"] for item in answer["output"]] == [USERS[token]]
        # 1.x sends a pooled session's messages from the task that opened it, so they show
        # among the opening request's hops; every hop a request saw carries its own token.
        tokens = {hop["token"] for hop in answer["hops"]}
        assert tokens == {fingerprint(token)} or (MCP_MAJOR < 2 and pool and not tokens)
    assert sorted(mcp_http.users) == ["alice"] * 4 + ["bob"] * 4


@pytest.mark.anyio
async def test_sse_transport_sends_the_token_to_the_messages_url_the_server_names(
    mcp_sse: Upstream, gateway: str
) -> None:
    """The lone-credential fallback: the origin's only credential goes to ``/messages/``."""
    answer = await ask(gateway, [mcp_tool(mcp_sse.url, BOB, label="s")])
    assert answer["output"] == [{"type": "mcp_call", "server_label": "s", "output": "bob"}]
    posts = [hop for hop in answer["hops"] if hop["method"] == "POST"]
    assert posts, answer["hops"]
    for hop in posts:
        assert hop["path"].startswith("/messages/?session_id="), hop
        assert (hop["status"], hop["token"]) == (202, fingerprint(BOB))
    assert mcp_sse.users == ["bob"]
