"""Run any ASGI app under uvicorn on 127.0.0.1, on a port the OS picks, in a background thread.

``serve(app)`` (a context manager) and ``serve_async(app)`` (an async one, which waits
without blocking the event loop) yield the base URL, ``http://127.0.0.1:<port>``. Start-up
and shut-down are bounded: a server that has not started within ``startup_timeout`` raises
``RuntimeError``; on the way out, open connections get one second to finish (uvicorn's
graceful shut-down), then are cut, and the thread is waited for at most ``shutdown_timeout``
seconds twice (the second time after a forced exit). An idle server stops in about 0.1 s.

The listening socket is created with ``IPPROTO_TCP``. asyncio sets ``TCP_NODELAY`` on an
accepted connection only when its socket says so; a socket made with protocol 0 (what
``socket.socket()`` and ``socket.create_server()`` make) does not, and every keep-alive
response then waits about 40 ms for the client's delayed ACK (Nagle's algorithm holds the
body back until the headers are acknowledged).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, Final

import anyio.to_thread
import uvicorn

__all__ = ["SHUTDOWN_TIMEOUT", "STARTUP_TIMEOUT", "listening_socket", "serve", "serve_async"]

STARTUP_TIMEOUT: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 5.0
HOST: Final = "127.0.0.1"
_FIXED: Final = frozenset({"app", "host", "port", "uds", "fd"})  # not for callers to change


def listening_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port, for uvicorn to listen on.

    ``IPPROTO_TCP`` explicitly, so that asyncio sets ``TCP_NODELAY`` on every connection.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, woken as soon as it is asked to exit. uvicorn's own ``main_loop``
    sleeps 0.1 s between looks at ``should_exit``, which made every stop wait 50 ms on
    average; this one is the same loop waiting on an event instead."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def exit_soon(self) -> None:
        """Ask the server to exit, from any thread."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(wake.set)


class _Running:
    """One uvicorn server in its thread, on ``sock``."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        startup_timeout: float,
        shutdown_timeout: float,
        options: dict[str, Any],
    ) -> None:
        settings: dict[str, Any] = {
            "log_level": "warning",
            "ws": "none",
            "lifespan": "auto",
            "timeout_graceful_shutdown": 1,
            **options,
        }
        self.sock, self.shutdown_timeout = sock, shutdown_timeout
        self.startup_timeout = startup_timeout
        self.server = _Server(uvicorn.Config(app, **settings))
        port: int = sock.getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        self.error: BaseException | None = None  # what ended the server's thread, if raised
        self.thread = threading.Thread(target=self._run, name=f"uvicorn-{port}", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # uvicorn exits with SystemExit when start-up fails
            self.error = exc

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"uvicorn on {self.url} stopped while starting") from (
                    self.error
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn on {self.url} did not start within {self.startup_timeout} s"
                )
            self.thread.join(0.005)
        return self.url

    def stop(self, *, check: bool = True) -> None:
        """Stop the server; with ``check``, raise if its thread is still running after the
        forced exit (without, when another exception is already on its way out)."""
        self.server.exit_soon()
        if self.thread.ident is not None:
            self.thread.join(self.shutdown_timeout)
            if self.thread.is_alive():  # pragma: no cover - a connection that never ends
                self.server.force_exit = True
                self.thread.join(self.shutdown_timeout)
        self.sock.close()
        if check and self.thread.is_alive():  # pragma: no cover
            raise RuntimeError(f"uvicorn on {self.url} did not stop")


def _running(
    app: Any,
    sock: socket.socket | None,
    startup_timeout: float,
    shutdown_timeout: float,
    options: dict[str, Any],
) -> _Running:
    fixed = _FIXED & options.keys()
    if fixed:
        raise TypeError(f"serve() chooses these itself: {', '.join(sorted(fixed))}")
    sock = sock or listening_socket()
    try:
        return _Running(app, sock, startup_timeout, shutdown_timeout, options)
    except BaseException:
        sock.close()
        raise


@contextmanager
def serve(
    app: Any,
    *,
    sock: socket.socket | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    **uvicorn_options: Any,
) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a background thread; yield its base URL.

    ``uvicorn_options`` go to ``uvicorn.Config`` (``http="h11"``, ``backlog=...``,
    ``lifespan="off"``, ...); the host and port are this function's. ``sock``: a socket from
    :func:`listening_socket` to serve on (when the URL must be known before the app is
    built); it is closed on the way out.
    """
    running = _running(app, sock, startup_timeout, shutdown_timeout, uvicorn_options)
    try:
        yield running.start()
    except BaseException:
        running.stop(check=False)
        raise
    running.stop()


@asynccontextmanager
async def serve_async(
    app: Any,
    *,
    sock: socket.socket | None = None,
    startup_timeout: float = STARTUP_TIMEOUT,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    **uvicorn_options: Any,
) -> AsyncIterator[str]:
    """:func:`serve` for async code: start-up and shut-down wait in a worker thread, so the
    event loop keeps running (a client of this loop can finish its streams meanwhile)."""
    running = _running(app, sock, startup_timeout, shutdown_timeout, uvicorn_options)
    try:
        yield await anyio.to_thread.run_sync(running.start)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: running.stop(check=False))
        raise
    await anyio.to_thread.run_sync(running.stop)
