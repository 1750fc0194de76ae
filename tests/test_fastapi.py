"""The FastAPI dependency (``mcp_auth_middleware.fastapi``) behind ``app.add_middleware``."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredentials,
    current_credentials,
)
from mcp_auth_middleware.fastapi import MCPCredentialsDep, get_mcp_credentials
from tests.helpers import client, describe, mcp_tool, provider_data

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"


class ResponsesRequest(BaseModel):
    model: str
    input: str
    tools: list[dict[str, Any]] = []


def make_fastapi(config: MCPAuthConfig | None = None) -> tuple[FastAPI, list[dict[str, Any]]]:
    """A fresh FastAPI app whose handlers record what they were given."""
    calls: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/v1/responses")
    async def create(body: ResponsesRequest, credentials: MCPCredentialsDep) -> dict[str, Any]:
        calls.append({"model": body.model, "tools": body.tools})
        return {"model": body.model, "n_tools": len(body.tools), **describe(credentials)}

    @app.post("/v1/plain")
    async def plain(
        credentials: Annotated[MCPCredentials, Depends(get_mcp_credentials)],
    ) -> dict[str, Any]:
        calls.append({})
        same = credentials is current_credentials()
        return {"same_as_current": same, **describe(credentials)}

    @app.get("/v1/health")
    def health(credentials: MCPCredentialsDep) -> dict[str, Any]:
        return {"n": len(credentials), "is_set": isinstance(credentials, MCPCredentials)}

    app.add_middleware(MCPAuthMiddleware, config=config or MCPAuthConfig())
    return app, calls


@pytest.mark.anyio
async def test_dependency_hands_the_handler_the_request_credentials() -> None:
    app, _ = make_fastapi()
    async with client(app) as c:
        r = await c.post("/v1/plain", json={"tools": [mcp_tool(URL, token="Bearer tok-1")]})
    assert r.status_code == 200
    assert r.json()["same_as_current"] is True
    [cred] = r.json()["credentials"]
    assert (cred["server_url"], cred["token"], cred["source"]) == (URL, "tok-1", "body")


@pytest.mark.anyio
async def test_dependency_works_next_to_a_pydantic_body_model() -> None:
    """The middleware's body read does not starve FastAPI's own parsing of the same body."""
    app, calls = make_fastapi()
    body = {
        "model": "m",
        "input": "hi",
        "tools": [mcp_tool(URL, token="tok-1", label="a"), mcp_tool(OTHER, token=None, label="b")],
    }
    headers = provider_data({OTHER: {"Authorization": "Bearer pd-2"}})
    async with client(app) as c:
        r = await c.post("/v1/responses", json=body, headers=headers)
    assert r.status_code == 200
    data = r.json()
    assert data["model"] == "m"
    assert data["n_tools"] == 2
    assert {c["server_url"]: c["token"] for c in data["credentials"]} == {
        URL: "tok-1",
        OTHER: "pd-2",
    }
    # The model saw the body exactly as sent, authorization included (redact_body is off).
    assert calls == [{"model": "m", "tools": body["tools"]}]


@pytest.mark.anyio
async def test_dependency_is_empty_when_the_request_carries_nothing() -> None:
    app, _ = make_fastapi()
    async with client(app) as c:
        r = await c.get("/v1/health")
        post = await c.post("/v1/plain", json={"input": "no tools"})
    assert r.json() == {"n": 0, "is_set": True}
    assert post.json()["credentials"] == []
    assert post.json()["default"] is None


@pytest.mark.anyio
async def test_pydantic_validation_errors_stay_fastapis() -> None:
    """A body FastAPI refuses still gets FastAPI's 422, credentials or not."""
    app, calls = make_fastapi()
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"tools": [mcp_tool(URL)]})
    assert r.status_code == 422
    assert "detail" in r.json()
    assert calls == []


REJECTIONS = {
    "authorization-in-headers": (
        {"model": "m", "input": "hi", "tools": [mcp_tool(URL, headers={"authorization": "x"})]},
        {},
        "tools[0].headers",
        "authorization_in_headers",
    ),
    "invalid-authorization": (
        {"model": "m", "input": "hi", "tools": [mcp_tool(URL, token="has space")]},
        {},
        "tools[0].authorization",
        "invalid_authorization",
    ),
    "invalid-provider-data": (
        {"model": "m", "input": "hi"},
        {"X-LlamaStack-Provider-Data": "not json"},
        "X-LlamaStack-Provider-Data",
        "invalid_provider_data",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "headers", "param", "code"), REJECTIONS.values(), ids=REJECTIONS.keys()
)
async def test_rejected_request_gets_the_openai_error_and_the_handler_is_not_called(
    body: dict[str, Any], headers: dict[str, str], param: str, code: str
) -> None:
    app, calls = make_fastapi()
    async with client(app) as c:
        r = await c.post("/v1/responses", json=body, headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/json")
    payload = r.json()
    assert set(payload) == {"error"}
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert calls == []


@pytest.mark.anyio
async def test_dependency_outside_the_middleware_gives_an_empty_set() -> None:
    """Without the middleware the dependency still resolves: an empty set, never None."""
    app = FastAPI()

    @app.post("/")
    async def handler(credentials: MCPCredentialsDep) -> dict[str, Any]:
        return {"n": len(credentials), "type": type(credentials).__name__}

    async with client(app) as c:
        r = await c.post("/", json={"tools": [mcp_tool(URL)]})
    assert r.json() == {"n": 0, "type": "MCPCredentials"}
