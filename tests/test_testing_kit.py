"""The testing kit (``mcp_auth_middleware.testing``): the recording MCP server verifies and
records, ``serve`` starts on a free port with TCP_NODELAY and stops within its bounds, the
audit capture sees every event, and the pytest fixtures work from a plain pytest run."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog
from mcp import ClientSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mcp_auth_middleware import AUDIT_LOGGER, CREDENTIAL_RESOLVED
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing import (
    AuditLog,
    Call,
    RecordingMCPServer,
    TokenMap,
    capture_audit,
    listening_socket,
    serve,
    serve_async,
    write_json_lines,
)
from mcp_auth_middleware.testing.pytest_plugin import MCPServerFactory
from tests.helpers import client, make_app, mcp_tool, sdk_http, streamable_session, structured

ALICE = "alice-kit-token-0123456789"
BOB = "bob-kit-token-9876543210"
WRONG = "nobodys-kit-token-0000000"
USERS = {ALICE: "alice", BOB: "bob"}
WAIT = 10.0


@asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    """An initialized MCP session to ``url`` whose every request carries ``headers``."""
    with anyio.fail_after(WAIT):
        async with (
            sdk_http.AsyncClient(headers=headers, timeout=WAIT) as http,
            streamable_session(url, http) as session,
        ):
            yield session


async def whoami(url: str, headers: dict[str, str]) -> str:
    async with mcp_session(url, headers) as session:
        result = await session.call_tool("whoami", {})
    user: str = structured(result)["result"]
    return user


# --- the recording MCP server ----------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_known_token_is_its_user_on_every_request_of_the_session(
    mcp_server_factory: MCPServerFactory,
) -> None:
    server = mcp_server_factory(USERS, name="calendar")
    assert await whoami(server.url, {"Authorization": f"Bearer {ALICE}"}) == "alice"
    assert server.calls == [Call(user="alice", tool="whoami")]
    assert server.rejected == []
    methods = [r.method for r in server.requests]
    assert {"POST", "GET", "DELETE"} <= set(methods)  # handshake, stream, tool call, close
    assert {(r.auth, r.user, r.token, r.path) for r in server.requests} == {
        ("accepted", "alice", fingerprint(ALICE), "/mcp")
    }
    assert server.tokens_seen == {fingerprint(ALICE)}


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("authorization", "auth", "token"),
    [
        pytest.param(f"Bearer {WRONG}", "refused", WRONG, id="unknown-token"),
        pytest.param(None, "absent", None, id="no-authorization"),
        pytest.param(f"Basic {WRONG}", "not_bearer", None, id="other-scheme"),
    ],
)
def test_anything_but_a_known_bearer_token_gets_the_sdks_401(
    mcp_server: RecordingMCPServer, authorization: str | None, auth: str, token: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.post(mcp_server.url, json={}, headers=headers, timeout=WAIT)
    assert response.status_code == 401
    # The SDK's challenge, naming this server's protected-resource metadata (its real port).
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    metadata = mcp_server.url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata}"' in challenge
    [record] = mcp_server.requests
    assert (record.status, record.auth, record.user) == (401, auth, None)
    assert record.token == (None if token is None else fingerprint(token))
    assert mcp_server.rejected == ([] if token is None else [fingerprint(token)])
    assert mcp_server.calls == []


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_token_deleted_from_tokens_is_refused_from_then_on(
    mcp_server_factory: MCPServerFactory,
) -> None:
    server = mcp_server_factory(USERS)
    headers = {"Authorization": f"Bearer {BOB}"}
    assert await whoami(server.url, headers) == "bob"
    del server.tokens[BOB]
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's error for a 401
        await whoami(server.url, headers)
    assert server.requests[-1].auth == "refused"
    assert server.rejected == [fingerprint(BOB)]


@pytest.mark.e2e
def test_secret_headers_are_kept_only_as_fingerprints(
    mcp_server_factory: MCPServerFactory,
) -> None:
    server = mcp_server_factory(USERS, public_headers=["X-Tenant"])
    headers = [
        ("Authorization", f"Bearer {ALICE}"),
        ("X-Api-Key", "key-secret-1"),
        ("X-MCP-Docs-Authorization", f"Bearer {BOB}"),
        ("Cookie", "session=cookie-secret"),
        ("X-Tenant", "t1"),
        ("X-Request-ID", "req-7"),
        ("X-Repeated", "one"),
        ("X-Repeated", "two"),
    ]
    httpx.post(server.url + "?api_key=query-secret", json={}, headers=headers, timeout=WAIT)
    [record] = server.requests
    assert record.path == "/mcp"  # no query string
    assert (record.auth, record.user) == ("accepted", "alice")
    assert record.headers["x-tenant"] == "t1"
    assert record.headers["x-request-id"] == "req-7"
    assert record.headers["content-type"] == "application/json"
    assert record.secret_headers == {
        "authorization": fingerprint(ALICE),
        "x-api-key": fingerprint("key-secret-1"),
        "x-mcp-docs-authorization": fingerprint(BOB),  # "Bearer " stripped, like the token
        "cookie": fingerprint("session=cookie-secret"),
        "x-repeated": fingerprint("one, two"),
    }
    assert {"authorization", "x-tenant", "host"} <= record.header_names
    shown = repr(server) + repr(server.requests)
    for secret in (ALICE, BOB, "key-secret-1", "cookie-secret", "query-secret"):
        assert secret not in shown


@pytest.mark.e2e
@pytest.mark.anyio
async def test_the_sse_transport_is_recorded_too(mcp_server_factory: MCPServerFactory) -> None:
    from mcp.client.sse import sse_client

    server = mcp_server_factory(USERS, transport="sse")
    assert server.url.endswith("/sse")
    with anyio.fail_after(WAIT):
        async with (
            sse_client(server.url, headers={"Authorization": f"Bearer {BOB}"}) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("whoami", {})
    assert structured(result)["result"] == "bob"
    paths = {r.path for r in server.requests}
    assert paths == {"/sse", "/messages/"}
    assert server.tokens_seen == {fingerprint(BOB)}


def test_a_server_that_is_not_running_has_no_url() -> None:
    server = RecordingMCPServer(USERS, name="idle")
    with pytest.raises(RuntimeError, match="'idle' is not running"):
        _ = server.url
    with pytest.raises(ValueError, match="transport"), server.running("websocket"):  # type: ignore[arg-type]
        pass


def test_a_token_map_shows_fingerprints_not_tokens(mcp_server_tokens: TokenMap) -> None:
    """The fixture's value, as pytest would show it in a failing test's report."""
    assert isinstance(mcp_server_tokens, TokenMap)
    shown = repr(mcp_server_tokens)
    assert mcp_server_tokens
    for token, user in mcp_server_tokens.items():
        assert token not in shown
        assert f"<token {fingerprint(token)}>: {user!r}" in shown


def test_clear_forgets_the_records() -> None:
    server = RecordingMCPServer(USERS)
    server.calls.append(Call("alice", "whoami"))
    server.rejected.append(fingerprint(WRONG))
    server.clear()
    assert (server.requests, server.calls, server.rejected) == ([], [], [])


# --- serve ----------------------------------------------------------------------------


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello " + request.url.path)


HELLO = Starlette(routes=[Route("/{path:path}", _hello, methods=["GET", "POST"])])


@pytest.mark.e2e
def test_serve_listens_on_127_0_0_1_on_a_free_port_and_stops() -> None:
    with serve(HELLO) as first, serve(HELLO) as second:
        assert first.startswith("http://127.0.0.1:")
        assert first != second
        assert httpx.get(first + "/a", timeout=WAIT).text == "hello /a"
        assert httpx.get(second + "/b", timeout=WAIT).text == "hello /b"
    port = int(first.rsplit(":", 1)[1])
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


def test_the_listening_socket_is_tcp_so_asyncio_sets_nodelay() -> None:
    """Protocol 0 (``socket.socket()``, ``socket.create_server()``) would not be."""
    with listening_socket() as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1"
    with socket.create_server(("127.0.0.1", 0)) as other:
        assert other.proto != socket.IPPROTO_TCP  # why serve() does not use it


def _accepted_nodelay(server_port: int, client: socket.socket) -> int:
    """TCP_NODELAY of the server's end of ``client``'s connection: uvicorn runs in a thread of
    this process, so that socket is one of its file descriptors (Linux: /proc/self/fd)."""
    peer = client.getsockname()
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.getsockname()[1:2] == (server_port,) and sock.getpeername() == peer:
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except OSError:  # not a socket, not connected, or closed meanwhile
            continue
    raise AssertionError(f"no accepted connection from {peer} on port {server_port}")


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd (Linux)")
def test_the_servers_end_of_every_connection_has_tcp_nodelay() -> None:
    """What the IPPROTO_TCP socket is for, checked on the accepted connection itself: with a
    protocol-0 listening socket asyncio leaves TCP_NODELAY off (0 here)."""
    with serve(HELLO) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(1024).startswith(b"HTTP/1.1 200")  # accepted and served
            assert _accepted_nodelay(port, client) != 0


@pytest.mark.e2e
def test_keep_alive_answers_do_not_wait_for_a_delayed_ack() -> None:
    """Without TCP_NODELAY each keep-alive answer waits ~40 ms for the client's delayed ACK
    (headers and body are two writes); with it, well under a millisecond here. Bounded:
    21 requests, 5 s each at most."""
    with serve(HELLO) as base, httpx.Client(base_url=base, timeout=5) as c:
        c.get("/warm-up")
        times = []
        for _ in range(21):
            started = time.perf_counter()
            c.post("/", content=b"x" * 100)
            times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.02, times


@pytest.mark.e2e
def test_a_server_stops_without_waiting_for_uvicorns_next_tick() -> None:
    """uvicorn looks for the exit flag every 0.1 s, then waits 0.1 s for connections: a stop
    took 0.1-0.2 s; woken at once, it takes the 0.1 s."""
    took = []
    for _ in range(3):
        with serve(HELLO):
            time.sleep(0.01)  # just after a tick: uvicorn's own loop would sleep ~0.09 s more
            started = time.perf_counter()
        took.append(time.perf_counter() - started)
    assert statistics.median(took) < 0.16, took


@pytest.mark.parametrize("option", ["host", "port", "fd", "uds"])
def test_serve_keeps_the_host_and_port_its_own(option: str) -> None:
    options: dict[str, Any] = {option: "x"}
    with pytest.raises(TypeError, match=option), serve(HELLO, **options):
        pass


def test_an_app_that_cannot_start_raises_within_the_bound() -> None:
    async def failing_lifespan(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no"})

    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="stopped while starting"),
        serve(failing_lifespan, lifespan="on", startup_timeout=5),
    ):
        pass
    assert time.monotonic() - started < 5


@pytest.mark.e2e
@pytest.mark.anyio
async def test_serve_async_keeps_the_loop_running_while_it_starts_and_stops() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        async with serve_async(HELLO) as base, httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/x")).text == "hello /x"
        tg.cancel_scope.cancel()
    assert ticks > 1


# --- the audit capture ----------------------------------------------------------------


@pytest.mark.anyio
async def test_the_audit_capture_sees_the_middlewares_events_with_name_level_and_time(
    mcp_audit_log: AuditLog,
) -> None:
    async with client(make_app()) as c:
        await c.post("/v1/responses", json={"tools": [mcp_tool(token=ALICE)]})
    [event] = mcp_audit_log.resolved
    assert list(event)[:4] == ["event", "timestamp", "level", "logger"]
    assert (event["event"], event["level"], event["logger"]) == (
        CREDENTIAL_RESOLVED,
        "info",
        AUDIT_LOGGER,
    )
    when = datetime.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - when) < datetime.timedelta(minutes=1)
    assert event["fingerprint"] == fingerprint(ALICE)
    assert mcp_audit_log.of_logger() == [event]
    assert mcp_audit_log.rejected == []


def test_the_capture_sees_other_threads_and_restores_the_configuration() -> None:
    before = structlog.get_config()
    with capture_audit() as log:
        thread = threading.Thread(target=lambda: structlog.get_logger("elsewhere").warning("x"))
        thread.start()
        thread.join(WAIT)
        structlog.get_logger().debug("unnamed", n=1)
    assert [(e["event"], e["level"], e["logger"]) for e in log] == [
        ("x", "warning", "elsewhere"),
        ("unnamed", "debug", None),
    ]
    assert structlog.get_config() == before


def test_write_json_lines_writes_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with capture_audit() as log:
        structlog.get_logger(AUDIT_LOGGER).info("e1", shadowed=["provider_data"])
        structlog.get_logger(AUDIT_LOGGER).warning("e2", code="c")
    with path.open("w") as f:
        write_json_lines(log, f)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["e1", "e2"]
    assert json.loads(lines[0])["shadowed"] == ["provider_data"]


# --- loading: the extra, the pytest plugin ---------------------------------------------


def test_the_package_imports_without_the_extra_and_the_kit_says_what_is_missing() -> None:
    code = (
        "import sys\n"
        "sys.modules['mcp'] = None\n"  # as if the [testing] extra were not installed
        "import mcp_auth_middleware\n"
        "try:\n"
        "    import mcp_auth_middleware.testing\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'mcp-auth-middleware[testing]'" in done.stdout


PLUGIN_CONFTEST = """
import pytest

from mcp_auth_middleware.testing import TokenMap

pytest_plugins = ["mcp_auth_middleware.testing.pytest_plugin"]


@pytest.fixture
def mcp_server_tokens():
    return TokenMap({"carol-plugin-token-55555": "carol"})
"""

PLUGIN_TESTS = """
import anyio
import httpx
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mcp_auth_middleware import MCPAuthMiddleware
from mcp_auth_middleware.testing import fingerprint


def _post(url, token):
    return httpx.post(url, json={}, headers={"Authorization": "Bearer " + token}, timeout=10)


def test_the_server_fixture_uses_the_overridden_tokens(mcp_server, mcp_server_tokens):
    [token] = mcp_server_tokens
    _post(mcp_server.url, token)
    assert [(r.auth, r.user) for r in mcp_server.requests] == [("accepted", "carol")]
    assert mcp_server.tokens_seen == {fingerprint(token)}


def test_the_factory_starts_one_server_per_call(mcp_server_factory):
    a = mcp_server_factory({"a-token-1": "a"}, name="a")
    b = mcp_server_factory({"b-token-1": "b"}, name="b")
    assert a.url != b.url
    _post(a.url, "a-token-1")
    assert (len(a.requests), len(b.requests)) == (1, 0)


def test_the_audit_fixture_sees_the_middleware(mcp_audit_log, mcp_server_tokens):
    [token] = mcp_server_tokens
    app = Starlette(routes=[Route("/r", lambda r: PlainTextResponse("ok"), methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware)
    tool = {"type": "mcp", "server_url": "https://x.example/mcp", "authorization": token}

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/r", json={"tools": [tool]})

    assert anyio.run(send).status_code == 200
    [event] = mcp_audit_log.resolved
    assert event["fingerprint"] == fingerprint(token)


def test_a_failing_assertion_shows_fingerprints_never_tokens(mcp_server, mcp_server_tokens):
    [token] = mcp_server_tokens
    _post(mcp_server.url, token)
    assert mcp_server.requests == []
"""


@pytest.mark.e2e
def test_the_fixtures_load_from_a_plain_pytest_run_and_fail_without_leaking(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_integration=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    result.assert_outcomes(passed=3, failed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "FAILED test_integration.py::test_a_failing_assertion" in output
    assert fingerprint("carol-plugin-token-55555") in output  # the record was shown...
    assert "carol-plugin-token-55555" not in output  # ...and the token was not


@pytest.mark.e2e
@pytest.mark.mcp2(reason="the example in docs/testing.md is written for the mcp 2.x client")
def test_the_example_in_the_testing_docs_runs(pytester: pytest.Pytester) -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
    files = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", page, re.DOTALL)
    assert [name for name, _ in files] == ["conftest.py", "test_gateway.py"]
    for name, code in files:
        (pytester.path / name).write_text(code)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=120)
    result.assert_outcomes(passed=2)
