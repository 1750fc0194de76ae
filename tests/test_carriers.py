"""The carriers in the field, in process: precedence after binding, per-server headers, the
provider-data header's two names, ``Authorization`` in a tool's ``headers``, connector tools.

Each request goes through the middleware to a Starlette endpoint that does what a gateway
does (binds, then sends with ``MCPBearerAuth`` over an ``httpx.MockTransport`` that echoes
the headers it received), so the assertions are about what each server would get.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_auth_middleware import (
    CREDENTIAL_BOUND,
    CREDENTIAL_RESOLVED,
    CredentialSource,
    HeadersAuthorization,
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
    ProviderDataMode,
    current_credentials,
    mcp_headers,
    use_credentials,
)
from mcp_auth_middleware.credentials import InvalidCredential, fingerprint
from mcp_auth_middleware.testing import AuditLog
from tests.helpers import PROVIDER_DATA, client, mcp_tool, provider_data

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
OGX = "X-OGX-Provider-Data"
BODY_TOKEN = "body-token-111"
LEGACY_TOKEN = "legacy-token-222"
API_KEY = "api-key-secret-333"


def _echo(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={k.lower(): v for k, v in request.headers.items()})


def sent_to(url: str, auth: MCPBearerAuth | None = None) -> dict[str, str]:
    """The headers an MCP request to ``url`` carries, from the current credentials."""
    with httpx.Client(transport=httpx.MockTransport(_echo), auth=auth or MCPBearerAuth()) as c:
        answer: dict[str, str] = c.get(url).json()
    return answer


def gateway(config: MCPAuthConfig, *, bind: str | None = None) -> Starlette:
    """An app that binds the default (``bind``: a URL) or the connectors the body names
    (``connector=url`` query pairs), then reports what each server would get."""

    async def endpoint(request: Request) -> JSONResponse:
        creds = current_credentials()
        if bind is not None:
            creds = creds.bind_default(bind)
        for connector, url in request.query_params.items():
            creds = creds.bind_connector(connector, url)
        with use_credentials(creds):
            seen = {url: sent_to(url) for url in (URL, OTHER)}
        return JSONResponse(
            {
                "seen": seen,
                "shadowed": list(creds.shadowed(URL)),
                "unbound": list(creds.unbound_connectors),
            }
        )

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST", "GET"])])
    app.add_middleware(MCPAuthMiddleware, config=config)
    return app


async def post(app: Starlette, body: Any, headers: Any = None, query: str = "") -> httpx.Response:
    async with client(app) as c:
        return await c.post(f"/v1/tool-runtime/invoke{query}", json=body, headers=headers)


def error(response: httpx.Response) -> tuple[int, str, str]:
    err = response.json()["error"]
    return response.status_code, err["code"], err["param"]


# --- 1. one precedence rule, also after binding ----------------------------------------------


@pytest.mark.anyio
async def test_the_bound_default_beats_provider_data_and_the_audit_says_what_it_beat(
    audit_log: AuditLog,
) -> None:
    """The issue's case: a tool-runtime call with a top-level ``authorization`` and a
    provider-data token for the same server; once bound, the body's token is sent."""
    pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}})
    response = await post(gateway(MCPAuthConfig(), bind=URL), {"authorization": BODY_TOKEN}, pd)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["seen"][URL]["authorization"] == f"Bearer {BODY_TOKEN}"
    assert "authorization" not in answer["seen"][OTHER]
    assert answer["shadowed"] == ["provider_data"]
    [bound] = audit_log.named(CREDENTIAL_BOUND)
    assert bound["source"] == "body"
    assert bound["shadowed"] == ["provider_data"]
    assert bound["fingerprint"] == fingerprint(BODY_TOKEN)
    assert bound["server_url"] == URL
    assert bound["path"] == "/v1/tool-runtime/invoke"
    assert BODY_TOKEN not in repr(audit_log)
    assert LEGACY_TOKEN not in repr(audit_log)


@pytest.mark.anyio
async def test_with_provider_data_first_the_bound_default_loses_and_is_recorded(
    audit_log: AuditLog,
) -> None:
    config = MCPAuthConfig(precedence=("provider_data", "body"))
    pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}})
    response = await post(gateway(config, bind=URL), {"authorization": BODY_TOKEN}, pd)
    answer = response.json()
    assert answer["seen"][URL]["authorization"] == f"Bearer {LEGACY_TOKEN}"
    assert answer["shadowed"] == ["body"]
    [bound] = audit_log.named(CREDENTIAL_BOUND)
    assert (bound["source"], bound["shadowed"]) == ("provider_data", ["body"])
    assert bound["fingerprint"] == fingerprint(LEGACY_TOKEN)


@pytest.mark.anyio
async def test_a_bound_token_beats_headers_alone_and_keeps_what_they_shadowed() -> None:
    """Headers without a token never take a server's token away: the bound default wins
    over a provider-data entry that only has an ``X-Api-Key``."""
    pd = provider_data({URL: {"X-Api-Key": API_KEY}})
    response = await post(gateway(MCPAuthConfig(), bind=URL), {"authorization": BODY_TOKEN}, pd)
    seen = response.json()["seen"][URL]
    assert seen["authorization"] == f"Bearer {BODY_TOKEN}"
    assert "x-api-key" not in seen
    assert response.json()["shadowed"] == ["provider_data"]


def test_a_set_made_by_hand_binds_by_the_default_order() -> None:
    default = MCPCredential(token=BODY_TOKEN, source=CredentialSource.BODY)
    legacy = MCPCredential(token=LEGACY_TOKEN, source="provider_data", server_url=URL)
    vault = MCPCredential(token="vault-tok", source="vault", server_url=URL)
    bound = MCPCredentials([default, legacy]).bind_default(URL)
    assert bound.for_server(URL) == default.replace(server_url=URL)
    assert bound.default is None
    assert bound.shadowed(URL) == ("provider_data",)
    # A custom source ranks after the built-in ones unless a precedence says otherwise.
    assert MCPCredentials([default, vault]).bind_default(URL).for_server(URL).source == "body"  # type: ignore[union-attr]
    first = MCPCredentials([default, vault], precedence=("vault", "body"))
    kept = first.bind_default(URL)
    assert kept.for_server(URL) is vault
    assert kept.default is default  # it lost: still bound to nothing
    assert kept.shadowed(URL) == ("body",)


def test_without_a_default_binding_changes_nothing() -> None:
    legacy = MCPCredential(token=LEGACY_TOKEN, source="provider_data", server_url=URL)
    creds = MCPCredentials([legacy])
    assert creds.bind_default(URL) is creds


# --- 2. per-server headers ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_provider_data_entry_without_authorization_sends_its_headers_to_its_server_only(
    audit_log: AuditLog,
) -> None:
    pd = provider_data({URL: {"X-Api-Key": API_KEY, "X-Tenant": "acme"}})
    response = await post(gateway(MCPAuthConfig()), {"x": 1}, pd)
    assert response.status_code == 200, response.text
    seen = response.json()["seen"]
    assert seen[URL]["x-api-key"] == API_KEY
    assert seen[URL]["x-tenant"] == "acme"
    assert "authorization" not in seen[URL]
    assert "x-api-key" not in seen[OTHER]
    assert "x-tenant" not in seen[OTHER]
    [event] = audit_log.named(CREDENTIAL_RESOLVED)
    assert event["headers"] == ["X-Api-Key", "X-Tenant"]
    assert event["fingerprint"] is None
    assert event["source"] == "provider_data"
    assert API_KEY not in repr(audit_log)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Key": API_KEY}, [["X-Api-Key", API_KEY]]],
    ids=["object", "pairs"],
)
@pytest.mark.parametrize("token", [BODY_TOKEN, None], ids=["with-token", "headers-only"])
async def test_a_tools_other_headers_go_with_its_credential_to_its_server_only(
    headers: Any, token: str | None, audit_log: AuditLog
) -> None:
    tool = mcp_tool(URL, token if token is not None else ..., headers=headers)
    response = await post(gateway(MCPAuthConfig()), {"tools": [tool]})
    assert response.status_code == 200, response.text
    seen = response.json()["seen"]
    assert seen[URL]["x-api-key"] == API_KEY
    assert seen[URL].get("authorization") == (None if token is None else f"Bearer {token}")
    assert "x-api-key" not in seen[OTHER]
    assert "authorization" not in seen[OTHER]
    [event] = audit_log.named(CREDENTIAL_RESOLVED)
    assert event["headers"] == ["X-Api-Key"]
    assert API_KEY not in repr(audit_log)


@pytest.mark.anyio
async def test_a_body_token_beats_provider_data_headers_for_the_same_server() -> None:
    """One entry per server: the body's credential wins, and the provider-data entry's
    headers stay with the entry that lost (recorded as shadowed)."""
    pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}", "X-Api-Key": API_KEY}})
    tool = mcp_tool(URL, BODY_TOKEN, headers={"X-Tenant": "acme"})
    response = await post(gateway(MCPAuthConfig()), {"tools": [tool]}, pd)
    seen = response.json()["seen"][URL]
    assert (seen["authorization"], seen["x-tenant"]) == (f"Bearer {BODY_TOKEN}", "acme")
    assert "x-api-key" not in seen
    assert response.json()["shadowed"] == ["provider_data"]


@pytest.mark.anyio
async def test_body_headers_alone_never_take_provider_datas_token_away() -> None:
    pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}})
    tool = mcp_tool(URL, ..., headers={"X-Tenant": "acme"})
    response = await post(gateway(MCPAuthConfig()), {"tools": [tool]}, pd)
    seen = response.json()["seen"][URL]
    assert seen["authorization"] == f"Bearer {LEGACY_TOKEN}"
    assert "x-tenant" not in seen
    assert response.json()["shadowed"] == ["body"]


RESERVED = ["Host", "Content-Length", "Transfer-Encoding", "Connection", "Mcp-Session-Id"]
RESERVED += ["Keep-Alive", "TE", "Upgrade", "Proxy-Authorization", "content-type"]


@pytest.mark.anyio
@pytest.mark.parametrize("name", RESERVED)
async def test_framing_hop_by_hop_and_session_headers_are_refused_in_both_carriers(
    name: str,
) -> None:
    app = gateway(MCPAuthConfig())
    tool = mcp_tool(URL, BODY_TOKEN, headers={"X-Ok": "1", name: "evil"})
    assert error(await post(app, {"tools": [tool]})) == (
        400,
        "invalid_headers",
        f"tools[0].headers.{name}",
    )
    pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}", name: "evil"}})
    response = await post(app, {"x": 1}, pd)
    assert error(response) == (400, "invalid_provider_data", PROVIDER_DATA)
    assert f"mcp_headers['{URL}'].{name}" in response.json()["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"X-A": "1", "x-a": "2"}, "tools[0].headers.x-a"),
        ([["X-A", "1"], ["X-A", "2"]], "tools[0].headers[1]"),
        ([["X-A", "1", "extra"]], "tools[0].headers[0]"),
        ([{"X-A": "1"}], "tools[0].headers[0]"),
        ("X-A: 1", "tools[0].headers"),
        ({"X-A": 1}, "tools[0].headers.X-A"),
        ({"X A": "1"}, "tools[0].headers"),
        ({"X-A": "a\r\nHost: evil"}, "tools[0].headers.X-A"),
    ],
    ids=[
        "twice-any-case",
        "pair-twice",
        "triple",
        "object-item",
        "string",
        "number",
        "space",
        "crlf",
    ],
)
async def test_headers_that_cannot_travel_are_refused_naming_the_place(
    headers: Any, param: str
) -> None:
    response = await post(gateway(MCPAuthConfig()), {"tools": [mcp_tool(URL, headers=headers)]})
    assert error(response) == (400, "invalid_headers", param)
    assert "evil" not in response.text


_TOKEN_CHARS = "!#$%&'*+.^_`|~-" + "abcXYZ019"
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?|")
_NOT_SENDABLE = {name.lower() for name in RESERVED} | {
    "content-encoding",
    "expect",
    "mcp-protocol-version",
    "proxy-connection",
    "trailer",
}


def _sendable(name: str, value: str) -> bool:
    """The rule, written out again: an RFC 9110 token name that is not reserved, a value of
    visible ASCII with inner spaces and tabs."""
    return (
        _NAME.fullmatch(name) is not None
        and name.lower() not in _NOT_SENDABLE
        and name.lower() != "authorization"
        and _VALUE.fullmatch(value) is not None
    )


names = st.one_of(
    st.sampled_from([*RESERVED, "X-Api-Key", "x-tenant", "Cookie"]),
    st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=8),
    st.text(min_size=1, max_size=6),
)
values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10),
    st.text(max_size=6),
    st.sampled_from(["a\r\nb", "\t", " x", "x ", "a\tb", "\x00", "caf\u00e9"]),
)


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, value=values, carrier=st.sampled_from(["tool", "provider_data"]))
async def test_generated_headers_travel_exactly_when_they_follow_the_rule(
    name: str, value: str, carrier: str
) -> None:
    if name.strip().lower() == "authorization" or (
        carrier == "tool" and name.strip().casefold() == "authorization"
    ):
        return  # the Authorization rules have tests of their own
    app = gateway(MCPAuthConfig())
    if carrier == "tool":
        response = await post(app, {"tools": [mcp_tool(URL, BODY_TOKEN, headers={name: value})]})
    else:
        try:
            pd = provider_data({URL: {"Authorization": f"Bearer {LEGACY_TOKEN}", name: value}})
            pd[PROVIDER_DATA].encode("latin-1")
        except UnicodeEncodeError:
            return  # not a header value any client can send
        response = await post(app, {"x": 1}, pd)
    if _sendable(name, value):
        assert response.status_code == 200, response.text
        assert response.json()["seen"][URL][name.lower()] == value
        assert name.lower() not in response.json()["seen"][OTHER]
    else:
        code = "invalid_headers" if carrier == "tool" else "invalid_provider_data"
        status, got, param = error(response)
        assert (status, got) == (400, code)
        assert param.startswith("tools[0].headers") if carrier == "tool" else param == PROVIDER_DATA
        # The value never echoes back (unless the message's own words or the name hold it).
        words = response.json()["error"]["message"].replace(param, "")
        if value and len(value) > 3 and value not in words and value not in name:
            assert value not in response.text


def test_a_header_only_entry_is_a_type_of_its_own() -> None:
    """Code reading credentials never meets one without a token: header-only entries are
    not among the items, and ``MCPServerHeaders`` has no ``token``."""
    entry = MCPServerHeaders(headers={"X-Api-Key": API_KEY}, source="provider_data", server_url=URL)
    creds = MCPCredentials(headers=[entry])
    assert list(creds) == []
    assert len(creds) == 0
    assert bool(creds)
    assert creds.server_headers == (entry,)
    assert not hasattr(entry, "token")
    assert dict(creds.headers_for(URL)) == {"X-Api-Key": API_KEY}
    assert dict(creds.headers_for(f"{URL}/sub")) == {"X-Api-Key": API_KEY}
    assert dict(creds.headers_for(OTHER)) == {}
    assert API_KEY not in repr(creds)
    assert API_KEY not in str(entry)
    with pytest.raises(InvalidCredential, match="headers"):
        MCPServerHeaders(headers={}, source="x", server_url=URL)
    with pytest.raises(InvalidCredential, match="headers"):
        MCPServerHeaders(headers={"Host": "evil"}, source="x", server_url=URL)
    with pytest.raises(InvalidCredential, match="server_url"):
        MCPServerHeaders(headers={"X-A": "1"}, source="x")
    token = MCPCredential(token="t", source="x", server_url=URL)
    with pytest.raises(ValueError, match="same server"):
        MCPCredentials([token], headers=[entry])
    with use_credentials(creds):
        assert mcp_headers(URL) == {"X-Api-Key": API_KEY}
        assert mcp_headers(OTHER) == {}


def test_header_only_entries_refuse_plain_http_to_a_remote_host() -> None:
    entry = MCPServerHeaders(
        headers={"X-Api-Key": API_KEY}, source="provider_data", server_url="http://mcp.example.com/"
    )
    with use_credentials(MCPCredentials(headers=[entry])), pytest.raises(ValueError, match="http"):
        sent_to("http://mcp.example.com/")


# --- issue 13: the provider-data header's names ---------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("name", [PROVIDER_DATA, OGX, OGX.lower()])
async def test_either_provider_data_name_is_read_by_default(name: str) -> None:
    value = json.dumps({"mcp_headers": {URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}}})
    response = await post(gateway(MCPAuthConfig()), {"x": 1}, {name: value})
    assert response.json()["seen"][URL]["authorization"] == f"Bearer {LEGACY_TOKEN}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "names",
    [(PROVIDER_DATA, OGX), (OGX, OGX.lower()), (PROVIDER_DATA, PROVIDER_DATA)],
    ids=["both-names", "new-name-twice", "old-name-twice"],
)
async def test_two_provider_data_headers_are_refused_as_ambiguous(names: tuple[str, str]) -> None:
    one = json.dumps({"mcp_headers": {URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}}})
    two = json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer other-token-444"}}})
    headers = [(names[0], one), (names[1], two)]
    response = await post(gateway(MCPAuthConfig()), {"x": 1}, headers)
    status, code, _ = error(response)
    assert (status, code) == (400, "ambiguous_provider_data")
    assert LEGACY_TOKEN not in response.text
    assert "other-token" not in response.text


@pytest.mark.anyio
async def test_a_configured_name_list_reads_only_those_names() -> None:
    app = gateway(MCPAuthConfig.from_env({"MCP_AUTH_PROVIDER_DATA_HEADER": "X-Mine"}))
    value = json.dumps({"mcp_headers": {URL: {"Authorization": f"Bearer {LEGACY_TOKEN}"}}})
    mine = await post(app, {"x": 1}, {"X-Mine": value})
    assert mine.json()["seen"][URL]["authorization"] == f"Bearer {LEGACY_TOKEN}"
    legacy = await post(app, {"x": 1}, {PROVIDER_DATA: value})
    assert "authorization" not in legacy.json()["seen"][URL]


# --- issue 13: Authorization in a tool's headers ---------------------------------------------

ACCEPT = MCPAuthConfig(headers_authorization=HeadersAuthorization.ACCEPT)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {BODY_TOKEN}"},
        {"authorization": BODY_TOKEN, "X-Tenant": "acme"},
        [["AUTHORIZATION", f"bearer {BODY_TOKEN}"]],
    ],
    ids=["object", "lower-case-bare", "pairs-upper"],
)
async def test_accept_mode_makes_the_headers_authorization_the_tools_token(headers: Any) -> None:
    response = await post(gateway(ACCEPT), {"tools": [mcp_tool(URL, ..., headers=headers)]})
    assert response.status_code == 200, response.text
    seen = response.json()["seen"]
    assert seen[URL]["authorization"] == f"Bearer {BODY_TOKEN}"
    assert "authorization" not in seen[OTHER]


@pytest.mark.anyio
async def test_refuse_mode_is_the_default() -> None:
    tool = mcp_tool(URL, ..., headers={"Authorization": f"Bearer {BODY_TOKEN}"})
    response = await post(gateway(MCPAuthConfig()), {"tools": [tool]})
    assert error(response) == (400, "authorization_in_headers", "tools[0].headers")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        (
            mcp_tool(URL, "another-token", headers={"Authorization": f"Bearer {BODY_TOKEN}"}),
            (400, "conflicting_credentials", "tools[0].headers.Authorization"),
        ),
        (
            mcp_tool(URL, ..., headers={"Authorization": "Bearer a b"}),
            (400, "invalid_authorization", "tools[0].headers.Authorization"),
        ),
        (
            mcp_tool(URL, ..., headers=[["Authorization", "x"], ["authorization", "y"]]),
            (400, "invalid_headers", "tools[0].headers[1]"),
        ),
        (
            mcp_tool(URL, ..., headers={"\uff21uthorization": f"Bearer {BODY_TOKEN}"}),
            (400, "authorization_in_headers", "tools[0].headers"),
        ),
        (
            mcp_tool(URL, ..., headers={"Authorization ": f"Bearer {BODY_TOKEN}"}),
            (400, "authorization_in_headers", "tools[0].headers"),
        ),
    ],
    ids=["conflict", "invalid", "twice", "look-alike", "padded"],
)
async def test_accept_mode_checks_it_like_authorization(
    tool: dict[str, Any], expected: tuple[int, str, str]
) -> None:
    response = await post(gateway(ACCEPT), {"tools": [tool]})
    assert error(response) == expected
    assert BODY_TOKEN not in response.text


@pytest.mark.anyio
async def test_accept_mode_allows_the_same_token_in_both_places() -> None:
    tool = mcp_tool(URL, BODY_TOKEN, headers={"Authorization": f"Bearer {BODY_TOKEN}"})
    response = await post(gateway(ACCEPT), {"tools": [tool]})
    assert response.json()["seen"][URL]["authorization"] == f"Bearer {BODY_TOKEN}"


# --- issue 13: connector tools --------------------------------------------------------------


def connector_tool(token: str = BODY_TOKEN, **extra: Any) -> dict[str, Any]:
    return {
        "type": "mcp",
        "server_label": "dropbox",
        "connector_id": "connector_dropbox",
        "authorization": token,
        **extra,
    }


@pytest.mark.anyio
async def test_a_connectors_credential_is_sent_nowhere_until_bound(audit_log: AuditLog) -> None:
    app = gateway(MCPAuthConfig())
    unbound = await post(app, {"tools": [connector_tool(headers={"X-Team": "t1"})]})
    assert unbound.status_code == 200, unbound.text
    assert unbound.json()["unbound"] == ["connector_dropbox"]
    for seen in unbound.json()["seen"].values():
        assert "authorization" not in seen
        assert "x-team" not in seen
    [resolved] = audit_log.named(CREDENTIAL_RESOLVED)
    assert resolved["connector_id"] == "connector_dropbox"
    assert resolved["server_url"] is None
    bound = await post(
        app,
        {"tools": [connector_tool(headers={"X-Team": "t1"})]},
        query=f"?connector_dropbox={URL}",
    )
    seen = bound.json()["seen"]
    assert (seen[URL]["authorization"], seen[URL]["x-team"]) == (f"Bearer {BODY_TOKEN}", "t1")
    assert "authorization" not in seen[OTHER]
    assert bound.json()["unbound"] == []
    [event] = audit_log.named(CREDENTIAL_BOUND)
    assert (event["source"], event["server_url"], event["connector_id"]) == (
        "body",
        URL,
        "connector_dropbox",
    )


@pytest.mark.anyio
async def test_the_connectors_setting_binds_them_before_the_application_runs() -> None:
    config = MCPAuthConfig.from_env({"MCP_AUTH_CONNECTORS": f"connector_dropbox={URL}"})
    response = await post(gateway(config), {"tools": [connector_tool()]})
    assert response.json()["seen"][URL]["authorization"] == f"Bearer {BODY_TOKEN}"
    assert "authorization" not in response.json()["seen"][OTHER]
    assert response.json()["unbound"] == []


@pytest.mark.anyio
async def test_two_tools_of_one_connector_with_different_tokens_conflict() -> None:
    tools = [connector_tool(), connector_tool("another-token")]
    response = await post(gateway(MCPAuthConfig()), {"tools": tools})
    assert error(response) == (400, "conflicting_credentials", "tools[1].connector_id")


def test_binding_an_unknown_connector_changes_nothing() -> None:
    cred = MCPCredential(token=BODY_TOKEN, source="body", connector_id="c1")
    creds = MCPCredentials([cred])
    assert creds.bind_connector("c2", URL) is creds
    assert creds.for_connector("c1") is cred
    with use_credentials(creds):
        assert "authorization" not in sent_to(URL)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        {"AUTHORIZATION": f"Bearer {BODY_TOKEN}", "X-Tenant": "acme"},
        [["authorization", BODY_TOKEN], ["X-Tenant", "acme"]],
        {"\\u0041uthorization": f"Bearer {BODY_TOKEN}", "X-Tenant": "acme"},
    ],
    ids=["object-upper", "pairs-lower", "escaped-key"],
)
async def test_redact_body_removes_a_headers_authorization_in_accept_mode(headers: Any) -> None:
    config = MCPAuthConfig(headers_authorization=HeadersAuthorization.ACCEPT, redact_body=True)
    received: list[bytes] = []

    async def endpoint(request: Request) -> JSONResponse:
        received.append(await request.body())
        return JSONResponse({"sent": sent_to(URL)})

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware, config=config)
    raw = json.dumps({"tools": [mcp_tool(URL, ..., headers=headers)]}).replace("\\\\u", "\\u")
    async with client(app) as c:
        response = await c.post("/", content=raw, headers={"content-type": "application/json"})
    assert response.json()["sent"]["authorization"] == f"Bearer {BODY_TOKEN}"
    [body] = received
    assert BODY_TOKEN.encode() not in body
    assert b"acme" in body  # the other headers stay


@pytest.mark.anyio
async def test_reject_mode_sends_no_provider_data_headers_either() -> None:
    config = MCPAuthConfig(provider_data=ProviderDataMode.REJECT)
    response = await post(gateway(config), {"x": 1}, provider_data({URL: {"X-Api-Key": API_KEY}}))
    assert response.status_code == 200, response.text
    assert "x-api-key" not in response.json()["seen"][URL]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "second", "sent"),
    [
        ({"token": BODY_TOKEN}, {"token": BODY_TOKEN, "headers": {"X-A": "1"}}, ("1", None)),
        ({"token": ..., "headers": {"X-A": "1"}}, {"token": BODY_TOKEN}, ("1", None)),
        (
            {"token": BODY_TOKEN, "headers": {"X-A": "1"}},
            {"token": ..., "headers": {"x-a": "1", "X-B": "2"}},
            ("1", "2"),
        ),
    ],
    ids=["headers-join-token", "token-joins-headers", "union"],
)
async def test_two_tools_for_one_server_that_agree_are_merged(
    first: dict[str, Any], second: dict[str, Any], sent: tuple[str, str | None]
) -> None:
    tools = [mcp_tool(URL, **first), mcp_tool(URL, **second)]
    response = await post(gateway(MCPAuthConfig()), {"tools": tools})
    assert response.status_code == 200, response.text
    seen = response.json()["seen"][URL]
    assert (seen["authorization"], seen["x-a"], seen.get("x-b")) == (f"Bearer {BODY_TOKEN}", *sent)


@pytest.mark.anyio
async def test_two_tools_for_one_server_with_one_header_twice_conflict() -> None:
    tools = [
        mcp_tool(URL, BODY_TOKEN, headers={"X-A": "1"}),
        mcp_tool(URL, BODY_TOKEN, headers={"x-a": "2"}),
    ]
    response = await post(gateway(MCPAuthConfig()), {"tools": tools})
    assert error(response) == (400, "conflicting_credentials", "tools[1].headers")
