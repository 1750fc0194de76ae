"""Downstream: put the request's credential on outgoing MCP requests.

:class:`MCPBearerAuth` is an ``auth=`` for ``httpx`` and ``httpx2`` clients (the ``mcp`` SDK
2.x uses httpx2). For each outgoing request it reads :func:`current_credentials` and picks
the credential for that request's server: the one whose URL (query included) is the
request's; else, on the same origin, the longest whole-segment path prefix; failing that, the
only credential of that origin (the SSE transport posts to a ``/messages`` URL that the
server names). Never another origin's credential, never the
unbound ``default``, never a token on plain ``http://`` to a non-loopback host unless
``allow_insecure_http=True``. No matching credential: the request goes out unchanged.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mcp_auth_middleware.context import current_credentials
from mcp_auth_middleware.credentials import MCPCredential, MCPCredentials, MCPServerHeaders
from mcp_auth_middleware.urls import ServerURL, is_loopback_host, parse_server_url, server_url_of

__all__ = ["InsecureTransportError", "MCPBearerAuth", "mcp_headers"]
# Request extension naming the headers this auth set, so the next hop can remove them.
_APPLIED = "mcp_auth_middleware.applied_headers"

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

    __slots__ = ("_fixed", "allow_insecure_http")

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

    def credential_for(self, request: Any) -> MCPCredential | None:
        """The credential this outgoing request would carry (``None``: no token)."""
        return self._credentials().match_request(_target_of(request))

    def headers_for(self, request: Any) -> MCPServerHeaders | None:
        """The header-only entry this outgoing request would carry, when it has no
        credential (:attr:`MCPCredentials.server_headers`)."""
        return self._credentials().headers_entry_for(_target_of(request))

    def _credentials(self) -> MCPCredentials:
        return self._fixed if self._fixed is not None else current_credentials()

    def apply(self, request: Any) -> Any:
        """Set ``Authorization`` (and the credential's extra headers) on ``request``; for a
        server that has headers and no token (a header-only entry), those headers alone.

        Headers this auth set on an earlier hop of the same request (a redirect copies them)
        are removed first, so a redirected request carries only what its own URL's
        credential allows, or nothing.
        """
        extensions = request.extensions
        for name in extensions.get(_APPLIED, ()):
            request.headers.pop(name, None)
        creds = self._credentials()
        target = _target_of(request)
        cred = creds.match_request(target)
        entry = creds.headers_entry_for(target) if cred is None and creds.server_headers else None
        applied: tuple[str, ...] = ()
        if cred is not None or entry is not None:
            _check_transport(
                request.url.scheme.lower(),
                request.url.raw_host.decode("latin-1"),
                self.allow_insecure_http,
            )
            extra = cred.headers if cred is not None else entry.headers  # type: ignore[union-attr]
            for name, value in extra.items():
                request.headers[name] = value
            applied = tuple(extra)
            if cred is not None:
                request.headers["Authorization"] = cred.bearer()
                applied = (*applied, "Authorization")
        if applied or _APPLIED in extensions:
            # A new dict: a redirect's request shares the previous hop's.
            request.extensions = {**extensions, _APPLIED: applied}
        return request

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        yield self.apply(request)

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


def _target_of(request: Any) -> ServerURL:
    url = request.url
    raw_path: bytes = url.raw_path
    path, _, query = raw_path.decode("latin-1").partition("?")
    return server_url_of(
        url.scheme.lower(), url.raw_host.decode("latin-1").lower(), url.port, path, query
    )


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
    creds = current_credentials()
    cred = creds.for_server(server_url)
    entry = None
    if cred is None and creds.server_headers:
        entry = creds.headers_entry_for(server_url)
        entry = (
            entry if entry is not None and entry.server == parse_server_url(server_url) else None
        )
    if cred is not None or entry is not None:
        server = parse_server_url(server_url)
        _check_transport(server.scheme, server.host, allow_insecure_http)
    if cred is not None:
        result.update(cred.headers)
        result["Authorization"] = cred.bearer()
    elif entry is not None:
        result.update(entry.headers)
    return result
