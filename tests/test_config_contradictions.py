"""Settings that cannot mean what they say fail at start-up, naming the field.

A switch turned on and then left out of the order that decides which sources are asked, a
redaction of a body that is never read, an empty order: each would run quietly and do less
than the operator asked. Each must be a ``ValueError`` from the constructor (and from
``from_env``) that names a field it is about. Configurations that do mean something must
still be accepted.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from starlette.types import ASGIApp

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware, ProviderDataMode
from mcp_auth_middleware.credentials import fingerprint
from tests.helpers import (
    AUTHORIZATION_IN_PROVIDER_DATA,
    PROVIDER_DATA,
    SMUGGLED_URL,
    ASGIProbe,
    NothingSource,
    run_asgi,
)


def naming(*fields: str) -> str:
    """A ``match`` for an error message that names one of ``fields``."""
    return "|".join(re.escape(f) for f in fields)


CONTRADICTIONS = [
    pytest.param({"precedence": ()}, ("precedence",), id="empty-precedence"),
    pytest.param({"precedence": []}, ("precedence",), id="empty-precedence-list"),
    pytest.param({"precedence": ""}, ("precedence",), id="empty-precedence-string"),
    pytest.param(
        {"server_headers": True, "precedence": ["body"]},
        ("server_headers", "server_header", "precedence"),
        id="server-headers-on-but-not-in-precedence",
    ),
    pytest.param(
        {"provider_data": "accept", "precedence": ["body"]},
        ("provider_data", "precedence"),
        id="provider-data-accept-but-not-in-precedence",
    ),
    pytest.param(
        {"provider_data": ProviderDataMode.ACCEPT, "precedence": ["body", "server_header"]},
        ("provider_data", "precedence"),
        id="provider-data-enum-accept-but-not-in-precedence",
    ),
    pytest.param(
        {"sources": (NothingSource(),), "precedence": ["body", "provider_data"]},
        ("sources", "precedence", "nothing"),
        id="custom-source-not-in-explicit-precedence",
    ),
    pytest.param(
        {"redact_body": True, "body": False},
        ("redact_body", "body"),
        id="redact-a-body-that-is-not-read",
    ),
    pytest.param(
        {"redact_body": True, "precedence": ["provider_data"]},
        ("redact_body", "precedence"),
        id="redact-with-body-not-in-precedence",
    ),
    pytest.param({"max_tools": 0}, ("max_tools",), id="max-tools-0"),
    pytest.param({"max_tools": -1}, ("max_tools",), id="max-tools-negative"),
    pytest.param({"max_tools": 4097}, ("max_tools",), id="max-tools-above-4096"),
    pytest.param({"max_tools": 1.5}, ("max_tools",), id="max-tools-fraction"),
]


@pytest.mark.parametrize(("kwargs", "fields"), CONTRADICTIONS)
def test_a_setting_that_cannot_mean_what_it_says_fails_naming_the_field(
    kwargs: dict[str, Any], fields: tuple[str, ...]
) -> None:
    if "max_tools" in kwargs:  # it must exist at all: "unknown field" names it too
        MCPAuthConfig.model_validate({"max_tools": 1})
    with pytest.raises(ValueError, match=naming(*fields)):
        MCPAuthConfig(**kwargs)


MEANINGFUL = [
    pytest.param({"precedence": ["body"]}, id="body-only-provider-data-left-at-default"),
    pytest.param({"provider_data": "reject", "precedence": ["body"]}, id="reject-outside"),
    pytest.param({"provider_data": "ignore", "precedence": ["body"]}, id="ignore-outside"),
    pytest.param({"server_headers": False, "precedence": ["body"]}, id="server-headers-off"),
    pytest.param({"sources": (NothingSource(),)}, id="custom-source-default-precedence"),
    pytest.param(
        {"sources": (NothingSource(),), "precedence": ["nothing", "body", "provider_data"]},
        id="custom-source-placed",
    ),
    pytest.param({"redact_body": True}, id="redact-with-defaults"),
    pytest.param({"redact_body": True, "precedence": ["provider_data", "body"]}, id="redact-body"),
    pytest.param(
        {"body": False, "precedence": ["provider_data"]}, id="body-off-provider-data-only"
    ),
    pytest.param({"max_tools": 1}, id="max-tools-1"),
    pytest.param({"max_tools": 4096}, id="max-tools-4096"),
]


@pytest.mark.parametrize("kwargs", MEANINGFUL)
def test_a_setting_that_means_something_is_accepted(kwargs: dict[str, Any]) -> None:
    MCPAuthConfig(**kwargs)


def test_custom_sources_come_last_with_the_default_precedence() -> None:
    config = MCPAuthConfig(sources=(NothingSource(),))
    assert config.precedence[-1] == "nothing"
    assert set(config.precedence) == {"body", "server_header", "provider_data", "nothing"}


def _provider_data_authorization(token: str) -> list[tuple[bytes, bytes]]:
    value = json.dumps({"mcp_headers": {SMUGGLED_URL: {"Authorization": f"Bearer {token}"}}})
    return [(PROVIDER_DATA.lower().encode(), value.encode())]


async def _ask(app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> tuple[int | None, str | None]:
    answer = await run_asgi(app, [b""], headers=headers, method="POST")
    return answer.status, answer.code


@pytest.mark.anyio
@pytest.mark.parametrize("precedence", [("body",), ("body", "server_header")])
async def test_reject_refuses_provider_data_credentials_whatever_precedence_says(
    precedence: tuple[str, ...],
) -> None:
    probe = ASGIProbe()
    config = MCPAuthConfig(provider_data=ProviderDataMode.REJECT, precedence=precedence)
    app = MCPAuthMiddleware(probe, config=config)
    assert await _ask(app, _provider_data_authorization("reject-me")) == (
        400,
        AUTHORIZATION_IN_PROVIDER_DATA,
    )
    assert probe.calls == []


# --- the environment ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["REJECT", "Reject", " reject ", "rEjEcT"])
def test_env_enum_values_are_case_insensitive(value: str) -> None:
    config = MCPAuthConfig.from_env({"MCP_AUTH_PROVIDER_DATA": value})
    assert config.provider_data is ProviderDataMode.REJECT


@pytest.mark.parametrize(
    "value",
    ["BODY,PROVIDER_DATA", "Body, Provider_Data", "body,PROVIDER_data", " BODY , provider_data "],
)
def test_env_builtin_source_names_are_case_insensitive(value: str) -> None:
    config = MCPAuthConfig.from_env({"MCP_AUTH_PRECEDENCE": value})
    assert config.precedence == ("body", "provider_data")


@pytest.mark.parametrize(
    ("environ", "fields"),
    [
        pytest.param(
            {"MCP_AUTH_SERVER_HEADERS": "true", "MCP_AUTH_PRECEDENCE": "body"},
            ("MCP_AUTH_SERVER_HEADERS", "MCP_AUTH_PRECEDENCE", "server_header", "precedence"),
            id="server-headers",
        ),
        pytest.param(
            {"MCP_AUTH_PROVIDER_DATA": "accept", "MCP_AUTH_PRECEDENCE": "body"},
            ("MCP_AUTH_PROVIDER_DATA", "MCP_AUTH_PRECEDENCE", "provider_data", "precedence"),
            id="provider-data",
        ),
        pytest.param(
            {"MCP_AUTH_REDACT_BODY": "true", "MCP_AUTH_BODY": "false"},
            ("MCP_AUTH_REDACT_BODY", "MCP_AUTH_BODY", "redact_body"),
            id="redact-body",
        ),
        pytest.param(
            {"MCP_AUTH_MAX_TOOLS": "0"}, ("MCP_AUTH_MAX_TOOLS", "max_tools"), id="max-tools"
        ),
    ],
)
def test_env_contradictions_fail_naming_the_variable(
    environ: dict[str, str], fields: tuple[str, ...]
) -> None:
    if "MCP_AUTH_MAX_TOOLS" in environ:  # it must exist at all: "unknown" names it too
        MCPAuthConfig.from_env({"MCP_AUTH_MAX_TOOLS": "5"})
    with pytest.raises(ValueError, match=naming(*fields)):
        MCPAuthConfig.from_env(environ)


def test_env_max_tools_is_read() -> None:
    assert MCPAuthConfig.from_env({"MCP_AUTH_MAX_TOOLS": "5"}).model_dump()["max_tools"] == 5


@pytest.mark.anyio
async def test_the_middleware_without_config_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_AUTH_PROVIDER_DATA", "REJECT")
    probe = ASGIProbe()
    app = MCPAuthMiddleware(probe)
    assert app.config.provider_data is ProviderDataMode.REJECT
    assert await _ask(app, _provider_data_authorization("env-reject")) == (
        400,
        AUTHORIZATION_IN_PROVIDER_DATA,
    )
    assert probe.calls == []


@pytest.mark.anyio
async def test_the_middleware_without_config_reads_paths_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_AUTH_PATHS", "/only/here")
    probe = ASGIProbe()
    app = MCPAuthMiddleware(probe)
    token = "env-paths-token"
    headers = _provider_data_authorization(token)
    answer = await run_asgi(app, [b""], headers=headers, method="POST", path="/elsewhere")
    assert answer.status == 200
    assert probe.calls[0].fingerprints == []
    answer = await run_asgi(app, [b""], headers=headers, method="POST", path="/only/here")
    assert answer.status == 200
    assert probe.calls[1].fingerprints == [fingerprint(token)]


def test_a_bad_environment_fails_when_the_middleware_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_AUTH_PRECEDENCE", "")
    with pytest.raises(ValueError, match=naming("MCP_AUTH_PRECEDENCE", "precedence")):
        MCPAuthMiddleware(ASGIProbe())
