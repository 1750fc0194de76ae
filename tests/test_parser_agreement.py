"""The middleware's parser agrees with the application's.

Starlette and FastAPI read a JSON body with ``json.loads(body)``. On every input that
``json.loads`` accepts, :func:`parse_body` must yield the same credential-bearing fields
(duplicate keys: the last wins; ``\\u`` escapes in keys and values resolved; BOMs, UTF-16
and UTF-32 decoded). On every input it refuses, no credential is read: the body passes
through with none, or, where another parser (msgspec, as Litestar uses) would read
credentials in it or the refusal is a nesting limit, it is refused as ``invalid_body``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from mcp_auth_middleware import MCPAuthConfig
from mcp_auth_middleware.errors import INVALID_BODY, CredentialRejected
from mcp_auth_middleware.sources.base import ParsedBody
from mcp_auth_middleware.sources.body import parse_body
from tests.helpers import PROVIDER_DATA, NothingSource, Recorder, client, make_app

URL = "https://mcp.example.com/mcp"
CREDENTIAL_KEYS = frozenset(
    {"tools", "authorization", "mcp_endpoint", "type", "server_url", "server_label", "headers"}
)

# --- the reference: json.loads, then the fields the body source reads -----------------------


def canon(value: Any) -> Any:
    """A comparable form that keeps JSON types apart (1, 1.0, True) and NaN equal to NaN."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple((k, canon(v)) for k, v in value.items()))
    return ("unexpected", type(value).__name__, repr(value))


Tool = tuple[int, Any, Any, Any, Any]


def scalar(value: Any) -> Any:
    """A field the body source reads as a string: the string, null, or that it is neither
    (the source treats every other value alike, whatever it is)."""
    if value is None or isinstance(value, str):
        return canon(value)
    return ("not-a-string",)


def endpoint_uri(endpoint: Any) -> Any:
    """``mcp_endpoint`` as the body source reads it: its ``uri`` when it is an object."""
    return scalar(endpoint.get("uri")) if isinstance(endpoint, dict) else ("absent",)


class Fields(NamedTuple):
    """The credential-bearing fields: MCP tools (index, url, label, authorization, headers),
    the top-level ``authorization`` and ``mcp_endpoint``'s ``uri``."""

    tools: tuple[Tool, ...]
    authorization: Any
    mcp_endpoint: Any


def reference(document: dict[str, Any]) -> Fields:
    """What the application's ``json.loads`` result says, read independently."""
    tools = document.get("tools")
    mcp: list[Tool] = []
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") == "mcp":
                mcp.append(
                    (
                        index,
                        scalar(tool.get("server_url")),
                        scalar(tool.get("server_label")),
                        scalar(tool.get("authorization")),
                        canon(tool.get("headers")),
                    )
                )
    return Fields(
        tuple(mcp),
        scalar(document.get("authorization")),
        endpoint_uri(document.get("mcp_endpoint")),
    )


def extracted(decoded: Any) -> Fields:
    """The same view of what :func:`parse_body` returned (through the view custom sources
    get, which keeps each MCP tool's place in ``tools``)."""
    parsed = ParsedBody.of(decoded)
    tools = []
    for tool in parsed.tools:
        tools.append(
            (
                tool.position,
                scalar(tool.server_url),
                scalar(tool.server_label),
                scalar(tool.authorization),
                canon(tool.headers),
            )
        )
    return Fields(tuple(tools), scalar(parsed.authorization), endpoint_uri(parsed.mcp_endpoint))


EMPTY = Fields((), ("null",), ("absent",))


def read_or_refused(body: bytes) -> Fields | str | None:
    """What :func:`parse_body` reads (``None``: not a JSON object), or its refusal's code."""
    try:
        parsed = parse_body(body)
    except CredentialRejected as exc:
        return exc.code
    return None if parsed is None else extracted(parsed)


def assert_agrees(body: bytes) -> None:
    """The property itself, for one input."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        # The application cannot parse it: nothing is read, or it is refused; no crash.
        assert read_or_refused(body) in (None, EMPTY, INVALID_BODY)
        return
    parsed = parse_body(body)
    if not isinstance(document, dict):
        assert parsed is None
        return
    assert parsed is not None
    assert extracted(parsed) == reference(document)


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def tool_json(authorization: str = '"tok"', *, extra: str = "") -> str:
    return (
        '{"type": "mcp", "server_label": "s", "server_url": "' + URL + '", '
        '"authorization": ' + authorization + extra + "}"
    )


DOC = '{"model": "m", "tools": [' + tool_json() + '], "authorization": "top"}'

EXPLICIT = [
    pytest.param(b'{"authorization": "first", "authorization": "last"}', id="dup-authorization"),
    pytest.param(b'{"authorization": "first", "authorization": null}', id="dup-authorization-null"),
    pytest.param(
        ('{"tools": [' + tool_json('"a"') + '], "tools": [' + tool_json('"b"') + "]}").encode(),
        id="dup-tools",
    ),
    pytest.param(
        ('{"tools": [' + tool_json() + '], "tools": 5}').encode(), id="dup-tools-last-int"
    ),
    pytest.param(
        ('{"tools": 5, "tools": [' + tool_json() + "]}").encode(), id="dup-tools-last-list"
    ),
    pytest.param(
        ('{"tools": [' + tool_json('"first"', extra=', "authorization": "last"') + "]}").encode(),
        id="dup-authorization-in-tool",
    ),
    pytest.param(
        ('{"tools": [' + tool_json(extra=', "type": "function"') + "]}").encode(),
        id="dup-type-last-not-mcp",
    ),
    pytest.param(
        b'{"tools": [{"type": "function", "type": "mcp", "server_url": "https://h/m", '
        b'"server_url": "https://h/n", "authorization": "t"}]}',
        id="dup-type-last-mcp-and-dup-url",
    ),
    pytest.param(
        b'{"tools": [{"type": "mcp", "headers": {"X": "1"}, "headers": {"Authorization": "t"}}]}',
        id="dup-headers",
    ),
    pytest.param(
        b'{"mcp_endpoint": {"uri": "https://a/m"}, "mcp_endpoint": {"uri": "https://b/m"}, '
        b'"authorization": "t"}',
        id="dup-mcp_endpoint",
    ),
    pytest.param(b'{"\\u0061uthorization": "x"}', id="escaped-authorization-key"),
    pytest.param(b'{"\\u0061\\u0075\\u0074\\u0068orization": "x"}', id="escaped-several"),
    pytest.param(
        b'{"authorization": "plain", "\\u0061uthorization": "escaped"}', id="plain-then-esc"
    ),
    pytest.param(
        b'{"\\u0061uthorization": "escaped", "authorization": "plain"}', id="esc-then-plain"
    ),
    pytest.param(('{"\\u0074ools": [' + tool_json() + "]}").encode(), id="escaped-tools-key"),
    pytest.param(
        b'{"tools": [{"\\u0074ype": "\\u006dcp", "server_\\u0075rl": "https:\\/\\/h\\/m", '
        b'"authorizatio\\u006e": "t\\u006fk"}]}',
        id="escaped-tool-keys-and-values",
    ),
    pytest.param(
        b'{"tools": [{"type": "mcp", "headers": {"\\u0041uthorization": "Bearer t"}}]}',
        id="escaped-Authorization-header-name",
    ),
    pytest.param(b'{"authorization": "\\ud83d\\ude00"}', id="surrogate-pair-escape"),
    pytest.param(b'{"authorization": "\\ud800"}', id="lone-high-surrogate-escape"),
    pytest.param(b'{"authorization": "\\udc00x"}', id="lone-low-surrogate-escape"),
    pytest.param(b'{"\\ud800": 1, "authorization": "t"}', id="lone-surrogate-in-key"),
    pytest.param(b'{"x": "\xed\xa0\x80", "authorization": "t"}', id="raw-utf8-surrogate-elsewhere"),
    pytest.param(b'{"authorization": "\xed\xa0\x80"}', id="raw-utf8-surrogate-in-token"),
    pytest.param(b"\xef\xbb\xbf" + DOC.encode(), id="utf8-bom"),
    pytest.param(DOC.encode("utf-16"), id="utf16-bom"),
    pytest.param(DOC.encode("utf-16-le"), id="utf16-le"),
    pytest.param(DOC.encode("utf-16-be"), id="utf16-be"),
    pytest.param(DOC.encode("utf-32"), id="utf32-bom"),
    pytest.param(DOC.encode("utf-32-le"), id="utf32-le"),
    pytest.param(DOC.encode("utf-32-be"), id="utf32-be"),
    pytest.param(b'{"authorization": NaN}', id="NaN-token"),
    pytest.param(b'{"authorization": Infinity, "mcp_endpoint": -Infinity}', id="Infinity"),
    pytest.param(('{"temperature": NaN, "tools": [' + tool_json() + "]}").encode(), id="NaN-else"),
    pytest.param(b'{"authorization": 1e400}', id="1e400-token"),
    pytest.param(b'{"authorization": -1e400, "x": 1e-400}', id="minus-1e400"),
    pytest.param(
        ('{"top_p": 1e99999999999999999999, "tools": [' + tool_json() + "]}").encode(),
        id="huge-exponent-else",
    ),
    pytest.param(b'{"authorization": ' + b"9" * 100 + b"}", id="int-100-digits-token"),
    pytest.param(b'{"authorization": ' + b"9" * 4300 + b"}", id="int-4300-digits-token"),
    pytest.param(b'{"authorization": ' + b"9" * 4301 + b"}", id="int-4301-digits-token"),
    pytest.param(b'{"seed": ' + b"9" * 4301 + b', "authorization": "t"}', id="int-4301-else"),
    pytest.param(b'{"authorization": -0, "x": -0.0, "y": 1E+2}', id="number-forms"),
    pytest.param(b'{"x": ' + deep(900) + b', "authorization": "t"}', id="deep-900"),
    pytest.param(b'{"x": ' + deep(10_000) + b', "authorization": "t"}', id="deep-10000"),
    pytest.param(b'{"x": ' + deep(100_000) + b', "authorization": "t"}', id="deep-100000"),
    pytest.param(b'{"tools": ' + deep(10_000) + b"}", id="deep-10000-in-tools"),
    pytest.param(deep(100_000), id="deep-100000-top-level"),
    pytest.param(b'{"authorization": "\xff"}', id="invalid-utf8-in-token"),
    pytest.param(b'{"x": "\xff", "authorization": "t"}', id="invalid-utf8-elsewhere"),
    pytest.param(b'{"x": "\xc0\xaf", "authorization": "t"}', id="overlong-utf8-elsewhere"),
    pytest.param(b'{"x": "\xf4\x90\x80\x80", "authorization": "t"}', id="beyond-U+10FFFF"),
    pytest.param(b'{"authorization": "t", "x": "\xe2\x82"}', id="truncated-utf8"),
    pytest.param(b'{"authorization": "a\x01b"}', id="raw-control-char-in-string"),
    pytest.param(b'{"authorization": "t", "x": "a\tb"}', id="raw-tab-elsewhere"),
    pytest.param(b'{"authorization": "t"} trailing', id="trailing-garbage"),
    pytest.param(b'{"authorization": "t",}', id="trailing-comma"),
    pytest.param(b'\x0c{"authorization": "t"}', id="form-feed-whitespace"),
    pytest.param(b' \r\n\t{"authorization": "t"} \r\n\t', id="json-whitespace"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'"authorization"', id="string"),
    pytest.param(b"null", id="null"),
]


@pytest.mark.parametrize("body", EXPLICIT)
def test_parse_body_agrees_with_json_loads(body: bytes) -> None:
    assert_agrees(body)


# --- the same inputs through the middleware -------------------------------------------------

VALID_TOKENS = {"tok", "first", "last", "a", "b", "t", "x", "top", "escaped", "plain"}


def expected_view(body: bytes) -> dict[str, Any] | None:
    """What the application must see for an ``EXPLICIT`` body: ``None`` for a refusal,
    ``UNREADABLE`` where ``json.loads`` refuses it (passed with nothing, or refused as
    ``invalid_body``).

    Only the simple inputs above: plain string tokens from ``VALID_TOKENS``.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return UNREADABLE
    if not isinstance(document, dict):
        return {"credentials": [], "default": None}
    fields = reference(document)
    creds = []
    for _, url, _label, authorization, headers in fields.tools:
        if headers[0] == "object" and any(
            k.strip().casefold() == "authorization" for k, _ in headers[1]
        ):
            return None
        if authorization in (("null",), ("str", "")):
            continue
        if authorization[0] != "str" or authorization[1] not in VALID_TOKENS:
            return None
        creds.append((url[1] if url[0] == "str" else None, authorization[1]))
    default = None
    if fields.authorization not in (("null",), ("str", "")):
        authorization = fields.authorization
        if authorization[0] != "str" or authorization[1] not in VALID_TOKENS:
            return None
        endpoint = document.get("mcp_endpoint")
        uri = endpoint.get("uri") if isinstance(endpoint, dict) else None
        if uri is None:
            default = authorization[1]
        creds.append((uri, authorization[1]))
    return {"credentials": sorted(creds, key=repr), "default": default}


UNREADABLE: dict[str, Any] = {"credentials": [], "default": None}


@pytest.mark.anyio
@pytest.mark.parametrize("body", EXPLICIT)
async def test_application_sees_what_json_loads_implies(body: bytes) -> None:
    expected = expected_view(body)
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post(
            "/v1/responses", content=body, headers={"Content-Type": "application/json"}
        )
    if expected is UNREADABLE and response.status_code == 400:
        assert response.json()["error"]["code"] == INVALID_BODY
        assert recorder.calls == []
        return
    if expected is None:
        assert response.status_code == 400
        assert recorder.calls == []
        return
    assert response.status_code == 200, response.text
    (call,) = recorder.calls
    assert call["body"] == body
    seen = sorted(((c["server_url"], c["token"]) for c in call["credentials"]), key=repr)
    assert {"credentials": seen, "default": call["default"]} == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "token"),
    [
        pytest.param(
            b'{"authorization": "a b", "authorization": "tok"}', "tok", id="bad-then-good"
        ),
        pytest.param(
            b'{"tools": [{"type": "mcp", "server_url": "https://h/m", "authorization": "x y",'
            b' "authorization": "Bearer tok"}]}',
            "tok",
            id="bad-then-good-in-tool",
        ),
        pytest.param(b'{"\\u0061uthorization": "a b", "authorization": "tok"}', "tok", id="esc"),
    ],
)
async def test_last_duplicate_decides_what_is_validated(body: bytes, token: str) -> None:
    """The middleware validates the value the application will read, not an earlier one."""
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post(
            "/v1/responses", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200
    assert [c["token"] for c in recorder.calls[0]["credentials"]] == [token]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"authorization": "tok", "authorization": "a b"}', id="good-then-bad"),
        pytest.param(b'{"authorization": "tok", "\\u0061uthorization": "a\\u0020b"}', id="esc"),
        pytest.param(
            b'{"tools": [{"type": "mcp", "server_url": "https://h/m", "headers": {"X": "1"},'
            b' "\\u0068eaders": {"\\u0041uthorization": "Bearer x"}}]}',
            id="escaped-smuggled-header",
        ),
    ],
)
async def test_last_duplicate_that_is_bad_is_refused(body: bytes) -> None:
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post(
            "/v1/responses", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert recorder.calls == []


# --- hypothesis: generated documents --------------------------------------------------------


class Obj(NamedTuple):
    """A JSON object as written: its pairs in order, duplicate keys allowed."""

    pairs: tuple[tuple[str, Any], ...]


KEYS = st.one_of(
    st.sampled_from(sorted(CREDENTIAL_KEYS | {"uri", "Authorization", "model", "input", "x"})),
    st.text(max_size=6),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["mcp", "", "Bearer tok", URL, "tok"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(KEYS, children), max_size=4).map(lambda p: Obj(tuple(p))),
    ),
    max_leaves=10,
)
URLS = st.one_of(
    st.sampled_from(
        [URL, "HTTPS://MCP.example.com:443/mcp/", "https://other.example.com/sse", "not a url", ""]
    ),
    SCALARS,
)
TOKENS = st.one_of(
    st.sampled_from(["tok", "Bearer tok", "bearer other", "", "a b", "Bearer", "tok\n", "t\u00e9"]),
    SCALARS,
)
HEADER_NAMES = st.sampled_from(["Authorization", "authorization", " AUTHORIZATION", "X-Trace"])
# Strategies are built once, here: building them inside composites costs more than drawing.
INDEX = st.integers(0, 2**16)
SEED = st.integers(0, 2**32 - 1)
TYPES = st.sampled_from(["mcp", "mcp", "mcp", "function", "MCP"])
LABELS = st.one_of(st.sampled_from(["a", "B"]), SCALARS)
HEADERS = st.one_of(
    st.lists(st.tuples(HEADER_NAMES, st.just("v")), max_size=2).map(lambda p: Obj(tuple(p))),
    VALUES,
)
EXTRA_PAIRS = st.lists(st.tuples(KEYS, VALUES), max_size=2)
TOOL_DUPLICATES = st.one_of(TOKENS, URLS, st.just("mcp"))
DOCUMENT_DUPLICATES = st.one_of(TOKENS, VALUES)
ENDPOINTS = st.one_of(URLS.map(lambda uri: Obj((("uri", uri),))), VALUES)


@st.composite
def with_duplicates(
    draw: st.DrawFn, pairs: list[tuple[str, Any]], values: Callable[[str], Any]
) -> Obj:
    """``pairs`` shuffled, then up to three of their keys written again with ``values(key)``."""
    out = list(pairs)
    random.Random(draw(SEED)).shuffle(out)
    for _ in range(draw(st.integers(0, 3)) if pairs else 0):
        key = pairs[draw(INDEX) % len(pairs)][0]
        out.insert(draw(INDEX) % (len(out) + 1), (key, draw(values(key))))
    return Obj(tuple(out))


@st.composite
def mcp_tools(draw: st.DrawFn) -> Obj:
    pairs: list[tuple[str, Any]] = [("type", draw(TYPES))]
    if draw(st.booleans()):
        pairs.append(("server_url", draw(URLS)))
    if draw(st.booleans()):
        pairs.append(("server_label", draw(LABELS)))
    if draw(st.booleans()):
        pairs.append(("authorization", draw(TOKENS)))
    if draw(st.booleans()):
        pairs.append(("headers", draw(HEADERS)))
    pairs += draw(EXTRA_PAIRS)
    return draw(with_duplicates(pairs, lambda _: TOOL_DUPLICATES))


TOOLS = st.one_of(st.lists(st.one_of(mcp_tools(), mcp_tools(), VALUES), max_size=4), VALUES)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A request body as a tree (objects as :class:`Obj`), rich in credential fields."""
    if draw(st.integers(0, 9)) == 9:
        return draw(VALUES)  # any JSON value at all, objects or not
    pairs: list[tuple[str, Any]] = []
    if draw(st.booleans()):
        pairs.append(("tools", draw(TOOLS)))
    if draw(st.booleans()):
        pairs.append(("authorization", draw(TOKENS)))
    if draw(st.booleans()):
        pairs.append(("mcp_endpoint", draw(ENDPOINTS)))
    pairs += draw(EXTRA_PAIRS)
    return draw(with_duplicates(pairs, lambda _: DOCUMENT_DUPLICATES))


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04X}"
    return f"\\u{code:04x}"


SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
WHITESPACE = ["", "", "", " ", "\n", "\t", "\r\n ", "  "]


def _string(text: str, rng: random.Random | None) -> str:
    """A JSON string literal: short escapes or ``\\uXXXX``; other characters raw or escaped."""
    out = []
    for ch in text:
        forced = ch in SHORT_ESCAPES or ord(ch) < 0x20 or 0xD800 <= ord(ch) <= 0xDFFF
        if not forced and (rng is None or rng.random() < 0.75):
            out.append(ch)
        elif ch in SHORT_ESCAPES and (rng is None or rng.random() < 0.5):
            out.append(SHORT_ESCAPES[ch])
        else:
            out.append(_escape_char(ch))
    return '"' + "".join(out) + '"'


def serialise(node: Any, rng: random.Random | None = None) -> str:
    """JSON text for ``node`` with duplicate keys kept; with ``rng``, random escapes and
    whitespace (one hypothesis draw for the whole layout keeps generation fast)."""

    def ws() -> str:
        return "" if rng is None else rng.choice(WHITESPACE)

    if isinstance(node, Obj):
        items = [
            ws() + _string(key, rng) + ws() + ":" + serialise(value, rng)
            for key, value in node.pairs
        ]
        return "{" + ",".join(items) + ws() + "}"
    if isinstance(node, list):
        return "[" + ",".join(serialise(v, rng) for v in node) + ws() + "]"
    if isinstance(node, str):
        return ws() + _string(node, rng)
    if isinstance(node, float) and math.isfinite(node) and rng is not None and rng.random() < 0.2:
        return ws() + f"{node:e}".replace("e", rng.choice("eE"))
    return ws() + json.dumps(node)


@st.composite
def layouts(draw: st.DrawFn) -> random.Random | None:
    """``None`` (plain JSON, what failures shrink to) or a seeded source of random layout."""
    return random.Random(draw(st.integers(0, 2**32 - 1))) if draw(st.booleans()) else None


ENCODINGS = st.sampled_from(
    ["utf-8"] * 8
    + ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Encoded request bodies built from :func:`documents`."""
    text = serialise(draw(documents()), draw(layouts()))
    return text.encode(draw(ENCODINGS))


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A UTF-8 body with a few bytes inserted, replaced or cut: mostly not JSON any more."""
    body = bytearray(serialise(draw(documents()), draw(layouts())).encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        junk = draw(
            st.one_of(
                st.binary(min_size=1, max_size=3),
                st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b",", b"\x01"]),
                st.just(b"9" * 4301),
            )
        )
        action = draw(st.sampled_from(["insert", "replace", "cut"]))
        if action == "insert":
            body[at:at] = junk
        elif action == "replace":
            body[at : at + len(junk)] = junk
        else:
            del body[at:]
    return bytes(body)


SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(bodies())
def test_generated_documents_parse_as_json_loads_reads_them(body: bytes) -> None:
    assert_agrees(body)


@SETTINGS
@given(corrupted())
def test_corrupted_documents_parse_as_json_loads_reads_them(body: bytes) -> None:
    assert_agrees(body)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(body: bytes) -> None:
    assert_agrees(body)


# --- hypothesis: end to end -----------------------------------------------------------------

# Table-driven model of the body source: only values whose verdict the reference states.
E2E_TOKENS: list[tuple[Any, str | None]] = [  # (value sent, bare token; None = refused)
    ("tok-a", "tok-a"),
    ("Bearer tok-b", "tok-b"),
    ("bearer tok-c", "tok-c"),
    ("a b", None),
    ("tok\r\n", None),
    ("t\u00e9", None),
    (7, None),
    (["tok-a"], None),
]
ABSENT: list[Any] = [None, ""]
E2E_URLS: dict[str, str | None] = {  # URL as sent -> its server identity (None = invalid)
    "https://a.example/mcp": "https://a.example/mcp",
    "HTTPS://A.EXAMPLE:443/mcp/": "https://a.example/mcp",
    "https://b.example/mcp": "https://b.example/mcp",
    "http://a.example/mcp": "http://a.example/mcp",
    "not a url": None,
}
E2E_HEADER_NAMES = {"Authorization": True, " authorization": True, "X-Trace": False}
NOISE_KEYS = st.sampled_from(["model", "input", "stream", "x", "\u00e9t\u00e9", "Tools"])


# Mostly good tokens, so that requests with several credentials are common.
TOKEN_VALUES = st.one_of(
    st.sampled_from([t for t, good in E2E_TOKENS if good]),
    st.sampled_from([t for t, good in E2E_TOKENS if good]),
    st.sampled_from([t for t, good in E2E_TOKENS if good]),
    st.sampled_from([t for t, good in E2E_TOKENS if not good] + ABSENT),
)
E2E_URL_VALUES = st.sampled_from(sorted(E2E_URLS))
E2E_HEADERS = st.lists(st.sampled_from(sorted(E2E_HEADER_NAMES)), max_size=2).map(
    lambda names: Obj(tuple((n, "v") for n in names))
)
E2E_ENDPOINTS = st.one_of(E2E_URL_VALUES, st.none()).map(lambda uri: Obj((("uri", uri),)))
NOISE_PAIRS = st.lists(st.tuples(NOISE_KEYS, VALUES), max_size=2)


def e2e_values(key: str) -> Any:
    """Values a duplicate key may take: from the model's tables only."""
    return E2E_VALUES.get(key, VALUES)


@st.composite
def e2e_tool(draw: st.DrawFn) -> Obj:
    pairs: list[tuple[str, Any]] = [
        ("type", draw(E2E_VALUES["type"])),
        ("server_label", draw(E2E_VALUES["server_label"])),
    ]
    if draw(st.integers(0, 5)):
        pairs.append(("server_url", draw(E2E_URL_VALUES)))
    if draw(st.integers(0, 4)):
        pairs.append(("authorization", draw(TOKEN_VALUES)))
    if draw(st.integers(0, 4)) == 4:
        pairs.append(("headers", draw(E2E_HEADERS)))
    pairs += draw(NOISE_PAIRS)
    return draw(with_duplicates(pairs, e2e_values))


E2E_VALUES: dict[str, Any] = {
    "type": st.sampled_from(["mcp", "mcp", "function"]),
    "server_url": E2E_URL_VALUES,
    "server_label": st.sampled_from(["a", "b", "c"]),
    "authorization": TOKEN_VALUES,
    "headers": E2E_HEADERS,
    "tools": st.one_of(
        st.lists(st.one_of(e2e_tool(), e2e_tool(), e2e_tool(), SCALARS), max_size=4),
        st.lists(e2e_tool(), min_size=2, max_size=4),
    ),
    "mcp_endpoint": E2E_ENDPOINTS,
}


@st.composite
def e2e_documents(draw: st.DrawFn) -> Obj:
    pairs: list[tuple[str, Any]] = []
    if draw(st.integers(0, 5)):
        pairs.append(("tools", draw(E2E_VALUES["tools"])))
    if draw(st.booleans()):
        pairs.append(("authorization", draw(TOKEN_VALUES)))
        if draw(st.booleans()):
            pairs.append(("mcp_endpoint", draw(E2E_ENDPOINTS)))
    pairs += draw(NOISE_PAIRS)
    return draw(with_duplicates(pairs, e2e_values))


class Outcome(NamedTuple):
    errors: frozenset[str]  # the codes a refusal may carry; empty: accepted
    credentials: tuple[tuple[str | None, str | None, str], ...]  # (url as sent, label, token)
    default: str | None


def _verdict(value: Any) -> tuple[bool, str | None]:
    """(absent, bare token or None when refused) for a table value."""
    if any(value == a and type(value) is type(a) for a in ABSENT):
        return True, None
    for sent, token in E2E_TOKENS:
        if value == sent and type(value) is type(sent):
            return False, token
    raise AssertionError(f"value outside the model: {value!r}")


def model(document: Any) -> Outcome:
    """What the reference says the middleware does with this ``json.loads`` result."""
    nothing = Outcome(frozenset(), (), None)
    if not isinstance(document, dict):
        return nothing
    errors: set[str] = set()
    tools = document.get("tools")
    mcp = [
        t
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and t.get("type") == "mcp"
    ]
    for tool in mcp:
        headers = tool.get("headers")
        if isinstance(headers, dict) and any(E2E_HEADER_NAMES[name] for name in headers):
            errors.add("authorization_in_headers")
    found: dict[str, tuple[str, str | None, str]] = {}
    by_label: dict[str, tuple[str | None, str | None, str]] = {}

    def add(url: str, label: str | None, token: str) -> None:
        key = E2E_URLS[url]
        if key is None:
            errors.add("invalid_server_url")
        elif key in found and found[key][2] != token:
            errors.add("conflicting_credentials")
        else:
            found.setdefault(key, (url, label, token))

    for tool in mcp:
        absent, token = _verdict(tool.get("authorization"))
        if absent:
            # A tool with headers and no token still names its server: a header-only entry.
            url = tool.get("server_url")
            if tool.get("headers") and url is not None and E2E_URLS[url] is None:
                errors.add("invalid_server_url")
            continue
        if token is None:
            errors.add("invalid_authorization")
            continue
        label = tool["server_label"]
        if tool.get("server_url") is None:
            previous = by_label.get(label)
            assume(previous is None or previous[2] == token)  # the reference is silent on this
            by_label.setdefault(label, (None, label, token))
        else:
            add(tool["server_url"], label, token)
    default = None
    absent, token = _verdict(document.get("authorization"))
    if not absent:
        if token is None:
            errors.add("invalid_authorization")
        else:
            endpoint = document.get("mcp_endpoint")
            uri = endpoint.get("uri") if isinstance(endpoint, dict) else None
            if uri is None:
                default = token
            else:
                add(uri, None, token)
    if errors:
        return Outcome(frozenset(errors), (), None)
    creds = [*found.values(), *by_label.values()]
    if default is not None:
        creds.append((None, None, default))
    return Outcome(frozenset(), tuple(sorted(creds, key=repr)), default)


@st.composite
def e2e_bodies(draw: st.DrawFn) -> bytes:
    text = serialise(draw(e2e_documents()), draw(layouts()))
    return text.encode(draw(ENCODINGS))


async def through_middleware(body: bytes) -> tuple[int, Any, Recorder]:
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post(
            "/v1/responses", content=body, headers={"Content-Type": "application/json"}
        )
    return response.status_code, response.json(), recorder


# Each example runs an app: no shrinking, so that a failure is reported in seconds.
E2E_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.anyio
@E2E_SETTINGS
@given(e2e_bodies())
async def test_application_sees_the_credentials_json_loads_implies(body: bytes) -> None:
    expected = model(json.loads(body))
    status, answer, recorder = await through_middleware(body)
    if expected.errors:
        assert status == 400
        assert answer["error"]["code"] in expected.errors
        assert recorder.calls == []
        return
    assert status == 200, answer
    (call,) = recorder.calls
    assert call["body"] == body
    seen = tuple(
        sorted(
            ((c["server_url"], c["server_label"], c["token"]) for c in call["credentials"]),
            key=repr,
        )
    )
    assert (seen, call["default"]) == (expected.credentials, expected.default)


@pytest.mark.anyio
@E2E_SETTINGS
@given(corrupted())
async def test_body_json_loads_refuses_passes_through_with_no_credentials(body: bytes) -> None:
    """Not JSON to the application: nothing is scoped. It passes through, or is refused as
    ``invalid_body`` where another parser would read credentials in it."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        pass
    else:
        assume(False)
    status, answer, recorder = await through_middleware(body)
    if status == 400:
        assert answer["error"]["code"] == INVALID_BODY
        assert recorder.calls == []
        return
    assert status == 200
    (call,) = recorder.calls
    assert call["body"] == body
    assert (call["credentials"], call["default"]) == ([], None)


# --- the body reads alike whatever else the request carries ----------------------------------
#
# A custom source or a provider-data header that supplies nothing changes nothing, and a body
# sent in pieces reads as the body sent whole.


WITH_CUSTOM_SOURCE = MCPAuthConfig(sources=(NothingSource(),))
EMPTY_PROVIDER_DATA = {PROVIDER_DATA: json.dumps({"mcp_headers": {}})}


async def _pieces(body: bytes, count: int) -> AsyncIterator[bytes]:
    step = max(1, -(-len(body) // count))
    for start in range(0, len(body), step):
        yield body[start : start + step]


async def answer(
    config: MCPAuthConfig | None, body: bytes, headers: dict[str, str], pieces: int
) -> tuple[int, Any, list[dict[str, Any]]]:
    recorder = Recorder()
    async with client(make_app(config, recorder)) as c:
        response = await c.post(
            "/v1/responses",
            content=body if pieces == 1 else _pieces(body, pieces),
            headers={"Content-Type": "application/json", **headers},
        )
    return response.status_code, response.json(), recorder.calls


@pytest.mark.anyio
@E2E_SETTINGS
@given(e2e_bodies(), st.integers(1, 3))
async def test_other_sources_and_pieces_change_nothing(body: bytes, pieces: int) -> None:
    alone = await answer(None, body, {}, 1)
    assert await answer(None, body, {}, pieces) == alone
    assert await answer(WITH_CUSTOM_SOURCE, body, {}, pieces) == alone
    assert await answer(None, body, EMPTY_PROVIDER_DATA, pieces) == alone
