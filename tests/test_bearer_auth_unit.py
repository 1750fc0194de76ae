"""``MCPBearerAuth``'s choice, driven by hand with no I/O, as httpx tests its own auth flows.

Each test builds an ``httpx.Request`` (or an ``httpx2.Request``), runs ``auth_flow`` with
``next(flow)``, and reads the headers of the request the flow yields. No client, no
transport: what is pinned here is the choice alone. ``tests/test_downstream.py`` runs the
same rules through real clients.
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
    MCPCredentials,
    use_credentials,
)
from tests.helpers import credential

H = "https://mcp.example.com"


def flow_once(auth: MCPBearerAuth, request: Any) -> Any:
    """Run ``auth_flow`` as a client does: the one request it yields, then the flow ends
    when it is sent the response."""
    flow = auth.auth_flow(request)
    sent = next(flow)
    assert sent is request
    response = httpx.Response(200) if isinstance(request, httpx.Request) else httpx2.Response(200)
    with pytest.raises(StopIteration):
        flow.send(response)
    return sent


def chosen(tokens: Mapping[str, str], url: str, module: Any = httpx) -> str | None:
    """The ``Authorization`` the auth puts on a GET of ``url`` when the request in scope
    carries one body credential per ``server_url -> token``."""
    creds = MCPCredentials([credential(token, server) for server, token in tokens.items()])
    with use_credentials(creds):
        sent = flow_once(MCPBearerAuth(), module.Request("GET", url))
    value: str | None = sent.headers.get("Authorization")
    return value


ONE = {f"{H}/mcp": "t1"}
NESTED = {f"{H}/": "root", f"{H}/mcp": "mcp", f"{H}/mcp/team": "team"}

CHOICES = [
    pytest.param(ONE, f"{H}/mcp", "t1", id="its-own-url"),
    pytest.param(ONE, "HTTPS://MCP.EXAMPLE.COM:443/mcp/", "t1", id="the-same-url-normalised"),
    pytest.param(NESTED, f"{H}/mcp/team/x", "team", id="the-longest-path-prefix"),
    pytest.param(NESTED, f"{H}/mcp/teamx", "mcp", id="whole-segments-only"),
    pytest.param(
        ONE, f"{H}/messages/?session_id=1", None, id="the-only-one-of-its-origin-not-its-path"
    ),
    pytest.param({f"{H}/a": "a", f"{H}/b": "b"}, f"{H}/c", None, id="two-of-the-origin-none-fits"),
    pytest.param(ONE, "https://other.example.com/mcp", None, id="another-host"),
    pytest.param(ONE, f"{H}:8443/mcp", None, id="another-port"),
    pytest.param(
        {"http://127.0.0.1/mcp": "t1"}, "https://127.0.0.1/mcp", None, id="another-scheme"
    ),
]


@pytest.mark.parametrize(("tokens", "url", "token"), CHOICES)
@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_the_request_carries_its_own_servers_token_or_none(
    tokens: dict[str, str], url: str, token: str | None, module: Any
) -> None:
    assert chosen(tokens, url, module) == (None if token is None else f"Bearer {token}")


def test_the_order_the_credentials_came_in_never_decides() -> None:
    forward = dict(NESTED)
    backward = dict(reversed(NESTED.items()))
    for url in (f"{H}/", f"{H}/mcp", f"{H}/mcp/team/x", f"{H}/mcpx"):
        assert chosen(forward, url) == chosen(backward, url)


def test_nothing_in_scope_sends_the_request_unchanged() -> None:
    request = httpx.Request("GET", f"{H}/mcp", headers={"X-Trace": "1"})
    sent = flow_once(MCPBearerAuth(), request)
    assert "Authorization" not in sent.headers
    assert sent.headers["X-Trace"] == "1"
    assert "mcp_auth_middleware.applied_headers" not in sent.extensions


def test_the_unbound_default_is_never_sent() -> None:
    with use_credentials(MCPCredentials([credential("default-token", None)])):
        sent = flow_once(MCPBearerAuth(), httpx.Request("GET", f"{H}/mcp"))
    assert "Authorization" not in sent.headers


def test_the_extra_headers_go_with_the_token() -> None:
    cred = credential("t1", f"{H}/mcp", headers={"X-Api-Key": "key-1"})
    with use_credentials(MCPCredentials([cred])):
        sent = flow_once(MCPBearerAuth(), httpx.Request("GET", f"{H}/mcp"))
    assert (sent.headers["Authorization"], sent.headers["X-Api-Key"]) == ("Bearer t1", "key-1")


def test_a_fixed_set_is_used_instead_of_the_request_in_scope() -> None:
    auth = MCPBearerAuth(credentials=[credential("fixed", f"{H}/mcp")])
    with use_credentials(MCPCredentials([credential("in-scope", f"{H}/mcp")])):
        sent = flow_once(auth, httpx.Request("GET", f"{H}/mcp"))
    assert sent.headers["Authorization"] == "Bearer fixed"


def test_a_second_hop_carries_only_what_its_own_url_allows() -> None:
    """A redirect copies the previous hop's headers and extensions; the auth removes what it
    set there before choosing again."""
    cred = credential("t1", f"{H}/mcp", headers={"X-Api-Key": "key-1"})
    auth = MCPBearerAuth()
    with use_credentials(MCPCredentials([cred, credential("t2", f"{H}/api")])):
        first = flow_once(auth, httpx.Request("GET", f"{H}/mcp"))
        hop = httpx.Request("GET", f"{H}/api", headers=first.headers)
        hop.extensions = first.extensions
        second = flow_once(auth, hop)
    assert second.headers["Authorization"] == "Bearer t2"
    assert "X-Api-Key" not in second.headers


def test_a_token_is_refused_on_plain_http_to_a_remote_host() -> None:
    with use_credentials(MCPCredentials([credential("t1", "http://mcp.example.com/mcp")])):
        with pytest.raises(InsecureTransportError):
            next(MCPBearerAuth().auth_flow(httpx.Request("GET", "http://mcp.example.com/mcp")))
        allowed = MCPBearerAuth(allow_insecure_http=True)
        sent = flow_once(allowed, httpx.Request("GET", "http://mcp.example.com/mcp"))
    assert sent.headers["Authorization"] == "Bearer t1"


def test_plain_http_to_loopback_carries_the_token() -> None:
    with use_credentials(MCPCredentials([credential("t1", "http://127.0.0.1:8000/mcp")])):
        sent = flow_once(MCPBearerAuth(), httpx.Request("POST", "http://127.0.0.1:8000/mcp"))
    assert sent.headers["Authorization"] == "Bearer t1"
