"""Which ``mcp`` SDK is installed, for the parts of this library that need its 2.x API.

``MCPBearerAuth`` works with both majors (1.x's client uses httpx, 2.x's httpx2);
``MCPSessionPool`` is written for 2.x (httpx2 clients, ``mcp.MCPError``) and refuses to
import on 1.x with :func:`mcp2_required`'s message rather than failing later.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["MCP2_REQUIREMENT", "installed_mcp_version", "mcp2_required"]

MCP2_REQUIREMENT = "mcp>=2.3"


def installed_mcp_version() -> str | None:
    """The installed ``mcp`` distribution's version, or ``None`` when it is not installed."""
    try:
        return metadata.version("mcp")
    except metadata.PackageNotFoundError:
        return None


def mcp2_required(what: str, cause: ImportError) -> ImportError:
    """The error to raise when ``what`` cannot import its 2.x-only dependencies."""
    version = installed_mcp_version()
    if version is None:
        found = "mcp is not installed"
    elif version.split(".", 1)[0] == "1":
        found = (
            f"mcp {version} is installed; with mcp 1.x, pass MCPBearerAuth() as the auth of "
            "the SDK's httpx client instead"
        )
    else:
        found = f"mcp {version} is installed, but {cause.name or cause} is missing"
    return ImportError(
        f"{what} needs the mcp SDK 2.x ({MCP2_REQUIREMENT} and httpx2: "
        f"pip install 'mcp-auth-middleware[mcp]'); {found}",
        name=cause.name,
    )
