"""Custom sources: the pluggable source protocol, placed anywhere in precedence."""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

import mcp_auth_middleware
from mcp_auth_middleware import (
    CREDENTIAL_RESOLVED,
    CredentialRejected,
    MCPAuthConfig,
    MCPCredential,
    MCPCredentialSource,
    SourceRequest,
)
from mcp_auth_middleware.sources import base
from tests.helpers import client, make_app, mcp_tool, provider_data

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
VAULT = {"alice": "vault-alice", "bob": "vault-bob"}


class VaultSource:
    """A token vault keyed by the user named in ``X-User`` (sync)."""

    name = "vault"
    needs_body = False

    def __init__(self, server_url: str = URL, vault: dict[str, str] | None = None) -> None:
        self.server_url = server_url
        self.vault = VAULT if vault is None else vault
        self.requests: list[SourceRequest] = []

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        self.requests.append(request)
        token = self.vault.get(request.header("X-User") or "")
        if token is None:
            return []
        return [MCPCredential(token=token, source=self.name, server_url=self.server_url)]


class AsyncVaultSource(VaultSource):
    """The same vault behind an awaited lookup (a network call in real life)."""

    name = "async_vault"

    async def read(self, request: SourceRequest) -> list[MCPCredential]:  # type: ignore[override]
        await anyio.lowlevel.checkpoint()
        return super().read(request)


class LockedVault:
    """A vault that refuses every request with an error code of its own."""

    name = "vault"
    needs_body = False

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        raise CredentialRejected("vault_locked", "X-User", source=self.name)


class SloppySource:
    """Returns things that are not credentials: a programming error."""

    name = "sloppy"
    needs_body = False

    def __init__(self, result: Any) -> None:
        self.result = result

    def read(self, request: SourceRequest) -> Any:
        return self.result


class AsyncSloppySource(SloppySource):
    name = "async_sloppy"

    async def read(self, request: SourceRequest) -> Any:
        await anyio.lowlevel.checkpoint()
        return self.result


def tokens(response: Any) -> dict[str | None, tuple[str, str]]:
    """server_url -> (token, source), from the Recorder's answer."""
    return {c["server_url"]: (c["token"], c["source"]) for c in response.json()["credentials"]}


def test_protocol_is_exported_from_the_package() -> None:
    assert mcp_auth_middleware.MCPCredentialSource is base.MCPCredentialSource
    assert mcp_auth_middleware.SourceRequest is base.SourceRequest


@pytest.mark.parametrize(
    "source", [VaultSource(), AsyncVaultSource(), LockedVault()], ids=["sync", "async", "locked"]
)
def test_custom_sources_satisfy_the_protocol(source: Any) -> None:
    assert isinstance(source, MCPCredentialSource)


@pytest.mark.anyio
@pytest.mark.parametrize("source_class", [VaultSource, AsyncVaultSource], ids=["sync", "async"])
async def test_custom_source_supplies_a_credential(source_class: type[VaultSource]) -> None:
    source = source_class()
    app = make_app(MCPAuthConfig(sources=(source,)))
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"input": "hi"}, headers={"X-User": "alice"})
        unknown = await c.post("/v1/responses", json={"input": "hi"}, headers={"X-User": "eve"})
    assert r.status_code == 200
    assert tokens(r) == {URL: ("vault-alice", source.name)}
    assert unknown.status_code == 200
    assert tokens(unknown) == {}
    assert [req.header("x-user") for req in source.requests] == ["alice", "eve"]
    assert source.requests[0].method == "POST"
    assert source.requests[0].path == "/v1/responses"


# (precedence, winner for URL given by vault+body, winner for OTHER given by vault+provider data)
PLACEMENTS = {
    "first": (("vault", "body", "server_header", "provider_data"), "vault", "vault"),
    "between": (("body", "vault", "provider_data"), "body", "vault"),
    "last": (("body", "provider_data", "vault"), "body", "provider_data"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("source_class", [VaultSource, AsyncVaultSource], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("precedence", "url_winner", "other_winner"), PLACEMENTS.values(), ids=PLACEMENTS.keys()
)
async def test_custom_source_takes_its_place_in_precedence(
    source_class: type[VaultSource],
    precedence: tuple[str, ...],
    url_winner: str,
    other_winner: str,
    audit_log: list[dict[str, Any]],
) -> None:
    """Per server, the first listed source wins; the others are shadowed, custom or built-in."""
    url_vault = source_class(URL, {"alice": "vault-url"})
    url_vault.name = "vault"
    other_vault = source_class(OTHER, {"alice": "vault-other"})
    other_vault.name = "vault_other"
    placed = tuple(
        name for p in precedence for name in (("vault", "vault_other") if p == "vault" else (p,))
    )
    config = MCPAuthConfig(sources=(url_vault, other_vault), precedence=placed)
    app = make_app(config)
    headers = {"X-User": "alice", **provider_data({OTHER: {"Authorization": "Bearer pd-other"}})}
    body = {"tools": [mcp_tool(URL, token="body-url", label="u")]}
    async with client(app) as c:
        r = await c.post("/v1/responses", json=body, headers=headers)
    assert r.status_code == 200
    expected_url = ("vault-url", "vault") if url_winner == "vault" else ("body-url", "body")
    expected_other = (
        ("vault-other", "vault_other") if other_winner == "vault" else ("pd-other", "provider_data")
    )
    assert tokens(r) == {URL: expected_url, OTHER: expected_other}
    shadowed = {
        e["server_url"]: (e["source"], e["shadowed"])
        for e in audit_log
        if e["event"] == CREDENTIAL_RESOLVED
    }
    url_loser = "body" if url_winner == "vault" else "vault"
    other_loser = "provider_data" if other_winner == "vault" else "vault_other"
    assert shadowed[URL] == (expected_url[1], [url_loser])
    assert shadowed[OTHER] == (expected_other[1], [other_loser])


@pytest.mark.anyio
async def test_custom_source_shadows_the_per_server_header() -> None:
    config = MCPAuthConfig(
        sources=(VaultSource(),),
        server_headers=True,
        precedence=("vault", "server_header", "body", "provider_data"),
    )
    app = make_app(config)
    headers = {"X-User": "bob", "X-MCP-srv-Authorization": "Bearer hdr-token"}
    async with client(app) as c:
        r = await c.post(
            "/v1/responses", json={"tools": [mcp_tool(URL, token=None)]}, headers=headers
        )
    assert r.status_code == 200
    assert tokens(r) == {URL: ("vault-bob", "vault")}


@pytest.mark.anyio
async def test_custom_source_not_listed_in_precedence_comes_last() -> None:
    config = MCPAuthConfig(sources=(VaultSource(),))
    assert config.precedence[-1] == "vault"
    assert config.precedence[:-1] == ("body", "server_header", "provider_data")
    app = make_app(config)
    async with client(app) as c:
        both = await c.post(
            "/v1/responses",
            json={"tools": [mcp_tool(URL, token="body-token")]},
            headers={"X-User": "alice"},
        )
        vault_only = await c.post(
            "/v1/responses",
            json={"tools": [mcp_tool(URL, token=None)]},
            headers={"X-User": "alice"},
        )
    assert tokens(both) == {URL: ("body-token", "body")}
    assert tokens(vault_only) == {URL: ("vault-alice", "vault")}


@pytest.mark.anyio
async def test_custom_source_rejection_is_an_openai_style_400_and_the_app_is_not_called() -> None:
    app = make_app(MCPAuthConfig(sources=(LockedVault(),)))
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"input": "hi"}, headers={"X-User": "alice"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == "vault_locked"
    assert error["param"] == "X-User"
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert app.state.recorder.calls == []


@pytest.mark.anyio
async def test_custom_source_rejection_can_carry_its_own_status_and_message() -> None:
    class Forbidding(LockedVault):
        def read(self, request: SourceRequest) -> list[MCPCredential]:
            raise CredentialRejected(
                "vault_forbidden", "X-User", status=403, message="No vault for you."
            )

    app = make_app(MCPAuthConfig(sources=(Forbidding(),)))
    async with client(app) as c:
        r = await c.post("/v1/responses", json={})
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "No vault for you."
    assert r.json()["error"]["code"] == "vault_forbidden"
    assert app.state.recorder.calls == []


NOT_CREDENTIALS = {
    "strings": ["tok"],
    "dicts": [{"token": "tok", "server_url": URL}],
    "none-inside": [None],
}


@pytest.mark.anyio
@pytest.mark.parametrize("result", NOT_CREDENTIALS.values(), ids=NOT_CREDENTIALS.keys())
@pytest.mark.parametrize("source_class", [SloppySource, AsyncSloppySource], ids=["sync", "async"])
async def test_source_returning_non_credentials_is_a_programming_error(
    result: Any, source_class: type[SloppySource]
) -> None:
    app = make_app(MCPAuthConfig(sources=(source_class(result),)))
    async with client(app) as c:
        with pytest.raises(TypeError):
            await c.post("/v1/responses", json={})
    assert app.state.recorder.calls == []


TWO_FOR_ONE_SERVER = {
    "one-url-two-spellings": [
        MCPCredential(token="tok-first", source="sloppy", server_url=URL),
        MCPCredential(
            token="tok-second", source="sloppy", server_url="https://MCP.example.com:443/mcp/"
        ),
    ],
    "same-token-twice": [MCPCredential(token="tok", source="sloppy", server_url=URL)] * 2,
    "one-label": [
        MCPCredential(token="tok-first", source="sloppy", server_label="docs"),
        MCPCredential(token="tok-second", source="sloppy", server_label="DOCS"),
    ],
    "two-defaults": [
        MCPCredential(token="tok-first", source="sloppy"),
        MCPCredential(token="tok-second", source="sloppy"),
    ],
}


@pytest.mark.anyio
@pytest.mark.parametrize("result", TWO_FOR_ONE_SERVER.values(), ids=TWO_FOR_ONE_SERVER.keys())
@pytest.mark.parametrize("with_body", [False, True], ids=["alone", "beside-the-body"])
async def test_source_returning_two_credentials_for_one_server_is_a_programming_error(
    result: list[MCPCredential], with_body: bool
) -> None:
    """Nothing orders two credentials of one source: neither is picked, the app is not
    called, and the error names the source (never a token)."""
    app = make_app(MCPAuthConfig(sources=(SloppySource(result),)))
    body = {"tools": [mcp_tool(OTHER, "from-body", "o")]} if with_body else {}
    async with client(app) as c:
        with pytest.raises(ValueError, match="credential source 'sloppy'") as raised:
            await c.post("/v1/responses", json=body)
    assert "tok" not in str(raised.value)
    assert app.state.recorder.calls == []


@pytest.mark.parametrize("name", ["body", "provider_data", "server_header"], ids=str)
def test_config_refuses_a_custom_source_named_like_a_builtin(name: str) -> None:
    source = VaultSource()
    source.name = name
    with pytest.raises(ValueError, match="sources"):
        MCPAuthConfig(sources=(source,))


def test_config_refuses_two_custom_sources_with_the_same_name() -> None:
    with pytest.raises(ValueError, match="sources"):
        MCPAuthConfig(sources=(VaultSource(), VaultSource(OTHER)))


@pytest.mark.parametrize(
    "precedence",
    [("body", "vault", "nope"), ("bodyy",), ("body", "Provider_Data")],
    ids=["unknown-custom", "typo", "wrong-case"],
)
def test_config_refuses_unknown_names_in_precedence(precedence: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="precedence"):
        MCPAuthConfig(sources=(VaultSource(),), precedence=precedence)


def test_config_refuses_an_object_that_is_not_a_source() -> None:
    with pytest.raises(ValueError, match="sources"):
        MCPAuthConfig(sources=(cast(Any, object()),))


BAD_FROM_VAULT = {
    "token-with-newline": ({"token": "vault-token\n"}, "invalid_authorization", "token"),
    "token-with-space": ({"token": "vault token"}, "invalid_authorization", "token"),
    "header-injection": (
        {"token": "vault-token", "headers": {"X-Key": "a\r\nX-Evil: 1"}},
        "invalid_headers",
        "headers",
    ),
    "relative-url": ({"token": "vault-token", "server_url": "/mcp"}, "invalid_server_url", "url"),
    "ambiguous-url": (
        {"token": "vault-token", "server_url": "https://h/a/%2e%2e%2fb"},
        "invalid_server_url",
        "url",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(("fields", "code", "field"), BAD_FROM_VAULT.values(), ids=BAD_FROM_VAULT)
async def test_a_custom_source_s_invalid_credential_is_a_400_naming_the_source(
    fields: dict[str, Any], code: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The vault makes a credential the built-in checks refuse: the request gets the same
    400 a bad body token gets, naming the source; no secret in the answer or the logs."""

    class LeakyVault:
        name = "vault"
        needs_body = False

        def read(self, request: SourceRequest) -> list[MCPCredential]:
            return [MCPCredential(**{"source": self.name, "server_url": URL, **fields})]

    app = make_app(MCPAuthConfig(sources=(LeakyVault(),)))
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"input": "hi"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        "vault",
        "invalid_request_error",
    )
    assert "vault" in error["message"]
    assert field in error["message"]
    assert app.state.recorder.calls == []
    for secret in ("vault-token", "X-Evil", "%2e%2e"):
        assert secret not in r.text
        assert secret not in caplog.text
