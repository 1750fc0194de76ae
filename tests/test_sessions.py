"""MCPSessionPool: MCP sessions reused across requests only with the credential that opened them.

Against a real MCP server (the testing kit's ``RecordingMCPServer``) on 127.0.0.1 behind a
small ASGI ``Tracker`` that watches the protocol: which session ids the server issued to
which token, which token every later request on a session carried, which sessions were
deleted. It can also play a server that has lost every session (``drop = True``: 404
``Session not found``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from fastapi import FastAPI, Request
from mcp import MCPError
from starlette.types import Message, Receive, Scope, Send

from mcp_auth_middleware import (
    CredentialSource,
    InsecureTransportError,
    MCPAuthMiddleware,
    MCPCredential,
    MCPUpstreamAuthError,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.sessions import (
    CREDENTIAL_FOR_OTHER_SERVER,
    POOL_NOT_OPEN,
    SESSION_CLOSED,
    SESSION_OPENED,
    MCPSessionPool,
    MCPSessionPoolStats,
    PoolClosedError,
    Transport,
    is_session_dropped,
)
from mcp_auth_middleware.testing import Call, RecordingMCPServer, serve
from mcp_auth_middleware.testing.server import Transport as ServerTransport
from tests.helpers import GuardedMCPServer, eventually

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
CAROL = "carol-token-5555555555"
WRONG = "nobodys-token-000000"
USERS = {ALICE: "alice", BOB: "bob", CAROL: "carol"}
WAIT = 5.0  # the bound on every wait in this file


# --- the server and what it saw ---------------------------------------------------------


class Tracker:
    """ASGI wrapper in front of the MCP app that records the session protocol.

    ``opened`` maps each session id the server issued to the fingerprint of the token that
    opened it; ``used`` lists ``(session id, token fingerprint)`` for every request naming
    a session; ``deleted`` the sessions a DELETE ended. With ``drop`` set, every request
    naming a session is answered as a server that lost it would (404 Session not found).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.opened: dict[str, str | None] = {}
        self.used: list[tuple[str, str | None]] = []
        self.deleted: list[str] = []
        self.drop = False

    @property
    def live(self) -> set[str]:
        return set(self.opened) - set(self.deleted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        session_id = headers.get("mcp-session-id")
        auth = headers.get("authorization")
        token = None if auth is None else fingerprint(auth.removeprefix("Bearer "))
        if session_id is not None:
            self.used.append((session_id, token))
            if self.drop:
                error = {"code": -32600, "message": "Session not found"}
                await send_json(send, 404, {"jsonrpc": "2.0", "id": None, "error": error})
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                issued = dict(message["headers"]).get(b"mcp-session-id")
                if issued is not None and session_id is None:
                    self.opened[issued.decode()] = token
                if scope["method"] == "DELETE" and session_id and message["status"] == 200:
                    self.deleted.append(session_id)
            await send(message)

        await self.app(scope, receive, watch)


async def send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


@dataclass
class Upstream:
    mcp: RecordingMCPServer
    tracker: Tracker
    url: str

    def cred(self, token: str) -> MCPCredential:
        return MCPCredential(token=token, source="body", server_url=self.url)

    def sessions_of(self, token: str) -> list[str]:
        return [sid for sid, fp in self.tracker.opened.items() if fp == fingerprint(token)]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    mcp = RecordingMCPServer(USERS)
    tracker = Tracker(mcp.streamable_http_app())
    with serve(tracker) as base_url:
        yield Upstream(mcp, tracker, base_url + "/mcp")


async def whoami(pool: MCPSessionPool, upstream: Upstream, token: str | None = None) -> str:
    """``whoami`` through the pool, as a request carrying ``token`` for the server would."""
    creds = [] if token is None else [upstream.cred(token)]
    with use_credentials(creds), anyio.fail_after(WAIT):
        result = await pool.call_tool(upstream.url, "whoami")
    assert not result.is_error, result
    user: str = (result.structured_content or {})["result"]
    return user


def stats(**counts: int) -> MCPSessionPoolStats:
    return MCPSessionPoolStats(**counts)


# --- reuse, keyed by credential ---------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
async def test_sequential_calls_with_one_credential_share_one_session(upstream: Upstream) -> None:
    async with MCPSessionPool() as pool:
        assert [await whoami(pool, upstream, ALICE) for _ in range(5)] == ["alice"] * 5
        assert pool.stats == stats(opened=1, reused=4)
        assert len(pool) == 1
    assert len(upstream.tracker.opened) == 1
    assert upstream.mcp.calls == [Call("alice", "whoami")] * 5


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_different_token_gets_a_different_session(upstream: Upstream) -> None:
    async with MCPSessionPool() as pool:
        answers = [await whoami(pool, upstream, t) for t in (ALICE, BOB, ALICE, BOB)]
        assert answers == ["alice", "bob", "alice", "bob"]
        assert pool.stats == stats(opened=2, reused=2)
    assert len(upstream.sessions_of(ALICE)) == len(upstream.sessions_of(BOB)) == 1


@pytest.mark.e2e
@pytest.mark.anyio
async def test_one_token_with_and_without_extra_headers_keeps_a_session_for_each(
    upstream: Upstream,
) -> None:
    """A caller alternating carriers (body: no extra headers; provider data: some) reuses
    one session per variant, instead of replacing one session on every switch."""
    plain = upstream.cred(ALICE)
    extra = MCPCredential(
        token=ALICE,
        source=CredentialSource.PROVIDER_DATA,
        server_url=upstream.url,
        headers={"X-Tenant": "t1"},
    )
    async with MCPSessionPool() as pool:
        for cred in (plain, extra, plain, extra):
            with use_credentials([cred]), anyio.fail_after(WAIT):
                result = await pool.call_tool(upstream.url, "whoami")
            assert (result.structured_content or {})["result"] == "alice"
        assert pool.stats == stats(opened=2, reused=2)
        assert len(pool) == 2


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_server_without_a_credential_gets_its_own_session_without_a_token(
    upstream: Upstream,
) -> None:
    """No credential for the server: a session keyed by the server alone, no token sent.

    This server wants a token, so opening fails with its 401; nothing is pooled.
    """
    async with MCPSessionPool() as pool:
        with pytest.raises(MCPError):
            await whoami(pool, upstream, None)
        assert len(pool) == 0
        assert pool.stats == stats()
    assert upstream.mcp.rejected == []
    assert upstream.tracker.opened == {}


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_wrong_token_fails_to_open_and_is_not_pooled(upstream: Upstream) -> None:
    async with MCPSessionPool() as pool:
        for _ in range(2):  # each attempt tries again: a failure is not cached
            with pytest.raises(MCPUpstreamAuthError) as caught:
                await whoami(pool, upstream, WRONG)
            assert (caught.value.status, caught.value.error) == (401, "invalid_token")
            assert caught.value.fingerprint == fingerprint(WRONG)
        assert len(pool) == 0
        assert await whoami(pool, upstream, ALICE) == "alice"
    assert upstream.mcp.rejected == [fingerprint(WRONG)] * 2


@pytest.mark.e2e
@pytest.mark.anyio
async def test_concurrent_users_each_get_their_own_answer_and_no_session_crosses(
    upstream: Upstream,
) -> None:
    answers: list[tuple[str, str]] = []

    async def request(token: str) -> None:
        answers.append((USERS[token], await whoami(pool, upstream, token)))

    async with MCPSessionPool() as pool, anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(request, ALICE)
            tg.start_soon(request, BOB)
    assert len(answers) == 20
    assert all(expected == got for expected, got in answers), answers
    assert pool.stats == stats(opened=2, reused=18)
    assert sorted(c.user for c in upstream.mcp.calls) == ["alice"] * 10 + ["bob"] * 10
    # Every request on a session carried the token that opened it.
    tracker = upstream.tracker
    assert tracker.used
    assert all(tracker.opened[sid] == token for sid, token in tracker.used)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_concurrent_first_use_of_one_key_opens_one_session(upstream: Upstream) -> None:
    async with MCPSessionPool() as pool, anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(whoami, pool, upstream, ALICE)
    assert pool.stats == stats(opened=1, reused=9)
    assert len(upstream.tracker.opened) == 1
    assert len(upstream.mcp.calls) == 10


@pytest.mark.e2e
@pytest.mark.anyio
async def test_an_explicit_credential_is_used_and_an_unbound_one_is_bound_to_the_server(
    upstream: Upstream,
) -> None:
    """``credential=`` overrides the context; the unbound tool-runtime default is bound."""
    default = MCPCredential(token=BOB, source="body")  # names no server
    async with MCPSessionPool() as pool:
        with use_credentials([upstream.cred(ALICE)]), anyio.fail_after(WAIT):
            result = await pool.call_tool(upstream.url, "whoami", credential=default)
            async with pool.session(upstream.url, credential=upstream.cred(CAROL)) as session:
                carol = await session.call_tool("whoami", {})
        assert (result.structured_content or {})["result"] == "bob"
        assert (carol.structured_content or {})["result"] == "carol"
    assert [c.user for c in upstream.mcp.calls] == ["bob", "carol"]
    # The SDK sends each POST in the borrower's context (alice's credential here), yet every
    # request on a session carried the token that opened it: its client's credential is fixed.
    tracker = upstream.tracker
    assert {token for _, token in tracker.used} == {fingerprint(BOB), fingerprint(CAROL)}
    assert all(tracker.opened[sid] == token for sid, token in tracker.used)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_sessions_use_the_http_client_factory_with_the_sessions_own_credential(
    upstream: Upstream,
) -> None:
    sent: list[str | None] = []

    async def record(request: httpx2.Request) -> None:
        auth = request.headers.get("Authorization")
        sent.append(None if auth is None else fingerprint(auth.removeprefix("Bearer ")))

    def factory(*, auth: httpx2.Auth, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(auth=auth, timeout=timeout, event_hooks={"request": [record]})

    async with MCPSessionPool(http_client_factory=factory) as pool:
        assert await whoami(pool, upstream, ALICE) == "alice"
    assert sent
    assert set(sent) == {fingerprint(ALICE)}


# --- lifetime: idle expiry, size bound, shutdown ----------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
async def test_an_idle_session_expires_and_the_server_sees_it_closed(upstream: Upstream) -> None:
    async with MCPSessionPool(idle_timeout=0.3) as pool:
        await whoami(pool, upstream, ALICE)
        async with pool.session(upstream.url, credential=upstream.cred(BOB)):
            await anyio.sleep(0.5)  # a borrowed session does not expire
            assert pool.stats.expired == 1
            assert len(pool) == 1
        await eventually(lambda: pool.stats.expired == 2)
        await eventually(lambda: not upstream.tracker.live)
        assert len(pool) == 0
        assert await whoami(pool, upstream, ALICE) == "alice"
        assert pool.stats == stats(opened=3, expired=2)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_full_pool_evicts_the_least_recently_used_idle_session(upstream: Upstream) -> None:
    async with MCPSessionPool(max_sessions=2) as pool:
        await whoami(pool, upstream, ALICE)
        await whoami(pool, upstream, BOB)
        await whoami(pool, upstream, ALICE)  # bob is now the least recently used
        await whoami(pool, upstream, CAROL)
        assert pool.stats == stats(opened=3, reused=1, evicted=1)
        await eventually(lambda: upstream.tracker.deleted == upstream.sessions_of(BOB))
        await whoami(pool, upstream, ALICE)  # still pooled
        assert pool.stats == stats(opened=3, reused=2, evicted=1)
        assert len(pool) == 2


@pytest.mark.e2e
@pytest.mark.anyio
async def test_when_every_pooled_session_is_busy_a_temporary_session_serves(
    upstream: Upstream,
) -> None:
    async with MCPSessionPool(max_sessions=1) as pool:
        async with pool.session(upstream.url, credential=upstream.cred(ALICE)):
            assert await whoami(pool, upstream, BOB) == "bob"
            assert pool.stats == stats(opened=2, temporary=1)
            assert len(pool) == 1
            await eventually(lambda: upstream.tracker.deleted == upstream.sessions_of(BOB))
        assert await whoami(pool, upstream, ALICE) == "alice"
        assert pool.stats == stats(opened=2, reused=1, temporary=1)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_leaving_the_pool_closes_every_session_and_leaves_no_task(
    upstream: Upstream,
) -> None:
    before = asyncio.all_tasks()
    async with MCPSessionPool() as pool:
        for token in (ALICE, BOB, CAROL):
            await whoami(pool, upstream, token)
    assert len(upstream.tracker.opened) == 3
    assert set(upstream.tracker.deleted) == set(upstream.tracker.opened)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()
    assert len(pool) == 0
    with pytest.raises(PoolClosedError, match=re.escape(POOL_NOT_OPEN)):
        await whoami(pool, upstream, ALICE)


# --- sessions the server dropped --------------------------------------------------------


async def delete_session(upstream: Upstream, session_id: str, token: str) -> None:
    """End a session at the server, as its owner would (the server then forgets it)."""
    async with httpx.AsyncClient(timeout=WAIT) as client:
        response = await client.delete(
            upstream.url,
            headers={"mcp-session-id": session_id, "Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_session_the_server_dropped_is_replaced_transparently_once(
    upstream: Upstream,
) -> None:
    async with MCPSessionPool() as pool:
        assert await whoami(pool, upstream, ALICE) == "alice"
        [first] = upstream.sessions_of(ALICE)
        await delete_session(upstream, first, ALICE)
        assert await whoami(pool, upstream, ALICE) == "alice"
        assert pool.stats == stats(opened=2, reused=1, replaced=1)
        assert await whoami(pool, upstream, ALICE) == "alice"
        assert pool.stats == stats(opened=2, reused=2, replaced=1)
    assert len(upstream.sessions_of(ALICE)) == 2


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_server_that_drops_the_fresh_session_too_surfaces_the_error(
    upstream: Upstream,
) -> None:
    async with MCPSessionPool() as pool:
        await whoami(pool, upstream, ALICE)
        upstream.tracker.drop = True
        with pytest.raises(MCPError, match="Session not found") as caught:
            await whoami(pool, upstream, ALICE)
        assert is_session_dropped(caught.value)
        assert pool.stats == stats(opened=2, reused=1, replaced=2)
        assert len(pool) == 0
        upstream.tracker.drop = False
        assert await whoami(pool, upstream, ALICE) == "alice"
    assert [c.user for c in upstream.mcp.calls] == ["alice", "alice"]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_borrower_sees_the_drop_and_the_next_borrower_a_fresh_session(
    upstream: Upstream,
) -> None:
    """``pool.session()`` cannot replay the caller's block: the error propagates once."""
    alice = upstream.cred(ALICE)
    async with MCPSessionPool() as pool:

        async def list_twice_with_a_drop_between() -> None:
            async with pool.session(upstream.url, credential=alice) as session:
                await session.list_tools()
                await delete_session(upstream, upstream.sessions_of(ALICE)[0], ALICE)
                await session.list_tools()

        with pytest.raises(MCPError) as caught, anyio.fail_after(WAIT):
            await list_twice_with_a_drop_between()
        assert is_session_dropped(caught.value)
        assert pool.stats == stats(opened=1, replaced=1)
        assert len(pool) == 0
        with anyio.fail_after(WAIT):
            async with pool.session(upstream.url, credential=alice) as session:
                listed = await session.list_tools()
        assert [tool.name for tool in listed.tools] == ["whoami"]
        assert pool.stats == stats(opened=2, replaced=1)


async def hang(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that never answers: it waits for the client to go away."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] in ("lifespan.shutdown", "http.disconnect"):
            if message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
            return


@pytest.mark.e2e
@pytest.mark.anyio
async def test_opening_a_session_is_bounded_by_http_timeout() -> None:
    with serve(hang) as base_url:
        async with MCPSessionPool(http_timeout=0.3) as pool:
            with anyio.fail_after(WAIT), pytest.raises(TimeoutError):
                await pool.list_tools(base_url + "/mcp")
            assert len(pool) == 0
            assert pool.stats == stats()


# --- refusals and secrets ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_token_is_never_sent_over_plain_http_to_a_remote_host() -> None:
    remote = "http://mcp.example.com/mcp"
    async with MCPSessionPool() as pool:
        cred = MCPCredential(token=ALICE, source="body", server_url=remote)
        with use_credentials([cred]), pytest.raises(InsecureTransportError):
            await pool.call_tool(remote, "whoami")
        assert pool.stats == stats()


@pytest.mark.anyio
async def test_an_explicit_credential_for_another_server_is_refused() -> None:
    other = MCPCredential(token=ALICE, source="body", server_url="https://a.example/mcp")
    async with MCPSessionPool() as pool:
        with pytest.raises(ValueError, match=CREDENTIAL_FOR_OTHER_SERVER):
            await pool.list_tools("https://b.example/mcp", credential=other)


@pytest.mark.anyio
async def test_a_pool_that_is_not_open_refuses_to_lend() -> None:
    pool = MCPSessionPool()
    with pytest.raises(PoolClosedError, match=re.escape(POOL_NOT_OPEN)):
        async with pool.session("https://a.example/mcp"):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_sessions": True}, "max_sessions"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"idle_timeout": float("inf")}, "idle_timeout"),
        ({"http_timeout": -1.0}, "http_timeout"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        MCPSessionPool(**kwargs)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_no_token_in_the_pools_repr_stats_errors_or_logs(
    upstream: Upstream, audit_log: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with MCPSessionPool(max_sessions=1) as pool:
        await whoami(pool, upstream, ALICE)
        await whoami(pool, upstream, BOB)  # evicts alice's
        seen += [repr(pool), str(pool), repr(pool.stats), repr(pool._entries)]
        try:
            await whoami(pool, upstream, WRONG)
        except MCPUpstreamAuthError as exc:
            seen += [repr(exc), str(exc), repr(exc.__cause__)]
        upstream.tracker.drop = True
        try:
            await whoami(pool, upstream, BOB)
        except MCPError as exc:
            seen += [repr(exc), str(exc)]
    seen += [json.dumps(entry, default=str) for entry in audit_log]
    seen += [record.getMessage() for record in caplog.records]
    assert {SESSION_OPENED, SESSION_CLOSED} <= {entry["event"] for entry in audit_log}
    opened = [e for e in audit_log if e["event"] == SESSION_OPENED]
    assert {e["fingerprint"] for e in opened} == {fingerprint(ALICE), fingerprint(BOB)}
    for text in seen:
        for token in (ALICE, BOB, WRONG):
            assert token not in text


# --- in a gateway: FastAPI lifespan + MCPAuthMiddleware ---------------------------------


def create_gateway() -> FastAPI:
    """The docs/sessions.md example: one pool per app, opened and closed by the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with MCPSessionPool(max_sessions=64, idle_timeout=300.0) as pool:
            app.state.mcp_sessions = pool
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(MCPAuthMiddleware)

    @app.post("/v1/responses")
    async def responses(request: Request) -> dict[str, Any]:
        pool: MCPSessionPool = request.app.state.mcp_sessions
        body = await request.json()
        output = []
        for tool in body["tools"]:
            result = await pool.call_tool(tool["server_url"], "whoami")
            output.append((result.structured_content or {})["result"])
        assert len(current_credentials()) == 1
        return {"output": output}

    return app


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_gateway_reuses_sessions_across_requests_per_caller(upstream: Upstream) -> None:
    async def ask(client: httpx.AsyncClient, token: str) -> list[str]:
        tool = {"type": "mcp", "server_label": "s", "server_url": upstream.url}
        response = await client.post(
            "/v1/responses", json={"tools": [{**tool, "authorization": token}]}
        )
        assert response.status_code == 200, response.text
        output: list[str] = response.json()["output"]
        return output

    results: list[tuple[str, list[str]]] = []

    async def caller(client: httpx.AsyncClient, token: str) -> None:
        results.append((USERS[token], await ask(client, token)))

    with serve(create_gateway()) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=WAIT) as client:
            with anyio.fail_after(2 * WAIT):
                async with anyio.create_task_group() as tg:
                    for _ in range(5):
                        for token in (ALICE, BOB):
                            tg.start_soon(caller, client, token)
    assert all([user] == output for user, output in results), results
    assert len(results) == 10
    assert len(upstream.tracker.opened) == 2  # one session per caller, for ten requests
    assert all(upstream.tracker.opened[sid] == token for sid, token in upstream.tracker.used)
    assert set(upstream.tracker.deleted) == set(upstream.tracker.opened)  # lifespan closed them


# --- servers that refuse: MCPUpstreamAuthError ------------------------------------------

READER = "reader-token-2222222222"  # known, without the "mcp" scope the server requires


@pytest.fixture
def guarded() -> GuardedMCPServer:
    return GuardedMCPServer({**USERS, READER: "reader"}, scopes={READER: ["read"]})


def guarded_cred(url: str, token: str) -> MCPCredential:
    return MCPCredential(token=token, source="body", server_url=url, server_label="crm")


async def borrow(pool: MCPSessionPool, how: str, url: str, cred: MCPCredential) -> None:
    """Call the server through ``pool.call_tool``, ``pool.list_tools`` or ``pool.session``,
    as ``how`` says."""
    if how == "call_tool":
        await pool.call_tool(url, "whoami", credential=cred)
    elif how == "list_tools":
        await pool.list_tools(url, credential=cred)
    else:
        async with pool.session(url, cred) as session:
            await session.list_tools()


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
@pytest.mark.parametrize(
    ("token", "status", "error"),
    [(WRONG, 401, "invalid_token"), (READER, 403, "insufficient_scope")],
)
async def test_a_refused_credential_raises_the_servers_refusal_from_every_call(
    guarded: GuardedMCPServer, transport: ServerTransport, token: str, status: int, error: str
) -> None:
    with guarded.running(transport) as url:
        cred = guarded_cred(url, token)
        async with MCPSessionPool() as pool:
            refusals: list[MCPUpstreamAuthError] = []
            for call in ("call_tool", "list_tools", "session"):
                with anyio.fail_after(WAIT), pytest.raises(MCPUpstreamAuthError) as caught:
                    await borrow(pool, call, url, cred)
                refusals.append(caught.value)
            assert len(pool) == 0
            assert pool.stats == stats()
    assert {(e.status, e.error, e.scope) for e in refusals} == {(status, error, "mcp")}
    assert {(e.server_url, e.server_label, e.fingerprint) for e in refusals} == {
        (url, "crm", fingerprint(token))
    }


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_token_revoked_mid_session_raises_the_refusal_and_the_session_goes(
    guarded: GuardedMCPServer, transport: ServerTransport
) -> None:
    with guarded.running(transport) as url:
        cred = guarded_cred(url, ALICE)
        async with MCPSessionPool() as pool:
            with anyio.fail_after(WAIT):
                await pool.call_tool(url, "whoami", credential=cred)
                del guarded.tokens[ALICE]
                with pytest.raises(MCPUpstreamAuthError) as caught:
                    await pool.call_tool(url, "whoami", credential=cred)
                assert (caught.value.status, caught.value.fingerprint) == (401, fingerprint(ALICE))
                await eventually(lambda: len(pool) == 0)
                guarded.tokens[ALICE] = "alice"  # a new token, as it were: a fresh session
                result = await pool.call_tool(url, "whoami", credential=cred)
            assert (result.structured_content or {})["result"] == "alice"
            assert pool.stats == stats(opened=2, reused=1)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_refusal_inside_a_borrowed_session_block_is_raised_as_such(
    guarded: GuardedMCPServer,
) -> None:
    with guarded.running() as url:
        cred = guarded_cred(url, ALICE)
        async with MCPSessionPool() as pool:
            with anyio.fail_after(WAIT), pytest.raises(MCPUpstreamAuthError):
                await list_revoke_list(pool, url, cred, guarded)
            await eventually(lambda: len(pool) == 0)


async def list_revoke_list(
    pool: MCPSessionPool, url: str, cred: MCPCredential, server: GuardedMCPServer
) -> None:
    async with pool.session(url, cred) as session:
        await session.list_tools()
        server.tokens.clear()
        await session.list_tools()


# --- partitions: callers who share a token ----------------------------------------------


async def remember(pool: MCPSessionPool, url: str, note: str, **borrow: Any) -> None:
    with anyio.fail_after(WAIT):
        result = await pool.call_tool(url, "remember", {"note": note}, **borrow)
    assert not result.is_error, result


async def recall(pool: MCPSessionPool, url: str, **borrow: Any) -> list[str]:
    with anyio.fail_after(WAIT):
        result = await pool.call_tool(url, "recall", **borrow)
    notes: list[str] = (result.structured_content or {})["result"]
    return notes


@pytest.mark.e2e
@pytest.mark.anyio
async def test_callers_sharing_a_token_never_share_a_session_across_partitions(
    guarded: GuardedMCPServer,
) -> None:
    with guarded.running() as url, use_credentials([guarded_cred(url, ALICE)]):
        async with MCPSessionPool() as pool:
            # One service-account token, two end users: a session (and its state) each.
            await remember(pool, url, "ann's secret", partition="user:ann")
            await remember(pool, url, "ben's secret", partition="user:ben")
            assert await recall(pool, url, partition="user:ann") == ["ann's secret"]
            assert await recall(pool, url, partition="user:ben") == ["ben's secret"]
            assert pool.stats == stats(opened=2, reused=2)
            # Without a partition the token alone is the key: a third session, and the
            # leak a partition prevents (every borrower of the token sees its state).
            await remember(pool, url, "shared", partition=None)
            assert await recall(pool, url) == ["shared"]
            assert len(pool) == 3
    assert sorted(map(sorted, guarded.notes.values())) == [
        ["ann's secret"],
        ["ben's secret"],
        ["shared"],
    ]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_partition_by_reads_the_borrowers_partition_and_an_argument_overrides_it(
    guarded: GuardedMCPServer,
) -> None:
    user: ContextVar[str | None] = ContextVar("user", default=None)
    with guarded.running() as url, use_credentials([guarded_cred(url, ALICE)]):
        async with MCPSessionPool(partition_by=user.get) as pool:
            for name in ("ann", "ben"):
                reset = user.set(name)
                try:
                    await remember(pool, url, name)
                finally:
                    user.reset(reset)
            assert await recall(pool, url, partition="ann") == ["ann"]
            assert await recall(pool, url, partition="ben") == ["ben"]
            assert await recall(pool, url) == []  # no user: the token's own session
            assert pool.stats == stats(opened=3, reused=2)
            assert "ann" not in repr(pool._entries)


# --- the SSE transport --------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["auto", "sse"])
async def test_sse_sessions_are_pooled_and_every_request_carries_the_sessions_token(
    transport: Transport,
) -> None:
    mcp = RecordingMCPServer(USERS)
    with mcp.running("sse") as url:  # .../sse: "auto" picks SSE
        async with MCPSessionPool(transport=transport) as pool:
            for _ in range(3):
                for token in (ALICE, BOB):
                    with use_credentials(
                        [MCPCredential(token=token, source="body", server_url=url)]
                    ):
                        with anyio.fail_after(WAIT):
                            result = await pool.call_tool(url, "whoami")
                    assert (result.structured_content or {})["result"] == USERS[token]
            assert pool.stats == stats(opened=2, reused=4)
    assert [c.user for c in mcp.calls] == ["alice", "bob"] * 3
    # The stream and the message endpoint the server named: each with its session's token.
    posts = [r for r in mcp.requests if r.method == "POST"]
    assert {r.path for r in posts} == {"/messages/"}
    assert {r.path for r in mcp.requests if r.method == "GET"} == {"/sse"}
    assert all(r.auth == "accepted" for r in mcp.requests)
    assert {r.token for r in mcp.requests} == {fingerprint(ALICE), fingerprint(BOB)}


@pytest.mark.e2e
@pytest.mark.anyio
async def test_the_sse_session_sends_its_token_to_no_other_origin(upstream: Upstream) -> None:
    """A token for the SSE server never reaches another origin, even through the pool's
    SSE client: a streamable-HTTP server on another port gets no token."""
    mcp = RecordingMCPServer(USERS)
    with mcp.running("sse") as url:
        cred = MCPCredential(token=ALICE, source="body", server_url=url)
        async with MCPSessionPool() as pool:
            with pytest.raises(ValueError, match=CREDENTIAL_FOR_OTHER_SERVER):
                await pool.call_tool(upstream.url, "whoami", credential=cred)
    assert upstream.mcp.requests == []


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        MCPSessionPool(transport="websocket")  # type: ignore[arg-type]


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_a_borrower_whose_session_another_refusal_ended_gets_that_refusal(
    guarded: GuardedMCPServer, transport: ServerTransport
) -> None:
    """One borrower waits on a slow call; the token is revoked and another borrower's call
    is refused, which ends the session: the first gets the refusal, not "Connection closed"."""
    started = anyio.Event()

    @guarded.server.tool()
    async def slow() -> str:
        started.set()
        await anyio.sleep(0.5)
        return "done"

    errors: list[BaseException] = []

    async def call(name: str) -> None:
        try:
            await pool.call_tool(url, name, credential=cred)
        except Exception as exc:
            errors.append(exc)

    with guarded.running(transport) as url:
        cred = guarded_cred(url, ALICE)
        async with MCPSessionPool() as pool:
            await pool.call_tool(url, "whoami", credential=cred)
            with anyio.fail_after(WAIT):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call, "slow")
                    await eventually(started.is_set)
                    guarded.tokens.clear()
                    tg.start_soon(call, "whoami")
    assert [type(e) for e in errors] == [MCPUpstreamAuthError] * 2, errors
    refusals = [e for e in errors if isinstance(e, MCPUpstreamAuthError)]
    assert {(e.status, e.fingerprint) for e in refusals} == {(401, fingerprint(ALICE))}
