"""Rejections: their codes, messages and the OpenAI-style JSON answer.

Messages are constants so that tests (ours and yours) can import and assert on them. None of
them ever includes a credential or a raw header value.
"""

from __future__ import annotations

import json
from typing import Final

__all__ = [
    "AMBIGUOUS_PROVIDER_DATA",
    "AUTHORIZATION_IN_HEADERS",
    "AUTHORIZATION_IN_PROVIDER_DATA",
    "BODY_TOO_LARGE",
    "CONFLICTING_CREDENTIALS",
    "INVALID_AUTHORIZATION",
    "INVALID_BODY",
    "INVALID_CONNECTOR_ID",
    "INVALID_CONTENT_LENGTH",
    "INVALID_HEADER",
    "INVALID_HEADERS",
    "INVALID_PROVIDER_DATA",
    "INVALID_SERVER_URL",
    "MESSAGES",
    "TOO_MANY_TOOLS",
    "UNSUPPORTED_CHARSET",
    "UNSUPPORTED_CONTENT_ENCODING",
    "CredentialRejected",
    "CredentialSourceError",
    "error_body",
]

AUTHORIZATION_IN_HEADERS: Final = "authorization_in_headers"
INVALID_AUTHORIZATION: Final = "invalid_authorization"
CONFLICTING_CREDENTIALS: Final = "conflicting_credentials"
INVALID_PROVIDER_DATA: Final = "invalid_provider_data"
AUTHORIZATION_IN_PROVIDER_DATA: Final = "authorization_in_provider_data"
INVALID_SERVER_URL: Final = "invalid_server_url"
BODY_TOO_LARGE: Final = "body_too_large"
INVALID_BODY: Final = "invalid_body"
INVALID_HEADERS: Final = "invalid_headers"
TOO_MANY_TOOLS: Final = "too_many_tools"
INVALID_CONTENT_LENGTH: Final = "invalid_content_length"
UNSUPPORTED_CONTENT_ENCODING: Final = "unsupported_content_encoding"
UNSUPPORTED_CHARSET: Final = "unsupported_charset"
AMBIGUOUS_PROVIDER_DATA: Final = "ambiguous_provider_data"
INVALID_CONNECTOR_ID: Final = "invalid_connector_id"
#: ``invalid_headers`` for a header that may not be sent (its message, not a code of its own).
INVALID_HEADER: Final = "Invalid '{param}': {rule}"

#: Message templates by code; ``{param}`` is the offending field. ``{limit}`` and ``{items}``
#: are limits, filled in by whoever raises (``CredentialRejected(..., message=...)``).
MESSAGES: Final[dict[str, str]] = {
    AUTHORIZATION_IN_HEADERS: (
        "Do not put an Authorization header in '{param}': pass the MCP server's token in the "
        "tool's 'authorization' parameter instead."
    ),
    INVALID_AUTHORIZATION: (
        "Invalid '{param}': expected a token (or 'Bearer <token>') of at most 8192 printable "
        "ASCII characters without whitespace."
    ),
    CONFLICTING_CREDENTIALS: (
        "Invalid '{param}': another credential in this request names the same MCP server "
        "with a different token."
    ),
    INVALID_PROVIDER_DATA: (
        "Invalid '{param}': expected a JSON object whose 'mcp_headers' maps absolute server "
        "URLs to objects of header names to string values."
    ),
    AUTHORIZATION_IN_PROVIDER_DATA: (
        "Credentials in '{param}' are no longer accepted: pass the MCP server's token in the "
        "tool's 'authorization' parameter instead."
    ),
    INVALID_SERVER_URL: "Invalid '{param}': expected an absolute http(s) URL.",
    BODY_TOO_LARGE: "Request body too large: the limit is {limit} bytes.",
    INVALID_BODY: (
        "The request body cannot be read the same way by every JSON parser: send strict "
        "UTF-8 JSON (no NaN or Infinity, no byte-order mark, no integer of thousands of "
        "digits, no nesting hundreds of levels deep)."
    ),
    INVALID_HEADERS: "Invalid '{param}': a tool's headers may hold at most {limit} bytes of JSON.",
    TOO_MANY_TOOLS: (
        "Too many tools: at most {limit} MCP tools and {items} tools in all per request."
    ),
    INVALID_CONTENT_LENGTH: "Invalid 'Content-Length': expected one decimal number.",
    UNSUPPORTED_CONTENT_ENCODING: (
        "Unsupported 'Content-Encoding': send the request body uncompressed."
    ),
    INVALID_CONNECTOR_ID: "Invalid '{param}': expected 1 to 256 visible ASCII characters.",
    AMBIGUOUS_PROVIDER_DATA: (
        "Ambiguous '{param}': send one provider-data header, once (it has an old and a new "
        "name; this request carries more than one)."
    ),
    UNSUPPORTED_CHARSET: (
        "Unsupported charset in 'Content-Type': send the request body in UTF-8 (or UTF-16 "
        "or UTF-32)."
    ),
}


class CredentialRejected(Exception):
    """Raised by a credential source to refuse the request with an OpenAI-style error.

    ``code`` is one of this module's codes (or a custom source's own), ``param`` the field or
    header at fault. Never put a credential in either: they are sent to the client and logged.
    """

    def __init__(
        self,
        code: str,
        param: str,
        *,
        status: int = 400,
        message: str | None = None,
        source: str | None = None,
    ) -> None:
        self.code = code
        self.param = param
        self.status = status
        self.source = source
        self.message = message or MESSAGES.get(code, "Invalid '{param}'.").format(param=param)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"CredentialRejected(code={self.code!r}, param={self.param!r}, status={self.status})"


def error_body(
    message: str, *, code: str, param: str | None, type_: str = "invalid_request_error"
) -> bytes:
    """The OpenAI-style error document, as bytes."""
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        separators=(",", ":"),
    ).encode()


class CredentialSourceError(RuntimeError):
    """A custom credential source failed with an exception other than
    :class:`CredentialRejected`. It names the source and the exception's type only: the
    original message, traceback and locals (which may quote what a vault answered) are not
    kept. The request fails as any server error does."""

    def __init__(self, source: str, error: str) -> None:
        super().__init__(f"credential source {source!r} failed ({error})")
        self.source = source
        self.error = error
