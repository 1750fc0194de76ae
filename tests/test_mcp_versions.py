"""Both majors of the ``mcp`` SDK: ``MCPSessionPool`` works on 2.x and refuses to import on
1.x with a message that says why. (``MCPBearerAuth`` on either: ``tests/test_e2e_mcp.py``,
which ``make test-mcp1`` runs on 1.x.)"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from mcp_auth_middleware import MCPCredential, _mcp_sdk
from mcp_auth_middleware.testing.pytest_plugin import MCPServerFactory
from tests.helpers import MCP_MAJOR, MCP_VERSION, ROOT

TOKEN = "pool-version-token-0123456789"
IMPORT_POOL = "import mcp_auth_middleware.sessions"


def import_pool(pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Import the pool's module in a fresh interpreter (``pythonpath`` first on its path)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", IMPORT_POOL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused_for(version: str, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: MCPSessionPool"), done.stderr
    assert "needs the mcp SDK 2.x (mcp>=2.3 and httpx2" in last
    assert f"mcp {version} is installed" in last
    assert "MCPBearerAuth()" in last  # what to use on 1.x instead


def test_on_mcp_1x_the_pool_refuses_to_import_naming_the_version(tmp_path: Path) -> None:
    """A stand-in ``mcp`` 1.30.0 (its distribution metadata, and no ``MCPError``) ahead of the
    real one on the path: the import fails at once, with the message, not later."""
    (tmp_path / "mcp").mkdir()
    (tmp_path / "mcp" / "__init__.py").write_text("")
    dist = tmp_path / "mcp-1.30.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mcp\nVersion: 1.30.0\n")
    assert_refused_for("1.30.0", import_pool(tmp_path))


@pytest.mark.e2e
@pytest.mark.anyio
async def test_the_pool_on_the_installed_mcp(mcp_server_factory: MCPServerFactory) -> None:
    """2.x: the pool calls a real server with the credential's token. 1.x (make test-mcp1):
    importing it fails, naming the installed version."""
    if MCP_MAJOR < 2:
        assert_refused_for(MCP_VERSION, import_pool())
        return
    assert import_pool().returncode == 0
    from mcp_auth_middleware.sessions import MCPSessionPool

    server = mcp_server_factory({TOKEN: "alice"})
    credential = MCPCredential(token=TOKEN, source="body", server_url=server.url)
    async with MCPSessionPool() as pool:
        result = await pool.call_tool(server.url, "whoami", credential=credential)
    assert (result.structured_content or {})["result"] == "alice"


@pytest.mark.parametrize(
    ("installed", "says"),
    [
        (None, "mcp is not installed"),
        ("1.30.0", "mcp 1.30.0 is installed; with mcp 1.x, pass MCPBearerAuth()"),
        ("2.3.0", "mcp 2.3.0 is installed, but httpx2 is missing"),
    ],
    ids=["absent", "1.x", "2.x-missing-a-dependency"],
)
def test_the_refusal_says_what_is_installed_and_what_is_needed(
    monkeypatch: pytest.MonkeyPatch, installed: str | None, says: str
) -> None:
    """The message of the pool's import refusal, for each state of the installation (in
    process: the child-process tests above cover the import itself)."""

    def version(name: str) -> str:
        if installed is None:
            raise metadata.PackageNotFoundError(name)
        return installed

    monkeypatch.setattr(metadata, "version", version)  # the module _mcp_sdk reads it from
    error = _mcp_sdk.mcp2_required("MCPSessionPool", ImportError("no httpx2", name="httpx2"))
    assert says in str(error)
    assert "mcp>=2.3" in str(error)
    assert error.name == "httpx2"
