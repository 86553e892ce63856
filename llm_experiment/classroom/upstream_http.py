"""A lean HTTP/1.1 client for the gateway's requests to its upstreams: one write per request, streamed answers.

The gateway forwards every student's request to an Ollama server. httpx did this at a cost measured in
``bench/README.md``: building its request and response objects, its connection pool and h11 took about
two thirds of the gateway's own time per request, and on a machine whose CPUs go idle while a model
thinks, that code runs several times slower than in a tight loop. This client does only what the
gateway needs::

    client = UpstreamClient()
    response = await client.request("POST", "http://127.0.0.1:11434/api/generate", {"content-type": ...}, body)
    response.status, response.header("content-type")
    async for piece in response.aiter_raw():   # the body's bytes as they arrive (chunked framing removed)
        ...
    response.close()                           # the connection goes back to the pool if the answer was complete

- connections are kept alive per upstream (``keepalive_expiry`` seconds idle at most, so that the upstream,
  which drops idle connections after 5 s, never closes one as the gateway reuses it) with ``TCP_NODELAY``;
- a request's head and body go out in one write; a streamed body is sent as it comes (chunked, or as is
  when its ``content-length`` is given);
- the answer's head is parsed strictly and bounded (:data:`MAX_HEAD` bytes, :data:`MAX_HEADERS` fields),
  as are chunk-size lines (:data:`MAX_LINE`) and trailers: the upstream may be anything at that address;
- failures raise the exceptions below, named as httpx names them (so messages read as before):
  :class:`ConnectError` / :class:`ConnectTimeout` (nothing was sent), :class:`RemoteProtocolError`,
  :class:`ReadError`, :class:`WriteError` (the connection broke or the answer is not HTTP), and
  :class:`ReadTimeout` / :class:`WriteTimeout` (no progress for ``read_timeout`` / ``write_timeout`` s).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

MAX_HEAD = 64 * 1024  # bytes of a status line and header fields; Ollama's are a few hundred
MAX_HEADERS = 100  # header fields in one answer
MAX_LINE = 4 * 1024  # a chunk-size line, extensions included
MAX_INTERIM = 8  # 1xx answers skipped before the real one
READ_HIGH, READ_LOW = 256 * 1024, 64 * 1024  # stop reading from the upstream while this much waits unread
USER_AGENT = "llm-experiment-classroom"

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_PATH_SAFE = "/!$&'()*+,;=:@-._~"  # a path's characters that need no escaping (RFC 3986 pchar and "/")


class UpstreamError(Exception):
    """Talking to an upstream failed."""


class ConnectError(UpstreamError):
    """The connection could not be opened: nothing was sent."""


class ConnectTimeout(ConnectError):
    """The connection was not open within ``connect_timeout``: nothing was sent."""


class RemoteProtocolError(UpstreamError):
    """The upstream closed the connection early, or answered something that is not HTTP/1.1 (or too big)."""


class ReadError(UpstreamError):
    """The connection broke while the answer was awaited or read."""


class WriteError(UpstreamError):
    """The connection broke while the request was sent."""


class ReadTimeout(UpstreamError):
    """Nothing arrived from the upstream for ``read_timeout`` seconds."""


class WriteTimeout(UpstreamError):
    """The upstream took nothing of the request for ``write_timeout`` seconds."""


#: The failures that are timeouts (the gateway answers 504 for them when nothing was relayed yet).
TIMEOUTS = (ConnectTimeout, ReadTimeout, WriteTimeout)


@dataclass(frozen=True)
class _Origin:
    """Where one upstream is: how to connect, and what to write as ``host``."""

    scheme: str
    host: str
    port: int
    host_header: str


def _origin(url: str) -> _Origin:
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = split.port or (443 if split.scheme == "https" else 80)
    host = split.hostname
    shown = f"[{host}]" if ":" in host else host
    default = 443 if split.scheme == "https" else 80
    return _Origin(split.scheme, host, port, shown if port == default else f"{shown}:{port}")


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to an upstream: a receive buffer, its end, and who waits for either."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # no more data will come
        self.error: BaseException | None = None  # why the connection was lost, if not a clean close
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    # asyncio.Protocol -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > READ_HIGH and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport: the gateway never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        if self._write_waiter is None:
            self._write_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # for the client -------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self, timeout: float) -> None:
        """Wait until more data or the end arrives; :class:`ReadTimeout` after ``timeout`` seconds of nothing."""
        if self.eof:
            return
        if timeout <= 0:
            raise ReadTimeout()
        waiter = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _time_out, waiter, ReadTimeout)
        try:
            await waiter
        finally:
            timer.cancel()

    def consumed(self) -> None:
        """Some of the buffer was taken: read on if reading was paused."""
        if self._reading_paused and len(self.buffer) <= READ_LOW and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self, timeout: float) -> None:
        """Wait until the upstream takes more of what was written; :class:`WriteTimeout` after ``timeout``."""
        waiter = self._write_waiter
        if waiter is None:
            return
        timer = self.loop.call_later(timeout, _time_out, waiter, WriteTimeout)
        try:
            await asyncio.shield(waiter)  # several writes may wait on it; a timeout fails it for all
        finally:
            timer.cancel()
        if self.transport is None or self.transport.is_closing():
            raise WriteError(_reason(self.error, "the upstream closed the connection while the request was sent"))

    def reusable(self, now: float, expiry: float) -> bool:
        """Whether this idle connection may carry another request."""
        return (not self.eof and not self.buffer and self.transport is not None
                and not self.transport.is_closing() and now - self.idle_since < expiry)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.eof = True


def _time_out(waiter: asyncio.Future[None], error: type[UpstreamError]) -> None:
    if not waiter.done():
        waiter.set_exception(error())


def _reason(error: BaseException | None, default: str) -> str:
    return f"{default}: {error}" if error is not None and str(error) else default


class Response:
    """An upstream's answer: its status and headers, and :meth:`aiter_raw` for the body as it arrives."""

    def __init__(self, client: UpstreamClient, key: _Origin, conn: _Connection, status: int,
                 headers: list[tuple[str, str]], framing: str, length: int, keep_alive: bool):
        self.status = status
        self.headers = headers  # names in lower case, in the order received
        self._client, self._key, self._conn = client, key, conn
        self._framing = framing  # "none", "length", "chunked" or "close"
        self._length = length  # bytes still due with "length"
        self._keep_alive = keep_alive
        self._complete = framing == "none"
        self._closed = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives, its framing removed; raises if the upstream breaks off."""
        if self._framing == "length":
            return self._by_length()
        if self._framing == "chunked":
            return self._chunked()
        if self._framing == "close":
            return self._until_close()
        return _nothing()

    async def _by_length(self) -> AsyncIterator[bytes]:
        conn, timeout = self._conn, self._client.read_timeout
        while self._length:
            if not conn.buffer:
                if conn.eof:
                    raise _broken(conn, f"peer closed connection without sending complete message body: "
                                        f"{self._length} bytes missing")
                await conn.more(timeout)
                continue
            piece = _take(conn, self._length)
            self._length -= len(piece)
            yield piece
        self._complete = True

    async def _until_close(self) -> AsyncIterator[bytes]:
        conn, timeout = self._conn, self._client.read_timeout
        while True:
            if conn.buffer:
                yield _take(conn, len(conn.buffer))
            elif conn.eof:
                if conn.error is not None:
                    raise ReadError(str(conn.error))
                self._complete = True
                return
            else:
                await conn.more(timeout)

    async def _chunked(self) -> AsyncIterator[bytes]:
        conn, timeout = self._conn, self._client.read_timeout
        while True:
            line = await _line(conn, conn.loop.time() + timeout, MAX_LINE, "a chunk size")
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise RemoteProtocolError(f"the upstream sent a bad chunk size line: {line[:40]!r}")
            size = int(match.group(1), 16)
            if size == 0:
                break
            while size:
                if not conn.buffer:
                    if conn.eof:
                        raise _broken(conn, "peer closed connection without sending complete message body: "
                                            "incomplete chunked read")
                    await conn.more(timeout)
                    continue
                piece = _take(conn, size)
                size -= len(piece)
                yield piece
            while len(conn.buffer) < 2:
                if conn.eof:
                    raise _broken(conn, "peer closed connection without sending complete message body: "
                                        "incomplete chunked read")
                await conn.more(timeout)
            if conn.buffer[:2] != b"\r\n":
                raise RemoteProtocolError("the upstream sent more data in a chunk than its size said")
            del conn.buffer[:2]
        trailers, deadline = 0, conn.loop.time() + timeout  # all of them in one read timeout
        while line := await _line(conn, deadline, MAX_LINE, "a trailer"):
            trailers += len(line) + 2
            if trailers > MAX_HEAD:
                raise RemoteProtocolError(f"the upstream's trailers are bigger than {MAX_HEAD} bytes")
        self._complete = True

    def close(self) -> None:
        """Done with this answer: the connection goes back to the pool if the answer was read to its end."""
        if self._closed:
            return
        self._closed = True
        if self._complete and self._keep_alive and not self._conn.buffer:
            self._client._release(self._key, self._conn)
        else:
            self._conn.close()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield


def _take(conn: _Connection, most: int) -> bytes:
    """Up to ``most`` bytes from the front of ``conn``'s buffer."""
    if len(conn.buffer) <= most:
        piece = bytes(conn.buffer)
        conn.buffer.clear()
    else:
        piece = bytes(conn.buffer[:most])
        del conn.buffer[:most]
    conn.consumed()
    return piece


def _broken(conn: _Connection, message: str) -> UpstreamError:
    """The connection ended too early: a reset is a :class:`ReadError`, a clean close a protocol error."""
    if conn.error is not None:
        return ReadError(str(conn.error) or type(conn.error).__name__)
    return RemoteProtocolError(message)


async def _line(conn: _Connection, deadline: float, limit: int, what: str) -> bytes:
    """The next CRLF-terminated line (without the CRLF), at most ``limit`` bytes long, by ``deadline`` (loop time)."""
    scanned = 0
    while True:
        end = conn.buffer.find(b"\r\n", scanned)
        if end >= 0:
            if end > limit:
                break
            line = bytes(conn.buffer[:end])
            del conn.buffer[:end + 2]
            conn.consumed()
            return line
        if len(conn.buffer) > limit + 1:
            break
        scanned = max(0, len(conn.buffer) - 1)
        if conn.eof:
            raise _broken(conn, f"peer closed connection without sending complete message body: cut in {what}")
        await conn.more(deadline - conn.loop.time())
    raise RemoteProtocolError(f"the upstream sent {what} longer than {limit} bytes")


class UpstreamClient:
    """Requests to upstreams over kept-alive HTTP/1.1 connections; :meth:`aclose` closes the idle ones."""

    def __init__(self, *, connect_timeout: float = 5.0, read_timeout: float = 300.0, write_timeout: float = 300.0,
                 keepalive_expiry: float = 2.0, max_idle: int = 64, ssl_context: ssl.SSLContext | None = None):
        self.connect_timeout, self.read_timeout, self.write_timeout = connect_timeout, read_timeout, write_timeout
        self.keepalive_expiry, self.max_idle = keepalive_expiry, max_idle
        self._ssl = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def request(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                      content: bytes | AsyncIterator[bytes] | None = None) -> Response:
        """Send a request and return the answer once its head is in (read the body with ``aiter_raw``).

        ``url`` is an upstream's base URL followed by the path (without a query). ``headers`` must not
        name ``host``, ``connection`` or ``transfer-encoding``; a streamed ``content`` is sent chunked
        unless ``headers`` gives its ``content-length``.
        """
        base, path = _split_target(url)
        key = self._origins.get(base)
        if key is None:
            key = self._origins[base] = _origin(base)
        head, streamed, length = _request_head(method, key, path, headers or {}, content)
        conn = await self._connection(key)
        try:
            if streamed is None:
                conn.transport.write(head if not content else head + content)  # type: ignore[union-attr,operator]
            else:
                await self._send_streamed(conn, head, streamed, length)
            return await self._read_head(key, conn, method)
        except BaseException:
            conn.close()
            raise

    async def aclose(self) -> None:
        """Close the idle connections; answers still being read close their own when done."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # connections ----------------------------------------------------------------------------------------

    async def _connection(self, key: _Origin) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to have been dropped
                if conn.reusable(now, self.keepalive_expiry):
                    return conn
                conn.close()
        loop = asyncio.get_running_loop()
        context = None
        if key.scheme == "https":
            context = self._ssl = self._ssl or _default_ssl_context()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(loop), key.host, key.port, ssl=context,
                                                       server_hostname=key.host if context else None)
        except TimeoutError:
            raise ConnectTimeout() from None
        except OSError as exc:  # refused, unreachable, no such host, TLS failure (ssl.SSLError is an OSError)
            raise ConnectError(str(exc) or type(exc).__name__) from None
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each piece goes out as it is written
        return conn

    def _release(self, key: _Origin, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(key, [])
        idle.append(conn)
        if len(idle) > self.max_idle:
            idle.pop(0).close()

    # one exchange ---------------------------------------------------------------------------------------

    async def _send_streamed(self, conn: _Connection, head: bytes, body: AsyncIterator[bytes],
                             length: int | None) -> None:
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        sent = 0
        async for piece in body:
            if not piece:
                continue
            sent += len(piece)
            if length is not None and sent > length:
                raise WriteError(f"the request's body is longer than its content-length ({length})")
            if transport.is_closing():
                raise WriteError(_reason(conn.error, "the upstream closed the connection while the request was sent"))
            transport.write(piece if length is not None else b"%x\r\n%s\r\n" % (len(piece), piece))
            await conn.drain(self.write_timeout)
        if length is not None and sent != length:
            raise WriteError(f"the request's body is shorter than its content-length ({sent} of {length} bytes)")
        if length is None:
            transport.write(b"0\r\n\r\n")

    async def _read_head(self, key: _Origin, conn: _Connection, method: str) -> Response:
        for _ in range(MAX_INTERIM + 1):
            status, version, headers = _parse_head(await _head(conn, self.read_timeout))
            if status == 101 or status >= 200:
                break  # 101 is refused below
        else:
            raise RemoteProtocolError(f"the upstream sent more than {MAX_INTERIM} interim (1xx) answers")
        if status == 101:
            raise RemoteProtocolError("the upstream switched protocols, which the gateway never asks for")
        tokens = {t.strip().lower() for name, value in headers if name == "connection" for t in value.split(",")}
        keep_alive = version == 1 and "close" not in tokens
        codings = [t.strip().lower() for name, value in headers if name == "transfer-encoding"
                   for t in value.split(",")]
        lengths = {value.strip() for name, value in headers if name == "content-length"}
        length = 0
        if method == "HEAD" or status in (204, 304):
            framing = "none"
        elif codings:
            if codings != ["chunked"]:
                raise RemoteProtocolError(f"the upstream used a transfer coding the gateway does not take: {codings}")
            if lengths:
                raise RemoteProtocolError("the upstream's answer has both transfer-encoding and content-length")
            framing = "chunked"
        elif lengths:
            values = {v.strip() for value in lengths for v in value.split(",")}
            if len(values) != 1 or not (value := values.pop()).isdigit() or len(value) > 18:
                raise RemoteProtocolError(f"the upstream sent a bad content-length: {sorted(lengths)}")
            length = int(value)
            framing = "length" if length else "none"
        else:
            framing, keep_alive = "close", False  # the body ends when the connection does
        return Response(self, key, conn, status, headers, framing, length, keep_alive)


def _default_ssl_context() -> ssl.SSLContext:
    """The certificates httpx trusts (certifi's), so that an https upstream is checked as before."""
    import httpx

    return httpx.create_ssl_context()


def _split_target(url: str) -> tuple[str, str]:
    """``http://host:port`` and ``/path`` (an upstream's own prefix included) from ``url``."""
    scheme_end = url.find("://")
    slash = url.find("/", scheme_end + 3 if scheme_end >= 0 else 0)
    return (url, "/") if slash < 0 else (url[:slash], url[slash:])


def _request_head(method: str, key: _Origin, path: str, headers: Mapping[str, str],
                  content: bytes | AsyncIterator[bytes] | None
                  ) -> tuple[bytes, AsyncIterator[bytes] | None, int | None]:
    """The request's head; the body to stream (if not bytes) and its declared length (``None``: chunked)."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    target = quote(path, safe=_PATH_SAFE)
    lines = [f"{method} {target} HTTP/1.1", f"host: {key.host_header}", "accept: */*", f"user-agent: {USER_AGENT}"]
    streamed: AsyncIterator[bytes] | None = None
    length: int | None = None
    for name, value in headers.items():
        lower = name.lower()
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise ValueError(f"a header the gateway cannot send: {name!r}")
        if lower in ("host", "connection", "transfer-encoding", "content-length"):
            if lower == "content-length" and content is not None and not isinstance(content, bytes):
                if not value.strip().isdigit():
                    raise ValueError(f"a bad content-length: {value!r}")
                length = int(value)
            continue
        lines.append(f"{lower}: {value}")
    if isinstance(content, bytes):
        if content or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(content)}")
    elif content is not None:
        streamed = content
        lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("content-length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), streamed, length


async def _head(conn: _Connection, timeout: float) -> bytes:
    """The next status line and header fields, up to the empty line, all within ``timeout`` seconds.

    A deadline for the whole head, not for each read: an upstream that sends a byte now and then
    (a slow loris) cannot hold the request forever.
    """
    scanned = 0
    deadline = conn.loop.time() + timeout
    while True:
        end = conn.buffer.find(b"\r\n\r\n", scanned)
        if end >= 0:
            if end > MAX_HEAD:
                break
            head = bytes(conn.buffer[:end])
            del conn.buffer[:end + 4]
            conn.consumed()
            return head
        if len(conn.buffer) > MAX_HEAD + 3:
            break
        scanned = max(0, len(conn.buffer) - 3)
        if conn.eof:
            if conn.error is not None:
                raise ReadError(str(conn.error) or type(conn.error).__name__)
            raise RemoteProtocolError("Server disconnected without sending a response." if not conn.buffer
                                      else "the upstream closed the connection within its answer's head")
        await conn.more(deadline - conn.loop.time())
    raise RemoteProtocolError(f"the upstream's header section is bigger than {MAX_HEAD} bytes")


def _parse_head(head: bytes) -> tuple[int, int, list[tuple[str, str]]]:
    """Status, minor version and ``(name, value)`` pairs of a head (names in lower case); strict."""
    lines = head.split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise RemoteProtocolError(f"the upstream did not answer HTTP/1.1: {lines[0][:60]!r}")
    if len(lines) - 1 > MAX_HEADERS:
        raise RemoteProtocolError(f"the upstream sent more than {MAX_HEADERS} header fields")
    headers = []
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise RemoteProtocolError(f"the upstream sent a malformed header field: {line[:60]!r}")
        headers.append((field.group(1).decode("ascii").lower(), field.group(2).decode("latin-1")))
    return int(match.group(2)), int(match.group(1)), headers
