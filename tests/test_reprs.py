"""Secrets in a server URL (its user-info and its query) never show in a repr or an error.

A caller may put credentials in ``server_url`` itself (``https://user:pass@h/mcp``,
``https://h/mcp?api_key=...``). Those URLs are carried, compared and sent, but the
``repr()`` and ``str()`` of every object that holds one (MCPCredential, MCPCredentials,
MCPTool, ParsedBody, SourceRequest, ServerURL, the session pool's objects) and the message
of every error about one must show neither part. The secrets are generated; failures name
the object, never the secret.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcp_auth_middleware import (
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPCredential,
    MCPCredentials,
    SourceRequest,
    mcp_headers,
    use_credentials,
)
from mcp_auth_middleware.sessions import MCPSessionPool
from mcp_auth_middleware.sources.base import ParsedBody
from mcp_auth_middleware.sources.body import parse_body
from mcp_auth_middleware.testing import RecordingMCPServer
from mcp_auth_middleware.urls import parse_server_url
from tests.helpers import ASGIProbe, mcp_tool, run_asgi

USER_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%"
QUERY_CHARS = USER_CHARS + ":@/?"


def secret(alphabet: str) -> st.SearchStrategy[str]:
    """A secret distinctive enough that finding it anywhere means it leaked."""
    return st.text(st.sampled_from(alphabet), min_size=10, max_size=24).map(lambda s: "Qz" + s)


class SecretURL:
    """A server URL and its secret parts (not a dataclass: hypothesis would print its
    fields rather than its ``repr``)."""

    __slots__ = ("secrets", "url")

    def __init__(self, url: str, secrets: tuple[str, ...]) -> None:
        self.url = url
        self.secrets = secrets  # the parts that must never show

    def __repr__(self) -> str:  # hypothesis prints it: the shape, not the secrets
        shape = self.url
        for i, part in enumerate(self.secrets):
            shape = shape.replace(part, f"<secret {i}: {len(part)} chars>")
        return f"SecretURL({shape!r})"

    def found_in(self, text: str) -> bool:
        return any(part in text for part in self.secrets)


@st.composite
def secret_urls(draw: st.DrawFn, scheme: str = "https", host: str = "mcp.example.com") -> SecretURL:
    parts: list[str] = []
    userinfo = ""
    kind = draw(st.sampled_from(["user:password", "user", ":password", "none"]))
    if kind != "none":
        user = draw(secret(USER_CHARS.replace(":", ""))) if "user" in kind else ""
        password = draw(secret(USER_CHARS)) if "password" in kind else ""
        userinfo = user + (":" + password if password else "") + "@"
        parts += [p for p in (user, password) if p]
    query = ""
    if kind == "none" or draw(st.booleans()):
        value = draw(secret(QUERY_CHARS))
        query = "?" + draw(st.sampled_from(["api_key={}", "{}", "a=1&token={}&b=2"])).format(value)
        parts.append(value)
    path = draw(st.sampled_from(["/mcp", "/", "/a/b"]))
    url = f"{scheme}://{userinfo}{host}{path}{query}"
    try:
        parse_server_url(url)
    except ValueError:
        assume(False)
    return SecretURL(url, tuple(parts))


def shown(objects: dict[str, Any], url: SecretURL) -> list[str]:
    """The names of the objects whose repr or str shows a secret."""
    return [
        f"{kind}({name})"
        for name, obj in objects.items()
        for kind, render in (("repr", repr), ("str", str))
        if url.found_in(render(obj))
    ]


def objects_holding(url: str) -> dict[str, Any]:
    credential = MCPCredential(token="repr-token", source="body", server_url=url)
    decoded = parse_body(json.dumps({"tools": [mcp_tool(url, "repr-token")]}).encode())
    assert decoded is not None
    parsed = ParsedBody.of(decoded)
    return {
        "MCPCredential": credential,
        "MCPCredentials": MCPCredentials([credential]),
        "decoded body": decoded,
        "decoded tool": (decoded.tools or [])[0],
        "ParsedBody": parsed,
        "MCPTool": parsed.tools[0],
        "SourceRequest": SourceRequest({"type": "http", "headers": []}, "POST", "/", body=parsed),
        "ServerURL": parse_server_url(url),
        "MCPBearerAuth": MCPBearerAuth(credentials=[credential]),
    }


@settings(max_examples=150, deadline=None)
@given(secret_urls())
def test_no_repr_shows_the_user_info_or_query(url: SecretURL) -> None:
    assert shown(objects_holding(url.url), url) == []


def _error_of(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def errors_about(url: str, plain_http: str) -> dict[str, BaseException]:
    credential = MCPCredential(token="repr-token", source="body", server_url=url)
    other = MCPCredential(token="other-token", source="body", server_url=url)
    return {
        "two credentials for one server": _error_of(lambda: MCPCredentials([credential, other])),
        "mcp_headers over plain http": _error_of(
            lambda: _with(
                MCPCredential(token="t", source="body", server_url=plain_http), plain_http
            )
        ),
    }


def _with(credential: MCPCredential, url: str) -> object:
    with use_credentials([credential]):
        return mcp_headers(url)


@settings(max_examples=60, deadline=None)
@given(secret_urls(), secret_urls(scheme="http", host="remote.example.com"))
def test_no_error_message_shows_the_user_info_or_query(url: SecretURL, plain: SecretURL) -> None:
    errors = errors_about(url.url, plain.url)
    leaks = [
        name
        for name, exc in errors.items()
        if url.found_in(str(exc) + repr(exc)) or plain.found_in(str(exc) + repr(exc))
    ]
    assert leaks == []


@pytest.mark.anyio
@settings(max_examples=40, deadline=None)
@given(secret_urls())
async def test_the_pools_refusals_show_no_user_info_or_query(url: SecretURL) -> None:
    pool = MCPSessionPool()
    elsewhere = MCPCredential(token="t", source="body", server_url="https://other.example.com/x")
    refusal = _error_of(lambda: pool._target(url.url, elsewhere))
    assert not url.found_in(str(refusal) + repr(refusal)), "the refusal shows a secret"
    assert not url.found_in(repr(pool)), "the pool's repr shows a secret"


@pytest.mark.anyio
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(url=secret_urls())  # the log is cleared for each example
async def test_the_middlewares_answers_and_audit_show_no_user_info_or_query(
    url: SecretURL, audit_log: list[dict[str, Any]]
) -> None:
    audit_log.clear()
    app = MCPAuthMiddleware(ASGIProbe())
    accepted = json.dumps({"tools": [mcp_tool(url.url, "audit-token")]}).encode()
    refused = json.dumps({"tools": [mcp_tool(url.url, "bad token with spaces")]}).encode()
    answers = [
        await run_asgi(app, [body], headers=[(b"content-type", b"application/json")])
        for body in (accepted, refused)
    ]
    assert [a.status for a in answers] == [200, 400]
    assert not url.found_in(answers[1].body.decode()), "the error answer shows a secret"
    assert not url.found_in(json.dumps(audit_log, default=repr)), "an audit event shows a secret"


# --- the pool's own objects, with a real session open ---------------------------------------------

USER_SECRET = "QzUserSecret0123456789"
QUERY_SECRET = "QzQuerySecret9876543210"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_pool_holding_a_session_to_a_secret_url_shows_no_secret() -> None:
    mcp = RecordingMCPServer({"pool-repr-token": "alice"})
    with mcp.running() as endpoint:
        base_url = endpoint.removesuffix("/mcp")
        host = base_url.removeprefix("http://")
        url = SecretURL(
            f"http://user:{USER_SECRET}@{host}/mcp?api_key={QUERY_SECRET}",
            (USER_SECRET, QUERY_SECRET),
        )
        credential = MCPCredential(token="pool-repr-token", source="body", server_url=url.url)
        async with MCPSessionPool() as pool:
            with use_credentials([credential]), anyio.fail_after(10):
                result = await pool.call_tool(url.url, "whoami")
                assert (result.structured_content or {})["result"] == "alice"
                held = {
                    "pool": pool,
                    "stats": pool.stats,
                    "sessions": list(pool._entries.values()),
                    "keys": list(pool._entries),
                }
                assert held["sessions"], "no session is pooled: the case tests nothing"
                assert shown(held, url) == []
