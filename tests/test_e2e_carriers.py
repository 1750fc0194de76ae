"""The carriers end to end: openai / llama-stack-client -> the example gateway -> recording
MCP servers, all on 127.0.0.1. Each server's own record says which token and which headers
reached it (values by fingerprint only).

Precedence after binding (the tool-runtime default against provider data), per-server
headers from both carriers (with and without a token, pooled sessions and per-request ones),
``Authorization`` in a tool's ``headers`` with ``headers_authorization="accept"``, and
``connector_id`` tools sent by the real ``openai`` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_stack_client
import openai
import pytest
from openai.types.responses.response_output_item import McpCall, McpListTools

from examples.gateway import create_app
from mcp_auth_middleware import CREDENTIAL_BOUND, HeadersAuthorization, MCPAuthConfig
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing import AuditLog, Call, RecordingMCPServer, serve
from mcp_auth_middleware.testing.pytest_plugin import MCPServerFactory

pytestmark = pytest.mark.e2e

ALICE = "alice-token-0123456789"
BOB = "bob-token-9876543210"
API_KEY = "api-key-secret-4242"
USERS = {ALICE: "alice", BOB: "bob"}
TIMEOUT = 10.0
BOTH_MODES = pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "per-request"])


@pytest.fixture
def mcp(mcp_server_factory: MCPServerFactory) -> RecordingMCPServer:
    return mcp_server_factory(USERS, name="whoami")


@pytest.fixture
def other(mcp_server_factory: MCPServerFactory) -> RecordingMCPServer:
    """A second server on the same host (another port): it must get nothing of the first's."""
    return mcp_server_factory(USERS, name="other")


def _gateway(mcp: RecordingMCPServer, config: MCPAuthConfig, *, reuse: bool = True) -> Any:
    app = create_app(config, tool_servers={"whoami": mcp.url}, reuse_sessions=reuse)
    return serve(app)


@pytest.fixture
def gateway(mcp: RecordingMCPServer) -> Iterator[str]:
    with _gateway(mcp, MCPAuthConfig()) as base:
        yield base


def _openai(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="not-used", max_retries=0, timeout=TIMEOUT)


def _llama_stack(base: str, provider_data: dict[str, Any] | None = None) -> Any:
    return llama_stack_client.LlamaStackClient(
        base_url=base, provider_data=provider_data, max_retries=0, timeout=TIMEOUT
    )


def _tool(url: str | None, label: str, **extra: Any) -> Any:
    tool: dict[str, Any] = {"type": "mcp", "server_label": label, "require_approval": "never"}
    if url is not None:
        tool["server_url"] = url
    return tool | extra


def _outputs(response: Any) -> dict[str, Any]:
    """Each ``mcp_call``'s output (or error) by server label."""
    return {
        item.server_label: item.output if item.output is not None else item.error
        for item in response.output
        if item.type == "mcp_call"
    }


def _api_keys(server: RecordingMCPServer) -> set[str | None]:
    """The fingerprints of the ``X-Api-Key`` values the server received (None: absent)."""
    return {r.secret_headers.get("x-api-key") for r in server.requests}


# --- precedence after binding --------------------------------------------------------------


def test_the_tool_runtime_default_beats_provider_data_once_the_gateway_binds_it(
    mcp: RecordingMCPServer, gateway: str, audit_log: AuditLog
) -> None:
    """A top-level ``authorization`` (alice) and a provider-data token for the same server
    (bob): the gateway binds the default to its configured server, and alice's token is the
    one that server gets; the audit says bob's provider-data token was beaten."""
    legacy = {"mcp_headers": {mcp.url: {"Authorization": f"Bearer {BOB}"}}}
    with _llama_stack(gateway, provider_data=legacy) as client:
        result = client.tool_runtime.invoke_tool(
            tool_name="whoami", kwargs={}, extra_body={"authorization": ALICE}
        )
    assert (result.content, result.error_code) == ("alice", None)
    assert mcp.calls == [Call(user="alice", tool="whoami")]
    assert mcp.tokens_seen == {fingerprint(ALICE)}
    [bound] = audit_log.named(CREDENTIAL_BOUND)
    assert (bound["source"], bound["shadowed"], bound["fingerprint"]) == (
        "body",
        ["provider_data"],
        fingerprint(ALICE),
    )


# --- per-server headers --------------------------------------------------------------------


@BOTH_MODES
def test_provider_data_headers_reach_their_server_only_with_and_without_a_token(
    mcp: RecordingMCPServer, other: RecordingMCPServer, reuse: bool
) -> None:
    """llama-stack forwards a provider-data entry's other headers, even with no
    ``Authorization``: the first server gets its token and its ``X-Api-Key``, the second
    (header-only entry) its ``X-Tenant`` and no token, and neither gets the other's."""
    legacy = {
        "mcp_headers": {
            mcp.url: {"Authorization": f"Bearer {BOB}", "X-Api-Key": API_KEY},
            other.url: {"X-Tenant": "acme"},
        }
    }
    tools = [_tool(mcp.url, "whoami"), _tool(other.url, "other")]
    with _gateway(mcp, MCPAuthConfig(), reuse=reuse) as base, _llama_stack(base, legacy) as client:
        response = client.responses.create(model="m", input="whoami", tools=tools)
    outputs = _outputs(response)
    assert outputs["whoami"] == "bob"
    assert "401" in str(outputs["other"])  # a header-only entry: the server wants a token
    assert _api_keys(mcp) == {fingerprint(API_KEY)}
    assert {r.secret_headers.get("x-tenant") for r in other.requests} == {fingerprint("acme")}
    assert _api_keys(other) == {None}
    assert all("x-tenant" not in r.header_names for r in mcp.requests)
    assert other.tokens_seen == set()


@BOTH_MODES
def test_a_tools_other_headers_reach_its_server_only(
    mcp: RecordingMCPServer, other: RecordingMCPServer, reuse: bool
) -> None:
    tools = [
        _tool(mcp.url, "whoami", authorization=ALICE, headers={"X-Api-Key": API_KEY}),
        _tool(other.url, "other", authorization=BOB),
    ]
    with _gateway(mcp, MCPAuthConfig(), reuse=reuse) as base, _openai(base) as client:
        response = client.responses.create(model="m", input="whoami", tools=tools)
    assert _outputs(response) == {"whoami": "alice", "other": "bob"}
    assert _api_keys(mcp) == {fingerprint(API_KEY)}
    assert _api_keys(other) == {None}
    assert API_KEY not in response.model_dump_json()


def test_a_tool_header_the_gateway_must_not_send_is_a_bad_request(
    mcp: RecordingMCPServer, gateway: str
) -> None:
    tool = _tool(mcp.url, "whoami", authorization=ALICE, headers={"Mcp-Session-Id": "stolen"})
    with _openai(gateway) as client, pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="m", input="whoami", tools=[tool])
    assert refused.value.code == "invalid_headers"
    assert refused.value.param == "tools[0].headers.Mcp-Session-Id"
    assert mcp.requests == []


# --- Authorization in a tool's headers -----------------------------------------------------


def test_accept_mode_sends_the_headers_authorization_as_the_tools_token(
    mcp: RecordingMCPServer,
) -> None:
    """OpenAI's docs put the token in ``headers``; with ``accept`` it is that tool's."""
    config = MCPAuthConfig(headers_authorization=HeadersAuthorization.ACCEPT)
    tool = _tool(mcp.url, "whoami", headers={"Authorization": f"Bearer {ALICE}"})
    with _gateway(mcp, config) as base, _openai(base) as client:
        response = client.responses.create(model="m", input="whoami", tools=[tool])
    assert _outputs(response) == {"whoami": "alice"}
    assert mcp.tokens_seen == {fingerprint(ALICE)}


# --- connector tools -----------------------------------------------------------------------


def test_a_connector_tool_from_openai_reaches_the_server_its_connector_maps_to(
    mcp: RecordingMCPServer, other: RecordingMCPServer
) -> None:
    config = MCPAuthConfig(connectors={"connector_whoami": mcp.url})
    tool = _tool(None, "whoami", connector_id="connector_whoami", authorization=ALICE)
    with _gateway(mcp, config) as base, _openai(base) as client:
        response = client.responses.create(model="m", input="whoami", tools=[tool])
    assert _outputs(response) == {"whoami": "alice"}
    assert mcp.calls == [Call(user="alice", tool="whoami")]
    assert other.requests == []


def test_an_unknown_connectors_token_is_sent_nowhere(mcp: RecordingMCPServer, gateway: str) -> None:
    tool = _tool(None, "dropbox", connector_id="connector_dropbox", authorization=ALICE)
    with _openai(gateway) as client:
        response = client.responses.create(model="m", input="whoami", tools=[tool])
    listing, call = response.output
    assert isinstance(listing, McpListTools)
    assert isinstance(call, McpCall)
    assert listing.error == "unknown connector"
    assert call.status == "failed"
    assert mcp.requests == []
