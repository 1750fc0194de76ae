"""SSE message endpoints, bound to the credential of the stream that announced them.

The MCP SSE transport opens an event stream (``GET``) and posts its messages to a URL the
server announces on that stream (``event: endpoint``, ``data: /messages/?session_id=...``).
That URL is usually not under the server URL the caller gave a token for, so the prefix rule
gives it no token. :class:`MCPBearerAuth` watches the stream it authenticated, reads the
first ``endpoint`` event and binds exactly that URL (query included) to the stream's
credential, for as long as the stream is open, and only while the set the credential came
from is the one in force. The endpoint must be on the stream's origin and under the
directory of the credential's server path (``/a/messages/`` for a credential given for
``/a/sse``), or under that path itself when the stream is below it (a credential given for
``/a``, the stream ``/a/sse``): a server cannot steer its token to a neighbour's path.
Nothing else on the origin is covered.
"""

from __future__ import annotations

import codecs
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from mcp_auth_middleware.credentials import MCPCredential, MCPServerHeaders
from mcp_auth_middleware.urls import ServerURL, parse_server_url, path_is_prefix

__all__ = ["EndpointBindings"]

#: Open streams whose endpoint is remembered at once; the oldest binding goes first.
MAX_BINDINGS = 1024
#: Bytes of a stream read for its ``endpoint`` event before the watch gives up.
MAX_WATCHED_BYTES = 64 * 1024
_LINE = re.compile(r"\r\n|\r|\n")

if TYPE_CHECKING:
    import httpx
    import httpx2

    class _AsyncStreamBase(httpx.AsyncByteStream, httpx2.AsyncByteStream):
        pass

    class _SyncStreamBase(httpx.SyncByteStream, httpx2.SyncByteStream):
        pass

else:
    _async_bases, _sync_bases = [], []
    for _module in ("httpx", "httpx2"):
        try:
            _lib = __import__(_module)
        except ImportError:  # pragma: no cover - either is optional
            continue
        _async_bases.append(_lib.AsyncByteStream)
        _sync_bases.append(_lib.SyncByteStream)
    _AsyncStreamBase = type("_AsyncStreamBase", tuple(_async_bases) or (object,), {})
    _SyncStreamBase = type("_SyncStreamBase", tuple(_sync_bases) or (object,), {})


class _EndpointEvent:
    """An incremental reader of an event stream that stops at the first ``endpoint``."""

    __slots__ = ("_data", "_decoder", "_event", "_pending", "_seen", "done")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._event = ""
        self._data: list[str] = []
        self._seen = 0
        self.done = False

    def feed(self, chunk: bytes) -> str | None:
        """The endpoint event's data once it is complete, else ``None``."""
        self._seen += len(chunk)
        if self._seen > MAX_WATCHED_BYTES:
            self.done = True
            return None
        text = self._pending + self._decoder.decode(chunk)
        lines = _LINE.split(text)
        # A trailing "\r" may be the first half of "\r\n": keep it with the partial line.
        self._pending = lines.pop()
        if text.endswith("\r") and lines:
            self._pending = lines.pop() + "\r"
        for line in lines:
            if not line:  # a blank line dispatches the event, if a field was set
                if self._event == "endpoint":
                    self.done = True
                    return "\n".join(self._data)
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
        return None


class _Watch:
    """What both stream wrappers do with each chunk on its way to the reader."""

    def __init__(
        self,
        stream: Any,
        reader: _EndpointEvent,
        on_endpoint: Callable[[str], None],
        on_close: Callable[[], None],
    ) -> None:
        self._stream, self._reader = stream, reader
        self._on_endpoint, self._on_close = on_endpoint, on_close

    def _see(self, chunk: bytes) -> None:
        if not self._reader.done:
            data = self._reader.feed(chunk)
            if data is not None:
                self._on_endpoint(data)


class _WatchedAsyncStream(_Watch, _AsyncStreamBase):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._see(chunk)
            yield chunk

    async def aclose(self) -> None:
        self._on_close()
        await self._stream.aclose()


class _WatchedSyncStream(_Watch, _SyncStreamBase):
    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._see(chunk)
            yield chunk

    def close(self) -> None:
        self._on_close()
        self._stream.close()


#: What a stream carried: a credential, or a server's headers alone.
Carried = MCPCredential | MCPServerHeaders


class EndpointBindings:
    """Message endpoint URL (normalised, query included) -> what its stream carried (a
    credential, or the headers of a server that has no token)."""

    __slots__ = ("_bound",)

    def __init__(self) -> None:
        self._bound: OrderedDict[str, Carried] = OrderedDict()

    def __len__(self) -> int:
        return len(self._bound)

    def get(self, url: str) -> Carried | None:
        return self._bound.get(url)

    def watch(
        self, request: Any, response: Any, credential: Carried, *, asynchronous: bool
    ) -> None:
        """Watch ``response`` (the event stream ``request`` opened with ``credential``) for
        its endpoint; the binding lasts until the stream is closed."""
        content_type = response.headers.get("content-type", "")
        if (
            request.method != "GET"
            or response.status_code != 200
            or not content_type.lower().startswith("text/event-stream")
        ):
            return
        server = credential.server
        if server is None:
            return
        stream_url = str(request.url)
        directory = _directory(server, stream_url)
        if directory is None:
            return
        bound: list[str] = []

        def bind(data: str) -> None:
            try:
                endpoint = parse_server_url(urljoin(stream_url, data.strip()))
            except ValueError:
                return  # not an http(s) URL, or an ambiguous path: no token for it
            if endpoint.origin != server.origin or not (
                path_is_prefix(directory, endpoint.path)
                and path_is_prefix(directory, endpoint.literal_path)
            ):
                return
            self._bound[endpoint.url] = credential
            self._bound.move_to_end(endpoint.url)
            bound.append(endpoint.url)
            while len(self._bound) > MAX_BINDINGS:
                self._bound.popitem(last=False)

        def unbind() -> None:
            for url in bound:
                if self._bound.get(url) is credential:
                    del self._bound[url]
            bound.clear()

        reader = _EndpointEvent()
        stream = response.stream
        if asynchronous:
            response.stream = _WatchedAsyncStream(stream, reader, bind, unbind)
        else:
            response.stream = _WatchedSyncStream(stream, reader, bind, unbind)


def _directory(server: ServerURL, stream_url: str) -> str | None:
    """The path an endpoint announced on the stream at ``stream_url`` must be under, for a
    credential given for ``server``: the directory of the server's path, or the server's
    path itself when the stream is below it; ``None`` if the stream URL does not parse."""
    try:
        stream_path = parse_server_url(stream_url).path
    except ValueError:
        return None
    if stream_path != server.path and path_is_prefix(server.path, stream_path):
        # A stream under the credential's server (a token for /a, the stream /a/sse):
        # that server, not its parent, is the directory; else /c/... would be in reach.
        return server.path
    return server.path.rpartition("/")[0] or "/"
