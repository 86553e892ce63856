"""Connection hardening (llm_experiment.engine.connections) against real sockets.

Each test talks raw HTTP/1.1 to a tiny Starlette app served by uvicorn with ``hardened_config`` in a background
thread, with timeouts shrunk to about a second. No model and no engine are involved.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from llm_experiment.engine.connections import hardened_config

HEADER_TIMEOUT = 1.2
IDLE_TIMEOUT = 0.5
BODY_TIMEOUT = 1.0
TRICKLE = 0.3  # seconds between the bytes of a trickling client: shorter than every timeout
STREAM_GAP = 1.6  # a silence in the streamed response longer than every timeout
SLACK = 0.8  # how late a timeout may act on a busy two-core machine
REPO = Path(__file__).resolve().parent.parent

UPLOADS: queue.Queue[tuple[str, str, int]] = queue.Queue()  # (upload id, how it ended, bytes the app received)


async def hello(request: Request) -> Response:
    return PlainTextResponse("ok")


async def stream(request: Request) -> Response:
    async def parts() -> Any:
        yield b"first\n"
        await asyncio.sleep(STREAM_GAP)
        yield b"second\n"
        await asyncio.sleep(0.6)
        yield b"last\n"

    return StreamingResponse(parts(), media_type="text/plain")


async def upload(request: Request) -> Response:
    """Read the body with raw ASGI receive() calls and report whether it ended or the server said disconnect."""
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            UPLOADS.put((request.query_params["id"], "disconnect", size))
            return Response(status_code=400)
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            UPLOADS.put((request.query_params["id"], "complete", size))
            return PlainTextResponse(str(size))


APP = Starlette(routes=[Route("/", hello), Route("/stream", stream), Route("/upload", upload, methods=["POST"])])


class ServerThread:
    """uvicorn with a hardened config, serving APP on 127.0.0.1 from a background thread."""

    def __init__(self, **options: Any) -> None:
        config = hardened_config(APP, log_level="warning", log_config=None, timeout_graceful_shutdown=1, **options)
        self.server = uvicorn.Server(config)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[[str], ServerThread]]:
    """One server per HTTP protocol implementation, started on first use, stopped after the module."""
    started: dict[str, ServerThread] = {}

    def get(http: str) -> ServerThread:
        if http not in started:
            started[http] = ServerThread(http=http, header_timeout=HEADER_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                                         body_timeout=BODY_TIMEOUT)
        return started[http]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(params=["httptools", "h11"])
def port(request: pytest.FixtureRequest, servers: Callable[[str], ServerThread]) -> int:
    """The port of a hardened server, once for each of uvicorn's HTTP/1.1 implementations."""
    return servers(request.param).port


@pytest.fixture
def httptools_port(servers: Callable[[str], ServerThread]) -> int:
    """The port of the hardened server with the protocol the engine really uses (httptools)."""
    return servers("httptools").port


# --- raw HTTP helpers


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def get(port: int, path: str = "/", timeout: float = 5) -> tuple[int, bytes]:
    """A complete GET with Connection: close; the status and the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n" % path.encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    if not response:
        raise ConnectionError("the server closed the connection without a response")
    return int(response.split(b" ", 2)[1]), response


def read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Receive until marker has arrived (or fail after timeout)."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}; got {data!r}"
        data += chunk
    return data


def seconds_until_closed(sock: socket.socket, since: float, limit: float) -> float | None:
    """Seconds from `since` until the server closed sock, or None if it is still open at since + limit."""
    while (remaining := since + limit - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return time.monotonic() - since
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - since
    return None


def still_open(sock: socket.socket) -> bool:
    """Whether the server has not closed sock (data waiting, or nothing yet)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(65536, socket.MSG_PEEK) != b""
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False


def upload_outcome(upload_id: str) -> tuple[str, int]:
    """How the app's upload handler ended for this id: ('complete' or 'disconnect', bytes received)."""
    while True:
        name, outcome, size = UPLOADS.get(timeout=5)
        if name == upload_id:
            return outcome, size


# --- the tests


def test_a_half_sent_request_line_is_closed_at_the_header_timeout_while_others_are_served(port: int) -> None:
    slow = connect(port)
    start = time.monotonic()
    slow.sendall(b"GET / HT")
    status, _ = get(port)
    assert status == 200 and time.monotonic() - start < 0.5, "a normal client must be served meanwhile"
    closed = seconds_until_closed(slow, start, HEADER_TIMEOUT + SLACK)
    assert closed is not None, f"a half-sent request line was still open after {HEADER_TIMEOUT + SLACK} s"
    assert closed >= HEADER_TIMEOUT - 0.1, "closed before the header timeout"


def test_headers_trickling_a_byte_at_a_time_are_still_cut_at_the_header_timeout(httptools_port: int) -> None:
    sock = connect(httptools_port)
    start = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    sent, received, closed = 0, b"", False
    while not closed and time.monotonic() - start < HEADER_TIMEOUT + SLACK:
        sock.settimeout(TRICKLE)
        try:
            chunk = sock.recv(65536)
            received += chunk
            closed = not chunk
        except TimeoutError:
            try:
                sock.sendall(b"a")
                sent += 1
            except OSError:
                closed = True
        except OSError:
            closed = True
    elapsed = time.monotonic() - start
    assert closed, f"a slowloris client sending a byte every {TRICKLE} s was kept for {elapsed:.1f} s"
    assert sent >= 3 and elapsed >= HEADER_TIMEOUT - 0.1
    assert received == b""


def test_endless_headers_are_refused_with_431(httptools_port: int) -> None:
    # httptools has no header size limit of its own (h11 answers 400 past h11_max_incomplete_event_size).
    sock = connect(httptools_port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"y" * 70_000)
    assert read_until(sock, b"\r\n\r\n", 5).startswith(b"HTTP/1.1 431")


def test_idle_connections_are_closed_after_the_idle_timeout(port: int) -> None:
    fresh = connect(port)
    fresh_start = time.monotonic()
    kept = connect(port)
    kept.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_until(kept, b"\r\n\r\nok", 5).startswith(b"HTTP/1.1 200")
    kept_start = time.monotonic()
    for sock, start, what in ((kept, kept_start, "a keep-alive"), (fresh, fresh_start, "a silent new")):
        closed = seconds_until_closed(sock, start, IDLE_TIMEOUT + SLACK)
        assert closed is not None, f"{what} connection was still open after {IDLE_TIMEOUT + SLACK} s"
        assert closed >= IDLE_TIMEOUT - 0.1
        assert closed < HEADER_TIMEOUT  # the idle timeout closed it, not the (longer) header timeout


def test_a_stalled_upload_is_aborted_and_the_app_sees_http_disconnect(port: int) -> None:
    upload_id = f"stalled-{port}"
    sock = connect(port)
    start = time.monotonic()
    sock.sendall(b"POST /upload?id=%s HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n%s"
                 % (upload_id.encode(), b"x" * 10))
    closed = seconds_until_closed(sock, start, BODY_TIMEOUT + SLACK)
    assert closed is not None, f"an upload stalled at 10 of 100 bytes was still open after {BODY_TIMEOUT + SLACK} s"
    assert closed >= BODY_TIMEOUT - 0.1
    assert upload_outcome(upload_id) == ("disconnect", 10)


def test_an_upload_that_trickles_slower_than_the_timeouts_allow_in_total_completes(httptools_port: int) -> None:
    # The body timeout is a limit on silence, not on the whole upload: 5 bytes over 2 s beat a 1 s timeout.
    upload_id = "trickled"
    sock = connect(httptools_port)
    sock.sendall(b"POST /upload?id=%s HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n" % upload_id.encode())
    start = time.monotonic()
    for _ in range(5):
        time.sleep(0.4)
        sock.sendall(b"x")
    assert time.monotonic() - start > max(BODY_TIMEOUT, HEADER_TIMEOUT)
    assert read_until(sock, b"\r\n\r\n5", 5).startswith(b"HTTP/1.1 200")
    assert upload_outcome(upload_id) == ("complete", 5)


def test_a_slow_streaming_response_outlives_every_timeout(httptools_port: int) -> None:
    sock = connect(httptools_port)
    start = time.monotonic()
    sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
    response = read_until(sock, b"0\r\n\r\n", 10)  # the chunked encoding's end
    assert time.monotonic() - start >= STREAM_GAP
    assert response.startswith(b"HTTP/1.1 200") and b"first\n" in response and b"last\n" in response
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # and the connection is still good for another request
    assert read_until(sock, b"\r\n\r\nok", 5).startswith(b"HTTP/1.1 200")


def test_at_the_connection_cap_idle_connections_make_room_and_busy_ones_are_not_cut() -> None:
    server = ServerThread(max_connections=2, header_timeout=5, idle_timeout=5)
    sockets: list[socket.socket] = []
    try:
        idle = connect(server.port)
        sockets.append(idle)
        busy = connect(server.port)
        sockets.append(busy)
        busy.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(busy, b"first", 5)
        assert get(server.port)[0] == 200, "a newcomer at the cap must be served, by evicting the idle connection"
        assert seconds_until_closed(idle, time.monotonic(), 1) is not None
        time.sleep(0.1)  # let the server see the newcomer's connection end
        busy2 = connect(server.port)
        sockets.append(busy2)
        busy2.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        read_until(busy2, b"first", 5)
        refused = connect(server.port)  # two streams in progress: nothing to evict
        sockets.append(refused)
        assert read_until(refused, b"\r\n\r\n", 5).startswith(b"HTTP/1.1 503")
        assert still_open(busy) and still_open(busy2), "streaming responses must not be cut to make room"
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


# A server process whose open-file limit is small enough to exhaust: hard limit 300 (raise_fd_limit lifts the soft
# limit of 128 to it). Plain uvicorn stops accepting at ~290 connections; hardened, it caps itself at 225 (3/4).
FD_LIMITED_SERVER = """
import resource, socket
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 300))
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from llm_experiment.engine.connections import hardened_config, raise_fd_limit

async def hello(request):
    return PlainTextResponse("ok")

limit = raise_fd_limit()
app = Starlette(routes=[Route("/", hello)])
sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], limit, flush=True)
uvicorn.Server(hardened_config(app, log_level="warning", log_config=None)).run(sockets=[sock])
"""


def test_hundreds_of_idle_connections_do_not_lock_out_a_client_at_the_fd_limit() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([sys.executable, "-c", FD_LIMITED_SERVER], stdout=subprocess.PIPE, stderr=log,
                                   text=True, env=env)
        idle: list[socket.socket] = []
        try:
            assert process.stdout is not None
            port, limit = (int(word) for word in process.stdout.readline().split())
            assert limit == 300, "raise_fd_limit() should lift the soft limit to the hard one"
            deadline = time.monotonic() + 10
            while True:  # wait until uvicorn serves
                try:
                    assert get(port, timeout=1)[0] == 200
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.1)
            for i in range(300):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i % 2:
                    sock.sendall(b"GET / HTTP/1.1\r\n")  # and half of them start a request they never finish
                idle.append(sock)
            try:
                status, _ = get(port, timeout=5)
            except OSError as exc:
                log.seek(0)
                pytest.fail(f"a normal request behind 300 idle connections failed ({exc!r}); server log:\n"
                            f"{log.read()[-2000:]}")
            assert status == 200
        finally:
            for sock in idle:
                sock.close()
            process.terminate()
            process.wait(10)
