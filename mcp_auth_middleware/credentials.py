"""The resolved credentials of one request: :class:`MCPCredential` and :class:`MCPCredentials`.

Both are immutable. Tokens are held in :class:`pydantic.SecretStr` and extra header values
are never shown: ``repr`` and ``str`` print header names and ``**********`` only.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from mcp_auth_middleware.urls import ServerURL, parse_server_url, path_is_prefix

__all__ = ["CredentialSource", "MCPCredential", "MCPCredentials", "fingerprint"]


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


_EMPTY_HEADERS: Mapping[str, str] = SecureHeaders()


class CredentialSource(StrEnum):
    """The built-in credential sources. Custom sources use names of their own."""

    BODY = "body"
    PROVIDER_DATA = "provider_data"
    SERVER_HEADER = "server_header"


def _builtin_sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (the same digest as OpenSSL's): OpenSSL sets up a digest context
    on every call, which costs several µs per audited request in place. ``hashlib``'s when
    the interpreter was built without it."""
    for module in ("_sha2", "_sha256"):  # CPython 3.12 and later, 3.11
        try:
            constructor: Callable[[bytes], Any] = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return constructor
    return hashlib.sha256


_sha256 = _builtin_sha256()


def fingerprint(token: str) -> str:
    """First 12 hex digits of the token's SHA-256: identifies a token in logs, reveals nothing."""
    digest: bytes = _sha256(token.encode()).digest()
    return digest[:6].hex()


class MCPCredential:
    """One credential for one MCP server (or the request's unbound ``default``).

    ``server_url`` is the URL as the caller gave it; ``None`` for the tool-runtime default
    credential and for a credential known only by its ``server_label``. Read-only: every
    public field is a property.
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

    def __init__(
        self,
        *,
        token: SecretStr | str,
        source: CredentialSource | str,
        server_url: str | None = None,
        server_label: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if type(token) is str:
            self._secret = token
            self._token: SecretStr | None = None
        elif isinstance(token, SecretStr):
            self._secret = token.get_secret_value()
            self._token = token
        else:
            raise TypeError("token must be a str or a pydantic.SecretStr")
        self._source = source
        self._server_url = server_url
        self._server_label = server_label
        self._headers: Mapping[str, str] = SecureHeaders(headers) if headers else _EMPTY_HEADERS
        # Raises ValueError for a URL that is not absolute http(s): a credential is bound to
        # a server we can compare requests against, or to none.
        self._server = None if server_url is None else parse_server_url(server_url)
        self._fingerprint: str | None = None

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

    def replace(self, **changes: Any) -> MCPCredential:
        """A copy with some fields changed (``server_url`` re-validated)."""
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
            and hmac.compare_digest(self._secret.encode(), other._secret.encode())
            and dict(self._headers) == dict(other._headers)
        )

    def __hash__(self) -> int:
        return hash((self._server, self._server_label, str(self._source), self.fingerprint))

    def __repr__(self) -> str:
        return (
            f"MCPCredential(server_url={self._server_url!r}, "
            f"server_label={self._server_label!r}, source={str(self._source)!r}, "
            f"token=SecretStr('**********'), headers={self._headers!r})"
        )

    __str__ = __repr__


class MCPCredentials:
    """The immutable set of credentials one request carries.

    Iterating yields every credential, the unbound :attr:`default` included; :meth:`for_server`
    looks one up by server URL (normalised) or by server label.
    """

    __slots__ = ("_index", "_items")

    _items: tuple[MCPCredential, ...]
    # By normalised URL, by label, the default (built on first lookup), by origin (built on
    # first match).
    _index: _Index | None

    def __init__(self, credentials: Iterable[MCPCredential] = ()) -> None:
        items = tuple(credentials)
        _set_items(self, items)
        _set_index(self, _index_of(items))

    def _lookup(self) -> _Index:
        index = self._index
        if index is None:
            index = _index_of(self._items)
            _set_index(self, index)
        return index

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("MCPCredentials is immutable")

    @property
    def default(self) -> MCPCredential | None:
        """The tool-runtime top-level credential that names no server, if any.

        It is never attached to an outgoing request by itself: bind it to a server with
        :meth:`bind_default` first.
        """
        return self._lookup()[2]

    def for_server(self, url_or_label: str) -> MCPCredential | None:
        """The credential for a server URL (compared normalised) or a server label."""
        if "://" in url_or_label:
            try:
                key = parse_server_url(url_or_label).url
            except ValueError:
                return None
            return self._lookup()[0].get(key)
        return self._lookup()[1].get(url_or_label)

    def bind_default(self, server_url: str) -> MCPCredentials:
        """A copy in which the unbound default credential is bound to ``server_url``.

        A credential the request already carries for that server is kept (it is more
        specific); without a default credential the set is returned unchanged.
        """
        default = self.default
        if default is None or self.for_server(server_url) is not None:
            return self
        bound = default.replace(server_url=server_url)
        return MCPCredentials([c for c in self._items if c is not default] + [bound])

    def match_request(
        self, scheme: str, host: str, port: int | None, path: str, query: str
    ) -> MCPCredential | None:
        """The credential for an outgoing request, by SPEC §9's rule (see ``downstream``).

        Same origin only; the credential whose path is the longest whole-segment prefix of
        the request path (and whose query, when it has one, equals the request's); failing
        that, the only credential of that origin, if it names no query.
        """
        by_url, by_label, default, origins = self._lookup()
        if origins is None:
            origins = _origins_of(by_url)
            _set_index(self, (by_url, by_label, default, origins))
        candidates = origins.get((scheme, host, port))
        if not candidates:
            return None
        for cred in candidates:
            server = cred.server
            assert server is not None
            if path_is_prefix(server.path, path) and (not server.query or server.query == query):
                return cred
        # The SSE transport posts to a URL the server names (``/messages/?session_id=...``):
        # the only credential of the origin covers it, unless that credential names a query,
        # which keeps it to requests with exactly that query.
        if len(candidates) == 1 and not candidates[0].server.query:  # type: ignore[union-attr]
            return candidates[0]
        return None

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


# The request path's constructors. Module functions, not classmethods: a classmethod call
# costs about as much as the whole construction. The slots are set through their
# descriptors, past ``MCPCredentials.__setattr__``.
_object_new = object.__new__
_set_items = MCPCredentials.__dict__["_items"].__set__
_set_index = MCPCredentials.__dict__["_index"].__set__


def _credential(
    secret: str,
    source: CredentialSource | str,
    server_url: str | None,
    server_label: str | None,
    server: ServerURL | None,
    headers: Mapping[str, str] | None = None,
) -> MCPCredential:
    """A credential from checked parts (``server`` is the parsed ``server_url``), without
    :class:`MCPCredential`'s keyword handling and checks."""
    self: MCPCredential = _object_new(MCPCredential)
    self._secret = secret
    self._token = None
    self._source = source
    self._server_url = server_url
    self._server_label = server_label
    self._headers = SecureHeaders(headers) if headers else _EMPTY_HEADERS
    self._server = server
    self._fingerprint = None
    return self


def _credential_set(items: tuple[MCPCredential, ...]) -> MCPCredentials:
    """A set of credentials already one per server (one credential, or ``resolve``'s
    winners): no checks, and the lookup tables wait for the first lookup."""
    self: MCPCredentials = _object_new(MCPCredentials)
    _set_items(self, items)
    _set_index(self, None)
    return self


_Index = tuple[
    dict[str, MCPCredential],
    dict[str, MCPCredential],
    MCPCredential | None,
    dict[tuple[str, str, int | None], list[MCPCredential]] | None,
]


def _origins_of(
    by_url: dict[str, MCPCredential],
) -> dict[tuple[str, str, int | None], list[MCPCredential]]:
    """The credentials bound to a server by origin, the longest path first."""
    origins: dict[tuple[str, str, int | None], list[MCPCredential]] = {}
    for cred in by_url.values():
        origins.setdefault(cred._server.origin, []).append(cred)  # type: ignore[union-attr]
    for creds in origins.values():
        creds.sort(key=lambda c: len(c._server.path), reverse=True)  # type: ignore[union-attr]
    return origins


def _index_of(items: tuple[MCPCredential, ...]) -> _Index:
    """Lookup tables of a credential set (by URL, by label, the default; by origin is built
    by the first :meth:`MCPCredentials.match_request`); ``ValueError`` if two credentials
    claim the same server, or two are unbound."""
    by_url: dict[str, MCPCredential] = {}
    by_label: dict[str, MCPCredential] = {}
    default: MCPCredential | None = None
    for cred in items:
        server = cred._server
        if server is not None:
            if by_url.setdefault(server.url, cred) is not cred:
                raise ValueError("two credentials for the same server")
        elif cred._server_label is None:
            if default is not None:
                raise ValueError("two default credentials")
            default = cred
        if cred._server_label is not None:
            by_label.setdefault(cred._server_label, cred)
    return by_url, by_label, default, None


EMPTY_CREDENTIALS = MCPCredentials()
