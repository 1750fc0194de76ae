"""A real MCP server (the ``mcp`` SDK's ``MCPServer``; ``FastMCP`` with ``mcp`` 1.x) that knows
its users by bearer token and records what every HTTP request brought it.

.. code-block:: python

    server = RecordingMCPServer({"alice-token": "alice"}, name="calendar")
    with server.running() as url:  # http://127.0.0.1:<port>/mcp
        ...  # your gateway calls the server
    assert server.tokens_seen == {fingerprint("alice-token")}
    assert server.calls == [Call(user="alice", tool="whoami")]

What is recorded holds no secret: a token, and the value of any header that is not in
``PUBLIC_HEADERS`` (or the server's ``public_headers``), is kept only as its fingerprint
(first 12 hex of its SHA-256, :func:`mcp_auth_middleware.credentials.fingerprint`), so a
failing assertion prints nothing a log must not hold. Compare fingerprints:
``fingerprint(token)`` on the test's side.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final, Literal

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing.serving import listening_socket, serve

try:
    from mcp.server.mcpserver import MCPServer
except ImportError:  # mcp 1.x: the same server, under its 1.x name
    from mcp.server.fastmcp import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        FastMCP as MCPServer,
    )

__all__ = [
    "PUBLIC_HEADERS",
    "SCOPE",
    "Auth",
    "Call",
    "RecordedRequest",
    "RecordingMCPServer",
    "TokenMap",
    "Transport",
]

Transport = Literal["streamable-http", "sse"]
Auth = Literal["accepted", "refused", "absent", "not_bearer"]

#: Headers whose values are recorded as they are; every other header's value is recorded
#: only as its fingerprint (``Authorization``, ``Cookie``, ``X-Api-Key``, custom headers).
PUBLIC_HEADERS: Final = frozenset(
    {
        "accept",
        "accept-encoding",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "host",
        "last-event-id",
        "mcp-protocol-version",
        "mcp-session-id",
        "traceparent",
        "user-agent",
        "x-request-id",
    }
)
SCOPE: Final = "mcp"  # the one scope every known token is granted and the server requires
_PATHS: Final[Mapping[str, str]] = {"streamable-http": "/mcp", "sse": "/sse"}


class TokenMap(dict[str, str]):
    """Token -> user. Its ``repr`` names each token by its fingerprint, so pytest can show
    one (as a fixture's value in a failure, say) without showing a token."""

    def __repr__(self) -> str:
        inner = ", ".join(f"<token {fingerprint(t)}>: {u!r}" for t, u in self.items())
        return f"TokenMap({{{inner}}})"


@dataclass(frozen=True)
class Call:
    """One tool call the server ran: whose token made it, and which tool."""

    user: str
    tool: str


@dataclass(frozen=True)
class RecordedRequest:
    """What one HTTP request brought the server, and how it answered.

    ``auth``: ``"accepted"`` (the token is one of the server's: ``user`` is its user),
    ``"refused"`` (a bearer token the server does not know), ``"absent"`` (no
    ``Authorization`` header) or ``"not_bearer"`` (an ``Authorization`` of another scheme).
    ``token``: the fingerprint of the bearer token (``None`` without one). ``headers``: the
    values of the public headers (lower-case names); ``secret_headers``: the fingerprint of
    every other header's value, a ``Bearer <token>`` value by its token's fingerprint (so
    ``secret_headers["authorization"] == token``). A repeated header's values are joined
    with ``", "`` first. ``status``: the response's status code (``None`` if the app
    answered nothing). ``path`` is without the query string, which may carry secrets.
    """

    method: str
    path: str
    status: int | None
    auth: Auth
    user: str | None
    token: str | None
    headers: Mapping[str, str]
    secret_headers: Mapping[str, str]

    @property
    def header_names(self) -> frozenset[str]:
        """Every header name the request carried (lower case)."""
        return frozenset(self.headers) | frozenset(self.secret_headers)


@dataclass
class _Verdict:
    """Filled in by the token verifier while one request passes the SDK's auth middleware."""

    token: str | None = None
    user: str | None = None


_verdict: ContextVar[_Verdict | None] = ContextVar("mcp_auth_middleware_testing_verdict")


def _secret_fingerprint(value: str) -> str:
    scheme, _, rest = value.partition(" ")
    return fingerprint(rest if scheme.lower() == "bearer" and rest else value)


class RecordingMCPServer:
    """An :class:`MCPServer` whose token verifier is a dict of token -> user.

    ``tokens`` is that dict (a :class:`TokenMap`), live: delete an entry to revoke a token
    mid-test. The server has
    one tool, ``whoami``, which answers the caller's user; add your own on ``server`` (the
    SDK's ``MCPServer``) with ``@recording.server.tool()``. A known token is granted the scope
    ``"mcp"``, which the server requires; an unknown or missing one gets the SDK's 401 with
    its ``WWW-Authenticate`` header.

    Records, appended as they happen (from the server's thread):

    * ``requests``: a :class:`RecordedRequest` per HTTP request, when its response starts;
    * ``calls``: a :class:`Call` per tool call;
    * ``rejected``: the fingerprint of each token the verifier refused.

    ``repr()`` shows no token, so neither does a failing assertion that names the server.
    """

    def __init__(
        self,
        tokens: Mapping[str, str],
        *,
        name: str = "whoami",
        public_headers: Iterable[str] = (),
    ) -> None:
        self.tokens = TokenMap(tokens)
        self.name = name
        self.public_headers = PUBLIC_HEADERS | {h.lower() for h in public_headers}
        self.requests: list[RecordedRequest] = []
        self.calls: list[Call] = []
        self.rejected: list[str] = []
        self._url: str | None = None
        self.server: MCPServer = MCPServer(
            name,
            token_verifier=self,
            # INFO would make MCPServer install a rich root log handler (logging.basicConfig).
            log_level="WARNING",
            auth=self._auth_settings("http://127.0.0.1/mcp"),
        )

        @self.server.tool()
        def whoami() -> str:
            """The user the caller's bearer token belongs to."""
            access = get_access_token()
            user = "<anonymous>" if access is None else access.client_id
            self.calls.append(Call(user=user, tool="whoami"))
            return user

    @staticmethod
    def _auth_settings(resource_url: str) -> AuthSettings:
        return AuthSettings(
            issuer_url=AnyHttpUrl("https://auth.example.com"),
            resource_server_url=AnyHttpUrl(resource_url),
            required_scopes=[SCOPE],
            # The verifier is the audience check: every token it knows is this server's.
            validate_token_resource=False,
        )

    def __repr__(self) -> str:
        return (
            f"RecordingMCPServer(name={self.name!r}, url={self._url!r}, "
            f"users={len(self.tokens)}, requests={len(self.requests)}, calls={len(self.calls)})"
        )

    # --- the SDK's TokenVerifier -------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        user = self.tokens.get(token)
        verdict = _verdict.get(None)
        if verdict is not None:
            verdict.token, verdict.user = fingerprint(token), user
        if user is None:
            self.rejected.append(fingerprint(token))
            return None
        return AccessToken(token=token, client_id=user, subject=user, scopes=[SCOPE])

    # --- what the tests read -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The MCP endpoint URL while :meth:`running` (``RuntimeError`` otherwise)."""
        if self._url is None:
            raise RuntimeError(f"MCP server {self.name!r} is not running")
        return self._url

    @property
    def tokens_seen(self) -> set[str]:
        """Fingerprints of every bearer token that reached the server, known or not."""
        return {r.token for r in self.requests if r.token is not None}

    def clear(self) -> None:
        """Forget what was recorded so far (``requests``, ``calls``, ``rejected``)."""
        self.requests.clear()
        self.calls.clear()
        self.rejected.clear()

    # --- the ASGI apps -----------------------------------------------------------------

    def streamable_http_app(self) -> ASGIApp:
        """The SDK's streamable-HTTP app (endpoint ``/mcp``), every request recorded."""
        return self._recording(self.server.streamable_http_app())

    def sse_app(self) -> ASGIApp:
        """The SDK's SSE app (``/sse``, messages to ``/messages/``), every request recorded."""
        return self._recording(self.server.sse_app())

    def app(self, transport: Transport = "streamable-http") -> ASGIApp:
        """:meth:`streamable_http_app` or :meth:`sse_app`, by name."""
        if transport == "sse":
            return self.sse_app()
        return self.streamable_http_app()

    @contextmanager
    def running(self, transport: Transport = "streamable-http") -> Iterator[str]:
        """Serve the server on 127.0.0.1 (a free port); yield its MCP endpoint URL
        (``.../mcp``, or ``.../sse`` for the SSE transport), also ``url`` meanwhile.

        The SDK's ``WWW-Authenticate`` header names this URL's protected-resource metadata.
        """
        if transport not in _PATHS:
            raise ValueError(f"transport: expected one of {sorted(_PATHS)}, got {transport!r}")
        sock = listening_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}{_PATHS[transport]}"
        self.server.settings.auth = self._auth_settings(url)
        with serve(self.app(transport), sock=sock):
            self._url = url
            try:
                yield url
            finally:
                self._url = None

    def _recording(self, app: ASGIApp) -> ASGIApp:
        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            verdict = _Verdict()
            reset = _verdict.set(verdict)
            recorded = False

            def record(status: int | None) -> None:
                nonlocal recorded
                recorded = True
                self.requests.append(self._record(scope, verdict, status))

            async def watch(message: Message) -> None:
                if message["type"] == "http.response.start" and not recorded:
                    record(int(message["status"]))
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                _verdict.reset(reset)
                if not recorded:
                    record(None)

        return recording

    def _record(self, scope: Scope, verdict: _Verdict, status: int | None) -> RecordedRequest:
        joined: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        public = {n: v for n, v in joined.items() if n in self.public_headers}
        secret = {n: _secret_fingerprint(v) for n, v in joined.items() if n not in public}
        auth: Auth
        if verdict.token is not None:
            auth = "accepted" if verdict.user is not None else "refused"
        elif "authorization" in joined:
            auth = "not_bearer"
        else:
            auth = "absent"
        return RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            status=status,
            auth=auth,
            user=verdict.user,
            token=verdict.token,
            headers=public,
            secret_headers=secret,
        )
