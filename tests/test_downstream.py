"""``MCPBearerAuth`` and ``mcp_headers``: which credential goes on which outgoing request.

Every routing rule runs through all four clients (httpx and httpx2, sync and async) against a
``MockTransport`` app that echoes the headers it received.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import httpx2
import pytest

from mcp_auth_middleware import (
    InsecureTransportError,
    MCPBearerAuth,
    MCPCredential,
    MCPCredentials,
    mcp_headers,
    use_credentials,
)
from tests.helpers import credential

H = "https://mcp.example.com"
CLIENTS = ["httpx.Client", "httpx.AsyncClient", "httpx2.Client", "httpx2.AsyncClient"]


def _echo_httpx(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=dict(request.headers))


def _echo_httpx2(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json=dict(request.headers))


def _send_sync(kind: str, url: str, auth: Any, headers: Mapping[str, str] | None) -> Any:
    if kind == "httpx.Client":
        with httpx.Client(transport=httpx.MockTransport(_echo_httpx), auth=auth) as c:
            return c.get(url, headers=headers).json()
    with httpx2.Client(transport=httpx2.MockTransport(_echo_httpx2), auth=auth) as c2:
        return c2.get(url, headers=headers).json()


async def send(
    kind: str, url: str, auth: Any = None, headers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """GET ``url`` with a client of ``kind`` and ``auth=``; the headers the server saw."""
    auth = MCPBearerAuth() if auth is None else auth
    seen: dict[str, str]
    if kind == "httpx.AsyncClient":
        async with httpx.AsyncClient(transport=httpx.MockTransport(_echo_httpx), auth=auth) as ac:
            seen = (await ac.get(url, headers=headers)).json()
    elif kind == "httpx2.AsyncClient":
        transport = httpx2.MockTransport(_echo_httpx2)
        async with httpx2.AsyncClient(transport=transport, auth=auth) as ac2:
            seen = (await ac2.get(url, headers=headers)).json()
    else:
        seen = _send_sync(kind, url, auth, headers)
    return seen


def creds(tokens: Mapping[str, str]) -> list[MCPCredential]:
    """One body credential per ``server_url -> token``."""
    return [credential(token, url) for url, token in tokens.items()]


def bearer(token: str | None) -> str | None:
    return None if token is None else f"Bearer {token}"


@pytest.fixture(params=CLIENTS)
def client_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


# --- which credential, if any, goes on a request ------------------------------------------

ONE = {f"{H}/mcp": "t1"}
NESTED = {f"{H}/": "root", f"{H}/mcp": "mcp", f"{H}/mcp/team": "team"}
TWO = {f"{H}/mcp": "mcp", f"{H}/api": "api"}
QUERY = {f"{H}/mcp?tenant=a": "tenant-a", f"{H}/": "root"}

ROUTING = [
    # server identity: normalisation
    pytest.param(ONE, f"{H}/mcp", "t1", id="exact-url"),
    pytest.param(ONE, f"{H}/mcp/", "t1", id="trailing-slash-on-request"),
    pytest.param({f"{H}/mcp/": "t1"}, f"{H}/mcp", "t1", id="trailing-slash-on-credential"),
    pytest.param({"HTTPS://MCP.Example.COM/mcp": "t1"}, f"{H}/mcp", "t1", id="scheme-host-case"),
    pytest.param({f"{H}:443/mcp": "t1"}, f"{H}/mcp", "t1", id="default-port-443-on-credential"),
    pytest.param(ONE, f"{H}:443/mcp", "t1", id="default-port-443-on-request"),
    pytest.param(
        {"http://localhost:80/mcp": "t1"}, "http://localhost/mcp", "t1", id="default-port-80"
    ),
    pytest.param(ONE, f"{H}/mcp?x=1", "t1", id="credential-without-query-matches-any-query"),
    # longest whole-segment path prefix on the origin
    pytest.param(ONE, f"{H}/mcp/tools/call", "t1", id="path-below-the-credential"),
    pytest.param(NESTED, f"{H}/mcp/team/x", "team", id="longest-prefix-wins"),
    pytest.param(NESTED, f"{H}/mcp/team", "team", id="longest-prefix-exact"),
    pytest.param(NESTED, f"{H}/mcp/other", "mcp", id="next-longest-prefix"),
    pytest.param(NESTED, f"{H}/mcp/teamx", "mcp", id="whole-segment-prefix-only"),
    pytest.param(NESTED, f"{H}/elsewhere", "root", id="root-credential-covers-its-origin"),
    pytest.param(TWO, f"{H}/api/v1", "api", id="prefix-among-two"),
    pytest.param(TWO, f"{H}/mcpx", None, id="mcp-does-not-match-mcpx"),
    # query: a credential with a query matches that query only
    pytest.param(QUERY, f"{H}/mcp?tenant=a", "tenant-a", id="query-matches-its-query"),
    pytest.param(QUERY, f"{H}/mcp?tenant=b", "root", id="query-credential-skipped-other-query"),
    pytest.param(QUERY, f"{H}/mcp", "root", id="query-credential-skipped-without-query"),
    pytest.param(
        {f"{H}/mcp?tenant=a": "tenant-a"},
        f"{H}/mcp?tenant=b",
        None,
        id="lone-query-credential-never-falls-back-to-another-query",
    ),
    # no origin-wide fallback: the only credential of an origin covers its own server only
    pytest.param(
        {f"{H}/sse": "t1"}, f"{H}/messages/?session_id=abc", None, id="lone-credential-no-fallback"
    ),
    pytest.param(
        {f"{H}/sse": "t1", "https://other.example.com/messages": "t2"},
        f"{H}/messages/?session_id=abc",
        None,
        id="lone-credential-other-origins-no-fallback",
    ),
    pytest.param(ONE, f"{H}/mcpx", None, id="lone-credential-not-a-segment-prefix"),
    pytest.param(TWO, f"{H}/messages/?session_id=abc", None, id="two-on-origin-no-prefix"),
    # other origins: never
    pytest.param(ONE, "http://mcp.example.com/mcp", None, id="other-scheme-http"),
    pytest.param(
        {"http://127.0.0.1:9000/mcp": "t1"},
        "https://127.0.0.1:9000/mcp",
        None,
        id="other-scheme-https",
    ),
    pytest.param(ONE, f"{H}:8443/mcp", None, id="other-port"),
    pytest.param({f"{H}:8443/mcp": "t1"}, f"{H}/mcp", None, id="other-port-vs-default"),
    pytest.param(ONE, "https://evil.example.com/mcp", None, id="other-host"),
    pytest.param(ONE, "https://api.mcp.example.com/mcp", None, id="subdomain"),
    pytest.param(ONE, "https://mcp.example.com.evil.net/mcp", None, id="host-suffix"),
    pytest.param({}, f"{H}/mcp", None, id="no-credentials"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("tokens", "url", "expected"), ROUTING)
async def test_routing(
    client_kind: str, tokens: dict[str, str], url: str, expected: str | None
) -> None:
    with use_credentials(creds(tokens)):
        seen = await send(client_kind, url)
    assert seen.get("authorization") == bearer(expected)


@pytest.mark.anyio
async def test_no_credential_sends_the_request_unchanged(client_kind: str) -> None:
    """Nothing added, nothing removed: the application's own headers go through as they are."""
    own = {"Authorization": "Bearer the-apps-own", "X-Trace": "1"}
    with use_credentials(creds({"https://other.example.com/mcp": "t1"})):
        seen = await send(client_kind, f"{H}/mcp", headers=own)
    assert seen["authorization"] == "Bearer the-apps-own"
    assert seen["x-trace"] == "1"


@pytest.mark.anyio
async def test_outside_any_scope_nothing_is_added(client_kind: str) -> None:
    seen = await send(client_kind, f"{H}/mcp")
    assert "authorization" not in seen


# --- credentials that name no server -----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "unbound",
    [
        pytest.param([credential("dflt", None)], id="default-alone"),
        pytest.param(
            [credential("dflt", None), credential("t", "https://other.example.com/mcp")],
            id="default",
        ),
        pytest.param([credential("lbl", None, label="s")], id="label-only"),
    ],
)
async def test_a_credential_bound_to_no_server_is_never_sent(
    client_kind: str, unbound: list[MCPCredential]
) -> None:
    with use_credentials(unbound):
        seen = await send(client_kind, f"{H}/mcp")
    assert "authorization" not in seen


@pytest.mark.anyio
async def test_the_default_is_sent_once_the_application_binds_it(client_kind: str) -> None:
    request_creds = MCPCredentials([credential("dflt", None)])
    with use_credentials(request_creds.bind_default(f"{H}/mcp")):
        seen = await send(client_kind, f"{H}/mcp")
        elsewhere = await send(client_kind, "https://other.example.com/mcp")
    assert seen["authorization"] == "Bearer dflt"
    assert "authorization" not in elsewhere


# --- extra headers ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_extra_headers_of_a_provider_data_credential_go_along(client_kind: str) -> None:
    pd = credential(
        "t1",
        f"{H}/mcp",
        headers={"X-Tenant": "acme", "X-Api-Version": "2"},
        source="provider_data",
    )
    with use_credentials([pd, credential("t2", "https://other.example.com/mcp")]):
        seen = await send(client_kind, f"{H}/mcp")
        other = await send(client_kind, "https://other.example.com/mcp")
    assert (seen["authorization"], seen["x-tenant"], seen["x-api-version"]) == (
        "Bearer t1",
        "acme",
        "2",
    )
    assert other["authorization"] == "Bearer t2"
    assert "x-tenant" not in other


# --- plain http ---------------------------------------------------------------------------

INSECURE = [
    pytest.param("http://mcp.example.com/mcp", id="dns-name"),
    pytest.param("http://10.0.0.5:8000/mcp", id="private-ip"),
    pytest.param("http://[2001:db8::1]/mcp", id="ipv6"),
    pytest.param("http://localhost.evil.com/mcp", id="localhost-lookalike"),
    pytest.param("http://127.0.0.1.nip.io/mcp", id="loopback-lookalike"),
]
LOOPBACK = [
    pytest.param("http://127.0.0.1:8000/mcp", id="127.0.0.1"),
    pytest.param("http://127.0.0.2/mcp", id="127.0.0.2"),
    pytest.param("http://localhost:8000/mcp", id="localhost"),
    pytest.param("http://LOCALHOST:8000/mcp", id="localhost-upper"),
    pytest.param("http://[::1]:8000/mcp", id="ipv6-loopback"),
]
SECRET = "s3cr3t-token-never-shown"


@pytest.mark.anyio
@pytest.mark.parametrize("url", INSECURE)
async def test_plain_http_to_a_non_loopback_host_is_refused(client_kind: str, url: str) -> None:
    with use_credentials([credential(SECRET, url)]), pytest.raises(InsecureTransportError) as info:
        await send(client_kind, url)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("url", INSECURE)
async def test_plain_http_is_allowed_when_the_network_is_trusted(
    client_kind: str, url: str
) -> None:
    with use_credentials([credential("t1", url)]):
        seen = await send(client_kind, url, auth=MCPBearerAuth(allow_insecure_http=True))
    assert seen["authorization"] == "Bearer t1"


@pytest.mark.anyio
@pytest.mark.parametrize("url", LOOPBACK)
async def test_plain_http_to_loopback_is_allowed(client_kind: str, url: str) -> None:
    with use_credentials([credential("t1", url)]):
        seen = await send(client_kind, url)
    assert seen["authorization"] == "Bearer t1"


@pytest.mark.anyio
async def test_plain_http_without_a_matching_credential_is_not_refused(client_kind: str) -> None:
    """The check guards tokens, not requests: nothing to send, nothing to refuse."""
    with use_credentials(creds(ONE)):
        seen = await send(client_kind, "http://mcp.example.com/mcp")
    assert "authorization" not in seen


# --- the forms it takes -------------------------------------------------------------------


def test_it_is_an_auth_for_both_httpx_and_httpx2() -> None:
    auth = MCPBearerAuth()
    assert isinstance(auth, httpx.Auth)
    assert isinstance(auth, httpx2.Auth)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(httpx.Request("GET", f"{H}/mcp"), id="httpx"),
        pytest.param(httpx2.Request("GET", f"{H}/mcp"), id="httpx2"),
    ],
)
def test_the_instance_is_a_plain_request_to_request_callable(request_: Any) -> None:
    with use_credentials(creds(ONE)):
        returned = MCPBearerAuth()(request_)
    assert returned is request_
    assert request_.headers["Authorization"] == "Bearer t1"


@pytest.mark.anyio
async def test_a_plain_callable_works_as_auth(client_kind: str) -> None:
    auth = MCPBearerAuth()
    with use_credentials(creds(ONE)):
        seen = await send(client_kind, f"{H}/mcp", auth=lambda r: auth.apply(r))
    assert seen["authorization"] == "Bearer t1"


@pytest.mark.anyio
async def test_one_instance_follows_the_credentials_in_scope(client_kind: str) -> None:
    """No state of its own: the same instance sends each scope's token."""
    auth = MCPBearerAuth()
    with use_credentials(creds({f"{H}/mcp": "alice"})):
        first = await send(client_kind, f"{H}/mcp", auth=auth)
    with use_credentials(creds({f"{H}/mcp": "bob"})):
        second = await send(client_kind, f"{H}/mcp", auth=auth)
    after = await send(client_kind, f"{H}/mcp", auth=auth)
    assert (first["authorization"], second["authorization"]) == ("Bearer alice", "Bearer bob")
    assert "authorization" not in after


@pytest.mark.anyio
async def test_fixed_credentials_are_used_instead_of_the_scope(client_kind: str) -> None:
    auth = MCPBearerAuth(credentials=creds({f"{H}/mcp": SECRET}))
    with use_credentials(creds({f"{H}/mcp": "scoped"})):
        seen = await send(client_kind, f"{H}/mcp/x", auth=auth)
        other = await send(client_kind, "https://other.example.com/mcp", auth=auth)
    assert seen["authorization"] == f"Bearer {SECRET}"
    assert "authorization" not in other
    assert SECRET not in repr(auth)


# --- mcp_headers ---------------------------------------------------------------------------


def test_mcp_headers_adds_the_credential_and_its_extra_headers() -> None:
    given = {"Accept": "application/json"}
    pd = credential("t1", f"{H}/mcp", headers={"X-Tenant": "acme"}, source="provider_data")
    with use_credentials([pd]):
        result = mcp_headers(f"{H}/mcp/", given)
    assert result == {
        "Accept": "application/json",
        "X-Tenant": "acme",
        "Authorization": "Bearer t1",
    }
    assert given == {"Accept": "application/json"}


@pytest.mark.parametrize(
    "name", ["Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"]
)
def test_mcp_headers_refuses_an_authorization_it_was_given(name: str) -> None:
    with use_credentials(creds(ONE)), pytest.raises(ValueError, match="Authorization"):
        mcp_headers(f"{H}/mcp", {name: "Bearer smuggled"})


@pytest.mark.parametrize(
    "in_scope",
    [
        pytest.param([], id="nothing-in-scope"),
        pytest.param(creds({"https://other.example.com/mcp": "t"}), id="other-server"),
        pytest.param([credential("dflt", None)], id="unbound-default"),
    ],
)
def test_mcp_headers_without_a_credential_is_a_copy(in_scope: list[MCPCredential]) -> None:
    given = {"Accept": "application/json"}
    with use_credentials(in_scope):
        result = mcp_headers(f"{H}/mcp", given)
    assert result == given
    assert result is not given


def test_mcp_headers_refuses_plain_http_to_a_non_loopback_host() -> None:
    url = "http://mcp.example.com/mcp"
    with use_credentials([credential(SECRET, url)]):
        with pytest.raises(InsecureTransportError) as info:
            mcp_headers(url)
        assert mcp_headers(url, allow_insecure_http=True) == {"Authorization": f"Bearer {SECRET}"}
    assert SECRET not in str(info.value)
