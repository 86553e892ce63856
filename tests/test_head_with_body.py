"""How the engine, the gateway and the chatbot are served (engine/connections.py): a response's head goes
out with its first piece.

The transport wrapper alone with a recording transport, then uvicorn with the hardened protocol over a
real socket: streamed, plain and HEAD answers, keep-alive, and a client that closes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llm_experiment.engine.connections import HardenedHttpToolsProtocol, HeadWithBody, hardened_config

pytestmark = pytest.mark.timeout(30)


class Recording:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_the_head_waits_for_the_first_piece_or_the_end_of_the_step():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        recording = Recording()
        joined = HeadWithBody(recording, loop)  # type: ignore[arg-type]
        joined.write(b"HEAD")
        assert recording.writes == []
        joined.write(b"piece 1")
        joined.write(b"piece 2")  # nothing held any more: straight through
        assert recording.writes == [b"HEADpiece 1", b"piece 2"]
        await asyncio.sleep(0)  # the flush scheduled for the end of the step finds nothing held
        assert recording.writes == [b"HEADpiece 1", b"piece 2"]

        alone = HeadWithBody(Recording(), loop)  # type: ignore[arg-type]
        alone.write(b"HEAD")
        await asyncio.sleep(0)  # no piece in this step: the head goes out alone
        assert alone._transport.writes == [b"HEAD"]  # type: ignore[attr-defined]
        assert alone.get_extra_info("peername") == "info:peername"  # the rest is the transport's

        closing = HeadWithBody(Recording(), loop)  # type: ignore[arg-type]
        closing.write(b"HEAD")
        closing.close()  # what is held is written before the connection closes
        assert closing._transport.writes == [b"HEAD"] and closing.is_closing()  # type: ignore[attr-defined]

    asyncio.run(main())


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, int, threading.Event]]:
    """A small app served as the engine and ``classroom serve`` serve theirs."""
    go_on = threading.Event()

    async def stream(request: Request) -> Response:
        async def pieces() -> AsyncIterator[bytes]:
            yield b'{"response":"first"}\n'
            while not go_on.is_set():
                await asyncio.sleep(0.01)
            yield b'{"done":true}\n'

        return StreamingResponse(pieces(), media_type="application/x-ndjson")

    async def plain(request: Request) -> Response:
        return JSONResponse({"version": "0.12.6"})

    app = Starlette(routes=[Route("/stream", stream, methods=["POST"]),
                            Route("/plain", plain, methods=["GET", "HEAD"])])
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(hardened_config(app, log_level="warning", access_log=False, max_connections=16))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield "127.0.0.1", sock.getsockname()[1], go_on
    server.should_exit = True
    thread.join(timeout=10)


def read_until(conn: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        piece = conn.recv(65536)
        assert piece, f"closed before {marker!r}: {data!r}"
        data += piece
    return data


@pytest.mark.skipif(HardenedHttpToolsProtocol is None, reason="needs httptools")
def test_streamed_plain_and_head_answers_over_one_kept_alive_connection(served):
    host, port, go_on = served
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"POST /stream HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        first = conn.recv(65536)  # one write on loopback arrives as one: the head with the first piece
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b'{"response":"first"}\n' in first
        assert b"transfer-encoding: chunked" in first and b'"done"' not in first
        go_on.set()
        rest = read_until(conn, b"0\r\n\r\n", first)
        assert rest.endswith(b'{"done":true}\n\r\n0\r\n\r\n')

        conn.sendall(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_until(conn, b'{"version":"0.12.6"}')
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 20\r\n" in answer

        conn.sendall(b"HEAD /plain HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_until(conn, b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n")  # head only

        conn.sendall(b"GET /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = read_until(conn, b'{"version":"0.12.6"}')
        assert conn.recv(65536) == b""  # written, then closed, in that order
