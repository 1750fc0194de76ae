"""Credential-keyed reuse of MCP client sessions: :class:`MCPSessionPool`.

An ``mcp`` 2.x server binds a session to the credential that opened it: the same session
used with another token gets ``404 Session not found``. So a pooled session is keyed by the
normalised server URL *and* the credential's fingerprint (12 hex of the token's SHA-256,
never the token), and only a borrower with that very credential gets it back. The key also
holds the transport (streamable HTTP or SSE) and the borrower's *partition* (a caller's
identity, a conversation), so that callers who share a token never share a session.
A server that refuses the credential (401/403) raises :class:`MCPUpstreamAuthError`.

Each pooled session is opened, held and closed by one long-lived task in the pool's task
group (anyio cancel scopes must exit in the task that entered them), and talks through its
own ``httpx2`` client whose ``auth`` is ``MCPBearerAuth(credentials=[that credential])``: its
background GET stream and its closing DELETE carry the session's token whichever request
borrowed it last, and a borrower's context can never put another token on it.

Requires the ``mcp`` extra; ``import mcp_auth_middleware`` does not import this module.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import hmac
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, NamedTuple, Protocol, TypeVar, get_args

from mcp_auth_middleware._mcp_sdk import mcp2_required

try:  # written for the mcp SDK 2.x: on 1.x, say so at import rather than fail later
    import httpx2
    from mcp import MCPError
except ImportError as exc:
    raise mcp2_required("MCPSessionPool (mcp_auth_middleware.sessions)", exc) from exc

import anyio
import anyio.abc
import structlog
from mcp import ClientSession, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ListToolsResult
from mcp_types import INVALID_REQUEST

from mcp_auth_middleware.context import current_credentials, use_credentials
from mcp_auth_middleware.credentials import MCPCredential, MCPCredentials, MCPServerHeaders
from mcp_auth_middleware.downstream import InsecureTransportError, MCPBearerAuth
from mcp_auth_middleware.upstream import (
    MCPUpstreamAuthError,
    capture_refusals,
    find_refusal,
    record_refusal,
)
from mcp_auth_middleware.urls import (
    ServerURL,
    is_loopback_host,
    parse_server_url,
    redacted_url,
)

__all__ = [
    "SESSIONS_LOGGER",
    "SESSION_CLOSED",
    "SESSION_FAILED",
    "SESSION_OPENED",
    "HTTPClientFactory",
    "MCPSessionPool",
    "MCPSessionPoolStats",
    "PoolClosedError",
    "Transport",
    "is_session_dropped",
]

SESSIONS_LOGGER: Final = "mcp_auth_middleware.sessions"
SESSION_OPENED: Final = "mcp_session_opened"
SESSION_CLOSED: Final = "mcp_session_closed"
SESSION_FAILED: Final = "mcp_session_failed"

POOL_NOT_OPEN: Final = "MCPSessionPool is not open: use it as `async with MCPSessionPool() as pool`"
CREDENTIAL_FOR_OTHER_SERVER: Final = "the credential given is bound to another server"
DOT_SEGMENTS: Final = "server URL path has dot segments: give the path they resolve to"
INSECURE_HTTP: Final = (
    "refusing to send an MCP credential over plain http to a non-loopback host; "
    "use https, or MCPSessionPool(allow_insecure_http=True) if the network is trusted"
)

# What the mcp 2.x client raises when the server no longer knows the session: the server's
# JSON-RPC error body for a 404 ("Session not found"), or the transport's own stand-in for a
# 404 without one ("Session terminated"). Both carry INVALID_REQUEST.
_DROPPED_MESSAGES: Final = frozenset({"Session not found", "Session terminated"})

# The SDK's read timeout for response streams (a tool may take long; the GET stream idles).
_READ_TIMEOUT: Final = 300.0

_T = TypeVar("_T")

#: How a session talks to its server: ``"streamable-http"``, ``"sse"`` (the older HTTP+SSE
#: transport), or ``"auto"``: SSE when the URL's path ends in ``/sse``, else streamable HTTP.
Transport = Literal["auto", "streamable-http", "sse"]
_TRANSPORTS: Final = frozenset(get_args(Transport))


def _transport_of(server: ServerURL, transport: Transport) -> Literal["streamable-http", "sse"]:
    if transport == "auto":
        return "sse" if server.path.rsplit("/", 1)[-1] == "sse" else "streamable-http"
    return transport


def is_session_dropped(exc: BaseException) -> bool:
    """True when ``exc`` says the server no longer knows the MCP session (HTTP 404).

    An ``mcp`` 2.x server answers so for a session it has expired, deleted or lost in a
    restart, and for a session used with another credential than the one that opened it.
    """
    return (
        isinstance(exc, MCPError)
        and exc.code == INVALID_REQUEST
        and exc.message in _DROPPED_MESSAGES
    )


class PoolClosedError(RuntimeError):
    """The pool is not open (before ``async with``, or after it exited)."""


class HTTPClientFactory(Protocol):
    """Builds the ``httpx2.AsyncClient`` of one session (proxies, TLS settings, event hooks).

    It must use the ``auth`` and ``timeout`` it is given.
    """

    def __call__(self, *, auth: httpx2.Auth, timeout: httpx2.Timeout) -> httpx2.AsyncClient: ...


def _default_client(*, auth: httpx2.Auth, timeout: httpx2.Timeout) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(auth=auth, timeout=timeout)


@dataclass(frozen=True, slots=True)
class MCPSessionPoolStats:
    """Counters since the pool was created (a snapshot: read ``pool.stats`` again)."""

    opened: int = 0
    """MCP sessions opened (initialised), pooled and temporary."""
    reused: int = 0
    """Borrows served by a pooled session that was already open or opening."""
    evicted: int = 0
    """Idle pooled sessions closed to make room (least recently used first)."""
    expired: int = 0
    """Pooled sessions closed after ``idle_timeout`` seconds unused."""
    replaced: int = 0
    """Pooled sessions discarded because the server had dropped them."""
    temporary: int = 0
    """Unpooled sessions, closed after one use (the pool was full of busy sessions)."""


class _Key(NamedTuple):
    server: str  # normalised URL; may hold a query, so never logged (``loggable`` is)
    fingerprint: str | None
    # A digest of the extra headers: one caller may send the same token with and without
    # them (body vs provider data), and each variant keeps a session of its own.
    headers: str | None = None
    transport: str = "streamable-http"
    # The borrower's partition (a caller's identity, a conversation): callers who share a
    # token never share a session unless they name the same partition.
    partition: str | None = None

    def __repr__(self) -> str:  # the URL's query may hold a secret; a partition may be PII
        partition = None if self.partition is None else _digest(self.partition)
        return (
            f"_Key(server={redacted_url(self.server)!r}, fingerprint={self.fingerprint!r}, "
            f"headers={self.headers!r}, transport={self.transport!r}, partition={partition!r})"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


#: What a session sends its server: a credential, or headers alone (a header-only entry).
_Carried = MCPCredential | MCPServerHeaders


def _headers_digest(cred: _Carried | None) -> str | None:
    if cred is None or not cred.headers:
        return None
    items = "\n".join(f"{name.lower()}:{value}" for name, value in sorted(cred.headers.items()))
    return _digest(items)


class _SessionAuth(MCPBearerAuth):
    """The auth of one pooled session's own client: the session's fixed credential, and a
    refusal reported to the session (``on_refusal``) as well as raised.

    The session's transport dies of a refusal, and the SDK's SSE transport would never
    answer the request whose POST was refused: reporting it lets the pool close the session
    at once and raise the refusal to every borrower, not a "Connection closed". An SSE
    session's message endpoint gets the credential the way it does with any
    ``MCPBearerAuth``: bound to the stream that announced it, never by origin.
    """

    __slots__ = ("_on_refusal",)

    def __init__(
        self,
        credential: _Carried | None,
        *,
        allow_insecure_http: bool,
        on_refusal: Callable[[MCPUpstreamAuthError], None],
    ) -> None:
        fixed = () if credential is None else (credential,)
        super().__init__(allow_insecure_http=allow_insecure_http, credentials=fixed)
        self._on_refusal = on_refusal

    def _answered(
        self, request: Any, carried: _Carried | None, response: Any, *, asynchronous: bool
    ) -> None:
        try:
            super()._answered(request, carried, response, asynchronous=asynchronous)
        except MCPUpstreamAuthError as exc:
            self._on_refusal(exc)
            raise


class _Session:
    """One MCP session: its key and credential, its borrowers, and its owner task's signals."""

    __slots__ = (
        "borrowers",
        "closing",
        "credential",
        "error",
        "key",
        "last_used",
        "pooled",
        "ready",
        "refusal",
        "retired",
        "server",
        "session",
        "url",
    )

    def __init__(
        self,
        key: _Key,
        url: str,
        server: ServerURL,
        credential: _Carried | None,
        *,
        pooled: bool,
    ) -> None:
        self.key = key
        self.url = url
        self.server = server
        self.credential = credential
        self.pooled = pooled
        self.session: ClientSession | None = None
        self.error: BaseException | None = None
        self.refusal: MCPUpstreamAuthError | None = None  # the server refused its credential
        self.ready = anyio.Event()  # set once open, or once opening failed
        self.closing = anyio.Event()  # set to make the owner task close the session
        self.retired = not pooled  # no longer lent out; closes when the last borrower leaves
        self.borrowers = 0
        self.last_used = anyio.current_time()

    def serves(self, credential: _Carried | None) -> bool:
        """Same secret and same extra headers (a fingerprint is only 48 bits)."""
        mine = self.credential
        if mine is None or credential is None:
            return mine is credential
        if not (isinstance(mine, MCPCredential) and isinstance(credential, MCPCredential)):
            return type(mine) is type(credential) and dict(mine.headers) == dict(credential.headers)
        return hmac.compare_digest(
            mine.token.get_secret_value().encode(), credential.token.get_secret_value().encode()
        ) and dict(mine.headers) == dict(credential.headers)

    def refused(self, refusal: MCPUpstreamAuthError) -> None:
        """The server refused this session's credential: close it, remember why."""
        if self.refusal is None:
            self.refusal = refusal
        self.closing.set()

    def log_fields(self) -> dict[str, Any]:
        return {
            "server_url": self.server.loggable,
            "fingerprint": self.key.fingerprint,
            "transport": self.key.transport,
            "pooled": self.pooled,
        }

    def __repr__(self) -> str:
        return (
            f"<MCP session {self.server.loggable} fingerprint={self.key.fingerprint} "
            f"pooled={self.pooled} borrowers={self.borrowers}>"
        )


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (the SDK's task groups wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class MCPSessionPool:
    """Reuses MCP client sessions (streamable HTTP) across requests, keyed by credential.

    .. code-block:: python

        async with MCPSessionPool() as pool:  # e.g. in a FastAPI lifespan
            ...
            # in a request handler, under MCPAuthMiddleware:
            result = await pool.call_tool(server_url, "search", {"q": "x"})
            async with pool.session(server_url) as session:  # a ready ClientSession
                await session.list_tools()

    A borrower gets a pooled session only if it brings the same credential for that server
    (by default the current request's, matched as :class:`MCPBearerAuth` matches it) and the
    same partition (``partition=``, else ``partition_by()``, else none); without a
    credential it gets a session keyed by the server alone, which sends no token.
    ``transport``: ``"streamable-http"``, ``"sse"``, or ``"auto"`` (SSE for a URL whose path
    ends in ``/sse``), for the pool and per borrow. A server that refuses the credential
    raises :class:`MCPUpstreamAuthError`.

    ``max_sessions`` bounds the pooled sessions: when full, the least recently used idle one
    is closed; when every one is busy, the borrower gets a temporary session, closed after
    use. Sessions unused for ``idle_timeout`` seconds are closed (``None``: never).
    ``http_timeout`` bounds connecting, opening (initialize) and closing a session. A
    session the server has dropped (404) is discarded; :meth:`call_tool` and
    :meth:`list_tools` then retry once on a fresh one. Leaving ``async with`` closes every
    session (DELETE to the server). Tokens never appear in a log line, ``repr`` or key.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 64,
        idle_timeout: float | None = 300.0,
        allow_insecure_http: bool = False,
        http_timeout: float = 30.0,
        http_client_factory: HTTPClientFactory | None = None,
        transport: Transport = "auto",
        partition_by: Callable[[], str | None] | None = None,
    ) -> None:
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(_TRANSPORTS)}")
        if partition_by is not None and not callable(partition_by):
            raise ValueError("partition_by must be a callable returning a str or None")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError("max_sessions must be a positive integer")
        if idle_timeout is not None and not (math.isfinite(idle_timeout) and idle_timeout > 0):
            raise ValueError("idle_timeout must be a positive number of seconds, or None")
        if not (math.isfinite(http_timeout) and http_timeout > 0):
            raise ValueError("http_timeout must be a positive number of seconds")
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.allow_insecure_http = allow_insecure_http
        self.http_timeout = http_timeout
        self._timeout = httpx2.Timeout(http_timeout, read=max(http_timeout, _READ_TIMEOUT))
        self._client_factory = http_client_factory or _default_client
        self.transport: Transport = transport
        self.partition_by = partition_by
        self._entries: dict[_Key, _Session] = {}  # the pooled sessions, open or opening
        self._live: set[_Session] = set()  # every session with an owner task
        self._counts = dict.fromkeys([f.name for f in fields(MCPSessionPoolStats)], 0)
        self._stack: AsyncExitStack | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._context: contextvars.Context | None = None
        self._reaper = anyio.CancelScope()
        self._log: Any = structlog.get_logger(SESSIONS_LOGGER)

    # --- lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> MCPSessionPool:
        if self._stack is not None:
            raise RuntimeError("MCPSessionPool is already open")
        async with AsyncExitStack() as stack:
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
            # Owner tasks run in the context the pool was opened in, not in the context of
            # whichever request happened to open a session (its credentials, its log ids).
            self._context = contextvars.copy_context()
            self._reaper = anyio.CancelScope()
            if self.idle_timeout is not None:
                self._spawn(self._expire_idle)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        stack = self._stack
        if stack is None:
            return
        self._stack = self._tasks = None  # no more borrowing
        self._reaper.cancel()
        for entry in list(self._entries.values()):
            self._retire(entry)
        for entry in self._live:
            entry.closing.set()  # at shutdown, busy sessions close too
        # Wait for every owner task to close its session (each bounded by http_timeout). An
        # error in the body must not cancel those closes; a cancellation does.
        if isinstance(exc_info[1], Exception):
            exc_info = (None, None, None)
        await stack.__aexit__(*exc_info)

    def _spawn(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        tasks, context = self._tasks, self._context
        assert tasks is not None
        assert context is not None
        context.copy().run(tasks.start_soon, func)

    # --- public API -------------------------------------------------------------------

    @property
    def stats(self) -> MCPSessionPoolStats:
        """The counters so far (opened, reused, evicted, expired, replaced, temporary)."""
        return MCPSessionPoolStats(**self._counts)

    def __len__(self) -> int:
        """The pooled sessions, open or opening (temporary ones not counted)."""
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"MCPSessionPool(max_sessions={self.max_sessions}, "
            f"idle_timeout={self.idle_timeout}, sessions={len(self._entries)})"
        )

    @asynccontextmanager
    async def session(
        self,
        server_url: str,
        credential: MCPCredential | None = None,
        *,
        partition: str | None = None,
        transport: Transport | None = None,
    ) -> AsyncIterator[ClientSession]:
        """Borrow a ready (initialised) ``ClientSession`` to ``server_url`` for the block.

        ``credential`` defaults to the current request's credential for that server. The
        session may be shared with concurrent borrowers of the same credential and partition
        (MCP multiplexes requests); do not close it. If the server has dropped it, the error
        propagates and the session is discarded, so the next borrower gets a fresh one. A
        server that refuses the credential (401/403) raises :class:`MCPUpstreamAuthError`.
        """
        url, server, cred = self._target(server_url, credential)
        key = self._key(server, cred, partition, transport)
        entry = await self._acquire(url, server, cred, key)
        with capture_refusals() as refusals:
            try:
                assert entry.session is not None
                yield entry.session
            except Exception as exc:
                refusal = self._refusal(entry, exc, refusals)
                if refusal is not None:
                    raise refusal from exc
                self._note_failure(entry, exc)
                raise
            finally:
                self._release(entry)

    async def call_tool(
        self,
        server_url: str,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        credential: MCPCredential | None = None,
        read_timeout_seconds: float | None = None,
        partition: str | None = None,
        transport: Transport | None = None,
    ) -> CallToolResult:
        """``session.call_tool`` on a borrowed session; retried once if the server dropped it.

        A server that refuses the credential (401/403) raises :class:`MCPUpstreamAuthError`.
        """

        async def call(session: ClientSession) -> CallToolResult:
            return await session.call_tool(
                name, arguments, read_timeout_seconds=read_timeout_seconds
            )

        return await self._run(server_url, credential, call, partition, transport)

    async def list_tools(
        self,
        server_url: str,
        *,
        credential: MCPCredential | None = None,
        partition: str | None = None,
        transport: Transport | None = None,
    ) -> ListToolsResult:
        """``session.list_tools`` on a borrowed session; retried once if the server dropped it.

        A server that refuses the credential (401/403) raises :class:`MCPUpstreamAuthError`.
        """

        async def call(session: ClientSession) -> ListToolsResult:
            return await session.list_tools()

        return await self._run(server_url, credential, call, partition, transport)

    # --- borrowing --------------------------------------------------------------------

    def _target(
        self, server_url: str, credential: MCPCredential | None
    ) -> tuple[str, ServerURL, _Carried | None]:
        """The server and the credential to borrow with; refuses what must not be sent."""
        server = parse_server_url(server_url)  # ValueError for a non-http(s) URL
        if server.literal_path != server.path:
            # Sessions are keyed by the normalised URL but talk to the URL as given, which a
            # server that keeps dot segments routes elsewhere ("/a/../b" reaches /a).
            raise ValueError(DOT_SEGMENTS)
        cred: _Carried | None
        if credential is None:
            creds = current_credentials()  # the credential, else headers alone, for the server
            cred = creds.match_request(server) or creds.headers_entry_for(server)
        else:
            cred = credential
            bound = cred.server
            if bound is None:  # the unbound tool-runtime default: the caller named the server
                cred = cred.replace(server_url=server_url)
            elif MCPCredentials([cred]).match_request(server) is not cred:
                # The rule MCPBearerAuth applies: the URL is the credential's server or
                # under it, whichever way a server resolves the path.
                raise ValueError(CREDENTIAL_FOR_OTHER_SERVER)
        if (
            cred is not None
            and server.scheme != "https"
            and not self.allow_insecure_http
            and not is_loopback_host(server.host)
        ):
            raise InsecureTransportError(INSECURE_HTTP)
        return server_url, server, cred

    def _key(
        self,
        server: ServerURL,
        cred: _Carried | None,
        partition: str | None,
        transport: Transport | None,
    ) -> _Key:
        """The pool key of a borrow: server, credential, transport and partition."""
        if transport is None:
            transport = self.transport
        elif transport not in _TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(_TRANSPORTS)}")
        if partition is None and self.partition_by is not None:
            partition = self.partition_by()
        if partition is not None and not isinstance(partition, str):
            raise TypeError("a partition must be a str or None")
        return _Key(
            server.url,
            cred.fingerprint if isinstance(cred, MCPCredential) else None,
            _headers_digest(cred),
            _transport_of(server, transport),
            partition,
        )

    async def _acquire(
        self, url: str, server: ServerURL, cred: _Carried | None, key: _Key
    ) -> _Session:
        if self._tasks is None:
            raise PoolClosedError(POOL_NOT_OPEN)
        # No await between the lookup and the insertion: concurrent first use of a key
        # finds the entry the first borrower created and waits for the same session.
        entry = self._entries.get(key)
        reused = entry is not None and entry.serves(cred)
        if entry is None or not reused:
            if entry is None and (len(self._entries) < self.max_sessions or self._evict_one()):
                entry = _Session(key, url, server, cred, pooled=True)
                self._entries[key] = entry
            else:  # every pooled session is busy, or a fingerprint clash: one-off session
                entry = _Session(key, url, server, cred, pooled=False)
            self._live.add(entry)
            self._spawn(functools.partial(self._own, entry))
        assert entry is not None
        entry.borrowers += 1
        try:
            await entry.ready.wait()
        except BaseException:
            self._release(entry)
            raise
        if entry.session is None:
            self._release(entry)
            if isinstance(entry.error, MCPUpstreamAuthError):
                record_refusal(entry.error)  # in this borrower's request
            raise entry.error or PoolClosedError(POOL_NOT_OPEN)
        if reused:
            self._counts["reused"] += 1
        entry.last_used = anyio.current_time()
        return entry

    def _release(self, entry: _Session) -> None:
        entry.borrowers -= 1
        entry.last_used = anyio.current_time()
        if entry.retired and entry.borrowers == 0:
            entry.closing.set()

    def _retire(self, entry: _Session, counter: str | None = None) -> None:
        """Lend ``entry`` out no more; it closes as soon as nobody is using it."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            if counter is not None:
                self._counts[counter] += 1
        entry.retired = True
        if entry.borrowers == 0:
            entry.closing.set()

    def _note_failure(self, entry: _Session, exc: BaseException) -> bool:
        """Discard ``entry`` if ``exc`` says the server dropped it; True if so."""
        if not is_session_dropped(_unwrap(exc)):
            return False
        self._retire(entry, "replaced")
        return True

    def _refusal(
        self, entry: _Session, exc: BaseException, recorded: list[MCPUpstreamAuthError]
    ) -> MCPUpstreamAuthError | None:
        """The server's refusal behind ``exc`` (raised, or recorded while the SDK turned it
        into another error), if any; the session, whose transport it ended, is discarded."""
        refusal = find_refusal(exc) or (recorded[-1] if recorded else None) or entry.refusal
        if refusal is not None:
            self._retire(entry)
            record_refusal(refusal)
        return refusal

    def _evict_one(self) -> bool:
        idle = [e for e in self._entries.values() if e.borrowers == 0 and e.session is not None]
        if not idle:
            return False
        self._retire(min(idle, key=lambda e: e.last_used), "evicted")
        return True

    async def _run(
        self,
        server_url: str,
        credential: MCPCredential | None,
        call: Callable[[ClientSession], Awaitable[_T]],
        partition: str | None,
        transport: Transport | None,
    ) -> _T:
        url, server, cred = self._target(server_url, credential)
        key = self._key(server, cred, partition, transport)
        for attempt in (1, 2):
            entry = await self._acquire(url, server, cred, key)
            with capture_refusals() as refusals:
                try:
                    assert entry.session is not None
                    return await call(entry.session)
                except Exception as exc:
                    refusal = self._refusal(entry, exc, refusals)
                    if refusal is not None:
                        raise refusal from exc
                    if not self._note_failure(entry, exc) or attempt == 2:
                        raise
                finally:
                    self._release(entry)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- the tasks that own sessions ----------------------------------------------------

    async def _own(self, entry: _Session) -> None:
        """Open ``entry``'s session, hold it until told to close, close it; never raise."""
        counters = self._counts
        try:
            # No request credentials in this task: its client has fixed ones (see module doc).
            with use_credentials(()), anyio.CancelScope() as scope:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(self._transport(entry))
                    session = await stack.enter_async_context(ClientSession(read, write))
                    # One scope around the whole stack, its deadline moved: a scope entered
                    # after the transport's task group could not be exited before it.
                    scope.deadline = anyio.current_time() + self.http_timeout
                    await session.initialize()
                    scope.deadline = math.inf
                    entry.session = session
                    counters["opened"] += 1
                    if not entry.pooled:
                        counters["temporary"] += 1
                    entry.ready.set()
                    self._log.debug(SESSION_OPENED, **entry.log_fields())
                    try:
                        await entry.closing.wait()
                    finally:
                        # Stopped serving (closed, or its transport failed): lend it no more.
                        self._retire(entry)
                    scope.deadline = anyio.current_time() + self.http_timeout
            if scope.cancelled_caught and entry.session is None:
                raise TimeoutError("timed out opening the MCP session")
        except Exception as exc:
            error = find_refusal(exc) or _unwrap(exc)
            if entry.session is None:
                entry.error = error
            self._log.warning(SESSION_FAILED, error=type(error).__name__, **entry.log_fields())
        finally:
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]
            entry.retired = True
            entry.ready.set()
            self._live.discard(entry)
            if entry.session is not None:
                self._log.debug(SESSION_CLOSED, **entry.log_fields())

    @asynccontextmanager
    async def _transport(self, entry: _Session) -> AsyncIterator[tuple[Any, Any]]:
        """The read and write streams of ``entry``'s transport, through a client of its own."""
        sse = entry.key.transport == "sse"
        auth = _SessionAuth(
            entry.credential,
            allow_insecure_http=self.allow_insecure_http,
            on_refusal=entry.refused,
        )
        if sse:

            def factory(
                headers: dict[str, str] | None = None,
                timeout: httpx2.Timeout | None = None,
                auth: httpx2.Auth | None = None,
            ) -> httpx2.AsyncClient:
                assert auth is not None
                return self._client_factory(auth=auth, timeout=self._timeout)

            async with sse_client(
                entry.url,
                timeout=self.http_timeout,
                sse_read_timeout=_READ_TIMEOUT,
                httpx_client_factory=factory,
                auth=auth,
            ) as streams:
                yield streams
            return
        async with (
            self._client_factory(auth=auth, timeout=self._timeout) as http,
            streamable_http_client(entry.url, http_client=http) as streams,
        ):
            yield streams

    async def _expire_idle(self) -> None:
        """Close pooled sessions unused for ``idle_timeout`` seconds, at their due time."""
        assert self.idle_timeout is not None
        with self._reaper:
            await self._expire_loop(self.idle_timeout)

    async def _expire_loop(self, idle_timeout: float) -> None:
        while True:
            now = anyio.current_time()
            wake = now + idle_timeout
            for entry in list(self._entries.values()):
                if entry.borrowers or entry.session is None:
                    continue  # busy, or still opening: its idle time starts at release
                due = entry.last_used + idle_timeout
                if due <= now:
                    self._retire(entry, "expired")
                else:
                    wake = min(wake, due)
            await anyio.sleep(wake - now)
