"""Small builders shared by the tests: a fresh app per test, requests through ASGITransport."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import import_module, metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredential,
    MCPCredentials,
    MCPCredentialSource,
    current_credentials,
)
from mcp_auth_middleware.sources.base import SourceRequest

try:  # the mcp SDK (which imports opentelemetry): absent where a test hides a dependency
    from mcp.server.auth.provider import AccessToken
    from mcp.server.mcpserver import Context

    from mcp_auth_middleware.testing import RecordingMCPServer
    from mcp_auth_middleware.testing.server import Transport
except ImportError:  # pragma: no cover - a child process that hides opentelemetry
    HAVE_MCP = False
else:
    HAVE_MCP = True

if TYPE_CHECKING:
    from mcp import ClientSession

PROVIDER_DATA = "X-LlamaStack-Provider-Data"
ROOT = Path(__file__).resolve().parent.parent

# The error codes of the fail-closed rules, as literals rather than imported from
# ``mcp_auth_middleware.errors``: they are part of the wire contract, so a change to a
# code's value must fail the tests.
AUTHORIZATION_IN_HEADERS = "authorization_in_headers"
AUTHORIZATION_IN_PROVIDER_DATA = "authorization_in_provider_data"
INVALID_BODY = "invalid_body"
INVALID_PROVIDER_DATA = "invalid_provider_data"
TOO_MANY_TOOLS = "too_many_tools"
INVALID_CONTENT_LENGTH = "invalid_content_length"
UNSUPPORTED_CONTENT_ENCODING = "unsupported_content_encoding"
BODY_TOO_LARGE = "body_too_large"


#: The ``sources`` setting of a test that runs with and without a custom source
#: (the ``extra_sources`` fixture).
Sources = tuple[MCPCredentialSource, ...]


class NothingSource:
    """A custom source that supplies nothing: with it, the middleware asks a source on every
    request of a guarded path. Tests run a case with and without it."""

    name = "nothing"
    needs_body = False

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        return []


def describe(creds: MCPCredentials) -> dict[str, Any]:
    """A JSON-able view of a credential set (tokens included: tests only)."""
    return {
        "credentials": sorted(
            (
                {
                    "server_url": c.server_url,
                    "server_label": c.server_label,
                    "source": str(c.source),
                    "token": c.token.get_secret_value(),
                    "headers": dict(c.headers),
                }
                for c in creds
            ),
            key=lambda d: json.dumps(d, sort_keys=True),
        ),
        "default": None if creds.default is None else creds.default.token.get_secret_value(),
    }


class Recorder:
    """An app that records each call: the body it received and the credentials in scope."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def endpoint(self, request: Request) -> JSONResponse:
        body = await request.body()
        seen = describe(current_credentials())
        self.calls.append({"body": body, **seen})
        return JSONResponse(seen)


def make_app(config: MCPAuthConfig | None = None, recorder: Recorder | None = None) -> Starlette:
    recorder = recorder or Recorder()
    app = Starlette(
        routes=[
            Route(
                "/{path:path}", recorder.endpoint, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
            )
        ]
    )
    app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig())
    app.state.recorder = recorder
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def post_to_app(
    body: Any,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    *,
    config: MCPAuthConfig | None = None,
) -> tuple[httpx.Response, Recorder]:
    """POST ``body`` (JSON-encoded unless bytes) with ``headers`` to ``/v1/responses`` of a
    fresh app; the response and the app's recorder."""
    recorder = Recorder()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    given = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    async with client(make_app(config, recorder)) as c:
        response = await c.post(
            "/v1/responses",
            content=content,
            headers=[("Content-Type", "application/json"), *given],
        )
    return response, recorder


def mcp_tool(
    url: str = "https://mcp.example.com/mcp", token: Any = "tok", label: str = "srv", **extra: Any
) -> dict[str, Any]:
    tool: dict[str, Any] = {"type": "mcp", "server_url": url, "server_label": label}
    if token is not ...:
        tool["authorization"] = token
    tool.update(extra)
    return tool


def provider_data(mapping: Any, **other: Any) -> dict[str, str]:
    """The provider-data header whose ``mcp_headers`` is ``mapping`` (other keys beside it)."""
    return {PROVIDER_DATA: json.dumps({"mcp_headers": mapping, **other})}


def provider_data_bearer(url: str, token: str, **extra: str) -> dict[str, str]:
    """The provider-data header with one ``Authorization: Bearer`` credential for ``url``."""
    return provider_data({url: {"Authorization": f"Bearer {token}", **extra}})


def jbody(document: Any) -> bytes:
    """``document`` as a JSON request body."""
    return json.dumps(document).encode()


def credential(
    token: str,
    url: str | None = "https://mcp.example.com/mcp",
    *,
    label: str | None = None,
    source: str = "body",
    headers: dict[str, str] | None = None,
) -> MCPCredential:
    """One credential, as a source makes it (``url=None``: known by its label, or the
    unbound default)."""
    return MCPCredential(
        token=token, server_url=url, server_label=label, source=source, headers=headers
    )


def described(
    token: str,
    url: str | None = "https://mcp.example.com/mcp",
    *,
    label: str | None = None,
    source: str = "body",
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One credential as :func:`describe` shows it: what a test expects the app to see."""
    return {
        "server_url": url,
        "server_label": label,
        "source": source,
        "token": token,
        "headers": headers or {},
    }


def asgi_scope(
    headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    *,
    method: str = "POST",
    path: str = "/v1/responses",
) -> dict[str, Any]:
    """An HTTP scope as an ASGI server hands it over (header names lower-cased)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


# --- raw ASGI: every header, message and scope key as the test says ------------------------

#: The token an attacker smuggles in ``tools[i].headers``. Tests compare against it with
#: ``in`` and ``==`` only, and their messages say where it was found, never what.
SENTINEL = "sentinel-" + secrets.token_hex(12)
SMUGGLED_URL = "https://mcp.example.com/mcp"


def smuggling_tool(
    token: str = SENTINEL, *, name: str = "Authorization", url: str = SMUGGLED_URL
) -> dict[str, Any]:
    """An MCP tool whose ``headers`` carry an ``Authorization`` (forbidden in the body)."""
    return {
        "type": "mcp",
        "server_label": "srv",
        "server_url": url,
        "headers": {name: f"Bearer {token}"},
    }


def smuggling_document(**extra: Any) -> dict[str, Any]:
    """A Responses request whose ``tools[0]`` is :func:`smuggling_tool`."""
    return {"model": "m", "input": "hello", "tools": [smuggling_tool()], **extra}


def carries_sentinel(document: Any) -> bool:
    """Whether a parsed body hands the application the smuggled ``Authorization``."""
    if not isinstance(document, dict):
        return False
    tools = document.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return False
    headers = tools[0].get("headers")
    return isinstance(headers, dict) and any(
        isinstance(value, str) and SENTINEL in value for value in headers.values()
    )


class Wire:
    """The server's side of one request: the body messages, handed out by ``receive`` (then
    ``http.disconnect``), and how many the middleware and application have taken."""

    def __init__(self, chunks: Sequence[bytes] = (b"",)) -> None:
        chunks = list(chunks) or [b""]
        self.messages: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        self.taken = 0

    async def receive(self) -> Message:
        if self.taken < len(self.messages):
            message = self.messages[self.taken]
            self.taken += 1
            return message
        return {"type": "http.disconnect"}

    def body_messages(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.messages]


@dataclass
class ProbeCall:
    """One call of :class:`ASGIProbe`: what the application was handed."""

    scope: Scope = field(repr=False)
    receive: Receive = field(repr=False)
    taken_before: int  # body messages the middleware took from the server before the call
    credentials: MCPCredentials = field(repr=False)  # in scope when the app was called
    # Not in the repr, which pytest prints: the body may hold the sentinel.
    messages: list[tuple[bytes, bool]] = field(default_factory=list, repr=False)

    @property
    def fingerprints(self) -> list[str]:
        """The fingerprints of the credentials in scope, sorted."""
        return sorted(c.fingerprint for c in self.credentials)

    @property
    def body(self) -> bytes:
        return b"".join(body for body, _ in self.messages)


class ASGIProbe:
    """A plain ASGI application that records each call. On an HTTP scope it reads the whole
    body unless ``read_body`` is false, then answers 200, or raises ``fail`` if given."""

    def __init__(
        self,
        wire: Wire | None = None,
        *,
        read_body: bool = True,
        fail: BaseException | None = None,
    ) -> None:
        self.wire = wire
        self.read_body = read_body
        self.fail = fail
        self.calls: list[ProbeCall] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken = -1 if self.wire is None else self.wire.taken
        call = ProbeCall(scope, receive, taken, current_credentials())
        self.calls.append(call)
        if scope["type"] != "http":
            return
        while self.read_body:
            message = await receive()
            if message["type"] != "http.request":
                break
            more = bool(message.get("more_body", False))
            call.messages.append((bytes(message.get("body", b"")), more))
            if not more:
                break
        if self.fail is not None:
            raise self.fail
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Exchange:
    """What the client got back from one raw ASGI request."""

    status: int | None  # None: nothing was sent
    body: bytes

    @property
    def error(self) -> dict[str, Any] | None:
        if self.status is None or self.status < 400:
            return None
        try:
            error = json.loads(self.body)["error"]
        except (ValueError, KeyError, TypeError):
            return None
        return error if isinstance(error, dict) else None

    @property
    def code(self) -> str | None:
        error = self.error
        return None if error is None else error.get("code")

    @property
    def param(self) -> str | None:
        error = self.error
        return None if error is None else error.get("param")


async def run_asgi(
    app: ASGIApp,
    wire: Wire | Sequence[bytes],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    method: str = "POST",
    path: str = "/v1/responses",
    root_path: str = "",
    http_version: str | None = "1.1",
) -> Exchange:
    """One request through ``app`` as an ASGI server would make it, headers exactly as given
    (no Content-Type or Content-Length added). ``http_version=None`` leaves the key out."""
    if not isinstance(wire, Wire):
        wire = Wire(wire)
    scope = asgi_scope(headers, method=method, path=path)
    scope["root_path"] = root_path
    if http_version is None:
        del scope["http_version"]
    else:
        scope["http_version"] = http_version
    return await call_asgi(app, scope, wire.receive)


async def call_asgi(app: ASGIApp, scope: Scope, receive: Receive) -> Exchange:
    """Call ``app`` with this very ``scope`` and ``receive``; what it sent back."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"] if sent else None
    return Exchange(status, b"".join(m.get("body", b"") for m in sent[1:]))


def framing(body: bytes, how: str) -> tuple[list[tuple[bytes, bytes]], str]:
    """The headers and HTTP version that announce ``body``: ``length`` (Content-Length),
    ``chunked`` (Transfer-Encoding) or ``h2`` (HTTP/2: neither header)."""
    if how == "length":
        return [(b"content-length", str(len(body)).encode())], "1.1"
    if how == "chunked":
        return [(b"transfer-encoding", b"chunked")], "1.1"
    assert how == "h2"
    return [], "2"


# --- real HTTP: raw bytes on a socket ---------------------------------------------------------


def raw_http(base_url: str, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Write ``request`` as is to the server at ``base_url`` (``http://127.0.0.1:port``) and
    read the answer until the server closes: the status and the body."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        parts = []
        while chunk := sock.recv(65536):
            parts.append(chunk)
    answer = b"".join(parts)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)


def http_request(
    path: str, body: bytes, headers: Sequence[tuple[bytes, bytes]], method: str = "POST"
) -> bytes:
    """An HTTP/1.1 request as bytes, headers exactly as given (plus Host and Connection)."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"host: 127.0.0.1", b"connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``check()`` holds, for at most ``seconds``. Polled: what it checks
    changes in a server's thread, where no anyio.Event can reach."""
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def run_python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a child process, from the repository's root (so that ``tests``
    and the package import), bounded in time; a non-zero exit fails the test with its
    stderr."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


# --- an MCP server that refuses: 401 and 403 with the MCP authorization spec's challenge ------


if HAVE_MCP:

    def _session_id(ctx: Context) -> str:
        """The MCP session of the request a tool runs for: the streamable HTTP transport's
        ``Mcp-Session-Id`` header, or the SSE transport's ``session_id`` query parameter."""
        request = ctx.request_context.request
        assert isinstance(request, Request)
        session_id = request.headers.get("mcp-session-id") or request.query_params["session_id"]
        return str(session_id)

    class GuardedMCPServer(RecordingMCPServer):
        """The testing kit's real MCP server, refusing as the MCP authorization spec says.

        An unknown token gets the SDK's 401, a token whose ``scopes`` (token -> granted scopes;
        every other known token has the required ``"mcp"``) lack ``"mcp"`` the SDK's 403
        ``insufficient_scope``; both challenges also name ``scope="mcp"`` (the SDK's server leaves
        it out, the spec's servers should send it). Two tools keep state per MCP session:
        ``remember(note)`` and ``recall()`` (the notes remembered on this session).
        """

        def __init__(
            self,
            tokens: dict[str, str],
            *,
            scopes: dict[str, list[str]] | None = None,
            name: str = "guarded",
        ) -> None:
            super().__init__(tokens, name=name)
            self.scopes = dict(scopes or {})
            self.notes: dict[str, list[str]] = {}  # by MCP session id

            @self.server.tool()
            def remember(note: str, ctx: Context) -> int:
                """Remember ``note`` on this MCP session; the number of notes it holds."""
                notes = self.notes.setdefault(_session_id(ctx), [])
                notes.append(note)
                return len(notes)

            @self.server.tool()
            def recall(ctx: Context) -> list[str]:
                """The notes remembered on this MCP session."""
                return list(self.notes.get(_session_id(ctx), []))

        async def verify_token(self, token: str) -> AccessToken | None:
            access = await super().verify_token(token)
            if access is not None and token in self.scopes:
                access = access.model_copy(update={"scopes": list(self.scopes[token])})
            return access

        def app(self, transport: Transport = "streamable-http") -> ASGIApp:
            inner = super().app(transport)

            async def challenge_with_scope(scope: Scope, receive: Receive, send: Send) -> None:
                async def add_scope(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        headers = [
                            (k, v + b', scope="mcp"' if k.lower() == b"www-authenticate" else v)
                            for k, v in message["headers"]
                        ]
                        message = {**message, "headers": headers}
                    await send(message)

                await inner(scope, receive, add_scope if scope["type"] == "http" else send)

            return challenge_with_scope


# --- the installed mcp SDK: 2.x, or 1.x in make test-mcp1 ----------------------------------

MCP_VERSION = metadata.version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".", 1)[0])
#: The HTTP library the installed SDK's client is built on: httpx2 (2.x) or httpx (1.x).
sdk_http: Any = import_module("httpx2" if MCP_MAJOR >= 2 else "httpx")


def structured(result: Any) -> dict[str, Any]:
    """A tool result's structured content (``structuredContent`` in 1.x's model)."""
    content = result.structured_content if MCP_MAJOR >= 2 else result.structuredContent
    return dict(content or {})


@asynccontextmanager
async def streamable_session(url: str, http_client: Any) -> AsyncIterator[ClientSession]:
    """An initialized SDK session to ``url`` over ``http_client`` (an ``sdk_http`` client).

    The SDK is imported here, not with this module: importing ``mcp`` imports OpenTelemetry,
    which some tests hide from the interpreter that imports this module.
    """
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    # streamable_http_client yields (read, write) in 2.x, (read, write, get_session_id) in 1.x
    async with (
        streamable_http_client(url, http_client=http_client) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        await session.initialize()
        yield session
