"""Over HTTP: uvicorn (httptools + uvloop, one process pinned to CPU 0) serving each app,
a load generator pinned to CPU 1 sending 1 KB JSON POSTs with one MCP credential over
32 keep-alive connections.

The load generator is ``wrk`` when it is on ``PATH`` (requests/s and p99 from its
histogram), else a bounded asyncio client in this file. All servers start first; then,
round after round (order rotating), each gets a fixed-duration run. Besides requests/s and
p99 we read the server process's CPU time (``/proc/<pid>/stat``) before and after each run:
CPU time per request is the stable figure on a shared machine.

Everything is on 127.0.0.1; every run is bounded in time.
Run: ``python benchmarks/bench_http.py [--rounds 4] [--duration 3] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import KB, RESPONSES_PATH, build_app, responses_body

CONNECTIONS = 32
APPS = ("bare", "floor", "decode_floor", "ours", "basehttp")
QUICK_APPS = ("bare", "floor", "decode_floor", "ours", "basehttp")
SERVER_CPU = 0
CLIENT_CPU = 1
_TICK = os.sysconf("SC_CLK_TCK")
WRK = shutil.which("wrk")

_LUA = """
wrk.method = "POST"
wrk.path = "{path}"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def serve(name: str, port: int) -> None:
    import uvicorn

    os.sched_setaffinity(0, {SERVER_CPU})
    config = uvicorn.Config(
        build_app(name),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    uvicorn.Server(config).run()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start within {timeout} s")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _pin_client() -> None:
    os.sched_setaffinity(0, {CLIENT_CPU})


def run_wrk(port: int, script: str, duration: float) -> dict[str, float]:
    done = subprocess.run(  # noqa: S603 - our own arguments
        [
            WRK or "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "-s",
            script,
            f"http://127.0.0.1:{port}{RESPONSES_PATH}",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
        preexec_fn=_pin_client,  # no threads run in this process
    )
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("BENCH "))
    requests, duration_us, p99_us, errors, bad_status = (int(x) for x in line.split()[1:])
    return {
        "requests": requests,
        "rps": requests / (duration_us / 1e6),
        "p99_ms": p99_us / 1000,
        "errors": errors + bad_status,
    }


async def _client(port: int, body: bytes, duration: float) -> dict[str, float]:
    """A bounded keep-alive HTTP/1.1 client: ``CONNECTIONS`` loops for ``duration`` s."""
    request = (
        f"POST {RESPONSES_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    deadline = started + duration

    async def loop() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await asyncio.wait_for(reader.readexactly(length), 5)
                latencies.append(time.perf_counter() - sent)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(loop() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0,
        "errors": errors,
    }


def run_python_client(port: int, body: bytes, duration: float) -> dict[str, float]:
    _pin_client()
    try:
        return asyncio.run(_client(port, body, duration))
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def run(apps: tuple[str, ...], rounds: int, duration: float) -> dict[str, Any]:
    body = responses_body(1 * KB)
    use_wrk = WRK is not None
    tmp = tempfile.mkdtemp(prefix="bench-http-")
    script = os.path.join(tmp, "post.lua")
    Path(script).write_text(_LUA.format(path=RESPONSES_PATH, body=body.decode()))
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}

    def load(name: str, seconds: float) -> dict[str, float]:
        proc, port = servers[name]
        cpu = _cpu_seconds(proc.pid)
        out = run_wrk(port, script, seconds) if use_wrk else run_python_client(port, body, seconds)
        out["cpu_per_request_us"] = (_cpu_seconds(proc.pid) - cpu) / out["requests"] * 1e6
        return out

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
    try:
        for name in apps:
            port = _free_port()
            proc = subprocess.Popen(  # noqa: S603 - our own arguments
                [sys.executable, __file__, "--serve", name, "--port", str(port)],
                stdout=subprocess.DEVNULL,
            )
            servers[name] = (proc, port)
        for name in apps:
            _wait_ready(servers[name][1], servers[name][0])
            load(name, 1.0)  # warm-up
        for r in range(rounds):
            shift = r % len(apps)
            for name in [*apps[shift:], *apps[:shift]]:
                samples[name].append(load(name, duration))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    def per_round(name: str, key: str, base: str = "bare") -> float:
        return common.ratio([s[key] for s in samples[name]], [s[key] for s in samples[base]])

    results: dict[str, Any] = {
        "client": "wrk" if use_wrk else "asyncio",
        "connections": CONNECTIONS,
        "rounds": rounds,
        "duration_s": duration,
        "apps": {},
    }
    for name in apps:
        s = samples[name]
        results["apps"][name] = {
            "rps": statistics.median(x["rps"] for x in s),
            "p99_ms": statistics.median(x["p99_ms"] for x in s),
            "cpu_per_request_us": statistics.median(x["cpu_per_request_us"] for x in s),
            "errors": sum(x["errors"] for x in s),
            "rps_ratio": per_round(name, "rps"),
            "p99_ratio": per_round(name, "p99_ms"),
            "cpu_ratio": per_round(name, "cpu_per_request_us"),
        }
    return results


def report(results: dict[str, Any]) -> None:
    say = sys.stderr.write
    say(
        f"HTTP ({results['client']}, {results['connections']} connections, "
        f"{results['rounds']} rounds x {results['duration_s']} s), medians:\n"
    )
    for name, a in results["apps"].items():
        say(
            f"  {name:13} {a['rps']:8.0f} req/s ({a['rps_ratio']:.2f}x)  "
            f"p99 {a['p99_ms']:6.2f} ms ({a['p99_ratio']:.2f}x)  "
            f"CPU {a['cpu_per_request_us']:6.1f} µs/req ({a['cpu_ratio']:.2f}x)  "
            f"errors {a['errors']}\n"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="fewer apps")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return
    results = run(QUICK_APPS if args.quick else APPS, args.rounds, args.duration)
    common.publish(results, report, args.json)


if __name__ == "__main__":
    main()
