"""The body parameter: Responses ``tools[]`` and the tool-runtime top-level field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_auth_middleware import (
    CredentialRejected,
    MCPAuthMiddleware,
    MCPCredential,
    current_credentials,
)
from mcp_auth_middleware.sources.base import MAX_TOKEN_LENGTH, MCPTool, check_token
from mcp_auth_middleware.sources.body import read_credentials
from tests.helpers import Recorder, client, described, mcp_tool, post_to_app

URL = "https://mcp.example.com/mcp"
OTHER_URL = "https://other.example.com/mcp"


def assert_rejected(response: httpx.Response, recorder: Recorder, code: str, param: str) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert recorder.calls == []


# --- Responses shape ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_mcp_tool_authorization_is_a_credential_for_its_server_url_and_label() -> None:
    response, recorder = await post_to_app({"model": "m", "tools": [mcp_tool(URL, "tok-1", "srv")]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("tok-1", URL, label="srv")]
    assert recorder.calls[0]["default"] is None


@pytest.mark.anyio
async def test_each_mcp_tool_gives_a_credential_of_its_own() -> None:
    tools = [mcp_tool(URL, "tok-a", "a"), mcp_tool(OTHER_URL, "tok-b", "b")]
    response, recorder = await post_to_app({"tools": tools})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == sorted(
        [described("tok-a", URL, label="a"), described("tok-b", OTHER_URL, label="b")],
        key=lambda d: json.dumps(d, sort_keys=True),
    )


@pytest.mark.anyio
async def test_credential_is_found_by_url_and_by_label_in_the_handler() -> None:
    """In the handler, ``for_server`` finds the credential by normalised URL and by label."""
    seen: dict[str, Any] = {}

    async def endpoint(request: Request) -> JSONResponse:
        creds = current_credentials()
        by_url = creds.for_server("https://MCP.example.com:443/mcp/")
        by_label = creds.for_server("srv")
        seen["url"] = None if by_url is None else by_url.token.get_secret_value()
        seen["label"] = None if by_label is None else by_label.token.get_secret_value()
        return JSONResponse({})

    app = Starlette(routes=[Route("/v1/responses", endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware)
    async with client(app) as c:
        response = await c.post("/v1/responses", json={"tools": [mcp_tool(URL, "tok-1", "srv")]})
    assert response.status_code == 200
    assert seen == {"url": "tok-1", "label": "tok-1"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sent", "token"),
    [
        pytest.param("Bearer tok-1", "tok-1", id="Bearer"),
        pytest.param("bearer tok-1", "tok-1", id="bearer-lower-case"),
        pytest.param("BEARER tok-1", "tok-1", id="BEARER-upper-case"),
        pytest.param("tok-1", "tok-1", id="bare-token"),
        pytest.param("Bearer-tok-1", "Bearer-tok-1", id="no-space-is-not-a-prefix"),
    ],
)
async def test_bearer_prefix_in_the_body_is_stripped(sent: str, token: str) -> None:
    """llama-stack sends ``Bearer <tok>`` in the body: the credential holds the bare token."""
    response, recorder = await post_to_app({"tools": [mcp_tool(URL, sent)]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described(token, URL, label="srv")]


@pytest.mark.anyio
async def test_bearer_prefix_is_stripped_once_only() -> None:
    """``Bearer Bearer tok`` leaves ``Bearer tok``, which holds a space: refused."""
    response, recorder = await post_to_app({"tools": [mcp_tool(URL, "Bearer Bearer tok-1")]})
    assert_rejected(response, recorder, "invalid_authorization", "tools[0].authorization")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(mcp_tool(URL, None), id="null"),
        pytest.param(mcp_tool(URL, ""), id="empty-string"),
        pytest.param(mcp_tool(URL, ...), id="missing"),
    ],
)
async def test_null_or_empty_authorization_counts_as_absent(tool: dict[str, Any]) -> None:
    response, recorder = await post_to_app({"tools": [tool]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tool",
    [
        pytest.param({"type": "function", "name": "f", "authorization": "tok-f"}, id="function"),
        pytest.param({"type": "web_search", "authorization": "a b c"}, id="bad-token-not-judged"),
        pytest.param(
            {"type": "MCP", "server_url": URL, "server_label": "s", "authorization": "tok"},
            id="type-is-case-sensitive",
        ),
        pytest.param(
            {"server_url": URL, "server_label": "s", "authorization": "tok"}, id="no-type"
        ),
        pytest.param(
            {"type": "file_search", "headers": {"Authorization": "Bearer x"}},
            id="headers-of-non-mcp-tool",
        ),
        pytest.param("mcp", id="string-item"),
        pytest.param(["mcp", URL, "tok"], id="list-item"),
        pytest.param(None, id="null-item"),
    ],
)
async def test_tools_that_are_not_mcp_tools_are_ignored(tool: Any) -> None:
    response, recorder = await post_to_app({"tools": [tool, mcp_tool(OTHER_URL, "tok-m", "m")]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("tok-m", OTHER_URL, label="m")]


@pytest.mark.anyio
async def test_connector_tool_without_server_url_gives_a_label_only_credential() -> None:
    tool = {"type": "mcp", "server_label": "gdrive", "connector_id": "connector_googledrive"}
    tool["authorization"] = "tok-g"
    response, recorder = await post_to_app({"tools": [tool]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("tok-g", None, label="gdrive")]
    assert recorder.calls[0]["default"] is None  # a label-only credential is not the default


# --- tool-runtime shape ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_top_level_authorization_with_mcp_endpoint_is_bound_to_its_uri() -> None:
    body = {"tool_name": "t", "kwargs": {}, "mcp_endpoint": {"uri": URL}, "authorization": "tok-r"}
    response, recorder = await post_to_app(body)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("tok-r", URL, label=None)]
    assert recorder.calls[0]["default"] is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="no-endpoint"),
        pytest.param({"mcp_endpoint": None}, id="null-endpoint"),
        pytest.param({"mcp_endpoint": {}}, id="endpoint-without-uri"),
    ],
)
async def test_top_level_authorization_without_endpoint_is_the_default(
    extra: dict[str, Any],
) -> None:
    response, recorder = await post_to_app(
        {"tool_name": "t", "authorization": "Bearer tok-d", **extra}
    )
    assert response.status_code == 200
    assert recorder.calls[0]["default"] == "tok-d"
    assert recorder.calls[0]["credentials"] == [described("tok-d", None, label=None)]


@pytest.mark.anyio
async def test_default_credential_is_bound_to_no_server() -> None:
    """``for_server`` never hands out the unbound default, whatever the URL or label."""
    seen: list[object] = []

    async def endpoint(request: Request) -> JSONResponse:
        creds = current_credentials()
        seen.extend(creds.for_server(key) for key in (URL, OTHER_URL, "srv", ""))
        return JSONResponse({})

    app = Starlette(routes=[Route("/tool-runtime/invoke", endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware)
    async with client(app) as c:
        response = await c.post("/tool-runtime/invoke", json={"authorization": "tok-d"})
    assert response.status_code == 200
    assert seen == [None, None, None, None]


@pytest.mark.anyio
@pytest.mark.parametrize("value", [None, ""], ids=["null", "empty-string"])
async def test_null_or_empty_top_level_authorization_counts_as_absent(value: Any) -> None:
    response, recorder = await post_to_app({"authorization": value, "mcp_endpoint": {"uri": URL}})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []
    assert recorder.calls[0]["default"] is None


# --- conflicts and server URLs --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "second_url",
    [
        pytest.param(URL, id="same-url"),
        pytest.param("https://MCP.Example.COM/mcp", id="host-case"),
        pytest.param("HTTPS://mcp.example.com:443/mcp", id="default-port"),
        pytest.param("https://mcp.example.com/mcp/", id="trailing-slash"),
        pytest.param("https://mcp.example.com/mcp#frag", id="fragment"),
    ],
)
async def test_same_server_with_different_tokens_is_a_conflict(second_url: str) -> None:
    tools = [mcp_tool(URL, "tok-1", "a"), mcp_tool(second_url, "tok-2", "b")]
    response, recorder = await post_to_app({"tools": tools})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "conflicting_credentials"
    assert error["param"] in ("tools[1].server_url", "tools[1].authorization")
    assert "tok-1" not in response.text
    assert "tok-2" not in response.text
    assert recorder.calls == []


@pytest.mark.anyio
async def test_same_server_with_the_same_token_gives_one_credential() -> None:
    tools = [mcp_tool(URL, "tok-1", "a"), mcp_tool(URL + "/", "Bearer tok-1", "b")]
    response, recorder = await post_to_app({"tools": tools})
    assert response.status_code == 200
    creds = recorder.calls[0]["credentials"]
    assert len(creds) == 1
    assert creds[0]["token"] == "tok-1"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "other",
    [
        pytest.param("http://mcp.example.com/mcp", id="scheme"),
        pytest.param("https://mcp.example.com:8443/mcp", id="port"),
        pytest.param("https://mcp.example.com/other", id="path"),
        pytest.param("https://mcp.example.com/mcp?tenant=b", id="query"),
    ],
)
async def test_urls_differing_in_scheme_port_path_or_query_are_different_servers(
    other: str,
) -> None:
    tools = [mcp_tool(URL, "tok-1", "a"), mcp_tool(other, "tok-2", "b")]
    response, recorder = await post_to_app({"tools": tools})
    assert response.status_code == 200
    assert {c["token"] for c in recorder.calls[0]["credentials"]} == {"tok-1", "tok-2"}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        pytest.param("not a url", id="words"),
        pytest.param("/relative/mcp", id="relative"),
        pytest.param("mcp.example.com/mcp", id="no-scheme"),
        pytest.param("ftp://mcp.example.com/mcp", id="ftp"),
        pytest.param("https://", id="no-host"),
        pytest.param("", id="empty"),
        pytest.param(42, id="number"),
        pytest.param(["https://mcp.example.com"], id="list"),
    ],
)
async def test_invalid_server_url_with_a_token_is_refused(url: Any) -> None:
    response, recorder = await post_to_app({"tools": [mcp_tool(URL), mcp_tool(url, "tok-x", "x")]})
    assert_rejected(response, recorder, "invalid_server_url", "tools[1].server_url")
    assert "tok-x" not in response.text


@pytest.mark.anyio
async def test_invalid_mcp_endpoint_uri_with_a_token_is_refused() -> None:
    body = {"authorization": "tok-r", "mcp_endpoint": {"uri": "not a url"}}
    response, recorder = await post_to_app(body)
    assert_rejected(response, recorder, "invalid_server_url", "mcp_endpoint.uri")


@pytest.mark.anyio
async def test_invalid_server_url_without_a_token_is_not_judged() -> None:
    """A tool that carries no credential is the application's business."""
    response, recorder = await post_to_app({"tools": [mcp_tool("not a url", ...)]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


# --- what is not ours to judge --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"tools": [{"type": "mcp", "authorization": "a b"}]', id="truncated"),
        pytest.param(b'{"authorization": "a b",}', id="trailing-comma"),
        pytest.param(b'{"authorization": "a b"} {}', id="two-documents"),
        pytest.param(b'[{"type": "mcp", "authorization": "a b"}]', id="array"),
        pytest.param(b'"Bearer a b"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(
            b'{"tools": {"0": {"type": "mcp", "server_url": "x", "authorization": "a b"}}}',
            id="tools-is-an-object",
        ),
        pytest.param(b'{"tools": "mcp a b"}', id="tools-is-a-string"),
        pytest.param(b'{"tools": null}', id="tools-is-null"),
        pytest.param(b'{"tools": 7}', id="tools-is-a-number"),
    ],
)
async def test_body_that_is_not_ours_to_judge_passes_through_untouched(raw: bytes) -> None:
    """Not JSON, not an object, or ``tools`` not a list: the application answers, same bytes."""
    response, recorder = await post_to_app(raw)
    assert response.status_code == 200
    assert len(recorder.calls) == 1
    assert recorder.calls[0]["body"] == raw
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
async def test_application_receives_the_very_bytes_that_were_sent() -> None:
    """Odd spacing, key order and escapes survive: the body is replayed, not re-encoded."""
    raw = (
        b'{ "model" :"m",\n\t"tools":[ {"server_label":"s\\u00e9","type":"mcp",'
        b'"server_url":"https://mcp.example.com/mcp","authorization":"Bearer tok-1"} ] }  '
    )
    response, recorder = await post_to_app(raw)
    assert response.status_code == 200
    assert recorder.calls[0]["body"] == raw
    assert recorder.calls[0]["credentials"] == [described("tok-1", URL, label="s\u00e9")]


# The body's token rule is check_token's, the rule every other source uses.
_CHARS = st.sampled_from(["a", "Z", "0", "-", "~", " ", "\t", "\r", "\n", "\x00", "é", "\u2028"])
_SCHEMES = st.sampled_from(["Bearer", "bearer ", "BEARER  ", "Bearer\t"])
_LONG = ["x" * MAX_TOKEN_LENGTH, "x" * (MAX_TOKEN_LENGTH + 1), "Bearer " + "x" * MAX_TOKEN_LENGTH]
_TOKEN_VALUES = st.one_of(
    st.text(_CHARS, min_size=1, max_size=12),
    st.builds(lambda p, t: p + t, _SCHEMES, st.text(_CHARS, max_size=6)),
    st.sampled_from(_LONG),
    st.text(min_size=1, max_size=20),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)


@given(_TOKEN_VALUES)
def test_body_token_rule_is_check_tokens(value: Any) -> None:
    tools = [(0, MCPTool(0, "https://mcp.example.com/mcp", "srv", value, None))]
    expected = check_token(value, require_bearer=False)
    if expected is None:
        with pytest.raises(CredentialRejected) as refused:
            read_credentials(tools, None, None)
        assert refused.value.code == "invalid_authorization"
    else:
        [cred] = read_credentials(tools, None, None)
        assert isinstance(cred, MCPCredential)
        assert cred.token.get_secret_value() == expected
