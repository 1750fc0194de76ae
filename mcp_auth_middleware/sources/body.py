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
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from mcp_auth_middleware.credentials import CredentialSource, MCPCredential, _credential
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_SERVER_URL,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import (
    MAX_TOKEN_LENGTH,
    ParsedBody,
    SourceRequest,
    check_token,
    parse_token,
)
from mcp_auth_middleware.urls import ServerURL, parse_server_url

__all__ = [
    "BodySource",
    "check_tool_headers",
    "decode_body",
    "parse_body",
    "read_credentials",
]

_BODY: Final = CredentialSource.BODY.value
_SOURCE: Final = CredentialSource.BODY


class _Tool(msgspec.Struct, gc=False):
    """One item of ``tools`` as decoded: only the fields a source reads."""

    type: Any = None
    server_url: Any = None
    server_label: Any = None
    authorization: Any = None
    headers: Any = None

    def __repr__(self) -> str:  # the decoded fields include the token
        return f"_Tool(type={self.type!r}, server_url={self.server_url!r}, authorization=[secure])"


class _Envelope(msgspec.Struct, gc=False):
    """The top-level fields a source reads. A ``tools`` that is not a list of objects
    fails validation: ``json.loads`` then decides."""

    tools: list[_Tool] | None = None
    authorization: Any = None
    mcp_endpoint: Any = None

    def __repr__(self) -> str:
        return f"_Envelope(tools={self.tools!r}, authorization=[secure])"


_decode = msgspec.json.Decoder(_Envelope).decode
_NOTHING: Final = _Envelope()
_NOT_A_TOOL: Final = _Tool()
_SLICE = 1 << 20
_DIGITS = bytes(1 if 0x30 <= b <= 0x39 else 0 for b in range(256))


def decode_body(body: bytes) -> _Envelope | None:
    """The credential-bearing fields of a JSON body; ``None`` if it is not a JSON object.

    msgspec reads them; whenever it refuses the input, or ``json.loads`` might read it
    otherwise (see :func:`_may_differ`), ``json.loads`` decides.
    """
    try:
        envelope = _decode(body)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        return _decode_with_json(body)
    limit = sys.get_int_max_str_digits()
    if (not limit or len(body) <= limit) and body.isascii():
        return envelope  # the usual small body: no check of _may_differ's can apply
    if _nothing_to_read(envelope):
        # Whatever json.loads would make of the rest. Checked before any pass over a big
        # body, so a long conversation with no credential in it costs the decode alone.
        return _NOTHING
    return _decode_with_json(body) if _may_differ(body) else envelope


def _nothing_to_read(envelope: _Envelope) -> bool:
    return (
        envelope.authorization is None
        and envelope.mcp_endpoint is None
        and not any(tool.type == "mcp" for tool in envelope.tools or ())
    )


def _decode_with_json(body: bytes) -> _Envelope | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # the application cannot parse it either
    if not isinstance(document, dict):
        return None
    tools = document.get("tools")
    return _Envelope(
        # Not a list: not ours to judge, the application answers as it would. Items that are
        # not objects keep their place, so positions in errors are the caller's.
        [
            _Tool(
                tool.get("type"),
                tool.get("server_url"),
                tool.get("server_label"),
                tool.get("authorization"),
                tool.get("headers"),
            )
            if isinstance(tool, dict)
            else _NOT_A_TOOL
            for tool in tools
        ]
        if isinstance(tools, list)
        else None,
        document.get("authorization"),
        document.get("mcp_endpoint"),
    )


def parse_body(body: bytes) -> ParsedBody | None:
    """The credential-bearing parts of a JSON body; ``None`` if it is not a JSON object."""
    envelope = decode_body(body)
    if envelope is None:
        return None
    return ParsedBody._of(envelope.tools or (), envelope.authorization, envelope.mcp_endpoint)


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
        _check_headers(tool.headers, tool.position)


def _check_headers(headers: Any, position: int) -> None:
    if isinstance(headers, dict):
        for name in headers:
            if isinstance(name, str) and _is_authorization(name):
                raise CredentialRejected(
                    AUTHORIZATION_IN_HEADERS, f"tools[{position}].headers", source=_BODY
                )


def _param(where: str | int) -> str:
    """The field at fault: a name, or the position of a tool (built only when raising)."""
    return where if isinstance(where, str) else f"tools[{where}].server_url"


def _at(positions: Sequence[int] | None, index: int) -> int:
    """The place in the request's ``tools`` of the ``index``-th decoded tool."""
    return index if positions is None else positions[index]


def _server(url: Any, where: str | int) -> ServerURL:
    if isinstance(url, str):
        try:
            return parse_server_url(url)
        except ValueError:
            pass
    raise CredentialRejected(INVALID_SERVER_URL, _param(where), source=_BODY)


def read_credentials(
    tools: Sequence[Any],
    authorization: Any,
    mcp_endpoint: Any,
    positions: Sequence[int] | None = None,
) -> list[MCPCredential]:
    """The body's credentials (see :class:`BodySource`) from its decoded fields.

    ``tools`` are the decoded ``tools`` items (anything with ``type``, ``server_url``,
    ``server_label``, ``authorization`` and ``headers``); ``positions`` their places in the
    request's ``tools`` list when that is not their index (errors name them).
    """
    found: list[MCPCredential] = []
    tokens: dict[str, str] = {}  # normalised server URL -> token, for conflicts
    for index, tool in enumerate(tools):
        if tool.type != "mcp":
            continue
        if tool.headers is not None:
            _check_headers(tool.headers, _at(positions, index))
        value = tool.authorization
        if value is None or value == "":
            continue
        # A bare token (the usual form) passes check_token's rules here, without the call:
        # printable ASCII, no space (so no scheme), not the lone word "Bearer".
        if (
            type(value) is str
            and len(value) <= MAX_TOKEN_LENGTH
            and value.isascii()
            and value.isprintable()
            and " " not in value
            and (len(value) != 6 or value.lower() != "bearer")
        ):
            token = value
        else:
            checked = check_token(value, require_bearer=False)
            if checked is None:
                raise CredentialRejected(
                    INVALID_AUTHORIZATION,
                    f"tools[{_at(positions, index)}].authorization",
                    source=_BODY,
                )
            token = checked
        label = tool.server_label if type(tool.server_label) is str else None
        url = tool.server_url
        if url is None:
            if label is not None:
                found.append(_credential(token, _SOURCE, None, label, None))
            continue
        try:
            server = parse_server_url(url) if type(url) is str else None
        except ValueError:
            server = None
        if server is None:
            where = _param(_at(positions, index))
            raise CredentialRejected(INVALID_SERVER_URL, where, source=_BODY)
        previous = tokens.get(server.url)
        if previous is None:
            tokens[server.url] = token
            found.append(_credential(token, _SOURCE, url, label, server))
        elif previous != token:
            raise CredentialRejected(
                CONFLICTING_CREDENTIALS,
                _param(_at(positions, index)),
                source=_BODY,
            )
    if authorization is not None and authorization != "":
        token = parse_token(
            authorization, param="authorization", source=_BODY, require_bearer=False
        )
        uri = mcp_endpoint.get("uri") if type(mcp_endpoint) is dict else None
        if uri is None:
            found.append(_credential(token, _SOURCE, None, None, None))
        else:
            server = _server(uri, "mcp_endpoint.uri")
            previous = tokens.get(server.url)
            if previous is None:
                found.append(_credential(token, _SOURCE, uri, None, server))
            elif previous != token:
                raise CredentialRejected(CONFLICTING_CREDENTIALS, "mcp_endpoint.uri", source=_BODY)
    return found


class BodySource:
    """Credentials from the request body.

    * Responses: each ``{"type": "mcp"}`` tool's ``authorization``, for its ``server_url``
      (and ``server_label``); a tool with no ``server_url`` (a connector) gives a credential
      known by its label only.
    * Tool-runtime: a top-level ``authorization``, for ``mcp_endpoint.uri`` when present,
      else the request's unbound ``default`` credential.

    ``null`` or ``""`` count as absent. Two tools for the same server with different tokens
    are refused (``conflicting_credentials``), and so is a tool whose ``headers`` hold an
    ``Authorization`` (``authorization_in_headers``).
    """

    name = _BODY
    needs_body = True

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        envelope = request._envelope
        if envelope is not None:
            return read_credentials(
                envelope.tools or (), envelope.authorization, envelope.mcp_endpoint
            )
        body = request.body
        if body is None:
            return []
        return read_credentials(
            body.tools,
            body.authorization,
            body.mcp_endpoint,
            [tool.position for tool in body.tools],
        )
