"""The fixed public names, their shapes and the package's typing marker."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
import types
from collections.abc import Mapping
from enum import Enum
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import mcp_auth_middleware
from mcp_auth_middleware import (
    CredentialSource,
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredential,
    MCPCredentials,
    current_credentials,
)
from tests.helpers import client, describe, make_app, mcp_tool

URL = "https://mcp.example.com/mcp"

FIXED_NAMES = (
    "MCPAuthMiddleware",
    "MCPAuthConfig",
    "CredentialSource",
    "MCPCredential",
    "MCPCredentials",
    "current_credentials",
    "use_credentials",
    "MCPBearerAuth",
    "mcp_headers",
    "MCPUpstreamAuthError",
)


@pytest.mark.parametrize("name", FIXED_NAMES, ids=FIXED_NAMES)
def test_fixed_name_is_importable_from_the_package_and_listed_in_all(name: str) -> None:
    package = importlib.import_module("mcp_auth_middleware")
    assert getattr(package, name, None) is not None
    assert name in package.__all__


def test_all_is_sorted() -> None:
    assert list(mcp_auth_middleware.__all__) == sorted(mcp_auth_middleware.__all__)


def test_all_has_no_duplicates_and_names_only_existing_attributes() -> None:
    names = mcp_auth_middleware.__all__
    assert len(set(names)) == len(names)
    missing = [name for name in names if not hasattr(mcp_auth_middleware, name)]
    assert not missing


def test_all_is_complete() -> None:
    """Every public name in the package namespace (not a submodule) is in ``__all__``."""
    public = {
        name
        for name, value in vars(mcp_auth_middleware).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(mcp_auth_middleware.__all__) == set()


def test_credential_source_is_a_str_enum_of_the_three_builtin_sources() -> None:
    assert issubclass(CredentialSource, str)
    assert issubclass(CredentialSource, Enum)
    assert {member.name: member.value for member in CredentialSource} == {
        "BODY": "body",
        "PROVIDER_DATA": "provider_data",
        "SERVER_HEADER": "server_header",
    }
    assert CredentialSource("provider_data") is CredentialSource.PROVIDER_DATA
    as_str: str = CredentialSource.BODY
    assert as_str == "body"
    assert str(CredentialSource.SERVER_HEADER) == "server_header"


def test_credential_fields_have_the_documented_types() -> None:
    cred = MCPCredential(
        token="tok-123",
        source=CredentialSource.PROVIDER_DATA,
        server_url=URL,
        server_label="srv",
        headers={"X-Tenant": "acme"},
    )
    assert cred.server_url == URL
    assert cred.server_label == "srv"
    assert isinstance(cred.token, SecretStr)
    assert cred.token.get_secret_value() == "tok-123"
    assert cred.source is CredentialSource.PROVIDER_DATA
    assert isinstance(cred.headers, Mapping)
    assert dict(cred.headers) == {"X-Tenant": "acme"}


def test_credential_defaults_bind_no_server_and_carry_no_extra_headers() -> None:
    cred = MCPCredential(token=SecretStr("tok-123"), source=CredentialSource.BODY)
    assert cred.server_url is None
    assert cred.server_label is None
    assert isinstance(cred.headers, Mapping)
    assert len(cred.headers) == 0


@pytest.mark.parametrize("render", [repr, str], ids=["repr", "str"])
def test_credential_repr_and_str_hide_the_token_and_header_values(
    render: Any,
) -> None:
    cred = MCPCredential(
        token="tok-very-secret",
        source=CredentialSource.PROVIDER_DATA,
        server_url=URL,
        headers={"X-Api-Key": "hdr-very-secret"},
    )
    text = render(cred) + render(MCPCredentials([cred]))
    assert "tok-very-secret" not in text
    assert "hdr-very-secret" not in text
    assert "mcp.example.com" in text  # the repr is still useful


@pytest.mark.parametrize("attribute", ["default", "anything", "__len__"], ids=str)
def test_credentials_set_is_immutable(attribute: str) -> None:
    """No public attribute can be set or added (private ones are private)."""
    creds = MCPCredentials([MCPCredential(token="t", source=CredentialSource.BODY, server_url=URL)])
    with pytest.raises((AttributeError, TypeError)):
        setattr(creds, attribute, None)
    assert len(creds) == 1


LOOKUPS_FOUND = {
    "same": URL,
    "upper-case scheme and host": "HTTPS://MCP.Example.COM/mcp",
    "default port": "https://mcp.example.com:443/mcp",
    "trailing slash": "https://mcp.example.com/mcp/",
    "fragment": "https://mcp.example.com/mcp#section",
}
LOOKUPS_MISSED = {
    "other scheme": "http://mcp.example.com/mcp",
    "other port": "https://mcp.example.com:8443/mcp",
    "other path": "https://mcp.example.com/other",
    "sub path": "https://mcp.example.com/mcp/x",
    "query": "https://mcp.example.com/mcp?tenant=1",
    "other host": "https://mcp.example.org/mcp",
    "not a url": "mcp.example.com/mcp",
}


@pytest.mark.parametrize("lookup", LOOKUPS_FOUND.values(), ids=LOOKUPS_FOUND.keys())
def test_for_server_finds_a_credential_by_normalised_url(lookup: str) -> None:
    cred = MCPCredential(token="t", source=CredentialSource.BODY, server_url=URL)
    assert MCPCredentials([cred]).for_server(lookup) is cred


@pytest.mark.parametrize("lookup", LOOKUPS_MISSED.values(), ids=LOOKUPS_MISSED.keys())
def test_for_server_never_matches_another_server(lookup: str) -> None:
    cred = MCPCredential(token="t", source=CredentialSource.BODY, server_url=URL)
    assert MCPCredentials([cred]).for_server(lookup) is None


def test_for_server_treats_an_empty_path_as_slash() -> None:
    cred = MCPCredential(token="t", source=CredentialSource.BODY, server_url="https://h.example")
    creds = MCPCredentials([cred])
    assert creds.for_server("https://h.example/") is cred
    assert creds.for_server("https://H.EXAMPLE:443") is cred


def test_for_server_finds_a_credential_by_label() -> None:
    first = MCPCredential(
        token="t1", source=CredentialSource.BODY, server_url=URL, server_label="alpha"
    )
    second = MCPCredential(
        token="t2",
        source=CredentialSource.BODY,
        server_url="https://other.example/mcp",
        server_label="beta",
    )
    creds = MCPCredentials([first, second])
    assert creds.for_server("alpha") is first
    assert creds.for_server("beta") is second
    assert creds.for_server("gamma") is None


def test_default_is_the_credential_bound_to_no_server() -> None:
    bound = MCPCredential(token="t1", source=CredentialSource.BODY, server_url=URL)
    unbound = MCPCredential(token="t2", source=CredentialSource.BODY)
    assert MCPCredentials([bound, unbound]).default is unbound
    assert MCPCredentials([bound]).default is None
    assert MCPCredentials().default is None


@pytest.mark.anyio
async def test_tool_runtime_top_level_token_becomes_the_default() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post("/v1/tool-runtime/invoke", json={"authorization": "rt-token"})
    assert r.status_code == 200
    assert r.json()["default"] == "rt-token"


def test_credentials_iterate_in_order_and_have_a_length() -> None:
    items = [
        MCPCredential(token="t1", source=CredentialSource.BODY, server_url=URL),
        MCPCredential(
            token="t2", source=CredentialSource.PROVIDER_DATA, server_url="https://b.example/m"
        ),
        MCPCredential(token="t3", source=CredentialSource.BODY),
    ]
    creds = MCPCredentials(items)
    assert len(creds) == 3
    assert list(creds) == items
    assert len(MCPCredentials()) == 0
    assert list(MCPCredentials()) == []


def test_current_credentials_is_an_empty_set_outside_a_request() -> None:
    creds = current_credentials()
    assert creds is not None
    assert isinstance(creds, MCPCredentials)
    assert len(creds) == 0
    assert creds.default is None
    assert creds.for_server(URL) is None


@pytest.mark.anyio
async def test_current_credentials_is_an_empty_set_in_a_request_without_credentials() -> None:
    seen: list[MCPCredentials] = []

    async def endpoint(request: Request) -> JSONResponse:
        seen.append(current_credentials())
        return JSONResponse({})

    app = Starlette(routes=[Route("/", endpoint, methods=["GET", "POST"])])
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    async with client(app) as c:
        await c.get("/")
        await c.post("/", json={"tools": []})
    assert len(seen) == 2
    assert all(isinstance(creds, MCPCredentials) and len(creds) == 0 for creds in seen)


def test_py_typed_is_shipped() -> None:
    marker = importlib.resources.files("mcp_auth_middleware").joinpath("py.typed")
    assert marker.is_file()


def test_middleware_signature_is_app_then_keyword_only_config() -> None:
    params = list(inspect.signature(MCPAuthMiddleware).parameters.values())
    assert [p.name for p in params] == ["app", "config"]
    assert params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    assert params[1].kind is inspect.Parameter.KEYWORD_ONLY
    assert params[1].default is None


def test_middleware_config_must_be_passed_by_keyword() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    with pytest.raises(TypeError):
        MCPAuthMiddleware(app, MCPAuthConfig())  # type: ignore[call-arg]
    MCPAuthMiddleware(app)  # config defaults


def _starlette(endpoint: Any) -> Any:
    return Starlette(routes=[Route("/v1/responses", endpoint, methods=["POST"])])


def _fastapi(endpoint: Any) -> Any:
    app = FastAPI()
    app.add_route("/v1/responses", endpoint, methods=["POST"])
    return app


@pytest.mark.anyio
@pytest.mark.parametrize("framework", [_starlette, _fastapi], ids=["starlette", "fastapi"])
@pytest.mark.parametrize("config", [None, MCPAuthConfig()], ids=["default-config", "config"])
async def test_add_middleware_works(framework: Any, config: MCPAuthConfig | None) -> None:
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse(describe(current_credentials()))

    app = framework(endpoint)
    if config is None:
        app.add_middleware(MCPAuthMiddleware)
    else:
        app.add_middleware(MCPAuthMiddleware, config=config)
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"tools": [mcp_tool(URL, token="tok-1")]})
    assert r.status_code == 200
    [cred] = r.json()["credentials"]
    assert cred["token"] == "tok-1"
    assert cred["server_url"] == URL


def test_importing_the_package_does_not_import_the_optional_mcp_sdk() -> None:
    """``mcp`` is optional: only ``MCPSessionPool`` (imported lazily) needs it."""
    import subprocess
    import sys

    code = (
        "import sys, mcp_auth_middleware as m\n"
        "assert 'mcp' not in sys.modules, 'imported early'\n"
        "assert m.MCPSessionPool.__name__ == 'MCPSessionPool'\n"
        "assert 'mcp' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
