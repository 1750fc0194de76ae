"""MCP session reuse through the example gateway: ``MCPSessionPool`` vs a new session per request.

Four processes on 127.0.0.1: the testing kit's recording MCP server, the gateway
(``examples.gateway``) twice, with ``reuse_sessions=True`` and ``False``, and this one, the
load client (``httpx``). A measured call is ``POST /v1/tool-runtime/invoke`` of ``whoami``
with the caller's token: one MCP ``tools/call``, on the caller's pooled session or on a
session opened (``initialize``, ``initialized``, GET stream) and closed (DELETE) for it.
Every answer is checked: each client must be answered as its own user.

Per round and per gateway (the order alternates round by round): one client calling in a
loop for ``--duration`` s (latency median and p95, calls/s), then ``--clients`` clients at
once, spread over four users (calls/s, and the CPU time the gateway and the MCP server
each spent per call, from ``/proc``). The table shows medians over rounds; "gain" is how many
times better reuse does (per-request / reuse for times, reuse / per-request for rates).
Before the rounds, each gateway is warmed up (reuse: every user's session opened).

Run: ``python benchmarks/bench_sessions.py [--rounds 5] [--duration 2] [--clients 16]``,
or ``--quick``. Bounded: at most ``MAX_CALLS`` calls a run, ``TIMEOUT`` s a call, and the
whole run at most ``TOTAL_LIMIT`` s (``QUICK_LIMIT`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

ROOT: Final = Path(__file__).resolve().parent.parent
USERS: Final = {f"bench-token-{i}-0123456789": f"user{i}" for i in range(4)}
TOOL: Final = "whoami"
INVOKE_PATH: Final = "/v1/tool-runtime/invoke"
STATS_PATH: Final = "/bench/pool-stats"
MAX_CALLS: Final = 20_000  # per run
TIMEOUT: Final = 10.0  # per call
START_TIMEOUT: Final = 30.0  # per server process
TOTAL_LIMIT: Final = 150.0
QUICK_LIMIT: Final = 40.0
MODES: Final = {"reuse": True, "per-request": False}
_PROC: Final = Path("/proc")


# --- the server processes --------------------------------------------------------------


def serve(kind: str, mcp_url: str = "", mode: str = "reuse") -> None:
    """Child process: the MCP server (``mcp``) or a gateway in ``mode`` to ``mcp_url``, until
    stdin closes; its base URL is the first line it prints."""
    import structlog
    from fastapi import FastAPI

    from examples.gateway import create_app
    from mcp_auth_middleware import MCPAuthConfig
    from mcp_auth_middleware.testing import RecordingMCPServer
    from mcp_auth_middleware.testing import serve as serve_app

    # Audit and session events stay on (as deployed) but are filtered out, not printed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    for noisy in ("mcp", "httpx", "httpx2", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    app: Any
    if kind == "mcp":
        app = RecordingMCPServer(USERS).streamable_http_app()
    else:
        gateway: FastAPI = create_app(
            MCPAuthConfig(), tool_servers={TOOL: mcp_url}, reuse_sessions=MODES[mode]
        )

        @gateway.get(STATS_PATH)
        def pool_stats() -> dict[str, int]:
            pool = gateway.state.mcp_sessions.pool
            return {} if pool is None else dataclasses.asdict(pool.stats)

        app = gateway
    with serve_app(app) as base_url:
        print(base_url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or exits)


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux; 0 elsewhere)."""
        stat = _PROC / str(self.process.pid) / "stat"
        if not stat.exists():
            return 0.0
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start(stack: AsyncExitStack, *args: str) -> Server:
    """Start ``serve`` in a child process; it stops when its stdin closes."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    stack.push_async_callback(stop, process)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
    if not line.startswith(b"http://127.0.0.1:"):
        raise RuntimeError(f"server {args} did not start")
    return Server(process, line.decode().strip())


async def stop(process: asyncio.subprocess.Process) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:  # pragma: no cover - a stuck shutdown
        process.kill()
        await process.wait()


# --- the load ----------------------------------------------------------------------------


@dataclass
class Run:
    latencies: list[float]  # seconds, every call
    elapsed: float
    gateway_cpu: float  # seconds
    mcp_cpu: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]


def _tokens(clients: int) -> Iterator[str]:
    users = list(USERS)
    for i in range(clients):
        yield users[i % len(users)]


async def load(
    client: httpx.AsyncClient, gateway: Server, mcp: Server, clients: int, duration: float
) -> Run:
    """``clients`` loops calling the tool through ``gateway`` for ``duration`` seconds."""
    latencies: list[float] = []
    invoke = f"{gateway.url}{INVOKE_PATH}"

    async def loop(token: str) -> None:
        body = {"tool_name": TOOL, "kwargs": {}, "authorization": token}
        while time.perf_counter() < deadline and len(latencies) < MAX_CALLS:
            sent = time.perf_counter()
            response = await client.post(invoke, json=body)
            took = time.perf_counter() - sent
            response.raise_for_status()
            answer = response.json()
            if answer["content"] != USERS[token]:
                raise RuntimeError(f"{USERS[token]} was answered {answer}")
            latencies.append(took)

    cpu = gateway.cpu_seconds(), mcp.cpu_seconds()
    started = time.perf_counter()
    deadline = started + duration
    async with asyncio.TaskGroup() as tasks:
        for token in _tokens(clients):
            tasks.create_task(loop(token))
    elapsed = time.perf_counter() - started
    return Run(latencies, elapsed, gateway.cpu_seconds() - cpu[0], mcp.cpu_seconds() - cpu[1])


async def bench(rounds: int, duration: float, clients: int) -> None:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with AsyncExitStack() as stack:
        started = time.perf_counter()
        mcp = await start(stack, "mcp")
        starting = [start(stack, "gateway", f"{mcp.url}/mcp", mode) for mode in MODES]
        gateways = dict(zip(MODES, await asyncio.gather(*starting), strict=True))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT, limits=limits))
        for gateway in gateways.values():  # warm-up: imports, connections, pooled sessions
            await load(client, gateway, mcp, clients, min(duration, 1.0) / 2)
        print(f"servers up and warm in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        stats_url = f"{gateways['reuse'].url}{STATS_PATH}"
        warm = (await client.get(stats_url)).json()

        single: dict[str, list[Run]] = {mode: [] for mode in MODES}
        many: dict[str, list[Run]] = {mode: [] for mode in MODES}
        for r in range(rounds):
            order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
            for mode in order:
                single[mode].append(await load(client, gateways[mode], mcp, 1, duration))
                many[mode].append(await load(client, gateways[mode], mcp, clients, duration))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        stats = (await client.get(stats_url)).json()
        calls = sum(len(run.latencies) for runs in (single, many) for run in runs["reuse"])

    def median(runs: list[Run], figure: str) -> float:
        values = {
            "median": [r.percentile(50) * 1e3 for r in runs],
            "p95": [r.percentile(95) * 1e3 for r in runs],
            "rate": [r.rate for r in runs],
            "gateway_cpu": [r.gateway_cpu / len(r.latencies) * 1e3 for r in runs],
            "mcp_cpu": [r.mcp_cpu / len(r.latencies) * 1e3 for r in runs],
        }[figure]
        return statistics.median(values)

    rows = [
        ("latency median, 1 client (ms)", single, "median", False),
        ("latency p95, 1 client (ms)", single, "p95", False),
        ("calls/s, 1 client", single, "rate", True),
        (f"calls/s, {clients} clients", many, "rate", True),
        (f"latency median, {clients} clients (ms)", many, "median", False),
        (f"gateway CPU per call, {clients} clients (ms)", many, "gateway_cpu", False),
        (f"MCP server CPU per call, {clients} clients (ms)", many, "mcp_cpu", False),
    ]
    print(
        f"\nMCP tool call through the gateway, 127.0.0.1, {os.cpu_count()} CPUs: "
        f"medians of {rounds} rounds x {duration:g} s"
    )
    print(f"{'':40} {'reuse':>9} {'per-request':>12} {'gain':>7}")
    for label, runs, figure, higher_is_better in rows:
        reuse, fresh = median(runs["reuse"], figure), median(runs["per-request"], figure)
        gain = reuse / fresh if higher_is_better else fresh / reuse
        print(f"{label:40} {reuse:9.1f} {fresh:12.1f} {gain:6.1f}x")
    print(
        f"reuse: {warm['opened']} MCP sessions opened in the warm-up, "
        f"{stats['opened'] - warm['opened']} during the {calls} measured calls "
        f"(per-request: one per call)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s (< 30 s)")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return
    if args.quick:
        args.rounds, args.duration = 3, 1.0
    limit = QUICK_LIMIT if args.quick else TOTAL_LIMIT
    planned = 2 * len(MODES) * args.rounds * args.duration  # + start-up and warm-up
    if not (args.rounds >= 1 and args.duration > 0 and 1 <= args.clients <= 64):
        parser.error("--rounds and --duration must be positive, --clients 1..64")
    if planned > limit - 20:
        parser.error(f"{planned:g} s of runs planned; at most {limit - 20:g} s")
    asyncio.run(asyncio.wait_for(bench(args.rounds, args.duration, args.clients), limit))


if __name__ == "__main__":
    main()
