"""OpenTelemetry: span events and counters of where credentials came from.

Through the real middleware on a real Starlette app, inside the server span of
``opentelemetry-instrumentation-asgi``'s ``OpenTelemetryMiddleware`` (outermost, as deployed),
read back with the SDK's in-memory span exporter and metric reader.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from opentelemetry import metrics
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import Counter as CounterInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware, MCPBearerAuth, ProviderDataMode
from mcp_auth_middleware import telemetry as telemetry_module
from mcp_auth_middleware.credentials import fingerprint
from mcp_auth_middleware.telemetry import (
    CREDENTIAL_EVENT,
    CREDENTIALS_RESOLVED,
    CREDENTIALS_SHADOWED,
    INSTRUMENTATION_SCOPE,
    REJECTION_EVENT,
    REJECTIONS,
    UPSTREAM_REFUSAL_EVENT,
    UPSTREAM_REFUSALS,
)
from tests.helpers import Sources, client, make_app, mcp_tool, provider_data, run_python

URL = "https://mcp.example.com/mcp"
OTHER = "https://other.example.com/mcp"
PATH = "/v1/responses"
SECRET = "otel-sentinel-token-5c1f"

Points = Counter[tuple[str, frozenset[tuple[str, Any]]]]


@pytest.fixture(scope="session")
def metric_reader() -> InMemoryMetricReader:
    """The process's global meter provider, with a delta reader (each collection gives what
    was counted since the last). Set once: OpenTelemetry allows one global provider."""
    reader = InMemoryMetricReader(
        preferred_temporality={CounterInstrument: AggregationTemporality.DELTA}
    )
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], shutdown_on_exit=False))
    return reader


@pytest.fixture
def counted(metric_reader: InMemoryMetricReader) -> Callable[[], Points]:
    """Call to get what our meter counted since the test began: (counter, attributes) ->
    total. Other meters (the ASGI instrumentation's) are left out."""
    metric_reader.get_metrics_data()  # drain what earlier tests counted

    def collect() -> Points:
        points: Points = Counter()
        data = metric_reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != INSTRUMENTATION_SCOPE:
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = frozenset(dict(point.attributes or {}).items())
                        points[(metric.name, key)] += int(point.value)  # type: ignore[union-attr]
        return +points  # zero deltas dropped

    return collect


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def traced_app(provider: TracerProvider, **config: Any) -> Any:
    app = make_app(MCPAuthConfig(**config))
    return OpenTelemetryMiddleware(app, tracer_provider=provider)


def server_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


def attrs(source: str, **more: str) -> frozenset[tuple[str, Any]]:
    return frozenset({"mcp.auth.source": source, **more}.items())


def everything_exported(exporter: InMemorySpanExporter, reader: InMemoryMetricReader) -> str:
    spans = [json.loads(s.to_json()) for s in exporter.get_finished_spans()]
    data = reader.get_metrics_data()
    return json.dumps(spans) + (data.to_json() if data is not None else "")


@pytest.mark.anyio
async def test_each_credential_is_an_event_on_the_server_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    counted: Callable[[], Points],
    extra_sources: Sources,
) -> None:
    """Body for one server, both carriers for another (the header shadowed), the legacy
    header alone for a third: three events on the span the request ran in, and counters by
    source."""
    provider, exporter = spans
    third = "https://third.example.com/mcp?api_key=query-secret"
    body = {
        "tools": [
            mcp_tool(URL, token="tok-a", label="docs"),
            mcp_tool(OTHER, token="tok-b", label="crm"),
            mcp_tool(third, token=None, label="wiki"),
        ]
    }
    headers = provider_data(
        {OTHER: {"Authorization": "Bearer old-b"}, third: {"Authorization": "Bearer tok-c"}}
    )
    async with client(traced_app(provider, sources=extra_sources)) as c:
        r = await c.post(PATH, json=body, headers=headers)
    assert r.status_code == 200
    span = server_span(exporter)
    found = [dict(e.attributes or {}) for e in span.events if e.name == CREDENTIAL_EVENT]
    events = {e["mcp.server.url"]: e for e in found}
    assert set(events) == {URL, OTHER, "https://third.example.com/mcp?…"}  # no query
    assert events[URL]["mcp.auth.source"] == "body"
    assert events[URL]["mcp.auth.shadowed"] == ()
    assert events[URL]["mcp.server.label"] == "docs"
    assert events[OTHER]["mcp.auth.source"] == "body"
    assert events[OTHER]["mcp.auth.shadowed"] == ("provider_data",)
    assert events[OTHER]["mcp.auth.fingerprint"] == fingerprint("tok-b")
    wiki = events["https://third.example.com/mcp?…"]
    assert wiki["mcp.auth.source"] == "provider_data"
    assert wiki["mcp.auth.fingerprint"] == fingerprint("tok-c")
    assert "mcp.server.label" not in wiki  # the header names no label
    assert span.attributes is not None
    assert set(span.attributes["mcp.auth.sources"]) == {"body", "provider_data"}  # type: ignore[arg-type]
    assert span.attributes["mcp.auth.shadowed"] == ("provider_data",)
    assert counted() == {
        (CREDENTIALS_RESOLVED, attrs("body")): 2,
        (CREDENTIALS_RESOLVED, attrs("provider_data")): 1,
        (CREDENTIALS_SHADOWED, attrs("provider_data")): 1,
    }


REJECTED = {
    "invalid-body-token": (
        {},
        {"tools": [mcp_tool(URL, token="a b")]},
        {},
        ("invalid_authorization", "body", "tools[0].authorization"),
    ),
    "provider-data-rejected": (
        {"provider_data": ProviderDataMode.REJECT},
        {"tools": [mcp_tool(URL, token="tok")]},
        provider_data({URL: {"Authorization": "Bearer old"}}),
        ("authorization_in_provider_data", "provider_data", "X-LlamaStack-Provider-Data"),
    ),
    "too-large": (
        {"max_body_bytes": 64},
        {"tools": [mcp_tool(URL, token="x" * 100)]},
        {},
        ("body_too_large", None, "body"),
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "body", "headers", "expected"), REJECTED.values(), ids=REJECTED.keys()
)
async def test_a_rejection_is_an_event_an_attribute_and_a_count_by_code(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    counted: Callable[[], Points],
    config: dict[str, Any],
    body: dict[str, Any],
    headers: dict[str, str],
    expected: tuple[str, str | None, str],
) -> None:
    provider, exporter = spans
    code, source, param = expected
    async with client(traced_app(provider, **config)) as c:
        r = await c.post(PATH, json=body, headers=headers)
    assert r.json()["error"]["code"] == code
    span = server_span(exporter)
    [event] = [dict(e.attributes or {}) for e in span.events if e.name == REJECTION_EVENT]
    assert event["mcp.auth.rejection.code"] == code
    assert event["mcp.auth.rejection.param"] == param
    assert event.get("mcp.auth.source") == source
    assert span.attributes is not None
    assert span.attributes["mcp.auth.rejection.code"] == code
    assert not [e for e in span.events if e.name == CREDENTIAL_EVENT]
    labels = {"mcp.auth.rejection.code": code} | (
        {} if source is None else {"mcp.auth.source": source}
    )
    assert counted() == {(REJECTIONS, frozenset(labels.items())): 1}


@pytest.mark.anyio
async def test_telemetry_off_records_nothing(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    counted: Callable[[], Points],
    extra_sources: Sources,
) -> None:
    provider, exporter = spans
    async with client(traced_app(provider, telemetry=False, sources=extra_sources)) as c:
        ok = await c.post(PATH, json={"tools": [mcp_tool(URL)]})
        bad = await c.post(PATH, json={"tools": [mcp_tool(URL, token="a b")]})
    assert (ok.status_code, bad.status_code) == (200, 400)
    assert len(ok.json()["credentials"]) == 1  # there was something to record
    finished = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(finished) == 2
    assert all(
        not s.events and not any(k.startswith("mcp.") for k in s.attributes or {}) for s in finished
    )
    assert counted() == {}


@pytest.mark.anyio
async def test_telemetry_does_not_follow_the_audit_switch(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    counted: Callable[[], Points],
    audit_log: list[dict[str, Any]],
) -> None:
    provider, exporter = spans
    async with client(traced_app(provider, audit=False)) as c:
        await c.post(PATH, json={"tools": [mcp_tool(URL)]})
    assert audit_log == []
    assert [e.name for e in server_span(exporter).events] == [CREDENTIAL_EVENT]
    assert counted() == {(CREDENTIALS_RESOLVED, attrs("body")): 1}


@pytest.mark.anyio
async def test_without_a_recording_span_only_the_counters_count(
    counted: Callable[[], Points],
) -> None:
    """No tracing installed (no server span): the request is served, the counters count."""
    async with client(make_app()) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(URL)]})
    assert r.status_code == 200
    assert counted() == {(CREDENTIALS_RESOLVED, attrs("body")): 1}


@pytest.mark.anyio
async def test_no_token_and_no_per_caller_attribute_is_exported(
    spans: tuple[TracerProvider, InMemorySpanExporter],
    metric_reader: InMemoryMetricReader,
    counted: Callable[[], Points],
) -> None:
    """A sentinel token through every carrier and a rejection: it appears nowhere in what
    the exporters hold, and counter attributes are source names and codes only."""
    provider, exporter = spans
    app = traced_app(provider, server_headers=True)
    async with client(app) as c:
        await c.post(
            PATH,
            json={
                "tools": [
                    mcp_tool(URL, token=SECRET, label="docs"),
                    mcp_tool(OTHER, token=None, label="crm"),
                ]
            },
            headers={
                **provider_data({URL: {"Authorization": f"Bearer {SECRET}-pd"}}),
                "X-MCP-crm-Authorization": f"Bearer {SECRET}-hdr",
            },
        )
        await c.post(PATH, json={"tools": [mcp_tool(URL, token=f"{SECRET} x")]})
    points = counted()
    keys = {name for _, attributes in points for name, _ in attributes}
    assert keys == {"mcp.auth.source", "mcp.auth.rejection.code"}
    assert SECRET not in everything_exported(exporter, metric_reader)
    assert SECRET[:12] not in everything_exported(exporter, metric_reader)


def test_without_opentelemetry_the_middleware_works_and_records_nothing() -> None:
    """``opentelemetry`` made unimportable before the package is imported (a subprocess):
    no telemetry object, requests served, audit events as usual."""
    script = textwrap.dedent(
        """
        import asyncio, json, sys
        sys.modules["opentelemetry"] = None  # import opentelemetry -> ImportError
        import structlog
        from structlog.testing import LogCapture
        from mcp_auth_middleware import MCPAuthConfig, MCPAuthMiddleware
        from mcp_auth_middleware import telemetry
        from tests.helpers import client, make_app, mcp_tool

        capture = LogCapture()
        structlog.configure(processors=[capture])

        async def main():
            app = make_app(MCPAuthConfig(telemetry=True))
            async with client(app) as c:
                ok = await c.post("/v1/responses", json={"tools": [mcp_tool()]})
                bad = await c.post("/v1/responses", json={"tools": [mcp_tool(token="a b")]})
            middleware = MCPAuthMiddleware(app, config=MCPAuthConfig())
            print(json.dumps({
                "available": telemetry.AVAILABLE,
                "telemetry": telemetry.telemetry() is None,
                "auditor_telemetry": middleware._auditor._telemetry is None,
                "statuses": [ok.status_code, bad.status_code],
                "credentials": len(ok.json()["credentials"]),
                "events": [e["event"] for e in capture.entries],
                "otel_loaded": sorted(
                    m for m, module in sys.modules.items()
                    if m.startswith("opentelemetry") and module is not None
                ),
            }))

        asyncio.run(main())
        """
    )
    assert json.loads(run_python("-c", script).stdout) == {
        "available": False,
        "telemetry": True,
        "auditor_telemetry": True,
        "statuses": [200, 400],
        "credentials": 1,
        "events": ["mcp_credential_resolved", "mcp_credential_rejected"],
        "otel_loaded": [],
    }


def test_telemetry_module_reports_the_api_as_available() -> None:
    assert telemetry_module.AVAILABLE is True
    assert telemetry_module.telemetry() is not None


@pytest.mark.anyio
async def test_an_upstream_refusal_is_an_event_on_the_server_span_and_a_count(
    spans: tuple[TracerProvider, InMemorySpanExporter], counted: Callable[[], Points]
) -> None:
    """The application calls the MCP server through MCPBearerAuth; the server answers 403
    (an in-process transport here: the real servers are in test_upstream.py)."""
    provider, exporter = spans

    def refuse(request: httpx2.Request) -> httpx2.Response:
        challenge = 'Bearer error="insufficient_scope", scope="crm:write"'
        return httpx2.Response(403, headers={"WWW-Authenticate": challenge})

    async def endpoint(request: Request) -> JSONResponse:
        auth = MCPBearerAuth()
        async with httpx2.AsyncClient(auth=auth, transport=httpx2.MockTransport(refuse)) as http:
            await http.post(URL, json={})
        return JSONResponse({})  # pragma: no cover - the post raises

    app = Starlette(routes=[Route(PATH, endpoint, methods=["POST"])])
    app.add_middleware(MCPAuthMiddleware, config=MCPAuthConfig())
    async with client(OpenTelemetryMiddleware(app, tracer_provider=provider)) as c:
        r = await c.post(PATH, json={"tools": [mcp_tool(URL, token=SECRET, label="crm")]})
    assert r.status_code == 424
    span = server_span(exporter)
    [event] = [dict(e.attributes or {}) for e in span.events if e.name == UPSTREAM_REFUSAL_EVENT]
    assert event == {
        "mcp.auth.source": "body",
        "mcp.server.status": 403,
        "mcp.auth.fingerprint": fingerprint(SECRET),
        "mcp.server.url": URL,
        "mcp.server.label": "crm",
    }
    refusals = {k: v for k, v in counted().items() if k[0] == UPSTREAM_REFUSALS}
    labels = frozenset({"mcp.auth.source": "body", "mcp.server.status": 403}.items())
    assert refusals == {(UPSTREAM_REFUSALS, labels): 1}
