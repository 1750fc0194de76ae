"""The legacy provider-data header: ``X-LlamaStack-Provider-Data: {"mcp_headers": {...}}``
(or its new name, ``X-OGX-Provider-Data``: the source reads every name it is given, and a
request carrying more than one of them, or one twice, is refused as ambiguous).

``mcp_headers`` maps an absolute server URL to a dict of header name to string value. An
``Authorization: Bearer <token>`` entry (name in any case) gives a credential for that URL,
the other entries become its extra ``headers``. An entry without ``Authorization`` gives
that server its other headers (:class:`MCPServerHeaders`), as llama-stack forwards them.
Other keys of the header belong to other providers and are left alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from mcp_auth_middleware.checks import (
    HEADER_RULE,
    RESERVED_HEADERS,
    check_extra_header,
    is_header_name,
)
from mcp_auth_middleware.config import ProviderDataMode
from mcp_auth_middleware.credentials import (
    CredentialSource,
    Entry,
    MCPCredential,
    MCPServerHeaders,
    entry_key,
)
from mcp_auth_middleware.errors import (
    AMBIGUOUS_PROVIDER_DATA,
    AUTHORIZATION_IN_PROVIDER_DATA,
    CONFLICTING_CREDENTIALS,
    INVALID_HEADER,
    INVALID_PROVIDER_DATA,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import SourceRequest, parse_token
from mcp_auth_middleware.urls import parse_server_url, redacted_url

__all__ = ["RESERVED_HEADERS", "ProviderDataSource", "check_extra_header"]

_SOURCE: Final = CredentialSource.PROVIDER_DATA.value

#: ``json.loads`` of a ``str`` without its keyword handling: the same decoder, called directly.
_decode = json.JSONDecoder().decode


class ProviderDataSource:
    """Credentials from the provider-data header (see the module docstring).

    ``header`` is one name or several (matched case-insensitively). In ``reject`` mode an
    ``Authorization`` entry refuses the request with ``authorization_in_provider_data``, and
    an entry without one is checked but not sent; in ``ignore`` mode the source is not
    consulted.
    """

    name = _SOURCE
    needs_body = False

    def __init__(
        self, header: str | Sequence[str], mode: ProviderDataMode = ProviderDataMode.ACCEPT
    ) -> None:
        self.headers: tuple[str, ...] = (header,) if isinstance(header, str) else tuple(header)
        self.header = self.headers[0]
        self._keys = tuple(name.lower() for name in self.headers)
        self.mode = mode

    def _invalid(self, header: str) -> CredentialRejected:
        return CredentialRejected(INVALID_PROVIDER_DATA, header, source=_SOURCE)

    def read(self, request: SourceRequest) -> list[Entry]:
        present = [
            (name, value)
            for name, key in zip(self.headers, self._keys, strict=True)
            for value in request.header_values(key)
        ]
        if not present:
            return []
        header = present[0][0]
        if len(present) > 1:  # which one would the application read?
            names = dict.fromkeys(name for name, _ in present)
            param = ", ".join(names)
            raise CredentialRejected(AMBIGUOUS_PROVIDER_DATA, param, source=_SOURCE)
        try:
            data = _decode(present[0][1])
        except (ValueError, RecursionError):
            raise self._invalid(header) from None
        if not isinstance(data, dict):
            raise self._invalid(header)
        mcp = data.get("mcp_headers")
        if mcp is None:
            return []
        if not isinstance(mcp, dict):
            raise self._invalid(header)
        found: dict[tuple[str, str], Entry] = {}
        for url, headers in mcp.items():
            try:
                parse_server_url(url)
            except ValueError:
                raise self._invalid(header) from None
            if not isinstance(headers, dict):
                raise self._invalid(header)
            entry = self._entry(header, url, headers)
            if entry is None:
                continue
            previous = found.setdefault(entry_key(entry), entry)
            if previous is not entry and not _same(previous, entry):
                raise CredentialRejected(CONFLICTING_CREDENTIALS, header, source=_SOURCE)
        return list(found.values())

    def _entry(self, header: str, url: str, headers: dict[Any, Any]) -> Entry | None:
        authorization: Any = None
        extra: dict[str, str] = {}
        seen: set[str] = set()
        where = f"mcp_headers[{redacted_url(url)!r}]"
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise self._invalid(header)
            if name.strip().lower() == "authorization":  # look-alikes are no token names
                if authorization is not None:
                    raise self._invalid(header)
                authorization = value
            elif name.lower() in seen:
                raise _invalid_header(
                    header, where, name, "the same header name twice (in any case)"
                )
            elif check_extra_header(name, value):
                extra[name] = value
                seen.add(name.lower())
            else:
                raise _invalid_header(header, where, name, HEADER_RULE)
        if authorization is None:
            if not extra or self.mode is ProviderDataMode.REJECT:
                return None  # nothing to send, or the legacy path is closed
            return MCPServerHeaders(
                headers=extra, source=CredentialSource.PROVIDER_DATA, server_url=url
            )
        if self.mode is ProviderDataMode.REJECT:
            raise CredentialRejected(AUTHORIZATION_IN_PROVIDER_DATA, header, source=_SOURCE)
        token = parse_token(authorization, param=header, source=_SOURCE, require_bearer=True)
        return MCPCredential(
            token=token, source=CredentialSource.PROVIDER_DATA, server_url=url, headers=extra
        )


def _same(a: Entry, b: Entry) -> bool:
    """Two entries of ``mcp_headers`` for one server (URLs that normalise alike) that say the
    same: the same token (or none) and the same headers."""
    if isinstance(a, MCPCredential) and isinstance(b, MCPCredential):
        return a.same_token(b) and dict(a.headers) == dict(b.headers)
    return type(a) is type(b) and dict(a.headers) == dict(b.headers)


def _invalid_header(header: str, where: str, name: str, rule: str) -> CredentialRejected:
    """``invalid_provider_data`` for the header (``param``), the message naming the entry
    (and the header in it, when its name is safe to quote)."""
    entry = f"{where}.{name}" if is_header_name(name) else where
    message = INVALID_HEADER.format(param=entry, rule=rule)
    return CredentialRejected(INVALID_PROVIDER_DATA, header, message=message, source=_SOURCE)
