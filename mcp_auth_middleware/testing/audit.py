"""Capture structlog events (the middleware's audit events among them) as plain dicts.

Each captured event is ``{"event": ..., "timestamp": ..., "level": ..., "logger": ...,
**fields}``: the timestamp ISO 8601 in UTC, the level as the method that logged it
(``info``, ``warning``), the logger the name given to ``structlog.get_logger(name)``
(``"mcp_auth_middleware.audit"`` for the audit events). The same shape, one JSON object per
line, is what ``examples/demo.py --audit-log PATH`` writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any

import structlog

from mcp_auth_middleware.audit import AUDIT_LOGGER, CREDENTIAL_REJECTED, CREDENTIAL_RESOLVED

__all__ = ["AuditLog", "capture_audit", "write_json_lines"]

Event = dict[str, Any]


class AuditLog(list[Event]):
    """The captured events, in order; a list with a few filters."""

    def named(self, event: str) -> list[Event]:
        """The events called ``event`` (``"mcp_credential_resolved"``, ...)."""
        return [e for e in self if e.get("event") == event]

    def of_logger(self, logger: str = AUDIT_LOGGER) -> list[Event]:
        """The events of one logger (the audit logger by default)."""
        return [e for e in self if e.get("logger") == logger]

    @property
    def resolved(self) -> list[Event]:
        """``mcp_credential_resolved`` events: one per server credential a request carried."""
        return self.named(CREDENTIAL_RESOLVED)

    @property
    def rejected(self) -> list[Event]:
        """``mcp_credential_rejected`` events: one per refused request."""
        return self.named(CREDENTIAL_REJECTED)


class _NamedLogger:
    """What the capture's logger factory makes: only a name (no event reaches it)."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name


def _named_logger(*args: Any) -> _NamedLogger:
    return _NamedLogger(args[0] if args and isinstance(args[0], str) else None)


def _add_logger_name(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict.setdefault("logger", getattr(logger, "name", None))
    return event_dict


def _keys_first(keys: tuple[str, ...]) -> Any:
    def order(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        head = {k: event_dict.pop(k) for k in keys if k in event_dict}
        return {**head, **event_dict}

    return order


@contextmanager
def capture_audit() -> Iterator[AuditLog]:
    """Capture every structlog event emitted while the block runs (from any thread).

    structlog's configuration is replaced meanwhile (the events are kept, not printed) and
    restored afterwards. Loggers that your code bound and cached before the block
    (``cache_logger_on_first_use=True``) keep their old configuration and are not captured;
    the middleware's own loggers are never cached by it.
    """
    log = AuditLog()

    def keep(
        logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        log.append(dict(event_dict))
        raise structlog.DropEvent

    old = structlog.get_config()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _keys_first(("event", "timestamp", "level", "logger")),
            keep,
        ],
        logger_factory=_named_logger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=False,
    )
    try:
        yield log
    finally:
        structlog.configure(**old)


def write_json_lines(events: list[Event], out: IO[str]) -> None:
    """Write ``events`` as JSON lines (one object per line, keys in capture order)."""
    for event in events:
        out.write(json.dumps(event, default=str) + "\n")
