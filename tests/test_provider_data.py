"""The legacy provider-data header: ``X-LlamaStack-Provider-Data``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mcp_auth_middleware import MCPAuthConfig, ProviderDataMode
from tests.helpers import (
    PROVIDER_DATA,
    Recorder,
    described,
    mcp_tool,
    post_to_app,
)

URL = "https://mcp.example.com/mcp"
OTHER_URL = "https://other.example.com/sse"


async def post(
    headers: list[tuple[str, str]] | dict[str, str],
    *,
    config: MCPAuthConfig | None = None,
    body: Any = None,
) -> tuple[httpx.Response, Recorder]:
    """POST ``body`` (a minimal Responses request by default) with ``headers``."""
    return await post_to_app({"model": "m"} if body is None else body, headers, config=config)


def header(document: Any, name: str = PROVIDER_DATA) -> dict[str, str]:
    return {name: document if isinstance(document, str) else json.dumps(document)}


def assert_rejected(
    response: httpx.Response, recorder: Recorder, code: str, param: str = PROVIDER_DATA
) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert recorder.calls == []


@pytest.mark.anyio
async def test_authorization_entry_gives_a_credential_for_that_url() -> None:
    response, recorder = await post(header({"mcp_headers": {URL: {"Authorization": "Bearer t1"}}}))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]
    assert recorder.calls[0]["default"] is None


@pytest.mark.anyio
async def test_each_server_of_mcp_headers_gets_its_credential() -> None:
    mapping = {URL: {"Authorization": "Bearer t1"}, OTHER_URL: {"Authorization": "Bearer t2"}}
    response, recorder = await post(header({"mcp_headers": mapping}))
    assert response.status_code == 200
    assert {(c["server_url"], c["token"]) for c in recorder.calls[0]["credentials"]} == {
        (URL, "t1"),
        (OTHER_URL, "t2"),
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name",
    ["x-llamastack-provider-data", "X-LLAMASTACK-PROVIDER-DATA", "x-LlamaStack-provider-DATA"],
)
async def test_header_name_is_matched_case_insensitively(name: str) -> None:
    document = {"mcp_headers": {URL: {"Authorization": "Bearer t1"}}}
    response, recorder = await post(header(document, name))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]


@pytest.mark.anyio
async def test_header_name_is_configurable() -> None:
    """The renamed upstream header ``X-OGX-Provider-Data`` is read when configured."""
    config = MCPAuthConfig(provider_data_header=("X-OGX-Provider-Data",))
    document = {"mcp_headers": {URL: {"Authorization": "Bearer t1"}}}
    response, recorder = await post(header(document, "x-ogx-provider-data"), config=config)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]


@pytest.mark.anyio
async def test_default_header_is_not_read_when_another_name_is_configured() -> None:
    config = MCPAuthConfig(provider_data_header=("X-OGX-Provider-Data",))
    response, recorder = await post(header("{not json"), config=config)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
async def test_errors_name_the_configured_header() -> None:
    config = MCPAuthConfig(provider_data_header=("X-OGX-Provider-Data",))
    response, recorder = await post(header("{not json", "X-OGX-Provider-Data"), config=config)
    assert_rejected(response, recorder, "invalid_provider_data", "X-OGX-Provider-Data")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"]
)
async def test_authorization_entry_name_is_matched_in_any_case(name: str) -> None:
    response, recorder = await post(header({"mcp_headers": {URL: {name: "Bearer t1"}}}))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_scheme_is_matched_in_any_case(scheme: str) -> None:
    response, recorder = await post(
        header({"mcp_headers": {URL: {"Authorization": f"{scheme} t1"}}})
    )
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]


@pytest.mark.anyio
async def test_other_entries_become_the_credentials_headers() -> None:
    entries = {"X-Tenant": "acme", "Authorization": "Bearer t1", "X-Trace": "a b\tc"}
    response, recorder = await post(header({"mcp_headers": {URL: entries}}))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [
        described("t1", source="provider_data", headers={"X-Tenant": "acme", "X-Trace": "a b\tc"})
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"fireworks_api_key": "fw-key"}, id="another-providers-key"),
        pytest.param({"openai": {"Authorization": "Bearer sk-x"}}, id="nested-authorization"),
        pytest.param({"list": [1, "two", None], "n": 3.5, "b": True}, id="any-values"),
    ],
)
async def test_other_top_level_keys_are_left_alone(other: dict[str, Any]) -> None:
    document = {"mcp_headers": {URL: {"Authorization": "Bearer t1"}}, **other}
    response, recorder = await post(header(document))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [described("t1", source="provider_data")]


@pytest.mark.anyio
async def test_header_without_mcp_headers_gives_nothing() -> None:
    response, recorder = await post(header({"together_api_key": "k"}))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
async def test_the_body_is_replayed_unchanged() -> None:
    body = {"model": "m", "input": "hi", "tools": [mcp_tool(OTHER_URL, ...)]}
    document = {"mcp_headers": {URL: {"Authorization": "Bearer t1"}}}
    response, recorder = await post(header(document), body=body)
    assert response.status_code == 200
    assert json.loads(recorder.calls[0]["body"]) == body


# --- modes ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["Authorization", "authorization"])
async def test_reject_mode_refuses_credentials_in_provider_data(name: str) -> None:
    config = MCPAuthConfig(provider_data=ProviderDataMode.REJECT)
    document = {"mcp_headers": {URL: {name: "Bearer t1"}}}
    response, recorder = await post(header(document), config=config)
    assert_rejected(response, recorder, "authorization_in_provider_data")
    message = response.json()["error"]["message"]
    assert "'authorization' parameter" in message
    assert "t1" not in message


@pytest.mark.anyio
async def test_reject_mode_lets_provider_data_without_credentials_through() -> None:
    config = MCPAuthConfig(provider_data=ProviderDataMode.REJECT)
    document = {"mcp_headers": {URL: {"X-Tenant": "acme"}}, "fireworks_api_key": "k"}
    body = {"tools": [mcp_tool(URL, "Bearer b1")]}
    response, recorder = await post(header(document), config=config, body=body)
    assert response.status_code == 200
    assert [c["token"] for c in recorder.calls[0]["credentials"]] == ["b1"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1"}}}), id="valid"
        ),
        pytest.param("{not json", id="not-json"),
        pytest.param("[]", id="not-an-object"),
        pytest.param(json.dumps({"mcp_headers": {"/relative": {"Authorization": "x"}}}), id="bad"),
    ],
)
async def test_ignore_mode_does_not_read_the_header_at_all(value: str) -> None:
    config = MCPAuthConfig(provider_data=ProviderDataMode.IGNORE)
    response, recorder = await post({PROVIDER_DATA: value}, config=config)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


# --- malformed ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param("", id="empty"),
        pytest.param("[]", id="array"),
        pytest.param('"mcp_headers"', id="string"),
        pytest.param("null", id="null"),
        pytest.param("42", id="number"),
        pytest.param(json.dumps({"mcp_headers": []}), id="mcp_headers-list"),
        pytest.param(json.dumps({"mcp_headers": "Bearer t1"}), id="mcp_headers-string"),
        pytest.param(json.dumps({"mcp_headers": 1}), id="mcp_headers-number"),
        pytest.param(
            json.dumps({"mcp_headers": {"/mcp": {"Authorization": "Bearer t1"}}}), id="url-relative"
        ),
        pytest.param(
            json.dumps({"mcp_headers": {"mcp.example.com/mcp": {"Authorization": "Bearer t1"}}}),
            id="url-without-scheme",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {"ftp://h/mcp": {"Authorization": "Bearer t1"}}}),
            id="url-not-http",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {"": {"Authorization": "Bearer t1"}}}), id="url-empty"
        ),
        pytest.param(json.dumps({"mcp_headers": {URL: "Bearer t1"}}), id="value-string"),
        pytest.param(
            json.dumps({"mcp_headers": {URL: ["Authorization", "Bearer t1"]}}), id="value-list"
        ),
        pytest.param(json.dumps({"mcp_headers": {URL: None}}), id="value-null"),
        pytest.param(json.dumps({"mcp_headers": {URL: {"Authorization": 42}}}), id="auth-int"),
        pytest.param(json.dumps({"mcp_headers": {URL: {"Authorization": None}}}), id="auth-null"),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": ["Bearer t1"]}}}), id="auth-list"
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-N": 1}}}),
            id="extra-int",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-B": True}}}),
            id="extra-bool",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-A": "a\r\nX: y"}}}),
            id="extra-crlf",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-A": "a\nb"}}}),
            id="extra-lf",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-A": "a\rb"}}}),
            id="extra-cr",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X-A": "a\x00b"}}}),
            id="extra-nul",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X A": "v"}}}),
            id="extra-name-with-space",
        ),
        pytest.param(
            json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", "X:A": "v"}}}),
            id="extra-name-with-colon",
        ),
        *(
            pytest.param(
                json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1", name: "v"}}}),
                id=f"reserved-{name}",
            )
            for name in (
                "Host",
                "host",
                "Mcp-Session-Id",
                "MCP-Protocol-Version",
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "Proxy-Authorization",
            )
        ),
    ],
)
async def test_malformed_provider_data_is_refused(value: str) -> None:
    response, recorder = await post({PROVIDER_DATA: value})
    assert_rejected(response, recorder, "invalid_provider_data")
    assert "t1" not in response.text


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("t1", id="no-scheme"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Token t1", id="other-scheme"),
        pytest.param("Bearer", id="Bearer-alone"),
        pytest.param("Bearer ", id="Bearer-space"),
        pytest.param("Bearer t1 t2", id="space-in-token"),
        pytest.param("Bearer t1\tt2", id="tab-in-token"),
        pytest.param("Bearer t1\x7f", id="DEL"),
        pytest.param("Bearer t\u00e91", id="non-ASCII"),
        pytest.param("Bearer " + "t" * 8193, id="too-long"),
    ],
)
async def test_authorization_that_is_not_bearer_token_is_refused(authorization: str) -> None:
    response, recorder = await post(
        header({"mcp_headers": {URL: {"Authorization": authorization}}})
    )
    assert_rejected(response, recorder, "invalid_authorization")
    assert "t1" not in response.text
    assert "dXNlcjpwYXNz" not in response.text


@pytest.mark.anyio
async def test_two_provider_data_headers_are_refused() -> None:
    """Two values: which one would the application read? Neither."""
    one = json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t1"}}})
    two = json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer t2"}}})
    response, recorder = await post([(PROVIDER_DATA, one), (PROVIDER_DATA.lower(), two)])
    assert_rejected(response, recorder, "ambiguous_provider_data")
    assert "t1" not in response.text
    assert "t2" not in response.text
