"""Credentials are visible for exactly the request's lifetime, in no other request."""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import Depends, FastAPI
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredentials,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.testing import serve
from tests.helpers import asgi_scope, client, credential, mcp_tool

URL = "https://mcp.example.com/mcp"
PATH = "/v1/responses"

Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]


def tokens_in_scope() -> list[str]:
    """Every token the current context carries (tests only)."""
    return [c.token.get_secret_value() for c in current_credentials()]


def body_for(token: str) -> dict[str, Any]:
    return {"tools": [mcp_tool(URL, token=token)]}


def app_with(endpoint: Endpoint) -> Starlette:
    """A fresh app: one POST route behind the middleware."""
    app = Starlette(routes=[Route(PATH, endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    return app


# -- where the credentials are visible -----------------------------------------------------


async def async_handler(request: Request) -> Response:
    return JSONResponse(tokens_in_scope())


def sync_handler(request: Request) -> Response:
    """Starlette runs it in a worker thread."""
    return JSONResponse(tokens_in_scope())


@pytest.mark.anyio
@pytest.mark.parametrize("endpoint", [async_handler, sync_handler], ids=["async", "sync"])
async def test_visible_in_the_handler(endpoint: Endpoint) -> None:
    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-handler"))
    assert r.json() == ["tok-handler"]


async def async_dependency() -> list[str]:
    await anyio.lowlevel.checkpoint()
    return tokens_in_scope()


def sync_dependency() -> list[str]:
    """FastAPI runs it in a worker thread."""
    return tokens_in_scope()


AsyncSeen = Annotated[list[str], Depends(async_dependency)]
SyncSeen = Annotated[list[str], Depends(sync_dependency)]


def fastapi_with_async_dependency() -> FastAPI:
    app = FastAPI()

    @app.post(PATH)
    async def handler(seen: AsyncSeen) -> list[str]:
        return seen

    return app


def fastapi_with_sync_dependency() -> FastAPI:
    app = FastAPI()

    @app.post(PATH)
    async def handler(seen: SyncSeen) -> list[str]:
        return seen

    return app


@pytest.mark.anyio
@pytest.mark.parametrize(
    "make", [fastapi_with_async_dependency, fastapi_with_sync_dependency], ids=["async", "sync"]
)
async def test_visible_in_a_fastapi_dependency(make: Callable[[], FastAPI]) -> None:
    app = make()
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    async with client(app) as c:
        r = await c.post(PATH, json=body_for("tok-dep"))
    assert r.json() == ["tok-dep"]


@pytest.mark.anyio
async def test_visible_in_a_streaming_response_generator() -> None:
    async def chunks() -> AsyncIterator[str]:
        for _ in range(4):
            await anyio.lowlevel.checkpoint()
            yield ",".join(tokens_in_scope()) + "\n"

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-stream"))
    assert r.text.splitlines() == ["tok-stream"] * 4


@pytest.mark.anyio
async def test_visible_in_every_event_of_an_sse_stream() -> None:
    async def events() -> AsyncIterator[dict[str, str]]:
        for i in range(5):
            await anyio.lowlevel.checkpoint()
            yield {"event": "cred", "id": str(i), "data": ",".join(tokens_in_scope()) or "-"}

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events())

    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-sse"))
    assert r.headers["content-type"].startswith("text/event-stream")
    data = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data:")]
    assert data == ["tok-sse"] * 5


@pytest.mark.anyio
async def test_visible_in_background_tasks_run_after_the_response() -> None:
    seen: list[tuple[str, list[str]]] = []

    async def async_task() -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(("async", tokens_in_scope()))

    def sync_task() -> None:
        seen.append(("sync", tokens_in_scope()))

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(async_task)
        tasks.add_task(sync_task)
        return PlainTextResponse("ok", background=tasks)

    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-bg"))
    assert r.text == "ok"
    assert seen == [("async", ["tok-bg"]), ("sync", ["tok-bg"])]


@pytest.mark.anyio
async def test_visible_in_a_single_background_task() -> None:
    seen: list[list[str]] = []

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(
            "ok", background=BackgroundTask(lambda: seen.append(tokens_in_scope()))
        )

    async with client(app_with(endpoint)) as c:
        await c.post(PATH, json=body_for("tok-bg1"))
    assert seen == [["tok-bg1"]]


@pytest.mark.anyio
async def test_visible_in_tasks_spawned_from_the_handler() -> None:
    async def reader(into: list[list[str]]) -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
            into.append(tokens_in_scope())

    async def endpoint(request: Request) -> Response:
        from_asyncio: list[list[str]] = []
        from_anyio: list[list[str]] = []
        await asyncio.create_task(reader(from_asyncio))
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader, from_anyio)
            tg.start_soon(reader, from_anyio)
        in_thread = await anyio.to_thread.run_sync(tokens_in_scope)
        return JSONResponse({"asyncio": from_asyncio, "anyio": from_anyio, "thread": in_thread})

    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-task"))
    assert r.json() == {
        "asyncio": [["tok-task"]] * 3,
        "anyio": [["tok-task"]] * 6,
        "thread": ["tok-task"],
    }


@pytest.mark.anyio
async def test_a_task_spawned_by_the_request_loses_its_credentials_when_the_request_ends() -> None:
    """A fire-and-forget task sees the credentials while its request lasts, and none after:
    the token is never sent once the request is over."""
    release = anyio.Event()
    spawned: list[asyncio.Task[list[str]]] = []

    during: list[list[str]] = []

    async def late_reader() -> list[str]:
        during.append(tokens_in_scope())
        await release.wait()
        return tokens_in_scope()

    async def endpoint(request: Request) -> Response:
        spawned.append(asyncio.create_task(late_reader()))
        await anyio.sleep(0.01)  # the task runs while the request lasts
        return PlainTextResponse("ok")

    async with client(app_with(endpoint)) as c:
        await c.post(PATH, json=body_for("tok-late"))
    assert during == [["tok-late"]]
    release.set()
    assert await spawned[0] == []


# -- reset when the request ends -------------------------------------------------------------


def driver(body: bytes) -> tuple[Receive, Send, list[Message]]:
    sent: list[Message] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        if pending:
            return pending.pop()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    return receive, send, sent


BODY = json.dumps({"tools": [mcp_tool(URL, token="tok-raw")]}).encode()


@pytest.mark.anyio
async def test_reset_in_the_callers_context_after_the_app_returns() -> None:
    seen: list[list[str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(tokens_in_scope())
        await PlainTextResponse("ok")(scope, receive, send)

    receive, send, sent = driver(BODY)
    await MCPAuthMiddleware(app)(asgi_scope(path=PATH), receive, send)
    assert seen == [["tok-raw"]]
    assert sent[0]["status"] == 200
    assert tokens_in_scope() == []
    assert len(current_credentials()) == 0


@pytest.mark.anyio
async def test_reset_in_the_callers_context_after_the_app_raises() -> None:
    seen: list[list[str]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(tokens_in_scope())
        raise RuntimeError("handler failed")

    receive, send, _ = driver(BODY)
    with pytest.raises(RuntimeError, match="handler failed"):
        await MCPAuthMiddleware(app)(asgi_scope(path=PATH), receive, send)
    assert seen == [["tok-raw"]]
    assert len(current_credentials()) == 0


@pytest.mark.anyio
async def test_reset_after_a_starlette_handler_raises() -> None:
    seen: list[list[str]] = []

    async def endpoint(request: Request) -> Response:
        seen.append(tokens_in_scope())
        raise ValueError("handler failed")

    async with client(app_with(endpoint)) as c:
        with pytest.raises(ValueError, match="handler failed"):
            await c.post(PATH, json=body_for("tok-raise"))
    assert seen == [["tok-raise"]]
    assert len(current_credentials()) == 0


@pytest.mark.anyio
async def test_reset_after_the_app_is_cancelled() -> None:
    started = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await anyio.sleep_forever()

    receive, send, _ = driver(BODY)
    with anyio.CancelScope() as cancel:

        async def stop() -> None:
            await started.wait()
            cancel.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop)
            await MCPAuthMiddleware(app)(asgi_scope(path=PATH), receive, send)
    assert cancel.cancelled_caught
    assert len(current_credentials()) == 0


def test_nothing_in_scope_outside_a_request() -> None:
    creds = current_credentials()
    assert creds is not None
    assert isinstance(creds, MCPCredentials)
    assert len(creds) == 0
    assert list(creds) == []
    assert creds.default is None
    assert creds.for_server(URL) is None


@pytest.mark.anyio
async def test_the_next_request_does_not_inherit_the_previous_one() -> None:
    async with client(app_with(async_handler)) as c:
        first = await c.post(PATH, json=body_for("tok-first"))
        bare = await c.post(PATH, json={"input": "no tools"})
        get = await c.post(PATH, content=b"not json", headers={"content-type": "text/plain"})
    assert first.json() == ["tok-first"]
    assert bare.json() == []
    assert get.json() == []


# -- isolation between concurrent requests ---------------------------------------------------

N_REQUESTS = 250
N_SOCKET_REQUESTS = 200


def interleaving_app(seed: int) -> Starlette:
    """Reads the credentials, yields to other requests, reads again; reports every read."""
    rng = random.Random(seed)

    async def endpoint(request: Request) -> Response:
        body = await request.json()
        reads = [tokens_in_scope()]
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
            if rng.random() < 0.5:
                await anyio.sleep(rng.random() / 1000)
            reads.append(tokens_in_scope())
        return JSONResponse({"sent": body["tools"][0]["authorization"], "reads": reads})

    return app_with(endpoint)


def assert_each_saw_only_its_own(tokens: list[str], responses: dict[str, httpx.Response]) -> None:
    assert sorted(responses) == sorted(tokens)
    wrong = []
    for token, response in responses.items():
        data = response.json()
        if data["sent"] != token or data["reads"] != [[token]] * 6:
            wrong.append(token)
    assert not wrong, f"{len(wrong)} requests saw another request's credentials"


async def run_with_task_group(c: httpx.AsyncClient, tokens: list[str]) -> dict[str, httpx.Response]:
    responses: dict[str, httpx.Response] = {}

    async def one(token: str) -> None:
        responses[token] = await c.post(PATH, json=body_for(token))

    async with anyio.create_task_group() as tg:
        for token in tokens:
            tg.start_soon(one, token)
    return responses


async def run_with_gather(c: httpx.AsyncClient, tokens: list[str]) -> dict[str, httpx.Response]:
    results = await asyncio.gather(*(c.post(PATH, json=body_for(t)) for t in tokens))
    return dict(zip(tokens, results, strict=True))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "runner", [run_with_task_group, run_with_gather], ids=["anyio-task-group", "asyncio-gather"]
)
async def test_concurrent_requests_each_see_only_their_own_token(
    runner: Callable[[httpx.AsyncClient, list[str]], Awaitable[dict[str, httpx.Response]]],
) -> None:
    tokens = [f"tok-{i:04d}" for i in range(N_REQUESTS)]
    async with client(interleaving_app(seed=1)) as c:
        responses = await runner(c, tokens)
    assert_each_saw_only_its_own(tokens, responses)
    assert len(current_credentials()) == 0


@pytest.fixture
def live_server() -> Iterator[str]:
    """uvicorn serving the interleaving app on 127.0.0.1 (a free port) in a thread."""
    with serve(
        interleaving_app(seed=2),
        lifespan="off",
        http="h11",
        loop="asyncio",
        backlog=N_SOCKET_REQUESTS * 2,
    ) as base_url:
        yield base_url


@pytest.mark.anyio
@pytest.mark.e2e
async def test_concurrent_requests_over_a_real_socket_each_see_only_their_own_token(
    live_server: str,
) -> None:
    tokens = [f"tok-sock-{i:04d}" for i in range(N_SOCKET_REQUESTS)]
    limits = httpx.Limits(
        max_connections=N_SOCKET_REQUESTS, max_keepalive_connections=N_SOCKET_REQUESTS
    )
    async with httpx.AsyncClient(
        base_url=live_server, timeout=httpx.Timeout(10.0), limits=limits
    ) as c:
        with anyio.fail_after(30):
            responses = await run_with_task_group(c, tokens)
    assert all(r.status_code == 200 for r in responses.values())
    assert_each_saw_only_its_own(tokens, responses)


# -- use_credentials ------------------------------------------------------------------------


def test_use_credentials_scopes_a_set_for_the_block() -> None:
    creds = MCPCredentials([credential("tok-a")])
    with use_credentials(creds) as scoped:
        assert scoped is creds
        assert current_credentials() is creds
    assert len(current_credentials()) == 0


def test_use_credentials_accepts_an_iterable_of_credentials() -> None:
    with use_credentials([credential("tok-a"), credential("tok-b", "https://b.example/m")]) as s:
        assert isinstance(s, MCPCredentials)
        assert current_credentials() is s
        assert sorted(tokens_in_scope()) == ["tok-a", "tok-b"]
    assert len(current_credentials()) == 0


def test_use_credentials_nests_and_restores_the_outer_set() -> None:
    outer = MCPCredentials([credential("tok-outer")])
    inner = MCPCredentials([credential("tok-inner")])
    with use_credentials(outer):
        with use_credentials(inner):
            assert tokens_in_scope() == ["tok-inner"]
        assert current_credentials() is outer
        with use_credentials(MCPCredentials()):
            assert tokens_in_scope() == []
        assert current_credentials() is outer
    assert len(current_credentials()) == 0


def test_use_credentials_resets_when_the_block_raises() -> None:
    outer = MCPCredentials([credential("tok-outer")])
    with use_credentials(outer):
        with pytest.raises(KeyError), use_credentials([credential("tok-inner")]):
            raise KeyError("boom")
        assert current_credentials() is outer
    assert len(current_credentials()) == 0


@pytest.mark.anyio
async def test_use_credentials_inside_a_request_restores_the_requests_set() -> None:
    async def endpoint(request: Request) -> Response:
        before = tokens_in_scope()
        with use_credentials([credential("tok-override")]):
            await anyio.lowlevel.checkpoint()
            during = tokens_in_scope()
        return JSONResponse({"before": before, "during": during, "after": tokens_in_scope()})

    async with client(app_with(endpoint)) as c:
        r = await c.post(PATH, json=body_for("tok-req"))
    assert r.json() == {"before": ["tok-req"], "during": ["tok-override"], "after": ["tok-req"]}


@pytest.mark.anyio
async def test_use_credentials_in_concurrent_tasks_stays_in_each_task() -> None:
    seen: dict[int, list[list[str]]] = {}

    async def worker(i: int) -> None:
        with use_credentials([credential(f"tok-w{i}")]):
            reads = []
            for _ in range(4):
                await anyio.lowlevel.checkpoint()
                reads.append(tokens_in_scope())
            seen[i] = reads

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(worker, i)
    assert seen == {i: [[f"tok-w{i}"]] * 4 for i in range(50)}
    assert len(current_credentials()) == 0


# -- nothing outlives the request -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_worker_started_by_one_request_never_sends_its_token_for_another() -> None:
    """A queue consumer created lazily by the first request runs in a copy of that
    request's context: once the request ended it sees no credentials, so a later caller's
    job never goes out with the first caller's token."""
    jobs: asyncio.Queue[tuple[str, asyncio.Future[list[str]]]] = asyncio.Queue()
    workers: list[asyncio.Task[None]] = []

    async def worker() -> None:
        while True:
            _, done = await jobs.get()
            done.set_result(tokens_in_scope())

    async def endpoint(request: Request) -> Response:
        if not workers:
            workers.append(asyncio.create_task(worker()))
        done: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        await jobs.put((request.headers["x-caller"], done))
        return JSONResponse(await done)

    try:
        async with client(app_with(endpoint)) as c:
            first = await c.post(PATH, json=body_for("tok-first"), headers={"x-caller": "1"})
            second = await c.post(PATH, json=body_for("tok-second"), headers={"x-caller": "2"})
    finally:
        for task in workers:
            task.cancel()
    # The first job ran while the first request lasted; the second in a context whose
    # request (the first) had ended: nothing, rather than the first caller's token.
    assert first.json() == ["tok-first"]
    assert second.json() == []


@pytest.mark.anyio
async def test_a_context_copied_during_the_request_is_empty_once_it_ended() -> None:
    copied: list[contextvars.Context] = []

    async def endpoint(request: Request) -> Response:
        copied.append(contextvars.copy_context())
        return JSONResponse(copied[0].run(tokens_in_scope))

    async with client(app_with(endpoint)) as c:
        during = await c.post(PATH, json=body_for("tok-copied"))
    assert during.json() == ["tok-copied"]
    assert copied[0].run(tokens_in_scope) == []


@pytest.mark.anyio
async def test_use_credentials_gives_work_after_the_request_its_credentials_on_purpose() -> None:
    later: list[Callable[[], Awaitable[list[str]]]] = []

    async def endpoint(request: Request) -> Response:
        creds = current_credentials()

        async def job() -> list[str]:
            with use_credentials(creds):
                return tokens_in_scope()

        later.append(job)
        return PlainTextResponse("queued")

    async with client(app_with(endpoint)) as c:
        await c.post(PATH, json=body_for("tok-given"))
    assert await later[0]() == ["tok-given"]


def test_use_credentials_closes_its_scope_for_copies_on_exit() -> None:
    with use_credentials([credential("tok-block")]):
        inside = contextvars.copy_context()
        assert inside.run(tokens_in_scope) == ["tok-block"]
    assert inside.run(tokens_in_scope) == []
    assert tokens_in_scope() == []
