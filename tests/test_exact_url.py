"""Exact URL first: which credential an outgoing request carries never depends on the order
the credentials were given in.

``MCPBearerAuth`` (driven by hand: ``auth_flow`` on ``httpx.Request`` objects, no I/O) and
``MCPSessionPool`` pick, for a request, the credential whose normalised URL (query
included) equals the request's; else the longest whole-segment path prefix, where a
credential with a query matches only requests with exactly that query. Generated sets of
credentials, generated orders, generated request URLs; and the pool against a real MCP
server that says who each token belongs to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_auth_middleware import MCPBearerAuth, MCPCredential, MCPServerHeaders, use_credentials
from mcp_auth_middleware.sessions import MCPSessionPool
from mcp_auth_middleware.testing import RecordingMCPServer
from mcp_auth_middleware.urls import normalize_server_url

H = "https://h.example.com"
# Credential URLs of one origin: paths that nest, the same path with and without queries.
CREDENTIAL_URLS = [
    f"{H}/mcp",
    f"{H}/mcp?tenant=a",
    f"{H}/mcp?tenant=b",
    f"{H}/mcp/",
    f"{H}/mcp/sub",
    f"{H}/mcp/sub?tenant=a",
    f"{H}/",
    f"{H}/?tenant=a",
    f"{H}/other",
]
REQUEST_URLS = [
    *CREDENTIAL_URLS,
    f"{H}/mcp?tenant=c",
    f"{H}/mcp/sub/deeper?tenant=a",
    f"{H}/mcp/x",
    f"{H}/MCP",
    f"{H}:443/mcp/?tenant=a",
    f"{H}/mcpx?tenant=a",
]


def label(url: str) -> str:
    """The (fake) token of the credential for ``url``: its index in ``CREDENTIAL_URLS``."""
    return f"token-{CREDENTIAL_URLS.index(url)}"


def credentials(urls: Sequence[str]) -> list[MCPCredential]:
    return [MCPCredential(token=label(u), source="body", server_url=u) for u in urls]


def by_auth(auth: MCPBearerAuth, url: str) -> str | None:
    """The Authorization the auth puts on a GET to ``url``: ``token-i``, or None."""
    flow = auth.auth_flow(httpx.Request("GET", url))
    request = next(flow)
    flow.close()
    value = request.headers.get("authorization")
    return None if value is None else value.removeprefix("Bearer ")


def by_pool(pool: MCPSessionPool, url: str) -> str | None:
    """The credential the pool would borrow a session with for ``url``."""
    _, _, cred = pool._target(url, None)
    assert not isinstance(cred, MCPServerHeaders)
    return None if cred is None else cred.token.get_secret_value()


async def chosen(urls: Sequence[str], request: str) -> dict[str, str | None]:
    """What each way of choosing picks for ``request``, with credentials given in ``urls``'
    order: the fixed auth, the auth reading the context, the pool (built in a loop)."""
    fixed = MCPBearerAuth(credentials=credentials(urls))
    with use_credentials(credentials(urls)):
        return {
            "MCPBearerAuth(credentials=...)": by_auth(fixed, request),
            "MCPBearerAuth()": by_auth(MCPBearerAuth(), request),
            "MCPSessionPool": by_pool(MCPSessionPool(), request),
        }


distinct_servers = st.lists(
    st.sampled_from(CREDENTIAL_URLS), min_size=1, max_size=6, unique_by=normalize_server_url
)


@pytest.mark.anyio
@settings(max_examples=200, deadline=None)
@given(distinct_servers, st.randoms(use_true_random=False), st.sampled_from(REQUEST_URLS))
async def test_the_choice_does_not_depend_on_the_order_of_the_credentials(
    urls: list[str], rng: random.Random, request: str
) -> None:
    shuffled = list(urls)
    rng.shuffle(shuffled)
    assert await chosen(shuffled, request) == await chosen(sorted(urls), request)


@pytest.mark.anyio
@settings(max_examples=200, deadline=None)
@given(distinct_servers, st.sampled_from(REQUEST_URLS))
async def test_a_credential_for_exactly_the_requests_url_wins(
    urls: list[str], request: str
) -> None:
    exact = [u for u in urls if normalize_server_url(u) == normalize_server_url(request)]
    if exact:
        assert set((await chosen(urls, request)).values()) == {label(exact[0])}


A = f"{H}/mcp"
B = f"{H}/mcp?tenant=a"


@pytest.mark.anyio
@pytest.mark.parametrize("order", [(A, B), (B, A)], ids=["plain-first", "query-first"])
@pytest.mark.parametrize(
    ("request_url", "expected"),
    [
        pytest.param(B, B, id="tenant-a-gets-its-own"),
        pytest.param(A, A, id="no-query-gets-the-plain-one"),
        pytest.param(f"{H}/mcp?tenant=b", A, id="other-tenant-gets-the-plain-prefix"),
        pytest.param(f"{H}/mcp/?tenant=a", B, id="trailing-slash-is-the-same-url"),
    ],
)
async def test_the_contracts_example(
    order: tuple[str, str], request_url: str, expected: str
) -> None:
    assert set((await chosen(order, request_url)).values()) == {label(expected)}


# --- the pool against a real MCP server -----------------------------------------------------

ALICE = "exact-url-alice-token"
BOB = "exact-url-bob-token"


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("query_first", [False, True], ids=["plain-first", "query-first"])
async def test_a_real_pool_reaches_the_server_as_the_exact_urls_user(query_first: bool) -> None:
    mcp = RecordingMCPServer({ALICE: "alice", BOB: "bob"})
    with mcp.running() as endpoint:
        base_url = endpoint.removesuffix("/mcp")
        plain, tenant = f"{base_url}/mcp", f"{base_url}/mcp?tenant=a"
        given_creds = [
            MCPCredential(token=ALICE, source="body", server_url=plain),
            MCPCredential(token=BOB, source="body", server_url=tenant),
        ]
        if query_first:
            given_creds.reverse()
        users = {}
        async with MCPSessionPool() as pool:
            with use_credentials(given_creds), anyio.fail_after(10):
                for url in (tenant, plain, f"{base_url}/mcp?tenant=b"):
                    result = await pool.call_tool(url, "whoami")
                    assert not result.is_error
                    users[url] = (result.structured_content or {})["result"]
    assert users == {tenant: "bob", plain: "alice", f"{base_url}/mcp?tenant=b": "alice"}
    assert mcp.rejected == []
