"""Credential-keyed reuse of MCP client sessions: :class:`MCPSessionPool`.

An ``mcp`` 2.x server binds a session to the credential that opened it: the same session
used with another token gets ``404 Session not found``. So a pooled session is keyed by the
normalised server URL *and* the credential's fingerprint (12 hex of the token's SHA-256,
never the token), and only a borrower with that very credential gets it back.

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
from typing import Any, Final, NamedTuple, Protocol, TypeVar

from mcp_auth_middleware._mcp_sdk import mcp2_required

try:  # written for the mcp SDK 2.x: on 1.x, say so at import rather than fail later
    import httpx2
    from mcp import MCPError
except ImportError as exc:
    raise mcp2_required("MCPSessionPool (mcp_auth_middleware.sessions)", exc) from exc

import anyio
import anyio.abc
import structlog
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ListToolsResult
from mcp_types import INVALID_REQUEST

from mcp_auth_middleware.context import current_credentials, use_credentials
from mcp_auth_middleware.credentials import MCPCredential
from mcp_auth_middleware.downstream import InsecureTransportError, MCPBearerAuth
from mcp_auth_middleware.urls import (
    ServerURL,
    is_loopback_host,
    parse_server_url,
    path_is_prefix,
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
    "is_session_dropped",
]

SESSIONS_LOGGER: Final = "mcp_auth_middleware.sessions"
SESSION_OPENED: Final = "mcp_session_opened"
SESSION_CLOSED: Final = "mcp_session_closed"
SESSION_FAILED: Final = "mcp_session_failed"

POOL_NOT_OPEN: Final = "MCPSessionPool is not open: use it as `async with MCPSessionPool() as pool`"
CREDENTIAL_FOR_OTHER_SERVER: Final = "the credential given is bound to another server"
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

    def __repr__(self) -> str:  # the URL's query may hold a secret
        return (
            f"_Key(server={redacted_url(self.server)!r}, fingerprint={self.fingerprint!r}, "
            f"headers={self.headers!r})"
        )


def _headers_digest(cred: MCPCredential | None) -> str | None:
    if cred is None or not cred.headers:
        return None
    items = "\n".join(f"{name.lower()}:{value}" for name, value in sorted(cred.headers.items()))
    return hashlib.sha256(items.encode()).hexdigest()[:12]


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
        credential: MCPCredential | None,
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
        self.ready = anyio.Event()  # set once open, or once opening failed
        self.closing = anyio.Event()  # set to make the owner task close the session
        self.retired = not pooled  # no longer lent out; closes when the last borrower leaves
        self.borrowers = 0
        self.last_used = anyio.current_time()

    def serves(self, credential: MCPCredential | None) -> bool:
        """Same secret and same extra headers (a fingerprint is only 48 bits)."""
        mine = self.credential
        if mine is None or credential is None:
            return mine is credential
        return hmac.compare_digest(
            mine.token.get_secret_value().encode(), credential.token.get_secret_value().encode()
        ) and dict(mine.headers) == dict(credential.headers)

    def log_fields(self) -> dict[str, Any]:
        return {
            "server_url": self.server.loggable,
            "fingerprint": self.key.fingerprint,
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
    (by default the current request's, matched as :class:`MCPBearerAuth` matches it);
    without one it gets a session keyed by the server alone, which sends no token.

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
    ) -> None:
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
        self, server_url: str, credential: MCPCredential | None = None
    ) -> AsyncIterator[ClientSession]:
        """Borrow a ready (initialised) ``ClientSession`` to ``server_url`` for the block.

        ``credential`` defaults to the current request's credential for that server. The
        session may be shared with concurrent borrowers of the same credential (MCP
        multiplexes requests); do not close it. If the server has dropped it, the error
        propagates and the session is discarded, so the next borrower gets a fresh one.
        """
        url, server, cred = self._target(server_url, credential)
        entry = await self._acquire(url, server, cred)
        try:
            assert entry.session is not None
            yield entry.session
        except Exception as exc:
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
    ) -> CallToolResult:
        """``session.call_tool`` on a borrowed session; retried once if the server dropped it."""

        async def call(session: ClientSession) -> CallToolResult:
            return await session.call_tool(
                name, arguments, read_timeout_seconds=read_timeout_seconds
            )

        return await self._run(server_url, credential, call)

    async def list_tools(
        self, server_url: str, *, credential: MCPCredential | None = None
    ) -> ListToolsResult:
        """``session.list_tools`` on a borrowed session; retried once if the server dropped it."""

        async def call(session: ClientSession) -> ListToolsResult:
            return await session.list_tools()

        return await self._run(server_url, credential, call)

    # --- borrowing --------------------------------------------------------------------

    def _target(
        self, server_url: str, credential: MCPCredential | None
    ) -> tuple[str, ServerURL, MCPCredential | None]:
        """The server and the credential to borrow with; refuses what must not be sent."""
        server = parse_server_url(server_url)  # ValueError for a non-http(s) URL
        if credential is None:
            cred = current_credentials().match_request(server)
        else:
            cred = credential
            bound = cred.server
            if bound is None:  # the unbound tool-runtime default: the caller named the server
                cred = cred.replace(server_url=server_url)
            elif not (
                bound.origin == server.origin
                and path_is_prefix(bound.path, server.path)
                and (not bound.query or bound.query == server.query)
            ):
                raise ValueError(CREDENTIAL_FOR_OTHER_SERVER)
        if (
            cred is not None
            and server.scheme != "https"
            and not self.allow_insecure_http
            and not is_loopback_host(server.host)
        ):
            raise InsecureTransportError(INSECURE_HTTP)
        return server_url, server, cred

    async def _acquire(self, url: str, server: ServerURL, cred: MCPCredential | None) -> _Session:
        if self._tasks is None:
            raise PoolClosedError(POOL_NOT_OPEN)
        key = _Key(server.url, None if cred is None else cred.fingerprint, _headers_digest(cred))
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
    ) -> _T:
        url, server, cred = self._target(server_url, credential)
        for attempt in (1, 2):
            entry = await self._acquire(url, server, cred)
            try:
                assert entry.session is not None
                return await call(entry.session)
            except Exception as exc:
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
                    auth = MCPBearerAuth(
                        allow_insecure_http=self.allow_insecure_http,
                        credentials=() if entry.credential is None else (entry.credential,),
                    )
                    http = await stack.enter_async_context(
                        self._client_factory(auth=auth, timeout=self._timeout)
                    )
                    read, write = await stack.enter_async_context(
                        streamable_http_client(entry.url, http_client=http)
                    )
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
            error = _unwrap(exc)
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
