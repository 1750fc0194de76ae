"""The body parameter: ``tools[].authorization`` (Responses) and top-level ``authorization``
(tool-runtime), and the parser that reads them.

The parser must read what the application's parser reads, and it must do a bounded amount of
work whatever the body holds. So:

* msgspec decodes only ``tools``, ``authorization`` and ``mcp_endpoint``, and only into
  scalars and raw JSON: each item of ``tools`` into a struct of its scalar fields (its
  ``headers`` kept raw, and decoded for MCP tools only, up to :data:`MAX_HEADERS_JSON`), the
  top-level fields raw. Everything else is skipped without building objects. In a body over
  1 MiB, ``tools`` is decoded into at most :data:`MAX_TOOL_ITEMS` + 1 items, so no list costs
  more objects than that;
* where msgspec refuses a body of at most :data:`JSON_FALLBACK_LIMIT` (a field holding an
  object or array where a scalar belongs, BOMs, UTF-16/32, lone surrogates, ``NaN``),
  ``json.loads`` (Starlette's, FastAPI's and Quart's parser) decides, as it reads it. A larger
  body that msgspec refuses is refused (``invalid_body``): ``json.loads`` could build
  millions of objects for it;
* where msgspec accepts a body that ``json.loads`` would refuse (invalid UTF-8 inside a
  string nobody reads, an integer longer than ``sys.get_int_max_str_digits()``), the two
  kinds of application (msgspec-based ones such as Litestar, ``json``-based ones) disagree:
  the body is refused if it names anything to read, and passes through otherwise;
* nesting too deep for ``json.loads``, when it is the one that must decide, is refused
  rather than passed through.

Both parsers keep the last of duplicate keys and resolve ``\\u`` escapes in keys.
"""

from __future__ import annotations

import codecs
import gc
import hmac
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import msgspec

from mcp_auth_middleware.checks import (
    HEADER_RULE,
    check_extra_header,
    check_token,
    is_authorization,
    is_header_name,
)
from mcp_auth_middleware.credentials import (
    CredentialSource,
    Entry,
    InvalidCredential,
    MCPCredential,
    MCPServerHeaders,
    entry_key,
)
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_BODY,
    INVALID_CONNECTOR_ID,
    INVALID_HEADER,
    INVALID_HEADERS,
    INVALID_SERVER_URL,
    MESSAGES,
    TOO_MANY_TOOLS,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import SourceRequest
from mcp_auth_middleware.urls import redacted_url

__all__ = [
    "JSON_FALLBACK_LIMIT",
    "MAX_HEADERS_JSON",
    "MAX_TOOL_ITEMS",
    "Body",
    "BodySource",
    "Tool",
    "parse_body",
    "read_credentials",
    "redact_body",
]

#: Most items a ``tools`` list may hold, MCP or not (``too_many_tools`` above).
MAX_TOOL_ITEMS: Final = 4096
#: Largest body that ``json.loads`` reads when msgspec refuses it (``invalid_body`` above).
JSON_FALLBACK_LIMIT: Final = 128 * 1024
#: Largest JSON an MCP tool's ``headers`` may take (``invalid_headers`` above).
MAX_HEADERS_JSON: Final = 16 * 1024
# Bodies up to this size have ``tools`` decoded as a list; larger ones into a bounded struct.
_ONE_LIST_LIMIT: Final = 1 << 20

_BODY: Final = CredentialSource.BODY.value
_SOURCE: Final = CredentialSource.BODY
_ABSENT: Final = msgspec.Raw()

# --- the decoded body ----------------------------------------------------------------------


class Tool(msgspec.Struct, gc=False):
    """One item of ``tools``, as decoded: only the fields a source reads."""

    type: Any = None
    server_url: Any = None
    server_label: Any = None
    authorization: Any = None
    headers: Any = None
    connector_id: Any = None

    def __repr__(self) -> str:  # the fields include the token
        return f"Tool(type={self.type!r}, server_url={redacted_url(self.server_url)!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:  # rich (structlog's tracebacks) uses it
        return [("type", self.type), ("server_url", redacted_url(self.server_url))]


class Body(msgspec.Struct, gc=False):
    """The top-level fields a source reads, as decoded."""

    tools: list[Tool] | None = None
    authorization: Any = None
    mcp_endpoint: Any = None

    def __repr__(self) -> str:
        return f"Body(tools={self.tools!r}, authorization=[secure])"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("tools", self.tools)]


_NOT_A_TOOL: Final = Tool()  # an item of ``tools`` that is not an MCP tool

# What msgspec decodes into: scalars and raw JSON only.
_Scalar = str | int | float | bool | None


class _RawTool(msgspec.Struct, gc=False):
    type: _Scalar = None
    server_url: _Scalar = None
    server_label: _Scalar = None
    authorization: _Scalar = None
    headers: msgspec.Raw = _ABSENT
    connector_id: _Scalar = None

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("type", self.type)]


class _Ignored(msgspec.Struct, gc=False):
    """A JSON object where none is read (``tools`` as an object): skipped."""


class _Endpoint(msgspec.Struct, gc=False):
    uri: msgspec.Raw = _ABSENT


_Item = _RawTool | _Scalar
# msgspec skips the items past a positional struct's last field without building them; a
# value in the last field says the list is too long.
_Items = msgspec.defstruct(
    "_Items",
    [(f"item{n}", _Item | msgspec.UnsetType, msgspec.UNSET) for n in range(MAX_TOOL_ITEMS + 1)],
    array_like=True,
    gc=False,
)


class _Fields(msgspec.Struct, gc=False):
    tools: list[_Item] | _Ignored | _Scalar = None
    authorization: msgspec.Raw = _ABSENT
    mcp_endpoint: msgspec.Raw = _ABSENT


class _LargeFields(msgspec.Struct, gc=False):
    tools: _Items | _Scalar = None  # type: ignore[valid-type]
    authorization: msgspec.Raw = _ABSENT
    mcp_endpoint: msgspec.Raw = _ABSENT


_decode_fields = msgspec.json.Decoder(_Fields).decode
_decode_large_fields = msgspec.json.Decoder(_LargeFields).decode
_decode_scalar = msgspec.json.Decoder(_Scalar).decode
_decode_endpoint = msgspec.json.Decoder(_Endpoint).decode
_decode_any = msgspec.json.Decoder().decode
_MSGSPEC_REFUSES = (msgspec.MsgspecError, ValueError, RecursionError)
_NOT_A_STRING: Final = object()  # an object or array where a string belongs
_SLICE = 1 << 20


def parse_body(body: bytes, *, max_tools: int = 128) -> Body | None:
    """The credential-bearing fields of a JSON body; ``None`` if it is not a JSON object.

    Raises :class:`CredentialRejected` for a body no parser may be trusted to read alike
    (``invalid_body``), too many tools (``too_many_tools``) or an MCP tool's ``headers``
    over :data:`MAX_HEADERS_JSON` (``invalid_headers``). See the module docstring.
    """
    with _GCPaused():
        return _parse(body, max_tools)


class _GCPaused:
    """Python's cyclic garbage collector, paused for the block (a parse or a re-encoding).

    A body of many small arrays or objects makes the parser allocate containers fast enough
    to start collections, and a full collection walks every object of the process (hundreds
    of milliseconds in a large one): a parse makes no reference cycles, and what it built is
    freed as soon as it is dropped.
    """

    __slots__ = ("_was_enabled",)

    def __enter__(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._was_enabled:
            gc.enable()


def _parse(body: bytes, max_tools: int) -> Body | None:
    try:
        fields = (_decode_fields if len(body) <= _ONE_LIST_LIMIT else _decode_large_fields)(body)
        # Raw fields are decoded here: invalid UTF-8 in them is msgspec refusing the body.
        decoded = _body_of(fields, max_tools)
    except _MSGSPEC_REFUSES:
        if len(body) > JSON_FALLBACK_LIMIT:
            raise _invalid_body() from None
        return _decode_with_json(body, max_tools)
    if _json_loads_refuses(body) and _names_something(decoded):
        raise _invalid_body()
    return decoded


def _body_of(fields: _Fields | _LargeFields, max_tools: int) -> Body:
    """The decoded fields as a :class:`Body`: MCP tools with their headers decoded."""
    items: Any = fields.tools
    if type(items) is _Items:
        values = msgspec.structs.astuple(items)
        if values[-1] is not msgspec.UNSET:
            raise _too_many_tools(max_tools)  # more items than the struct has fields
        # The list ends at the first unset field (an explicit null decodes as None).
        items = values[: values.index(msgspec.UNSET)]
    tools = None
    if type(items) is list or type(items) is tuple:
        _check_counts(items, max_tools)  # before any headers are decoded
        tools = [
            Tool(
                t.type,
                t.server_url,
                t.server_label,
                t.authorization,
                _headers_of(i, t.headers),
                t.connector_id,
            )
            if type(t) is _RawTool and t.type == "mcp"
            else _NOT_A_TOOL
            for i, t in enumerate(items)
        ]
    endpoint = fields.mcp_endpoint
    if endpoint and memoryview(endpoint)[:1].tobytes() == b"{":
        mcp_endpoint: Any = {"uri": _scalar_or_marker(_decode_endpoint(endpoint).uri)}
    else:  # absent, or not an object: it names no server
        mcp_endpoint = _scalar_or_marker(endpoint)
    return Body(tools, _scalar_or_marker(fields.authorization), mcp_endpoint)


def _scalar_or_marker(raw: msgspec.Raw) -> Any:
    """A raw JSON value where a string belongs: the scalar it holds (``None`` when absent),
    or a marker for an object or array, which the source refuses whatever it holds."""
    if not raw:
        return None
    try:
        return _decode_scalar(raw)
    except msgspec.ValidationError:
        return _NOT_A_STRING


def _headers_of(position: int, raw: msgspec.Raw) -> Any:
    """An MCP tool's ``headers``, decoded; ``invalid_headers`` over MAX_HEADERS_JSON."""
    if not raw:
        return None
    if len(raw) > MAX_HEADERS_JSON:
        raise _headers_too_large(position)
    return _decode_any(raw)


def _decode_with_json(body: bytes, max_tools: int) -> Body | None:
    try:
        document = json.loads(body)
    except RecursionError:
        raise _invalid_body() from None  # another parser's depth limit may differ
    except ValueError:
        return None  # the application cannot parse it either
    if not isinstance(document, dict):
        return None
    items = document.get("tools")
    tools = None
    if isinstance(items, list):
        # Items that are not MCP tools keep their place, so positions in errors are the
        # caller's.
        _check_counts(items, max_tools)
        tools = [_tool_of_json(i, t) for i, t in enumerate(items)]
    return Body(tools, document.get("authorization"), document.get("mcp_endpoint"))


def _tool_of_json(position: int, item: Any) -> Tool:
    if not isinstance(item, dict) or item.get("type") != "mcp":
        return _NOT_A_TOOL
    headers = item.get("headers")
    if headers is not None and len(json.dumps(headers)) > MAX_HEADERS_JSON:
        raise _headers_too_large(position)
    return Tool(
        "mcp",
        item.get("server_url"),
        item.get("server_label"),
        item.get("authorization"),
        headers,
        item.get("connector_id"),
    )


def _check_counts(items: Sequence[Any], max_tools: int) -> None:
    """At most MAX_TOOL_ITEMS items, and at most ``max_tools`` of them MCP tools."""
    if len(items) > max_tools and (
        len(items) > MAX_TOOL_ITEMS or sum(1 for t in items if _is_mcp(t)) > max_tools
    ):
        raise _too_many_tools(max_tools)


def _is_mcp(item: Any) -> bool:
    """Whether a decoded item of ``tools`` (a struct, or ``json.loads``'s dict) is an MCP
    tool."""
    if type(item) is dict:
        return item.get("type") == "mcp"
    return getattr(item, "type", None) == "mcp"


def _too_many_tools(max_tools: int) -> CredentialRejected:
    message = MESSAGES[TOO_MANY_TOOLS].format(limit=max_tools, items=MAX_TOOL_ITEMS)
    return CredentialRejected(TOO_MANY_TOOLS, "tools", message=message, source=_BODY)


def _headers_too_large(position: int) -> CredentialRejected:
    param = f"tools[{position}].headers"
    message = MESSAGES[INVALID_HEADERS].format(param=param, limit=MAX_HEADERS_JSON)
    return CredentialRejected(INVALID_HEADERS, param, message=message, source=_BODY)


def _names_something(body: Body) -> bool:
    return (
        body.authorization is not None
        or body.mcp_endpoint is not None
        or any(tool.type == "mcp" for tool in body.tools or ())
    )


def _json_loads_refuses(body: bytes) -> bool:
    """Whether ``json.loads`` refuses a body msgspec accepted.

    msgspec skips the fields we do not name without checking their UTF-8, and reads integers
    of any length; ``json.loads`` refuses invalid UTF-8 (it lets UTF-8-encoded surrogates
    through) and integers longer than ``sys.get_int_max_str_digits()``. The UTF-8 check
    costs no memory beyond a slice. A run of that many digits (an integer, or digits in a
    string) is settled by ``json.loads`` itself in a body of at most 1 MiB, and counts as a
    refusal in a larger one.
    """
    limit = sys.get_int_max_str_digits()
    ascii_ = body.isascii()
    if ascii_ and (not limit or len(body) <= limit):
        return False  # the usual small body: neither can apply
    if not ascii_:
        view = memoryview(body)
        decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")
        try:
            for start in range(0, len(body), _SLICE):
                decoder.decode(view[start : start + _SLICE])
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return True
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


# --- redact_body ---------------------------------------------------------------------------

_decode_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_items_raw = msgspec.json.Decoder(list[msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode


def redact_body(raw: bytes, *, tool_headers: bool = False) -> bytes | None:
    """``raw`` without the ``authorization`` values the body source reads (top level, and
    each MCP tool's; with ``tool_headers``, also each ``Authorization`` in an MCP tool's
    ``headers``, in any case: ``headers_authorization = "accept"`` reads them), re-encoded;
    ``None`` if no parser both sides share can read it.

    Only the members that hold them are rewritten: the rest of the body is copied as raw
    JSON, so the work is a copy of the body, whatever it holds. A body with no
    ``authorization`` key anywhere (not even one a later duplicate or a ``\\u`` escape
    hides) is returned as is.
    """
    if b"\\u" not in raw and (
        _ANY_CASE.search(raw) is None if tool_headers else b"authorization" not in raw
    ):  # (JSON keys are case-sensitive; header names are not)
        return raw
    with _GCPaused():
        return _redacted(raw, tool_headers)


# "Authorization" in any case, or a ``\u`` escape that may spell it.
_ANY_CASE: Final = re.compile(rb"(?i)authorization|\\u")


def _redacted(raw: bytes, tool_headers: bool) -> bytes | None:
    try:
        members = _decode_members(raw)
        members.pop("authorization", None)
        tools = members.get("tools")
        if tools is not None and memoryview(tools)[:1].tobytes() == b"[":
            items = [_redacted_tool(item, tool_headers) for item in _decode_items_raw(tools)]
            members["tools"] = msgspec.Raw(b"[" + b",".join(items) + b"]")
        return _encode(members)
    except _MSGSPEC_REFUSES:
        pass
    # What msgspec refuses, json.loads reads only up to JSON_FALLBACK_LIMIT (parse_body refused
    # larger ones): rewrite the document it reads.
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    document.pop("authorization", None)
    for tool in document.get("tools") if isinstance(document.get("tools"), list) else ():
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            tool.pop("authorization", None)
            if tool_headers and "headers" in tool:
                tool["headers"] = _without_authorization(tool["headers"])
    return json.dumps(document).encode()


def _redacted_tool(item: msgspec.Raw, tool_headers: bool) -> bytes:
    if memoryview(item)[:1].tobytes() != b"{":
        return bytes(item)
    tool = _decode_members(item)
    kind = tool.get("type")
    headers = tool.get("headers") if tool_headers else None
    if headers is not None and _ANY_CASE.search(headers) is None:
        headers = None
    if kind is None or _scalar_or_marker(kind) != "mcp":
        return bytes(item)
    if "authorization" not in tool and headers is None:
        return bytes(item)
    tool.pop("authorization", None)
    if headers is not None:
        tool["headers"] = msgspec.Raw(_encode(_without_authorization(_decode_any(headers))))
    return _encode(tool)


def _without_authorization(headers: Any) -> Any:
    """A tool's ``headers`` (an object or a list of pairs) without its ``Authorization``."""
    if isinstance(headers, dict):
        return {k: v for k, v in headers.items() if not _names_authorization(k)}
    if isinstance(headers, list):
        return [
            item
            for item in headers
            if not (isinstance(item, list) and item and _names_authorization(item[0]))
        ]
    return headers


def _names_authorization(name: Any) -> bool:
    return isinstance(name, str) and name.lower() == "authorization"


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


def _check_headers(headers: Any, position: int, accept: bool) -> None:
    """``authorization_in_headers`` for an ``Authorization`` (any case, look-alikes) in a
    tool's headers; with ``accept``, only for a look-alike or a name with whitespace around
    it, which no HTTP client sends as ``Authorization``."""
    for name in _header_names(headers):
        if (
            isinstance(name, str)
            and is_authorization(name)
            and not (accept and name.lower() == "authorization")
        ):
            raise CredentialRejected(
                AUTHORIZATION_IN_HEADERS, f"tools[{position}].headers", source=_BODY
            )


def _tool_headers(headers: Any, position: int, accept: bool) -> tuple[dict[str, str], str | None]:
    """A tool's ``headers``, checked: the extra headers, and the token of its
    ``Authorization`` (with ``accept``; ``None`` without one). Each header must be one an MCP
    server may be sent (see :func:`check_extra_header`), once; ``invalid_headers`` names the
    one at fault."""
    _check_headers(headers, position, accept)
    where = f"tools[{position}].headers"
    if isinstance(headers, dict):
        pairs: list[tuple[str, Any, Any]] = [(f"{where}.{n}", n, v) for n, v in headers.items()]
    elif isinstance(headers, list):
        pairs = []
        for at, item in enumerate(headers):
            if not (isinstance(item, list) and len(item) == 2):
                raise _invalid_header(f"{where}[{at}]", _PAIR_RULE)
            pairs.append((f"{where}[{at}]", item[0], item[1]))
    else:
        raise _invalid_header(where, _PAIR_RULE)
    extra: dict[str, str] = {}
    token: str | None = None
    seen: set[str] = set()
    for param, name, value in pairs:
        if is_header_name(name) and isinstance(headers, dict):
            param = f"{where}.{name}"
        elif isinstance(headers, dict):
            param = where  # a name we will not quote
        lowered = name.lower() if isinstance(name, str) else ""
        if lowered in seen:
            raise _invalid_header(param, "the same header name twice (in any case)")
        seen.add(lowered)
        if lowered == "authorization":  # ``accept``: _check_headers refused it otherwise
            token = check_token(value, require_bearer=False)
            if token is None:
                raise CredentialRejected(INVALID_AUTHORIZATION, param, source=_BODY)
        elif check_extra_header(name, value):
            extra[name] = value
        else:
            raise _invalid_header(param, HEADER_RULE)
    return extra, token


_PAIR_RULE: Final = (
    "expected an object of header names to strings, or a list of [name, value] pairs"
)


def _invalid_header(param: str, rule: str) -> CredentialRejected:
    message = INVALID_HEADER.format(param=param, rule=rule)
    return CredentialRejected(INVALID_HEADERS, param, message=message, source=_BODY)


def read_credentials(
    tools: Iterable[tuple[int, Any]],
    authorization: Any,
    mcp_endpoint: Any,
    *,
    headers_authorization: bool = False,
    connectors: Mapping[str, str] | None = None,
) -> list[Entry]:
    """The body's credentials and header-only entries (see :class:`BodySource`): one per
    server at most.

    ``tools`` are the tools (anything with the fields of :class:`Tool`), each with its place
    in the request's ``tools`` list, which errors name; those whose ``type`` is not ``"mcp"``
    are skipped. ``headers_authorization``: a tool's ``headers.Authorization`` is its token
    (else it is refused). ``connectors`` maps a ``connector_id`` to the URL its tools'
    credentials are bound to.
    """
    found: dict[tuple[str, str], Entry] = {}
    for position, tool in tools:
        if tool.type != "mcp":
            continue
        extra: dict[str, str] = {}
        token: Any = tool.authorization
        if tool.headers is not None:
            extra, header_token = _tool_headers(tool.headers, position, headers_authorization)
            if header_token is not None:
                token = _one_token(position, token, header_token)
        if token == "":
            token = None
        if token is None and not extra:
            continue
        label = tool.server_label if type(tool.server_label) is str else None
        connector = tool.connector_id if type(tool.connector_id) is str else None
        server_url = tool.server_url
        if server_url is None and connector is not None and connectors:
            server_url = connectors.get(connector)
        if server_url is None and connector is None and label is None:  # names no server
            if token is not None and check_token(token, require_bearer=False) is None:
                raise CredentialRejected(
                    INVALID_AUTHORIZATION, f"tools[{position}].authorization", source=_BODY
                )
            continue
        if token is None and server_url is None and connector is None:
            continue  # headers for a server known by its label only: nowhere to send them
        entry = _entry(position, token, server_url, label, extra, connector)
        _add(found, entry, position)
    if authorization is not None and authorization != "":
        uri = mcp_endpoint.get("uri") if type(mcp_endpoint) is dict else None
        _add(found, _entry(None, authorization, uri, None, {}, None), None)
    return list(found.values())


def _one_token(position: int, authorization: Any, header_token: str) -> str:
    """A tool's token when its ``headers`` hold one (``accept``): the ``authorization`` beside
    it, if any, must be the same token."""
    if authorization is None or authorization == "":
        return header_token
    token = check_token(authorization, require_bearer=False)
    if token is None:
        raise CredentialRejected(
            INVALID_AUTHORIZATION, f"tools[{position}].authorization", source=_BODY
        )
    if not hmac.compare_digest(token.encode(), header_token.encode()):
        param = f"tools[{position}].headers.Authorization"
        raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_BODY)
    return token


def _entry(
    position: int | None,
    authorization: Any,
    server_url: Any,
    label: str | None,
    headers: dict[str, str],
    connector: str | None,
) -> Entry:
    """A credential (or header-only entry) of the body (its constructor checks it): of
    ``tools[position]``, or of the top-level ``authorization`` (``position`` None). The error
    names the field at fault."""
    try:
        if authorization is None:
            return MCPServerHeaders(
                headers=headers,
                source=_SOURCE,
                server_url=server_url,
                server_label=label,
                connector_id=connector,
            )
        return MCPCredential(
            token=authorization,
            source=_SOURCE,
            server_url=server_url,
            server_label=label,
            headers=headers,
            connector_id=connector,
        )
    except InvalidCredential as exc:
        code = INVALID_AUTHORIZATION if exc.field == "token" else INVALID_SERVER_URL
        if exc.field == "connector_id":
            code = INVALID_CONNECTOR_ID
        raise CredentialRejected(code, _param(position, code), source=_BODY) from None


def _param(position: int | None, code: str) -> str:
    """The field an error of the body names (built only when refusing)."""
    if position is None:
        return "authorization" if code == INVALID_AUTHORIZATION else "mcp_endpoint.uri"
    field = {INVALID_AUTHORIZATION: "authorization", INVALID_CONNECTOR_ID: "connector_id"}
    return f"tools[{position}].{field.get(code, 'server_url')}"


def _add(found: dict[tuple[str, str], Entry], entry: Entry, position: int | None) -> None:
    """Keep ``entry``, merged with an earlier one for the same server (by URL, else
    connector, else label, case-insensitively): two tools naming one server must not
    disagree. Different tokens are ``conflicting_credentials`` naming the field that names
    the server; one header with two values, naming ``tools[i].headers``. A tool that adds a
    token or headers the other lacks adds them."""
    key = entry_key(entry)
    previous = found.setdefault(key, entry)
    if previous is entry:
        return
    if (
        isinstance(previous, MCPCredential)
        and isinstance(entry, MCPCredential)
        and not previous.same_token(entry)
    ):
        if position is None:
            param = "mcp_endpoint.uri"
        else:
            field = {"url": "server_url", "connector": "connector_id"}.get(key[0], "server_label")
            param = f"tools[{position}].{field}"
        raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_BODY)
    if not entry.headers or dict(entry.headers) == dict(previous.headers):
        if isinstance(entry, MCPCredential) and not isinstance(previous, MCPCredential):
            found[key] = entry.replace(headers=previous.headers)  # the token joins the headers
        return
    headers = {name.lower(): (name, value) for name, value in previous.headers.items()}
    for name, value in entry.headers.items():
        if headers.setdefault(name.lower(), (name, value))[1] != value:
            param = "mcp_endpoint.uri" if position is None else f"tools[{position}].headers"
            raise CredentialRejected(CONFLICTING_CREDENTIALS, param, source=_BODY)
    token_joins = isinstance(entry, MCPCredential) and not isinstance(previous, MCPCredential)
    found[key] = (entry if token_joins else previous).replace(headers=dict(headers.values()))


class BodySource:
    """Credentials from the request body.

    * Responses: each ``{"type": "mcp"}`` tool's ``authorization``, for its ``server_url``
      (and ``server_label``), with its other ``headers``; a tool with ``headers`` and no
      ``authorization`` gives its server those headers (:class:`MCPServerHeaders`). A tool
      naming a ``connector_id`` instead of a ``server_url`` gives a credential bound to that
      connector (to the URL ``connectors`` maps it to, if any); a tool with neither gives a
      credential known by its label only.
    * Tool-runtime: a top-level ``authorization``, for ``mcp_endpoint.uri`` when present,
      else the request's unbound ``default`` credential.

    ``null`` or ``""`` count as absent. Two tools for the same server with different tokens
    (or one header with two values) are refused (``conflicting_credentials``); tools that
    agree are merged, and so is a tool whose
    ``headers`` hold an ``Authorization`` (``authorization_in_headers``) unless
    ``headers_authorization`` accepts it as the tool's token, or a header that may not be
    sent (``invalid_headers``).
    """

    name = _BODY
    needs_body = True

    def __init__(
        self, *, headers_authorization: bool = False, connectors: Mapping[str, str] | None = None
    ) -> None:
        self._options: dict[str, Any] = {
            "headers_authorization": headers_authorization,
            "connectors": dict(connectors or {}),
        }

    def read(self, request: SourceRequest) -> list[Entry]:
        decoded = request.decoded
        if decoded is not None:
            tools = enumerate(decoded.tools or ())
            return read_credentials(
                tools, decoded.authorization, decoded.mcp_endpoint, **self._options
            )
        body = request.body  # a SourceRequest made by hand
        if body is None:
            return []
        return read_credentials(
            ((tool.position, tool) for tool in body.tools),
            body.authorization,
            body.mcp_endpoint,
            **self._options,
        )
