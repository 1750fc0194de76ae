"""OpenTelemetry: where each credential came from, on the current span and as counters.

Optional: with ``opentelemetry-api`` installed (``pip install 'mcp-auth-middleware[otel]'``)
:func:`telemetry` gives a :class:`Telemetry`; without it, ``None`` and nothing is recorded.
The API records nothing either until the application installs an SDK (a tracer or meter
provider): until then each call costs a no-op.

On the span the request runs in (the server span of your ASGI instrumentation), one event
per resolved credential and one per rejection, plus a summary of the sources as span
attributes. Counters carry only low-cardinality attributes (source names, rejection codes):
never a caller, a server or a fingerprint, which would let callers mint series. No token
ever: a credential is identified by its fingerprint, server URLs lose their query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from mcp_auth_middleware.audit import log_safe
from mcp_auth_middleware.credentials import MCPCredential

if TYPE_CHECKING:
    from mcp_auth_middleware.errors import CredentialRejected
    from mcp_auth_middleware.resolve import Resolved
    from mcp_auth_middleware.upstream import MCPUpstreamAuthError

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:  # the ``otel`` extra is not installed: no telemetry
    _metrics = None  # type: ignore[assignment]
    _trace = None  # type: ignore[assignment]

__all__ = [
    "AVAILABLE",
    "CREDENTIALS_RESOLVED",
    "CREDENTIALS_SHADOWED",
    "CREDENTIAL_EVENT",
    "INSTRUMENTATION_SCOPE",
    "REJECTIONS",
    "REJECTION_EVENT",
    "UPSTREAM_REFUSALS",
    "UPSTREAM_REFUSAL_EVENT",
    "Telemetry",
    "telemetry",
]

#: Whether ``opentelemetry-api`` could be imported.
AVAILABLE: Final = _trace is not None

#: The instrumentation scope (meter name) of the counters.
INSTRUMENTATION_SCOPE: Final = "mcp_auth_middleware"

# Counters.
CREDENTIALS_RESOLVED: Final = "mcp.auth.credentials.resolved"
CREDENTIALS_SHADOWED: Final = "mcp.auth.credentials.shadowed"
REJECTIONS: Final = "mcp.auth.rejections"
UPSTREAM_REFUSALS: Final = "mcp.auth.upstream_refusals"

# Span events.
CREDENTIAL_EVENT: Final = "mcp.auth.credential"
REJECTION_EVENT: Final = "mcp.auth.rejection"
UPSTREAM_REFUSAL_EVENT: Final = "mcp.auth.upstream_refusal"

# Attributes.
SOURCE: Final = "mcp.auth.source"
SHADOWED: Final = "mcp.auth.shadowed"
SOURCES: Final = "mcp.auth.sources"
FINGERPRINT: Final = "mcp.auth.fingerprint"
SERVER_URL: Final = "mcp.server.url"
SERVER_LABEL: Final = "mcp.server.label"
REJECTION_CODE: Final = "mcp.auth.rejection.code"
REJECTION_PARAM: Final = "mcp.auth.rejection.param"
REFUSAL_STATUS: Final = "mcp.server.status"


class Telemetry:
    """Records the two audit points (credentials resolved, request rejected) in
    OpenTelemetry. Needs ``opentelemetry-api``: build it through :func:`telemetry`."""

    __slots__ = (
        "_attributes",
        "_current_span",
        "_refusals",
        "_rejections",
        "_resolved",
        "_shadowed",
    )

    def __init__(self) -> None:
        if _metrics is None or _trace is None:  # pragma: no cover - guarded by telemetry()
            raise RuntimeError("opentelemetry-api is not installed")
        from mcp_auth_middleware import __version__

        meter = _metrics.get_meter(INSTRUMENTATION_SCOPE, __version__)
        self._resolved = meter.create_counter(
            CREDENTIALS_RESOLVED,
            unit="{credential}",
            description="MCP credentials scoped for a request, by the source that won",
        )
        self._shadowed = meter.create_counter(
            CREDENTIALS_SHADOWED,
            unit="{credential}",
            description="MCP credentials a request also sent through a source that lost",
        )
        self._rejections = meter.create_counter(
            REJECTIONS,
            unit="{request}",
            description="Requests refused for their MCP credentials, by rejection code",
        )
        self._refusals = meter.create_counter(
            UPSTREAM_REFUSALS,
            unit="{refusal}",
            description="MCP credentials an MCP server refused (401/403), by source and status",
        )
        self._current_span = _trace.get_current_span
        # Metric attributes by source name: a handful, built once each.
        self._attributes: dict[str, Mapping[str, str]] = {}

    def _source(self, name: str) -> Mapping[str, str]:
        """The metric attributes of a source."""
        attributes = self._attributes.get(name)
        if attributes is None:
            attributes = self._attributes[name] = {SOURCE: name}
        return attributes

    def resolved(self, items: Sequence[Resolved]) -> None:
        """The credentials scoped for this request, each with the sources it shadowed."""
        # Runs on every request that carries a credential, SDK or not: the span event is
        # built only for a span that records.
        for cred, shadowed in items:
            self._resolved.add(1, self._source(str(cred.source)))
            for name in shadowed:
                self._shadowed.add(1, self._source(name))
        span = self._current_span()
        if span.is_recording():
            _annotate(span, items)

    def rejected(self, exc: CredentialRejected) -> None:
        """The request was refused: its code (and the source that refused it, if any)."""
        attributes = {REJECTION_CODE: exc.code}
        if exc.source is not None:
            attributes[SOURCE] = exc.source
        self._rejections.add(1, attributes)
        span = self._current_span()
        if span.is_recording():
            span.add_event(REJECTION_EVENT, {**attributes, REJECTION_PARAM: log_safe(exc.param)})
            span.set_attribute(REJECTION_CODE, exc.code)

    def refused_upstream(self, exc: MCPUpstreamAuthError) -> None:
        """An MCP server refused a credential of this request (counted by source and
        status; the span event also names the server and the fingerprint)."""
        attributes: dict[str, Any] = {REFUSAL_STATUS: exc.status}
        if exc.source is not None:
            attributes[SOURCE] = exc.source
        self._refusals.add(1, attributes)
        span = self._current_span()
        if span.is_recording():
            event = {**attributes, FINGERPRINT: exc.fingerprint or ""}
            if exc.server_url is not None:
                event[SERVER_URL] = exc.server_url
            if exc.server_label is not None:
                event[SERVER_LABEL] = exc.server_label
            span.add_event(UPSTREAM_REFUSAL_EVENT, event)


def _annotate(span: Any, items: Sequence[Resolved]) -> None:
    """One event per credential on ``span``, and the sources in its attributes."""
    sources: dict[str, None] = {}
    shadowed_all: dict[str, None] = {}
    for cred, shadowed in items:
        if not isinstance(cred, MCPCredential):
            continue  # headers only: no fingerprint to name it by
        source = str(cred.source)
        sources[source] = None
        shadowed_all.update(dict.fromkeys(shadowed))
        event: dict[str, Any] = {
            SOURCE: source,
            SHADOWED: list(shadowed),
            FINGERPRINT: cred.fingerprint,
        }
        server = cred.server
        if server is not None:
            event[SERVER_URL] = log_safe(server.loggable, 2048)
        label = cred.server_label
        if label is not None:
            event[SERVER_LABEL] = log_safe(label)
        span.add_event(CREDENTIAL_EVENT, event)
    span.set_attribute(SOURCES, list(sources))
    span.set_attribute(SHADOWED, list(shadowed_all))


def telemetry() -> Telemetry | None:
    """A :class:`Telemetry` on the global meter provider, or ``None`` when
    ``opentelemetry-api`` is not installed."""
    return Telemetry() if AVAILABLE else None
