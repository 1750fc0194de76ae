"""What a token and an extra header must look like before anything sends them.

Every credential passes these checks when it is made, whichever source made it: a token or a
header value that reaches an HTTP client could otherwise split or inject a header, and the
client's refusal would quote it in an error message.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Final

__all__ = [
    "HEADER_RULE",
    "MAX_TOKEN_LENGTH",
    "RESERVED_HEADERS",
    "check_extra_header",
    "check_token",
    "is_authorization",
    "is_header_name",
]

#: Longest accepted ``authorization`` value (the token with any ``Bearer`` prefix).
MAX_TOKEN_LENGTH: Final = 8192

#: Header names a caller may not set for an MCP server: framing, hop-by-hop and the MCP
#: transport's own session headers, which belong to the client library.
RESERVED_HEADERS: Final = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "host",
        "keep-alive",
        "mcp-protocol-version",
        "mcp-session-id",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: What an extra header must be, in words (errors quote it; it names no value).
HEADER_RULE: Final = (
    "expected an RFC 9110 header name with a value of visible ASCII characters; framing, "
    "hop-by-hop and MCP session headers (Host, Content-Length, Transfer-Encoding, "
    "Connection, Mcp-Session-Id and the like) may not be set"
)

_LONGEST_LOOK_ALIKE: Final = 32
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Visible ASCII, space and tab inside (RFC 9110 field-value, no obs-text): no CR, LF or NUL.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?|")


def check_token(value: Any, *, require_bearer: bool) -> str | None:
    """The bare token of an ``authorization`` value, or ``None`` if it is not acceptable.

    ``Bearer <token>`` (scheme in any case, one or more spaces) has its prefix stripped;
    with ``require_bearer`` nothing else is accepted. The token must be 1 to 8192 printable
    ASCII characters without whitespace: anything else could split or inject a header.
    """
    if type(value) is not str or len(value) > MAX_TOKEN_LENGTH:
        return None
    if " " in value:  # a scheme, then the token
        if value[:7].lower() != "bearer ":
            return None
        token = value[7:].lstrip(" ")
        if " " in token:
            return None
    elif require_bearer or (len(value) == 6 and value.lower() == "bearer"):
        return None  # no scheme where one is required, or a scheme with no token
    else:
        token = value
    # isprintable() on ASCII admits 0x20-0x7E: with no space, exactly the visible characters.
    return token if token and token.isascii() and token.isprintable() else None


def is_authorization(name: str) -> bool:
    """Whether a header name is ``Authorization``: any case, surrounding whitespace, and the
    look-alikes that case mapping or NFKC turn into it (full-width letters, the dotless i)."""
    name = name.strip()
    if name.casefold() == "authorization":
        return True
    # No HTTP stack sends a look-alike as Authorization, but no honest caller writes one.
    # NFKC maps no character to nothing and composes none into ASCII, so a name much longer
    # than "authorization" cannot become it; bounding it also bounds NFKC's cost, which
    # grows with the square of a run of combining marks.
    if name.isascii() or len(name) > _LONGEST_LOOK_ALIKE:
        return False
    return (
        unicodedata.normalize("NFKC", name).strip().casefold().replace("\u0131", "i")
        == "authorization"
    )


def is_header_name(name: Any) -> bool:
    """Whether ``name`` is an RFC 9110 field name (a token): safe to quote in an error."""
    return isinstance(name, str) and _HEADER_NAME.fullmatch(name) is not None


def check_extra_header(name: Any, value: Any) -> bool:
    """Whether an extra (non-auth) header is one we are willing to send to an MCP server:
    an RFC 9110 name that is not framing, hop-by-hop or MCP session state, and a value of
    visible ASCII (inner spaces and tabs allowed)."""
    return (
        isinstance(name, str)
        and isinstance(value, str)
        and _HEADER_NAME.fullmatch(name) is not None
        and name.lower() not in RESERVED_HEADERS
        and name.lower() != "authorization"
        and _HEADER_VALUE.fullmatch(value) is not None
    )
