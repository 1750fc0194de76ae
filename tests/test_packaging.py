"""The package people install: ``python -m build`` makes a wheel and an sdist, ``twine check
--strict`` passes them, and the wheel installed into a fresh virtualenv works from outside
the checkout, alone and with the extras the README's quick start installs.

The dists are built once per session; the virtualenv is made once per session. Both use pip
and the configured package index (build isolation fetches hatchling; the install fetches the
dependencies), so these tests are ``e2e``. Every subprocess is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from mcp_auth_middleware.errors import AUTHORIZATION_IN_HEADERS
from mcp_auth_middleware.testing import RecordingMCPServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PACKAGE = "mcp_auth_middleware"
NAME = "mcp-auth-middleware"
BUILD_TIMEOUT = 300.0  # python -m build, pip installs: a cold pip cache takes a while
RUN_TIMEOUT = 60.0
PYTHONS = {"3.11", "3.12", "3.13"}  # what the classifiers claim and `make test-versions` tests
#: The sdist: the library, its docs, and the test suite with what the tests run.
SDIST_TOP_LEVEL = {
    PACKAGE,
    "tests",
    "examples",
    "benchmarks",
    "docs",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",
}
NEEDS_MCP_EXTRA = {"MCPSessionPool", "MCPSessionPoolStats"}


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


def run(
    command: list[str], *, cwd: Path, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with no PYTHONPATH (nothing of the checkout leaks in); fail with its
    output if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


def source_files(directory: str) -> set[str]:
    """The checkout's ``*.py``, ``*.md`` and ``py.typed`` under ``directory``, relative to
    the root."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / directory).rglob("*")
        if p.suffix in (".py", ".md") or p.name == "py.typed"
    }


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """``python -m build``: the sdist, then the wheel built from the sdist (as pip would)."""
    out = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        cwd=out,
        timeout=BUILD_TIMEOUT,
    )
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return Dists(wheel=wheel, sdist=sdist)


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory, dists: Dists) -> Path:
    """A fresh virtualenv with the wheel installed, no extras; its python."""
    home = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(home / "env")], cwd=home)
    python = home / "env" / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "--quiet", str(dists.wheel)],
        cwd=home,
        timeout=BUILD_TIMEOUT,
    )
    return python


def test_twine_check_strict_passes_both(dists: Dists) -> None:
    done = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.wheel), str(dists.sdist)],
        cwd=dists.wheel.parent,
    )
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_holds_the_library_and_its_metadata_only(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = set(wheel.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        dist_info = metadata.removesuffix("METADATA")
        library = {n for n in names if n.startswith(f"{PACKAGE}/")}
    assert names - library == {
        f"{dist_info}{name}" for name in ("METADATA", "WHEEL", "RECORD", "licenses/LICENSE")
    }
    assert library == source_files(PACKAGE)  # every module, and py.typed
    assert f"{PACKAGE}/py.typed" in library


def test_the_wheel_metadata_is_honest(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        meta = HeaderParser().parsestr(wheel.read(metadata).decode())
    assert meta["Name"] == NAME
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.11"
    pythons = {
        c.rsplit(" :: ", 1)[1]
        for c in meta.get_all("Classifier", [])
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert pythons == PYTHONS
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in pythons
    assert {"mcp", "httpx", "fastapi"} <= set(meta.get_all("Provides-Extra", []))
    # No public repository: no invented URLs.
    assert meta.get_all("Project-URL") is None
    assert meta["Home-page"] is None
    assert meta["Description-Content-Type"] == "text/markdown"


def test_the_sdist_holds_the_library_its_docs_and_a_test_suite_that_collects(
    dists: Dists, tmp_path: Path
) -> None:
    with tarfile.open(dists.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    [unpacked] = tmp_path.iterdir()
    assert {p.name for p in unpacked.iterdir()} == SDIST_TOP_LEVEL
    for directory in (PACKAGE, "tests", "examples", "benchmarks"):
        shipped = {
            p.relative_to(unpacked).as_posix()
            for p in (unpacked / directory).rglob("*")
            if p.is_file()
        }
        assert shipped == source_files(directory), directory
    assert (unpacked / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
    # Everything the tests import is there (examples, benchmarks): the suite collects.
    done = run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked,
    )
    assert re.search(r"^\d+(/\d+)? tests collected", done.stdout, re.MULTILINE), done.stdout


#: Run in the fresh virtualenv, from a directory outside the checkout.
PROBE = f"""
import importlib, importlib.util, json, pathlib, pkgutil, sys
import {PACKAGE} as package
missing = {{}}
for name in package.__all__:
    try:
        getattr(package, name)
    except ImportError as error:
        missing[name] = error.name
modules = sorted(m.name for m in pkgutil.walk_packages(package.__path__, "{PACKAGE}."))
print(json.dumps({{
    "file": package.__file__,
    "prefix": sys.prefix,
    "typed": (pathlib.Path(package.__file__).parent / "py.typed").is_file(),
    "missing": missing,
    "modules": modules,
    "importable": [n for n in ("examples", "tests", "benchmarks") if importlib.util.find_spec(n)],
}}))
"""


def probe(python: Path, cwd: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run([str(python), "-c", PROBE], cwd=cwd).stdout)
    return result


def test_the_installed_wheel_imports_alone_and_exposes_only_the_library(
    venv: Path, tmp_path: Path
) -> None:
    seen = probe(venv, tmp_path)
    assert Path(seen["file"]).is_relative_to(seen["prefix"])  # the installed copy
    assert seen["typed"]
    assert seen["importable"] == []  # no examples, tests or benchmarks top-level packages
    # Without extras, only the session pool (the `mcp` extra) is missing.
    assert set(seen["missing"]) == NEEDS_MCP_EXTRA, seen["missing"]
    assert set(seen["missing"].values()) <= {"httpx2", "mcp"}
    modules = {
        m.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for m in source_files(PACKAGE)
        if m.endswith(".py")
    }
    # Walking a package imports it: the testing kit's needs its extra, so its modules stay
    # unlisted here (and it says which extra, as test_testing_kit checks).
    kit = f"{PACKAGE}.testing."
    assert {PACKAGE, *seen["modules"]} == {m for m in modules if not m.startswith(kit)}


def test_a_type_checker_reads_the_installed_packages_types(venv: Path, tmp_path: Path) -> None:
    """PEP 561: mypy, pointed at the virtualenv, types the installed package from its own
    annotations (``py.typed``): it finds the one deliberate error, and nothing else."""
    (tmp_path / "uses.py").write_text(
        "from mcp_auth_middleware import MCPCredentials, current_credentials\n"
        "creds: MCPCredentials = current_credentials()\n"
        "wrong: str = len(creds)\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    mypy += ["--python-executable", str(venv), "--config-file", "", "uses.py"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    done = subprocess.run(
        mypy, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, done.stdout
    assert errors[0].startswith("uses.py:3: error: Incompatible types in assignment"), errors


def test_the_editable_install_exposes_only_the_library(tmp_path: Path) -> None:
    """``pip install -e .`` (``make install``) maps the package to the checkout through an
    import hook, never the repository root: from elsewhere, ``examples`` is not a package."""
    seen = probe(Path(sys.executable), tmp_path)
    assert Path(seen["file"]).is_relative_to(ROOT)
    assert seen["importable"] == []


def _readme_install_command() -> list[str]:
    [line] = [ln for ln in README.read_text().splitlines() if ln.startswith("pip install '")]
    return line.split()


def _readme_block(after: str, language: str) -> str:
    text = README.read_text()
    section = text[text.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"no {language} block after {after!r}"
    return match.group(1)


def test_the_readme_quick_start_runs_as_written(venv: Path, dists: Dists, tmp_path: Path) -> None:
    """The README's install line (the wheel for the name) and its ``app.py``, under uvicorn
    in the virtualenv; a real MCP server that knows one token; the README's curl request."""
    install = _readme_install_command()
    assert install[:2] == ["pip", "install"]
    install[2] = install[2].strip("'").replace(NAME, str(dists.wheel))
    run([str(venv), "-m", *install], cwd=tmp_path, timeout=BUILD_TIMEOUT)
    assert probe(venv, tmp_path)["missing"] == {}  # the extras complete the public API
    (tmp_path / "app.py").write_text(_readme_block("## FastAPI quick start", "python"))
    curl = _readme_block("Run it and call it", "sh")
    refused_body = json.loads(re.search(r"-d '(.*)'", curl).group(1))  # type: ignore[union-attr]

    mcp = RecordingMCPServer({"tok-readme": "alice"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # a request waits in the backlog until uvicorn is up
    uvicorn = [str(venv.parent / "uvicorn"), "app:app", "--fd", str(sock.fileno())]
    log = (tmp_path / "uvicorn.log").open("w")
    server = subprocess.Popen(
        [*uvicorn, "--log-level", "warning"],
        cwd=tmp_path,
        pass_fds=[sock.fileno()],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with mcp.running() as endpoint:
            tool = {"type": "mcp", "server_url": endpoint, "server_label": "demo"}
            tool["authorization"] = "tok-readme"
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            with httpx.Client(base_url=base, timeout=RUN_TIMEOUT) as c:
                ok = c.post(
                    "/v1/responses", json={"tools": [tool | {"authorization": "tok-readme"}]}
                )
                refused = c.post("/v1/responses", json=refused_body)
    finally:
        server.terminate()
        server.wait(timeout=10)
        sock.close()
        log.close()
    output = (tmp_path / "uvicorn.log").read_text()
    assert ok.status_code == 200, output
    assert ok.json() == {
        "output": [{"server_label": "demo", "tools": ["whoami"], "authenticated": True}]
    }
    assert mcp.rejected == []  # the MCP server got the caller's token, and only that
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == AUTHORIZATION_IN_HEADERS
