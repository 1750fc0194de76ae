"""Soak: many users at once through the real gateway to the real MCP server, over uvicorn.

The gateway (``examples.gateway_app:create_gateway``, i.e. ``examples.gateway.create_app``
with ``MCP_AUTH_SERVER_HEADERS=true``) runs in its own process group under
``python -m uvicorn ... --factory --host 127.0.0.1 --port <free>`` (``--workers N`` when
asked), so its resident memory and CPU time are measured alone (psutil). The MCP server
(the testing kit's ``RecordingMCPServer``, whose ``whoami`` tool records the user of every
call) runs under uvicorn in a thread of this process, behind a recorder that notes, for every
HTTP request it gets, the user of its bearer token and the user that opened its MCP session.

``concurrency`` client loops share one keep-alive connection pool; loop ``k`` sends as the
users ``u`` with ``u % concurrency == k``, so the requests in flight at any moment belong to
distinct users (when ``users >= concurrency``). A share of requests (``--reconnect-share``)
says ``Connection: close``, so users move between connections and, with ``--workers``,
between worker processes. The gateway's MCP session pool is left at its default unless
``--reuse-sessions on|off``. Every user sends, in a seeded random mix:

* valid requests, answered 200 with one ``mcp_call`` whose ``output`` must be the user's own
  name: the token in ``tools[].authorization`` (bare or ``Bearer``), in the provider-data
  header's ``mcp_headers`` (with an extra ``X-Soak-User`` header), in
  ``X-MCP-whoami-Authorization``, or in the body / server header *and* an unknown decoy token
  in provider data (precedence: the decoy must never be used); a share of them streamed (SSE);
* ``--malformed-share`` malformed ones, which must get 400 with the reference's code: Authorization
  in ``tools[].headers``, CR/LF in a body or provider-data token, bad provider data, an
  oversize token, two tools for one server with different tokens, a duplicated or non-Bearer
  ``X-MCP-*-Authorization``.

Violations (exit status 1): a request not sent within ``--seconds``, a transport error, any
5xx, a malformed request not refused with its code, a valid one refused or not answered with
its own user, a ``whoami`` call as anyone else or a different count of calls per user than of
answers, an MCP request carrying no token, an unknown (decoy) token, another user's token on a
session or another user's extra header, a token in the gateway's log or in an answer,
resident-memory growth after warm-up over ``--max-rss-growth-mib``, a worker that served
nothing (``--workers`` > 1). The results table says which code it ran (commit, ``+dirty``, a
digest of the library's and the examples' sources); ``--json`` writes every figure.

``tests/test_soak.py`` runs it and checks every figure (``make soak``). By hand, from the
repository root (everything on 127.0.0.1; the run stops by itself)::

    python tests/soak.py                                   # 10,000 requests, 50 users
    python tests/soak.py --workers 2 --requests 3000       # stateless across workers
    python tests/soak.py --requests 1000 --json out.json   # quick, results as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx
import psutil
from starlette.types import ASGIApp, Message, Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from examples.gateway_app import WORKER_HEADER
from mcp_auth_middleware.errors import (
    AUTHORIZATION_IN_HEADERS,
    CONFLICTING_CREDENTIALS,
    INVALID_AUTHORIZATION,
    INVALID_PROVIDER_DATA,
)
from mcp_auth_middleware.testing import RecordingMCPServer, serve

ROOT: Final = Path(__file__).resolve().parent.parent
LABEL: Final = "whoami"
PROVIDER_DATA_HEADER: Final = "X-LlamaStack-Provider-Data"
USER_HEADER: Final = "X-Soak-User"  # an extra provider-data header: must match the token's user
TOKEN_PREFIX: Final = "soaktok-"  # every token of a run starts so: found in a log = leaked
MAX_TOKEN: Final = 8192
REQUEST_TIMEOUT: Final = 30.0
STARTUP_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
SAMPLE_EVERY: Final = 0.25  # seconds between resident-memory samples
SAMPLES_KEPT: Final = 5  # examples kept per kind of violation
_TOKEN: Final = re.compile(re.escape(TOKEN_PREFIX) + r"[^\s\"',]*")

VALID_KINDS: Final = (
    "body",
    "body_bearer",
    "provider_data",
    "server_header",
    "body_over_provider_data",
    "server_header_over_provider_data",
)
#: malformed kind -> the error code it must get (with status 400)
MALFORMED: Final[Mapping[str, str]] = {
    "authorization_in_tool_headers": AUTHORIZATION_IN_HEADERS,
    "crlf_in_body_token": INVALID_AUTHORIZATION,
    "crlf_in_provider_data_token": INVALID_AUTHORIZATION,
    "bad_provider_data": INVALID_PROVIDER_DATA,
    "oversize_token": INVALID_AUTHORIZATION,
    "conflicting_tools": CONFLICTING_CREDENTIALS,
    "duplicate_server_header": INVALID_AUTHORIZATION,
    "non_bearer_server_header": INVALID_AUTHORIZATION,
}

# Runs in the gateway's process before uvicorn: die with this process (Linux), then exec.
_SHIM: Final = """\
import ctypes, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(3)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Users:
    names: tuple[str, ...]
    tokens: tuple[str, ...]
    decoys: tuple[str, ...]  # unknown to the MCP server

    @classmethod
    def make(cls, count: int) -> Users:
        return cls(
            names=tuple(f"user{i:03d}" for i in range(count)),
            tokens=tuple(f"{TOKEN_PREFIX}{i:03d}-{secrets.token_hex(12)}" for i in range(count)),
            decoys=tuple(f"{TOKEN_PREFIX}decoy-{secrets.token_hex(12)}" for _ in range(count)),
        )


@dataclass(frozen=True)
class Planned:
    index: int
    user: int
    kind: str
    stream: bool
    expect: str | None  # the error code of a malformed request; None: must be answered
    reconnect: bool = False  # ``Connection: close``: the next request gets a new connection


def make_plan(
    requests: int,
    users: int,
    malformed_share: float,
    stream_share: float,
    seed: int,
    reconnect_share: float = 0.0,
    kinds: tuple[str, ...] = VALID_KINDS,
) -> list[Planned]:
    """``requests`` requests, users in turn, exactly ``malformed_share`` of them malformed."""
    rng = random.Random(f"{seed}/plan")
    malformed = set(rng.sample(range(requests), round(requests * malformed_share)))
    bad_kinds = sorted(MALFORMED)
    turn = 0
    plan: list[Planned] = []
    for i in range(requests):
        if i in malformed:  # the malformed kinds in turn
            kind, turn = bad_kinds[turn % len(bad_kinds)], turn + 1
            planned = Planned(i, i % users, kind, False, MALFORMED[kind])
        else:
            kind = rng.choice(kinds)
            planned = Planned(i, i % users, kind, rng.random() < stream_share, None)
        if rng.random() < reconnect_share:
            planned = replace(planned, reconnect=True)
        plan.append(planned)
    return plan


def _server_header(rng: random.Random) -> str:
    return rng.choice(("X-MCP-whoami-Authorization", "x-mcp-WHOAMI-authorization"))


def build(p: Planned, users: Users, url: str) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and JSON body of one planned request (seeded by its index)."""
    rng = random.Random(p.index)
    token, decoy = users.tokens[p.user], users.decoys[p.user]
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": LABEL,
        "server_url": url,
        "require_approval": "never",
    }
    tools = [tool]
    headers = [("Content-Type", "application/json")]
    if p.reconnect:
        headers.append(("Connection", "close"))

    def provider_data(authorization: str) -> None:
        entry = {"Authorization": authorization, USER_HEADER: users.names[p.user]}
        headers.append((PROVIDER_DATA_HEADER, json.dumps({"mcp_headers": {url: entry}})))

    match p.kind:
        case "body":
            tool["authorization"] = token
        case "body_bearer":
            tool["authorization"] = f"Bearer {token}"
        case "provider_data":
            provider_data(f"Bearer {token}")
        case "server_header":
            headers.append((_server_header(rng), f"Bearer {token}"))
        case "body_over_provider_data":
            tool["authorization"] = token
            provider_data(f"Bearer {decoy}")
        case "server_header_over_provider_data":
            headers.append((_server_header(rng), f"Bearer {token}"))
            provider_data(f"Bearer {decoy}")
        case "authorization_in_tool_headers":
            name = rng.choice(("Authorization", "authorization", "AUTHORIZATION"))
            tool["headers"] = {name: f"Bearer {token}"}
        case "crlf_in_body_token":
            tool["authorization"] = token + rng.choice(("\r\nX-Injected: 1", "\n", "\r"))
        case "crlf_in_provider_data_token":
            provider_data(f"Bearer {token}\r\nX-Injected: 1")
        case "bad_provider_data":
            whole = json.dumps({"mcp_headers": {url: {"Authorization": f"Bearer {token}"}}})
            value = rng.choice(
                (
                    whole[:-2],  # not JSON
                    "[1, 2]",  # not an object
                    whole.replace(url, "/mcp"),  # not an absolute URL
                    json.dumps({"mcp_headers": {url: f"Bearer {token}"}}),  # not a map
                )
            )
            headers.append((PROVIDER_DATA_HEADER, value))
        case "oversize_token":
            tool["authorization"] = token + "x" * (MAX_TOKEN + 1 - len(token) + rng.randrange(64))
        case "conflicting_tools":
            tool["authorization"] = token
            same = rng.choice((f"{url}/", url.replace("http://", "HTTP://")))
            tools.append({**tool, "server_url": same, "authorization": decoy})
        case "duplicate_server_header":
            headers.append((_server_header(rng), f"Bearer {token}"))
            headers.append((_server_header(rng), f"Bearer {decoy}"))
        case "non_bearer_server_header":
            headers.append((_server_header(rng), rng.choice((token, f"Basic {token}"))))
        case _:  # pragma: no cover - a kind without a builder
            raise ValueError(p.kind)
    body: dict[str, Any] = {"model": "soak", "input": LABEL, "tools": tools}
    if p.stream:
        body["stream"] = True
    return headers, json.dumps(body).encode()


# --- the MCP server's record ----------------------------------------------------------------


class MCPRecorder:
    """Outer ASGI wrapper of the MCP server: whose token each HTTP request carried, and
    whether it matches the user that opened its MCP session and its ``X-Soak-User``."""

    def __init__(self, app: ASGIApp, users: Mapping[str, str]) -> None:
        self.app, self.users = app, users
        self.by_user: Counter[str] = Counter()  # user, "<none>" or "<unknown>"
        self.statuses: Counter[int] = Counter()
        self.session_owner: dict[str, str] = {}
        self.cross_user_sessions = 0
        self.cross_user_headers = 0
        self.open_streams = 0  # GET (SSE) requests not finished yet
        self.max_open_streams = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fields = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = fields.get(b"authorization")
        session = fields.get(b"mcp-session-id")
        extra_user = fields.get(USER_HEADER.lower().encode())
        if authorization is None:
            user = "<none>"
        else:
            scheme, _, token = authorization.partition(" ")
            known = self.users.get(token) if scheme.lower() == "bearer" else None
            user = known or "<unknown>"
        self.by_user[user] += 1
        if session is not None and self.session_owner.get(session, user) != user:
            self.cross_user_sessions += 1
        if extra_user is not None and extra_user != user:
            self.cross_user_headers += 1

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
                if session is None:
                    for name, value in message.get("headers", ()):
                        if name.lower() == b"mcp-session-id":
                            self.session_owner[value.decode("latin-1")] = user
            await send(message)

        stream = scope["method"] == "GET"
        self.open_streams += stream
        self.max_open_streams = max(self.max_open_streams, self.open_streams)
        try:
            await self.app(scope, receive, record)
        finally:
            self.open_streams -= stream


# --- the gateway process --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    base: str
    workers: int
    command: list[str]

    def processes(self) -> list[psutil.Process]:
        """The uvicorn process and, with ``--workers``, its worker (and helper) processes."""
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def worker_rss(self) -> list[int]:
        """Resident memory of each ``--workers`` worker process (none without workers)."""
        found = []
        for proc in self.processes()[1:]:
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(proc.cmdline()):
                    found.append(proc.memory_info().rss)
        return found

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def cpu(self) -> float:
        total = 0.0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the gateway's process group, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own group: start_new_session=True
        try:
            proc.wait(STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the supervisor
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(proc: subprocess.Popen[bytes], base: str, workers: int) -> bool:
    """Whether the gateway answers (and, with workers, all of them have answered)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # a fresh connection each time, so that any worker may take it
            answer = httpx.get(f"{base}/openapi.json", timeout=2.0)
        except httpx.HTTPError:
            time.sleep(0.1)
            continue
        if answer.status_code == 200:
            seen.add(answer.headers.get(WORKER_HEADER, "?"))
            if len(seen) >= workers:
                return True
        time.sleep(0.05)
    return proc.poll() is None and bool(seen)


@contextlib.contextmanager
def gateway(workers: int, log: Path, reuse_sessions: str = "default") -> Iterator[Gateway]:
    """The gateway under uvicorn on a free 127.0.0.1 port; killed (its group) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCP_AUTH_", "GATEWAY_"))}
    env.update(MCP_AUTH_SERVER_HEADERS="true", GATEWAY_WORKER_HEADER="1", PYTHONUNBUFFERED="1")
    if reuse_sessions != "default":
        env["GATEWAY_REUSE_SESSIONS"] = "1" if reuse_sessions == "on" else "0"
    for _attempt in range(3):  # a free port may be taken before uvicorn binds it
        port = free_port()
        command = [
            *("python", "-m", "uvicorn", "examples.gateway_app:create_gateway", "--factory"),
            *(["--workers", str(workers)] if workers > 1 else []),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning", "--timeout-graceful-shutdown", "2"),
        ]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _SHIM, str(os.getpid()), *command[1:]],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            if _wait_ready(proc, base, workers):
                yield Gateway(proc, base, workers, command)
                return
            if b"address already in use" not in log.read_bytes().lower():
                raise RuntimeError(f"the gateway did not start; its log: {log}")
        finally:
            _stop(proc)
    raise RuntimeError("no free port for the gateway after 3 attempts")


# --- the load -------------------------------------------------------------------------------


@dataclass
class Stats:
    sent: int = 0
    done: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # "<status> <code>"
    malformed_ok: int = 0
    malformed_wrong: int = 0
    answered_own: Counter[str] = field(default_factory=Counter)  # user -> answers
    answered_other: int = 0  # answered with another user's name: a cross-user token
    unanswered: int = 0  # accepted (200) without its user's answer
    valid_refused: int = 0
    five_xx: int = 0
    tokens_in_answers: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    streamed: int = 0
    latencies: list[float] = field(default_factory=list)
    worker_requests: Counter[str] = field(default_factory=Counter)
    worker_users: dict[str, set[int]] = field(default_factory=dict)
    max_users_in_flight: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def sample(self, kind: str, text: str) -> None:
        kept = self.samples.setdefault(kind, [])
        if len(kept) < SAMPLES_KEPT:
            kept.append(_TOKEN.sub("<token>", text[:300]))


def _final_response(answer: httpx.Response, stream: bool) -> Any:
    if not stream:
        return answer.json()
    final: Any = None
    for block in answer.text.split("\n\n"):
        event, data = "", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if event == "response.completed":
            final = json.loads(data)["response"]
    return final


def check_answer(p: Planned, answer: httpx.Response, users: Users, stats: Stats) -> None:
    status = answer.status_code
    stats.statuses[status] += 1
    stats.by_kind[p.kind] += 1
    worker = answer.headers.get(WORKER_HEADER, "?")
    stats.worker_requests[worker] += 1
    stats.worker_users.setdefault(worker, set()).add(p.user)
    where = f"#{p.index} {p.kind} user{p.user:03d}"
    if TOKEN_PREFIX in answer.text:
        stats.tokens_in_answers += 1
        stats.sample("token_in_answer", f"{where}: {status}")
    if status >= 500:
        stats.five_xx += 1
        stats.sample("5xx", f"{where}: {status} {answer.text}")
        return
    code = None
    if 400 <= status < 500:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            code = answer.json()["error"]["code"]
        stats.rejected[f"{status} {code}"] += 1
    if p.expect is not None:
        if status == 400 and code == p.expect:
            stats.malformed_ok += 1
        else:
            stats.malformed_wrong += 1
            stats.sample("malformed", f"{where}: {status} {code}, expected 400 {p.expect}")
        return
    if status != 200:
        stats.valid_refused += 1
        stats.sample("refused", f"{where}: {status} {code}")
        return
    stats.streamed += p.stream
    try:
        response = _final_response(answer, p.stream)
        calls = [item for item in response["output"] if item.get("type") == "mcp_call"]
        output = calls[0]["output"] if len(calls) == 1 else None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        output = None
        stats.sample("unanswered", f"{where}: unreadable answer ({type(exc).__name__})")
    own = users.names[p.user]
    if output == own:
        stats.answered_own[own] += 1
    elif output in users.names:
        stats.answered_other += 1
        stats.sample("cross_user", f"{where}: answered as {output}")
    else:
        stats.unanswered += 1
        stats.sample("unanswered", f"{where}: {answer.text}")


async def load(
    base: str,
    url: str,
    plan: list[Planned],
    users: Users,
    concurrency: int,
    deadline: float,
    stats: Stats,
) -> None:
    """Send the plan with ``concurrency`` loops; none starts a request after ``deadline``."""
    queues: list[deque[Planned]] = [deque() for _ in range(concurrency)]
    by_user = len(users.names) >= concurrency
    for p in plan:
        queues[(p.user if by_user else p.index) % concurrency].append(p)
    in_flight: Counter[int] = Counter()
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: a request
    # sent on a connection the server is closing at that instant would fail on the way.
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=1.0
    )

    async def loop(queue: deque[Planned], client: httpx.AsyncClient) -> None:
        while queue and time.monotonic() < deadline:
            p = queue.popleft()
            headers, body = build(p, users, url)
            stats.sent += 1
            in_flight[p.user] += 1
            stats.max_users_in_flight = max(stats.max_users_in_flight, len(in_flight))
            started = time.perf_counter()
            try:
                answer = await client.post("/v1/responses", headers=headers, content=body)
            except httpx.HTTPError as exc:
                stats.transport_errors[type(exc).__name__] += 1
                stats.sample("transport", f"#{p.index} {p.kind}: {type(exc).__name__}")
            else:
                stats.latencies.append(time.perf_counter() - started)
                check_answer(p, answer, users, stats)
            finally:
                stats.done += 1
                in_flight[p.user] -= 1
                if not in_flight[p.user]:
                    del in_flight[p.user]

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=REQUEST_TIMEOUT) as client:
        await asyncio.gather(*(loop(queue, client) for queue in queues))


@dataclass
class Memory:
    start: int = 0
    warm: int | None = None
    end: int = 0
    peak: int = 0
    timeline: list[tuple[int, int]] = field(default_factory=list)  # (requests done, rss)


async def sample_memory(gw: Gateway, stats: Stats, warmup: int, total: int, mem: Memory) -> None:
    """Every ``SAMPLE_EVERY`` s: the gateway's RSS; after warm-up and at each tenth of the run."""
    step = max(1, total // 10)
    next_mark = step
    while True:
        rss = await asyncio.to_thread(gw.rss)
        mem.peak = max(mem.peak, rss)
        if mem.warm is None and stats.done >= warmup:
            mem.warm = rss
        if stats.done >= next_mark:
            mem.timeline.append((stats.done, rss))
            next_mark += step
        await asyncio.sleep(SAMPLE_EVERY)


# --- the run --------------------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args],  # noqa: S607 - git from PATH
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def source_id() -> str:
    """The commit, ``+dirty`` when the library or the examples differ from it, and a digest
    of the library's and the examples' sources as they are now."""
    files = sorted([*ROOT.glob("mcp_auth_middleware/**/*.py"), *ROOT.glob("examples/*.py")])
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "mcp_auth_middleware", "examples")
    except (OSError, subprocess.SubprocessError):
        return f"sources {digest}"
    return f"{head}{'+dirty' if dirty else ''} (sources {digest})"


def _mib(n: float) -> float:
    return round(n / 2**20, 1)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + args.seconds
    users = Users.make(args.users)
    plan = make_plan(
        args.requests,
        args.users,
        args.malformed_share,
        args.stream_share,
        args.seed,
        args.reconnect_share,
        args.kinds,
    )
    warmup = args.warmup if args.warmup is not None else min(1000, args.requests // 10)
    stats, mem = Stats(), Memory()
    mcp = RecordingMCPServer(dict(zip(users.tokens, users.names, strict=True)))
    recorder = MCPRecorder(mcp.streamable_http_app(), mcp.tokens)
    logdir = Path(tempfile.mkdtemp(prefix="soak-"))
    log = logdir / "gateway.log"
    # On the way out the gateway stops first: its connections to the MCP server close.
    with serve(recorder) as mcp_base, gateway(args.workers, log, args.reuse_sessions) as gw:
        url = f"{mcp_base}/mcp"
        mem.start = mem.peak = gw.rss()
        cpu_before = gw.cpu()
        load_started = time.monotonic()

        async def drive() -> None:
            sampler = asyncio.create_task(sample_memory(gw, stats, warmup, args.requests, mem))
            try:  # requests time out after 30 s: this is a second guard
                async with asyncio.timeout(max(1.0, deadline - time.monotonic()) + 60):
                    await load(gw.base, url, plan, users, args.concurrency, deadline, stats)
            except TimeoutError:
                stats.sample("timeout", "the load did not finish within --seconds + 60 s")
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

        asyncio.run(drive())
        duration = time.monotonic() - load_started
        cpu = gw.cpu() - cpu_before
        mem.end = gw.rss()
        mem.peak = max(mem.peak, mem.end)
        workers = gw.worker_rss()
        command = gw.command
        time.sleep(1.0)  # let closed sessions' streams end
        streams_after = recorder.open_streams
    logged = log.read_bytes()
    leaks = logged.count(TOKEN_PREFIX.encode())
    warm = mem.warm if mem.warm is not None else mem.start
    calls_by_user = Counter(call.user for call in mcp.calls)
    answers = sum(stats.answered_own.values())
    result: dict[str, Any] = {
        "command": command,
        "source": source_id(),
        "workers": args.workers,
        "reuse_sessions": args.reuse_sessions,
        "kinds": list(args.kinds),
        "requests": args.requests,
        "sent": stats.sent,
        "done": stats.done,
        "users": args.users,
        "users_answered": len(stats.answered_own),
        "concurrency": args.concurrency,
        "max_users_in_flight": stats.max_users_in_flight,
        "malformed": sum(1 for p in plan[: stats.sent] if p.expect is not None),
        "duration_s": round(duration, 2),
        "wall_s": round(time.monotonic() - started, 2),
        "rps": round(stats.done / duration, 1) if duration else 0.0,
        "latency_p50_ms": round(_percentile(stats.latencies, 0.5) * 1000, 1),
        "latency_p99_ms": round(_percentile(stats.latencies, 0.99) * 1000, 1),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "rejected": dict(sorted(stats.rejected.items())),
        "by_kind": dict(sorted(stats.by_kind.items())),
        "streamed": stats.streamed,
        "answered_own": answers,
        "answered_other": stats.answered_other,
        "unanswered": stats.unanswered,
        "valid_refused": stats.valid_refused,
        "malformed_ok": stats.malformed_ok,
        "malformed_wrong": stats.malformed_wrong,
        "five_xx": stats.five_xx,
        "transport_errors": dict(stats.transport_errors),
        "mcp_calls": len(mcp.calls),
        "mcp_calls_match_answers": calls_by_user == stats.answered_own,
        "mcp_requests": sum(recorder.by_user.values()),
        "mcp_requests_without_token": recorder.by_user["<none>"],
        "mcp_requests_unknown_token": recorder.by_user["<unknown>"],
        "mcp_rejected_tokens": len(mcp.rejected),
        "mcp_statuses": {str(k): v for k, v in sorted(recorder.statuses.items())},
        "mcp_cross_user_sessions": recorder.cross_user_sessions,
        "mcp_cross_user_headers": recorder.cross_user_headers,
        "mcp_open_streams_max": recorder.max_open_streams,
        "mcp_open_streams_after_load": streams_after,
        "tokens_in_answers": stats.tokens_in_answers,
        "cross_user_tokens": (
            stats.answered_other
            + recorder.cross_user_sessions
            + recorder.cross_user_headers
            + sum(n for user, n in calls_by_user.items() if n != stats.answered_own[user])
        ),
        "tokens_in_gateway_log": leaks,
        "gateway_log_lines": logged.count(b"\n"),
        "audit_resolved": logged.count(b"mcp_credential_resolved"),
        "audit_rejected": logged.count(b"mcp_credential_rejected"),
        "rss_start_mib": _mib(mem.start),
        "rss_warm_mib": _mib(warm),
        "rss_end_mib": _mib(mem.end),
        "rss_peak_mib": _mib(mem.peak),
        "rss_growth_mib": _mib(mem.end - warm),
        "rss_timeline_mib": [(n, _mib(rss)) for n, rss in mem.timeline],
        "worker_rss_mib": [_mib(rss) for rss in workers],
        "warmup_requests": warmup,
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_request": round(cpu / stats.done * 1000, 2) if stats.done else 0.0,
        "worker_requests": dict(sorted(stats.worker_requests.items())),
        "users_on_several_workers": sum(
            1
            for u in range(args.users)
            if sum(u in seen for seen in stats.worker_users.values()) > 1
        ),
        "samples": stats.samples,
        "seconds_cap": args.seconds,
        "max_rss_growth_mib": args.max_rss_growth_mib,
    }
    result["violations"] = violations(result, stats)
    if result["violations"]:
        result["gateway_log"] = str(log)
    else:
        log.unlink()
        logdir.rmdir()
    return result


def violations(r: dict[str, Any], stats: Stats) -> list[str]:
    found: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    check(r["done"] == r["requests"], f"{r['done']} of {r['requests']} requests done in time")
    check(not r["transport_errors"], f"transport errors: {r['transport_errors']}")
    check(r["five_xx"] == 0, f"{r['five_xx']} answers 5xx")
    check(r["malformed_wrong"] == 0, f"{r['malformed_wrong']} malformed not refused with code")
    check(r["valid_refused"] == 0, f"{r['valid_refused']} valid requests refused")
    check(r["cross_user_tokens"] == 0, f"{r['cross_user_tokens']} cross-user tokens")
    check(r["unanswered"] == 0, f"{r['unanswered']} accepted requests without their answer")
    check(r["mcp_calls_match_answers"], "whoami calls per user differ from answers per user")
    for key in ("mcp_requests_without_token", "mcp_requests_unknown_token", "mcp_rejected_tokens"):
        check(r[key] == 0, f"{key}: {r[key]}")
    check(r["tokens_in_gateway_log"] == 0, f"{r['tokens_in_gateway_log']} tokens in the log")
    check(r["tokens_in_answers"] == 0, f"{r['tokens_in_answers']} answers carry a token")
    check(
        r["rss_growth_mib"] <= r["max_rss_growth_mib"],
        f"RSS grew {r['rss_growth_mib']} MiB after warm-up (limit {r['max_rss_growth_mib']})",
    )
    if r["workers"] > 1:
        served = [w for w in stats.worker_requests if w != "?"]
        check(len(served) >= r["workers"], f"only {len(served)} workers served requests")
    return found


def table(r: dict[str, Any]) -> str:
    rows: list[tuple[str, object]] = [
        ("gateway", " ".join(r["command"])),
        ("source", f"{r['source']}, session pool: {r['reuse_sessions']}"),
        ("requests sent / done / planned", f"{r['sent']} / {r['done']} / {r['requests']}"),
        (
            "users (answered / max in flight)",
            f"{r['users']} ({r['users_answered']} / {r['max_users_in_flight']})",
        ),
        ("concurrency", r["concurrency"]),
        ("malformed (refused with code)", f"{r['malformed']} ({r['malformed_ok']})"),
        ("streamed (SSE) answers", r["streamed"]),
        ("duration (load) / wall", f"{r['duration_s']} s / {r['wall_s']} s"),
        ("requests/s", r["rps"]),
        ("latency p50 / p99", f"{r['latency_p50_ms']} / {r['latency_p99_ms']} ms"),
        ("statuses", r["statuses"]),
        ("4xx by code", r["rejected"]),
        ("5xx", r["five_xx"]),
        ("transport errors", sum(r["transport_errors"].values())),
        ("answered with own user", r["answered_own"]),
        ("cross-user tokens", r["cross_user_tokens"]),
        (
            "MCP requests (no / unknown token)",
            f"{r['mcp_requests']} "
            f"({r['mcp_requests_without_token']} / {r['mcp_requests_unknown_token']})",
        ),
        ("whoami calls (= answers per user)", f"{r['mcp_calls']} ({r['mcp_calls_match_answers']})"),
        (
            "tokens in gateway log / answers",
            f"{r['tokens_in_gateway_log']} / {r['tokens_in_answers']}",
        ),
        (
            "MCP GET streams open (max / after)",
            f"{r['mcp_open_streams_max']} / {r['mcp_open_streams_after_load']}",
        ),
        ("audit events resolved / rejected", f"{r['audit_resolved']} / {r['audit_rejected']}"),
        (
            "RSS start / warm / end / peak",
            f"{r['rss_start_mib']} / {r['rss_warm_mib']} / "
            f"{r['rss_end_mib']} / {r['rss_peak_mib']} MiB",
        ),
        (
            "RSS growth after warm-up",
            f"{r['rss_growth_mib']} MiB (warm-up {r['warmup_requests']} requests)",
        ),
        ("gateway CPU", f"{r['cpu_s']} s ({r['cpu_ms_per_request']} ms/request)"),
    ]
    if r["workers"] > 1:
        rows.append(("requests per worker", r["worker_requests"]))
        rows.append(("worker RSS", f"{r['worker_rss_mib']} MiB"))
        rows.append(("users served by >1 worker", r["users_on_several_workers"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    verdict = "PASS" if not r["violations"] else "FAIL"
    lines.append(f"{'result'.ljust(width)}  {verdict}")
    lines.extend(f"  violation: {v}" for v in r["violations"])
    for kind, kept in r["samples"].items():
        lines.extend(f"  {kind}: {text}" for text in kept)
    if "gateway_log" in r:
        lines.append(f"  gateway log kept: {r['gateway_log']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--malformed-share", type=float, default=0.1)
    parser.add_argument("--stream-share", type=float, default=0.1, help="of valid requests")
    parser.add_argument(
        "--reconnect-share",
        type=float,
        default=0.2,
        help="requests sent with Connection: close, so users move between connections "
        "(and workers)",
    )
    parser.add_argument(
        "--kinds",
        type=lambda text: tuple(k.strip() for k in text.split(",") if k.strip()),
        default=VALID_KINDS,
        help=f"valid request kinds to mix, comma-separated (default: all of {VALID_KINDS})",
    )
    parser.add_argument("--seconds", type=float, default=1800.0, help="cap on the run")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn --workers")
    parser.add_argument(
        "--reuse-sessions",
        choices=("default", "on", "off"),
        default="default",
        help="the gateway's MCP session pool (GATEWAY_REUSE_SESSIONS); default: its default",
    )
    parser.add_argument("--warmup", type=int, default=None, help="default: 10%%, <= 1000")
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not (args.requests > 0 and args.users > 0 and args.concurrency > 0 and args.workers > 0):
        parser.error("--requests, --users, --concurrency and --workers must be positive")
    if not args.kinds or not set(args.kinds) <= set(VALID_KINDS):
        parser.error(f"--kinds: choose among {', '.join(VALID_KINDS)}")
    shares = (args.malformed_share, args.stream_share, args.reconnect_share)
    if not all(0 <= share <= 1 for share in shares):
        parser.error("shares are between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
