"""The legacy provider-data header: ``X-LlamaStack-Provider-Data: {"mcp_headers": {...}}``.

``mcp_headers`` maps an absolute server URL to a dict of header name to string value. An
``Authorization: Bearer <token>`` entry (name in any case) gives a credential for that URL,
the other entries become its extra ``headers``. An entry without ``Authorization`` gives
nothing. Other keys of the header belong to other providers and are left alone.
"""

from __future__ import annotations

import json
from typing import Any, Final

from mcp_auth_middleware.checks import RESERVED_HEADERS, check_extra_header
from mcp_auth_middleware.config import ProviderDataMode
from mcp_auth_middleware.credentials import CredentialSource, MCPCredential
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_PROVIDER_DATA,
    CONFLICTING_CREDENTIALS,
    INVALID_PROVIDER_DATA,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import SourceRequest, parse_token
from mcp_auth_middleware.urls import parse_server_url

__all__ = ["RESERVED_HEADERS", "ProviderDataSource", "check_extra_header"]

_SOURCE: Final = CredentialSource.PROVIDER_DATA.value

#: ``json.loads`` of a ``str`` without its keyword handling: the same decoder, called directly.
_decode = json.JSONDecoder().decode


class ProviderDataSource:
    """Credentials from the provider-data header (see the module docstring).

    In ``reject`` mode an ``Authorization`` entry refuses the request with
    ``authorization_in_provider_data``; in ``ignore`` mode the source is not consulted.
    """

    name = _SOURCE
    needs_body = False

    def __init__(self, header: str, mode: ProviderDataMode = ProviderDataMode.ACCEPT) -> None:
        self.header = header
        self._key = header.lower()
        self.mode = mode

    def _invalid(self) -> CredentialRejected:
        return CredentialRejected(INVALID_PROVIDER_DATA, self.header, source=_SOURCE)

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        values = request.header_values(self._key)
        if not values:
            return []
        if len(values) > 1:
            raise self._invalid()  # two values: which one would the application read?
        try:
            data = _decode(values[0])
        except (ValueError, RecursionError):
            raise self._invalid() from None
        if not isinstance(data, dict):
            raise self._invalid()
        mcp = data.get("mcp_headers")
        if mcp is None:
            return []
        if not isinstance(mcp, dict):
            raise self._invalid()
        found: dict[str, MCPCredential] = {}
        for url, headers in mcp.items():
            try:
                server = parse_server_url(url)
            except ValueError:
                raise self._invalid() from None
            if not isinstance(headers, dict):
                raise self._invalid()
            key = server.url
            cred = self._credential(url, headers)
            if cred is None:
                continue
            previous = found.setdefault(key, cred)
            if not previous.same_token(cred):
                raise CredentialRejected(CONFLICTING_CREDENTIALS, self.header, source=_SOURCE)
        return list(found.values())

    def _credential(self, url: str, headers: dict[Any, Any]) -> MCPCredential | None:
        authorization: Any = None
        extra: dict[str, str] = {}
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise self._invalid()
            if name.strip().lower() == "authorization":  # look-alikes are no token names
                if authorization is not None:
                    raise self._invalid()
                authorization = value
            elif check_extra_header(name, value):
                extra[name] = value
            else:
                raise self._invalid()
        if authorization is None:
            return None
        if self.mode is ProviderDataMode.REJECT:
            raise CredentialRejected(AUTHORIZATION_IN_PROVIDER_DATA, self.header, source=_SOURCE)
        token = parse_token(authorization, param=self.header, source=_SOURCE, require_bearer=True)
        return MCPCredential(
            token=token, source=CredentialSource.PROVIDER_DATA, server_url=url, headers=extra
        )
