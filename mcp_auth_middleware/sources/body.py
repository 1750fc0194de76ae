"""The body parameter: ``tools[].authorization`` (Responses) and top-level ``authorization``
(tool-runtime), and the parser that reads them.

Parsing must agree with the application's parser (``json.loads`` in Starlette and FastAPI):
msgspec decodes only the three top-level fields we need (skipping the rest without building
objects); whenever it refuses an input, ``json.loads`` decides, so BOMs, UTF-16/32, lone
surrogates, ``NaN`` and out-of-range numbers read exactly as the application reads them.
msgspec resolves ``\\u`` escapes in keys and keeps the last of duplicate keys, as
``json.loads`` does.
"""

from __future__ import annotations

import codecs
import json
import sys
import unicodedata
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from mcp_auth_middleware.credentials import CredentialSource, MCPCredential
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_SERVER_URL,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import MCPTool, ParsedBody, SourceRequest, parse_token
from mcp_auth_middleware.urls import parse_server_url

__all__ = ["BodySource", "check_tool_headers", "parse_body"]

_BODY: Final = CredentialSource.BODY.value


class _Envelope(msgspec.Struct):
    tools: Any = None
    authorization: Any = None
    mcp_endpoint: Any = None


_decode = msgspec.json.Decoder(_Envelope).decode


def parse_body(body: bytes) -> ParsedBody | None:
    """The credential-bearing parts of a JSON body; ``None`` if it is not a JSON object."""
    try:
        envelope = _decode(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return _parse_with_json(body)
    tools, authorization, endpoint = envelope.tools, envelope.authorization, envelope.mcp_endpoint
    if tools is None and authorization is None and endpoint is None:
        return _EMPTY  # json.loads would find nothing either, or refuse the body
    if _may_differ(body):
        return _parse_with_json(body)
    return ParsedBody(_mcp_tools(tools), authorization, endpoint)


_EMPTY = ParsedBody()
_SLICE = 1 << 20
_DIGITS = bytes(1 if 0x30 <= b <= 0x39 else 0 for b in range(256))


def _parse_with_json(body: bytes) -> ParsedBody | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the application cannot parse it either
    if not isinstance(document, dict):
        return None
    return ParsedBody(
        _mcp_tools(document.get("tools")),
        document.get("authorization"),
        document.get("mcp_endpoint"),
    )


def _may_differ(body: bytes) -> bool:
    """Whether ``json.loads`` might refuse (or read otherwise) a body msgspec accepted.

    msgspec skips the fields we do not name without checking their UTF-8, and reads integers
    of any length; ``json.loads`` refuses invalid UTF-8 (it lets UTF-8-encoded surrogates
    through) and integers longer than ``sys.get_int_max_str_digits()``. Both checks work in
    1 MiB slices, so they cost no memory beyond a slice.
    """
    view = memoryview(body)
    if not body.isascii():
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            for start in range(0, len(body), _SLICE):
                decoder.decode(view[start : start + _SLICE])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return True
    limit = sys.get_int_max_str_digits()
    if limit and len(body) > limit:
        run = b"\x01" * (limit + 1)
        for start in range(0, len(body), _SLICE):
            if run in bytes(view[max(0, start - limit) : start + _SLICE]).translate(_DIGITS):
                return True
    return False


def _mcp_tools(tools: Any) -> tuple[MCPTool, ...]:
    if not isinstance(tools, list):
        return ()  # not ours to judge: the application answers as it would
    return tuple(
        MCPTool(
            index,
            tool.get("server_url"),
            tool.get("server_label"),
            tool.get("authorization"),
            tool.get("headers"),
        )
        for index, tool in enumerate(tools)
        if isinstance(tool, dict) and tool.get("type") == "mcp"
    )


def _is_authorization(name: str) -> bool:
    folded = name.strip().casefold()
    if folded == "authorization":
        return True
    # Look-alikes (full-width letters, dotless i, ...) are refused as well: no HTTP stack
    # sends them as Authorization, but no honest caller writes them either.
    return (
        not name.isascii()
        and unicodedata.normalize("NFKC", name).strip().casefold().replace("\u0131", "i")
        == "authorization"
    )


def check_tool_headers(body: ParsedBody) -> None:
    """Refuse an MCP tool whose ``headers`` smuggle an ``Authorization`` (any case)."""
    for tool in body.tools:
        headers = tool.headers
        if isinstance(headers, dict):
            for name in headers:
                if isinstance(name, str) and _is_authorization(name):
                    raise CredentialRejected(
                        AUTHORIZATION_IN_HEADERS, f"tools[{tool.position}].headers", source=_BODY
                    )


def _absent(value: Any) -> bool:
    return value is None or value == ""


def _server_key(url: Any, param: str) -> str:
    if not isinstance(url, str):
        raise CredentialRejected(INVALID_SERVER_URL, param, source=_BODY)
    try:
        return parse_server_url(url).url
    except ValueError:
        raise CredentialRejected(INVALID_SERVER_URL, param, source=_BODY) from None


class BodySource:
    """Credentials from the request body.

    * Responses: each ``{"type": "mcp"}`` tool's ``authorization``, for its ``server_url``
      (and ``server_label``); a tool with no ``server_url`` (a connector) gives a credential
      known by its label only.
    * Tool-runtime: a top-level ``authorization``, for ``mcp_endpoint.uri`` when present,
      else the request's unbound ``default`` credential.

    ``null`` or ``""`` count as absent. Two tools for the same server with different tokens
    are refused (``conflicting_credentials``).
    """

    name = _BODY
    needs_body = True

    def read(self, request: SourceRequest) -> Iterable[MCPCredential]:
        body = request.body
        if body is None:
            return ()
        found: dict[str, tuple[str, MCPCredential]] = {}
        labelled: list[MCPCredential] = []
        for tool in body.tools:
            if _absent(tool.authorization):
                continue
            prefix = f"tools[{tool.position}]"
            token = parse_token(
                tool.authorization,
                param=f"{prefix}.authorization",
                source=_BODY,
                require_bearer=False,
            )
            label = tool.server_label if isinstance(tool.server_label, str) else None
            if tool.server_url is None:
                if label is not None:
                    labelled.append(
                        MCPCredential(token=token, source=CredentialSource.BODY, server_label=label)
                    )
                continue
            key = _server_key(tool.server_url, f"{prefix}.server_url")
            self._add(found, key, token, f"{prefix}.server_url", tool.server_url, label)
        if not _absent(body.authorization):
            token = parse_token(
                body.authorization, param="authorization", source=_BODY, require_bearer=False
            )
            endpoint = body.mcp_endpoint
            uri = endpoint.get("uri") if isinstance(endpoint, dict) else None
            if uri is None:
                labelled.append(MCPCredential(token=token, source=CredentialSource.BODY))
            else:
                key = _server_key(uri, "mcp_endpoint.uri")
                self._add(found, key, token, "mcp_endpoint.uri", uri, None)
        return [cred for _, cred in found.values()] + labelled

    @staticmethod
    def _add(
        found: dict[str, tuple[str, MCPCredential]],
        key: str,
        token: str,
        param: str,
        url: str,
        label: str | None,
    ) -> None:
        previous = found.get(key)
        if previous is not None:
            if previous[0] != token:
                raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_BODY)
            return
        found[key] = (
            token,
            MCPCredential(
                token=token, source=CredentialSource.BODY, server_url=url, server_label=label
            ),
        )
