"""MCP session reuse through the example gateway: ``MCPSessionPool`` vs a new session per
request, and the pooled call against its floor.

Four processes on 127.0.0.1: the testing kit's recording MCP server, the gateway
(``examples.gateway``) twice, with ``reuse_sessions=True`` and ``False``, and this one, the
load client (``httpx``). A measured call is ``POST /v1/tool-runtime/invoke`` of ``whoami``
with the caller's token: one MCP ``tools/call``, on the caller's pooled session or on a
session opened (``initialize``, ``initialized``, GET stream) and closed (DELETE) for it.
Every answer is checked: each client must be answered as its own user.

The floor of a pooled call is what it cannot avoid: the same ``tools/call`` on a warm session
straight from this process to the MCP server (the ``mcp`` SDK's client, one session per user:
"direct"), plus one hop through the same gateway stack that makes no MCP call
(``POST /bench/hop`` on the reuse gateway: the middleware reads the same body, the route
binds the credential and answers: "hop"). "pooled / floor" is the median pooled call over
(direct + hop), per round; the target is at most 1.15x.

Per round (the order alternates round by round): one client for 2 x ``--duration`` s making
one call of each kind in turn (pooled, per-request, direct, hop: latency median and p95,
calls/s), then, for each kind, ``--clients`` clients at once for ``--duration`` s, spread
over four users (calls/s, and the CPU time the gateway, the MCP server and this process each
spent per call, from ``/proc`` and ``time.process_time``). The table shows medians over
rounds; "gain" is how many times better reuse does (per-request / reuse for times, reuse /
per-request for rates).
Before the rounds, each gateway is warmed up (reuse: every user's session opened).

Run: ``python benchmarks/bench_sessions.py [--rounds 5] [--duration 2] [--clients 16]``,
or ``--quick``. Bounded: at most ``MAX_CALLS`` calls a run, ``TIMEOUT`` s a call, and the
whole run at most ``TOTAL_LIMIT`` s (``QUICK_LIMIT`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import itertools
import logging
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROOT: Final = Path(__file__).resolve().parent.parent
USERS: Final = {f"bench-token-{i}-0123456789": f"user{i}" for i in range(4)}
TOOL: Final = "whoami"
INVOKE_PATH: Final = "/v1/tool-runtime/invoke"
STATS_PATH: Final = "/bench/pool-stats"
HOP_PATH: Final = "/bench/hop"
MAX_CALLS: Final = 20_000  # per run
TIMEOUT: Final = 10.0  # per call
START_TIMEOUT: Final = 30.0  # per server process
TOTAL_LIMIT: Final = 150.0
QUICK_LIMIT: Final = 40.0
MODES: Final = {"reuse": True, "per-request": False}
FLOOR_TARGET: Final = 1.15  # pooled call / (direct call + hop)
_PROC: Final = Path("/proc")


# --- the server processes --------------------------------------------------------------


def serve(kind: str, mcp_url: str = "", mode: str = "reuse", profile: str = "") -> None:
    """Child process: the MCP server (``mcp``) or a gateway in ``mode`` to ``mcp_url``, until
    stdin closes; its base URL is the first line it prints. ``profile``: a file to write the
    cProfile statistics of the server's thread to, from start-up to shut-down."""
    import structlog
    from fastapi import FastAPI

    from examples.gateway import InvokeToolRequest, create_app
    from mcp_auth_middleware import MCPAuthConfig, current_credentials, use_credentials
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

        @gateway.post(HOP_PATH)
        async def hop(request: dict[str, Any]) -> dict[str, Any]:
            """The invoke route's way through the stack, without its MCP call."""
            InvokeToolRequest.model_validate(request)  # as FastAPI validates the invoke body
            credentials = current_credentials().bind_default(mcp_url)
            with use_credentials(credentials):
                found = current_credentials().for_server(mcp_url) is not None
            return {"content": "hop" if found else None, "error_code": None, "error_message": None}

        @gateway.get(STATS_PATH)
        def pool_stats() -> dict[str, int]:
            pool = gateway.state.mcp_sessions.pool
            return {} if pool is None else dataclasses.asdict(pool.stats)

        app = gateway
    if profile:
        app = Profiled(app, profile)
    with serve_app(app) as base_url:
        print(base_url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or exits)


class Profiled:
    """cProfile on the thread that runs the app (uvicorn's), from the lifespan's start-up to
    its shut-down; the statistics go to ``path``."""

    def __init__(self, app: Any, path: str) -> None:
        self.app, self.path, self.profiler = app, path, cProfile.Profile()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched() -> Any:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.profiler.enable()
            elif message["type"] == "lifespan.shutdown":
                self.profiler.disable()
                self.profiler.dump_stats(self.path)
            return message

        await self.app(scope, watched, send)


def where_time_goes(path: str, top: int = 14) -> None:
    """The profile's own time per package (the first directory under site-packages, the
    module of a built-in, else the file), largest first, waiting in ``epoll`` left out."""
    stats: Any = pstats.Stats(path)
    shares: Counter[str] = Counter()
    idle = 0.0
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in stats.stats.items():
        if "'poll' of 'select.epoll'" in name:
            idle += own
            continue
        if "site-packages/" in filename:
            place = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif filename == "~":  # a built-in: "{method 'send' of '_socket.socket' objects}"
            of = name.split(" of '", 1)
            module = of[1].split("'", 1)[0] if len(of) == 2 else name.split(" ")[-1]
            place = "built-in " + module.strip("{}").split(".")[0]
        else:
            place = Path(filename).parent.name + "/" + Path(filename).name
        shares[place] += own
    busy = sum(shares.values())
    print(
        f"\nwhere the reuse gateway's time went (cProfile, own time): {busy:.1f} s busy, "
        f"{idle:.1f} s waiting for the network"
    )
    for place, own in shares.most_common(top):
        print(f"  {own / busy:6.1%}  {place}")


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
    client_cpu: float = 0.0  # this process's (the load client's, or the direct SDK client's)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]


def _tokens(clients: int) -> Iterator[str]:
    users = list(USERS)
    for i in range(clients):
        yield users[i % len(users)]


Call = Callable[[str], Awaitable[None]]  # one checked call as the user of a token


def through(client: httpx.AsyncClient, url: str, tool: bool = True) -> Call:
    """A call through the gateway: ``url`` is the invoke route (or the hop, ``tool=False``)."""

    async def call(token: str) -> None:
        body = {"tool_name": TOOL, "kwargs": {}, "authorization": token}
        response = await client.post(url, json=body)
        response.raise_for_status()
        answer = response.json()
        expected = USERS[token] if tool else "hop"
        if answer["content"] != expected:
            raise RuntimeError(f"{USERS[token]} was answered {answer}")

    return call


def direct(sessions: dict[str, ClientSession]) -> Call:
    """The same ``tools/call`` on the user's warm session, straight to the MCP server."""

    async def call(token: str) -> None:
        result = await sessions[token].call_tool(TOOL, {})
        answer = (result.structured_content or {}).get("result")
        if answer != USERS[token]:
            raise RuntimeError(f"{USERS[token]} was answered {answer!r}")

    return call


async def load(
    call: Call, clients: int, duration: float, gateway: Server | None, mcp: Server
) -> Run:
    """``clients`` loops of ``call`` for ``duration`` seconds."""
    latencies: list[float] = []

    async def loop(token: str) -> None:
        while time.perf_counter() < deadline and len(latencies) < MAX_CALLS:
            sent = time.perf_counter()
            await asyncio.wait_for(call(token), TIMEOUT)
            latencies.append(time.perf_counter() - sent)

    def gateway_cpu() -> float:
        return 0.0 if gateway is None else gateway.cpu_seconds()

    cpu = gateway_cpu(), mcp.cpu_seconds(), time.process_time()
    started = time.perf_counter()
    deadline = started + duration
    async with asyncio.TaskGroup() as tasks:
        for token in _tokens(clients):
            tasks.create_task(loop(token))
    elapsed = time.perf_counter() - started
    return Run(
        latencies,
        elapsed,
        gateway_cpu() - cpu[0],
        mcp.cpu_seconds() - cpu[1],
        time.process_time() - cpu[2],
    )


async def interleaved(calls: dict[str, Call], order: list[str], duration: float) -> dict[str, Run]:
    """One client, one call of each mode in turn (``order``) for ``duration`` seconds: every
    mode's calls see the same moments of a shared machine, so their ratios hold when its
    load drifts. A mode's ``elapsed`` is the sum of its calls' times."""
    latencies: dict[str, list[float]] = {mode: [] for mode in order}
    tokens = itertools.cycle(USERS)
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline and sum(map(len, latencies.values())) < MAX_CALLS:
        token = next(tokens)
        for mode in order:
            sent = time.perf_counter()
            await asyncio.wait_for(calls[mode](token), TIMEOUT)
            latencies[mode].append(time.perf_counter() - sent)
    return {mode: Run(times, sum(times), 0.0, 0.0) for mode, times in latencies.items()}


async def open_direct(stack: AsyncExitStack, url: str) -> dict[str, ClientSession]:
    """One warm MCP session per user, from this process, with the SDK's own client."""
    sessions = {}
    for token in USERS:
        headers = {"Authorization": f"Bearer {token}"}
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers))
        streams = await stack.enter_async_context(streamable_http_client(url, http_client=http))
        session = await stack.enter_async_context(ClientSession(*streams))
        await session.initialize()
        sessions[token] = session
    return sessions


async def bench(rounds: int, duration: float, clients: int, profile: str) -> None:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with AsyncExitStack() as stack:
        started = time.perf_counter()
        mcp = await start(stack, "mcp")
        starting = [
            start(stack, "gateway", f"{mcp.url}/mcp", mode, profile if mode == "reuse" else "")
            for mode in MODES
        ]
        gateways = dict(zip(MODES, await asyncio.gather(*starting), strict=True))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=TIMEOUT, limits=limits))
        calls: dict[str, Call] = {
            m: through(client, f"{g.url}{INVOKE_PATH}") for m, g in gateways.items()
        }
        calls["direct"] = direct(await open_direct(stack, f"{mcp.url}/mcp"))
        calls["hop"] = through(client, f"{gateways['reuse'].url}{HOP_PATH}", tool=False)
        via = {**gateways, "hop": gateways["reuse"]}
        for mode, call in calls.items():  # warm-up: imports, connections, pooled sessions
            await load(call, clients, min(duration, 1.0) / 2, via.get(mode), mcp)
        print(f"servers up and warm in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        stats_url = f"{gateways['reuse'].url}{STATS_PATH}"
        warm = (await client.get(stats_url)).json()

        single: dict[str, list[Run]] = {mode: [] for mode in calls}
        many: dict[str, list[Run]] = {mode: [] for mode in calls}
        for r in range(rounds):
            order = list(calls) if r % 2 == 0 else list(reversed(calls))
            for mode, run in (await interleaved(calls, order, 2 * duration)).items():
                single[mode].append(run)
            for mode in order:
                if mode in many:
                    many[mode].append(
                        await load(calls[mode], clients, duration, via.get(mode), mcp)
                    )
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        stats = (await client.get(stats_url)).json()
        measured = sum(len(run.latencies) for runs in (single, many) for run in runs["reuse"])

    def median(runs: list[Run], figure: str) -> float:
        values = {
            "median": [r.percentile(50) * 1e3 for r in runs],
            "p95": [r.percentile(95) * 1e3 for r in runs],
            "rate": [r.rate for r in runs],
            "gateway_cpu": [r.gateway_cpu / len(r.latencies) * 1e3 for r in runs],
            "mcp_cpu": [r.mcp_cpu / len(r.latencies) * 1e3 for r in runs],
            "client_cpu": [r.client_cpu / len(r.latencies) * 1e3 for r in runs],
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
    print(f"{'':44} {'reuse':>9} {'per-request':>12} {'gain':>7} {'direct':>9}")
    for label, runs, figure, higher_is_better in rows:
        reuse, fresh = median(runs["reuse"], figure), median(runs["per-request"], figure)
        gain = reuse / fresh if higher_is_better else fresh / reuse
        straight = f"{median(runs['direct'], figure):9.1f}" if "cpu" not in figure else ""
        print(f"{label:44} {reuse:9.1f} {fresh:12.1f} {gain:6.1f}x {straight:>9}")
    print(
        f"reuse: {warm['opened']} MCP sessions opened in the warm-up, "
        f"{stats['opened'] - warm['opened']} during the {measured} measured calls "
        f"(per-request: one per call)"
    )
    # The floor, per round: the same call direct plus one hop through the gateway stack.
    ratios = []
    for pooled, plain, hop in zip(single["reuse"], single["direct"], single["hop"], strict=True):
        ratios.append(pooled.percentile(50) / (plain.percentile(50) + hop.percentile(50)))
    pooled_ms, direct_ms, hop_ms = (
        median(single[mode], "median") for mode in ("reuse", "direct", "hop")
    )
    ratio = statistics.median(ratios)
    verdict = "pass" if ratio <= FLOOR_TARGET else "miss"
    print(
        f"pooled call, 1 client: {pooled_ms:.2f} ms median; floor {direct_ms + hop_ms:.2f} ms "
        f"(direct {direct_ms:.2f} + hop {hop_ms:.2f}); pooled / floor {ratio:.2f}x "
        f"(median of per-round ratios; target <= {FLOOR_TARGET}x: {verdict})"
    )
    rate, straight_rate = median(many["reuse"], "rate"), median(many["direct"], "rate")
    print(
        f"{clients} clients: {rate:.0f} calls/s through the gateway, {straight_rate:.0f} direct "
        f"({rate / straight_rate:.2f}x)"
    )
    # The same floor in CPU time, which a shared machine's load does not inflate: the
    # gateway's CPU per pooled call against the direct client's per call (the SDK's work,
    # here in this process) plus the gateway's per hop.
    pooled_cpu = median(many["reuse"], "gateway_cpu")
    sdk_cpu, hop_cpu = median(many["direct"], "client_cpu"), median(many["hop"], "gateway_cpu")
    print(
        f"CPU, {clients} clients: the gateway {pooled_cpu:.2f} ms per pooled call; floor "
        f"{sdk_cpu + hop_cpu:.2f} ms (the SDK client {sdk_cpu:.2f} per direct call + the "
        f"gateway {hop_cpu:.2f} per hop): {pooled_cpu / (sdk_cpu + hop_cpu):.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s (< 30 s)")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        default="",
        help="profile the reuse gateway (cProfile) into PATH and say where its time went "
        "(its figures are then slower)",
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return
    if args.quick:
        args.rounds, args.duration = 3, 1.0
    limit = QUICK_LIMIT if args.quick else TOTAL_LIMIT
    planned = 6 * args.rounds * args.duration  # 6 runs a round; + start-up and warm-up
    if not (args.rounds >= 1 and args.duration > 0 and 1 <= args.clients <= 64):
        parser.error("--rounds and --duration must be positive, --clients 1..64")
    if planned > limit - 20:
        parser.error(f"{planned:g} s of runs planned; at most {limit - 20:g} s")
    profile = os.path.abspath(args.profile) if args.profile else ""
    run = bench(args.rounds, args.duration, args.clients, profile)
    asyncio.run(asyncio.wait_for(run, limit))
    if args.profile:
        where_time_goes(args.profile)


if __name__ == "__main__":
    main()
