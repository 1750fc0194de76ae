"""No frame holds the body or a token while user code runs or raises.

Error trackers and structured loggers record the local variables of every frame of a
traceback: Python's ``traceback`` with ``capture_locals``, structlog's ``dict_tracebacks``
(``ExceptionDictTransformer(show_locals=True)``), Sentry with ``include_local_variables``.
Whatever raises while the middleware is on the stack (the application, a custom source's
``read()``, sync or async, a structlog processor while the audit event is emitted), the
traceback rendered those three ways must not hold the body's token nor a distinctive piece
of the raw body in any frame of ``mcp_auth_middleware``; and, when the application is a
plain ASGI app that never reads the body, in no frame at all past the client's own.

Failures name the renderer, the frame and the variable, never what was found.
"""

from __future__ import annotations

import json
import os
import secrets
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest
import sentry_sdk
import structlog
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport
from structlog.tracebacks import ExceptionDictTransformer, to_repr
from structlog.typing import EventDict, WrappedLogger

import mcp_auth_middleware
from mcp_auth_middleware import (
    MCPAuthConfig,
    MCPAuthMiddleware,
    MCPCredential,
    MCPCredentials,
    SourceRequest,
)
from mcp_auth_middleware.errors import CredentialSourceError
from mcp_auth_middleware.sources.base import ParsedBody
from mcp_auth_middleware.sources.body import parse_body
from tests.helpers import PROVIDER_DATA, SENTINEL, ASGIProbe, NothingSource, mcp_tool, run_asgi

URL: Final = "https://mcp.example.com/mcp"
BODY_MARK: Final = "bodymark-" + secrets.token_hex(10)
PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(mcp_auth_middleware.__file__))


def body() -> bytes:
    document = {"model": "m", "input": BODY_MARK, "tools": [mcp_tool(URL, SENTINEL)]}
    return json.dumps(document).encode()


def provider_data_header() -> tuple[bytes, bytes]:
    value = json.dumps({"mcp_headers": {URL: {"Authorization": f"Bearer {SENTINEL}"}}})
    return (PROVIDER_DATA.lower().encode(), value.encode())


# --- three ways to render a traceback with its locals ---------------------------------------


@dataclass
class RenderedFrame:
    filename: str
    function: str
    locals: dict[str, str]  # name -> rendered value

    @property
    def in_middleware(self) -> bool:
        return os.path.abspath(self.filename).startswith(PACKAGE_DIR + os.sep) or (
            self.filename.startswith("mcp_auth_middleware")
        )


def by_traceback(exc: BaseException) -> list[list[RenderedFrame]]:
    """``traceback.TracebackException(..., capture_locals=True)``: one stack per exception
    of the chain."""
    stacks = []
    pending = [traceback.TracebackException.from_exception(exc, capture_locals=True)]
    while pending:
        te = pending.pop()
        stacks.append([RenderedFrame(f.filename, f.name, dict(f.locals or {})) for f in te.stack])
        pending += [c for c in (te.__cause__, te.__context__) if c is not None]
        pending += te.exceptions or []
    return stacks


def by_structlog(exc: BaseException) -> list[list[RenderedFrame]]:
    """structlog's ``dict_tracebacks`` transformer, locals shown and never cut short."""
    unlimited: Any = None  # typed int, documented to take None: no abbreviation
    transform = ExceptionDictTransformer(
        show_locals=True, locals_max_length=unlimited, locals_max_string=unlimited
    )
    stacks = []
    pending = transform((type(exc), exc, exc.__traceback__))
    while pending:
        stack = pending.pop()
        stacks.append(
            [
                RenderedFrame(f["filename"], f["name"], dict(f.get("locals") or {}))
                for f in stack["frames"]
            ]
        )
        for group in stack.get("exceptions") or []:
            pending += group
    return stacks


class _Capture(Transport):
    """Sentry's transport, kept in memory."""

    events: list[dict[str, Any]]

    def capture_envelope(self, envelope: Envelope) -> None:
        event = envelope.get_event()
        if event is not None:
            _Capture.events.append(dict(event))


def by_sentry(exc: BaseException) -> list[list[RenderedFrame]]:
    """The event sentry-sdk would send, with ``include_local_variables``."""
    _Capture.events = []
    client = sentry_sdk.Client(
        dsn="https://public@sentry.invalid/1",
        transport=_Capture,
        include_local_variables=True,
        default_integrations=False,
        max_value_length=1_000_000,
    )
    try:
        with sentry_sdk.isolation_scope() as scope:
            scope.set_client(client)
            scope.capture_exception(exc)
    finally:
        client.close()
    (event,) = _Capture.events
    stacks = []
    for value in event["exception"]["values"]:
        frames = (value.get("stacktrace") or {}).get("frames") or []
        stacks.append(
            [
                RenderedFrame(
                    f.get("abs_path") or f.get("module") or "",
                    f.get("function") or "",
                    {k: json.dumps(v, default=repr) for k, v in (f.get("vars") or {}).items()},
                )
                for f in frames
            ]
        )
    return stacks


RENDERERS: dict[str, Callable[[BaseException], list[list[RenderedFrame]]]] = {
    "traceback(capture_locals=True)": by_traceback,
    "structlog ExceptionDictTransformer(show_locals=True)": by_structlog,
    "sentry-sdk include_local_variables": by_sentry,
}


def holders(exc: BaseException, *, everywhere: bool, secrets_: tuple[str, ...]) -> list[str]:
    """``renderer: function local`` for each rendered local holding one of ``secrets_``:
    in the middleware's frames, or (``everywhere``) in every frame from the first of the
    middleware's on (the ones before are the client's, which holds what it sends)."""
    found = []
    for renderer, render in RENDERERS.items():
        for stack in render(exc):
            start = next((i for i, f in enumerate(stack) if f.in_middleware), len(stack))
            for frame in stack[start:]:
                if not (everywhere or frame.in_middleware):
                    continue
                for name, text in frame.locals.items():
                    if any(secret in text for secret in secrets_):
                        where = os.path.basename(frame.filename)
                        found.append(f"{renderer}: {frame.function} ({where}) local {name!r}")
    return found


BODY_SECRETS: Final = (SENTINEL, BODY_MARK)


# --- the raising points ---------------------------------------------------------------------


class AppFailed(RuntimeError):
    pass


CONFIGS = [
    pytest.param(MCPAuthConfig(), id="body-only"),
    pytest.param(MCPAuthConfig(sources=(NothingSource(),)), id="with-custom-source"),
    pytest.param(MCPAuthConfig(redact_body=True), id="redact-body"),
]


async def _raised(
    app: MCPAuthMiddleware, headers: list[tuple[bytes, bytes]] | None = None
) -> BaseException:
    request = body()
    all_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(request)).encode()),
        *(headers or []),
    ]
    with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever it is, it is rendered
        await run_asgi(app, [request[:40], request[40:]], headers=all_headers)
    return caught.value


@pytest.mark.anyio
@pytest.mark.parametrize("config", CONFIGS)
async def test_an_app_that_never_reads_the_body_raises_and_no_frame_holds_it(
    config: MCPAuthConfig,
) -> None:
    probe = ASGIProbe(read_body=False, fail=AppFailed("handler failed"))
    exc = await _raised(MCPAuthMiddleware(probe, config=config))
    assert isinstance(exc, AppFailed)
    assert probe.calls[0].fingerprints, "the body's token was not scoped: the case tests nothing"
    assert holders(exc, everywhere=True, secrets_=BODY_SECRETS) == []


@pytest.mark.anyio
@pytest.mark.parametrize("config", CONFIGS)
async def test_an_app_that_read_the_body_raises_and_no_middleware_frame_holds_it(
    config: MCPAuthConfig,
) -> None:
    probe = ASGIProbe(fail=AppFailed("handler failed"))
    exc = await _raised(MCPAuthMiddleware(probe, config=config))
    assert isinstance(exc, AppFailed)
    assert holders(exc, everywhere=False, secrets_=BODY_SECRETS) == []


@pytest.mark.anyio
async def test_an_app_raising_under_a_header_token_leaves_it_in_no_middleware_frame() -> None:
    """Header tokens: the caller's own frames and the server's hold the scope, but the
    middleware's frames must not."""
    probe = ASGIProbe(read_body=False, fail=AppFailed("handler failed"))
    exc = await _raised(MCPAuthMiddleware(probe), [provider_data_header()])
    assert isinstance(exc, AppFailed)
    assert holders(exc, everywhere=False, secrets_=(SENTINEL,)) == []


class SourceFailed(RuntimeError):
    pass


class SyncFailingSource:
    name = "vault"
    needs_body = False

    def read(self, request: SourceRequest) -> list[MCPCredential]:
        raise SourceFailed("vault unreachable")


class AsyncFailingSource:
    name = "vault"
    needs_body = False

    async def read(self, request: SourceRequest) -> list[MCPCredential]:
        raise SourceFailed("vault unreachable")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "source", [SyncFailingSource(), AsyncFailingSource()], ids=["sync", "async"]
)
@pytest.mark.parametrize("redact", [False, True], ids=["redact-off", "redact-on"])
async def test_a_custom_source_raising_after_the_body_was_read_leaves_it_in_no_middleware_frame(
    source: SyncFailingSource | AsyncFailingSource, redact: bool
) -> None:
    probe = ASGIProbe()
    app = MCPAuthMiddleware(probe, config=MCPAuthConfig(sources=(source,), redact_body=redact))
    exc = await _raised(app)
    # It names the source and the error's type; the source's own error is not chained on.
    assert isinstance(exc, CredentialSourceError)
    assert (exc.source, exc.error) == ("vault", "SourceFailed")
    assert exc.__context__ is None
    assert exc.__cause__ is None
    assert probe.calls == []
    assert holders(exc, everywhere=False, secrets_=BODY_SECRETS) == []


class LogFailed(RuntimeError):
    pass


def _failing_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    raise LogFailed("log sink down")


@pytest.fixture
def failing_log() -> Iterator[None]:
    """structlog configured with a processor that raises on every event."""
    old = structlog.get_config()
    structlog.configure(processors=[_failing_processor], cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.configure(**old)


@pytest.mark.anyio
@pytest.mark.usefixtures("failing_log")
@pytest.mark.parametrize("config", CONFIGS)
async def test_a_log_processor_raising_on_the_audit_event_leaves_it_in_no_middleware_frame(
    config: MCPAuthConfig,
) -> None:
    probe = ASGIProbe()
    exc = await _raised(MCPAuthMiddleware(probe, config=config))
    assert isinstance(exc, LogFailed)
    assert probe.calls == []
    assert holders(exc, everywhere=False, secrets_=BODY_SECRETS) == []


@pytest.mark.anyio
@pytest.mark.usefixtures("failing_log")
async def test_a_log_processor_raising_on_a_header_token_leaves_it_in_no_middleware_frame() -> None:
    probe = ASGIProbe()
    exc = await _raised(MCPAuthMiddleware(probe), [provider_data_header()])
    assert isinstance(exc, LogFailed)
    assert holders(exc, everywhere=False, secrets_=(SENTINEL,)) == []


# --- the renderers find what they should (else the tests above prove nothing) ------------------


def _holds_the_body(request: bytes, value: str) -> None:
    raise AppFailed("control")


@pytest.mark.parametrize("renderer", list(RENDERERS))
def test_each_renderer_finds_a_token_and_the_body_in_a_frame_that_holds_them(
    renderer: str,
) -> None:
    try:
        _holds_the_body(body(), SENTINEL)
    except AppFailed as exc:
        stacks = RENDERERS[renderer](exc)
    frames = [f for stack in stacks for f in stack if f.function == "_holds_the_body"]
    assert len(frames) == 1
    assert SENTINEL in frames[0].locals["value"], "the renderer misses a string local"
    assert BODY_MARK in frames[0].locals["request"], "the renderer misses a bytes local"


# --- how the renderers show the middleware's own objects ----------------------------------------


def _decoded_objects() -> dict[str, object]:
    """Every object of the middleware that holds a body token, by name."""
    raw = body()
    envelope = parse_body(raw)
    assert envelope is not None
    parsed = ParsedBody.of(envelope)
    credential = MCPCredential(token=SENTINEL, source="body", server_url=URL)
    return {
        "decoded body": envelope,
        "decoded tool": (envelope.tools or [])[0],
        "ParsedBody": parsed,
        "MCPTool": parsed.tools[0],
        "SourceRequest": SourceRequest({"type": "http", "headers": []}, "POST", "/", body=parsed),
        "MCPCredential": credential,
        "MCPCredentials": MCPCredentials([credential]),
    }


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_structlogs_locals_renderer_shows_no_token_of_the_middlewares_objects(
    use_rich: bool,
) -> None:
    """structlog renders locals with rich, which prefers ``__rich_repr__`` (msgspec Structs
    have one that lists every field) to ``__repr__``: a masked ``__repr__`` is not enough."""
    shown = [
        name
        for name, obj in _decoded_objects().items()
        if SENTINEL in to_repr(obj, use_rich=use_rich)
    ]
    assert shown == []
