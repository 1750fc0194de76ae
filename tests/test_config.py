"""Settings: defaults, constructor and environment validation, on/off, paths."""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    ProviderDataMode,
)
from mcp_auth_middleware.paths import path_matcher
from tests.helpers import (
    PROVIDER_DATA,
    ASGIProbe,
    Recorder,
    Wire,
    asgi_scope,
    call_asgi,
    client,
    make_app,
    mcp_tool,
)

URL = "https://mcp.example.com/mcp"


# --- defaults and the constructor -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "default"),
    [
        ("enabled", True),
        ("body", True),
        ("provider_data", "accept"),
        ("provider_data_header", ("X-LlamaStack-Provider-Data", "X-OGX-Provider-Data")),
        ("headers_authorization", "refuse"),
        ("connectors", {}),
        ("server_headers", False),
        ("precedence", ("body", "server_header", "provider_data")),
        ("paths", None),
        ("max_body_bytes", 16 * 1024 * 1024),
        ("redact_body", False),
        ("audit", True),
    ],
)
def test_defaults_are_the_spec_table(field: str, default: Any) -> None:
    assert getattr(MCPAuthConfig(), field) == default


def test_config_is_immutable() -> None:
    config = MCPAuthConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.enabled = False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"precedence": ("body", "vault")}, "precedence", id="unknown-source"),
        pytest.param({"precedence": ("body", "body")}, "precedence", id="duplicate-source"),
        pytest.param(
            {"precedence": ("provider_data", "PROVIDER_DATA")}, "precedence", id="wrong-case"
        ),
        pytest.param({"max_body_bytes": 0}, "max_body_bytes", id="max_body_bytes-0"),
        pytest.param({"max_body_bytes": -1}, "max_body_bytes", id="max_body_bytes-negative"),
        pytest.param({"provider_data": "allow"}, "provider_data", id="provider_data-mode"),
        pytest.param(
            {"provider_data_header": "X Provider Data"}, "provider_data_header", id="header-space"
        ),
        pytest.param({"provider_data_header": ""}, "provider_data_header", id="header-empty"),
        pytest.param({"provider_data_header": ()}, "provider_data_header", id="header-none"),
        pytest.param(
            {"provider_data_header": "X-OGX-Provider-Data,x-ogx-provider-data"},
            "provider_data_header",
            id="header-twice",
        ),
        pytest.param(
            {"provider_data_header": ("X-OGX-Provider-Data", "Content-Length")},
            "provider_data_header",
            id="header-framing-among-several",
        ),
        pytest.param({"headers_authorization": "maybe"}, "headers_authorization", id="ha-bad"),
        pytest.param({"connectors": {"crm": "ftp://x/"}}, "connectors", id="connector-url"),
        pytest.param({"connectors": {"crm": "/mcp"}}, "connectors", id="connector-relative"),
        pytest.param({"connectors": {"": "https://x/mcp"}}, "connectors", id="connector-empty"),
        pytest.param({"connectors": {"a b": "https://x/mcp"}}, "connectors", id="connector-space"),
        pytest.param({"connectors": "crm"}, "connectors", id="connector-no-url"),
        pytest.param(
            {"provider_data_header": "X-Provider:Data"}, "provider_data_header", id="header-colon"
        ),
        pytest.param(
            {"provider_data_header": ("X-Provider-Data\n",)},
            "provider_data_header",
            id="header-trailing-newline",
        ),
        pytest.param(
            {"provider_data_header": "X-Pr\u00f6vider-Data"},
            "provider_data_header",
            id="header-utf8",
        ),
        pytest.param({"paths": ("v1/responses",)}, "paths", id="path-relative"),
        pytest.param({"paths": ("/v1/*", "*/invoke")}, "paths", id="path-glob-first"),
        pytest.param({"unknown_setting": True}, "unknown_setting", id="unknown-field"),
    ],
)
def test_bad_constructor_value_fails_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MCPAuthConfig(**kwargs)


# --- the environment ------------------------------------------------------------------------


def test_empty_environment_gives_the_defaults() -> None:
    assert MCPAuthConfig.from_env({}) == MCPAuthConfig()


def test_variables_of_other_programs_are_ignored() -> None:
    environ = {"PATH": "/usr/bin", "MCP_AUTHX": "1", "MCP_SERVER_URL": "https://x"}
    assert MCPAuthConfig.from_env(environ) == MCPAuthConfig()


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("MCP_AUTH_ENABLED", "false", "enabled", False),
        ("MCP_AUTH_ENABLED", "0", "enabled", False),
        ("MCP_AUTH_ENABLED", "true", "enabled", True),
        ("MCP_AUTH_BODY", "false", "body", False),
        ("MCP_AUTH_BODY", "off", "body", False),
        ("MCP_AUTH_PROVIDER_DATA", "reject", "provider_data", "reject"),
        ("MCP_AUTH_PROVIDER_DATA", "ignore", "provider_data", "ignore"),
        ("MCP_AUTH_PROVIDER_DATA", "accept", "provider_data", "accept"),
        (
            "MCP_AUTH_PROVIDER_DATA_HEADER",
            "X-OGX-Provider-Data",
            "provider_data_header",
            ("X-OGX-Provider-Data",),
        ),
        (
            "MCP_AUTH_PROVIDER_DATA_HEADER",
            " X-OGX-Provider-Data , X-My-Provider-Data ",
            "provider_data_header",
            ("X-OGX-Provider-Data", "X-My-Provider-Data"),
        ),
        ("MCP_AUTH_HEADERS_AUTHORIZATION", "accept", "headers_authorization", "accept"),
        ("MCP_AUTH_HEADERS_AUTHORIZATION", "ACCEPT", "headers_authorization", "accept"),
        ("MCP_AUTH_HEADERS_AUTHORIZATION", "refuse", "headers_authorization", "refuse"),
        (
            "MCP_AUTH_CONNECTORS",
            "connector_dropbox=https://mcp.example.com/dropbox, crm=https://crm.example.com/mcp",
            "connectors",
            {
                "connector_dropbox": "https://mcp.example.com/dropbox",
                "crm": "https://crm.example.com/mcp",
            },
        ),
        ("MCP_AUTH_SERVER_HEADERS", "true", "server_headers", True),
        ("MCP_AUTH_SERVER_HEADERS", "1", "server_headers", True),
        (
            "MCP_AUTH_PRECEDENCE",
            "provider_data,body,server_header",
            "precedence",
            ("provider_data", "body", "server_header"),
        ),
        ("MCP_AUTH_PRECEDENCE", " server_header , body ", "precedence", ("server_header", "body")),
        (
            "MCP_AUTH_PATHS",
            "/v1/responses,/v1/tool-runtime/*",
            "paths",
            ("/v1/responses", "/v1/tool-runtime/*"),
        ),
        ("MCP_AUTH_PATHS", "/v1/*", "paths", ("/v1/*",)),
        ("MCP_AUTH_MAX_BODY_BYTES", "1048576", "max_body_bytes", 1048576),
        ("MCP_AUTH_MAX_BODY_BYTES", "1", "max_body_bytes", 1),
        ("MCP_AUTH_REDACT_BODY", "true", "redact_body", True),
        ("MCP_AUTH_AUDIT", "false", "audit", False),
    ],
)
def test_each_variable_parses(variable: str, value: str, field: str, expected: Any) -> None:
    config = MCPAuthConfig.from_env({variable: value})
    assert getattr(config, field) == expected
    others = {k: v for k, v in MCPAuthConfig().model_dump().items() if k != field}
    assert {k: v for k, v in config.model_dump().items() if k != field} == others


def test_all_variables_together() -> None:
    config = MCPAuthConfig.from_env(
        {
            "MCP_AUTH_ENABLED": "true",
            "MCP_AUTH_BODY": "true",
            "MCP_AUTH_PROVIDER_DATA": "reject",
            "MCP_AUTH_PROVIDER_DATA_HEADER": "X-OGX-Provider-Data",
            "MCP_AUTH_SERVER_HEADERS": "true",
            "MCP_AUTH_PRECEDENCE": "server_header,body,provider_data",
            "MCP_AUTH_PATHS": "/v1/responses",
            "MCP_AUTH_MAX_BODY_BYTES": "2048",
            "MCP_AUTH_REDACT_BODY": "true",
            "MCP_AUTH_AUDIT": "false",
        }
    )
    assert config == MCPAuthConfig(
        provider_data=ProviderDataMode.REJECT,
        provider_data_header=("X-OGX-Provider-Data",),
        server_headers=True,
        precedence=("server_header", "body", "provider_data"),
        paths=("/v1/responses",),
        max_body_bytes=2048,
        redact_body=True,
        audit=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MCP_AUTH_ENABLED", "maybe"),
        ("MCP_AUTH_BODY", "sometimes"),
        ("MCP_AUTH_PROVIDER_DATA", "allow"),
        ("MCP_AUTH_PROVIDER_DATA_HEADER", "X Provider Data"),
        ("MCP_AUTH_SERVER_HEADERS", "perhaps"),
        ("MCP_AUTH_PRECEDENCE", "body,vault"),
        ("MCP_AUTH_PRECEDENCE", "body,body"),
        ("MCP_AUTH_PATHS", "v1/responses"),
        ("MCP_AUTH_MAX_BODY_BYTES", "lots"),
        ("MCP_AUTH_MAX_BODY_BYTES", "16MiB"),
        ("MCP_AUTH_MAX_BODY_BYTES", "0"),
        ("MCP_AUTH_MAX_BODY_BYTES", "-1"),
        ("MCP_AUTH_REDACT_BODY", "yes please"),
        ("MCP_AUTH_AUDIT", "loud"),
    ],
)
def test_bad_value_fails_naming_the_variable(variable: str, value: str) -> None:
    # (?!\w): the variable itself, not a longer one that starts with its name
    with pytest.raises(ValueError, match=rf"{variable}(?!\w)"):
        MCPAuthConfig.from_env({variable: value})


@pytest.mark.parametrize(
    "variable", ["MCP_AUTH_ENABLE", "MCP_AUTH_SERVER_HEADER", "MCP_AUTH_SOURCES", "MCP_AUTH_"]
)
def test_unknown_variable_fails_naming_it(variable: str) -> None:
    with pytest.raises(ValueError, match=rf"{variable}(?!\w)"):
        MCPAuthConfig.from_env({variable: "true"})


# --- enabled=False --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_disabled_middleware_hands_over_the_very_scope_and_receive() -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw, config=MCPAuthConfig(enabled=False))
    body = json.dumps({"tools": [mcp_tool(URL, "tok", headers={"Authorization": "x"})]}).encode()
    scope = asgi_scope()
    receive = Wire([body]).receive
    answer = await call_asgi(app, scope, receive)
    assert answer.status == 200
    [call] = raw.calls
    assert (call.scope, call.receive, call.fingerprints) == (scope, receive, [])
    assert call.scope is scope
    assert call.receive is receive


@pytest.mark.anyio
async def test_disabled_middleware_lets_a_smuggled_authorization_through() -> None:
    recorder = Recorder()
    app = make_app(MCPAuthConfig(enabled=False), recorder)
    body = {"tools": [mcp_tool(URL, "tok", headers={"Authorization": "Bearer smuggled"})]}
    async with client(app) as c:
        response = await c.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []
    assert json.loads(recorder.calls[0]["body"]) == body


@pytest.mark.anyio
async def test_disabled_middleware_reads_no_provider_data() -> None:
    recorder = Recorder()
    app = make_app(MCPAuthConfig(enabled=False), recorder)
    async with client(app) as c:
        response = await c.post("/v1/responses", json={}, headers={PROVIDER_DATA: "{not json"})
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


# --- paths ----------------------------------------------------------------------------------

PATHS = MCPAuthConfig(paths=("/v1/responses", "/v1/tool-runtime/*"))
BAD = {"tools": [mcp_tool(URL, "not a token")]}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path", ["/v1/other", "/v1/responses/abc", "/v2/responses", "/v1/tool-runtime", "/"]
)
async def test_paths_outside_the_patterns_pass_through_even_with_bad_credentials(
    path: str,
) -> None:
    recorder = Recorder()
    async with client(make_app(PATHS, recorder)) as c:
        response = await c.post(path, json=BAD)
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/tool-runtime/invoke"])
async def test_paths_matching_a_pattern_are_read(path: str) -> None:
    recorder = Recorder()
    async with client(make_app(PATHS, recorder)) as c:
        refused = await c.post(path, json=BAD)
        accepted = await c.post(path, json={"tools": [mcp_tool(URL, "tok-p")]})
    assert refused.status_code == 400
    assert accepted.status_code == 200
    assert [c["token"] for c in recorder.calls[0]["credentials"]] == ["tok-p"]
    assert len(recorder.calls) == 1


PATTERN_PARTS = ["/v1", "/responses", "/a", "/", "*", "?", "[ab]", "[!a]", "x", "."]
PATH_PARTS = ["/v1", "/responses", "/a", "/b", "/", "x", ".", "*", "?", "[", "\n"]


@given(
    st.lists(
        st.lists(st.sampled_from(PATTERN_PARTS), max_size=4).map(lambda p: "/" + "".join(p)),
        min_size=1,
        max_size=4,
    ),
    st.lists(st.sampled_from(PATH_PARTS), max_size=5).map(lambda p: "/" + "".join(p)),
)
def test_path_matching_is_fnmatch_of_any_pattern(patterns: list[str], path: str) -> None:
    """Literal patterns go through a set, the others through a regular expression: the
    answer is fnmatch's, case-insensitively, for any of the patterns, against the path as
    sent or with runs of "/" merged and one trailing "/" removed; a path holding a control
    character is always guarded."""
    merged = re.sub("//+", "/", path)
    forms = {path, merged, merged[:-1] if len(merged) > 1 and merged.endswith("/") else merged}
    expected = not path.isprintable() or any(
        re.fullmatch(fnmatch.translate(p), f, re.IGNORECASE) for p in patterns for f in forms
    )
    assert path_matcher(patterns)({"path": path, "root_path": ""}) == expected


@pytest.mark.anyio
async def test_paths_from_the_environment_restrict_reading() -> None:
    config = MCPAuthConfig.from_env({"MCP_AUTH_PATHS": "/v1/tool-runtime/*"})
    recorder = Recorder()
    async with client(make_app(config, recorder)) as c:
        passed = await c.post("/v1/responses", json=BAD)
        refused = await c.post("/v1/tool-runtime/invoke", json=BAD)
    assert (passed.status_code, refused.status_code) == (200, 400)
