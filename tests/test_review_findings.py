"""Findings of an attacker-minded review: each test fails on the code it was written against.

Every test's docstring says what the hole is and how severe it is. The bounded-work tests
time one request through the middleware with an in-memory server (nothing else runs on the
event loop meanwhile, so the time measured is the time the loop is held) and compare it, in
the same run, with what ``json.loads`` takes on the same body (the least the application
pays to read it): a ratio, which a loaded machine does not move, where the holes were 10 to
100 times over. The audit log is off there: its cost is per credential, not per byte.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any, Final, cast

import blacksheep
import httpx
import pytest
from blacksheep.server.routing import Router
from starlette.types import ASGIApp

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPBearerAuth,
    MCPCredential,
)
from mcp_auth_middleware.config import ProviderDataMode
from mcp_auth_middleware.credentials import InvalidCredential
from mcp_auth_middleware.downstream import InsecureTransportError
from mcp_auth_middleware.sources.body import JSON_FALLBACK_LIMIT, MAX_HEADERS_JSON
from mcp_auth_middleware.testing import serve
from tests.helpers import (
    AUTHORIZATION_IN_PROVIDER_DATA,
    SENTINEL,
    ASGIProbe,
    Exchange,
    carries_sentinel,
    client,
    http_request,
    make_app,
    mcp_tool,
    raw_http,
    run_asgi,
    smuggling_document,
)
from tests.test_frames import (  # the renderers and the failing log sink of the frame tests
    BODY_MARK,
    RENDERERS,
    LogFailed,
    failing_log,  # noqa: F401 - a fixture, used by name
)

#: The most the event loop may be held by one request, in units of ``json.loads`` on its body
#: (the holes were 25 to 100 times that, and quadratic ones far more).
RATIO: Final = 10.0
URL: Final = "https://mcp.example.com/mcp"
QUIET: Final = MCPAuthConfig(audit=False)


async def _held(app: ASGIApp, body: bytes) -> tuple[float, Exchange]:
    """How long one request with ``body`` held the event loop (the best of three), in units
    of ``json.loads`` on the same body (its best of three); and the answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    held = floor = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        answer = await run_asgi(app, [body], headers=headers)
        held = min(held, time.perf_counter() - start)
        start = time.perf_counter()
        json.loads(body)
        floor = min(floor, time.perf_counter() - start)
    return held / floor, answer


def _reordered_marks(pairs: int) -> str:
    """A header name whose NFKC normalisation must reorder every combining mark: ``pairs``
    marks of combining class 230 (U+0301), then ``pairs`` of class 220 (U+0316). CPython's
    canonical ordering is an insertion sort, so this costs ``pairs ** 2`` swaps."""
    return "a" + "\u0301" * pairs + "\u0316" * pairs


def _body(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


# --- 1. bounded work: quadratic NFKC in the Authorization look-alike check (high) -------------


@pytest.mark.anyio
async def test_one_header_name_of_reordered_combining_marks_does_not_hold_the_event_loop() -> None:
    """HIGH (denial of service). ``checks.is_authorization`` runs ``unicodedata.normalize
    ("NFKC", name)`` on every non-ASCII name of an MCP tool's ``headers``, of any length.
    Canonical reordering is quadratic, so a 48 KB body (one tool, one header name of 12,000
    + 12,000 combining marks) holds the event loop about 0.6 s, and a 192 KB body 9.3 s: a
    handful of such requests stop the gateway for every caller. The body need not carry a
    valid token; the check runs first."""
    body = _body({"tools": [mcp_tool(URL, "tok", headers={_reordered_marks(12_000): "v"})]})
    held, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=QUIET), body)
    assert answer.status in (200, 400)
    assert held < RATIO, f"one request of {len(body)} bytes held the loop {held:.1f}x json.loads"


@pytest.mark.anyio
async def test_tools_within_the_headers_limit_do_not_hold_the_event_loop() -> None:
    """HIGH (denial of service), the same cause in the bounded decoder for bodies over 1 MiB:
    every MCP tool's ``headers`` stays under the 16 KiB limit, yet 24 tools hold the event
    loop about 0.7 s, and 128 tools (the default ``max_tools``, a 1.4 MB body) 3.8 s."""
    headers = {_reordered_marks(2_700): "v"}
    assert len(_body(headers)) < MAX_HEADERS_JSON
    tools = [mcp_tool(f"{URL}/{i}", "tok", headers=headers) for i in range(24)]
    body = _body({"input": "x" * JSON_FALLBACK_LIMIT, "tools": tools})
    held, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=QUIET), body)
    assert answer.code == "invalid_headers"  # such a name is never carried to a server
    assert held < RATIO, f"one request of {len(body)} bytes held the loop {held:.1f}x json.loads"


# --- 2. the 16 KiB headers limit holds only above 1 MiB (medium) --------------------------------


@pytest.mark.anyio
async def test_an_mcp_tools_headers_over_16_kib_in_a_small_body_are_refused() -> None:
    """LOW (contract). The reference: "an MCP tool's headers over 16 KiB of JSON" is a 400
    ``invalid_headers``. Only the decoder for bodies over 1 MiB enforces it
    (``sources/body.py`` ``_headers_of``); a smaller body's tool may carry up to ~1 MiB of
    headers, which are decoded whole (``Tool.headers: Any``) and walked."""
    headers = {f"X-Header-{i}": "v" for i in range(1_500)}
    assert len(_body(headers)) > MAX_HEADERS_JSON
    body = _body({"tools": [mcp_tool(URL, "tok", headers=headers)]})
    assert len(body) < JSON_FALLBACK_LIMIT
    _, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=QUIET), body)
    assert (answer.status, answer.code) == (400, "invalid_headers")


@pytest.mark.anyio
async def test_a_megabyte_of_nested_headers_in_a_small_body_does_not_hold_the_event_loop() -> None:
    """MEDIUM (bounded work), the same unbounded ``headers`` of a body of at most 1 MiB: nested
    empty arrays in one MCP tool's ``headers`` make msgspec build ~500,000 lists, and a
    ``NaN`` at the end makes ``json.loads`` build them again: about 0.3 s per request."""
    head = b'{"tools":[{"type":"mcp","server_url":"' + URL.encode() + b'","authorization":"t",'
    unit = b"[" * 30 + b"]" * 30 + b","
    count = (JSON_FALLBACK_LIMIT - len(head) - 40) // len(unit)
    body = head + b'"headers":[' + (unit * count)[:-1] + b']}],"n":NaN}'
    assert len(body) <= JSON_FALLBACK_LIMIT
    held, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=QUIET), body)
    assert answer.status in (200, 400)
    assert held < RATIO, f"one request of {len(body)} bytes held the loop {held:.1f}x json.loads"


@pytest.mark.anyio
async def test_the_json_loads_fallback_on_a_megabyte_of_arrays_does_not_hold_the_event_loop() -> (
    None
):
    """LOW (bounded work). A body of at most 1 MiB that msgspec refuses (a ``NaN`` at the end)
    is parsed again by ``json.loads``; with nested arrays in a field nobody reads the two
    passes hold the event loop 150 to 180 ms, against the ~60 ms the reference promises."""
    head = b'{"tools":[' + json.dumps(mcp_tool(URL, "tok")).encode() + b'],"x":['
    unit = b"[[[[[[[[]]]]]]]],"
    count = (JSON_FALLBACK_LIMIT - len(head) - 20) // len(unit)
    body = head + (unit * count)[:-1] + b'],"n":NaN}'
    assert len(body) <= JSON_FALLBACK_LIMIT
    held, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=QUIET), body)
    assert answer.status == 200
    assert held < RATIO, f"one request of {len(body)} bytes held the loop {held:.1f}x json.loads"


# --- 3. redact_body re-parses and re-serialises the whole body (medium) -------------------------


@pytest.mark.anyio
async def test_redact_body_does_not_hold_the_event_loop_on_a_body_within_the_limit() -> None:
    """MEDIUM (bounded work, a security setting). With ``redact_body`` on, ``_redact``
    (``middleware.py``) runs ``json.loads`` and ``json.dumps`` on the whole body, up to
    ``max_body_bytes`` (16 MiB): a 15 MiB body of small objects holds the event loop about
    1.6 s (19 ms with ``redact_body`` off). Turning the protection on opens a denial of
    service the bounded decoder was built to close."""
    document = {"input": [{"a": 1}] * 2_000_000, "tools": [mcp_tool(URL, "tok")]}
    body = json.dumps(document, separators=(",", ":")).encode()
    config = MCPAuthConfig(redact_body=True, audit=False)
    assert len(body) < config.max_body_bytes
    held, answer = await _held(MCPAuthMiddleware(ASGIProbe(), config=config), body)
    assert answer.status == 200
    # Less than one json.loads of the body: the hole was json.loads and json.dumps of it all.
    assert held < 1.0, f"one request of {len(body)} bytes held the loop {held:.1f}x json.loads"


# --- 4. secrets in the frames of a refused request's traceback (medium) -------------------------

REFUSED_BODIES = {
    # parse_body raises with the raw body in its frame's ``body`` local
    "too_many_tools": {
        "input": BODY_MARK,
        "tools": [mcp_tool(f"{URL}/{i}", SENTINEL) for i in range(129)],
    },
    # _credential raises with the (valid) token in its ``authorization`` local
    "invalid_server_url": {
        "input": BODY_MARK,
        "tools": [mcp_tool("ftp://mcp.example.com/", SENTINEL)],
    },
    # read_credentials raises with the valid top-level token in its ``authorization`` local
    "invalid_authorization": {
        "input": BODY_MARK,
        "authorization": SENTINEL,
        "tools": [mcp_tool(URL, "not a token")],
    },
}


def _secret_holders(exc: BaseException) -> list[str]:
    """``renderer: function.local`` for each middleware frame local that renders a secret,
    and ``renderer: crashed`` where rendering the traceback itself failed."""
    found = []
    for renderer, render in RENDERERS.items():
        try:
            stacks = render(exc)
        except Exception as error:  # a crash is itself a finding
            found.append(f"{renderer}: crashed ({type(error).__name__})")
            continue
        for stack in stacks:
            for frame in stack:
                if frame.in_middleware:
                    found += [
                        f"{renderer}: {frame.function}.{name}"
                        for name, text in frame.locals.items()
                        if SENTINEL in text or BODY_MARK in text
                    ]
    return found


@pytest.mark.anyio
@pytest.mark.usefixtures("failing_log")
@pytest.mark.parametrize("case", list(REFUSED_BODIES))
async def test_a_log_sink_failing_on_a_refusal_finds_no_secret_in_the_middlewares_frames(
    case: str,
) -> None:
    """MEDIUM (secret leak). ``tests/test_frames.py`` makes the audit log raise on the
    *resolved* event only. When it raises on the *rejected* event, it raises inside
    ``except CredentialRejected`` (``middleware.py`` ``_prepare``/``_reject``), so the new
    exception's ``__context__`` is the refusal, whose traceback keeps the frames it was
    raised from: ``parse_body`` (the raw body, tokens included), ``_credential`` or
    ``read_credentials`` (a valid token as a plain ``str``). Python's ``traceback``
    (``capture_locals``) and structlog's ``dict_tracebacks`` render them (structlog even
    through ``raise ... from None``); the ``traceback`` renderer also crashes on the
    half-built ``MCPCredential`` in ``__init__``'s frame (see the next test)."""
    body = json.dumps(REFUSED_BODIES[case]).encode()
    with pytest.raises(LogFailed) as caught:
        await _held(MCPAuthMiddleware(ASGIProbe()), body)
    assert _secret_holders(caught.value) == []


def test_a_half_built_credential_can_be_rendered_in_a_traceback() -> None:
    """LOW (robustness of error reporting). ``MCPCredential.__init__`` raises
    ``InvalidCredential`` before it sets ``_server_url``; its frame's ``self`` is then a
    half-built object whose ``__repr__`` raises ``AttributeError``, so
    ``traceback.TracebackException(..., capture_locals=True)`` (and any renderer calling
    ``repr`` without a guard) fails on every traceback through an invalid credential, and the
    original error report is lost."""
    with pytest.raises(InvalidCredential) as caught:
        MCPCredential(token="tok", source="custom", server_url="ftp://mcp.example.com/")
    traceback.TracebackException.from_exception(caught.value, capture_locals=True)


# --- 5. paths: a router that matches case-insensitively (medium) --------------------------------


def _blacksheep_app(hits: list[bool]) -> ASGIApp:
    app = blacksheep.Application(router=Router())

    async def responses(request: blacksheep.Request) -> blacksheep.Response:
        hits.append(carries_sentinel(await request.json()))
        return blacksheep.text("ok")

    app.router.add_post("/v1/responses", responses)
    return cast(ASGIApp, app)


@pytest.mark.parametrize("target", ["/V1/RESPONSES", "/v1/Responses"])
def test_paths_guard_what_blacksheeps_router_dispatches_to_a_guarded_route(target: str) -> None:
    """MEDIUM (fail-closed reading). BlackSheep's router matches paths case-insensitively:
    ``/V1/RESPONSES`` reaches the ``/v1/responses`` handler. ``paths`` is matched
    case-sensitively (``paths.py``), so with ``paths=("/v1/responses",)`` that request is
    not guarded and the handler parses a body the middleware never read (here a smuggled
    ``Authorization`` in ``tools[0].headers``, which the guarded path refuses)."""
    body = json.dumps(smuggling_document()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    plain: list[bool] = []
    with serve(_blacksheep_app(plain)) as base_url:
        status, _ = raw_http(base_url, http_request(target, body, headers))
    assert (status, plain) == (200, [True])  # the router does dispatch it to the handler
    hits: list[bool] = []
    guarded = MCPAuthMiddleware(
        _blacksheep_app(hits), config=MCPAuthConfig(paths=("/v1/responses",))
    )
    with serve(guarded) as base_url:
        status, _ = raw_http(base_url, http_request(target, body, headers))
    assert True not in hits, "the handler parsed a smuggled Authorization the middleware let by"


# --- 6. two credentials for one connector label: the first wins silently (low) -----------------


@pytest.mark.anyio
@pytest.mark.parametrize("labels", [("conn", "conn"), ("GitHub", "github")], ids=["same", "case"])
async def test_two_label_only_tools_with_different_tokens_are_refused(
    labels: tuple[str, str],
) -> None:
    """LOW (parser agreement). Two MCP tools with the same ``server_label``, no
    ``server_url`` and different tokens pass: ``read_credentials`` skips the conflict check
    for credentials without a server (``sources/body.py``), ``MCPCredentials`` then raises
    and ``resolve`` swallows it, keeping the first (``resolve.py``). An application that
    keys the body's tools by label keeps the last: the two disagree about which token the
    connector gets, where two tools for one URL are ``conflicting_credentials``."""
    tools = [
        {"type": "mcp", "server_label": labels[0], "authorization": "token-a"},
        {"type": "mcp", "server_label": labels[1], "authorization": "token-b"},
    ]
    async with client(make_app()) as http:
        answer = await http.post("/v1/responses", json={"tools": tools})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "conflicting_credentials"


# --- 7. a provider-data header name the framing pass claims first (low) -----------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["X-Request-ID", "Content-Type", "Content-Encoding", "Transfer-Encoding"]
)
async def test_a_provider_data_header_name_never_switches_the_source_off(name: str) -> None:
    """LOW (a setting quietly switching a check off). ``_framing`` (``middleware.py``) tests
    the framing headers and ``x-request-id`` before the provider-data header, so a
    ``provider_data_header`` with one of those names is never seen as present and the source
    is never asked: in ``reject`` mode legacy credentials pass, in ``accept`` mode they are
    neither read nor checked. Either the setting is refused at start-up or it works."""
    try:
        config = MCPAuthConfig(provider_data=ProviderDataMode.REJECT, provider_data_header=(name,))
    except ValueError:
        return  # refused at start-up: fine
    value = json.dumps({"mcp_headers": {URL: {"Authorization": "Bearer legacy"}}}).encode()
    probe = ASGIProbe()
    answer = await run_asgi(
        MCPAuthMiddleware(probe, config=config), [b""], headers=[(name.lower().encode(), value)]
    )
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_PROVIDER_DATA)
    assert probe.calls == []


# --- 8. "loopback" names that the resolver sends to DNS (low) ---------------------------------


@pytest.mark.parametrize("host", ["mcp.attacker.localhost", "localhost.attacker.example"])
def test_plain_http_to_a_name_that_may_not_be_loopback_is_refused(host: str) -> None:
    """LOW (transport). ``is_loopback_host`` (``urls.py``) takes any ``*.localhost`` name for
    loopback, so ``MCPBearerAuth`` puts the token on plain ``http://`` to it. glibc's resolver
    (this machine's included: ``getaddrinfo("foo.localhost")`` asks DNS) does not map such
    names to loopback; whoever answers that DNS query gets the token in clear text. Only
    ``localhost`` and IP literals are certainly loopback. (The second host is a control.)"""
    url = f"http://{host}/mcp"
    auth = MCPBearerAuth(credentials=[MCPCredential(token="tok", source="custom", server_url=url)])
    with pytest.raises(InsecureTransportError):
        auth.apply(httpx.Request("POST", url))


# --- 9. redact_body leaves a token a later duplicate key hides (low) ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "document",
    [
        b'{"tools":[{"type":"mcp","server_url":"%s","authorization":"%s","authorization":null}]}',
        b'{"tools":[{"type":"mcp","server_url":"%s","authorization":"%s","authorization":""}]}',
        b'{"mcp_endpoint":{"uri":"%s"},"authorization":"%s","authorization":null}',
    ],
    ids=["tool-null", "tool-empty", "top-level-null"],
)
async def test_redact_body_removes_every_authorization_value(document: bytes) -> None:
    """LOW (secret kept). ``redact_body`` promises the application a body without the
    ``authorization`` values. ``_prepare`` (``middleware.py``) redacts only when the decoded
    body names a credential; when a duplicate key ending in ``null`` or ``""`` hides the token
    (last key wins), nothing is redacted and the raw bytes, token included, reach the
    application, which may log or store them (and a parser that keeps the first duplicate
    reads it as a credential the middleware never checked)."""
    body = document % (URL.encode(), SENTINEL.encode())
    probe = ASGIProbe()
    config = MCPAuthConfig(redact_body=True, audit=False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    answer = await run_asgi(MCPAuthMiddleware(probe, config=config), [body], headers=headers)
    assert answer.status == 200
    leaked = SENTINEL.encode() in probe.calls[0].body  # (a bool: no token in the report)
    assert not leaked, "the application got the token"
