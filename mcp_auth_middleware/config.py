"""Settings: :class:`MCPAuthConfig`, from keyword arguments or ``MCP_AUTH_*`` variables.

A bad value fails at start-up, naming the field (constructor) or the variable (``from_env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mcp_auth_middleware.audit import CallerOf, authenticated_user
from mcp_auth_middleware.checks import RESERVED_HEADERS, is_header_name
from mcp_auth_middleware.credentials import (
    CredentialSource,
    InvalidCredential,
    check_connector_id,
    server_of,
)
from mcp_auth_middleware.sources.base import MCPCredentialSource
from mcp_auth_middleware.sources.body import MAX_TOOL_ITEMS

__all__ = ["ENV_PREFIX", "HeadersAuthorization", "MCPAuthConfig", "ProviderDataMode"]

ENV_PREFIX: Final = "MCP_AUTH_"
#: The provider-data header's names: llama-stack's, and the one it was renamed to.
DEFAULT_PROVIDER_DATA_HEADERS: Final = ("X-LlamaStack-Provider-Data", "X-OGX-Provider-Data")
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_MAX_TOOLS: Final = 128
_BUILTIN_SOURCES: Final = frozenset(s.value for s in CredentialSource)
_CONSTRUCTOR_ONLY: Final = frozenset({"sources", "caller"})  # objects: no variable for them
#: Header names the provider-data header may not take: framing, the request id, the
#: caller's own Authorization, and hop-by-hop or MCP session headers.
_NOT_PROVIDER_DATA: Final = frozenset(
    {"authorization", "content-encoding", "content-type", "x-request-id"} | RESERVED_HEADERS
)


class ProviderDataMode(StrEnum):
    """What to do with credentials in the legacy provider-data header."""

    ACCEPT = "accept"  # read them (the legacy path is on)
    REJECT = "reject"  # refuse requests that carry them (migration finished)
    IGNORE = "ignore"  # do not read the header at all


class HeadersAuthorization(StrEnum):
    """What to do with an ``Authorization`` in an MCP tool's ``headers``."""

    REFUSE = "refuse"  # 400 authorization_in_headers (as llama-stack does)
    ACCEPT = "accept"  # the tool's token, checked like ``authorization`` (OpenAI's examples)


class MCPAuthConfig(BaseModel):
    """Settings of :class:`~mcp_auth_middleware.MCPAuthMiddleware` (the reference's "Settings")."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    enabled: bool = True
    body: bool = True
    provider_data: ProviderDataMode = ProviderDataMode.ACCEPT
    provider_data_header: tuple[str, ...] = DEFAULT_PROVIDER_DATA_HEADERS
    headers_authorization: HeadersAuthorization = HeadersAuthorization.REFUSE
    connectors: dict[str, str] = Field(
        default_factory=dict, description="connector_id -> the MCP server URL it stands for"
    )
    server_headers: bool = False
    precedence: tuple[str, ...] = (
        CredentialSource.BODY.value,
        CredentialSource.SERVER_HEADER.value,
        CredentialSource.PROVIDER_DATA.value,
    )
    paths: tuple[str, ...] | None = Field(
        default=None, description="fnmatch patterns of paths to read; None reads all"
    )
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    max_tools: int = Field(default=DEFAULT_MAX_TOOLS, gt=0, le=MAX_TOOL_ITEMS)
    redact_body: bool = False
    audit: bool = True
    telemetry: bool = Field(
        default=True, description="OpenTelemetry spans and counters, when the API is installed"
    )
    caller: CallerOf | None = Field(
        default=authenticated_user,
        description="reads the caller's identity from the scope, for audit events",
    )
    sources: tuple[MCPCredentialSource, ...] = Field(
        default=(), description="custom credential sources, placed by name in precedence"
    )

    @field_validator("provider_data_header")
    @classmethod
    def _header_name(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names:
            raise ValueError("must name at least one header")
        for value in names:
            if not is_header_name(value):
                raise ValueError("must be HTTP header names (letters, digits and -)")
            if value.lower() in _NOT_PROVIDER_DATA:
                # The middleware reads these for themselves: the source would never see them.
                raise ValueError(f"{value!r} is a header the middleware reads for itself")
        if len({value.lower() for value in names}) != len(names):
            raise ValueError("names a header twice")
        return names

    @field_validator("connectors", mode="before")
    @classmethod
    def _split_connectors(cls, value: Any) -> Any:
        if isinstance(value, str):  # the variable: "id=url,id2=url2"
            pairs = [part.partition("=") for part in value.split(",") if part.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError("expected comma-separated connector_id=URL pairs")
            return {key.strip(): url.strip() for key, _, url in pairs}
        return value

    @field_validator("connectors")
    @classmethod
    def _connectors(cls, value: dict[str, str]) -> dict[str, str]:
        for connector, url in value.items():
            try:
                check_connector_id(connector)
                server_of(url)
            except InvalidCredential as exc:
                raise ValueError(f"connector {connector!r}: {exc}") from None
        return value

    @field_validator("precedence", "paths", "provider_data_header", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one path pattern (or be unset for all)")
            for pattern in value:
                if not pattern.startswith("/"):
                    raise ValueError(f"path pattern {pattern!r} must start with '/'")
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        items = tuple(value)
        for source in items:
            if not isinstance(source, MCPCredentialSource):
                raise ValueError(
                    f"{source!r} is not a credential source (needs name, needs_body, read)"
                )
        return items

    @model_validator(mode="after")
    def _check_sources(self) -> MCPAuthConfig:
        """Names in ``precedence`` exist once each, and no combination of settings quietly
        switches a check off: each contradiction fails here, naming the fields."""
        custom = [s.name for s in self.sources]
        if len(set(custom)) != len(custom) or _BUILTIN_SOURCES & set(custom):
            raise ValueError("sources: each custom source needs a name of its own")
        known = _BUILTIN_SOURCES | set(custom)
        seen: set[str] = set()
        for name in self.precedence:
            if name not in known:
                raise ValueError(
                    f"precedence: unknown source {name!r} (known: {', '.join(sorted(known))})"
                )
            if name in seen:
                raise ValueError(f"precedence: source {name!r} is listed twice")
            seen.add(name)
        if not self.precedence:
            raise ValueError("precedence: must name at least one source")
        explicit = self.model_fields_set
        if "precedence" in explicit:
            # A source the user switched on but left out of the order they gave would be
            # silently off. One left at its default simply yields to that order.
            switched_on = {
                CredentialSource.BODY.value: "body" in explicit and self.body,
                CredentialSource.SERVER_HEADER.value: "server_headers" in explicit
                and self.server_headers,
                CredentialSource.PROVIDER_DATA.value: "provider_data" in explicit
                and self.provider_data is ProviderDataMode.ACCEPT,
                **dict.fromkeys(custom, True),
            }
            for name, on in switched_on.items():
                if on and name not in seen:
                    raise ValueError(
                        f"precedence: source {name!r} is switched on but not in precedence "
                        "(add it, or switch it off)"
                    )
        else:
            # The default order, then the custom sources in the order they were given.
            object.__setattr__(self, "precedence", self.precedence + tuple(custom))
        if self.redact_body and not (self.body and CredentialSource.BODY.value in seen):
            raise ValueError(
                "redact_body: nothing to redact, the body source is off or not in precedence"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MCPAuthConfig:
        """Settings from ``MCP_AUTH_*`` variables; ``overrides`` (e.g. ``sources``) win.

        An unknown ``MCP_AUTH_*`` variable is an error too: a misspelt switch must not be
        silently ignored.
        """
        env = os.environ if environ is None else environ
        env_fields = set(cls.model_fields) - _CONSTRUCTOR_ONLY
        values: dict[str, Any] = {}
        variables: dict[str, str] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX) :].lower()
            if field not in env_fields:
                known = ", ".join(ENV_PREFIX + f.upper() for f in sorted(env_fields))
                raise ValueError(f"{key}: unknown setting (known: {known})")
            values[field] = raw.strip()
            variables[field] = key
        if values.get("paths") in ("", "*", "all"):
            values.pop("paths")
        for enum_field in ("provider_data", "headers_authorization"):
            if enum_field in values:
                values[enum_field] = values[enum_field].lower()
        if "precedence" in values:
            values["precedence"] = ",".join(
                name.strip().lower() if name.strip().lower() in _BUILTIN_SOURCES else name
                for name in values["precedence"].split(",")
            )
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                msg = str(error["msg"]).removeprefix("Value error, ")
                field = str(error["loc"][0]) if error["loc"] else msg.partition(":")[0]
                if not error["loc"]:
                    msg = msg.partition(": ")[2] or msg
                problems.append(f"{variables.get(field, field)}: {msg}")
            if not problems:  # pragma: no cover - pydantic always reports at least one
                raise
            raise ValueError("invalid MCP auth settings: " + "; ".join(problems)) from None
