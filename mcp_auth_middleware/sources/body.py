"""The body parameter: ``tools[].authorization`` (Responses) and top-level ``authorization``
(tool-runtime), and the parser that reads them.

The parser must read what the application's parser reads, and it must do a bounded amount of
work whatever the body holds. So:

* msgspec reads the top-level object, keeping ``tools``, ``authorization`` and
  ``mcp_endpoint`` as raw JSON and skipping everything else without building objects;
* ``tools`` is then decoded item by item into structs of scalars (a field holding an object or
  an array sends the body to the rules below); a ``tools`` list over 1 MiB is decoded into at
  most :data:`MAX_TOOL_ITEMS` items, so no list costs more than that many objects;
* where msgspec refuses a body of at most 1 MiB, ``json.loads`` (Starlette's, FastAPI's and
  Quart's parser) decides: BOMs, UTF-16/32, lone surrogates and ``NaN`` read as it reads
  them. A larger body that msgspec refuses is refused (``invalid_body``): reading it with
  ``json.loads`` could block the event loop for a second;
* where msgspec accepts a body that ``json.loads`` would refuse (invalid UTF-8 inside a
  string nobody reads, an integer longer than ``sys.get_int_max_str_digits()``), the two
  kinds of application (msgspec-based ones such as Litestar, ``json``-based ones) disagree:
  the body is refused if it names anything to read, and passes through otherwise;
* nesting too deep for either parser, when ``json.loads`` is the one that must decide, is
  refused rather than passed through.

Both parsers keep the last of duplicate keys and resolve ``\\u`` escapes in keys.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from mcp_auth_middleware.checks import check_token, is_authorization
from mcp_auth_middleware.credentials import CredentialSource, MCPCredential
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_BODY,
    INVALID_HEADERS,
    INVALID_SERVER_URL,
    MESSAGES,
    TOO_MANY_TOOLS,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import MCPTool, ParsedBody, SourceRequest, parse_token
from mcp_auth_middleware.urls import parse_server_url

__all__ = [
    "JSON_FALLBACK_LIMIT",
    "MAX_HEADERS_JSON",
    "MAX_TOOL_ITEMS",
    "BodySource",
    "check_tool_headers",
    "parse_body",
    "read_credentials",
]

#: Most items a ``tools`` list may hold, MCP or not (``too_many_tools`` above).
MAX_TOOL_ITEMS: Final = 4096
#: Largest body that ``json.loads`` reads when msgspec refuses it (``invalid_body`` above).
JSON_FALLBACK_LIMIT: Final = 1 << 20
#: Largest JSON an MCP tool's ``headers`` may take (``invalid_headers`` above).
MAX_HEADERS_JSON: Final = 16 * 1024

_BODY: Final = CredentialSource.BODY.value
_SOURCE: Final = CredentialSource.BODY
_ABSENT: Final = msgspec.Raw()


class _Fields(msgspec.Struct, gc=False):
    """The top level: only the three fields a source reads, as raw JSON."""

    tools: msgspec.Raw = _ABSENT
    authorization: msgspec.Raw = _ABSENT
    mcp_endpoint: msgspec.Raw = _ABSENT


class _Tool(msgspec.Struct, gc=False):
    """One object of ``tools``: the fields a source reads. Scalars only, so no field can make
    the decoder build a large object; ``headers`` is read for MCP tools only."""

    type: str | int | float | bool | None = None
    server_url: str | int | float | bool | None = None
    server_label: str | int | float | bool | None = None
    authorization: str | int | float | bool | None = None
    headers: msgspec.Raw = _ABSENT

    def __repr__(self) -> str:  # the fields include the token
        return "_Tool([secure])"


class _Endpoint(msgspec.Struct, gc=False):
    """``mcp_endpoint``: its ``uri`` only."""

    uri: msgspec.Raw = _ABSENT


_Item = _Tool | str | int | float | bool | None
# A long list is decoded into a struct of MAX_TOOL_ITEMS + 1 positional fields: msgspec
# skips the items past the last field without building them, and a value in the last field
# says the list is too long.
_Items = msgspec.defstruct(
    "_Items",
    [(f"item{n}", _Item | msgspec.UnsetType, msgspec.UNSET) for n in range(MAX_TOOL_ITEMS + 1)],
    array_like=True,
    gc=False,
)

_decode_fields = msgspec.json.Decoder(_Fields).decode
_decode_list = msgspec.json.Decoder(list[_Item]).decode
_decode_long_list = msgspec.json.Decoder(_Items).decode
_decode_string = msgspec.json.Decoder(str | None).decode
_decode_endpoint = msgspec.json.Decoder(_Endpoint | str | int | float | bool | None).decode
_decode_any = msgspec.json.Decoder().decode
_MSGSPEC_REFUSES = (msgspec.MsgspecError, ValueError, RecursionError)
_NOT_A_STRING: Final = object()  # a number, boolean, object or array where a string belongs
_SLICE = 1 << 20


def parse_body(body: bytes, *, max_tools: int = 128) -> ParsedBody | None:
    """The credential-bearing parts of a JSON body; ``None`` if it is not a JSON object.

    Raises :class:`CredentialRejected` for a body no parser may be trusted to read alike
    (``invalid_body``), too many tools (``too_many_tools``) or an MCP tool's ``headers``
    over :data:`MAX_HEADERS_JSON` (``invalid_headers``). See the module docstring.
    """
    try:
        parsed = _decode_with_msgspec(body, max_tools)
    except _MSGSPEC_REFUSES:
        if len(body) > JSON_FALLBACK_LIMIT:
            raise _invalid_body() from None
        return _decode_with_json(body, max_tools)
    if parsed is not None and _names_something(parsed) and _json_loads_refuses(body):
        raise _invalid_body()
    return parsed


def _decode_with_msgspec(body: bytes, max_tools: int) -> ParsedBody:
    fields = _decode_fields(body)
    raw = fields.tools
    items: list[Any] = []
    if _opens(raw, b"["):  # anything else is not a list: not ours to judge
        if len(raw) <= JSON_FALLBACK_LIMIT:
            items = _decode_list(raw)
        else:
            items = _long_list(_decode_long_list(raw), max_tools)
    mcp = [(i, item) for i, item in enumerate(items) if type(item) is _Tool and item.type == "mcp"]
    _check_counts(len(items), len(mcp), max_tools)
    tools = tuple(
        MCPTool(i, t.server_url, t.server_label, t.authorization, _headers_of(i, t.headers))
        for i, t in mcp
    )
    mcp_endpoint = None
    if _opens(fields.mcp_endpoint, b"{"):
        endpoint = _decode_endpoint(fields.mcp_endpoint)
        assert isinstance(endpoint, _Endpoint)
        mcp_endpoint = {"uri": _string_or_marker(endpoint.uri)}
    return ParsedBody(tools, _string_or_marker(fields.authorization), mcp_endpoint)


def _opens(raw: msgspec.Raw, bracket: bytes) -> bool:
    """Whether a raw JSON value is an array (``b"["``) or an object (``b"{"``)."""
    return bool(raw) and memoryview(raw)[:1] == bracket


def _long_list(items: Any, max_tools: int) -> list[Any]:
    values = msgspec.structs.astuple(items)
    if values[-1] is not msgspec.UNSET:
        _check_counts(len(values), 0, max_tools)  # more items than the struct has fields
    # The list ends at the first unset field (an explicit null decodes as None).
    return list(values[: values.index(msgspec.UNSET)])


def _string_or_marker(raw: msgspec.Raw) -> Any:
    """A raw JSON value expected to be a string: the string, ``None`` (null or absent), or a
    marker for any other value, which the source refuses whatever it is."""
    if not raw:
        return None
    try:
        return _decode_string(raw)
    except msgspec.ValidationError:
        return _NOT_A_STRING


def _headers_of(position: int, raw: msgspec.Raw) -> Any:
    if not raw:
        return None
    if len(raw) > MAX_HEADERS_JSON:
        raise _headers_too_large(position)
    return _decode_any(raw)


def _decode_with_json(body: bytes, max_tools: int) -> ParsedBody | None:
    try:
        document = json.loads(body)
    except RecursionError:
        raise _invalid_body() from None  # another parser's depth limit may differ
    except ValueError:
        return None  # the application cannot parse it either
    if not isinstance(document, dict):
        return None
    items = document.get("tools")
    if not isinstance(items, list):
        items = []
    mcp = [
        (i, item)
        for i, item in enumerate(items)
        if isinstance(item, dict) and item.get("type") == "mcp"
    ]
    _check_counts(len(items), len(mcp), max_tools)
    tools = []
    for i, item in mcp:
        headers = item.get("headers")
        if headers is not None and len(json.dumps(headers)) > MAX_HEADERS_JSON:
            raise _headers_too_large(i)
        tools.append(
            MCPTool(
                i,
                item.get("server_url"),
                item.get("server_label"),
                item.get("authorization"),
                headers,
            )
        )
    endpoint = document.get("mcp_endpoint")
    return ParsedBody(
        tuple(tools),
        document.get("authorization"),
        {"uri": endpoint.get("uri")} if isinstance(endpoint, dict) else None,
    )


def _check_counts(items: int, mcp_tools: int, max_tools: int) -> None:
    if items > MAX_TOOL_ITEMS or mcp_tools > max_tools:
        message = MESSAGES[TOO_MANY_TOOLS].format(limit=max_tools, items=MAX_TOOL_ITEMS)
        raise CredentialRejected(TOO_MANY_TOOLS, "tools", message=message, source=_BODY)


def _names_something(parsed: ParsedBody) -> bool:
    return bool(parsed.tools) or parsed.authorization is not None or parsed.mcp_endpoint is not None


def _json_loads_refuses(body: bytes) -> bool:
    """Whether ``json.loads`` refuses a body msgspec accepted.

    msgspec skips the fields we do not name without checking their UTF-8, and reads integers
    of any length; ``json.loads`` refuses invalid UTF-8 (it lets UTF-8-encoded surrogates
    through) and integers longer than ``sys.get_int_max_str_digits()``. The UTF-8 check
    costs no memory beyond a slice. A run of that many digits (an integer, or digits in a
    string) is settled by ``json.loads`` itself in a body of at most 1 MiB, and counts as a
    refusal in a larger one.
    """
    if not body.isascii():
        view = memoryview(body)
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        try:
            for start in range(0, len(body), _SLICE):
                decoder.decode(view[start : start + _SLICE])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return True
    limit = sys.get_int_max_str_digits()
    if not limit or not _has_digit_run(body, limit + 1):
        return False
    if len(body) > JSON_FALLBACK_LIMIT:
        return True
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return True
    return False


_DIGITS = bytes(1 if 0x30 <= b <= 0x39 else 0 for b in range(256))


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


def _invalid_body() -> CredentialRejected:
    return CredentialRejected(INVALID_BODY, "body", source=_BODY)


def _headers_too_large(position: int) -> CredentialRejected:
    param = f"tools[{position}].headers"
    message = MESSAGES[INVALID_HEADERS].format(param=param, limit=MAX_HEADERS_JSON)
    return CredentialRejected(INVALID_HEADERS, param, message=message, source=_BODY)


# --- reading credentials -------------------------------------------------------------------


def _header_names(headers: Any) -> Iterable[Any]:
    """The header names ``headers`` gives in every shape an HTTP client accepts: an object
    (its keys), or a list of ``[name, value]`` pairs (httpx unpacks each item into two, so an
    object item of two keys gives its first key)."""
    if isinstance(headers, dict):
        return headers.keys()
    if isinstance(headers, list):
        names = []
        for item in headers:
            if isinstance(item, list) and item:
                names.append(item[0])
            elif isinstance(item, dict):
                names.extend(item.keys())
        return names
    return ()


def check_tool_headers(body: ParsedBody) -> None:
    """Refuse an MCP tool whose ``headers`` smuggle an ``Authorization`` (any case, any shape)."""
    for tool in body.tools:
        _check_headers(tool)


def _check_headers(tool: MCPTool) -> None:
    for name in _header_names(tool.headers):
        if isinstance(name, str) and is_authorization(name):
            raise CredentialRejected(
                AUTHORIZATION_IN_HEADERS, f"tools[{tool.position}].headers", source=_BODY
            )


def _token(value: Any, param: str) -> str:
    token = check_token(value, require_bearer=False)
    if token is None:
        raise CredentialRejected(INVALID_AUTHORIZATION, param, source=_BODY)
    return token


def read_credentials(body: ParsedBody) -> list[MCPCredential]:
    """The body's credentials (see :class:`BodySource`): one per server at most."""
    found: list[MCPCredential] = []
    tokens: dict[str, str] = {}  # normalised server URL -> token, for conflicts
    for tool in body.tools:
        if tool.headers is not None:
            _check_headers(tool)
        value = tool.authorization
        if value is None or value == "":
            continue
        token = _token(value, f"tools[{tool.position}].authorization")
        label = tool.server_label if isinstance(tool.server_label, str) else None
        if tool.server_url is None:
            if label is not None:  # a connector: known by its label only
                found.append(MCPCredential(token=token, source=_SOURCE, server_label=label))
            continue
        url = _server_url(tool.server_url, f"tools[{tool.position}].server_url")
        previous = tokens.get(url)
        if previous is None:
            tokens[url] = token
            found.append(
                MCPCredential(
                    token=token, source=_SOURCE, server_url=tool.server_url, server_label=label
                )
            )
        elif previous != token:
            raise CredentialRejected(
                CONFLICTING_CREDENTIALS, f"tools[{tool.position}].server_url", source=_BODY
            )
    if body.authorization is not None and body.authorization != "":
        token = parse_token(
            body.authorization, param="authorization", source=_BODY, require_bearer=False
        )
        endpoint = body.mcp_endpoint
        uri = endpoint.get("uri") if isinstance(endpoint, dict) else None
        if uri is None:
            found.append(MCPCredential(token=token, source=_SOURCE))
        else:
            url = _server_url(uri, "mcp_endpoint.uri")
            previous = tokens.get(url)
            if previous is None:
                found.append(MCPCredential(token=token, source=_SOURCE, server_url=uri))
            elif previous != token:
                raise CredentialRejected(CONFLICTING_CREDENTIALS, "mcp_endpoint.uri", source=_BODY)
    return found


def _server_url(url: Any, param: str) -> str:
    """The normalised form of a server URL the body gave, or ``invalid_server_url``."""
    if isinstance(url, str):
        try:
            return parse_server_url(url).url
        except ValueError:
            pass
    raise CredentialRejected(INVALID_SERVER_URL, param, source=_BODY)


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
        return [] if request.body is None else read_credentials(request.body)
