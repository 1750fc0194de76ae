"""Downstream: put the request's credential on outgoing MCP requests.

:class:`MCPBearerAuth` is an ``auth=`` for ``httpx`` and ``httpx2`` clients (the ``mcp`` SDK
2.x uses httpx2). For each outgoing request it reads :func:`current_credentials` and picks
the credential for that request's server: the one whose URL (query included) is the
request's; else, on the same origin, the longest whole-segment path prefix. Paths are compared
as servers resolve them, and a path they could resolve differently gets no token (see
``urls``). The SSE transport's message endpoint, which the server announces on its event
stream, gets the credential of that stream (see ``endpoints``). Nothing else: no origin-wide
fallback, never another origin's credential, never the unbound ``default``, never a token on
plain ``http://`` to a non-loopback host unless ``allow_insecure_http=True``. No matching
credential: the request goes out unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from mcp_auth_middleware.checks import check_extra_header, check_token
from mcp_auth_middleware.context import current_credentials
from mcp_auth_middleware.credentials import (
    InvalidCredential,
    MCPCredential,
    MCPCredentials,
    MCPServerHeaders,
)
from mcp_auth_middleware.endpoints import Carried, EndpointBindings
from mcp_auth_middleware.upstream import REFUSED_STATUSES, raise_refusal
from mcp_auth_middleware.urls import (
    AmbiguousPath,
    ServerURL,
    is_loopback_host,
    parse_server_url,
    server_url_of,
)

__all__ = ["InsecureTransportError", "MCPBearerAuth", "mcp_headers"]
# Request extension naming the headers this auth set, so the next hop can remove them.
_APPLIED = "mcp_auth_middleware.applied_headers"
#: What an outgoing request carries: a credential, a server's header-only entry, or nothing.
_Carried = Carried | None
_E = TypeVar("_E", MCPCredential, MCPServerHeaders)

if TYPE_CHECKING:
    import httpx
    import httpx2

    class _AuthBase(httpx.Auth, httpx2.Auth):  # type: ignore[misc]
        pass

else:
    _bases = []
    try:
        import httpx

        _bases.append(httpx.Auth)
    except ImportError:  # pragma: no cover - httpx is optional
        pass
    try:
        import httpx2

        _bases.append(httpx2.Auth)
    except ImportError:  # pragma: no cover - httpx2 is optional
        pass
    _AuthBase = type("_AuthBase", tuple(_bases) or (object,), {"__slots__": ()})


class InsecureTransportError(ValueError):
    """Refused to send a credential over plain ``http://`` to a host that is not loopback."""


_INSECURE = (
    "refusing to send an MCP credential over plain http to a non-loopback host; "
    "use https, or MCPBearerAuth(allow_insecure_http=True) if the network is trusted"
)


def _check_transport(scheme: str, host: str, allow_insecure_http: bool) -> None:
    if scheme != "https" and not allow_insecure_http and not is_loopback_host(host):
        raise InsecureTransportError(_INSECURE)


class MCPBearerAuth(_AuthBase):
    """``auth=`` for httpx/httpx2 clients: the current request's credential per server.

    No I/O and no per-request state: safe to share one instance (and one client) across
    requests, since the credential is looked up for each outgoing request from the current
    context. With ``credentials=`` it uses that fixed set instead of the context (a client
    owned by one pooled MCP session, a background job), by the same matching rules.
    """

    __slots__ = ("_endpoints", "_fixed", "allow_insecure_http")

    def __init__(
        self,
        *,
        allow_insecure_http: bool = False,
        credentials: MCPCredentials | Iterable[MCPCredential | MCPServerHeaders] | None = None,
    ) -> None:
        self.allow_insecure_http = allow_insecure_http
        if credentials is not None and not isinstance(credentials, MCPCredentials):
            items = list(credentials)
            credentials = MCPCredentials(
                [c for c in items if not isinstance(c, MCPServerHeaders)],
                headers=[c for c in items if isinstance(c, MCPServerHeaders)],
            )
        self._fixed: MCPCredentials | None = credentials
        self._endpoints = EndpointBindings()

    def credential_for(self, request: Any) -> MCPCredential | None:
        """The credential this outgoing request would carry (``None``: no token)."""
        target = _target_of(request)
        return None if target is None else self._choose(self._credentials(), target)

    def headers_for(self, request: Any) -> MCPServerHeaders | None:
        """The header-only entry this outgoing request would carry, when it has no
        credential (:attr:`MCPCredentials.server_headers`)."""
        target = _target_of(request)
        return None if target is None else self._choose_headers(self._credentials(), target)

    def _credentials(self) -> MCPCredentials:
        return self._fixed if self._fixed is not None else current_credentials()

    def _choose(self, creds: MCPCredentials, target: ServerURL) -> MCPCredential | None:
        chosen = creds.match_request(target)
        return self._with_stream(chosen, target, MCPCredential, creds.for_server)

    def _choose_headers(self, creds: MCPCredentials, target: ServerURL) -> MCPServerHeaders | None:
        chosen = creds.headers_entry_for(target)
        return self._with_stream(chosen, target, MCPServerHeaders, creds.headers_entry_for)

    def _with_stream(
        self,
        chosen: _E | None,
        target: ServerURL,
        kind: type[_E],
        held: Callable[[str], _E | None],
    ) -> _E | None:
        """``chosen`` (by the URL rule), reconciled with what the SSE stream that announced
        ``target`` as its message endpoint carried: that entry, if the set in force still
        holds it (``held`` looks it up by its server URL), unless the URL is under another
        entry's server, in which case the two disagree and neither is sent."""
        stream = self._endpoints.get(target.url) if self._endpoints else None
        if not isinstance(stream, kind) or held(stream.server_url or "") is not stream:
            return chosen  # no endpoint bound here, or its stream's set is not in force
        return stream if chosen is None or chosen is stream else None

    def _carried(self, creds: MCPCredentials, target: ServerURL) -> _Carried:
        """What a request to ``target`` carries: its credential, else its server's
        header-only entry, else nothing."""
        cred = self._choose(creds, target)
        if cred is None and creds.server_headers:
            return self._choose_headers(creds, target)
        return cred

    def _apply(self, request: Any) -> _Carried:
        """Set what ``request`` carries; return the credential or header-only entry set."""
        extensions = request.extensions
        for name in extensions.get(_APPLIED, ()):
            request.headers.pop(name, None)
        target = _target_of(request)
        carried = None if target is None else self._carried(self._credentials(), target)
        applied = () if carried is None else self._put(request, carried)
        if applied or _APPLIED in extensions:
            # A new dict: a redirect's request shares the previous hop's.
            request.extensions = {**extensions, _APPLIED: applied}
        return carried

    def _put(self, request: Any, carried: MCPCredential | MCPServerHeaders) -> tuple[str, ...]:
        """Put ``carried``'s headers (and a credential's ``Authorization``) on ``request``,
        over a secure transport only; the names of the headers set."""
        _check_transport(
            request.url.scheme.lower(),
            request.url.raw_host.decode("latin-1"),
            self.allow_insecure_http,
        )
        # Checked when the entry was made; checked again because an HTTP client that
        # refuses a header value puts the value in its error message and its logs.
        if not all(check_extra_header(n, v) for n, v in carried.headers.items()):
            raise InvalidCredential("headers", "not valid header values")
        for name, value in carried.headers.items():
            request.headers[name] = value
        applied = tuple(carried.headers)
        if isinstance(carried, MCPCredential):
            bearer = carried.bearer()
            if check_token(bearer, require_bearer=True) is None:
                raise InvalidCredential("token", "not a valid header value")
            request.headers["Authorization"] = bearer
            applied = (*applied, "Authorization")
        return applied

    def apply(self, request: Any) -> Any:
        """Set ``Authorization`` (and the credential's extra headers) on ``request``; for a
        server that has headers and no token (a header-only entry), those headers alone.

        Headers this auth set on an earlier hop of the same request (a redirect copies them)
        are removed first, so a redirected request carries only what its own URL's
        credential allows, or nothing.
        """
        self._apply(request)
        return request

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        cred = self._apply(request)
        response = yield request
        self._answered(request, cred, response, asynchronous=False)

    sync_auth_flow = auth_flow

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        cred = self._apply(request)
        response = yield request
        self._answered(request, cred, response, asynchronous=True)

    def _answered(
        self,
        request: Any,
        carried: _Carried,
        response: Any,
        *,
        asynchronous: bool,
    ) -> None:
        """What a response to a request that carried a credential (or a server's headers)
        tells: a refusal of the credential (raise MCPUpstreamAuthError), or an event stream
        whose SSE message endpoint gets what the stream carried."""
        try:
            sent = response.request
        except RuntimeError:  # a response built by hand, not by a client
            sent = request
        if sent is not request:  # a redirect the client followed: what its last hop carried
            carried = self._carried_by(sent)
        if carried is None:
            return
        if isinstance(carried, MCPCredential) and response.status_code in REFUSED_STATUSES:
            raise_refusal(carried, response)
        self._endpoints.watch(sent, response, carried, asynchronous=asynchronous)

    def _carried_by(self, request: Any) -> _Carried:
        """What a request this auth sent (a redirect's last hop) carried."""
        if not request.extensions.get(_APPLIED):
            return None
        target = _target_of(request)
        return None if target is None else self._carried(self._credentials(), target)

    def __call__(self, request: Any) -> Any:
        """Plain-callable form, for APIs that take ``request -> request``."""
        return self.apply(request)

    def request_hook(self, request: Any) -> None:
        """A ``event_hooks={"request": [...]}`` hook for sync clients that follow redirects.

        httpx and httpx2 run an auth once per request but request hooks on every redirect
        hop, and they strip only ``Authorization`` when a redirect leaves the origin. With
        ``follow_redirects=True``, install this hook so that every hop carries exactly its
        own URL's credential (the extra headers included). The ``mcp`` SDK does not need
        it: it follows redirects itself, through the auth.
        """
        self.apply(request)

    async def async_request_hook(self, request: Any) -> None:
        """:meth:`request_hook` for ``AsyncClient``."""
        self.apply(request)

    def __repr__(self) -> str:
        fixed = "" if self._fixed is None else f", credentials=<{len(self._fixed)} fixed>"
        return f"MCPBearerAuth(allow_insecure_http={self.allow_insecure_http}{fixed})"


def _target_of(request: Any) -> ServerURL | None:
    """The outgoing request's URL as a server URL; ``None`` when its path is ambiguous (then
    nothing is sent with it)."""
    url = request.url
    raw_path: bytes = url.raw_path
    path, _, query = raw_path.decode("latin-1").partition("?")
    try:
        return server_url_of(
            url.scheme.lower(), url.raw_host.decode("latin-1").lower(), url.port, path, query
        )
    except AmbiguousPath:
        return None


def mcp_headers(
    server_url: str,
    headers: Mapping[str, str] | None = None,
    *,
    allow_insecure_http: bool = False,
) -> dict[str, str]:
    """The header dict for ``server_url``, for APIs that take headers rather than ``auth=``.

    ``headers`` plus the current request's credential for that server (its extra headers
    and ``Authorization: Bearer <token>``), or the headers alone of a server that has
    headers and no token (a header-only entry for exactly that URL). Raises ``ValueError``
    if ``headers`` already holds an ``Authorization`` (any case): the token must come from
    the request.
    """
    result = dict(headers or {})
    if any(name.strip().lower() == "authorization" for name in result):
        raise ValueError("headers already hold an Authorization header")
    try:
        server = parse_server_url(server_url)
    except ValueError:  # not an http(s) URL, or a path servers resolve differently
        return result
    creds = current_credentials()
    cred = creds.for_server(server_url)
    entry = None
    if cred is None and creds.server_headers:
        entry = creds.headers_entry_for(server)
        entry = entry if entry is not None and entry.server == server else None
    carried = cred or entry
    if carried is None:
        return result
    if server.literal_path != server.path:
        # "/a/../b" is B's URL normalised, but a server that keeps dot segments routes it
        # under /a: what MCPBearerAuth would send there must be the same, or nothing is.
        same = creds.match_request(server) if cred is not None else creds.headers_entry_for(server)
        if same is not carried:
            return result
    _check_transport(server.scheme, server.host, allow_insecure_http)
    result.update(carried.headers)
    if cred is not None:
        result["Authorization"] = cred.bearer()
    return result
