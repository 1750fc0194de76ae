"""The resolved credentials of one request: :class:`MCPCredential` and :class:`MCPCredentials`.

Both are immutable, and both check what they are given: a credential is valid wherever it was
made (a built-in source, a custom source, user code). Tokens are held in
:class:`pydantic.SecretStr`; ``repr`` and ``str`` show neither tokens nor extra header values,
nor the user-info or query of a server URL.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from mcp_auth_middleware.checks import check_extra_header, check_token
from mcp_auth_middleware.urls import ServerURL, parse_server_url, path_is_prefix, redacted_url

__all__ = [
    "CredentialSource",
    "InvalidCredential",
    "MCPCredential",
    "MCPCredentials",
    "fingerprint",
]


class InvalidCredential(ValueError):
    """A credential cannot be made of these parts: ``field`` names the one at fault (its
    value never appears in the message)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CredentialSource(StrEnum):
    """The built-in credential sources. Custom sources use names of their own."""

    BODY = "body"
    PROVIDER_DATA = "provider_data"
    SERVER_HEADER = "server_header"


def fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: identifies a token in logs, reveals nothing."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class SecureHeaders(Mapping[str, str]):
    """A read-only header mapping whose ``repr`` shows the names only.

    Extra headers may carry secrets too (an ``X-Api-Key`` from provider data).
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self._data: Mapping[str, str] = MappingProxyType(dict(data or {}))

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{name!r}: [secure]" for name in self._data) + "}"

    __str__ = __repr__


_NO_HEADERS: Mapping[str, str] = SecureHeaders()
_TOKEN_RULE = "expected 1 to 8192 visible ASCII characters (optionally after 'Bearer ')"  # noqa: S105 - a message, not a password
_HEADERS_RULE = (
    "expected RFC 9110 header names (not Authorization, framing, hop-by-hop or MCP session "
    "headers) with visible ASCII values"
)


class MCPCredential:
    """One credential for one MCP server (or the request's unbound ``default``). Read-only:
    every public field is a property.

    ``server_url`` is the URL as the caller gave it; ``None`` for the tool-runtime default
    credential and for a credential known only by its ``server_label``. ``token`` may be given
    as ``Bearer <token>``; the prefix is stripped. A token that is not 1 to 8192 visible ASCII
    characters, an extra header that is not a plain RFC 9110 header (or is ``Authorization``,
    framing, hop-by-hop or MCP session state) and a server URL that is not absolute http(s)
    raise :class:`InvalidCredential` (a ``ValueError``), which names the field and never the
    value.
    """

    __slots__ = (
        "_fingerprint",
        "_headers",
        "_secret",
        "_server",
        "_server_label",
        "_server_url",
        "_source",
        "_token",
    )
    _fingerprint: str | None
    _headers: Mapping[str, str]
    _secret: str
    _server: ServerURL | None
    _server_label: str | None
    _server_url: str | None
    _source: CredentialSource | str
    _token: SecretStr | None

    def __init__(
        self,
        *,
        token: SecretStr | str,
        source: CredentialSource | str,
        server_url: str | None = None,
        server_label: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        given = token if isinstance(token, SecretStr) else None
        secret = token if given is None else given.get_secret_value()
        checked = check_token(secret, require_bearer=False)
        if checked is None:
            raise InvalidCredential("token", _TOKEN_RULE)
        if not isinstance(source, str) or not source:
            raise InvalidCredential("source", "expected a CredentialSource or a source's name")
        if server_label is not None and type(server_label) is not str:
            raise InvalidCredential("server_label", "expected a string or None")
        if headers:
            for name, value in headers.items():
                if not check_extra_header(name, value):
                    raise InvalidCredential("headers", _HEADERS_RULE)
        # Bound to a server we can compare requests against (an absolute http(s) URL), or to
        # none.
        server = None
        if server_url is not None:
            try:
                server = parse_server_url(server_url)
            except (ValueError, TypeError):
                raise InvalidCredential("server_url", "expected an absolute http(s) URL") from None
        self._secret = checked
        self._token = given if checked == secret else None
        self._source = source
        self._server_url = server_url
        self._server_label = server_label
        self._headers = SecureHeaders(headers) if headers else _NO_HEADERS
        self._server = server
        self._fingerprint = None

    @property
    def token(self) -> SecretStr:
        """The token (``Bearer`` prefix stripped), hidden from ``repr``."""
        token = self._token
        if token is None:
            token = self._token = SecretStr(self._secret)
        return token

    @property
    def source(self) -> CredentialSource | str:
        """The source it came from: a :class:`CredentialSource` or a custom source's name."""
        return self._source

    @property
    def server_url(self) -> str | None:
        return self._server_url

    @property
    def server_label(self) -> str | None:
        return self._server_label

    @property
    def headers(self) -> Mapping[str, str]:
        """Extra (non-auth) headers for that server; ``repr`` shows their names only."""
        return self._headers

    @property
    def server(self) -> ServerURL | None:
        """The normalised server URL, or ``None`` when unbound."""
        return self._server

    @property
    def fingerprint(self) -> str:
        """First 12 hex of the token's SHA-256 (safe to log and to use in cache keys)."""
        fp = self._fingerprint
        if fp is None:
            fp = self._fingerprint = fingerprint(self._secret)
        return fp

    def bearer(self) -> str:
        """The ``Authorization`` header value: ``Bearer <token>``."""
        return "Bearer " + self._secret

    def same_token(self, other: MCPCredential) -> bool:
        """Whether ``other`` holds the same token (compared in constant time)."""
        return hmac.compare_digest(self._secret.encode(), other._secret.encode())

    def replace(self, **changes: Any) -> MCPCredential:
        """A copy with some fields changed (checked again)."""
        fields: dict[str, Any] = {
            "token": self._secret,
            "source": self._source,
            "server_url": self._server_url,
            "server_label": self._server_label,
            "headers": self._headers,
        }
        fields.update(changes)
        return MCPCredential(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCPCredential):
            return NotImplemented
        return (
            self._server == other._server
            and self._server_label == other._server_label
            and self._source == other._source
            and self.same_token(other)
            and dict(self._headers) == dict(other._headers)
        )

    def __hash__(self) -> int:
        return hash((self._server, self._server_label, str(self._source), self.fingerprint))

    def __repr__(self) -> str:
        # getattr: a traceback that renders locals may show one whose __init__ refused it.
        return (
            f"MCPCredential(server_url={redacted_url(getattr(self, '_server_url', None))!r}, "
            f"server_label={getattr(self, '_server_label', None)!r}, "
            f"source={str(getattr(self, '_source', None))!r}, token=SecretStr('**********'), "
            f"headers={getattr(self, '_headers', _NO_HEADERS)!r})"
        )

    __str__ = __repr__


class MCPCredentials:
    """The immutable set of credentials one request carries: at most one per server (by
    normalised URL), one per label among those known only by a label (case-insensitively),
    and one unbound :attr:`default`.

    Iterating yields every credential, the default included; :meth:`for_server` looks one up
    by server URL (normalised) or by server label.
    """

    __slots__ = ("_by_label", "_by_url", "_default", "_items")
    _by_label: dict[str, MCPCredential]
    _by_url: dict[str, MCPCredential]
    _default: MCPCredential | None
    _items: tuple[MCPCredential, ...]

    def __init__(self, credentials: Iterable[MCPCredential] = ()) -> None:
        items = tuple(credentials)
        by_url: dict[str, MCPCredential] = {}
        by_label: dict[str, MCPCredential] = {}
        default: MCPCredential | None = None
        label_only: set[str] = set()
        for cred in items:
            if not isinstance(cred, MCPCredential):
                raise TypeError(f"expected MCPCredential items, got a {type(cred).__name__}")
            server = cred._server
            if server is not None:
                if server.url in by_url:
                    raise ValueError("two credentials for the same server")
                by_url[server.url] = cred
            elif cred._server_label is None:
                if default is not None:
                    raise ValueError("two default credentials")
                default = cred
            elif cred._server_label.casefold() in label_only:
                raise ValueError("two credentials known only by the same label")
            else:
                label_only.add(cred._server_label.casefold())
            if cred._server_label is not None:
                by_label.setdefault(cred._server_label, cred)
        self._items = items
        self._by_url = by_url
        self._by_label = by_label
        self._default = default

    @property
    def default(self) -> MCPCredential | None:
        """The tool-runtime top-level credential that names no server, if any.

        It is never attached to an outgoing request by itself: bind it to a server with
        :meth:`bind_default` first.
        """
        return self._default

    def for_server(self, url_or_label: str) -> MCPCredential | None:
        """The credential for a server URL (compared normalised) or a server label."""
        if "://" in url_or_label:
            try:
                key = parse_server_url(url_or_label).url
            except ValueError:
                return None
            return self._by_url.get(key)
        return self._by_label.get(url_or_label)

    def bind_default(self, server_url: str) -> MCPCredentials:
        """A copy in which the unbound default credential is bound to ``server_url``.

        A credential the request already carries for that server is kept (it is more
        specific); without a default credential the set is returned unchanged.
        """
        default = self._default
        if default is None or self.for_server(server_url) is not None:
            return self
        bound = default.replace(server_url=server_url)
        return MCPCredentials([c for c in self._items if c is not default] + [bound])

    def match_request(self, request: ServerURL) -> MCPCredential | None:
        """The credential for an outgoing request to ``request`` (see ``downstream``).

        The credential whose normalised URL, query included, is the request's; else, on the
        same origin, the one whose path is the longest whole-segment prefix of the request's
        path, a credential with a query matching only requests with exactly that query (so
        it is preferred over one without a query at the same path). A URL under no
        credential's server gets none, even when its origin has a single credential. When the
        request's path has dot segments, the credential must be the same whether a server
        removes them or routes them as they are; otherwise none. The order credentials were
        given in never decides.
        """
        chosen = self._by_url.get(request.url)
        if chosen is None:
            chosen = self._longest_prefix(request, request.path)
        if (
            request.literal_path != request.path
            and self._longest_prefix(request, request.literal_path) is not chosen
        ):
            return None
        return chosen

    def _longest_prefix(self, request: ServerURL, path: str) -> MCPCredential | None:
        best: MCPCredential | None = None
        best_rank = (-1, False)
        for cred in self._by_url.values():
            server = cred._server
            assert server is not None
            if server.origin != request.origin:
                continue
            if server.query and server.query != request.query:
                continue
            if not path_is_prefix(server.path, path):
                continue
            rank = (len(server.path), bool(server.query))
            if rank > best_rank:
                best, best_rank = cred, rank
        return best

    def __iter__(self) -> Iterator[MCPCredential]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCPCredentials):
            return NotImplemented
        return set(self._items) == set(other._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __repr__(self) -> str:
        return f"MCPCredentials({list(self._items)!r})"

    __str__ = __repr__


EMPTY_CREDENTIALS = MCPCredentials()
