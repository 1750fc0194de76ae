"""FastAPI dependency: hand a handler the request's credentials.

.. code-block:: python

    from mcp_auth_middleware.fastapi import MCPCredentialsDep

    @app.post("/v1/responses")
    async def create(body: dict, credentials: MCPCredentialsDep) -> dict:
        cred = credentials.for_server("https://mcp.example.com/mcp")
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from mcp_auth_middleware.context import current_credentials
from mcp_auth_middleware.credentials import MCPCredentials

__all__ = ["MCPCredentialsDep", "get_mcp_credentials"]


async def get_mcp_credentials() -> MCPCredentials:
    """The current request's credentials (empty when the middleware read none).

    ``async`` on purpose: FastAPI runs sync dependencies in a worker thread.
    """
    return current_credentials()


#: ``credentials: MCPCredentialsDep`` in a path operation's parameters.
MCPCredentialsDep = Annotated[MCPCredentials, Depends(get_mcp_credentials)]
