"""A token never shows up anywhere but where it is sent (``redact_body`` included).

One distinctive fake token is pushed through every path the middleware has: accepted from
each source, shadowed, rejected for each reason, with the application raising, with
``redact_body`` on. Everything observable is collected: structlog events rendered as JSON and
for the console, standard ``logging`` records at DEBUG, every response header and body, the
``repr`` and ``str`` of every object involved, exception messages and tracebacks. The token
must appear in none of them; its fingerprint may.

A failure names the places the token was found, never their content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message
from structlog.typing import EventDict, WrappedLogger

from mcp_auth_middleware import (
    CREDENTIAL_RESOLVED,
    CredentialRejected,
    CredentialSource,
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPCredential,
    MCPCredentials,
    ProviderDataMode,
    SourceRequest,
    current_credentials,
    use_credentials,
)
from mcp_auth_middleware.credentials import InvalidCredential
from mcp_auth_middleware.sources import parse_token
from tests.helpers import PROVIDER_DATA, asgi_scope, mcp_tool, provider_data

SECRET_PART = secrets.token_hex(16)
SENTINEL = "SENTINEL-" + SECRET_PART
FINGERPRINT = hashlib.sha256(SENTINEL.encode()).hexdigest()[:12]
# The whole token, and either half of its random part (a truncated or "masked" token).
NEEDLES = (SENTINEL.lower(), SECRET_PART[:16], SECRET_PART[16:])

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
PATH = "/v1/responses"


def contains_sentinel(text: str) -> bool:
    folded = text.lower()
    return any(needle in folded for needle in NEEDLES)


@dataclass(repr=False)
class Haystack:
    """Every string observed during a test, each under the name of where it came from.

    Its ``repr`` (which pytest prints for a failing test's arguments) shows no content.
    """

    places: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Haystack(<{len(self.places)} places>)"

    def add(self, where: str, value: object) -> None:
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        self.places.append((where, text))

    def add_exception(self, where: str, exc: BaseException) -> None:
        self.add(f"{where}: str", str(exc))
        self.add(f"{where}: repr", repr(exc))
        self.add(f"{where}: args", repr(exc.args))
        self.add(f"{where}: traceback", "".join(traceback.format_exception(exc)))
        chained = exc.__cause__ or exc.__context__
        if chained is not None:
            self.add(f"{where}: chained exception", repr(chained))

    def count(self, prefix: str) -> int:
        return sum(1 for where, _ in self.places if where.startswith(prefix))

    def leaks(self) -> list[str]:
        return [where for where, text in self.places if contains_sentinel(text)]


def assert_no_leaks(haystack: Haystack, caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    for i, record in enumerate(caplog.records):
        haystack.add(f"logging record {i} ({record.name})", formatter.format(record))
        haystack.add(f"logging record {i} ({record.name}) args", repr(record.args))
    leaks = haystack.leaks()
    names = ", ".join(sorted(set(leaks)))
    assert not leaks, f"sentinel found in {len(leaks)} place(s): {names}"


def _tee(haystack: Haystack) -> Any:
    json_renderer = structlog.processors.JSONRenderer()
    console_renderer = structlog.dev.ConsoleRenderer(colors=False)

    def tee(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        name = f"structlog {event_dict.get('event')!s}"
        haystack.add(f"{name} (json)", json_renderer(logger, method_name, dict(event_dict)))
        haystack.add(f"{name} (console)", console_renderer(logger, method_name, dict(event_dict)))
        return event_dict

    return tee


def _hide_sentinel(record: logging.LogRecord) -> bool:
    try:
        text = record.getMessage() + repr(record.args)
    except Exception:  # pragma: no cover - an unformattable record: hide it too
        return False
    return not contains_sentinel(text)


@pytest.fixture
def haystack(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Haystack]:
    """Collect structlog output, stdlib records (DEBUG) and every CredentialRejected made."""
    found = Haystack()
    caplog.set_level(logging.DEBUG)
    old = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.processors.format_exc_info,
            _tee(found),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    original_init = CredentialRejected.__init__

    def recording_init(self: CredentialRejected, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        rejections.append(self)

    rejections: list[CredentialRejected] = []
    monkeypatch.setattr(CredentialRejected, "__init__", recording_init)
    # pytest shows a failing test's log records; keep any that hold the token out of it.
    reporters = [h for h in logging.getLogger().handlers if h is not caplog.handler]
    for handler in reporters:
        handler.addFilter(_hide_sentinel)
    try:
        yield found
    finally:
        for handler in reporters:
            handler.removeFilter(_hide_sentinel)
        structlog.configure(**old)
        for i, exc in enumerate(rejections):
            found.add_exception(f"CredentialRejected {i} ({exc.code})", exc)


@dataclass
class Exchange:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    exception: BaseException | None = None


async def drive(
    app: ASGIApp,
    haystack: Haystack,
    *,
    headers: dict[str, str],
    body: bytes,
    chunks: int = 1,
) -> Exchange:
    """One request straight through the ASGI app, every part of the answer collected."""
    raw_headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    if chunks == 1:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = asgi_scope([(b"host", b"testserver"), *raw_headers], path=PATH)
    step = max(1, -(-len(body) // chunks))
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    incoming: list[Message] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    done = anyio.Event()
    exchange = Exchange()

    async def receive() -> Message:
        if incoming:
            return incoming.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        exchange.exception = exc
        # What a server does with it: uvicorn logs it with its traceback.
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application", exc_info=exc)
        structlog.get_logger("tests.server").error("request failed", exc_info=exc)
        haystack.add_exception("exception out of the app", exc)
    for name, value in exchange.headers:
        haystack.add(f"response header {name.decode('latin-1')}", value)
    haystack.add("response body", exchange.body)
    return exchange


def probe_app(
    config: MCPAuthConfig, haystack: Haystack, *, raises: bool = False, debug: bool = False
) -> Starlette:
    """Logs and reprs whatever it is given; answers with fingerprints (and, when the body
    is redacted, the body it received)."""
    log = structlog.get_logger("tests.app")
    std = logging.getLogger("tests.app")

    async def endpoint(request: Request) -> Response:
        creds = current_credentials()
        body = await request.body()
        log.debug("handler saw credentials", credentials=creds, items=list(creds))
        std.debug("credentials %r / %s", creds, creds)
        haystack.add("repr(current_credentials())", repr(creds))
        haystack.add("str(current_credentials())", str(creds))
        for i, cred in enumerate(creds):
            haystack.add(f"repr(credential {i})", repr(cred))
            haystack.add(f"str(credential {i})", str(cred))
            haystack.add(f"repr(credential {i}.token)", repr(cred.token))
            haystack.add(f"str(credential {i}.token)", str(cred.token))
            haystack.add(f"header names of credential {i}", sorted(cred.headers))
        if raises:
            raise RuntimeError(f"handler failed while holding {len(creds)} credential(s)")
        payload: dict[str, Any] = {"fingerprints": sorted(c.fingerprint for c in creds)}
        if config.redact_body:
            payload["body"] = body.decode()
        return JSONResponse(payload)

    app = Starlette(debug=debug, routes=[Route(PATH, endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware, config=config)
    return app


@dataclass(frozen=True, repr=False)
class Case:
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    config: MCPAuthConfig = field(default_factory=MCPAuthConfig)
    status: int = 200
    code: str | None = None
    #: The sentinel is the credential in scope (its fingerprint reaches the handler).
    in_scope: bool = True
    chunks: int = 1

    def raw_body(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


S = SENTINEL
# Another provider's keys beside ``mcp_headers``, which the middleware leaves alone.
OTHER_PROVIDER: dict[str, Any] = {"other_provider": {"k": 1}}
BEARER = "Bearer " + S
TOOL = {"tools": [mcp_tool(URL, token=None, label="srv")]}
SERVER_HEADERS = MCPAuthConfig(server_headers=True)

ACCEPTED = {
    "body-responses": Case({"tools": [mcp_tool(URL, token=S)]}),
    "body-bearer-prefix": Case({"tools": [mcp_tool(URL, token=BEARER)]}),
    "body-two-tools": Case(
        {"tools": [mcp_tool(URL, token=S), mcp_tool(OTHER, token=S, label="o")]}
    ),
    "tool-runtime-default": Case({"authorization": S, "tool_name": "t", "kwargs": {}}),
    "tool-runtime-endpoint": Case({"authorization": BEARER, "mcp_endpoint": {"uri": URL}}),
    "provider-data": Case(TOOL, provider_data({URL: {"Authorization": BEARER}}, **OTHER_PROVIDER)),
    "provider-data-extra-header": Case(
        {}, provider_data({URL: {"authorization": BEARER, "X-Api-Key": S}}, **OTHER_PROVIDER)
    ),
    "provider-data-renamed-header": Case(
        {},
        {"X-OGX-Provider-Data": json.dumps({"mcp_headers": {URL: {"Authorization": BEARER}}})},
        MCPAuthConfig(provider_data_header=("X-OGX-Provider-Data",)),
    ),
    "server-header": Case(TOOL, {"X-MCP-srv-Authorization": BEARER}, SERVER_HEADERS),
    "server-header-unknown-label": Case(
        {}, {"X-MCP-nolabel-Authorization": BEARER}, SERVER_HEADERS
    ),
    "body-shadows-provider-data": Case(
        {"tools": [mcp_tool(URL, token=S)]},
        provider_data({URL: {"Authorization": BEARER}}, **OTHER_PROVIDER),
    ),
    "shadowed-in-provider-data": Case(
        {"tools": [mcp_tool(URL, token="winner-token")]},
        provider_data({URL: {"Authorization": BEARER}}, **OTHER_PROVIDER),
        in_scope=False,
    ),
    "shadowed-in-server-header": Case(
        {"tools": [mcp_tool(URL, token="winner-token", label="srv")]},
        {"X-MCP-srv-Authorization": BEARER},
        SERVER_HEADERS,
        in_scope=False,
    ),
    "shadowed-in-body": Case(
        {"tools": [mcp_tool(URL, token=S)]},
        provider_data({URL: {"Authorization": "Bearer winner-token"}}, **OTHER_PROVIDER),
        MCPAuthConfig(precedence=("provider_data", "body")),
        in_scope=False,
    ),
    "provider-data-ignored": Case(
        {},
        provider_data({URL: {"Authorization": BEARER}}, **OTHER_PROVIDER),
        MCPAuthConfig(provider_data=ProviderDataMode.IGNORE),
        in_scope=False,
    ),
    "chunked-body": Case({"tools": [mcp_tool(URL, token=S)]}, chunks=3),
    "redact-body": Case(
        {"tools": [mcp_tool(URL, token=S)], "authorization": S},
        config=MCPAuthConfig(redact_body=True),
    ),
    "redact-body-tool-runtime": Case(
        {"authorization": BEARER, "mcp_endpoint": {"uri": URL}},
        config=MCPAuthConfig(redact_body=True),
    ),
}

REJECTED = {
    "authorization-in-tool-headers": Case(
        {"tools": [mcp_tool(URL, token=S, headers={"Authorization": BEARER})]},
        status=400,
        code="authorization_in_headers",
    ),
    "authorization-in-tool-headers-lowercase": Case(
        {"tools": [mcp_tool(URL, token=None, headers={"authorization": S})]},
        status=400,
        code="authorization_in_headers",
    ),
    "token-with-space": Case(
        {"tools": [mcp_tool(URL, token=S + " x")]}, status=400, code="invalid_authorization"
    ),
    "token-with-crlf": Case(
        {"tools": [mcp_tool(URL, token=S + "\r\nX-Injected: 1")]},
        status=400,
        code="invalid_authorization",
    ),
    "token-non-ascii": Case(
        {"tools": [mcp_tool(URL, token=S + "\u00e9")]}, status=400, code="invalid_authorization"
    ),
    "token-too-long": Case(
        {"tools": [mcp_tool(URL, token=S * 300)]}, status=400, code="invalid_authorization"
    ),
    "token-not-a-string": Case(
        {"tools": [mcp_tool(URL, token={"token": S})]}, status=400, code="invalid_authorization"
    ),
    "token-a-list": Case(
        {"authorization": [S], "mcp_endpoint": {"uri": URL}},
        status=400,
        code="invalid_authorization",
    ),
    "conflicting-tools": Case(
        {"tools": [mcp_tool(URL, token=S + "a"), mcp_tool(URL + "/", token=S + "b", label="x")]},
        status=400,
        code="conflicting_credentials",
    ),
    "bad-server-url": Case(
        {"tools": [mcp_tool("not a url " + S, token=S)]}, status=400, code="invalid_server_url"
    ),
    "provider-data-not-json": Case(
        {}, {PROVIDER_DATA: "{" + S}, status=400, code="invalid_provider_data"
    ),
    "provider-data-not-object": Case(
        {}, {PROVIDER_DATA: json.dumps([S])}, status=400, code="invalid_provider_data"
    ),
    "provider-data-mcp-headers-not-map": Case(
        {},
        {PROVIDER_DATA: json.dumps({"mcp_headers": [BEARER]})},
        status=400,
        code="invalid_provider_data",
    ),
    "provider-data-relative-url": Case(
        {},
        provider_data({"/mcp": {"Authorization": BEARER}}, **OTHER_PROVIDER),
        status=400,
        code="invalid_provider_data",
    ),
    "provider-data-value-not-string": Case(
        {},
        provider_data({URL: {"Authorization": [BEARER]}}, **OTHER_PROVIDER),
        status=400,
        code="invalid_provider_data",
    ),
    "provider-data-not-bearer": Case(
        {},
        provider_data({URL: {"Authorization": "Basic " + S}}, **OTHER_PROVIDER),
        status=400,
        code="invalid_authorization",
    ),
    "provider-data-bare-token": Case(
        {},
        provider_data({URL: {"Authorization": S}}, **OTHER_PROVIDER),
        status=400,
        code="invalid_authorization",
    ),
    "provider-data-token-with-space": Case(
        {},
        provider_data({URL: {"Authorization": BEARER + " x"}}, **OTHER_PROVIDER),
        status=400,
        code="invalid_authorization",
    ),
    "provider-data-rejected": Case(
        {},
        provider_data({URL: {"Authorization": BEARER}}, **OTHER_PROVIDER),
        MCPAuthConfig(provider_data=ProviderDataMode.REJECT),
        status=400,
        code="authorization_in_provider_data",
    ),
    "server-header-not-bearer": Case(
        TOOL,
        {"X-MCP-srv-Authorization": S},
        SERVER_HEADERS,
        status=400,
        code="invalid_authorization",
    ),
    "body-too-large-by-length": Case(
        {"tools": [mcp_tool(URL, token=S)], "pad": "x" * 200},
        config=MCPAuthConfig(max_body_bytes=64),
        status=413,
        code="body_too_large",
    ),
    "body-too-large-streamed": Case(
        {"tools": [mcp_tool(URL, token=S)], "pad": "x" * 200},
        config=MCPAuthConfig(max_body_bytes=64),
        status=413,
        code="body_too_large",
        chunks=4,
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", ACCEPTED)
async def test_accepted_token_leaks_nowhere(
    name: str, haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    case = ACCEPTED[name]
    app = probe_app(case.config, haystack)
    headers = {"content-type": "application/json", "x-request-id": "rid-1", **case.headers}
    exchange = await drive(app, haystack, headers=headers, body=case.raw_body(), chunks=case.chunks)
    assert exchange.exception is None
    assert exchange.status == 200
    fingerprints = json.loads(exchange.body)["fingerprints"]
    assert (FINGERPRINT in fingerprints) is case.in_scope
    assert haystack.count("structlog handler saw credentials") == 2  # the capture is live
    assert haystack.count("repr(current_credentials())") == 1
    if case.in_scope:
        assert haystack.count("structlog " + CREDENTIAL_RESOLVED) > 0
    assert_no_leaks(haystack, caplog)


@pytest.mark.anyio
@pytest.mark.parametrize("name", REJECTED)
async def test_rejected_token_leaks_nowhere(
    name: str, haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    case = REJECTED[name]
    app = probe_app(case.config, haystack)
    headers = {"content-type": "application/json", **case.headers}
    exchange = await drive(app, haystack, headers=headers, body=case.raw_body(), chunks=case.chunks)
    assert exchange.exception is None
    assert exchange.status == case.status
    assert json.loads(exchange.body)["error"]["code"] == case.code
    assert haystack.count("repr(current_credentials())") == 0  # the app was not called
    assert haystack.count("structlog mcp_credential_rejected") > 0
    assert_no_leaks(haystack, caplog)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("debug", "accept"),
    [(False, "*/*"), (True, "text/plain"), (True, "text/html")],
    ids=["debug-off", "debug-traceback-text", "debug-traceback-html"],
)
async def test_app_raising_leaks_nothing(
    debug: bool, accept: str, haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    """The exception, its traceback, the error page and the server's log stay clean."""
    config = MCPAuthConfig(server_headers=True)
    app = probe_app(config, haystack, raises=True, debug=debug)
    headers = {
        "content-type": "application/json",
        "accept": accept,
        "X-MCP-o-Authorization": BEARER,
        **provider_data({URL: {"Authorization": BEARER, "X-Api-Key": S}}, **OTHER_PROVIDER),
    }
    body = {"tools": [mcp_tool(URL, token=S), mcp_tool(OTHER, token=None, label="o")]}
    exchange = await drive(app, haystack, headers=headers, body=json.dumps(body).encode())
    assert isinstance(exchange.exception, RuntimeError)
    assert exchange.status == 500
    if debug:
        assert b"handler failed" in exchange.body  # the debug page shows the error
    assert haystack.count("exception out of the app") > 0
    assert_no_leaks(haystack, caplog)


def test_reprs_of_library_objects_hide_the_token(
    haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    cred = MCPCredential(
        token=S,
        source=CredentialSource.PROVIDER_DATA,
        server_url=URL,
        server_label="srv",
        headers={"X-Api-Key": S},
    )
    default = MCPCredential(token=S, source=CredentialSource.BODY)
    creds = MCPCredentials([cred, default])
    config = MCPAuthConfig(server_headers=True, redact_body=True)

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    objects: dict[str, object] = {
        "credential": cred,
        "default credential": default,
        "credentials": creds,
        "credentials.default": creds.default,
        "credential.token": cred.token,
        "list of credentials": list(creds),
        "config": config,
        "middleware": MCPAuthMiddleware(app, config=config),
    }
    for name, obj in objects.items():
        haystack.add(f"repr({name})", repr(obj))
        haystack.add(f"str({name})", str(obj))
        haystack.add(f"format({name})", f"{obj}")
    for value, param in [(S + " x", "p1"), ("Basic " + S, "p2"), (["Bearer", S], "p3")]:
        with pytest.raises(CredentialRejected) as info:
            parse_token(value, param=param, source="body", require_bearer=True)
        haystack.add_exception(f"parse_token rejection {param}", info.value)
    assert haystack.count("repr(credential)") == 1
    assert_no_leaks(haystack, caplog)


@pytest.mark.anyio
async def test_request_handed_to_a_source_hides_the_token_in_its_repr(
    haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    """A custom source that logs the request (or its parsed body) must not log credentials.

    Raw header mappings are excluded: like Starlette's ``Headers`` they show values.
    """
    seen: list[SourceRequest] = []

    class Spy:
        name = "spy"
        needs_body = True

        def read(self, request: SourceRequest) -> list[MCPCredential]:
            seen.append(request)
            structlog.get_logger("tests.spy").debug(
                "vault lookup", request=request, body=request.body
            )
            return []

    config = MCPAuthConfig(sources=(Spy(),))
    app = probe_app(config, haystack)
    body = {"tools": [mcp_tool(OTHER, token=S, label="o")], "authorization": BEARER}
    headers = {"content-type": "application/json"}
    exchange = await drive(app, haystack, headers=headers, body=json.dumps(body).encode())
    assert exchange.status == 200
    [request] = seen
    assert request.body is not None
    haystack.add("repr(SourceRequest)", repr(request))
    haystack.add("str(SourceRequest)", str(request))
    haystack.add("repr(SourceRequest.body)", repr(request.body))
    haystack.add("str(SourceRequest.body)", str(request.body))
    assert_no_leaks(haystack, caplog)


# -- redact_body ---------------------------------------------------------------------------


def recording_app(received: list[dict[str, Any]]) -> Starlette:
    async def endpoint(request: Request) -> Response:
        body = await request.body()
        creds = current_credentials()
        received.append(
            {
                "body": body,
                "content_length": request.headers.get("content-length"),
                "tokens": {c.server_url: c.token.get_secret_value() for c in creds},
            }
        )
        return JSONResponse({})

    return Starlette(routes=[Route(PATH, endpoint, methods=["POST"])])


REDACTIONS: dict[str, tuple[dict[str, Any], dict[str | None, str]]] = {
    "responses": (
        {
            "model": "m",
            "input": "hi",
            "tools": [
                mcp_tool(URL, token=S, label="a", require_approval="never"),
                mcp_tool(OTHER, token=BEARER, label="b"),
                mcp_tool("https://third.example/mcp", token=None, label="c"),
                {"type": "function", "name": "f", "parameters": {}},
            ],
            "metadata": {"k": "v"},
        },
        {URL: S, OTHER: S},
    ),
    "tool-runtime": (
        {
            "tool_name": "t",
            "kwargs": {"q": 1},
            "authorization": BEARER,
            "mcp_endpoint": {"uri": URL},
        },
        {URL: S},
    ),
    "tool-runtime-default": (
        {"tool_name": "t", "kwargs": {}, "authorization": S},
        {None: S},
    ),
    "both": (
        {"authorization": S, "tools": [mcp_tool(URL, token=S)]},
        {URL: S, None: S},
    ),
}


def without_authorization(document: dict[str, Any]) -> dict[str, Any]:
    expected = {k: v for k, v in document.items() if k != "authorization"}
    if "tools" in expected:
        expected["tools"] = [
            {
                k: v
                for k, v in tool.items()
                if not (tool.get("type") == "mcp" and k == "authorization")
            }
            for tool in expected["tools"]
        ]
    return expected


@pytest.mark.anyio
@pytest.mark.parametrize("name", REDACTIONS)
async def test_redacted_body_reaches_the_app_without_authorization_values(
    name: str, haystack: Haystack, caplog: pytest.LogCaptureFixture
) -> None:
    document, tokens = REDACTIONS[name]
    received: list[dict[str, Any]] = []
    app = recording_app(received)
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig(redact_body=True))
    exchange = await drive(
        app,
        haystack,
        headers={"content-type": "application/json"},
        body=json.dumps(document).encode(),
    )
    assert exchange.status == 200
    [seen] = received
    assert json.loads(seen["body"]) == without_authorization(document)
    assert seen["content_length"] == str(len(seen["body"]))
    assert seen["tokens"] == tokens  # still scoped
    haystack.add("body the app received", seen["body"])
    assert_no_leaks(haystack, caplog)


@pytest.mark.anyio
async def test_without_redaction_the_app_gets_the_body_byte_for_byte(
    haystack: Haystack,
) -> None:
    """The control for the test above: redaction is what removes the values."""
    received: list[dict[str, Any]] = []
    app = recording_app(received)
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    raw = json.dumps({"tools": [mcp_tool(URL, token=S)]}, indent=1).encode()
    await drive(app, haystack, headers={"content-type": "application/json"}, body=raw)
    [seen] = received
    assert seen["body"] == raw
    assert seen["content_length"] == str(len(raw))


@pytest.mark.anyio
async def test_a_token_that_slipped_past_validation_is_refused_before_the_http_client_sees_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should a token ever be changed after its checks (here by writing the private slot),
    ``MCPBearerAuth`` refuses it with an error naming the field only: the HTTP client never
    gets a header value it would quote in its own error or DEBUG log."""
    cred = MCPCredential(token="slipped-token", source="body", server_url="https://h/mcp")
    object.__setattr__(cred, "_secret", "slipped-token\r\nX-Injected: 1")
    caplog.set_level(logging.DEBUG)
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200))
    with use_credentials([cred]):
        async with httpx2.AsyncClient(auth=MCPBearerAuth(), transport=transport) as c:
            with pytest.raises(InvalidCredential) as caught:
                await c.get("https://h/mcp")
    assert "slipped-token" not in str(caught.value)
    assert "slipped-token" not in caplog.text
    assert "slipped-token" not in "".join(traceback.format_exception(caught.value))
