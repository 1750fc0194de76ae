"""Per-server headers: ``X-MCP-<server_label>-Authorization: Bearer <token>``."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_auth_middleware import MCPAuthConfig
from mcp_auth_middleware.urls import parse_server_url
from tests.helpers import Recorder, described, mcp_tool, post_to_app

URL = "https://mcp.example.com/mcp"
OTHER_URL = "https://other.example.com/mcp"
ON = MCPAuthConfig(server_headers=True)


async def post(
    headers: dict[str, str], body: Any, *, config: MCPAuthConfig | None = ON
) -> tuple[httpx.Response, Recorder]:
    """POST ``body`` with ``headers`` to a fresh app whose per-server headers are on."""
    return await post_to_app(body, headers, config=config)


@pytest.mark.anyio
async def test_server_headers_are_off_by_default() -> None:
    headers = {"X-MCP-srv-Authorization": "Bearer h1"}
    response, recorder = await post(
        headers, {"tools": [mcp_tool(URL, ..., "srv")]}, config=MCPAuthConfig()
    )
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
async def test_off_by_default_means_a_bad_value_is_not_judged_either() -> None:
    response, recorder = await post(
        {"X-MCP-srv-Authorization": "not bearer"}, {"tools": []}, config=MCPAuthConfig()
    )
    assert response.status_code == 200
    assert len(recorder.calls) == 1


@pytest.mark.anyio
async def test_header_is_bound_to_the_url_of_the_tool_with_that_label() -> None:
    tools = [mcp_tool(OTHER_URL, ..., "other"), mcp_tool(URL, ..., "srv")]
    response, recorder = await post({"X-MCP-srv-Authorization": "Bearer h1"}, {"tools": tools})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [
        described("h1", URL, label="srv", source="server_header")
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header_label", "tool_label"),
    [
        pytest.param("SRV", "srv", id="upper-header"),
        pytest.param("srv", "SRV", id="upper-tool"),
        pytest.param("GitHub", "github", id="mixed-header"),
        pytest.param("my-server", "My-Server", id="hyphenated"),
    ],
)
async def test_label_is_matched_case_insensitively(header_label: str, tool_label: str) -> None:
    headers = {f"X-MCP-{header_label}-Authorization": "Bearer h1"}
    response, recorder = await post(headers, {"tools": [mcp_tool(URL, ..., tool_label)]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [
        described("h1", URL, label=tool_label, source="server_header")
    ]


@pytest.mark.anyio
async def test_header_name_itself_is_case_insensitive() -> None:
    headers = {"x-mcp-srv-authorization": "bearer h1"}
    response, recorder = await post(headers, {"tools": [mcp_tool(URL, ..., "srv")]})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [
        described("h1", URL, label="srv", source="server_header")
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"tools": [mcp_tool(URL, ..., "other")]}, id="other-label"),
        pytest.param({"tools": []}, id="no-tools"),
        pytest.param({"model": "m"}, id="no-tools-key"),
    ],
)
async def test_label_no_tool_carries_gives_a_label_only_credential(body: Any) -> None:
    response, recorder = await post({"X-MCP-srv-Authorization": "Bearer h1"}, body)
    assert response.status_code == 200
    creds = recorder.calls[0]["credentials"]
    assert len(creds) == 1
    assert creds[0]["server_url"] is None
    assert creds[0]["server_label"].casefold() == "srv"
    assert (creds[0]["source"], creds[0]["token"]) == ("server_header", "h1")
    assert recorder.calls[0]["default"] is None


@pytest.mark.anyio
async def test_several_servers_each_get_their_header() -> None:
    tools = [mcp_tool(URL, ..., "a"), mcp_tool(OTHER_URL, ..., "b")]
    headers = {"X-MCP-a-Authorization": "Bearer ha", "X-MCP-b-Authorization": "Bearer hb"}
    response, recorder = await post(headers, {"tools": tools})
    assert response.status_code == 200
    assert {(c["server_url"], c["token"]) for c in recorder.calls[0]["credentials"]} == {
        (URL, "ha"),
        (OTHER_URL, "hb"),
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("h1", id="no-scheme"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic"),
        pytest.param("Bearer", id="Bearer-alone"),
        pytest.param("Bearer ", id="Bearer-space"),
        pytest.param("Bearer h1 h2", id="space-in-token"),
        pytest.param("Bearer " + "h" * 8193, id="too-long"),
    ],
)
async def test_header_requires_bearer_token(value: str) -> None:
    headers = {"X-MCP-srv-Authorization": value}
    response, recorder = await post(headers, {"tools": [mcp_tool(URL, ..., "srv")]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_authorization"
    assert error["type"] == "invalid_request_error"
    assert error["param"].casefold() == "x-mcp-srv-authorization"
    assert "h1" not in response.text
    assert "dXNlcjpwYXNz" not in response.text
    assert recorder.calls == []


@pytest.mark.anyio
async def test_two_labels_of_one_server_with_different_tokens_are_refused() -> None:
    """Tools ``a`` and ``b`` name one server (written two ways): which header's token it
    gets would be up to header order, so the request is refused and the app not called."""
    tools = [mcp_tool(URL, ..., "a"), mcp_tool("HTTPS://MCP.example.com:443/mcp/", ..., "b")]
    headers = {
        "X-MCP-a-Authorization": "Bearer secret-a-9f3",
        "X-MCP-b-Authorization": "Bearer secret-b-7c1",
    }
    response, recorder = await post(headers, {"tools": tools})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("conflicting_credentials", "X-MCP-b-Authorization")
    assert "secret-" not in response.text
    assert recorder.calls == []


@pytest.mark.anyio
async def test_two_labels_of_one_server_with_the_same_token_give_one_credential() -> None:
    tools = [mcp_tool(URL, ..., "a"), mcp_tool(URL, ..., "b")]
    headers = {"X-MCP-a-Authorization": "Bearer same", "X-MCP-b-Authorization": "Bearer same"}
    response, recorder = await post(headers, {"tools": tools})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == [
        described("same", URL, label="a", source="server_header")
    ]


# Equivalent and distinct spellings of two servers, to let generated labels collide.
_FORMS = {
    URL: [URL, "HTTPS://MCP.example.com:443/mcp/", "https://mcp.example.com/mcp#frag"],
    OTHER_URL: [OTHER_URL, "https://OTHER.example.com/mcp/"],
}


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d"]),
        st.tuples(
            st.sampled_from(
                [(server, i) for server, forms in _FORMS.items() for i in range(len(forms))]
            ),
            st.sampled_from(["t1", "t2"]),
        ),
        min_size=1,
    )
)
def test_generated_labels_each_server_gets_its_one_token_or_the_request_is_refused(
    labels: dict[str, tuple[tuple[str, int], str]],
) -> None:
    """Each label is one tool (its server written in one of several equivalent forms) and
    one header. A server whose labels bring two different tokens is refused; otherwise each
    server gets exactly the token its labels brought."""
    tools = [
        mcp_tool(_FORMS[server][form], ..., label) for label, ((server, form), _) in labels.items()
    ]
    headers = {
        f"X-MCP-{label}-Authorization": f"Bearer {tok}" for label, (_, tok) in labels.items()
    }
    tokens: dict[str, set[str]] = {}
    for (server, _), tok in labels.values():
        tokens.setdefault(server, set()).add(tok)
    response, recorder = anyio.run(post, headers, {"tools": tools})
    if any(len(given) > 1 for given in tokens.values()):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "conflicting_credentials"
        assert recorder.calls == []
        return
    assert response.status_code == 200
    got = {
        parse_server_url(c["server_url"]).url: c["token"] for c in recorder.calls[0]["credentials"]
    }
    assert got == {parse_server_url(server).url: next(iter(t)) for server, t in tokens.items()}
