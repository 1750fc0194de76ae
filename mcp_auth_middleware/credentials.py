"""The resolved credentials of one request.

- :class:`MCPCredential`: a token (and maybe extra headers) for one MCP server, known by its
  URL, its label, a connector id, or nothing (the request's unbound ``default``).
- :class:`MCPServerHeaders`: headers and no token for one server or connector.
- :class:`MCPCredentials`: the set one request carries, at most one entry per server, with
  lookups (``for_server``, ``match_request``, ``headers_for``) and binding
  (``bind_default``, ``bind_connector``: an unbound credential competes for a URL later).

All are immutable, and all check what they are given: a credential is valid wherever it was
made (a built-in source, a custom source, user code). Tokens are held in
:class:`pydantic.SecretStr`; ``repr`` and ``str`` show neither tokens nor extra header values,
nor the user-info or query of a server URL. Which entry an outgoing request gets is
:mod:`mcp_auth_middleware.matching`'s rule; which source wins a server, :func:`beats`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from mcp_auth_middleware.checks import check_extra_header, check_token
from mcp_auth_middleware.matching import match_entry
from mcp_auth_middleware.urls import ServerURL, parse_server_url, redacted_url

__all__ = [
    "CredentialSource",
    "InvalidCredential",
    "MCPCredential",
    "MCPCredentials",
    "MCPServerHeaders",
    "fingerprint",
]


# --- the entries: MCPCredential and MCPServerHeaders ---------------------------------------


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


class _ServerEntry:
    """What a credential and a header-only entry share: the server (URL, label or
    connector) they are for, the source they came from, and the extra headers. Read-only."""

    __slots__ = ("_connector_id", "_headers", "_server", "_server_label", "_server_url", "_source")
    _connector_id: str | None
    _headers: Mapping[str, str]
    _server: ServerURL | None
    _server_label: str | None
    _server_url: str | None
    _source: CredentialSource | str

    def _set_fields(
        self,
        source: Any,
        server_url: Any,
        server_label: Any,
        headers: Mapping[str, str] | None,
        connector_id: Any,
    ) -> None:
        """Check and set the shared fields (:class:`InvalidCredential` names the one at
        fault)."""
        if not isinstance(source, str) or not source:
            raise InvalidCredential("source", "expected a CredentialSource or a source's name")
        if server_label is not None and type(server_label) is not str:
            raise InvalidCredential("server_label", "expected a string or None")
        if headers:
            _check_headers(headers)
        if connector_id is not None:
            check_connector_id(connector_id)
        self._server = None if server_url is None else server_of(server_url)
        self._connector_id = connector_id
        self._source = source
        self._server_url = server_url
        self._server_label = server_label
        self._headers = SecureHeaders(headers) if headers else _NO_HEADERS

    def _fields(self) -> dict[str, Any]:
        return {
            "source": self._source,
            "server_url": self._server_url,
            "server_label": self._server_label,
            "headers": self._headers,
            "connector_id": self._connector_id,
        }

    def _same_fields(self, other: _ServerEntry) -> bool:
        return (
            self._server == other._server
            and self._server_label == other._server_label
            and self._source == other._source
            and self._connector_id == other._connector_id
            and dict(self._headers) == dict(other._headers)
        )

    def _repr(self, name: str, extra: str = "") -> str:
        # getattr: a traceback that renders locals may show one whose __init__ refused it.
        connector = getattr(self, "_connector_id", None)
        return (
            f"{name}(server_url={redacted_url(getattr(self, '_server_url', None))!r}, "
            f"server_label={getattr(self, '_server_label', None)!r}, "
            f"source={str(getattr(self, '_source', None))!r}, {extra}"
            f"headers={getattr(self, '_headers', _NO_HEADERS)!r}"
            f"{'' if connector is None else f', connector_id={connector!r}'})"
        )

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
    def connector_id(self) -> str | None:
        """The connector a Responses tool named instead of a ``server_url``, if any. Bound to
        no URL, it is sent nowhere until it is bound (:meth:`MCPCredentials.bind_connector`,
        or the ``connectors`` setting)."""
        return self._connector_id


class MCPCredential(_ServerEntry):
    """One credential for one MCP server (or the request's unbound ``default``, or a
    connector). Read-only: every public field is a property.

    ``server_url`` is the URL as the caller gave it; ``None`` for the tool-runtime default
    credential, for a connector's not yet bound, and for a credential known only by its
    ``server_label``. ``token`` may be given as ``Bearer <token>``; the prefix is stripped. A
    token that is not 1 to 8192 visible ASCII characters, an extra header that is not a plain
    RFC 9110 header (or is ``Authorization``, framing, hop-by-hop or MCP session state) and a
    server URL that is not absolute http(s) raise :class:`InvalidCredential` (a
    ``ValueError``), which names the field and never the value.
    """

    __slots__ = ("_fingerprint", "_secret", "_token")
    _fingerprint: str | None
    _secret: str
    _token: SecretStr | None

    def __init__(
        self,
        *,
        token: SecretStr | str,
        source: CredentialSource | str,
        server_url: str | None = None,
        server_label: str | None = None,
        headers: Mapping[str, str] | None = None,
        connector_id: str | None = None,
    ) -> None:
        given = token if isinstance(token, SecretStr) else None
        secret = token if given is None else given.get_secret_value()
        checked = check_token(secret, require_bearer=False)
        if checked is None:
            raise InvalidCredential("token", _TOKEN_RULE)
        self._set_fields(source, server_url, server_label, headers, connector_id)
        self._secret = checked
        self._token = given if checked == secret else None
        self._fingerprint = None

    @property
    def token(self) -> SecretStr:
        """The token (``Bearer`` prefix stripped), hidden from ``repr``."""
        token = self._token
        if token is None:
            token = self._token = SecretStr(self._secret)
        return token

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
        return MCPCredential(**{"token": self._secret, **self._fields(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCPCredential):
            return NotImplemented
        return self._same_fields(other) and self.same_token(other)

    def __hash__(self) -> int:
        return hash((self._server, self._server_label, str(self._source), self.fingerprint))

    def __repr__(self) -> str:
        return self._repr("MCPCredential", "token=SecretStr('**********'), ")

    __str__ = __repr__


class MCPServerHeaders(_ServerEntry):
    """Headers, and no token, for one MCP server (or a connector): a provider-data entry
    without ``Authorization`` (``{"X-Api-Key": ...}``), or an MCP tool with ``headers`` and no
    ``authorization``. Read-only.

    A type of its own, so that :attr:`MCPCredential.token` is always a token: code that
    reads credentials never meets one without. :class:`MCPCredentials` keeps these apart from
    its credentials (:attr:`MCPCredentials.server_headers`); ``MCPBearerAuth`` and the session
    pool send them to their server, and to it only, as they send a credential's extra headers
    (:meth:`MCPCredentials.headers_for`). The headers are checked as a credential's are;
    ``repr`` shows their names only.
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        headers: Mapping[str, str],
        source: CredentialSource | str,
        server_url: str | None = None,
        server_label: str | None = None,
        connector_id: str | None = None,
    ) -> None:
        if not headers:
            raise InvalidCredential("headers", "expected at least one header")
        self._set_fields(source, server_url, server_label, headers, connector_id)
        if server_url is None and connector_id is None:
            raise InvalidCredential("server_url", "expected a server URL or a connector_id")

    def replace(self, **changes: Any) -> MCPServerHeaders:
        """A copy with some fields changed (checked again)."""
        return MCPServerHeaders(**{**self._fields(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCPServerHeaders):
            return NotImplemented
        return self._same_fields(other)

    def __hash__(self) -> int:
        return hash((self._server, self._connector_id, str(self._source), tuple(self._headers)))

    def __repr__(self) -> str:
        return self._repr("MCPServerHeaders")

    __str__ = __repr__


# --- the checks an entry's fields pass, and the competition between sources ----------------

#: What a server gets from one source: a credential (a token, and maybe headers) or headers.
Entry = MCPCredential | MCPServerHeaders
#: Called with what a bind gave a server and the sources it beat (the audit's hook).
OnBind = Callable[[Entry, tuple[str, ...]], None]
#: The order sources compete in, for a set made without one (the default ``precedence``).
DEFAULT_ORDER: tuple[str, ...] = (
    CredentialSource.BODY.value,
    CredentialSource.SERVER_HEADER.value,
    CredentialSource.PROVIDER_DATA.value,
)
_NO_ENTRIES: Mapping[str, Any] = MappingProxyType({})
_NOTHING_SHADOWED: Mapping[tuple[str, str], tuple[str, ...]] = MappingProxyType({})
_CONNECTOR_ID = re.compile(r"[\x21-\x7e]{1,256}")


def _check_headers(headers: Mapping[str, str] | None) -> None:
    if headers:
        for name, value in headers.items():
            if not check_extra_header(name, value):
                raise InvalidCredential("headers", _HEADERS_RULE)
        if len({name.lower() for name in headers}) != len(headers):
            raise InvalidCredential("headers", "the same header name twice (in any case)")


def check_connector_id(connector_id: Any) -> None:
    if connector_id is not None and (
        type(connector_id) is not str or _CONNECTOR_ID.fullmatch(connector_id) is None
    ):
        raise InvalidCredential("connector_id", "expected 1 to 256 visible ASCII characters")


def server_of(server_url: str | None) -> ServerURL | None:
    """The normalised server an entry's ``server_url`` binds it to (an absolute http(s) URL
    that requests are compared against), ``None`` for no URL; ``InvalidCredential`` else."""
    if server_url is None:
        return None
    try:
        return parse_server_url(server_url)
    except (ValueError, TypeError):
        raise InvalidCredential("server_url", "expected an absolute http(s) URL") from None


def entry_key(entry: Entry) -> tuple[str, str]:
    """What identifies "the same server" across sources: the normalised URL, else the
    connector, else the label (case-folded), else the default."""
    server = entry._server
    if server is not None:
        return ("url", server.url)
    if entry._connector_id is not None:
        return ("connector", entry._connector_id)
    label = entry._server_label
    if label is not None:
        return ("label", label.casefold())
    return ("default", "")


def beats(challenger: Entry, incumbent: Entry, order: Sequence[str]) -> bool:
    """Whether ``challenger`` takes a server from ``incumbent``: a token beats headers
    alone; otherwise the source earlier in ``order`` wins, and on a tie the incumbent."""
    if isinstance(challenger, MCPCredential) is not isinstance(incumbent, MCPCredential):
        return isinstance(challenger, MCPCredential)
    return _rank(str(challenger._source), order) < _rank(str(incumbent._source), order)


def _rank(source: str, order: Sequence[str]) -> int:
    return order.index(source) if source in order else len(order)


# --- the set -------------------------------------------------------------------------------


class MCPCredentials:
    """The immutable set of credentials one request carries: at most one per server (by
    normalised URL), one per connector among those not yet bound to a URL, one per label
    among those known only by a label (case-insensitively), and one unbound :attr:`default`;
    and the :class:`MCPServerHeaders` of servers that get headers without a token
    (:attr:`server_headers`; none for a server that has a credential).

    Iterating yields every credential, the default included (never the header-only
    entries: every item has a token); :meth:`for_server` looks one up by server URL
    (normalised) or by server label. ``precedence`` is the order sources compete in when a
    credential is bound later (:meth:`bind_default`, :meth:`bind_connector`); the middleware
    gives its own, a set made by hand uses the default order.
    """

    __slots__ = (
        "_by_connector",
        "_by_label",
        "_by_url",
        "_default",
        "_header_items",
        "_headers_by_connector",
        "_headers_by_url",
        "_items",
        "_on_bind",
        "_precedence",
        "_shadowed",
    )
    _by_connector: dict[str, MCPCredential]
    _by_label: dict[str, MCPCredential]
    _by_url: dict[str, MCPCredential]
    _default: MCPCredential | None
    _header_items: tuple[MCPServerHeaders, ...]
    _headers_by_connector: Mapping[str, MCPServerHeaders]
    _headers_by_url: Mapping[str, MCPServerHeaders]
    _items: tuple[MCPCredential, ...]
    _on_bind: OnBind | None
    _precedence: tuple[str, ...]
    _shadowed: Mapping[tuple[str, str], tuple[str, ...]]

    def __init__(
        self,
        credentials: Iterable[MCPCredential] = (),
        *,
        headers: Iterable[MCPServerHeaders] = (),
        precedence: Sequence[str] | None = None,
    ) -> None:
        items = tuple(credentials)
        by_url: dict[str, MCPCredential] = {}
        by_label: dict[str, MCPCredential] = {}
        by_connector: dict[str, MCPCredential] = {}
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
            elif cred._connector_id is not None:
                if cred._connector_id in by_connector:
                    raise ValueError("two credentials for the same connector")
                by_connector[cred._connector_id] = cred
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
        self._by_connector = by_connector
        self._default = default
        self._header_items = ()
        self._headers_by_url = self._headers_by_connector = _NO_ENTRIES
        if headers:
            self._index_headers(tuple(headers))
        self._precedence = DEFAULT_ORDER if precedence is None else tuple(precedence)
        self._shadowed = _NOTHING_SHADOWED
        self._on_bind = None

    def _index_headers(self, header_items: tuple[MCPServerHeaders, ...]) -> None:
        by_url: dict[str, MCPServerHeaders] = {}
        by_connector: dict[str, MCPServerHeaders] = {}
        for entry in header_items:
            if not isinstance(entry, MCPServerHeaders):
                raise TypeError(f"expected MCPServerHeaders items, got a {type(entry).__name__}")
            server = entry._server
            if server is not None:
                if server.url in by_url or server.url in self._by_url:
                    raise ValueError(
                        "two entries for the same server (put headers on its credential)"
                    )
                by_url[server.url] = entry
            else:
                assert entry._connector_id is not None  # its constructor checks
                if entry._connector_id in by_connector or entry._connector_id in self._by_connector:
                    raise ValueError("two entries for the same connector")
                by_connector[entry._connector_id] = entry
        self._header_items = header_items
        self._headers_by_url = by_url
        self._headers_by_connector = by_connector

    @property
    def default(self) -> MCPCredential | None:
        """The tool-runtime top-level credential that names no server, if any.

        It is never attached to an outgoing request by itself: bind it to a server with
        :meth:`bind_default` first.
        """
        return self._default

    @property
    def server_headers(self) -> tuple[MCPServerHeaders, ...]:
        """The header-only entries: servers (or connectors) that get headers and no token."""
        return self._header_items

    @property
    def precedence(self) -> tuple[str, ...]:
        """The order sources compete in for a server (the middleware's ``precedence``)."""
        return self._precedence

    def shadowed(self, url_or_entry: str | MCPCredential | MCPServerHeaders) -> tuple[str, ...]:
        """The sources whose credential (or headers) for that server lost to the one this set
        holds: at resolution, or when a credential was bound to it later."""
        if isinstance(url_or_entry, str):
            try:
                key = ("url", parse_server_url(url_or_entry).url)
            except ValueError:
                return ()
        else:
            key = entry_key(url_or_entry)
        return self._shadowed.get(key, ())

    def for_server(self, url_or_label: str) -> MCPCredential | None:
        """The credential for a server URL (compared normalised) or a server label."""
        if "://" in url_or_label:
            try:
                key = parse_server_url(url_or_label).url
            except ValueError:
                return None
            return self._by_url.get(key)
        return self._by_label.get(url_or_label)

    @property
    def unbound_connectors(self) -> tuple[str, ...]:
        """The connectors whose credential (or headers) is bound to no URL yet."""
        if not self._by_connector and not self._headers_by_connector:
            return ()
        return tuple(dict.fromkeys([*self._by_connector, *self._headers_by_connector]))

    def for_connector(self, connector_id: str) -> MCPCredential | None:
        """The credential of a connector tool not yet bound to a URL, if any."""
        return self._by_connector.get(connector_id)

    def headers_for(self, url: str | ServerURL) -> Mapping[str, str]:
        """The extra headers an outgoing request to ``url`` carries (besides the
        ``Authorization`` of its credential): its credential's, else those of the header-only
        entry for that server (same matching as credentials, but never a default or a
        connector not bound to a URL). Empty when none."""
        target = url if isinstance(url, ServerURL) else parse_server_url(url)
        cred = self.match_request(target)
        if cred is not None:
            return cred.headers
        entry = self._headers_match(target)
        return _NO_HEADERS if entry is None else entry.headers

    def headers_entry_for(self, url: str | ServerURL) -> MCPServerHeaders | None:
        """The header-only entry an outgoing request to ``url`` would use, when it has no
        credential."""
        if not self._headers_by_url:
            return None
        target = url if isinstance(url, ServerURL) else parse_server_url(url)
        if self.match_request(target) is not None:
            return None
        return self._headers_match(target)

    def _headers_match(self, request: ServerURL) -> MCPServerHeaders | None:
        """The header-only entry for ``request``, by the rule of :meth:`match_request`:
        headers go to their server only."""
        return match_entry(self._headers_by_url, request) if self._headers_by_url else None

    def bind_default(self, server_url: str) -> MCPCredentials:
        """A copy in which the unbound default credential competes for ``server_url`` as if
        the request had named that server: by :attr:`precedence` (by default the body's
        default beats provider data for it), a token beating headers alone. The loser is
        recorded in :meth:`shadowed`, and, in a request the middleware serves, an audit event
        ``mcp_credential_bound`` says which credential that server gets and what it beat.

        If a credential the request carries for that server wins, the default stays unbound.
        Without a default credential the set is returned unchanged.
        """
        default = self._default
        if default is None:
            return self
        return self._bind(default, server_url)

    def bind_connector(self, connector_id: str, server_url: str) -> MCPCredentials:
        """A copy in which the credential (and the header-only entry) of the connector tool
        naming ``connector_id`` is bound to ``server_url``, competing for it as
        :meth:`bind_default` does. Call it once the application has resolved the connector;
        until then the connector's credential is sent nowhere. Unchanged when the request
        has no such connector."""
        bound = self
        cred = self._by_connector.get(connector_id)
        if cred is not None:
            bound = bound._bind(cred, server_url)
        entry = bound._headers_by_connector.get(connector_id)
        if entry is not None:
            bound = bound._bind(entry, server_url)
        return bound

    def _bind(self, unbound: Entry, server_url: str) -> MCPCredentials:
        bound: Entry = unbound.replace(server_url=server_url)
        key = entry_key(bound)
        incumbent: Entry | None = self._by_url.get(key[1]) or self._headers_by_url.get(key[1])
        shadowed = dict(self._shadowed)
        creds = [c for c in self._items if c is not unbound]
        header_items = [e for e in self._header_items if e is not unbound]
        if incumbent is None or beats(bound, incumbent, self._precedence):
            winner = bound
            beaten = () if incumbent is None else (incumbent._source, *self.shadowed(incumbent))
            creds = [c for c in creds if c is not incumbent]
            header_items = [e for e in header_items if e is not incumbent]
            if isinstance(bound, MCPCredential):
                creds.append(bound)
            else:
                header_items.append(bound)
        else:
            winner = incumbent
            beaten = (*self.shadowed(incumbent), unbound._source)
            # The default (or the connector's entry) stays as it was, unbound.
            if isinstance(unbound, MCPCredential):
                creds.append(unbound)
            else:
                header_items.append(unbound)
        order = self._precedence
        shadowed[key] = tuple(sorted(map(str, beaten), key=lambda source: _rank(source, order)))
        result = MCPCredentials(creds, headers=header_items, precedence=order)
        result._shadowed = shadowed
        result._on_bind = self._on_bind
        if self._on_bind is not None:
            self._on_bind(winner, shadowed[key])
        return result

    def _resolved(
        self, shadowed: Mapping[tuple[str, str], tuple[str, ...]], on_bind: OnBind | None = None
    ) -> MCPCredentials:
        """This set, told what each entry shadowed at resolution (and the audit's hook)."""
        self._shadowed = shadowed
        self._on_bind = on_bind
        return self

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
        return match_entry(self._by_url, request)

    def __iter__(self) -> Iterator[MCPCredential]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        """Whether it holds anything to send: a credential or a header-only entry."""
        return bool(self._items) or bool(self._header_items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCPCredentials):
            return NotImplemented
        return set(self._items) == set(other._items) and set(self._header_items) == set(
            other._header_items
        )

    def __hash__(self) -> int:
        return hash((frozenset(self._items), frozenset(self._header_items)))

    def __repr__(self) -> str:
        if self._header_items:
            return f"MCPCredentials({list(self._items)!r}, headers={list(self._header_items)!r})"
        return f"MCPCredentials({list(self._items)!r})"

    __str__ = __repr__


EMPTY_CREDENTIALS = MCPCredentials()
