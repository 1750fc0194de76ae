"""Bounded work and odd input: refuse what cannot be read the way every reader reads it.

A request may not make the middleware do unbounded work (thousands of tools), may not crash
it (a Content-Length of 5000 digits), and may not be read one way by the middleware and
another by the application: a header smuggled in a shape the middleware does not look at
(a list of pairs, as httpx accepts), a body one parser gives up on (nesting past the
recursion limit, an integer longer than ``sys.get_int_max_str_digits()``, a ``NaN`` in a
body too big to hand to ``json.loads``) while another reads it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware
from mcp_auth_middleware.credentials import fingerprint
from tests.helpers import (
    AUTHORIZATION_IN_HEADERS,
    INVALID_BODY,
    INVALID_CONTENT_LENGTH,
    TOO_MANY_TOOLS,
    ASGIProbe,
    Exchange,
    carries_sentinel,
    jbody,
    mcp_tool,
    run_asgi,
    smuggling_tool,
)


async def send(
    body: bytes,
    config: MCPAuthConfig | None = None,
    *,
    length: Sequence[bytes] | None = None,
    app: ASGIProbe | None = None,
) -> tuple[Exchange, ASGIProbe]:
    """``body`` as one message, with its true Content-Length unless ``length`` says."""
    probe = app or ASGIProbe()
    middleware = MCPAuthMiddleware(probe, config=config or MCPAuthConfig())
    lengths = [str(len(body)).encode()] if length is None else list(length)
    headers = [(b"content-type", b"application/json")]
    headers += [(b"content-length", value) for value in lengths]
    try:
        answer = await run_asgi(middleware, [body], headers=headers)
    except Exception:  # the middleware crashed: a 500 from the server
        answer = Exchange(500, b"")
    return answer, probe


def assert_refused(answer: Exchange, probe: ASGIProbe, status: int, code: str) -> None:
    assert (answer.status, answer.code) == (status, code)
    assert probe.calls == []


def mcp_tools(count: int) -> list[dict[str, Any]]:
    return [mcp_tool(f"https://mcp{i}.example.com/mcp", f"tok-{i}", f"s{i}") for i in range(count)]


# --- how many tools -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_129_mcp_tools_are_too_many() -> None:
    answer, probe = await send(jbody({"tools": mcp_tools(129)}))
    assert_refused(answer, probe, 400, TOO_MANY_TOOLS)
    assert answer.param == "tools"


@pytest.mark.anyio
async def test_128_mcp_tools_are_all_read() -> None:
    answer, probe = await send(jbody({"tools": mcp_tools(128)}))
    assert answer.status == 200, answer.code
    assert len(probe.calls[0].fingerprints) == 128


@pytest.mark.anyio
@pytest.mark.parametrize(("count", "refused"), [(5, False), (6, True)])
async def test_max_tools_from_the_environment(count: int, refused: bool) -> None:
    config = MCPAuthConfig.from_env({"MCP_AUTH_MAX_TOOLS": "5"})
    answer, probe = await send(jbody({"tools": mcp_tools(count)}), config)
    if refused:
        assert_refused(answer, probe, 400, TOO_MANY_TOOLS)
    else:
        assert answer.status == 200, answer.code
        assert len(probe.calls[0].fingerprints) == count


@pytest.mark.anyio
@pytest.mark.parametrize(("count", "refused"), [(4096, False), (4097, True)])
async def test_more_than_4096_tools_of_any_kind_are_too_many(count: int, refused: bool) -> None:
    tools = [{"type": "function", "name": f"f{i}"} for i in range(count)]
    answer, probe = await send(jbody({"tools": tools}))
    if refused:
        assert_refused(answer, probe, 400, TOO_MANY_TOOLS)
        assert answer.param == "tools"
    else:
        assert answer.status == 200, answer.code


# --- Content-Length -------------------------------------------------------------------------

BENIGN = jbody({"model": "m", "input": "hi"})

BAD_LENGTHS = [
    pytest.param([b"abc"], id="letters"),
    pytest.param([b"-1"], id="negative"),
    pytest.param([b"+%d" % len(BENIGN)], id="plus-sign"),
    pytest.param([b"1 2"], id="inner-space"),
    pytest.param([b"1e3"], id="exponent"),
    pytest.param([b"0x10"], id="hex"),
    pytest.param([b"1_0"], id="underscore-int-accepts"),
    pytest.param([b"\xb2"], id="latin1-superscript-two"),
    pytest.param(["\uff15".encode()], id="fullwidth-digit"),
    pytest.param([b""], id="empty"),
    pytest.param([b"1" * 19], id="19-digits"),
    pytest.param([b"9" * 5000], id="5000-digits"),
    pytest.param([b"%d" % len(BENIGN), b"%d" % (len(BENIGN) + 1)], id="two-that-differ"),
    pytest.param([b"%d" % len(BENIGN), b"x"], id="good-then-junk"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("lengths", BAD_LENGTHS)
async def test_a_content_length_that_is_not_a_plain_decimal_is_refused(
    lengths: list[bytes],
) -> None:
    answer, probe = await send(BENIGN, length=lengths)
    assert_refused(answer, probe, 400, INVALID_CONTENT_LENGTH)
    assert answer.param == "Content-Length"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([b"%d" % len(BENIGN)], id="plain"),
        pytest.param([b"%018d" % len(BENIGN)], id="18-digits-leading-zeros"),
        pytest.param([b"%d" % len(BENIGN)] * 2, id="two-that-agree"),
    ],
)
async def test_a_plain_content_length_is_accepted(lengths: list[bytes]) -> None:
    answer, probe = await send(BENIGN, length=lengths)
    assert answer.status == 200, answer.code
    assert probe.calls[0].body == BENIGN


# --- headers in every shape an HTTP client accepts --------------------------------------------

AUTHORIZATION_NAMES = [
    "Authorization",
    "authorization",
    "AUTHORIZATION",
    " Authorization",
    "Authorization\t",
    "\uff21uthorization",  # full-width A
    "author\u0131zation",  # dotless i
    "author\u2170zation",  # small roman numeral one: NFKC "i"
    "\U0001d400uthorization",  # mathematical bold A
]
OTHER_NAMES = ["X-Api-Key", "Accept", "X-Authorization-Hint", "Authorization-Extra", "Auth"]


def is_authorization(name: str) -> bool:
    """The contract's test: Authorization in any case, trimmed, or its NFKC look-alike."""
    folded = unicodedata.normalize("NFKC", name).strip().casefold().replace("\u0131", "i")
    return folded == "authorization"


@st.composite
def header_shapes(draw: st.DrawFn) -> Any:
    """A ``headers`` value as httpx accepts it: an object, a list of [name, value] pairs, or a
    list of objects (httpx unpacks each object into its two keys)."""
    names = draw(
        st.lists(st.sampled_from(AUTHORIZATION_NAMES + OTHER_NAMES), min_size=1, max_size=4)
    )
    shape = draw(st.sampled_from(["object", "pairs", "objects", "mixed"]))
    if shape == "object":
        return {name: f"v{i}" for i, name in enumerate(names)}
    items: list[Any] = []
    for i, name in enumerate(names):
        kind = shape if shape != "mixed" else draw(st.sampled_from(["pairs", "objects"]))
        if kind == "pairs":
            items.append([name, f"v{i}"])
        elif draw(st.booleans()):
            items.append({name: f"v{i}"})
        else:  # httpx sends the first key as the name, the second as the value
            items.append({name: 1, f"Bearer v{i}": 2})
    return items


def names_in(headers: Any) -> list[str]:
    if isinstance(headers, dict):
        return list(headers)
    found = []
    for item in headers:
        if isinstance(item, dict):
            found += list(item)
        elif isinstance(item, list) and len(item) == 2:
            found.append(item[0])
    return found


def httpx_would_send_authorization(headers: Any) -> bool:
    """Whether httpx or httpx2, handed these headers, sends an Authorization header."""
    for module in (httpx, httpx2):
        try:
            built = module.Headers(headers)
        except (TypeError, ValueError, UnicodeError):
            continue
        if "authorization" in built:
            return True
    return False


@pytest.mark.anyio
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_shapes(), st.integers(0, 2))
async def test_an_authorization_in_any_header_shape_is_refused(headers: Any, position: int) -> None:
    tools: list[dict[str, Any]] = [{"type": "function", "name": f"f{i}"} for i in range(position)]
    tools.append(mcp_tool(token=..., headers=headers))
    answer, probe = await send(jbody({"tools": tools}))
    smuggled = any(is_authorization(name) for name in names_in(headers))
    if smuggled or httpx_would_send_authorization(headers):
        assert_refused(answer, probe, 400, AUTHORIZATION_IN_HEADERS)
        assert answer.param == f"tools[{position}].headers"
    elif carriable(headers):
        assert answer.status == 200, answer.code
    else:  # a shape the middleware will not carry to the server (objects, a name twice)
        assert_refused(answer, probe, 400, "invalid_headers")
        assert str(answer.param).startswith(f"tools[{position}].headers")


def carriable(headers: Any) -> bool:
    """Whether headers drawn from ``OTHER_NAMES`` can travel to their server: an object, or a
    list of [name, value] pairs, naming each header once in any case."""
    if isinstance(headers, dict):
        names = list(headers)
    elif all(isinstance(item, list) and len(item) == 2 for item in headers):
        names = [item[0] for item in headers]
    else:
        return False
    return len({name.lower() for name in names}) == len(names)


@pytest.mark.parametrize(
    "headers",
    [
        [["Authorization", "Bearer x"]],
        [{"Authorization": "1", "Bearer x": "2"}],
        [["X-A", "1"], ["authorization", "Bearer x"]],
    ],
    ids=["pair", "object-unpacked-into-its-keys", "second-pair"],
)
def test_httpx_sends_authorization_for_these_shapes(headers: Any) -> None:
    """The shapes above are not hypothetical: httpx sends them as an Authorization header."""
    assert httpx_would_send_authorization(headers)


# --- a body one parser gives up on ------------------------------------------------------------


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def with_deep_input(depth: int, tool: dict[str, Any]) -> bytes:
    return b'{"tools":[' + jbody(tool) + b'],"input":' + deep(depth) + b"}"


def _json_depth_limit() -> int:
    """The shallowest nesting ``json.loads`` refuses here (Python 3.11: about the recursion
    limit; 3.12 and later count C recursion apart, and go deeper)."""
    low, high = 1, 1 << 20
    while low < high:
        middle = (low + high) // 2
        try:
            json.loads(deep(middle))
        except RecursionError:
            high = middle
        else:
            low = middle + 1
    return low


LIMIT = _json_depth_limit()


@pytest.mark.anyio
@pytest.mark.parametrize("depth", sorted({LIMIT + 5, LIMIT * 2, max(100_000, LIMIT * 4)}), ids=str)
@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(mcp_tool(token="deep-token"), id="credential"),
        pytest.param(smuggling_tool(), id="smuggled-header"),
        pytest.param({"type": "function", "name": "f"}, id="nothing-to-read"),
    ],
)
async def test_nesting_past_the_recursion_limit_is_refused_not_passed_on(
    depth: int, tool: dict[str, Any]
) -> None:
    answer, probe = await send(with_deep_input(depth, tool))
    assert_refused(answer, probe, 400, INVALID_BODY)
    assert answer.param == "body"


class ThreadParsingApp(ASGIProbe):
    """An application that parses its body with ``json.loads`` in a worker thread, whose
    stack is fresh: it reads nesting that the middleware, deeper in the event loop's
    stack, cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.saw: list[bool] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        document = await anyio.to_thread.run_sync(_loads_or_none, self.calls[-1].body)
        self.saw.append(carries_sentinel(document))


def _loads_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


@pytest.mark.anyio
async def test_nesting_an_app_in_a_thread_can_parse_is_never_passed_on_unread() -> None:
    parsed = 0
    for depth in range(LIMIT - 80, LIMIT + 10, 5):
        body = with_deep_input(depth, smuggling_tool())
        plain = ThreadParsingApp()
        await plain(*_scope_for(body))
        if not any(plain.saw):
            continue
        parsed += 1
        answer, probe = await send(body, app=ThreadParsingApp())
        assert answer.status == 400, f"depth {depth}: passed on ({answer.status})"
        assert answer.code in (AUTHORIZATION_IN_HEADERS, INVALID_BODY)
        assert probe.calls == []
    assert parsed, "the thread never parsed any of these: the case tests nothing"


def _scope_for(body: bytes) -> tuple[Scope, Receive, Send]:
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def discard(message: Any) -> None:
        pass

    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    return scope, receive, discard


LONG_INTEGER = b"7" * 5000


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tool",
    [
        pytest.param(mcp_tool(token="long-int-token"), id="credential"),
        pytest.param(mcp_tool(token=...), id="mcp-tool-without-token"),
        pytest.param(smuggling_tool(), id="smuggled-header"),
    ],
)
async def test_a_5000_digit_integer_beside_an_mcp_tool_is_refused(tool: dict[str, Any]) -> None:
    """msgspec (and Litestar, which decodes with it) reads the body; ``json.loads`` (and
    Starlette, FastAPI, Quart) refuses it: the middleware may read it neither way."""
    body = b'{"tools":[' + jbody(tool) + b'],"n":' + LONG_INTEGER + b"}"
    answer, probe = await send(body)
    assert_refused(answer, probe, 400, INVALID_BODY)


@pytest.mark.anyio
async def test_a_5000_digit_integer_with_nothing_to_read_passes_through() -> None:
    body = b'{"model":"m","n":' + LONG_INTEGER + b"}"
    answer, probe = await send(body)
    assert answer.status == 200, answer.code
    assert probe.calls[0].body == body


@pytest.mark.anyio
async def test_a_body_over_1_mib_with_a_nan_is_refused() -> None:
    """msgspec refuses ``NaN``; handing 1 MiB to ``json.loads`` could block the loop."""
    body = (
        b'{"tools":['
        + jbody(mcp_tool(token="nan-token"))
        + b'],"input":"'
        + b"x" * (1 << 20)
        + b'","t":NaN}'
    )
    answer, probe = await send(body)
    assert_refused(answer, probe, 400, INVALID_BODY)


@pytest.mark.anyio
async def test_a_small_body_with_a_nan_is_read_as_json_loads_reads_it() -> None:
    body = b'{"tools":[' + jbody(mcp_tool(token="nan-token")) + b'],"t":NaN}'
    answer, probe = await send(body)
    assert answer.status == 200, answer.code
    assert probe.calls[0].fingerprints == [fingerprint("nan-token")]
