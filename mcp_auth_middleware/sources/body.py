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
from typing import Any, Final

import msgspec

from mcp_auth_middleware.credentials import CredentialSource, MCPCredential
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_SERVER_URL,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import (
    MCPTool,
    ParsedBody,
    SourceRequest,
    check_token,
    parse_token,
)
from mcp_auth_middleware.urls import parse_server_url

__all__ = ["BodySource", "check_tool_headers", "parse_body"]

_BODY: Final = CredentialSource.BODY.value
_SOURCE: Final = CredentialSource.BODY


class _Tool(msgspec.Struct, gc=False):
    type: Any = None
    server_url: Any = None
    server_label: Any = None
    authorization: Any = None
    headers: Any = None


class _Envelope(msgspec.Struct, gc=False):
    # A ``tools`` that is not a list of objects fails validation: json.loads then decides.
    tools: list[_Tool] | None = None
    authorization: Any = None
    mcp_endpoint: Any = None


_decode = msgspec.json.Decoder(_Envelope).decode
_EMPTY = ParsedBody()
_SLICE = 1 << 20
_DIGITS = bytes(1 if 0x30 <= b <= 0x39 else 0 for b in range(256))


def parse_body(body: bytes) -> ParsedBody | None:
    """The credential-bearing parts of a JSON body; ``None`` if it is not a JSON object."""
    try:
        envelope = _decode(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return _parse_with_json(body)
    mcp: list[MCPTool] = []
    if envelope.tools:
        for position, t in enumerate(envelope.tools):
            if t.type == "mcp":
                tool = MCPTool(position, t.server_url, t.server_label, t.authorization, t.headers)
                mcp.append(tool)
    if not mcp and envelope.authorization is None and envelope.mcp_endpoint is None:
        return _EMPTY  # nothing to read here, whatever json.loads would make of the rest
    if body.isascii():  # the usual case, inlined: only the digit-run check can apply
        limit = sys.get_int_max_str_digits()
        if limit and len(body) > limit and _has_digit_run(body, limit + 1):
            return _parse_with_json(body)
    elif _may_differ(body):
        return _parse_with_json(body)
    return ParsedBody(tuple(mcp), envelope.authorization, envelope.mcp_endpoint)


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
    through) and integers longer than ``sys.get_int_max_str_digits()``. Neither check costs
    memory beyond a slice, and the second reads one byte in ``limit + 1``.
    """
    if not body.isascii():
        view = memoryview(body)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            for start in range(0, len(body), _SLICE):
                decoder.decode(view[start : start + _SLICE])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return True
    limit = sys.get_int_max_str_digits()
    return bool(limit) and _has_digit_run(body, limit + 1)


def _has_digit_run(body: bytes, run: int) -> bool:
    """Whether ``body`` holds ``run`` consecutive ASCII digits.

    Any such run covers one of the positions ``run - 1``, ``2 * run - 1``, ...: sample
    those, and look closely only around a sampled digit.
    """
    if len(body) < run:
        return False
    marks = body[run - 1 :: run].translate(_DIGITS)
    needle = b"\x01" * run
    hit = marks.find(1)
    while hit != -1:
        at = (hit + 1) * run - 1
        if needle in body[max(0, at - run + 1) : at + run].translate(_DIGITS):
            return True
        hit = marks.find(1, hit + 1)
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


def _param(where: str | int) -> str:
    """The field at fault: a name, or the position of a tool (built only when raising)."""
    return where if isinstance(where, str) else f"tools[{where}].server_url"


def _server_key(url: Any, where: str | int) -> str:
    if isinstance(url, str):
        try:
            return parse_server_url(url).url
        except ValueError:
            pass
    raise CredentialRejected(INVALID_SERVER_URL, _param(where), source=_BODY)


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

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        body = request.body
        if body is None:
            return []
        found: list[MCPCredential] = []
        tokens: dict[str, str] = {}  # normalised server URL -> token, for conflicts
        for tool in body.tools:
            value = tool.authorization
            if value is None or value == "":
                continue
            token = check_token(value, require_bearer=False)
            if token is None:
                raise CredentialRejected(
                    INVALID_AUTHORIZATION, f"tools[{tool.position}].authorization", source=_BODY
                )
            label = tool.server_label if type(tool.server_label) is str else None
            if tool.server_url is None:
                if label is not None:
                    found.append(MCPCredential(token=token, source=_SOURCE, server_label=label))
                continue
            where = tool.position
            if self._first(tokens, _server_key(tool.server_url, where), token, where):
                found.append(
                    MCPCredential(
                        token=token, source=_SOURCE, server_url=tool.server_url, server_label=label
                    )
                )
        value = body.authorization
        if value is not None and value != "":
            token = parse_token(value, param="authorization", source=_BODY, require_bearer=False)
            endpoint = body.mcp_endpoint
            uri = endpoint.get("uri") if type(endpoint) is dict else None
            if uri is None:
                found.append(MCPCredential(token=token, source=_SOURCE))
            elif self._first(
                tokens, _server_key(uri, "mcp_endpoint.uri"), token, "mcp_endpoint.uri"
            ):
                found.append(MCPCredential(token=token, source=_SOURCE, server_url=uri))
        return found

    @staticmethod
    def _first(tokens: dict[str, str], key: str, token: str, where: str | int) -> bool:
        """Whether this is the first credential for ``key``; a different token is refused."""
        previous = tokens.get(key)
        if previous is None:
            tokens[key] = token
            return True
        if previous != token:
            raise CredentialRejected(CONFLICTING_CREDENTIALS, _param(where), source=_BODY)
        return False
