import pytest

from tests.helpers import client, make_app, mcp_tool


@pytest.mark.anyio
async def test_body_credential_reaches_the_handler() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.post("/v1/responses", json={"tools": [mcp_tool(token="Bearer abc")]})
    assert r.status_code == 200
    assert r.json()["credentials"][0]["token"] == "abc"
