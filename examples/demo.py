"""``make demo``: three callers, two MCP servers, one gateway; each token reaches only its server.

Everything runs on 127.0.0.1: two real MCP servers (``calendar`` and ``files``, the testing
kit's ``RecordingMCPServer``: the ``mcp`` SDK's server, verifying bearer tokens against its
own users and recording every HTTP request it gets) and the example gateway
(``examples/gateway.py``: FastAPI with ``MCPAuthMiddleware``). Each caller has one token per
server and asks both servers ``whoami``:

* alice sends her tokens in the body (``tools[].authorization``);
* bob in the legacy ``X-LlamaStack-Provider-Data`` header;
* carol in both at once, with different tokens: the body wins, the provider data is shadowed;
* mallory smuggles an ``Authorization`` into a tool's ``headers``, and is refused.

Each caller authenticates to the gateway with a key of its own (Starlette's
``AuthenticationMiddleware``, outside ``MCPAuthMiddleware``), so every audit event names the
caller. The demo prints what each server answered, each server's own record of the tokens
it received, and the audit events; ``--audit-log PATH`` also writes the audit events as
JSON lines, which ``python -m mcp_auth_middleware.report PATH`` reads. It exits 0 if every
token reached only its own server and the body won for carol, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from examples.gateway import create_app
from mcp_auth_middleware import AUDIT_LOGGER, MCPAuthConfig
from mcp_auth_middleware.testing import (
    RecordedRequest,
    RecordingMCPServer,
    capture_audit,
    fingerprint,
    serve,
    write_json_lines,
)

SERVERS: Final = ("calendar", "files")
PROVIDER_DATA: Final = "X-LlamaStack-Provider-Data"
WIDTH: Final = 100


def token(user: str, server: str) -> str:
    """The demo's token of ``user`` for ``server`` (every server knows only its own)."""
    return f"{user}-{server}-token"


def gateway_key(caller: str) -> str:
    """The key ``caller`` authenticates to the gateway with (never sent to an MCP server)."""
    return f"gateway-key-{caller}"


class GatewayKeys(AuthenticationBackend):
    """The gateway's own authentication: ``Authorization: Bearer <gateway key>``."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        scheme, _, key = conn.headers.get("authorization", "").partition(" ")
        caller = key.removeprefix("gateway-key-")
        if scheme.lower() != "bearer" or key != gateway_key(caller):
            return None
        return AuthCredentials(["caller"]), SimpleUser(caller)


@dataclass(frozen=True)
class Caller:
    name: str
    how: str
    body: bool  # tokens in tools[].authorization
    provider_data_user: str | None  # tokens of this user in X-LlamaStack-Provider-Data

    def request(self, urls: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """The caller's ``POST /v1/responses`` body and headers: one MCP tool per server."""
        tools = []
        for server, url in urls.items():
            tool = {"type": "mcp", "server_label": server, "server_url": url}
            if self.body:
                tool["authorization"] = token(self.name, server)
            tools.append(tool)
        headers = {
            "X-Request-ID": f"demo-{self.name}",
            "Authorization": f"Bearer {gateway_key(self.name)}",
        }
        if self.provider_data_user is not None:
            user = self.provider_data_user
            mcp_headers = {
                url: {"Authorization": f"Bearer {token(user, server)}"}
                for server, url in urls.items()
            }
            headers[PROVIDER_DATA] = json.dumps({"mcp_headers": mcp_headers})
        return {"model": "demo", "input": "whoami", "tools": tools}, headers


CALLERS: Final = (
    Caller("alice", "tokens in the body (tools[].authorization)", True, None),
    Caller("bob", f"tokens in {PROVIDER_DATA}", False, "bob"),
    Caller("carol", "body and provider data, different tokens", True, "carol-legacy"),
)
# carol's provider-data tokens belong to a user of their own: had they been sent, the
# servers would answer "carol-legacy".
USERS: Final = ("alice", "bob", "carol", "carol-legacy")


@dataclass
class Outcome:
    """What the demo saw: the answers, the servers' records, the audit events."""

    answers: dict[str, dict[str, str | None]] = field(default_factory=dict)  # caller -> server
    refused: tuple[int, str | None] = (0, None)  # mallory: status, error code
    reached_during_refusal: int = 0  # HTTP requests the servers got while mallory was refused
    records: dict[str, list[RecordedRequest]] = field(default_factory=dict)  # server -> requests
    urls: dict[str, str] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)


def run(config: MCPAuthConfig | None = None) -> Outcome:
    """Start the servers and the gateway, send the four callers' requests, stop everything."""
    outcome = Outcome()
    with capture_audit() as log, ExitStack() as stack:
        servers = {
            name: RecordingMCPServer({token(u, name): u for u in USERS}, name=name)
            for name in SERVERS
        }
        for name, server in servers.items():
            outcome.urls[name] = stack.enter_context(server.running())
        app = create_app(config or MCPAuthConfig())
        gateway = stack.enter_context(serve(AuthenticationMiddleware(app, backend=GatewayKeys())))
        client = stack.enter_context(httpx.Client(base_url=gateway, timeout=30))
        for caller in CALLERS:
            body, headers = caller.request(outcome.urls)
            response = client.post("/v1/responses", json=body, headers=headers)
            response.raise_for_status()
            items = response.json()["output"]
            outcome.answers[caller.name] = {
                i["server_label"]: i.get("output") for i in items if i["type"] == "mcp_call"
            }
        before = sum(len(s.requests) for s in servers.values())
        smuggled = {
            "type": "mcp",
            "server_label": "calendar",
            "server_url": outcome.urls["calendar"],
            "headers": {"Authorization": f"Bearer {token('mallory', 'calendar')}"},
        }
        refused = client.post(
            "/v1/responses",
            json={"model": "demo", "input": "whoami", "tools": [smuggled]},
            headers={
                "X-Request-ID": "demo-mallory",
                "Authorization": f"Bearer {gateway_key('mallory')}",
            },
        )
        outcome.refused = (refused.status_code, refused.json().get("error", {}).get("code"))
        outcome.reached_during_refusal = sum(len(s.requests) for s in servers.values()) - before
        stack.close()  # the gateway first (its pooled sessions end), then the servers
        outcome.records = {name: list(s.requests) for name, s in servers.items()}
    outcome.audit = [e for e in log if e.get("logger") == AUDIT_LOGGER]
    return outcome


# --- the checks ------------------------------------------------------------------------


def foreign_tokens(outcome: Outcome) -> dict[str, set[str]]:
    """Per server, the fingerprints it received that are not of a token issued for it."""
    own = {s: {fingerprint(token(u, s)) for u in USERS} for s in SERVERS}
    return {
        server: {r.token for r in records if r.token is not None} - own[server]
        for server, records in outcome.records.items()
    }


def checks(outcome: Outcome) -> list[tuple[bool, str]]:
    """Each claim the demo makes, and whether it held."""
    foreign = foreign_tokens(outcome)
    expected = {s: {fingerprint(token(c.name, s)) for c in CALLERS} for s in SERVERS}
    received = {
        s: {r.token for r in records if r.token is not None}
        for s, records in outcome.records.items()
    }
    shadowed = [
        (e.get("source"), e.get("shadowed"))
        for e in outcome.audit
        if e.get("request_id") == "demo-carol" and e.get("event") == "mcp_credential_resolved"
    ]
    return [
        (
            all(not f for f in foreign.values()) and bool(outcome.records),
            "each token reached only its own server ("
            + ", ".join(f"{s}: {len(foreign.get(s, ()))} foreign" for s in SERVERS)
            + ")",
        ),
        (
            all(outcome.answers.get(c.name) == {s: c.name for s in SERVERS} for c in CALLERS),
            "each caller was answered as themselves by both servers",
        ),
        (
            received == expected,
            "each server received exactly the tokens sent for it (carol's shadowed ones: never)",
        ),
        (
            shadowed == [("body", ["provider_data"])] * len(SERVERS),
            "carol: the body won on both servers, her provider data shadowed",
        ),
        (
            outcome.refused == (400, "authorization_in_headers")
            and outcome.reached_during_refusal == 0,
            "mallory: refused with 400 authorization_in_headers; no server was called",
        ),
    ]


# --- the report ------------------------------------------------------------------------


def _summary(requests: Sequence[RecordedRequest]) -> str:
    """``4 POST, 1 GET, 1 DELETE; all 2xx`` (or the statuses, when not all were)."""
    methods = ", ".join(f"{n} {m}" for m, n in Counter(r.method for r in requests).items())
    if all(r.status is not None and 200 <= r.status < 300 for r in requests):
        return f"{methods}; all 2xx"
    statuses = ", ".join(f"{n}x {s}" for s, n in Counter(r.status for r in requests).items())
    return f"{methods}; {statuses}"


def report(outcome: Outcome, out: Callable[[str], None]) -> bool:
    """Print what happened and the checks; True if every check held."""
    out("Two MCP servers (the mcp SDK's), each knowing only its own users' tokens:")
    for server, url in outcome.urls.items():
        out(f"  {server:9} {url}")
    out("")
    out("Callers -> the gateway (FastAPI + MCPAuthMiddleware) -> whoami on both servers:")
    for caller in CALLERS:
        answers = outcome.answers.get(caller.name, {})
        said = "".join(f"{s}: {answers.get(s)!s:8} " for s in SERVERS)
        out(f"  {caller.name:8} {caller.how:44} {said}".rstrip())
    status, code = outcome.refused
    out(f"  {'mallory':8} {'Authorization smuggled in tools[].headers':44} {status} {code}")
    out("")
    out("What each MCP server received, from its own record of every HTTP request:")
    for server, records in outcome.records.items():
        by_token: dict[str | None, list[RecordedRequest]] = {}
        for r in records:
            by_token.setdefault(r.token, []).append(r)
        for i, (fp, requests) in enumerate(by_token.items()):
            who = ", ".join(sorted({r.user or r.auth for r in requests}))
            out(
                f"  {server if i == 0 else '':9} token {fp or '(none)':12} -> {who:6} "
                f"{len(requests):2} requests ({_summary(requests)})"
            )
    legacy = ", ".join(f"{s} {fingerprint(token('carol-legacy', s))}" for s in SERVERS)
    out(f"  carol's shadowed provider-data tokens ({legacy}): in no record")
    out("")
    names = {url: name for name, url in outcome.urls.items()}
    out(f"Audit events (structlog logger {AUDIT_LOGGER!r}):")
    out(
        f"  {'caller':8} {'request_id':13} {'event':9} {'server':9} {'source':14} "
        f"{'shadowed':18} fingerprint"
    )
    for e in outcome.audit:
        event = e["event"].removeprefix("mcp_credential_")
        head = f"  {e.get('caller')!s:8} {e['request_id']!s:13} {event:9}"
        if e["event"] == "mcp_credential_resolved":
            shadowed = json.dumps(e["shadowed"])
            server = names.get(e["server_url"], e["server_url"])
            out(f"{head} {server!s:9} {e['source']:14} {shadowed:18} {e['fingerprint']}")
        else:
            out(f"{head} code {e['code']}, param {e['param']}")
    example = token("alice", "calendar")
    digest = hashlib.sha256(example.encode()).hexdigest()[:12]
    out("")
    out("fingerprint: the first 12 hex digits of the token's SHA-256, so logs and records can")
    out("  name a token without holding it. Check one (alice's calendar token, above):")
    out(f"  printf %s {example} | sha256sum | cut -c1-12   ->  {digest}")
    out("request_id: the caller's X-Request-ID header (asgi-correlation-id's id when installed);")
    out("  null when a request has neither.")
    out("caller: who the gateway authenticated (scope['user'], set by Starlette's")
    out("  AuthenticationMiddleware in front of MCPAuthMiddleware; see docs/operations.md).")
    out("")
    results = checks(outcome)
    out("Checks:")
    for ok, claim in results:
        out(f"  {'ok  ' if ok else 'FAIL'} {claim}")
    passed = all(ok for ok, _ in results)
    out("demo: " + ("OK" if passed else "FAILED"))
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--audit-log",
        type=Path,
        metavar="PATH",
        help="also write the audit events to PATH, one JSON object per line",
    )
    args = parser.parse_args(argv)
    for noisy in ("mcp", "httpx", "httpx2", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    outcome = run()
    passed = report(outcome, print)
    if args.audit_log is not None:
        with args.audit_log.open("w", encoding="utf-8") as f:
            write_json_lines(outcome.audit, f)
        print(f"audit events: {len(outcome.audit)} JSON lines in {args.audit_log}")
        print(f"the migration report: python -m mcp_auth_middleware.report {args.audit_log}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
