"""Hostile input through the middleware: it never crashes, never answers 5xx, refuses with the
documented code (the application not called), or passes the exact bytes on.

Every request here is driven as raw ASGI messages, so nothing (h11, httpx) cleans the input up
first: the middleware sees bytes no HTTP server would let through, and must still hold.
Credentials are compared by fingerprint, never by token, so no failure prints a token.

The hypothesis tests at the end run ``MCP_AUTH_FUZZ_EXAMPLES`` examples each (default 100);
``tests/test_fuzz_long.py`` (``slow``) runs the same generators for 200,000 cases.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredential,
    MCPServerHeaders,
    current_credentials,
)
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    BODY_TOO_LARGE,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_BODY,
    INVALID_CONTENT_LENGTH,
    INVALID_PROVIDER_DATA,
    INVALID_SERVER_URL,
    TOO_MANY_TOOLS,
    CredentialRejected,
)
from mcp_auth_middleware.sources.base import MCPTool, ParsedBody, SourceRequest
from mcp_auth_middleware.sources.body import (
    MAX_TOOL_ITEMS,
    BodySource,
    parse_body,
)
from mcp_auth_middleware.sources.provider_data import RESERVED_HEADERS, ProviderDataSource
from mcp_auth_middleware.urls import normalize_server_url
from tests.helpers import ASGIProbe, asgi_scope, jbody

PD: Final = "X-LlamaStack-Provider-Data"
URL: Final = "https://mcp.example.com/mcp"
OTHER_URL: Final = "https://other.example.com/mcp"
TOKEN: Final = "hostile-token-0123456789"
DEPTH: Final = 100_000
LIMIT: Final = 4096  # max_body_bytes of the size tests (the default limit has its own tests)
DEFAULT_LIMIT: Final = 16 * 1024 * 1024
FUZZ_EXAMPLES: Final = int(os.environ.get("MCP_AUTH_FUZZ_EXAMPLES", "100"))

# --- a raw ASGI driver ---------------------------------------------------------------------

#: One credential as the tests compare it: server (normalised), label, source, fingerprint of
#: the token, names of the extra headers. Never the token itself.
Cred = tuple[str | None, str | None, str, str, tuple[str, ...]]


def summarize(creds: Iterable[MCPCredential | MCPServerHeaders]) -> frozenset[Cred]:
    return frozenset(
        (
            None if c.server is None else c.server.url,
            c.server_label,
            str(c.source),
            c.fingerprint if isinstance(c, MCPCredential) else "",
            tuple(sorted(c.headers)),
        )
        for c in creds
    )


def cred(
    url: str | None,
    token: str,
    *,
    label: str | None = None,
    source: str = "body",
    headers: Sequence[str] = (),
) -> Cred:
    server = None if url is None else normalize_server_url(url)
    return (server, label, source, fingerprint(token), tuple(sorted(headers)))


@dataclass(frozen=True)
class Seen:
    """One call of the application: the body bytes it read and the credentials in scope."""

    body: bytes
    credentials: frozenset[Cred]


@dataclass
class Outcome:
    status: int | None  # None: the middleware sent nothing
    error: dict[str, Any] | None
    seen: list[Seen]
    receives: int  # calls of the server's receive() by the middleware and the app
    sent: list[Message] = field(repr=False)

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.get("code")

    @property
    def param(self) -> str | None:
        return None if self.error is None else self.error.get("param")


AUTO: Final = b"<auto>"


async def drive(
    body: bytes | Sequence[bytes],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    config: MCPAuthConfig | None = None,
    content_length: bytes | None = AUTO,
    app: ASGIProbe | None = None,
    middleware: MCPAuthMiddleware | None = None,
) -> Outcome:
    """Send ``body`` (one message, or the given chunks) through the middleware, as raw ASGI.

    ``content_length``: ``AUTO`` declares the true length, ``None`` declares none, anything
    else is sent as is (a lie, garbage, ...).
    """
    chunks = [body] if isinstance(body, bytes) else list(body)
    app = app if app is not None else ASGIProbe()
    mw = middleware if middleware is not None else MCPAuthMiddleware(app, config=config)
    all_headers = [(b"content-type", b"application/json"), *headers]
    if content_length is AUTO:
        all_headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    elif content_length is not None:
        all_headers.append((b"content-length", content_length))
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    pending = iter(messages)
    receives = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal receives
        receives += 1
        return next(pending, {"type": "http.disconnect"})

    async def send(message: Message) -> None:
        sent.append(message)

    await mw(asgi_scope(all_headers), receive, send)
    status = sent[0]["status"] if sent else None
    error = None
    if status is not None and status != 200:
        payload = b"".join(m.get("body", b"") for m in sent[1:])
        error = json.loads(payload)["error"]
    seen = [Seen(call.body, summarize(call.credentials)) for call in app.calls]
    return Outcome(status, error, seen, receives, sent)


def assert_passed_through(outcome: Outcome, body: bytes, creds: frozenset[Cred]) -> None:
    """The app was called once, with exactly ``body``, and ``creds`` in scope."""
    assert outcome.status == 200, outcome.error
    assert len(outcome.seen) == 1
    assert outcome.seen[0].body == body
    assert outcome.seen[0].credentials == creds


def assert_refused(outcome: Outcome, status: int, code: str, param: str | None = None) -> None:
    """Refused with the documented status and code; the app was not called."""
    assert outcome.status == status
    assert outcome.code == code
    if param is not None:
        assert outcome.param == param
    assert outcome.seen == []


def tool(
    url: str = URL, token: str | None = TOKEN, label: str = "s", **extra: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "mcp", "server_label": label, "server_url": url}
    if token is not None:
        item["authorization"] = token
    item.update(extra)
    return item


def pd_header(document: Any) -> tuple[bytes, bytes]:
    return (PD.encode(), json.dumps(document).encode())


def pd_bearer(url: str, token: str, **extra: str) -> dict[str, Any]:
    return {"mcp_headers": {url: {"Authorization": f"Bearer {token}", **extra}}}


# --- 100,000-deep nesting ------------------------------------------------------------------


def deep_array(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_object(depth: int = DEPTH) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


DEEP_BODIES = [
    pytest.param(b'{"tools":' + deep_array() + b"}", id="as-the-tools-list"),
    pytest.param(b'{"tools":[' + deep_array() + b"]}", id="inside-the-tools-list"),
    pytest.param(
        b'{"tools":[{"type":"mcp","server_url":"' + URL.encode() + b'","server_label":"s",'
        b'"authorization":"' + TOKEN.encode() + b'","metadata":' + deep_object() + b"}]}",
        id="inside-an-mcp-tool-beside-its-token",
    ),
    pytest.param(
        b'{"input":' + deep_array() + b',"tools":' + jbody([tool()]) + b"}",
        id="in-another-field-beside-a-credential",
    ),
    pytest.param(
        b'{"tools":' + jbody([tool()]) + b',"input":' + deep_object() + b"}",
        id="objects-in-another-field-after-the-credential",
    ),
    pytest.param(
        b'{"authorization":"' + TOKEN.encode() + b'","mcp_endpoint":' + deep_object() + b"}",
        id="as-the-tool-runtime-endpoint",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("body", DEEP_BODIES)
async def test_deeply_nested_body_is_refused(body: bytes) -> None:
    """``json.loads`` gives up on it where another parser (or ``json.loads`` with a higher
    recursion limit) might not: a body no parser can be trusted to read alike is refused,
    never passed through with its credentials unread."""
    with pytest.raises(RecursionError):
        json.loads(body)
    outcome = await drive(body)
    assert_refused(outcome, 400, INVALID_BODY, "body")


@pytest.mark.anyio
async def test_a_deeply_nested_array_passes_through_unread() -> None:
    """A body that is no JSON object carries no credential for any parser."""
    body = deep_array()
    outcome = await drive(body)
    assert_passed_through(outcome, body, frozenset())


@pytest.mark.anyio
async def test_nesting_the_application_can_read_beside_a_credential_is_read() -> None:
    body = b'{"input":' + deep_array(200) + b',"tools":' + jbody([tool()]) + b"}"
    outcome = await drive(body)
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b'{"mcp_headers":' + deep_array() + b"}", id="as-mcp_headers"),
        pytest.param(
            b'{"mcp_headers":{"' + URL.encode() + b'":' + deep_object() + b"}}",
            id="as-one-servers-headers",
        ),
        pytest.param(
            b'{"other_provider":'
            + deep_array()
            + b',"mcp_headers":{"'
            + URL.encode()
            + b'":{"Authorization":"Bearer '
            + TOKEN.encode()
            + b'"}}}',
            id="in-another-providers-key",
        ),
        pytest.param(deep_object(), id="as-the-whole-header"),
    ],
)
async def test_deeply_nested_provider_data_is_refused(value: bytes) -> None:
    """The header is not JSON anyone can read: refused as invalid provider data."""
    outcome = await drive(jbody({"model": "m"}), headers=[(PD.encode(), value)])
    assert_refused(outcome, 400, INVALID_PROVIDER_DATA, PD)


# --- size limits ---------------------------------------------------------------------------


def sized_body(size: int) -> bytes:
    """A valid JSON body of exactly ``size`` bytes that carries one credential."""
    head = jbody({"tools": [tool()], "padding": ""})[:-2]  # ... "padding": "
    tail = b'"}'
    pad = size - len(head) - len(tail)
    assert pad >= 0
    body = head + b"x" * pad + tail
    assert len(body) == size
    return body


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)] or [b""]


SIZE_CASES = [
    # (body size, chunk size, Content-Length, expected: "read" or status)
    pytest.param(LIMIT, LIMIT, AUTO, "read", id="exactly-the-limit-declared"),
    pytest.param(LIMIT, 1, None, "read", id="exactly-the-limit-in-1-byte-chunks-undeclared"),
    pytest.param(LIMIT, 1000, None, "read", id="exactly-the-limit-chunked-undeclared"),
    pytest.param(LIMIT + 1, LIMIT + 1, AUTO, 413, id="one-over-declared"),
    pytest.param(LIMIT + 1, LIMIT + 1, None, 413, id="one-over-in-one-message-undeclared"),
    pytest.param(LIMIT + 1, LIMIT + 1, b"10", 413, id="one-over-in-one-message-declared-as-10"),
    pytest.param(LIMIT + 1, 1, None, 413, id="one-over-in-1-byte-chunks-undeclared"),
    pytest.param(LIMIT + 1, 1000, None, 413, id="one-over-chunked-undeclared"),
    pytest.param(LIMIT + 1, 1000, b"10", 413, id="one-over-declared-as-10-bytes"),
    pytest.param(LIMIT + 1, 1000, b"0", 413, id="one-over-declared-as-empty"),
    pytest.param(LIMIT, 1000, b"10", "read", id="at-the-limit-declared-as-10-bytes"),
    pytest.param(LIMIT, 1000, b"0", "read", id="at-the-limit-declared-as-empty"),
    pytest.param(LIMIT, 1000, str(LIMIT + 1).encode(), 413, id="at-the-limit-declared-one-over"),
    pytest.param(200, 200, str(LIMIT).encode(), "read", id="small-declared-as-the-limit"),
    pytest.param(200, 200, b"9" * 18, 413, id="small-declared-as-10e18-bytes"),
    pytest.param(LIMIT, 1000, b" 10 ", "read", id="at-the-limit-declared-padded"),
    pytest.param(LIMIT, 1000, b"0010", "read", id="at-the-limit-declared-with-leading-zeros"),
    # A Content-Length that is not one plain decimal is refused, whatever arrives.
    pytest.param(200, 200, b"9" * 19, 400, id="declared-as-19-digits"),
    pytest.param(200, 200, b"9" * 5000, 400, id="declared-as-5000-digits"),
    pytest.param(LIMIT + 1, 1000, b"abc", 400, id="one-over-declared-as-garbage"),
    pytest.param(LIMIT, 1000, b"abc", 400, id="at-the-limit-declared-as-garbage"),
    pytest.param(LIMIT, 1000, b"-1", 400, id="declared-negative"),
    pytest.param(LIMIT, 1000, b"+10", 400, id="declared-with-a-sign"),
    pytest.param(LIMIT, 1000, b"0x10", 400, id="declared-in-hex"),
    pytest.param(LIMIT, 1000, b"1e2", 400, id="declared-with-exponent"),
    pytest.param(LIMIT, 1000, b"1 0", 400, id="declared-with-inner-space"),
    pytest.param(LIMIT, 1000, b"", 400, id="declared-empty-value"),
    pytest.param(LIMIT, 1000, "\u0661\u0660".encode(), 400, id="declared-in-arabic-digits"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("size", "chunk", "content_length", "expected"), SIZE_CASES)
async def test_body_size_is_judged_by_the_bytes_that_arrive(
    size: int, chunk: int, content_length: bytes | None, expected: str | int
) -> None:
    """A lying Content-Length never lets more than ``max_body_bytes`` through, nor stops a
    body within the limit from reaching the app whole; a garbled one is refused."""
    body = sized_body(size)
    config = MCPAuthConfig(max_body_bytes=LIMIT)
    outcome = await drive(chunked(body, chunk), config=config, content_length=content_length)
    if expected == "read":
        assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))
    elif expected == 400:
        assert_refused(outcome, 400, INVALID_CONTENT_LENGTH, "Content-Length")
        assert outcome.receives == 0
    else:
        assert_refused(outcome, 413, BODY_TOO_LARGE, "body")


@pytest.mark.anyio
async def test_a_declared_oversize_body_is_refused_after_its_first_message() -> None:
    """The first message shows it is a JSON object; the declared length then refuses it
    without reading the rest."""
    outcome = await drive(
        chunked(sized_body(LIMIT * 4), 1000),
        config=MCPAuthConfig(max_body_bytes=LIMIT),
        content_length=str(LIMIT * 4).encode(),
    )
    assert_refused(outcome, 413, BODY_TOO_LARGE)
    assert outcome.receives == 1


@pytest.mark.anyio
async def test_a_declared_oversize_body_no_source_reads_passes_through_unread() -> None:
    """With the body source off (and no per-server headers), nothing reads the body: its
    size is the application's business."""
    body = sized_body(200)
    config = MCPAuthConfig(max_body_bytes=LIMIT, body=False)
    outcome = await drive(body, config=config, content_length=b"9" * 18)
    assert_passed_through(outcome, body, frozenset())
    assert outcome.receives == 1  # the application's own


@pytest.mark.anyio
@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([b"10", str(LIMIT + 1).encode()], id="small-then-oversize"),
        pytest.param([str(LIMIT + 1).encode(), b"10"], id="oversize-then-small"),
    ],
)
async def test_two_different_content_lengths_are_refused(lengths: list[bytes]) -> None:
    body = sized_body(LIMIT + 1)
    outcome = await drive(
        chunked(body, 1000),
        config=MCPAuthConfig(max_body_bytes=LIMIT),
        content_length=None,
        headers=[(b"content-length", value) for value in lengths],
    )
    assert_refused(outcome, 400, INVALID_CONTENT_LENGTH, "Content-Length")


@pytest.mark.anyio
async def test_two_equal_content_lengths_are_one() -> None:
    body = sized_body(200)
    outcome = await drive(body, content_length=None, headers=[(b"content-length", b"200")] * 2)
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("size", "chunk", "content_length", "expected"),
    [
        pytest.param(DEFAULT_LIMIT, DEFAULT_LIMIT, AUTO, "read", id="16MiB-declared"),
        pytest.param(DEFAULT_LIMIT, 65536, None, "read", id="16MiB-chunked-undeclared"),
        pytest.param(DEFAULT_LIMIT + 1, DEFAULT_LIMIT + 1, AUTO, 413, id="16MiB+1-declared"),
        pytest.param(DEFAULT_LIMIT + 1, 65536, None, 413, id="16MiB+1-chunked-undeclared"),
    ],
)
async def test_default_limit_is_16_mib_exactly(
    size: int, chunk: int, content_length: bytes | None, expected: str | int
) -> None:
    body = sized_body(size)
    outcome = await drive(chunked(body, chunk), content_length=content_length)
    if expected == "read":
        assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))
    else:
        assert_refused(outcome, 413, BODY_TOO_LARGE, "body")


@pytest.mark.anyio
async def test_long_server_urls_are_not_kept_after_their_requests() -> None:
    """Memory held after requests complete does not grow with the URLs callers sent.

    64 requests, each with its own 256 KiB server URL (well within the body limit), leave
    nothing behind: server URLs over 2 KiB are refused, and the cache of parsed URLs, keyed
    by the caller's URL, is bounded.
    """
    app = ASGIProbe()
    mw = MCPAuthMiddleware(app, config=MCPAuthConfig(audit=False))
    await drive(jbody({"tools": [tool()]}), middleware=mw, app=app)  # warm up
    app.calls.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(64):
            url = f"https://mcp.example.com/{i}/" + "a" * (256 * 1024)
            await drive(jbody({"tools": [tool(url)]}), middleware=mw, app=app)
            app.calls.clear()
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 4 * 1024 * 1024, f"{retained / 2**20:.1f} MiB retained"


# --- invalid UTF-8 -------------------------------------------------------------------------


def with_bytes(template: str, raw: bytes) -> bytes:
    """``template`` with ``@@`` replaced by raw bytes (no JSON escaping, no UTF-8 check)."""
    before, after = template.split("@@")
    return before.encode() + raw + after.encode()


_T = f'{{"type":"mcp","server_url":"{URL}","server_label":"s","authorization":"{TOKEN}"}}'
INVALID_UTF8 = [
    pytest.param(
        f'{{"tools":[{{"type":"mcp","server_url":"{URL}","server_label":"s",'
        f'"authorization":"{TOKEN}@@"}}]}}',
        b"\xff",
        id="in-the-tool-token",
    ),
    pytest.param(
        f'{{"tools":[{{"type":"mcp","server_url":"{URL}@@","server_label":"s",'
        f'"authorization":"{TOKEN}"}}]}}',
        b"\xc3",
        id="in-server_url",
    ),
    pytest.param(
        f'{{"tools":[{{"type":"mcp","server_url":"{URL}","server_label":"s@@",'
        f'"authorization":"{TOKEN}"}}]}}',
        b"\x80",
        id="in-server_label",
    ),
    pytest.param(
        f'{{"tools":[{{"type":"mcp","server_url":"{URL}","server_label":"s",'
        f'"authorization":"{TOKEN}","headers":{{"X-@@":"v"}}}}]}}',
        b"\xfe",
        id="in-a-tool-header-name",
    ),
    pytest.param(
        f'{{"tools":[{{"type":"mcp@@","server_url":"{URL}","authorization":"{TOKEN}"}}]}}',
        b"\xed\xa0",
        id="in-the-tool-type",
    ),
    pytest.param(
        f'{{"authorization":"{TOKEN}@@"}}',
        b"\xf0\x9f",
        id="truncated-sequence-in-the-top-level-token",
    ),
    pytest.param(
        f'{{"authorization":"{TOKEN}","mcp_endpoint":{{"uri":"{URL}@@"}}}}',
        b"\xc0\xaf",
        id="overlong-slash-in-mcp_endpoint-uri",
    ),
    pytest.param(f'{{"tools":[{_T},"@@"]}}', b"\xf8\x88\x80\x80\x80", id="five-byte-in-tools"),
    pytest.param(f'@@{{"tools":[{_T}]}}', b"\xff\xff", id="before-the-document"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("template", "raw"), INVALID_UTF8)
async def test_invalid_utf8_anywhere_passes_through_with_no_credentials(
    template: str, raw: bytes
) -> None:
    """``json.loads`` (the application's parser) refuses the body, so it is not ours to judge:
    the exact bytes pass through, no credential is scoped, nothing crashes.

    Inside a string msgspec decodes (``tools``, ``authorization``, ``mcp_endpoint``), msgspec
    raises ``UnicodeDecodeError``, not its own error; inside a field it skips, it does not
    check UTF-8 at all.
    """
    body = with_bytes(template, raw)
    with pytest.raises(ValueError, match=r"codec can't decode|Invalid|Expecting"):
        json.loads(body)
    outcome = await drive(body)
    assert_passed_through(outcome, body, frozenset())


# Where msgspec skips a field without checking its UTF-8, it reads the credentials beside it,
# and so would a msgspec-based application (Litestar); json.loads refuses the whole body.
INVALID_UTF8_ELSEWHERE = [
    pytest.param(f'{{"input":"@@","tools":[{_T}]}}', b"\xff", id="in-an-unrelated-value"),
    pytest.param(f'{{"in@@put":"x","tools":[{_T}]}}', b"\x80", id="in-an-unrelated-key"),
    pytest.param(f'{{"tools":[{_T}],"input":"@@"}}', b"\xc3(", id="invalid-continuation-after"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("template", "raw"), INVALID_UTF8_ELSEWHERE)
async def test_invalid_utf8_beside_a_credential_is_refused(template: str, raw: bytes) -> None:
    """The two kinds of parser disagree about this body: refused, never passed through."""
    body = with_bytes(template, raw)
    with pytest.raises(ValueError, match="codec can't decode"):
        json.loads(body)
    outcome = await drive(body)
    assert_refused(outcome, 400, INVALID_BODY, "body")


@pytest.mark.anyio
async def test_invalid_utf8_in_a_body_that_names_no_credential_passes_through() -> None:
    body = with_bytes('{"input":"@@","tools":[{"type":"function"}]}', b"\xff")
    outcome = await drive(body)
    assert_passed_through(outcome, body, frozenset())


@pytest.mark.anyio
async def test_utf8_encoded_surrogates_are_read_as_json_loads_reads_them() -> None:
    """``json.loads`` decodes bytes with ``surrogatepass``: an encoded surrogate in another
    field is valid for the application, so the credential beside it is read."""
    body = with_bytes(f'{{"input":"@@","tools":[{_T}]}}', b"\xed\xa0\x80")
    assert json.loads(body)["input"] == "\ud800"
    outcome = await drive(body)
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "code", "param"),
    [
        pytest.param(
            [
                (
                    PD.encode(),
                    with_bytes(
                        f'{{"mcp_headers":{{"{URL}":{{"Authorization":"Bearer {TOKEN}@@"}}}}}}',
                        b"\xff",
                    ),
                )
            ],
            INVALID_AUTHORIZATION,
            PD,
            id="provider-data-token",
        ),
        pytest.param(
            [
                (
                    PD.encode(),
                    with_bytes(
                        f'{{"mcp_headers":{{"{URL}@@":{{"Authorization":"Bearer {TOKEN}"}}}}}}',
                        b"\xc3",
                    ),
                )
            ],
            INVALID_PROVIDER_DATA,
            PD,
            id="provider-data-url",
        ),
        pytest.param(
            [
                (
                    PD.encode(),
                    with_bytes(
                        f'{{"mcp_headers":{{"{URL}":{{"Authorization":'
                        f'"Bearer {TOKEN}","X-Api-Key":"k@@"}}}}}}',
                        b"\x85",
                    ),
                )
            ],
            INVALID_PROVIDER_DATA,
            PD,
            id="provider-data-extra-header-value",
        ),
        pytest.param(
            [(b"x-mcp-s-authorization", b"Bearer " + TOKEN.encode() + b"\xff")],
            INVALID_AUTHORIZATION,
            "X-MCP-s-Authorization",
            id="server-header-token",
        ),
    ],
)
async def test_invalid_utf8_in_a_credential_header_is_refused(
    headers: list[tuple[bytes, bytes]], code: str, param: str
) -> None:
    config = MCPAuthConfig(server_headers=True)
    outcome = await drive(jbody({"tools": [tool(token=None)]}), headers=headers, config=config)
    assert_refused(outcome, 400, code, param)


@pytest.mark.anyio
async def test_invalid_utf8_in_another_providers_data_is_left_alone() -> None:
    value = with_bytes(
        f'{{"other":"@@","mcp_headers":{{"{URL}":{{"Authorization":"Bearer {TOKEN}"}}}}}}',
        b"\xff\xfe",
    )
    body = jbody({"model": "m"})
    outcome = await drive(body, headers=[(PD.encode(), value), (b"x-request-id", b"\xff\x00")])
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, source="provider_data")}))


# --- as many tools as the limits allow ----------------------------------------------------

MANY: Final = 128  # max_tools' default


def many_tools(count: int = MANY) -> list[dict[str, Any]]:
    return [
        tool(f"https://mcp{i}.example.com/mcp", f"token-{i:05d}", f"s{i}") for i in range(count)
    ]


@pytest.mark.anyio
async def test_as_many_mcp_tools_as_max_tools_are_all_scoped() -> None:
    tools = [*many_tools(), *[{"type": "function", "name": f"f{i}"} for i in range(3000)]]
    body = jbody({"model": "m", "tools": tools})
    outcome = await drive(body)
    expected = frozenset(
        cred(t["server_url"], t["authorization"], label=t["server_label"])
        for t in tools
        if t["type"] == "mcp"
    )
    assert len(expected) == MANY
    assert_passed_through(outcome, body, expected)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "tools",
    [
        pytest.param(many_tools(MANY + 1), id="one-mcp-tool-too-many"),
        pytest.param(
            [{"type": "function", "name": "f"}] * (MAX_TOOL_ITEMS + 1), id="one-item-too-many"
        ),
    ],
)
async def test_more_tools_than_the_limits_are_refused(tools: list[dict[str, Any]]) -> None:
    outcome = await drive(jbody({"model": "m", "tools": tools}))
    assert_refused(outcome, 400, TOO_MANY_TOOLS, "tools")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("last", "code", "param"),
    [
        pytest.param(
            tool("https://mcp127.example.com/mcp", "bad token", "s127"),
            INVALID_AUTHORIZATION,
            "tools[127].authorization",
            id="bad-token",
        ),
        pytest.param(
            tool("https://MCP0.example.com:443/mcp/", "another-token", "s127"),
            CONFLICTING_CREDENTIALS,
            "tools[127].server_url",
            id="conflicts-with-tools[0]",
        ),
        pytest.param(
            tool("mcp127.example.com/mcp", "token-00127", "s127"),
            INVALID_SERVER_URL,
            "tools[127].server_url",
            id="relative-server-url",
        ),
        pytest.param(
            tool(
                "https://mcp127.example.com/mcp",
                "token-00127",
                "s127",
                headers={"AUTHORIZATION": "x"},
            ),
            AUTHORIZATION_IN_HEADERS,
            "tools[127].headers",
            id="authorization-in-headers",
        ),
    ],
)
async def test_one_bad_tool_after_127_good_ones_refuses_the_request_naming_it(
    last: dict[str, Any], code: str, param: str
) -> None:
    tools = many_tools()
    tools[-1] = last
    outcome = await drive(jbody({"model": "m", "tools": tools}))
    assert_refused(outcome, 400, code, param)


# --- 64 KiB header values ------------------------------------------------------------------

K64: Final = 64 * 1024


@pytest.mark.anyio
async def test_64_kib_of_other_providers_data_is_left_alone() -> None:
    document = {"other_provider": {"api_key": "k" * K64}, **pd_bearer(URL, TOKEN)}
    body = jbody({"model": "m"})
    outcome = await drive(body, headers=[pd_header(document)])
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, source="provider_data")}))


@pytest.mark.anyio
async def test_64_kib_of_mcp_headers_entries_are_all_read() -> None:
    entries = {
        f"https://mcp{i}.example.com/mcp": {"Authorization": f"Bearer token-{i:04d}"}
        for i in range(1500)
    }
    header = pd_header({"mcp_headers": entries})
    assert len(header[1]) > K64
    body = jbody({"model": "m"})
    outcome = await drive(body, headers=[header])
    expected = frozenset(
        cred(url, v["Authorization"].removeprefix("Bearer "), source="provider_data")
        for url, v in entries.items()
    )
    assert_passed_through(outcome, body, expected)


@pytest.mark.anyio
async def test_a_64_kib_extra_header_value_is_carried_as_given() -> None:
    document = pd_bearer(URL, TOKEN, **{"X-Api-Key": "k" * K64})
    body = jbody({"model": "m"})
    outcome = await drive(body, headers=[pd_header(document)])
    expected = cred(URL, TOKEN, source="provider_data", headers=["X-Api-Key"])
    assert_passed_through(outcome, body, frozenset({expected}))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "param"),
    [
        pytest.param([pd_header(pd_bearer(URL, "t" * K64))], PD, id="provider-data"),
        pytest.param(
            [(b"x-mcp-s-authorization", b"Bearer " + b"t" * K64)],
            "X-MCP-s-Authorization",
            id="server-header",
        ),
    ],
)
async def test_a_64_kib_token_in_a_header_is_refused(
    headers: list[tuple[bytes, bytes]], param: str
) -> None:
    config = MCPAuthConfig(server_headers=True)
    outcome = await drive(jbody({"tools": [tool(token=None)]}), headers=headers, config=config)
    assert_refused(outcome, 400, INVALID_AUTHORIZATION, param)


@pytest.mark.anyio
async def test_a_64_kib_request_id_is_cut_in_the_audit_log(
    audit_log: list[dict[str, Any]],
) -> None:
    body = jbody({"tools": [tool()]})
    outcome = await drive(body, headers=[(b"x-request-id", b"r" * K64)])
    assert_passed_through(outcome, body, frozenset({cred(URL, TOKEN, label="s")}))
    assert [len(event["request_id"]) for event in audit_log] == [128]


# --- CR, LF, NUL, DEL, U+2028, U+0085 in every string position ---------------------------

CONTROLS = {"CR": "\r", "LF": "\n", "NUL": "\x00", "DEL": "\x7f", "LS": "\u2028", "NEL": "\x85"}


@dataclass(frozen=True)
class Case:
    """One hostile request and what must come of it.

    ``expect`` is ``("refused", code, param)``, or ``("read", creds)``: the app is called
    with the exact bytes and exactly ``creds`` in scope.
    """

    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    expect: tuple[Any, ...] = ()


def _control_cases() -> list[Any]:
    cases: list[Any] = []
    for name, char in CONTROLS.items():
        enc = char.encode()  # UTF-8 bytes, for raw header bytes
        raw_json_ok = ord(char) >= 0x20  # JSON allows DEL, U+2028, U+0085 unescaped

        def add(position: str, case: Case, name: str = name) -> None:
            cases.append(pytest.param(case, id=f"{position}-{name}"))

        add(
            "tool-authorization",
            Case(
                jbody({"tools": [tool(token=f"tok{char}en")]}),
                expect=("refused", INVALID_AUTHORIZATION, "tools[0].authorization"),
            ),
        )
        add(
            "tool-authorization-trailing",
            Case(
                jbody({"tools": [tool(token=TOKEN + char)]}),
                expect=("refused", INVALID_AUTHORIZATION, "tools[0].authorization"),
            ),
        )
        raw_body = with_bytes(
            f'{{"tools":[{{"type":"mcp","server_url":"{URL}","server_label"'
            f':"s","authorization":"{TOKEN}@@"}}]}}',
            enc,
        )
        add(
            "tool-authorization-unescaped",
            Case(
                raw_body,
                expect=(
                    ("refused", INVALID_AUTHORIZATION, "tools[0].authorization")
                    if raw_json_ok
                    else ("read", frozenset())  # not JSON: the app cannot read it either
                ),
            ),
        )
        add(
            "top-level-authorization",
            Case(
                jbody({"authorization": f"{char}{TOKEN}"}),
                expect=("refused", INVALID_AUTHORIZATION, "authorization"),
            ),
        )
        add(
            "server_url",
            Case(
                jbody({"tools": [tool(url=f"https://mcp.example.com/m{char}cp")]}),
                expect=("refused", INVALID_SERVER_URL, "tools[0].server_url"),
            ),
        )
        add(
            "server_url-host",
            Case(
                jbody({"tools": [tool(url=f"https://mcp.example.com{char}.evil/mcp")]}),
                expect=("refused", INVALID_SERVER_URL, "tools[0].server_url"),
            ),
        )
        add(
            "mcp_endpoint-uri",
            Case(
                jbody({"authorization": TOKEN, "mcp_endpoint": {"uri": URL + char}}),
                expect=("refused", INVALID_SERVER_URL, "mcp_endpoint.uri"),
            ),
        )
        # A label is a name, never sent anywhere as a header: carried as given.
        label = f"s{char}x"
        add(
            "server_label",
            Case(
                jbody({"tools": [tool(label=label)]}),
                expect=("read", frozenset({cred(URL, TOKEN, label=label)})),
            ),
        )
        add(
            "provider-data-url",
            Case(
                jbody({"model": "m"}),
                (pd_header(pd_bearer(URL + char, TOKEN)),),
                ("refused", INVALID_PROVIDER_DATA, PD),
            ),
        )
        add(
            "provider-data-authorization",
            Case(
                jbody({"model": "m"}),
                (pd_header(pd_bearer(URL, TOKEN + char)),),
                ("refused", INVALID_AUTHORIZATION, PD),
            ),
        )
        add(
            "provider-data-header-name",
            Case(
                jbody({"model": "m"}),
                (pd_header(pd_bearer(URL, TOKEN, **{f"X-Api{char}Key": "k"})),),
                ("refused", INVALID_PROVIDER_DATA, PD),
            ),
        )
        add(
            "provider-data-header-value",
            Case(
                jbody({"model": "m"}),
                (pd_header(pd_bearer(URL, TOKEN, **{"X-Api-Key": f"k{char}Injected: 1"})),),
                ("refused", INVALID_PROVIDER_DATA, PD),
            ),
        )
        add(
            "provider-data-raw-bytes",
            Case(
                jbody({"model": "m"}),
                (
                    (
                        PD.encode(),
                        with_bytes(
                            f'{{"mcp_headers":{{"{URL}":{{"Authorization":"Bearer {TOKEN}",'
                            f'"X-Api-Key":"k@@"}}}}}}',
                            enc,
                        ),
                    ),
                ),
                ("refused", INVALID_PROVIDER_DATA, PD),
            ),
        )
        add(
            "server-header-value",
            Case(
                jbody({"tools": [tool(token=None)]}),
                ((b"x-mcp-s-authorization", f"Bearer {TOKEN}".encode() + enc),),
                ("refused", INVALID_AUTHORIZATION, "X-MCP-s-Authorization"),
            ),
        )
        # A mangled label names no tool: at most a credential bound to no server.
        mangled = ("s" + enc.decode("latin-1")).lower()  # header names are lower-cased
        add(
            "server-header-label",
            Case(
                jbody({"tools": [tool(token=None)]}),
                ((b"x-mcp-s" + enc + b"-authorization", f"Bearer {TOKEN}".encode()),),
                (
                    "read",
                    frozenset({cred(None, TOKEN, label=mangled, source="server_header")}),
                ),
            ),
        )
    return cases


async def check(case: Case, config: MCPAuthConfig | None = None) -> None:
    outcome = await drive(case.body, headers=case.headers, config=config)
    if case.expect[0] == "refused":
        assert_refused(outcome, 400, case.expect[1], case.expect[2])
    else:
        assert_passed_through(outcome, case.body, case.expect[1])


@pytest.mark.anyio
@pytest.mark.parametrize("case", _control_cases())
async def test_control_and_separator_characters_in_every_string_position(case: Case) -> None:
    await check(case, MCPAuthConfig(server_headers=True))


# --- look-alike header names ---------------------------------------------------------------

FULL_WIDTH_AUTHORIZATION: Final = "".join(chr(ord(c) + 0xFEE0) for c in "AUTHORIZATION")
LOOK_ALIKES = [
    # (name, is it Authorization under case mapping or NFKC?)
    pytest.param("\uff21uthorization", True, id="full-width-A"),
    pytest.param(FULL_WIDTH_AUTHORIZATION, True, id="all-full-width"),
    pytest.param("author\u0131zation", True, id="dotless-i"),  # U+0131.upper() == "I"
    pytest.param("AUTHOR\u0131ZATION", True, id="dotless-i-upper"),
    pytest.param("\u0410uthorization", False, id="cyrillic-A"),
    pytest.param("Authoriz\u0430tion", False, id="cyrillic-a"),
    pytest.param("Author\u200dization", False, id="zero-width-joiner"),
    pytest.param("Authorization\u200b", False, id="zero-width-space"),
    pytest.param("AUTHOR\u0130ZATION", False, id="dotted-capital-I"),  # lower(): 2 chars
]


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "is_authorization"), LOOK_ALIKES)
async def test_look_alike_authorization_in_tool_headers(name: str, is_authorization: bool) -> None:
    """A name that case mapping or NFKC turns into ``Authorization`` is refused as one; other
    look-alikes are not RFC 9110 header names, which the middleware will not carry to a
    server either (no HTTP client sends them: see the next test)."""
    body = jbody({"tools": [tool(headers={name: "Bearer smuggled"})]})
    outcome = await drive(body)
    if is_authorization:
        assert_refused(outcome, 400, AUTHORIZATION_IN_HEADERS, "tools[0].headers")
    else:
        assert_refused(outcome, 400, "invalid_headers", "tools[0].headers")


@pytest.mark.parametrize("module", ["httpx", "httpx2"])
@pytest.mark.parametrize(
    "name", [p.values[0] for p in LOOK_ALIKES if not p.values[1]], ids=lambda n: repr(n)
)
def test_no_http_client_sends_a_look_alike_name(module: str, name: str) -> None:
    """Why the passed look-alikes are harmless: httpx and httpx2 refuse non-ASCII names."""
    client = pytest.importorskip(module)
    with pytest.raises(UnicodeEncodeError):
        client.Headers({name: "x"})


@pytest.mark.anyio
@pytest.mark.parametrize(("name", "is_authorization"), LOOK_ALIKES)
async def test_look_alike_names_in_provider_data_are_refused(
    name: str, is_authorization: bool
) -> None:
    """In provider data every name must be an HTTP token: no look-alike is an Authorization
    entry and none becomes an extra header."""
    document = {"mcp_headers": {URL: {name: f"Bearer {TOKEN}"}}}
    outcome = await drive(jbody({"model": "m"}), headers=[pd_header(document)])
    assert_refused(outcome, 400, INVALID_PROVIDER_DATA, PD)
    beside = {"mcp_headers": {URL: {"Authorization": f"Bearer {TOKEN}", name: "v"}}}
    outcome = await drive(jbody({"model": "m"}), headers=[pd_header(beside)])
    assert_refused(outcome, 400, INVALID_PROVIDER_DATA, PD)


# --- Bearer in odd cases and spacing -------------------------------------------------------

# "Refusals": the body takes a bare token or ``Bearer <token>`` (prefix stripped); the headers
# take ``Bearer <token>`` only. RFC 7235: the scheme is case-insensitive, separated from the
# token by one or more SP (not HTAB); the token itself holds no whitespace.
BEARER = [
    # (value, token read from the body, token read from a header); None: refused
    pytest.param("Bearer x", "x", "x", id="canonical"),
    pytest.param("bearer x", "x", "x", id="lower-case"),
    pytest.param("BEARER x", "x", "x", id="upper-case"),
    pytest.param("bEaReR x", "x", "x", id="mixed-case"),
    pytest.param("Bearer  x", "x", "x", id="two-spaces"),
    pytest.param("Bearer " + " " * 50 + "x", "x", "x", id="many-spaces"),
    pytest.param("Bearer x=", "x=", "x=", id="token68-padding"),
    pytest.param("Bearer\tx", None, None, id="tab"),
    pytest.param("Bearer\u00a0x", None, None, id="no-break-space"),
    pytest.param("Bearer\u2028x", None, None, id="line-separator"),
    pytest.param("Bearer\r\nx", None, None, id="crlf"),
    pytest.param("Bearerx", "Bearerx", None, id="no-separator"),
    pytest.param("Bearer", None, None, id="scheme-alone"),  # a caller's mistake
    pytest.param("bearer", None, None, id="lower-case-scheme-alone"),
    pytest.param("Bearer ", None, None, id="scheme-and-space"),
    pytest.param(" Bearer x", None, None, id="leading-space"),
    pytest.param("Bearer x ", None, None, id="trailing-space"),
    pytest.param("Bearer x y", None, None, id="two-tokens"),
    pytest.param("Bearer Bearer x", None, None, id="doubled-prefix"),
    pytest.param("Basic x", None, None, id="other-scheme"),
    pytest.param("\u0412earer x", None, None, id="cyrillic-B"),
    pytest.param("\uff22earer x", None, None, id="full-width-B"),
    pytest.param("x", "x", None, id="bare-token"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "from_body", "from_header"), BEARER)
@pytest.mark.parametrize("carrier", ["tool", "tool-runtime", "provider-data", "server-header"])
async def test_bearer_prefix_in_odd_cases_and_spacing(
    carrier: str, value: str, from_body: str | None, from_header: str | None
) -> None:
    headers: list[tuple[bytes, bytes]] = []
    made: tuple[str, str | None, str | None]  # source, label, server of the credential
    if carrier == "tool":
        body = jbody({"tools": [tool(token=value)]})
        expected, param, made = from_body, "tools[0].authorization", ("body", "s", URL)
    elif carrier == "tool-runtime":
        body = jbody({"authorization": value})
        expected, param, made = from_body, "authorization", ("body", None, None)
    elif carrier == "provider-data":
        body = jbody({"model": "m"})
        headers = [pd_header({"mcp_headers": {URL: {"Authorization": value}}})]
        expected, param, made = from_header, PD, ("provider_data", None, URL)
    else:
        body = jbody({"tools": [tool(token=None)]})
        headers = [(b"x-mcp-s-authorization", value.encode())]
        expected, param, made = from_header, "X-MCP-s-Authorization", ("server_header", "s", URL)
    outcome = await drive(body, headers=headers, config=MCPAuthConfig(server_headers=True))
    if expected is None:
        assert_refused(outcome, 400, INVALID_AUTHORIZATION, param)
    else:
        source, label, url = made
        assert_passed_through(
            outcome, body, frozenset({cred(url, expected, label=label, source=source)})
        )


# --- generated documents -------------------------------------------------------------------
#
# A document is generated as a tree whose objects are lists of key/value pairs (so duplicate
# keys happen), then rendered with random escaping (``\u0041uthorization``), whitespace and
# encodings (BOM, UTF-16/32), and sometimes corrupted byte by byte. The reference is what the
# application reads: ``json.loads`` and the fields the reference names.
#
# The generators make their choices through a ``Chooser``: hypothesis draws in the tests (so
# failures shrink), a seeded ``random.Random`` in ``tests/test_fuzz_long.py`` (fast).

Node = tuple[str, Any]  # ("obj", [(key, Node)]), ("arr", [Node]), ("str", str), ("raw", str)

NAMES = [
    "tools", "authorization", "mcp_endpoint", "uri", "type", "server_url", "server_label",
    "headers", "Authorization", "AUTHORIZATION", "\uff21uthorization", "author\u0131zation",
    "input", "mcp_headers", "X-Api-Key", "Content-Length", " Authorization", "x",
]  # fmt: skip
URLS = [
    URL, "https://MCP.Example.COM:443/mcp/", URL + "#frag", "http://mcp.example.com/mcp",
    "https://mcp.example.com:8443/mcp", "https://mcp.example.com/other", URL + "?q=1",
    "mcp.example.com/mcp", "ftp://mcp.example.com/", "https://", "https://[::1]/mcp",
    "https://h:99999/", "https://user:pw@mcp.example.com/mcp", "HTTPS://mcp.example.com",
    OTHER_URL,
]  # fmt: skip
TOKENS = [
    "tok", "tok2", "Bearer tok", "bearer  tok", "BEARER tok", "Bearer", "Bearer ", "tok en",
    "tok\n", "tök", "", "Bearer Bearer tok", "t\u2028", "x" * 8193, "Bearer\ttok", "Bearerx",
]  # fmt: skip
NUMBERS = [
    "0", "-0", "1", "-1.5e3", "1e400", "-1e-400", "12345678901234567890123",
    "1" + "0" * 4400, "NaN", "Infinity", "-Infinity", "true", "false", "null",
]  # fmt: skip
TYPES = ["mcp", "mcp", "mcp", "MCP", "function"]
LABELS = ["s", "S", "t", "s\n", ""]
HEADER_VALUES = ["v", "Bearer tok", "tok", "a\r\nb", ""]
PD_NAMES = [
    "Authorization", "authorization", "AUTHORIZATION", "X-Api-Key", "x-api-key",
    "Content-Length", "Mcp-Session-Id", "\uff21uthorization", "X-Bad Name", "",
]  # fmt: skip
PD_VALUES = ["Bearer tok", "bearer  tok2", "tok", "Bearer t\u2028", "v", "a\r\nb", "x" * 9000]
# Code points for random text: ASCII, controls, Latin-1, the BMP, separators, astral.
_ALPHABET = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0xFF), (0x100, 0xD7FF), (0x2028, 0x2029),
             (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]  # fmt: skip


class Chooser(Protocol):
    def choice(self, options: Sequence[Any]) -> Any: ...
    def randint(self, low: int, high: int) -> int: ...
    def text(self) -> str: ...


class Drawn:
    """Choices drawn by hypothesis (shrinkable)."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(options))

    def randint(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def text(self) -> str:
        return self.draw(st.text(max_size=8))


class Rolled:
    """Choices rolled by a seeded ``random.Random`` (fast, reproducible)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rnd.choice(options)

    def randint(self, low: int, high: int) -> int:
        return self.rnd.randint(low, high)

    def text(self) -> str:
        chars = []
        for _ in range(self.rnd.randint(0, 8)):
            low, high = self.rnd.choice(_ALPHABET)
            chars.append(chr(self.rnd.randint(low, high)))
        return "".join(chars)


def gen_string(c: Chooser, options: Sequence[str]) -> Node:
    return ("str", c.choice(options) if c.randint(0, 3) else c.text())


def gen_scalar(c: Chooser) -> Node:
    if c.randint(0, 2):
        return gen_string(c, ["mcp", "MCP", "function", *URLS, *TOKENS, *NAMES])
    return ("raw", c.choice(NUMBERS))


def gen_name(c: Chooser, names: Sequence[str] = NAMES) -> str:
    return str(c.choice(names)) if c.randint(0, 3) else c.text()


def gen_json(c: Chooser, depth: int = 0) -> Node:
    kind = c.randint(0, 2) if depth < 3 else 0
    if kind == 0:
        return gen_scalar(c)
    if kind == 1:
        return ("arr", [gen_json(c, depth + 1) for _ in range(c.randint(0, 3))])
    return ("obj", [(gen_name(c), gen_json(c, depth + 1)) for _ in range(c.randint(0, 4))])


def gen_value(c: Chooser, options: Sequence[str]) -> Node:
    """Mostly one of ``options``, sometimes any JSON value."""
    return gen_string(c, options) if c.randint(0, 4) else gen_json(c, 2)


def gen_map(c: Chooser, names: Sequence[str], values: Sequence[str], size: int = 3) -> Node:
    pairs = [(gen_name(c, names), gen_value(c, values)) for _ in range(c.randint(0, size))]
    return ("obj", pairs)


def gen_tool(c: Chooser) -> Node:
    pairs: list[tuple[str, Node]] = []
    for _ in range(c.randint(0, 7)):
        field_ = c.randint(0, 6)
        if field_ == 0:
            pairs.append(("type", gen_value(c, TYPES)))
        elif field_ == 1:
            pairs.append(("server_url", gen_value(c, URLS)))
        elif field_ == 2:
            pairs.append(("server_label", gen_value(c, LABELS)))
        elif field_ in (3, 4):
            pairs.append(("authorization", gen_value(c, TOKENS)))
        elif field_ == 5:
            pairs.append(("headers", gen_map(c, NAMES, HEADER_VALUES)))
        else:
            pairs.append((gen_name(c), gen_json(c, 1)))
    return ("obj", pairs)


def gen_document(c: Chooser) -> Node:
    if c.randint(0, 5) == 0:
        return gen_json(c)
    pairs: list[tuple[str, Node]] = []
    for _ in range(c.randint(0, 6)):
        field_ = c.randint(0, 4)
        if field_ in (0, 1):
            tools = ("arr", [gen_tool(c) for _ in range(c.randint(0, 4))])
            pairs.append(("tools", tools if c.randint(0, 5) else gen_json(c, 1)))
        elif field_ == 2:
            pairs.append(("authorization", gen_value(c, TOKENS)))
        elif field_ == 3:
            endpoint = gen_map(c, ["uri"], URLS, 2) if c.randint(0, 3) else gen_json(c, 1)
            pairs.append(("mcp_endpoint", endpoint))
        else:
            pairs.append((gen_name(c), gen_json(c, 1)))
    return ("obj", pairs)


def gen_provider_document(c: Chooser) -> Node:
    if c.randint(0, 5) == 0:
        return gen_json(c)
    pairs: list[tuple[str, Node]] = []
    for _ in range(c.randint(0, 4)):
        if c.randint(0, 3):
            servers = [
                (gen_name(c, URLS), gen_map(c, PD_NAMES, PD_VALUES, 4))
                for _ in range(c.randint(0, 4))
            ]
            pairs.append(("mcp_headers", ("obj", servers) if c.randint(0, 5) else gen_json(c, 1)))
        else:
            pairs.append((gen_name(c), gen_json(c, 1)))
    return ("obj", pairs)


def _escape(text: str, rnd: random.Random) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20:
            # Mostly escaped; now and then raw, which is invalid JSON.
            out.append(char if rnd.random() < 0.05 else f"\\u{code:04x}")
        elif rnd.random() < 0.1:
            if code > 0xFFFF:
                high, low = divmod(code - 0x10000, 0x400)
                out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04X}")
            else:
                out.append(f"\\u{code:04X}" if rnd.random() < 0.5 else f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_SPACE = ["", "", "", " ", "\n", "\t", "\r\n  "]


def render(node: Node, rnd: random.Random) -> str:
    kind, value = node
    ws = rnd.choice(_SPACE)
    if kind == "str":
        return ws + _escape(value, rnd)
    if kind == "raw":
        return ws + str(value)
    if kind == "arr":
        return ws + "[" + ",".join(render(item, rnd) for item in value) + ws + "]"
    pairs = [_escape(key, rnd) + ws + ":" + render(item, rnd) for key, item in value]
    return ws + "{" + ",".join(pairs) + ws + "}"


def encode(text: str, rnd: random.Random) -> bytes:
    roll = rnd.random()
    if roll < 0.85:
        return text.encode("utf-8", "surrogatepass")
    if roll < 0.9:
        return b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass")
    try:
        return text.encode(rnd.choice(["utf-16-le", "utf-16-be", "utf-32", "utf-16"]))
    except UnicodeEncodeError:  # a lone surrogate
        return text.encode("utf-8", "surrogatepass")


def corrupt(data: bytes, rnd: random.Random) -> bytes:
    """One to three byte-level mutations, biased to bytes that break UTF-8."""
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 3)):
        pos = rnd.randint(0, len(buf))
        op = rnd.random()
        byte = rnd.choice([0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xF0, 0xF8, 0xFF, 0x00, 0x22, 0x5C])
        if op < 0.5:
            buf[pos:pos] = bytes([byte])
        elif op < 0.8 and pos < len(buf):
            buf[pos] = byte
        elif op < 0.9 and pos < len(buf):
            del buf[pos]
        else:
            del buf[pos:]
    return bytes(buf)


def gen_body(c: Chooser) -> bytes:
    """A request body: mostly a document of the Responses / tool-runtime shape."""
    node = gen_document(c)
    rnd = random.Random(c.randint(0, 2**32))  # rendering choices: escapes, spaces, encoding
    data = encode(render(node, rnd), rnd)
    return corrupt(data, rnd) if c.randint(0, 4) == 0 else data


def gen_provider_data(c: Chooser) -> str:
    """A provider-data header value, as the source sees it (latin-1 decoded bytes)."""
    node = gen_provider_document(c)
    rnd = random.Random(c.randint(0, 2**32))
    data = render(node, rnd).encode("utf-8", "surrogatepass")
    if c.randint(0, 4) == 0:
        data = corrupt(data, rnd)
    return data.decode("latin-1")


Request = tuple[bytes, list[tuple[bytes, bytes]]]


def gen_request(c: Chooser) -> Request:
    """A whole request: a body, maybe a provider-data header, maybe an ``X-MCP-*`` header."""
    headers: list[tuple[bytes, bytes]] = []
    if c.randint(0, 1):
        headers.append((PD.encode(), gen_provider_data(c).encode("latin-1")))
    if c.randint(0, 1):
        label = c.choice([b"s", b"S", b"t", b"", b"s\xff"])
        value = str(c.choice(TOKENS)).encode("utf-8", "surrogatepass")
        headers.append((b"x-mcp-" + label + b"-authorization", value))
    return gen_body(c), headers


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    return gen_body(Drawn(draw))


@st.composite
def provider_data_values(draw: st.DrawFn) -> str:
    return gen_provider_data(Drawn(draw))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    return gen_request(Drawn(draw))


# --- the references ------------------------------------------------------------------------

Verdict = tuple[Any, ...]


def reference_body(raw: bytes) -> ParsedBody | None:
    """What the application reads: ``json.loads``, then the fields the reference names."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    tools = document.get("tools")
    mcp: tuple[MCPTool, ...] = ()
    if isinstance(tools, list):
        mcp = tuple(
            MCPTool(
                i, t.get("server_url"), t.get("server_label"), t.get("authorization"),
                t.get("headers"),
            )
            for i, t in enumerate(tools)
            if isinstance(t, dict) and t.get("type") == "mcp"
        )  # fmt: skip
    return ParsedBody(mcp, document.get("authorization"), document.get("mcp_endpoint"))


def parsed_verdict(raw: bytes) -> Verdict:
    """What the middleware's parser and the body source make of a body."""
    try:
        parsed = parse_body(raw)
    except CredentialRejected as exc:
        return ("refused", exc.code, exc.param)
    return body_verdict(None if parsed is None else ParsedBody.of(parsed))


def body_verdict(parsed: ParsedBody | None) -> Verdict:
    """What the body source makes of a parsed body: credentials, or a refusal."""
    if parsed is None:
        return ("not-json",)
    request = SourceRequest({"type": "http"}, "POST", "/", {}, parsed)
    try:
        found = BodySource().read(request)
    except CredentialRejected as exc:
        return ("refused", exc.code, exc.param)
    return ("read", summarize(found))


_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([\x21-\x7e]+)")
REFUSED: Final = ("refused",)
NOTHING_READ: Final[Verdict] = ("read", frozenset())


def reference_provider_data(value: str) -> Verdict:
    """The reference for the provider-data header, written from the text, not the code."""
    try:
        data = json.loads(value)
    except (ValueError, RecursionError):
        return REFUSED
    if not isinstance(data, dict):
        return REFUSED
    mcp = data.get("mcp_headers")
    if mcp is None:
        return ("read", frozenset())
    if not isinstance(mcp, dict):
        return REFUSED
    # normalised URL -> (token or None, the headers, the entry as summarised)
    found: dict[str, tuple[str | None, dict[str, str], Cred]] = {}
    for url, entries in mcp.items():
        try:
            key = normalize_server_url(url)
        except ValueError:
            return REFUSED
        if not isinstance(entries, dict):
            return REFUSED
        auth: list[str] = []
        extra: dict[str, str] = {}
        for name, entry in entries.items():
            if not isinstance(entry, str):
                return REFUSED
            # Surrounding whitespace is forgiven in the name: the value is checked anyway.
            if name.strip().lower() == "authorization":
                auth.append(entry)
            elif (
                _HTTP_TOKEN.fullmatch(name)
                and name.lower() not in RESERVED_HEADERS
                and _FIELD_VALUE.fullmatch(entry)
                and name.lower() not in {n.lower() for n in extra}  # one name, any case
            ):
                extra[name] = entry
            else:
                return REFUSED
        if len(auth) > 1:
            return REFUSED
        token: str | None = None
        if auth:
            match = _BEARER.fullmatch(auth[0])
            if match is None or len(auth[0]) > 8192:
                return REFUSED
            token = match.group(1)
        elif not extra:
            continue  # nothing to send
        # An entry without a token still sends its headers to that server (header-only).
        item = (
            key,
            None,
            "provider_data",
            "" if token is None else fingerprint(token),
            tuple(sorted(extra)),
        )
        if key in found:
            if found[key][:2] != (token, extra):  # URLs naming one server must agree
                return REFUSED
            continue
        found[key] = (token, extra, item)
    return ("read", frozenset(item for _, _, item in found.values()))


def provider_data_verdict(value: str) -> Verdict:
    source = ProviderDataSource(PD)
    request = SourceRequest({"type": "http"}, "POST", "/", {PD.lower(): [value]})
    try:
        found = source.read(request)
    except CredentialRejected as exc:
        documented = (INVALID_PROVIDER_DATA, INVALID_AUTHORIZATION, CONFLICTING_CREDENTIALS)
        if exc.code in documented and exc.param == PD:
            return REFUSED
        return ("refused with an undocumented code or param", exc.code, exc.param)
    return ("read", summarize(found))


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BROKEN_UTF8_IN_A_SKIPPED_FIELD = b'{"input":"\xff","authorization":"tok"}'
BROKEN_UTF8_IN_THE_TOKEN = b'{"authorization":"tok\xff"}'


@FUZZ
@given(bodies())
@example(BROKEN_UTF8_IN_THE_TOKEN)
def test_body_reader_never_raises(raw: bytes) -> None:
    """Not even invalid UTF-8 inside a field msgspec decodes (it raises
    ``UnicodeDecodeError``, not ``msgspec.DecodeError``): a body is read, or refused with
    a :class:`CredentialRejected` (which becomes an OpenAI-style error), nothing else."""
    parsed_verdict(raw)


@FUZZ
@given(bodies())
def test_where_the_application_can_read_the_body_the_middleware_reads_the_same(
    raw: bytes,
) -> None:
    """Same credentials, or the same refusal naming the same field."""
    reference = reference_body(raw)
    if reference is None:
        return
    assert parsed_verdict(raw) == body_verdict(reference)


@FUZZ
@given(bodies())
@example(BROKEN_UTF8_IN_A_SKIPPED_FIELD)
def test_where_the_application_cannot_read_the_body_the_middleware_reads_nothing(
    raw: bytes,
) -> None:
    """No credential from a body ``json.loads`` cannot parse: nothing is read, or the body is
    refused when another parser (msgspec, which skips fields without checking their UTF-8
    and reads integers ``json.loads`` refuses) would read credentials in it."""
    if reference_body(raw) is not None:
        return
    assert parsed_verdict(raw) in (NOTHING_READ, ("not-json",), ("refused", INVALID_BODY, "body"))


@FUZZ
@given(provider_data_values())
def test_provider_data_reader_matches_the_spec(value: str) -> None:
    assert provider_data_verdict(value) == reference_provider_data(value)


@pytest.mark.anyio
@FUZZ
@given(requests())
@example((BROKEN_UTF8_IN_THE_TOKEN, []))
async def test_middleware_answers_every_generated_request_politely(
    request_: Request,
) -> None:
    """No exception, no 5xx: the app gets the exact bytes, or a documented 4xx answers."""
    body, headers = request_
    outcome = await drive(body, headers=headers, config=MCPAuthConfig(server_headers=True))
    if outcome.status == 200:
        assert [seen.body for seen in outcome.seen] == [body]
    else:
        assert outcome.status in (400, 413)
        assert outcome.seen == []
        assert outcome.error is not None
        assert outcome.error["type"] == "invalid_request_error"
    assert len(current_credentials()) == 0
