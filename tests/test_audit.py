"""The audit events, their fields, and the logger they go to."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from asgi_correlation_id import CorrelationIdMiddleware
from hypothesis import given
from hypothesis import strategies as st
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    UnauthenticatedUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from structlog.testing import LogCapture

from mcp_auth_middleware import (
    AUDIT_LOGGER,
    CREDENTIAL_REJECTED,
    CREDENTIAL_RESOLVED,
    MCPAuthConfig,
    ProviderDataMode,
)
from mcp_auth_middleware.audit import authenticated_user
from mcp_auth_middleware.credentials import fingerprint
from tests.helpers import (
    PROVIDER_DATA,
    Sources,
    client,
    make_app,
    mcp_tool,
    provider_data,
)

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
THIRD = "https://third.example.com/sse"
PATH = "/v1/responses"

RESOLVED_FIELDS = {
    "logger",
    "source",
    "shadowed",
    "server_url",
    "server_label",
    "fingerprint",
    "method",
    "path",
    "request_id",
}
REJECTED_FIELDS = {"logger", "code", "param", "source", "method", "path", "request_id"}


def sha12(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def events(log: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in log if e["event"] == name]


def by_url(log: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    resolved = events(log, CREDENTIAL_RESOLVED)
    found = {e["server_url"]: e for e in resolved}
    assert len(found) == len(resolved), "one event per server"
    return found


def test_event_names_are_the_documented_constants() -> None:
    assert AUDIT_LOGGER == "mcp_auth_middleware.audit"
    assert CREDENTIAL_RESOLVED == "mcp_credential_resolved"
    assert CREDENTIAL_REJECTED == "mcp_credential_rejected"


@pytest.mark.anyio
async def test_resolved_event_carries_every_field(audit_log: list[dict[str, Any]]) -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post(
            PATH,
            json={"tools": [mcp_tool(URL, token="Bearer tok-1", label="docs")]},
            headers={"X-Request-ID": "req-42"},
        )
    assert r.status_code == 200
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert set(event) >= RESOLVED_FIELDS
    assert event["source"] == "body"
    assert event["shadowed"] == []
    assert event["server_url"] == URL
    assert event["server_label"] == "docs"
    assert event["fingerprint"] == sha12("tok-1")  # of the token, "Bearer " stripped
    assert event["method"] == "POST"
    assert event["path"] == PATH
    assert event["request_id"] == "req-42"
    assert event["logger"] == AUDIT_LOGGER
    assert "caller" not in event  # nobody authenticated the caller
    assert events(audit_log, CREDENTIAL_REJECTED) == []


@pytest.mark.anyio
async def test_fingerprint_is_the_first_12_hex_of_the_tokens_sha256(
    audit_log: list[dict[str, Any]],
) -> None:
    token = "a-distinct-token-" + uuid.uuid4().hex
    app = make_app()
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL, token=token)]})
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert event["fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:12]
    assert len(event["fingerprint"]) == 12
    int(event["fingerprint"], 16)


@pytest.mark.anyio
async def test_one_event_per_server_credential(audit_log: list[dict[str, Any]]) -> None:
    """Two body tools and one provider-data server: three events, each with its own data."""
    app = make_app()
    body = {
        "tools": [
            mcp_tool(URL, token="tok-a", label="a"),
            mcp_tool(OTHER, token="tok-b", label="b"),
            mcp_tool(THIRD, token=None, label="c"),
            {"type": "function", "name": "f"},
        ]
    }
    headers = provider_data({THIRD: {"Authorization": "Bearer tok-c"}})
    async with client(app) as c:
        r = await c.post(PATH, json=body, headers=headers)
    assert r.status_code == 200
    found = by_url(audit_log)
    assert set(found) == {URL, OTHER, THIRD}
    assert (found[URL]["source"], found[URL]["fingerprint"], found[URL]["server_label"]) == (
        "body",
        sha12("tok-a"),
        "a",
    )
    assert (found[OTHER]["source"], found[OTHER]["fingerprint"]) == ("body", sha12("tok-b"))
    assert (found[THIRD]["source"], found[THIRD]["fingerprint"]) == (
        "provider_data",
        sha12("tok-c"),
    )
    assert all(e["shadowed"] == [] for e in found.values())


@pytest.mark.anyio
async def test_tool_runtime_default_credential_gets_its_event(
    audit_log: list[dict[str, Any]],
) -> None:
    app = make_app()
    async with client(app) as c:
        await c.post("/v1/tool-runtime/invoke", json={"authorization": "rt-tok"})
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert event["server_url"] is None
    assert event["server_label"] is None
    assert event["source"] == "body"
    assert event["fingerprint"] == sha12("rt-tok")
    assert event["path"] == "/v1/tool-runtime/invoke"


SHADOWING = {
    "body-over-provider-data": (
        MCPAuthConfig(),
        {},
        "body",
        ["provider_data"],
    ),
    "body-over-both": (
        MCPAuthConfig(server_headers=True),
        {"X-MCP-docs-Authorization": "Bearer hdr"},
        "body",
        ["server_header", "provider_data"],
    ),
    "provider-data-first": (
        MCPAuthConfig(server_headers=True, precedence=("provider_data", "server_header", "body")),
        {"X-MCP-docs-Authorization": "Bearer hdr"},
        "provider_data",
        ["server_header", "body"],
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "extra_headers", "winner", "shadowed"), SHADOWING.values(), ids=SHADOWING.keys()
)
async def test_shadowed_sources_are_listed_in_precedence_order(
    config: MCPAuthConfig,
    extra_headers: dict[str, str],
    winner: str,
    shadowed: list[str],
    audit_log: list[dict[str, Any]],
) -> None:
    app = make_app(config)
    headers = {**provider_data({URL: {"Authorization": "Bearer pd"}}), **extra_headers}
    async with client(app) as c:
        r = await c.post(
            PATH, json={"tools": [mcp_tool(URL, token="body", label="docs")]}, headers=headers
        )
    assert r.status_code == 200
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert event["source"] == winner
    assert event["shadowed"] == shadowed
    tokens = {"body": "body", "provider_data": "pd", "server_header": "hdr"}
    assert event["fingerprint"] == sha12(tokens[winner])


REJECTIONS = {
    "authorization-in-headers": (
        MCPAuthConfig(),
        {"tools": [mcp_tool(URL, headers={"Authorization": "Bearer x"})]},
        {},
        ("authorization_in_headers", "tools[0].headers", "body"),
    ),
    "invalid-body-token": (
        MCPAuthConfig(),
        {"tools": [mcp_tool(URL, token="a b")]},
        {},
        ("invalid_authorization", "tools[0].authorization", "body"),
    ),
    "conflicting": (
        MCPAuthConfig(),
        {"tools": [mcp_tool(URL, token="t1"), mcp_tool(URL + "/", token="t2", label="x")]},
        {},
        ("conflicting_credentials", "tools[1].server_url", "body"),
    ),
    "invalid-provider-data": (
        MCPAuthConfig(),
        {},
        {PROVIDER_DATA: "[1, 2]"},
        ("invalid_provider_data", PROVIDER_DATA, "provider_data"),
    ),
    "provider-data-rejected": (
        MCPAuthConfig(provider_data=ProviderDataMode.REJECT),
        {},
        provider_data({URL: {"Authorization": "Bearer t"}}),
        ("authorization_in_provider_data", PROVIDER_DATA, "provider_data"),
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "body", "headers", "expected"), REJECTIONS.values(), ids=REJECTIONS.keys()
)
async def test_rejection_event_names_code_param_and_source(
    config: MCPAuthConfig,
    body: dict[str, Any],
    headers: dict[str, str],
    expected: tuple[str, str, str],
    audit_log: list[dict[str, Any]],
) -> None:
    app = make_app(config)
    async with client(app) as c:
        r = await c.post(PATH, json=body, headers={"X-Request-ID": "rq-1", **headers})
    assert r.status_code == 400
    [event] = events(audit_log, CREDENTIAL_REJECTED)
    assert set(event) >= REJECTED_FIELDS
    assert (event["code"], event["param"], event["source"]) == expected
    assert (event["method"], event["path"], event["request_id"]) == ("POST", PATH, "rq-1")
    assert r.json()["error"]["code"] == expected[0]
    assert events(audit_log, CREDENTIAL_RESOLVED) == []


@pytest.mark.anyio
async def test_body_too_large_is_audited_as_a_rejection(audit_log: list[dict[str, Any]]) -> None:
    app = make_app(MCPAuthConfig(max_body_bytes=64))
    async with client(app) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(URL, token="x" * 100)]})
    assert r.status_code == 413
    [event] = events(audit_log, CREDENTIAL_REJECTED)
    assert event["code"] == "body_too_large"
    assert event["path"] == PATH


@pytest.mark.anyio
async def test_audit_off_emits_nothing(audit_log: list[dict[str, Any]]) -> None:
    app = make_app(MCPAuthConfig(audit=False))
    async with client(app) as c:
        ok = await c.post(
            PATH,
            json={"tools": [mcp_tool(URL, token="tok")]},
            headers=provider_data({OTHER: {"Authorization": "Bearer pd"}}),
        )
        bad = await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    assert ok.status_code == 200
    assert len(ok.json()["credentials"]) == 2  # there was something to audit
    assert bad.status_code == 400
    assert events(audit_log, CREDENTIAL_RESOLVED) == []
    assert events(audit_log, CREDENTIAL_REJECTED) == []


@pytest.mark.anyio
async def test_server_url_is_logged_without_its_query_string(
    audit_log: list[dict[str, Any]],
) -> None:
    url = "https://mcp.example.com/mcp?api_key=query-secret-123&tenant=acme"
    app = make_app()
    async with client(app) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(url, token="tok")]})
    assert r.status_code == 200
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    logged = event["server_url"]
    assert logged.startswith("https://mcp.example.com/mcp")
    assert "query-secret-123" not in logged
    assert "api_key" not in logged
    assert "tenant" not in logged
    assert "query-secret-123" not in json.dumps(audit_log, default=repr)


@pytest.mark.anyio
async def test_request_id_is_none_without_a_header(audit_log: list[dict[str, Any]]) -> None:
    app = make_app()
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]})
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert event["request_id"] is None


@pytest.mark.anyio
async def test_request_id_comes_from_asgi_correlation_id_when_installed_outside(
    audit_log: list[dict[str, Any]],
) -> None:
    """With no X-Request-ID sent, the id is the one CorrelationIdMiddleware generated."""
    app = make_app()
    app.add_middleware(CorrelationIdMiddleware)  # added last: outermost
    async with client(app) as c:
        generated = await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        sent_id = uuid.uuid4().hex
        passed = await c.post(
            PATH, json={"tools": [mcp_tool(URL)]}, headers={"X-Request-ID": sent_id}
        )
    first, second = events(audit_log, CREDENTIAL_RESOLVED)
    assert first["request_id"]
    assert first["request_id"] == generated.headers["X-Request-ID"]
    assert second["request_id"] == sent_id == passed.headers["X-Request-ID"]


@pytest.mark.anyio
async def test_rejection_request_id_comes_from_asgi_correlation_id(
    audit_log: list[dict[str, Any]],
) -> None:
    app = make_app()
    app.add_middleware(CorrelationIdMiddleware)
    async with client(app) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    [event] = events(audit_log, CREDENTIAL_REJECTED)
    assert event["request_id"]
    assert event["request_id"] == r.headers["X-Request-ID"]


@pytest.fixture
def logger_names() -> Iterator[tuple[list[tuple[Any, ...]], list[Any]]]:
    """structlog configured with a logger factory that records the names it is asked for."""
    names: list[tuple[Any, ...]] = []
    capture = LogCapture()

    def factory(*args: Any) -> Any:
        names.append(args)
        return structlog.PrintLogger()

    old = structlog.get_config()
    structlog.configure(
        processors=[capture], logger_factory=factory, cache_logger_on_first_use=False
    )
    try:
        yield names, capture.entries
    finally:
        structlog.configure(**old)


@pytest.mark.anyio
async def test_events_go_to_the_audit_logger(
    logger_names: tuple[list[tuple[Any, ...]], list[dict[str, Any]]],
) -> None:
    names, entries = logger_names
    app = make_app()
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    assert [e["event"] for e in entries] == [CREDENTIAL_RESOLVED, CREDENTIAL_REJECTED]
    assert names
    assert all(args[:1] == (AUDIT_LOGGER,) for args in names)


@pytest.fixture
def stdlib_structlog() -> Iterator[None]:
    """structlog routed to the standard library, as most deployments run it."""
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.stdlib.add_log_level, structlog.processors.JSONRenderer()],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        yield
    finally:
        structlog.configure(**old)


@pytest.mark.anyio
@pytest.mark.usefixtures("stdlib_structlog")
async def test_stdlib_records_carry_the_audit_logger_name_and_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app()
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]}, headers={"X-Request-ID": "r1"})
        await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    audit = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert len(audit) == 2
    resolved, rejected = (json.loads(r.getMessage()) for r in audit)
    assert resolved["event"] == CREDENTIAL_RESOLVED
    assert resolved["request_id"] == "r1"
    assert rejected["event"] == CREDENTIAL_REJECTED
    assert rejected["code"] == "invalid_authorization"
    # A refusal is worth more attention than a success.
    assert audit[1].levelno >= audit[0].levelno >= logging.INFO


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("label", "path", "request_id"),
    [
        pytest.param("docs\nforged line", PATH + "%0Aforged", "rq\x7f1", id="newlines"),
        pytest.param("\x1b[31mred\x1b[0m", PATH + "%1B%5B2J", "rq\x851", id="escapes"),
        pytest.param("a\u2028b\u0085c", PATH + "%E2%80%A8", "rq\xa0", id="unicode-separators"),
        pytest.param("l" * 300, PATH + "/" + "p" * 3000, "r" * 300, id="too-long"),
    ],
)
async def test_caller_chosen_fields_are_printable_and_bounded(
    audit_log: list[dict[str, Any]],
    extra_sources: Sources,
    label: str,
    path: str,
    request_id: str,
) -> None:
    """A label, path or request id can carry anything the caller likes: in the event it is
    printable (no line a console renderer could split) and bounded."""
    app = make_app(MCPAuthConfig(sources=extra_sources))
    async with client(app) as c:
        r = await c.post(
            path,
            json={"tools": [mcp_tool(URL, label=label)]},
            headers={b"X-Request-ID": request_id.encode("latin-1")},
        )
    assert r.status_code in (200, 404)  # Starlette's routes match no newline in a path
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    for field, limit in (("server_label", 256), ("path", 2048), ("request_id", 128)):
        value = event[field]
        assert value.isprintable(), (field, value)
        assert len(value) <= limit * 4 + 2, (field, len(value))  # repr escapes at most 4x
    assert event["server_label"].startswith(repr(label[:3])[1:4])
    assert event["path"].startswith(PATH)


@pytest.mark.anyio
async def test_first_request_id_header_wins_and_is_bounded(
    audit_log: list[dict[str, Any]], extra_sources: Sources
) -> None:
    app = make_app(MCPAuthConfig(sources=extra_sources))
    async with client(app) as c:
        await c.post(
            PATH,
            json={"tools": [mcp_tool(URL)]},
            headers=[("X-Request-ID", "first"), ("X-Request-ID", "second")],
        )
        await c.post(PATH, json={"tools": [mcp_tool(URL)]}, headers={"X-Request-ID": "i" * 500})
    first, long = events(audit_log, CREDENTIAL_RESOLVED)
    assert first["request_id"] == "first"
    assert long["request_id"] == "i" * 128


@given(st.text(min_size=1, max_size=200))
def test_fingerprint_matches_hashlib_sha256(token: str) -> None:
    """The fingerprint is the first 12 hex digits of the token's SHA-256, as documented."""
    assert fingerprint(token) == hashlib.sha256(token.encode()).hexdigest()[:12]


@pytest.mark.anyio
async def test_each_body_tool_gets_its_own_event(
    audit_log: list[dict[str, Any]], extra_sources: Sources
) -> None:
    """Three body tools for three servers: three events."""
    app = make_app(MCPAuthConfig(sources=extra_sources))
    tokens = {URL: "tok-a", OTHER: "tok-b", THIRD: "tok-c"}
    body = {"tools": [mcp_tool(url, token=tok, label=url[8:13]) for url, tok in tokens.items()]}
    async with client(app) as c:
        r = await c.post(PATH, json=body)
    assert r.status_code == 200
    found = by_url(audit_log)
    assert set(found) == set(tokens)
    for url, tok in tokens.items():
        event = found[url]
        assert (
            event["source"],
            event["fingerprint"],
            event["server_label"],
            event["shadowed"],
        ) == (
            "body",
            sha12(tok),
            url[8:13],
            [],
        )


# -- the logger name and the caller on every event --------------------------------------


@pytest.mark.anyio
async def test_default_structlog_output_names_the_audit_logger(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """structlog unconfigured (its console renderer on stdout shows no logger name of its
    own): each line still says which logger it came from."""
    old = structlog.get_config()
    structlog.reset_defaults()
    try:
        app = make_app()
        async with client(app) as c:
            await c.post(PATH, json={"tools": [mcp_tool(URL)]})
            await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    finally:
        structlog.configure(**old)
    lines = [line for line in capsys.readouterr().out.splitlines() if "mcp_credential_" in line]
    assert len(lines) == 2
    assert all(AUDIT_LOGGER in line for line in lines)


class ApiKeyBackend(AuthenticationBackend):
    """``X-Api-Key: key-<name>`` authenticates ``<name>``."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        key = conn.headers.get("x-api-key", "")
        if not key.startswith("key-"):
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(key[4:])


def authenticated_app(config: MCPAuthConfig) -> Any:
    """``AuthenticationMiddleware`` outside ``MCPAuthMiddleware``, as documented."""
    app = make_app(config)
    app.add_middleware(AuthenticationMiddleware, backend=ApiKeyBackend())
    return app


@pytest.mark.anyio
async def test_the_authenticated_starlette_user_is_the_caller_of_every_event(
    audit_log: list[dict[str, Any]], extra_sources: Sources
) -> None:
    app = authenticated_app(MCPAuthConfig(sources=extra_sources))
    async with client(app) as c:
        two = {"tools": [mcp_tool(URL, token="t1"), mcp_tool(OTHER, token="t2", label="o")]}
        await c.post(PATH, json=two, headers={"X-Api-Key": "key-alice"})
        await c.post(
            PATH, json={"tools": [mcp_tool(URL, token="a b")]}, headers={"X-Api-Key": "key-bob"}
        )
        await c.post(PATH, json={"tools": [mcp_tool(URL, token="t3")]})  # no key
    first, second, anonymous = events(audit_log, CREDENTIAL_RESOLVED)
    [rejected] = events(audit_log, CREDENTIAL_REJECTED)
    assert (first["caller"], second["caller"]) == ("alice", "alice")
    assert rejected["caller"] == "bob"
    assert "caller" not in anonymous  # Starlette's UnauthenticatedUser


@pytest.mark.anyio
async def test_authentication_inside_the_middleware_comes_too_late_for_the_caller(
    audit_log: list[dict[str, Any]],
) -> None:
    """The documented order matters: authentication added first (inside ours) has not run
    yet when the events are written."""
    app = make_app()
    app.user_middleware.insert(1, Middleware(AuthenticationMiddleware, backend=ApiKeyBackend()))
    async with client(app) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(URL)]}, headers={"X-Api-Key": "key-alice"})
    assert r.status_code == 200
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert "caller" not in event


@pytest.mark.anyio
async def test_a_custom_caller_reads_scope_state(
    audit_log: list[dict[str, Any]], extra_sources: Sources
) -> None:
    """Another stack keeps the identity in ``scope["state"]``: a function says where."""

    def tenant(scope: Scope) -> str | None:
        value = scope.get("state", {}).get("tenant")
        return value if isinstance(value, str) else None

    inner = make_app(MCPAuthConfig(sources=extra_sources, caller=tenant))

    async def set_tenant(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["tenant"] = "acme"
        await inner(scope, receive, send)

    async with client(set_tenant) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    assert [e["caller"] for e in audit_log] == ["acme", "acme"]


@pytest.mark.anyio
async def test_caller_none_turns_the_lookup_off(audit_log: list[dict[str, Any]]) -> None:
    app = authenticated_app(MCPAuthConfig(caller=None))
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]}, headers={"X-Api-Key": "key-alice"})
    [event] = events(audit_log, CREDENTIAL_RESOLVED)
    assert "caller" not in event


@pytest.mark.anyio
async def test_a_caller_bound_in_structlog_contextvars_shows_through() -> None:
    """When the configured reader knows no caller, a ``caller`` bound with structlog's
    contextvars (by whatever authenticated the request) is the event's."""
    capture = LogCapture()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        cache_logger_on_first_use=False,
    )
    inner = make_app()

    async def bind_user(scope: Scope, receive: Receive, send: Send) -> None:
        with structlog.contextvars.bound_contextvars(caller="from-contextvars"):
            await inner(scope, receive, send)

    try:
        async with client(bind_user) as c:
            await c.post(PATH, json={"tools": [mcp_tool(URL)]})
    finally:
        structlog.configure(**old)
    [event] = capture.entries
    assert event["caller"] == "from-contextvars"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("identity", "logged"),
    [
        pytest.param("alice\nforged", "alice\\nforged", id="newline"),
        pytest.param("\x1b[2J" + "u" * 400, "\\x1b[2J" + "u" * 252, id="escape-and-too-long"),
        pytest.param(12345, "12345", id="not-a-string"),
    ],
)
async def test_caller_strings_are_printable_and_bounded(
    audit_log: list[dict[str, Any]], identity: Any, logged: str
) -> None:
    app = make_app(MCPAuthConfig(caller=lambda scope: identity))
    async with client(app) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    assert [e["caller"] for e in audit_log] == [logged, logged]


@pytest.mark.anyio
async def test_a_failing_caller_reader_fails_the_request() -> None:
    def broken(scope: Scope) -> str | None:
        raise LookupError("no user store")

    app = make_app(MCPAuthConfig(caller=broken))
    async with client(app) as c:
        with pytest.raises(LookupError, match="no user store"):
            await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        ok = await c.post(PATH, json={"tools": []})  # nothing to audit: not asked
    assert ok.status_code == 200


class _User(BaseUser):
    def __init__(self, authenticated: bool, identity: str | None, name: str) -> None:
        self._authenticated, self._identity, self._name = authenticated, identity, name

    @property
    def is_authenticated(self) -> bool:
        return self._authenticated

    @property
    def display_name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        if self._identity is None:
            raise NotImplementedError
        return self._identity


AUTHENTICATED_USERS = {
    "no-user": (None, None),
    "unauthenticated": (UnauthenticatedUser(), None),
    "simple-user": (SimpleUser("alice"), "alice"),
    "identity-first": (_User(True, "u-42", "Alice"), "u-42"),
    "display-name-without-identity": (_User(True, None, "Alice"), "Alice"),
    "not-authenticated": (_User(False, "u-42", "Alice"), None),
    "plain-string": ("svc-batch", "svc-batch"),
    "empty-string": ("", None),
    "no-user-interface": (object(), None),
}


@pytest.mark.parametrize(
    ("user", "expected"), AUTHENTICATED_USERS.values(), ids=AUTHENTICATED_USERS.keys()
)
def test_authenticated_user_reads_scope_user(user: Any, expected: str | None) -> None:
    scope = {} if user is None else {"user": user}
    assert authenticated_user(scope) == expected
