"""MCPCredential, MCPServerHeaders and MCPCredentials as values: what each refuses to hold,
how they compare, and how binding a connector or the default competes for a server.

No I/O: the request-path behaviour of the same objects is in ``test_carriers.py`` and
``test_token_reach.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from mcp_auth_middleware import MCPCredential, MCPCredentials, MCPServerHeaders
from mcp_auth_middleware.credentials import InvalidCredential
from mcp_auth_middleware.urls import parse_server_url

URL = "https://mcp.example.com/mcp"
OTHER = "https://mcp.example.com/other"
TOKEN = "unit-token-0123456789"


def cred(url: str | None = URL, token: str = TOKEN, **fields: Any) -> MCPCredential:
    return MCPCredential(token=token, source=fields.pop("source", "body"), server_url=url, **fields)


def headers(url: str | None = URL, **fields: Any) -> MCPServerHeaders:
    return MCPServerHeaders(
        headers=fields.pop("headers", {"X-Api-Key": "k"}),
        source=fields.pop("source", "provider_data"),
        server_url=url,
        **fields,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"source": ""}, "source"),
        ({"source": 3}, "source"),
        ({"server_label": 3}, "server_label"),
        ({"headers": {"X-Key": "a", "x-key": "b"}}, "headers"),
        ({"server_url": "https://h/a/%2e%2e/b"}, "server_url"),
    ],
    ids=["empty-source", "source-not-a-string", "label-not-a-string", "one-name-twice", "dots"],
)
def test_a_credential_names_the_field_it_refuses(fields: dict[str, Any], field: str) -> None:
    fields = {"token": TOKEN, "source": "body", "server_url": URL, **fields}
    with pytest.raises(InvalidCredential) as caught:
        MCPCredential(**fields)
    assert caught.value.field == field
    assert TOKEN not in str(caught.value)


def test_credentials_compare_by_value_and_hash_alike() -> None:
    assert cred() == cred()
    assert hash(cred()) == hash(cred())
    assert cred() != cred(token="another-token-000")
    assert cred() != "not a credential"
    assert cred().__eq__(object()) is NotImplemented


def test_header_only_entries_compare_replace_and_hash() -> None:
    entry = headers()
    assert entry == headers()
    assert hash(entry) == hash(headers())
    assert entry != headers(headers={"X-Api-Key": "other"})
    assert entry.__eq__(cred()) is NotImplemented
    moved = entry.replace(server_url=OTHER)
    assert moved.server_url == OTHER
    assert dict(moved.headers) == {"X-Api-Key": "k"}
    assert "k" not in repr(entry)  # names only


def test_a_set_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(TypeError, match="MCPCredential items"):
        MCPCredentials(["not a credential"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="MCPServerHeaders items"):
        MCPCredentials(headers=[cred()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="same connector"):
        MCPCredentials([cred(None, connector_id="c1"), cred(None, "other-1234", connector_id="c1")])


def test_a_set_answers_lookups_it_cannot_match_with_nothing() -> None:
    creds = MCPCredentials([cred()], headers=[headers(OTHER)])
    assert creds.precedence == ("body", "server_header", "provider_data")
    assert creds.for_server("not a url://") is None
    assert creds.shadowed("not a url://") == ()
    assert creds.headers_for(URL) == {}  # the credential's own (none)
    assert creds.headers_entry_for(URL) is None  # a credential wins over headers alone
    assert dict(creds.headers_for(OTHER)) == {"X-Api-Key": "k"}
    assert creds.headers_entry_for(parse_server_url(OTHER)) == headers(OTHER)
    assert creds == MCPCredentials([cred()], headers=[headers(OTHER)])
    assert hash(creds) == hash(MCPCredentials([cred()], headers=[headers(OTHER)]))
    assert creds.__eq__("a set") is NotImplemented


def test_binding_a_connector_binds_its_credential_or_its_headers() -> None:
    connector = "connector_crm"
    creds = MCPCredentials([cred(None, connector_id=connector)])
    assert creds.unbound_connectors == (connector,)
    assert creds.for_connector(connector) is not None
    bound = creds.bind_connector(connector, URL)
    assert bound.unbound_connectors == ()
    got = bound.for_server(URL)
    assert got is not None
    assert got.token.get_secret_value() == TOKEN
    assert creds.bind_connector("no-such-connector", URL) is creds
    only_headers = MCPCredentials(headers=[headers(None, connector_id="connector_mail")])
    entry = only_headers.bind_connector("connector_mail", OTHER).headers_entry_for(OTHER)
    assert entry is not None
    assert entry.server_url == OTHER


def test_a_headers_only_connector_bound_where_a_credential_is_stays_unbound() -> None:
    connector = "connector_mail"
    creds = MCPCredentials([cred()], headers=[headers(None, connector_id=connector)])
    bound = creds.bind_connector(connector, URL)
    assert bound.for_server(URL) == cred()  # a token beats headers alone, whatever the order
    assert bound.unbound_connectors == (connector,)
    assert bound.shadowed(URL) == ("provider_data",)
