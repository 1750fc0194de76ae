"""Precedence: per server, the first source in ``config.precedence`` wins.

Which credential won is read from what the application sees; the audit trail of shadowing is
tested with the audit log.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_auth_middleware import MCPAuthConfig, MCPCredential, ProviderDataMode
from mcp_auth_middleware.resolve import resolve
from mcp_auth_middleware.urls import parse_server_url
from tests.helpers import PROVIDER_DATA, Recorder, client, make_app, mcp_tool

URL = "https://mcp.example.com/mcp"
SAME_URL = "https://MCP.example.com:443/mcp/"  # the same server, written differently
OTHER_URL = "https://other.example.com/mcp"


def provider(mapping: dict[str, str], **extra_headers: str) -> dict[str, str]:
    return {
        PROVIDER_DATA: json.dumps(
            {
                "mcp_headers": {
                    url: {"Authorization": f"Bearer {token}", **extra_headers}
                    for url, token in mapping.items()
                }
            }
        )
    }


async def seen(
    config: MCPAuthConfig, body: Any, headers: dict[str, str]
) -> list[tuple[str | None, str, str]]:
    """(server_url, source, token) of each credential the application sees."""
    recorder = Recorder()
    app = make_app(config, recorder)
    async with client(app) as c:
        response = await c.post("/v1/responses", json=body, headers=headers)
    assert response.status_code == 200, response.text
    (call,) = recorder.calls
    return sorted((c["server_url"], c["source"], c["token"]) for c in call["credentials"])


ALL_ON = MCPAuthConfig(server_headers=True)


def test_default_order_is_body_then_server_header_then_provider_data() -> None:
    assert MCPAuthConfig().precedence == ("body", "server_header", "provider_data")


@pytest.mark.anyio
async def test_body_shadows_provider_data_for_the_same_server() -> None:
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    got = await seen(ALL_ON, body, provider({SAME_URL: "from-pd"}))
    assert got == [(URL, "body", "from-body")]


@pytest.mark.anyio
async def test_body_shadows_server_header_for_the_same_server() -> None:
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    got = await seen(ALL_ON, body, {"X-MCP-srv-Authorization": "Bearer from-header"})
    assert got == [(URL, "body", "from-body")]


@pytest.mark.anyio
async def test_server_header_shadows_provider_data_for_the_same_server() -> None:
    body = {"tools": [mcp_tool(URL, ..., "srv")]}
    headers = {"X-MCP-srv-Authorization": "Bearer from-header", **provider({SAME_URL: "from-pd"})}
    got = await seen(ALL_ON, body, headers)
    assert got == [(URL, "server_header", "from-header")]


@pytest.mark.anyio
async def test_all_three_for_one_server_the_body_wins() -> None:
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    headers = {"X-MCP-srv-Authorization": "Bearer from-header", **provider({URL: "from-pd"})}
    got = await seen(ALL_ON, body, headers)
    assert got == [(URL, "body", "from-body")]


@pytest.mark.anyio
async def test_the_winner_is_taken_whole_not_merged_with_the_shadowed() -> None:
    """A shadowed provider-data entry's extra headers do not ride along with the body's token."""
    recorder = Recorder()
    app = make_app(ALL_ON, recorder)
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    async with client(app) as c:
        response = await c.post(
            "/v1/responses", json=body, headers=provider({URL: "from-pd"}, **{"X-Tenant": "t"})
        )
    assert response.status_code == 200
    (cred,) = recorder.calls[0]["credentials"]
    assert (cred["token"], cred["headers"]) == ("from-body", {})


@pytest.mark.anyio
async def test_different_servers_from_different_sources_all_apply() -> None:
    third = "https://third.example.com/mcp"
    body = {"tools": [mcp_tool(URL, "from-body", "a"), mcp_tool(OTHER_URL, ..., "b")]}
    headers = {"X-MCP-b-Authorization": "Bearer from-header", **provider({third: "from-pd"})}
    got = await seen(ALL_ON, body, headers)
    assert got == [
        (URL, "body", "from-body"),
        (OTHER_URL, "server_header", "from-header"),
        (third, "provider_data", "from-pd"),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("precedence", "winner"),
    [
        pytest.param(("body", "server_header", "provider_data"), "body", id="default"),
        pytest.param(("provider_data", "body", "server_header"), "provider_data", id="pd-first"),
        pytest.param(("server_header", "provider_data", "body"), "server_header", id="sh-first"),
        pytest.param(("provider_data", "server_header", "body"), "provider_data", id="body-last"),
        pytest.param(("body", "provider_data", "server_header"), "body", id="sh-last"),
    ],
)
async def test_custom_order_decides_the_winner(precedence: tuple[str, ...], winner: str) -> None:
    config = MCPAuthConfig(server_headers=True, precedence=precedence)
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    headers = {"X-MCP-srv-Authorization": "Bearer from-header", **provider({SAME_URL: "from-pd"})}
    got = await seen(config, body, headers)
    tokens = {"body": "from-body", "server_header": "from-header", "provider_data": "from-pd"}
    assert [(source, token) for _, source, token in got] == [(winner, tokens[winner])]


@pytest.mark.anyio
async def test_custom_order_applies_per_server() -> None:
    """Provider data first: it wins where it has a credential, the body supplies the rest."""
    config = MCPAuthConfig(precedence=("provider_data", "body", "server_header"))
    body = {"tools": [mcp_tool(URL, "b1", "a"), mcp_tool(OTHER_URL, "b2", "b")]}
    got = await seen(config, body, provider({URL: "p1"}))
    assert got == [(URL, "provider_data", "p1"), (OTHER_URL, "body", "b2")]


# --- disabled sources -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_disabled_body_supplies_nothing_and_lower_sources_apply() -> None:
    config = MCPAuthConfig(body=False)
    body = {"tools": [mcp_tool(URL, "from-body", "srv")], "authorization": "from-body-top"}
    got = await seen(config, body, provider({URL: "from-pd"}))
    assert got == [(URL, "provider_data", "from-pd")]


@pytest.mark.anyio
async def test_disabled_body_judges_no_body_token() -> None:
    """With the body source off, the body's ``authorization`` is not read, so not refused."""
    config = MCPAuthConfig(body=False)
    body = {"tools": [mcp_tool(URL, "not a token", "srv")]}
    assert await seen(config, body, {}) == []


@pytest.mark.anyio
async def test_ignored_provider_data_supplies_nothing() -> None:
    config = MCPAuthConfig(provider_data=ProviderDataMode.IGNORE)
    body = {"tools": [mcp_tool(URL, ..., "srv")]}
    got = await seen(config, body, provider({URL: "from-pd", OTHER_URL: "from-pd-2"}))
    assert got == []


@pytest.mark.anyio
async def test_disabled_server_headers_supply_nothing() -> None:
    config = MCPAuthConfig(server_headers=False)
    body = {"tools": [mcp_tool(URL, ..., "srv")]}
    headers = {"X-MCP-srv-Authorization": "Bearer from-header", **provider({URL: "from-pd"})}
    got = await seen(config, body, headers)
    assert got == [(URL, "provider_data", "from-pd")]


@pytest.mark.anyio
async def test_with_every_source_disabled_nothing_is_scoped() -> None:
    config = MCPAuthConfig(body=False, provider_data=ProviderDataMode.IGNORE, server_headers=False)
    body = {"tools": [mcp_tool(URL, "from-body", "srv")], "authorization": "from-body-top"}
    headers = {"X-MCP-srv-Authorization": "Bearer from-header", **provider({URL: "from-pd"})}
    assert await seen(config, body, headers) == []


@pytest.mark.anyio
@pytest.mark.parametrize("with_header", [False, True], ids=["no-header", "provider-data-header"])
async def test_a_source_left_out_of_precedence_supplies_nothing(with_header: bool) -> None:
    """``precedence`` without ``body``: the body's credentials are not scoped, with or
    without a provider-data header on the request."""
    config = MCPAuthConfig(precedence=("provider_data",))
    body = {"tools": [mcp_tool(URL, "from-body", "srv")]}
    headers = provider({OTHER_URL: "from-pd"}) if with_header else {}
    expected = [(OTHER_URL, "provider_data", "from-pd")] if with_header else []
    assert await seen(config, body, headers) == expected


@pytest.mark.anyio
@pytest.mark.parametrize("with_header", [False, True], ids=["no-header", "provider-data-header"])
async def test_body_credentials_are_the_same_with_or_without_a_provider_data_header(
    with_header: bool,
) -> None:
    """The body's credentials do not depend on whether another source had anything to say."""
    body = {"tools": [mcp_tool(URL, "from-body", "srv"), mcp_tool(SAME_URL, "from-body", "s2")]}
    headers = provider({OTHER_URL: "from-pd"}) if with_header else {}
    got = await seen(MCPAuthConfig(), body, headers)
    assert (URL, "body", "from-body") in got
    assert len(got) == (2 if with_header else 1)


# --- resolve() itself ----------------------------------------------------------------------

_URLS = ["https://a.example/mcp", "https://A.example:443/mcp/", "https://b.example/mcp", None]
_LABELS = ["docs", "DOCS", "wiki", None]


@st.composite
def _found(draw: st.DrawFn) -> list[tuple[str, list[MCPCredential]]]:
    """Credentials from up to three sources, for overlapping servers, labels and defaults."""
    out = []
    for source in draw(st.lists(st.sampled_from(["body", "s2", "s3"]), unique=True)):
        creds = []
        for i in range(draw(st.integers(0, 4))):
            url, label = draw(st.sampled_from(_URLS)), draw(st.sampled_from(_LABELS))
            cred = MCPCredential(
                token=f"t-{source}-{i}", source=source, server_url=url, server_label=label
            )
            creds.append(cred)
        out.append((source, creds))
    return out


def _server_of(cred: MCPCredential) -> tuple[str, str]:
    """Which server a credential is for, from its public fields: the normalised URL, else
    the case-folded label, else the default."""
    if cred.server_url is not None:
        return ("url", parse_server_url(cred.server_url).url)
    if cred.server_label is not None:
        return ("label", cred.server_label.casefold())
    return ("default", "")


@settings(max_examples=300)
@given(_found())
def test_the_first_source_wins_per_server_and_a_source_with_two_is_refused(
    found: list[tuple[str, list[MCPCredential]]],
) -> None:
    """Per server, the first source in order wins and each later one that has it is listed
    as shadowed. A source that gives two credentials for one server has no order to decide
    by: ``resolve()`` raises, whatever the other sources say, rather than pick one."""
    if any(len({_server_of(c) for c in creds}) < len(creds) for _, creds in found):
        with pytest.raises(ValueError, match=r"credential source '[a-z0-9]+': two"):
            resolve(found)
        return
    creds, resolved = resolve(found)
    expected: dict[tuple[str, str], tuple[MCPCredential, list[str]]] = {}
    for source, given_creds in found:
        for cred in given_creds:
            if _server_of(cred) in expected:
                expected[_server_of(cred)][1].append(source)
            else:
                expected[_server_of(cred)] = (cred, [])
    assert [(c, list(shadowed)) for c, shadowed in resolved] == list(expected.values())
    assert list(creds) == [c for c, _ in expected.values()]
    for server, (cred, _) in expected.items():
        if server[0] == "url":
            assert creds.for_server(server[1]) is cred
        elif server[0] == "default":
            assert creds.default is cred
