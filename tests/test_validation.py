"""Refusals: bad input gets an OpenAI-style JSON error and the app is not called.

Also what is read at all: bodies that may be JSON objects, whatever the method; everything else
goes to the application unbuffered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    ProviderDataMode,
)
from mcp_auth_middleware.credentials import fingerprint
from tests.helpers import (
    PROVIDER_DATA,
    ASGIProbe,
    Recorder,
    Wire,
    asgi_scope,
    call_asgi,
    client,
    make_app,
    mcp_tool,
    provider_data,
    run_asgi,
)

URL = "https://mcp.example.com/mcp"
OTHER_URL = "https://other.example.com/mcp"
SECRET = "s3cr3t"  # every fake token below contains it: no error may repeat it


@dataclass(frozen=True)
class Case:
    """One row: a request and the rejection it must get."""

    body: Any
    code: str
    param: str | None
    status: int = 400
    headers: dict[str, str] = field(default_factory=dict)
    config: MCPAuthConfig | None = None


def tools_body(*tools: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "input": "hi", "tools": list(tools)}


# Values of ``authorization`` that are refused wherever they appear.
BAD_TOKENS: list[tuple[str, Any]] = [  # (id, value)
    ("int", 12345),
    ("float", 1.5),
    ("list", [SECRET]),
    ("dict", {"token": SECRET}),
    ("true", True),
    ("false", False),
    ("8193-chars", SECRET + "x" * (8193 - len(SECRET))),
    ("space", SECRET + " tok"),
    ("tab", SECRET + "\ttok"),
    ("leading-space", " " + SECRET),
    ("trailing-space", SECRET + " "),
    ("CR", SECRET + "\rtok"),
    ("LF", SECRET + "\ntok"),
    ("CRLF-header-injection", SECRET + "\r\nX-Injected: 1"),
    ("NUL", SECRET + "\x00"),
    ("DEL", SECRET + "\x7f"),
    ("ESC", SECRET + "\x1b[0m"),
    ("BEL", SECRET + "\x07"),
    ("VT", SECRET + "\x0b"),
    ("FF", SECRET + "\x0c"),
    ("NEL", SECRET + "\x85"),
    ("NBSP", SECRET + "\u00a0x"),
    ("e-acute", SECRET + "\u00e9"),
    ("emoji", SECRET + "\U0001f600"),
    ("U+2028", SECRET + "\u2028"),
    ("full-width-letter", "\uff53" + SECRET),
    ("Bearer-alone", "Bearer"),
    ("Bearer-space", "Bearer "),
    ("Bearer-tab", "Bearer\t" + SECRET),
    ("Bearer-space-in-token", "Bearer " + SECRET + " x"),
    ("Bearer-LF", "Bearer " + SECRET + "\n"),
    ("Bearer-non-ASCII", "Bearer " + SECRET + "\u00e9"),
    ("Bearer-Bearer", "Bearer Bearer " + SECRET),
    ("Bearer-8193-chars", "Bearer " + SECRET + "x" * (8193 - 7 - len(SECRET))),
]

# ``headers`` names that smuggle an Authorization header (any case, look-alikes).
AUTHORIZATION_NAMES: list[tuple[str, str]] = [  # (id, header name)
    ("Authorization", "Authorization"),
    ("lower", "authorization"),
    ("upper", "AUTHORIZATION"),
    ("mixed", "aUtHoRiZaTiOn"),
    ("leading-space", " Authorization"),
    ("trailing-space", "Authorization "),
    ("full-width-A", "\uff21uthorization"),
    (
        "full-width-all",
        "\uff21\uff35\uff34\uff28\uff2f\uff32\uff29\uff3a\uff21\uff34\uff29\uff2f\uff2e",
    ),
]

CASES: list[Any] = [
    *(
        pytest.param(
            Case(
                tools_body(
                    mcp_tool(URL, "tok-ok", "a"),
                    mcp_tool(
                        OTHER_URL,
                        ...,
                        "b",
                        headers={"X-Trace": "1", name: "Bearer " + SECRET},
                    ),
                ),
                "authorization_in_headers",
                "tools[1].headers",
            ),
            id=f"authorization_in_headers-{name_id}",
        )
        for name_id, name in AUTHORIZATION_NAMES
    ),
    pytest.param(
        Case(
            tools_body(mcp_tool(URL, SECRET, "a", headers={"Authorization": "Bearer " + SECRET})),
            "authorization_in_headers",
            "tools[0].headers",
        ),
        id="authorization_in_headers-beside-a-token",
    ),
    *(
        pytest.param(
            Case(
                tools_body(mcp_tool(URL, token)),
                "invalid_authorization",
                "tools[0].authorization",
            ),
            id=f"invalid_authorization-tools-{token_id}",
        )
        for token_id, token in BAD_TOKENS
    ),
    pytest.param(
        Case(
            tools_body(mcp_tool(URL, "tok-ok", "a"), mcp_tool(OTHER_URL, SECRET + " x", "b")),
            "invalid_authorization",
            "tools[1].authorization",
        ),
        id="invalid_authorization-second-tool",
    ),
    *(
        pytest.param(
            Case(
                {"tool_name": "t", "authorization": token},
                "invalid_authorization",
                "authorization",
            ),
            id=f"invalid_authorization-top-level-{token_id}",
        )
        for token_id, token in BAD_TOKENS
    ),
    pytest.param(
        Case(
            {"authorization": SECRET + "\n", "mcp_endpoint": {"uri": URL}},
            "invalid_authorization",
            "authorization",
        ),
        id="invalid_authorization-top-level-with-endpoint",
    ),
    pytest.param(
        Case(
            tools_body(mcp_tool(URL, SECRET + "-1", "a"), mcp_tool(URL + "/", SECRET + "-2", "b")),
            "conflicting_credentials",
            "tools[1]",
        ),
        id="conflicting_credentials",
    ),
    pytest.param(
        Case(
            tools_body(mcp_tool("not a url", SECRET)),
            "invalid_server_url",
            "tools[0].server_url",
        ),
        id="invalid_server_url",
    ),
    *(
        pytest.param(
            Case(
                {"model": "m"}, "invalid_provider_data", PROVIDER_DATA, headers={PROVIDER_DATA: v}
            ),
            id=f"invalid_provider_data-{name}",
        )
        for name, v in [
            ("not-json", "{" + SECRET),
            ("not-object", json.dumps(["Bearer " + SECRET])),
            ("mcp_headers-not-object", json.dumps({"mcp_headers": ["Bearer " + SECRET]})),
            ("url-not-absolute", json.dumps({"mcp_headers": {"/m": {"Authorization": SECRET}}})),
            ("value-not-object", json.dumps({"mcp_headers": {URL: "Bearer " + SECRET}})),
            ("value-not-string", json.dumps({"mcp_headers": {URL: {"Authorization": 1}}})),
            (
                "extra-header-CRLF",
                json.dumps(
                    {
                        "mcp_headers": {
                            URL: {"Authorization": "Bearer " + SECRET, "X-A": "a\r\nB: c"}
                        }
                    }
                ),
            ),
            (
                "extra-header-Host",
                json.dumps(
                    {
                        "mcp_headers": {
                            URL: {"Authorization": "Bearer " + SECRET, "Host": "evil.example"}
                        }
                    }
                ),
            ),
        ]
    ),
    *(
        pytest.param(
            Case(
                {"model": "m"},
                "invalid_authorization",
                PROVIDER_DATA,
                headers=provider_data({URL: {"Authorization": value}}),
            ),
            id=f"invalid_authorization-provider-data-{name}",
        )
        for name, value in [
            ("no-Bearer", SECRET),
            ("Basic", "Basic " + SECRET),
            ("Bearer-alone", "Bearer"),
            ("space", "Bearer " + SECRET + " x"),
            ("LF", "Bearer " + SECRET + "\n"),
            ("non-ASCII", "Bearer " + SECRET + "\u00e9"),
            ("8193-chars", "Bearer " + SECRET + "x" * 8186),
        ]
    ),
    pytest.param(
        Case(
            {"model": "m"},
            "authorization_in_provider_data",
            PROVIDER_DATA,
            headers=provider_data({URL: {"Authorization": "Bearer " + SECRET}}),
            config=MCPAuthConfig(provider_data=ProviderDataMode.REJECT),
        ),
        id="authorization_in_provider_data",
    ),
    pytest.param(
        Case(
            {"model": "m", "input": "x" * 200, "tools": [mcp_tool(URL, SECRET)]},
            "body_too_large",
            None,
            status=413,
            config=MCPAuthConfig(max_body_bytes=100),
        ),
        id="body_too_large-content-length",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize("case", CASES)
async def test_bad_input_is_refused_with_an_openai_style_error(case: Case) -> None:
    recorder = Recorder()
    app = make_app(case.config, recorder)
    async with client(app) as c:
        response = await c.post(
            "/v1/responses",
            content=json.dumps(case.body).encode(),
            headers={"Content-Type": "application/json", **case.headers},
        )
    assert response.status_code == case.status
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert list(document) == ["error"]
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == case.code
    assert isinstance(error["message"], str)
    assert error["message"]
    if case.param is not None:
        assert error["param"] == case.param or error["param"].startswith(case.param + ".")
    assert recorder.calls == []
    assert SECRET not in response.text


@pytest.mark.anyio
async def test_token_of_exactly_8192_characters_is_accepted() -> None:
    token = "t" * 8192
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post("/v1/responses", json=tools_body(mcp_tool(URL, token)))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"][0]["token"] == token


@pytest.mark.anyio
@pytest.mark.parametrize(
    "token",
    ["abc", "A-Za-z0-9._~+/=", "!#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "eyJhbGciOi.eyJzdWIi.sig"],
)
async def test_any_printable_ascii_token_is_accepted(token: str) -> None:
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        response = await c.post("/v1/responses", json=tools_body(mcp_tool(URL, token)))
    assert response.status_code == 200
    assert recorder.calls[0]["credentials"][0]["token"] == token


@pytest.mark.anyio
@pytest.mark.parametrize(
    "name", ["X-Api-Key", "Proxy-Authorisation", "X-Authorization-Hint", "Authorizations"]
)
async def test_other_tool_headers_are_not_refused(name: str) -> None:
    recorder = Recorder()
    body = tools_body(mcp_tool(URL, "tok", headers={name: "v"}))
    async with client(make_app(None, recorder)) as c:
        response = await c.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert len(recorder.calls) == 1


# --- driving the ASGI app by hand -----------------------------------------------------------


def bad_body() -> bytes:
    return json.dumps(tools_body(mcp_tool(URL, SECRET + " not a token"))).encode()


@pytest.mark.anyio
async def test_chunked_body_over_the_limit_without_content_length_is_refused() -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw, config=MCPAuthConfig(max_body_bytes=100))
    answer = await run_asgi(app, [b"{" + b" " * 39, b" " * 40, b" " * 39 + b"}"])
    assert answer.status == 413
    assert answer.error is not None
    assert (answer.code, answer.error["type"]) == ("body_too_large", "invalid_request_error")
    assert raw.calls == []


@pytest.mark.anyio
async def test_chunked_body_that_outgrows_a_small_content_length_is_refused() -> None:
    """The cap counts the bytes that arrive, not the bytes announced."""
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw, config=MCPAuthConfig(max_body_bytes=100))
    headers = [(b"content-type", b"application/json"), (b"content-length", b"10")]
    answer = await run_asgi(app, [b"{" + b" " * 79, b" " * 79 + b"}"], headers=headers)
    assert answer.status == 413
    assert raw.calls == []


@pytest.mark.anyio
async def test_chunked_body_under_the_limit_is_read_and_replayed_whole() -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw, config=MCPAuthConfig(max_body_bytes=1000))
    body = json.dumps(tools_body(mcp_tool(URL, "Bearer tok-chunked"))).encode()
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    answer = await run_asgi(app, chunks)
    assert answer.status == 200
    assert raw.calls[0].body == body
    assert raw.calls[0].fingerprints == [fingerprint("tok-chunked")]


@pytest.mark.anyio
async def test_body_at_exactly_the_limit_is_accepted() -> None:
    body = json.dumps(tools_body(mcp_tool(URL, "tok"))).encode()
    recorder = Recorder()
    app = make_app(MCPAuthConfig(max_body_bytes=len(body)), recorder)
    async with client(app) as c:
        response = await c.post(
            "/v1/responses", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200
    assert recorder.calls[0]["body"] == body


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/json", id="json"),
        pytest.param("application/json; charset=utf-8", id="json-charset"),
        pytest.param("application/json;charset=UTF-8", id="json-charset-no-space"),
        pytest.param("Application/JSON", id="json-upper-case"),
        pytest.param("application/vnd.x+json", id="vendor-plus-json"),
        pytest.param("application/vnd.api+json; charset=utf-8", id="vendor-plus-json-charset"),
        pytest.param(None, id="missing"),
    ],
)
async def test_json_content_types_are_inspected(content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    recorder = Recorder()
    async with client(make_app(None, recorder)) as c:
        refused = await c.post("/v1/responses", content=bad_body(), headers=headers)
        body = json.dumps(tools_body(mcp_tool(URL, "tok-ct"))).encode()
        accepted = await c.post("/v1/responses", content=body, headers=headers)
    assert refused.status_code == 400
    assert accepted.status_code == 200
    assert len(recorder.calls) == 1
    assert recorder.calls[0]["credentials"][0]["token"] == "tok-ct"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param(b"application/json", b"text/plain", id="json-first"),
        pytest.param(b"text/plain", b"application/json", id="text-first"),
    ],
)
async def test_no_content_type_lets_a_json_object_past(first: bytes, second: bytes) -> None:
    """Frameworks disagree on which Content-Type value counts, and Starlette's
    ``request.json()`` reads none: a JSON object body is read whatever they say."""
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    headers = [(b"content-type", first), (b"content-type", second)]
    answer = await run_asgi(app, [bad_body()], headers=headers)
    assert answer.status == 400
    assert raw.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("length", [b"\xb2", b"12a", b"-1", b""], ids=repr)
async def test_a_malformed_content_length_is_refused(length: bytes) -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]
    body = json.dumps(tools_body(mcp_tool(URL, "tok-cl"))).encode()
    answer = await run_asgi(app, [body], headers=headers)
    assert answer.status == 400
    assert (answer.code, answer.param) == ("invalid_content_length", "Content-Length")
    assert raw.calls == []


CONTENT_TYPES = [
    pytest.param(b"text/plain", id="text-plain"),
    pytest.param(b"text/plain; charset=utf-8", id="text-plain-charset"),
    pytest.param(b"multipart/form-data; boundary=xyz", id="multipart"),
    pytest.param(b"application/x-www-form-urlencoded", id="form"),
    pytest.param(b"application/octet-stream", id="octet-stream"),
    pytest.param(b"application/xml", id="xml"),
    pytest.param(b"application/json-seq", id="json-seq"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
async def test_a_json_object_is_read_whatever_its_content_type(content_type: bytes) -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    answer = await run_asgi(app, [bad_body()], headers=[(b"content-type", content_type)])
    assert answer.status == 400
    assert raw.calls == []


NOT_AN_OBJECT = [
    pytest.param(b"application/x-www-form-urlencoded", b"tools=x&authorization=y", id="form"),
    pytest.param(
        b"multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="f"\r\n\r\n{"tools":[]}\r\n--xyz--',
        id="multipart",
    ),
    pytest.param(b"application/octet-stream", b"\x89PNG\r\n\x1a\n", id="binary"),
    pytest.param(b"application/json", b' \n [{"tools": []}]', id="json-array"),
    pytest.param(b"text/plain", b"   ", id="whitespace"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("content_type", "body"), NOT_AN_OBJECT)
async def test_a_body_that_cannot_be_a_json_object_passes_through(
    content_type: bytes, body: bytes
) -> None:
    """Its first significant byte is not "{": the app gets the very messages the server sent
    (the first one looked at, the rest unbuffered), and no body credentials."""
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    scope = asgi_scope([(b"content-type", content_type)])
    answer = await call_asgi(app, scope, Wire([body[:3], body[3:]]).receive)
    assert answer.status == 200
    assert raw.calls[0].scope is scope
    assert raw.calls[0].body == body
    assert raw.calls[0].fingerprints == []


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_http1_get_and_head_without_a_length_get_the_raw_receive(method: str) -> None:
    """No body can come: nothing is buffered, but the headers are still read."""
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw, config=MCPAuthConfig(server_headers=True))
    good = [(b"x-mcp-srv-authorization", b"Bearer tok-get")]
    receive = Wire().receive
    answer = await call_asgi(app, asgi_scope(good, method=method), receive)
    assert answer.status == 200
    assert raw.calls[0].receive is receive
    assert raw.calls[0].fingerprints == [fingerprint("tok-get")]
    bad = [(b"x-mcp-srv-authorization", b"not bearer")]
    answer = await run_asgi(app, [b""], headers=bad, method=method)
    assert answer.status == 400
    assert len(raw.calls) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "GET"])
async def test_any_method_with_a_body_is_inspected(method: str) -> None:
    """FastAPI reads a body on any route that declares one, GET included."""
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    body = bad_body()
    headers = [(b"content-length", str(len(body)).encode())]
    answer = await run_asgi(app, [body], headers=headers, method=method)
    assert answer.status == 400
    assert raw.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_non_http_scopes_pass_through_untouched(scope_type: str) -> None:
    raw = ASGIProbe()
    app = MCPAuthMiddleware(raw)
    scope: dict[str, Any] = {"type": scope_type, "asgi": {"version": "3.0"}}
    if scope_type == "websocket":
        scope.update(path="/ws", headers=[(b"content-type", b"application/json")])
    receive = Wire().receive
    await call_asgi(app, scope, receive)
    assert raw.calls[0].receive is receive
    assert raw.calls[0].scope is scope
