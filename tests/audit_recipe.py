"""Run a logging recipe from ``docs/operations.md`` as it stands, then real traffic.

``python -m tests.audit_recipe RECIPE DIR``: in ``DIR``, runs the block between
``<!-- recipe: RECIPE -->`` and ``<!-- end recipe -->``, then sends :data:`TRAFFIC` through
a Starlette app (``AuthenticationMiddleware`` outside ``MCPAuthMiddleware``, API keys to
callers) with httpx's ASGI transport. The handler logs an event of the application's own,
which must not reach the audit file. A subprocess: the recipe configures logging for the
whole process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Final

import structlog
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from tests.helpers import Recorder, client, make_app, mcp_tool, provider_data

DOCS: Final = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
DOCS_URL: Final = "https://docs.example.com/mcp"
CRM_URL: Final = "https://crm.example.com/mcp"
API_KEYS: Final = {"key-alice": "alice", "key-bob": "bob", "key-carol": "carol", "key-dave": "dave"}
APP_EVENT: Final = "app_handled_request"


def recipe(name: str) -> str:
    """The Python block of the named recipe in ``docs/operations.md``."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(
        rf"<!-- recipe: {re.escape(name)} -->\s*```python\n(.*?)```\s*<!-- end recipe -->",
        text,
        re.S,
    )
    if match is None:
        raise LookupError(f"no recipe {name!r} in {DOCS.name}")
    return match[1]


class ApiKeyBackend(AuthenticationBackend):
    """``X-Api-Key`` to a user; no key, no user (Starlette's ``UnauthenticatedUser``)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        user = API_KEYS.get(conn.headers.get("x-api-key", ""))
        return None if user is None else (AuthCredentials(["authenticated"]), SimpleUser(user))


def _body(*tools: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "input": "hi", "tools": list(tools)}


# (api key or None, JSON body, extra headers, expected status). Tokens are "tok-<who>-<n>".
TRAFFIC: Final[list[tuple[str | None, dict[str, Any], dict[str, str], int]]] = [
    # alice: migrated, body only, two servers.
    ("key-alice", _body(mcp_tool(DOCS_URL, "tok-alice-1", "docs")), {}, 200),
    (
        "key-alice",
        _body(mcp_tool(DOCS_URL, "tok-alice-1", "docs"), mcp_tool(CRM_URL, "tok-alice-2", "crm")),
        {},
        200,
    ),
    # bob: legacy header only.
    (
        "key-bob",
        _body(mcp_tool(DOCS_URL, None, "docs")),
        provider_data({DOCS_URL: {"Authorization": "Bearer tok-bob-1"}}),
        200,
    ),
    (
        "key-bob",
        _body(mcp_tool(CRM_URL, None, "crm")),
        provider_data({CRM_URL: {"Authorization": "Bearer tok-bob-2"}}),
        200,
    ),
    # carol: both carriers for docs; the body wins, the header is shadowed.
    (
        "key-carol",
        _body(mcp_tool(DOCS_URL, "tok-carol-1", "docs")),
        provider_data({DOCS_URL: {"Authorization": "Bearer tok-carol-old"}}),
        200,
    ),
    # nobody authenticated: no caller.
    (None, _body(mcp_tool(DOCS_URL, "tok-anon-1", "docs")), {}, 200),
    # dave: a token with a space is refused.
    ("key-dave", _body(mcp_tool(DOCS_URL, "tok dave", "docs")), {}, 400),
]

#: Every token TRAFFIC sends (none may reach a log).
TOKENS: Final = ("tok-alice-", "tok-bob-", "tok-carol-", "tok-anon-", "tok dave")


class LoggingRecorder(Recorder):
    """The application: logs an event of its own on each request it serves."""

    async def endpoint(self, request: Request) -> JSONResponse:
        structlog.get_logger("app").info(APP_EVENT, path=request.url.path)
        return await super().endpoint(request)


async def send_traffic() -> list[int]:
    app = make_app(recorder=LoggingRecorder())
    app.add_middleware(AuthenticationMiddleware, backend=ApiKeyBackend())  # outside ours
    statuses = []
    async with client(app) as c:
        for key, body, headers, _ in TRAFFIC:
            sent = {**headers, **({"X-Api-Key": key} if key else {})}
            response = await c.post("/v1/responses", json=body, headers=sent)
            statuses.append(response.status_code)
    return statuses


def main(name: str, directory: str) -> None:
    os.chdir(directory)
    exec(compile(recipe(name), f"{DOCS.name}:{name}", "exec"), {"__name__": "recipe"})  # noqa: S102
    statuses = asyncio.run(send_traffic())
    expected = [status for *_, status in TRAFFIC]
    if statuses != expected:
        raise SystemExit(f"statuses {statuses} != {expected}")
    print(json.dumps({"done": name}), file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
