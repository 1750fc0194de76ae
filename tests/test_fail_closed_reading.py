"""What is read: every body a framework would parse as JSON, whatever its headers say.

The attacker's question is not "does the middleware accept the documented Content-Types" but
"is there a request for which some framework hands the handler a parsed body that the
middleware did not read?". So the reference here is the frameworks themselves, run without
the middleware: Starlette (``await request.json()``), FastAPI (a ``dict`` body, a pydantic
model, and the lenient ``strict_content_type=False``), Litestar (``data: dict[str, Any]``)
and Quart (``get_json()`` and ``get_json(force=True)``). For generated Content-Type headers,
body encodings, framings and chunkings, whenever one of them parses the smuggled
``Authorization`` out of ``tools[0].headers``, the middleware in front of the same app must
answer 400 ``authorization_in_headers`` and the handler must not run.

Bodies that are not JSON objects (forms, uploads, arrays) must reach the application exactly
as sent, without being buffered.
"""

from __future__ import annotations

import gzip
import inspect
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import blacksheep
import pytest
from blacksheep.server.routing import Router
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar import post as litestar_post
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict
from quart import Quart
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.testing import serve
from tests.helpers import (
    AUTHORIZATION_IN_HEADERS,
    INVALID_PROVIDER_DATA,
    PROVIDER_DATA,
    SMUGGLED_URL,
    UNSUPPORTED_CONTENT_ENCODING,
    ASGIProbe,
    Exchange,
    Sources,
    Wire,
    carries_sentinel,
    framing,
    http_request,
    raw_http,
    run_asgi,
    smuggling_document,
    smuggling_tool,
)

PATH = "/v1/responses"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# --- the frameworks, without the middleware ---------------------------------------------------


@dataclass
class Framework:
    """One application; ``hits`` records, per handler call, whether it got the sentinel."""

    name: str
    app: ASGIApp
    hits: list[bool] = field(default_factory=list)

    def saw(self) -> bool:
        return any(self.hits)


def _json_endpoint(hits: list[bool]) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint that reads its body with ``await request.json()``."""

    async def endpoint(request: Request) -> Response:
        try:
            document = await request.json()
        except Exception:
            return PlainTextResponse("unreadable", status_code=400)
        hits.append(carries_sentinel(document))
        return PlainTextResponse("ok")

    return endpoint


def _starlette(hits: list[bool]) -> ASGIApp:
    return Starlette(routes=[Route(PATH, _json_endpoint(hits), methods=METHODS)])


class _Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    headers: dict[str, str] | None = None


class _Responses(BaseModel):
    model_config = ConfigDict(extra="allow")
    tools: list[_Tool]


# FastAPI's switch for reading a body sent without a Content-Type (newer versions only).
LENIENT = "strict_content_type" in inspect.signature(FastAPI).parameters


def _fastapi_app(*, strict: bool) -> FastAPI:
    options: dict[str, Any] = {"strict_content_type": strict} if LENIENT else {}
    return FastAPI(**options)


def _fastapi_dict(hits: list[bool], *, strict: bool) -> ASGIApp:
    app = _fastapi_app(strict=strict)

    @app.api_route(PATH, methods=METHODS)
    async def responses(body: dict[str, Any]) -> str:
        hits.append(carries_sentinel(body))
        return "ok"

    return app


def _fastapi_model(hits: list[bool]) -> ASGIApp:
    app = FastAPI()

    @app.api_route(PATH, methods=METHODS)
    async def responses(body: _Responses) -> str:
        hits.append(carries_sentinel(body.model_dump()))
        return "ok"

    return app


def _litestar(hits: list[bool]) -> ASGIApp:
    @litestar_post(PATH, status_code=200)
    async def responses(data: JSONBody[dict[str, Any]]) -> str:
        hits.append(carries_sentinel(data))
        return "ok"

    return cast(ASGIApp, Litestar([responses], debug=False, logging_config=None))


def _quart(hits: list[bool], *, force: bool) -> ASGIApp:
    app = Quart(__name__)

    @app.route(PATH, methods=METHODS)
    async def responses() -> str:
        try:
            document = await quart_request.get_json(force=force, silent=True)
        except Exception:  # the body is not UTF-8: Quart fails before it parses
            document = None
        hits.append(carries_sentinel(document))
        return "ok"

    return cast(ASGIApp, app)


def _blacksheep(hits: list[bool]) -> ASGIApp:
    """BlackSheep decodes the body with the charset the Content-Type declares (any codec
    Python has), then parses it."""
    app = blacksheep.Application(router=Router())  # not the module-wide default router

    async def responses(request: blacksheep.Request) -> blacksheep.Response:
        try:
            document = await request.json()
        except Exception:
            return blacksheep.text("unreadable", status=400)
        hits.append(carries_sentinel(document))
        return blacksheep.text("ok")

    app.router.add_post(PATH, responses)
    return cast(ASGIApp, app)


def _framework(name: str, build: Callable[[list[bool]], ASGIApp]) -> Framework:
    hits: list[bool] = []
    return Framework(name, build(hits), hits)


FRAMEWORKS = [
    _framework("starlette request.json()", _starlette),
    _framework("fastapi dict body", lambda hits: _fastapi_dict(hits, strict=True)),
    *(
        [_framework("fastapi dict body, lenient", lambda hits: _fastapi_dict(hits, strict=False))]
        if LENIENT
        else []
    ),
    _framework("fastapi pydantic model", _fastapi_model),
    _framework("litestar data: dict", _litestar),
    _framework("quart get_json()", lambda hits: _quart(hits, force=False)),
    _framework("quart get_json(force=True)", lambda hits: _quart(hits, force=True)),
    _framework("blacksheep request.json()", _blacksheep),
]
GUARDED = {fw.name: MCPAuthMiddleware(fw.app, config=MCPAuthConfig()) for fw in FRAMEWORKS}


def cut(body: bytes, cuts: tuple[int, ...]) -> list[bytes]:
    """``body`` cut at the (sorted) positions ``cuts``: one message per piece."""
    return [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)])]


# --- generated requests -----------------------------------------------------------------------

MEDIA_TYPES = [
    "application/json",
    "application/vnd.api+json",
    "application/ld+json",
    "application/merge-patch+json",
    "text/json",
    "text/plain",
    "text/html",
    "multipart/form-data; boundary=xyz",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "application/xml",
    "application/json-seq",
    "application/jsonl",
    "application/*",
    "*/*",
    "json",
    "",
]
ODD = list("aZ0.-_~!#$&^%'*`|+{}:;@=/ \t\"\\\x7f\xa0\u2028é")
PARAMETERS = [
    "",
    ";charset=utf-8",
    "; charset=UTF-16",
    '; a="b;c"',
    ";",
    " ; x=1",
    "; boundary=xyz",
    ", text/plain",
    ",application/json",
    " (comment)",
    "; charset=cp500",
    "; charset=utf-7",
]
# JSON's own whitespace and characters str.strip() (not bytes.strip()) takes for whitespace.
SPACES = ["", " ", "\t", "  ", "\xa0", "\x85", "\u3000", "\u2003", "\x0b", "\x0c", "\x1c", "\r"]
CASES: list[Callable[[str], str]] = [str, str.upper, str.title, str.swapcase]
ENCODINGS = [
    "utf-8",
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
    "cp500",  # EBCDIC: "{" is 0xC0
    "utf-7-escaped",  # UTF-7 with "{" written "+AHs-"
]


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


@st.composite
def content_types(draw: st.DrawFn) -> bytes:
    media = draw(
        st.one_of(
            st.sampled_from(MEDIA_TYPES),
            st.text(st.sampled_from(ODD), max_size=5).map(lambda s: f"application/{s}+json"),
        )
    )
    case = draw(st.sampled_from(CASES))
    value = (
        draw(st.sampled_from(SPACES))
        + case(media)
        + draw(st.sampled_from(PARAMETERS))
        + draw(st.sampled_from(SPACES))
    )
    return _header_bytes(value)


@dataclass(frozen=True)
class Shape:
    """How a smuggling request is sent (the body is built from it: the sentinel never
    appears in a falsifying example)."""

    content_types: tuple[bytes, ...]  # Content-Type header values, in order (none: missing)
    encoding: str
    leading: str  # JSON whitespace before the object
    ascii_only: bool  # json.dumps(ensure_ascii=...)
    header_name: str
    how: str  # framing: length, chunked, h2
    cuts: tuple[int, ...]  # where the body is cut into messages (may repeat: empty messages)

    def body(self) -> bytes:
        document = smuggling_document(input="héllo ☃ 𝄞")
        document["tools"] = [smuggling_tool(name=self.header_name)]
        # A charset that cannot hold every character gets them escaped.
        ascii_only = self.ascii_only or self.encoding.startswith("cp")
        text = self.leading + json.dumps(document, ensure_ascii=ascii_only)
        if self.encoding == "utf-7-escaped":
            return text.encode("utf-7").replace(b"{", b"+AHs-")
        return text.encode(self.encoding)

    def chunks(self) -> list[bytes]:
        body = self.body()
        return cut(body, tuple(sorted(min(c, len(body)) for c in self.cuts)))

    def request(self) -> tuple[list[bytes], list[tuple[bytes, bytes]], str]:
        headers, version = framing(self.body(), self.how)
        return self.chunks(), [(b"content-type", v) for v in self.content_types] + headers, version


shapes = st.builds(
    Shape,
    content_types=st.lists(content_types(), max_size=3).map(tuple),
    encoding=st.sampled_from(ENCODINGS),
    leading=st.text(st.sampled_from(" \t\r\n"), max_size=3),
    ascii_only=st.booleans(),
    header_name=st.sampled_from(["Authorization", "authorization", "AUTHORIZATION"]),
    how=st.sampled_from(["length", "chunked", "h2"]),
    cuts=st.lists(st.integers(0, 4000), max_size=3).map(tuple),
)

# Each example runs seven applications twice: no shrinking beyond the explicit phase.
DIFFERENTIAL = settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def parsed_by(shape: Shape) -> list[str]:
    """The frameworks that hand their handler the smuggled header, without the middleware."""
    names = []
    for fw in FRAMEWORKS:
        fw.hits.clear()
        await _answer(fw.app, shape)
        if fw.saw():
            names.append(fw.name)
    return names


async def _answer(app: ASGIApp, shape: Shape) -> Exchange:
    """The answer to ``shape``; an application that raises (FastAPI's 422 handler does on a
    body that is not UTF-8) answered 500. Exceptions are not shown: they may quote the body."""
    chunks, headers, version = shape.request()
    try:
        return await run_asgi(app, chunks, headers=headers, http_version=version)
    except Exception:
        return Exchange(500, b"")


async def assert_refused_in_front_of_every_framework(shape: Shape, parsed: list[str]) -> None:
    for fw in FRAMEWORKS:
        fw.hits.clear()
        answer = await _answer(GUARDED[fw.name], shape)
        # Read and refused; or (a charset it cannot read as sent) refused with 415.
        refused = answer.status == 415 or (answer.status, answer.code) == (
            400,
            AUTHORIZATION_IN_HEADERS,
        )
        assert refused, (
            f"in front of {fw.name}: answered {answer.status} {answer.code}; "
            f"parsed without the middleware by: {parsed}"
        )
        assert not fw.hits, f"the handler of {fw.name} ran behind the middleware"


@pytest.mark.anyio
@DIFFERENTIAL
@given(shapes)
async def test_whatever_a_framework_parses_the_middleware_reads(shape: Shape) -> None:
    parsed = await parsed_by(shape)
    if parsed:
        await assert_refused_in_front_of_every_framework(shape, parsed)


def _shape(content_types: tuple[bytes, ...], encoding: str = "utf-8", how: str = "length") -> Shape:
    return Shape(content_types, encoding, "", True, "Authorization", how, ())


NAMED_SHAPES = [
    pytest.param(_shape(()), id="no-content-type"),
    pytest.param(_shape((b"",)), id="empty-content-type"),
    pytest.param(_shape((b"text/plain",)), id="text-plain"),
    pytest.param(_shape((b"multipart/form-data; boundary=xyz",)), id="multipart"),
    pytest.param(_shape((b"application/x-www-form-urlencoded",)), id="form"),
    pytest.param(_shape((b"application/octet-stream",)), id="octet-stream"),
    pytest.param(_shape((b"text/plain", b"application/json")), id="text-then-json"),
    pytest.param(_shape((b"application/json", b"text/plain")), id="json-then-text"),
    pytest.param(_shape((b"\xa0application/json",)), id="nbsp-before-json"),
    pytest.param(_shape((b"application/json\xa0",)), id="nbsp-after-json"),
    pytest.param(_shape((b"\x0capplication/json",)), id="form-feed-before-json"),
    pytest.param(_shape((b"application/json\x85",)), id="nel-after-json"),
    pytest.param(_shape((b"application/a{b}+json",)), id="braces-in-subtype"),
    pytest.param(_shape((b"application/ +json",)), id="space-subtype"),
    pytest.param(_shape((b"APPLICATION/X-Y+JSON; CHARSET=UTF-8",)), id="upper-case-plus-json"),
    pytest.param(_shape((b"application/json, text/plain",)), id="comma-list"),
    pytest.param(_shape((b"text/plain",), "utf-16"), id="utf16-as-text"),
    pytest.param(_shape((b"application/json",), "utf-32-be"), id="utf32be-no-bom"),
    pytest.param(_shape((b"application/json",), "utf-8-sig"), id="utf8-bom"),
    pytest.param(_shape((b"text/plain",), how="chunked"), id="chunked-text"),
    pytest.param(_shape((), how="h2"), id="http2-no-framing-headers"),
    pytest.param(_shape((b"application/json; charset=cp500",), "cp500"), id="ebcdic-declared"),
    pytest.param(_shape((b"application/json; charset=cp037",), "cp037"), id="ebcdic-037-declared"),
    pytest.param(_shape((b"application/json;charset=UTF-7",), "utf-7-escaped"), id="utf7-declared"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("shape", NAMED_SHAPES)
async def test_named_smuggling_requests_are_refused_where_a_framework_parses_them(
    shape: Shape,
) -> None:
    parsed = await parsed_by(shape)
    assert parsed, "no framework parses this request: the case tests nothing"
    await assert_refused_in_front_of_every_framework(shape, parsed)


# --- what is not a JSON object passes through as sent, unbuffered -------------------------------

SKIPPED = b" \t\r\n\x00\xef\xbb\xbf\xfe\xff"
NOT_AN_OBJECT = [
    pytest.param(b"tools=%5B%7B%22type%22%3A%22mcp%22%7D%5D&model=m", id="form"),
    pytest.param(
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.json"\r\n'
        b"Content-Type: application/json\r\n\r\n"
        + json.dumps(smuggling_document()).encode()
        + b"\r\n--xyz--\r\n",
        id="multipart-upload-of-a-json-file",
    ),
    pytest.param(b"[" + json.dumps(smuggling_document()).encode() + b"]", id="json-array"),
    pytest.param(b'"{}"', id="json-string"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), id="binary"),
]


@st.composite
def not_objects(draw: st.DrawFn) -> tuple[bytes, tuple[int, ...]]:
    """A body whose first byte past the skipped ones is not ``{``, and where to cut it."""
    prefix = draw(st.binary(max_size=6).map(lambda b: bytes(c for c in b if c in SKIPPED)))
    first = draw(st.integers(0, 255).filter(lambda c: c not in SKIPPED and c != ord("{")))
    rest = draw(st.binary(max_size=200))
    body = prefix + bytes([first]) + rest
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=4).map(lambda c: tuple(sorted(c))))
    return body, cuts


CONTENT_TYPES_OF_UPLOADS = [
    b"application/json",
    b"multipart/form-data; boundary=xyz",
    b"application/octet-stream",
    b"text/plain",
]


@pytest.mark.anyio
@settings(max_examples=80, deadline=None)
@given(not_objects(), st.sampled_from(CONTENT_TYPES_OF_UPLOADS), st.sampled_from(["length", "h2"]))
async def test_a_body_that_is_not_an_object_reaches_the_app_exactly_as_sent(
    sent: tuple[bytes, tuple[int, ...]], content_type: bytes, how: str
) -> None:
    body, cuts = sent
    wire = Wire(cut(body, cuts))
    probe = ASGIProbe(wire)
    headers, version = framing(body, how)
    answer = await run_asgi(
        MCPAuthMiddleware(probe),
        wire,
        headers=[(b"content-type", content_type), *headers],
        http_version=version,
    )
    assert answer.status == 200, answer.code
    (call,) = probe.calls
    assert call.messages == wire.body_messages()
    assert call.fingerprints == []
    # Not buffered: the middleware took messages up to the first that decides, no further.
    deciding = next(i for i, (chunk, _) in enumerate(wire.body_messages()) if chunk.strip(SKIPPED))
    assert call.taken_before <= deciding + 1


@pytest.mark.anyio
@pytest.mark.parametrize("body", NOT_AN_OBJECT)
@pytest.mark.parametrize("content_type", CONTENT_TYPES_OF_UPLOADS)
async def test_an_upload_bigger_than_max_body_bytes_passes_through_unbuffered(
    body: bytes, content_type: bytes
) -> None:
    """Never buffered: the application is called after the first message at most, and gets
    every message as the server sent it, however far past ``max_body_bytes``."""
    big = body + b"\n" + b"x" * 65536
    wire = Wire([big[i : i + 4096] for i in range(0, len(big), 4096)])
    probe = ASGIProbe(wire)
    app = MCPAuthMiddleware(probe, config=MCPAuthConfig(max_body_bytes=1024))
    headers = [(b"content-type", content_type), (b"content-length", str(len(big)).encode())]
    answer = await run_asgi(app, wire, headers=headers)
    assert answer.status == 200, answer.code
    (call,) = probe.calls
    assert call.taken_before <= 1
    assert call.messages == wire.body_messages()


LEADING = [
    pytest.param([b"", b"  ", b"\r\n", b"\t"], id="whitespace-in-empty-and-small-messages"),
    pytest.param([b"\xef", b"\xbb", b"\xbf"], id="utf8-bom-split-over-messages"),
    pytest.param([b" " * 70000], id="70-kib-of-spaces"),
    pytest.param([b"\n"] * 300, id="300-newline-messages"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", LEADING)
async def test_the_first_byte_is_looked_for_past_any_number_of_skipped_bytes(
    prefix: list[bytes], extra_sources: Sources
) -> None:
    body = json.dumps(smuggling_document()).encode()
    wire = Wire([*prefix, body])
    probe = ASGIProbe(wire)
    size = sum(map(len, prefix)) + len(body)
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(size).encode())]
    config = MCPAuthConfig(sources=extra_sources)
    answer = await run_asgi(MCPAuthMiddleware(probe, config=config), wire, headers=headers)
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS)
    assert probe.calls == []


@pytest.mark.anyio
async def test_skipped_bytes_past_max_body_bytes_do_not_make_an_object_pass() -> None:
    """JSON allows any amount of leading whitespace: an object behind more of it than
    ``max_body_bytes`` is still an object to every parser, so it is refused, not waved on."""
    body = b" " * 4096 + json.dumps(smuggling_document()).encode()
    wire = Wire([body[i : i + 1000] for i in range(0, len(body), 1000)])
    probe = ASGIProbe(wire)
    app = MCPAuthMiddleware(probe, config=MCPAuthConfig(max_body_bytes=1024))
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    answer = await run_asgi(app, wire, headers=headers)
    assert answer.status in (400, 413), answer.code
    assert probe.calls == []


# --- which requests come with a body ------------------------------------------------------------


def _smuggling_chunks() -> list[bytes]:
    return [json.dumps(smuggling_document()).encode()]


async def _through(
    chunks: list[bytes],
    headers: list[tuple[bytes, bytes]],
    *,
    method: str = "POST",
    http_version: str | None = "1.1",
    config: MCPAuthConfig | None = None,
) -> tuple[Exchange, ASGIProbe]:
    probe = ASGIProbe()
    app = MCPAuthMiddleware(probe, config=config or MCPAuthConfig())
    answer = await run_asgi(app, chunks, headers=headers, method=method, http_version=http_version)
    return answer, probe


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("content_type", [b"application/json", b"text/plain"])
async def test_a_body_on_any_method_is_read(method: str, content_type: bytes) -> None:
    """Starlette's ``request.json()`` and FastAPI's body parameters read a GET's body too."""
    chunks = _smuggling_chunks()
    headers = [(b"content-type", content_type), (b"content-length", str(len(chunks[0])).encode())]
    answer, probe = await _through(chunks, headers, method=method)
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS)
    assert probe.calls == []


@pytest.mark.anyio
async def test_a_get_with_a_bad_provider_data_header_is_refused() -> None:
    answer, probe = await _through(
        [b""], [(PROVIDER_DATA.lower().encode(), b"{not json")], method="GET"
    )
    assert (answer.status, answer.code) == (400, INVALID_PROVIDER_DATA)
    assert probe.calls == []


@pytest.mark.anyio
async def test_a_get_with_a_good_provider_data_header_scopes_its_credential() -> None:
    token = "get-provider-data-token"
    value = json.dumps({"mcp_headers": {SMUGGLED_URL: {"Authorization": f"Bearer {token}"}}})
    headers = [(PROVIDER_DATA.lower().encode(), value.encode())]
    answer, probe = await _through([b""], headers, method="GET")
    assert answer.status == 200, answer.code
    assert probe.calls[0].fingerprints == [fingerprint(token)]


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["2", "3"])
@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("content_type", [None, b"text/plain", b"application/json"])
async def test_a_body_over_http2_or_3_without_framing_headers_is_read(
    version: str, method: str, content_type: bytes | None
) -> None:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    answer, probe = await _through(
        _smuggling_chunks(), headers, method=method, http_version=version
    )
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS)
    assert probe.calls == []


@pytest.mark.anyio
async def test_a_scope_without_http_version_is_read_as_if_a_body_may_come() -> None:
    """Reading of the rule "the scope's http_version is not 1.0/1.1": a scope that names no
    version is not known to be 1.x, so its body is looked at (fail closed)."""
    answer, probe = await _through(
        _smuggling_chunks(), [(b"content-type", b"text/plain")], http_version=None
    )
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS)
    assert probe.calls == []


# --- Content-Encoding -----------------------------------------------------------------------------


def _json_body() -> bytes:
    return json.dumps({"model": "m", "input": "hi"}).encode()


REFUSED_ENCODINGS = [
    pytest.param([b"gzip"], id="gzip"),
    pytest.param([b"GZIP"], id="upper-case"),
    pytest.param([b" br "], id="br-with-spaces"),
    pytest.param([b"deflate"], id="deflate"),
    pytest.param([b"x-custom"], id="unknown"),
    pytest.param([b"identity, gzip"], id="identity-then-gzip"),
    pytest.param([b"identity", b"gzip"], id="two-headers"),
    pytest.param([b",, gzip ,"], id="empty-parts-around-gzip"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("encodings", REFUSED_ENCODINGS)
@pytest.mark.parametrize("content_type", [b"application/json", b"multipart/form-data; b=x"])
async def test_a_compressed_body_is_refused_with_415(
    encodings: list[bytes], content_type: bytes
) -> None:
    body = gzip.compress(json.dumps(smuggling_document()).encode())
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *((b"content-encoding", e) for e in encodings),
    ]
    answer, probe = await _through([body], headers)
    assert (answer.status, answer.code) == (415, UNSUPPORTED_CONTENT_ENCODING)
    assert answer.param == "Content-Encoding"
    assert probe.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "encodings",
    [[b"identity"], [b"IDENTITY"], [b" identity , ,"], [b"identity", b""], [b""]],
    ids=repr,
)
async def test_identity_content_encoding_is_read_as_plain(encodings: list[bytes]) -> None:
    body = json.dumps(smuggling_document()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((b"content-encoding", e) for e in encodings),
    ]
    answer, _ = await _through([body], headers)
    assert (answer.status, answer.code) == (400, AUTHORIZATION_IN_HEADERS)
    ok, ok_probe = await _through(
        [_json_body()],
        [(b"content-type", b"application/json"), *((b"content-encoding", e) for e in encodings)],
    )
    assert ok.status == 200
    assert ok_probe.calls[0].body == _json_body()


@pytest.mark.anyio
async def test_content_encoding_without_a_body_is_not_refused() -> None:
    answer, probe = await _through([b""], [(b"content-encoding", b"gzip")], method="GET")
    assert answer.status == 200
    assert len(probe.calls) == 1


# --- over real HTTP: uvicorn, bytes written as they are ------------------------------------------


def _real_app(hits: list[bool]) -> ASGIApp:
    app = _fastapi_app(strict=False)

    @app.api_route("/fastapi", methods=METHODS)
    async def fastapi_route(body: dict[str, Any]) -> str:
        hits.append(carries_sentinel(body))
        return "ok"

    app.router.routes.append(Route("/starlette", _json_endpoint(hits), methods=METHODS))
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    return app


def _smuggling_bytes(encoding: str = "utf-8") -> bytes:
    return json.dumps(smuggling_document()).encode(encoding)


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


REAL_REQUESTS = [
    pytest.param(
        "POST",
        [(b"content-type", b"text/plain"), (b"content-type", b"application/json")],
        _smuggling_bytes(),
        True,
        id="two-content-types-text-first",
    ),
    pytest.param(
        "POST",
        [(b"content-type", b"\xa0application/json")],
        _smuggling_bytes(),
        True,
        id="nbsp-before-json",
    ),
    pytest.param(
        "POST",
        [(b"content-type", b"text/plain")],
        _smuggling_bytes("utf-16"),
        True,
        id="utf16-as-text",
    ),
    pytest.param("POST", [], _smuggling_bytes(), True, id="no-content-type"),
    pytest.param(
        "GET",
        [(b"content-type", b"application/json")],
        _smuggling_bytes(),
        True,
        id="get-with-a-body",
    ),
    pytest.param(
        "POST",
        [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked")],
        _chunked(_smuggling_bytes()),
        False,
        id="chunked-text",
    ),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("method", "headers", "body", "add_length"), REAL_REQUESTS)
@pytest.mark.parametrize("route", ["/starlette", "/fastapi"])
def test_over_real_http_what_the_app_would_parse_is_refused(
    method: str, headers: list[tuple[bytes, bytes]], body: bytes, add_length: bool, route: str
) -> None:
    hits: list[bool] = []
    all_headers = [*headers, _length(body)] if add_length else headers
    with serve(_real_app(hits)) as base_url:
        status, answer = raw_http(base_url, http_request(route, body, all_headers, method))
    assert status == 400, status
    assert json.loads(answer)["error"]["code"] == AUTHORIZATION_IN_HEADERS
    assert hits == []


@pytest.mark.e2e
def test_over_real_http_a_gzip_json_body_is_refused_with_415() -> None:
    hits: list[bool] = []
    body = gzip.compress(_smuggling_bytes())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        _length(body),
    ]
    with serve(_real_app(hits)) as base_url:
        status, answer = raw_http(base_url, http_request("/starlette", body, headers))
    assert status == 415
    assert json.loads(answer)["error"]["code"] == UNSUPPORTED_CONTENT_ENCODING
    assert hits == []


@pytest.mark.e2e
@pytest.mark.parametrize("charset", ["cp500", "utf-7-escaped"])
def test_over_real_http_a_body_in_a_declared_charset_is_refused(charset: str) -> None:
    """BlackSheep decodes with the declared charset: in EBCDIC (cp500) "{" is byte 0xC0, in
    UTF-7 it may be written "+AHs-"; the first byte is not "{" but the handler gets an
    object."""
    shape = _shape((b"application/json; charset=" + charset.encode(),), charset)
    body = shape.body()
    headers = [(b"content-type", shape.content_types[0].replace(b"-escaped", b"")), _length(body)]
    for guarded in (False, True):
        hits: list[bool] = []
        app = _blacksheep(hits)
        with serve(MCPAuthMiddleware(app) if guarded else app) as base_url:
            status, _ = raw_http(base_url, http_request(PATH, body, headers))
        if not guarded:
            assert hits == [True], "BlackSheep does not parse it: the case tests nothing"
        else:
            assert status in (400, 415), f"passed on ({status})"
            assert hits == []
