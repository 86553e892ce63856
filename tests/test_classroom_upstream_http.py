"""The gateway's own HTTP/1.1 client for its upstreams (upstream_http.py), against fake upstreams over real sockets.

A real engine answers well; these fakes do what it never does: a header section without end, a connection
closed in the middle of a chunk, a chunk size that is not a number, an upstream that sends one byte now and
then. Each must end in the documented exception, bounded, and the relay must turn it into the documented
answer (a retry elsewhere, a 502 or 504, or an error line in the stream). No assertion is on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from llm_experiment.classroom import upstream_http as http
from llm_experiment.classroom.relay import Head, Outbound, Outcome, UpstreamFailed, exchange
from llm_experiment.classroom.upstream_http import UpstreamClient
from llm_experiment.classroom.upstreams import Upstreams
from llm_experiment.embedded import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHUNKED = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"


class Fake:
    """A fake upstream on a free port: ``handler`` serves each connection; connections are counted."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def fake(handler: Handler) -> AsyncIterator[Fake]:
    upstream = Fake(handler)
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield upstream


async def read_request(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    """The request's head lines and its body (content-length or chunked)."""
    head = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
    fields = {line.partition(b":")[0].lower(): line.partition(b":")[2].strip() for line in head[1:]}
    if b"content-length" in fields:
        return head, await reader.readexactly(int(fields[b"content-length"]))
    body = b""
    if fields.get(b"transfer-encoding") == b"chunked":
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    return head, body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answer(raw: bytes) -> Handler:
    """A fake that reads one request, writes ``raw`` and keeps the connection open until the client closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await reader.read()  # until the client closes

    return handler


async def body_of(response: http.Response) -> bytes:
    return b"".join([piece async for piece in response.aiter_raw()])


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(read_timeout=5, write_timeout=5, connect_timeout=5)
    yield client
    await client.aclose()


# --- answers as they should be -----------------------------------------------------------------------------------


async def test_a_chunked_answer_streams_piece_by_piece_and_the_connection_is_kept(client):
    second_piece = asyncio.Event()
    requests: list[tuple[list[bytes], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            requests.append(await read_request(reader))
            writer.write(CHUNKED + chunk(b'{"response":"a"}\n'))
            await second_piece.wait()
            writer.write(chunk(b'{"done":true}\n') + b"0\r\n\r\n")

    async with fake(handler) as upstream:
        body = b'{"model":"m","prompt":"hi"}'
        response = await client.request("POST", upstream.url + "/api/generate",
                                        {"content-type": "application/json", "accept-encoding": "identity"}, body)
        assert (response.status, response.header("content-type")) == (200, "application/x-ndjson")
        pieces = response.aiter_raw()
        assert await anext(pieces) == b'{"response":"a"}\n'  # before the upstream has sent the rest
        second_piece.set()
        assert [piece async for piece in pieces] == [b'{"done":true}\n']
        response.close()
        response = await client.request("POST", upstream.url + "/api/generate", {}, body)
        assert await body_of(response) == b'{"response":"a"}\n{"done":true}\n'
        response.close()
        assert upstream.connections == 1  # kept alive and used again
    head, sent = requests[0]
    assert head[0] == b"POST /api/generate HTTP/1.1" and sent == body
    names = [line.partition(b":")[0] for line in head[1:]]
    assert names.count(b"host") == 1 and b"content-length: 27" in head and b"authorization" not in names


async def test_a_content_length_answer_and_a_head_request(client):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            body = b"" if head[0].startswith(b"HEAD") else b'{"version":"0.12.6"}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n" + body)

    async with fake(handler) as upstream:
        response = await client.request("GET", upstream.url + "/api/version")
        assert await body_of(response) == b'{"version":"0.12.6"}'
        response.close()
        response = await client.request("HEAD", upstream.url + "/api/version")
        assert response.status == 200 and await body_of(response) == b""  # a HEAD answer has no body
        response.close()
        response = await client.request("GET", upstream.url + "/api/version")
        assert await body_of(response) == b'{"version":"0.12.6"}'
        response.close()
        assert upstream.connections == 1


async def test_interim_answers_are_skipped_and_a_close_delimited_body_is_read_to_the_end(client):
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)

    async with fake(handler) as upstream:
        response = await client.request("GET", upstream.url + "/")
        assert response.status == 200 and await body_of(response) == b"until the end"
        response.close()


async def test_a_streamed_request_body_goes_chunked_or_as_its_content_length_says(client):
    received: list[tuple[list[bytes], bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            received.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async def upload() -> AsyncIterator[bytes]:
        yield b"GGUF"
        yield b""
        yield b"1234"

    async with fake(handler) as upstream:
        for headers in ({}, {"content-length": "8"}):
            response = await client.request("POST", upstream.url + "/api/blobs/sha256:00", headers, upload())
            assert await body_of(response) == b"ok"
            response.close()
    (chunked, body1), (sized, body2) = received
    assert body1 == body2 == b"GGUF1234"
    assert b"transfer-encoding: chunked" in chunked and b"content-length: 8" in sized


async def test_a_path_is_escaped_and_headers_that_would_break_the_request_are_refused(client):
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        heads.append(head[0])
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await reader.read()

    async with fake(handler) as upstream:
        response = await client.request("GET", upstream.url + "/api/x y\r\nhost: evil")
        assert response.status == 204
        response.close()
        with pytest.raises(ValueError):
            await client.request("POST", upstream.url + "/api/chat", {"content-type": "a\r\nx-injected: 1"}, b"{}")
    assert heads == [b"GET /api/x%20y%0D%0Ahost:%20evil HTTP/1.1"]


async def test_a_connection_the_upstream_closed_while_idle_is_not_used_again(client):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()  # and then closes (as an upstream does after its keep-alive timeout)

    async with fake(handler) as upstream:
        response = await client.request("GET", upstream.url + "/")
        assert await body_of(response) == b"ok"
        response.close()
        idle = client._idle[next(iter(client._idle))][0]
        for _ in range(500):  # until the close has reached the client
            if idle.eof:
                break
            await asyncio.sleep(0.01)
        response = await client.request("GET", upstream.url + "/")
        assert await body_of(response) == b"ok"
        response.close()
        assert upstream.connections == 2


# --- answers no engine gives ------------------------------------------------------------------------------------


async def test_a_header_section_without_end_is_refused_at_the_bound(client):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(10_000):  # 400 KB of headers, and more than the bound allows
            writer.write(b"x-filler-%05d: %s\r\n" % (i, b"y" * 20))
            await writer.drain()

    async with fake(handler) as upstream:
        with pytest.raises(http.RemoteProtocolError, match="header section is bigger"):
            await client.request("GET", upstream.url + "/api/tags")


async def test_too_many_header_fields_are_refused(client):
    raw = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(200)) + b"content-length: 0\r\n\r\n"
    async with fake(answer(raw)) as upstream:
        with pytest.raises(http.RemoteProtocolError, match="more than 100 header fields"):
            await client.request("GET", upstream.url + "/api/tags")


@pytest.mark.parametrize("raw", [
    b"HTTP/2 200 OK\r\n\r\n",  # not HTTP/1.x
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",  # no colon
    b"HTTP/1.1 200 OK\r\nx-a : 1\r\n\r\n",  # a space before the colon (smuggling's favourite)
    b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",  # obsolete line folding
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",  # both framings
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
])
async def test_an_answer_that_is_not_sound_http_is_refused(client, raw):
    async with fake(answer(raw)) as upstream:
        with pytest.raises(http.RemoteProtocolError):
            await client.request("GET", upstream.url + "/api/tags")


@pytest.mark.parametrize(("body", "message"), [
    (b"10\r\nonly half", "incomplete chunked read"),  # the connection closes in the middle of a chunk
    (b"zz\r\n", "bad chunk size"),
    (b"-1\r\n", "bad chunk size"),
    (b"2\r\nabc\r\n", "more data in a chunk"),
    (b"1" * 10_000, "longer than"),  # a chunk-size line without end
    (chunk(b"a"), "cut in a chunk size"),  # closed between two chunks
])
async def test_a_broken_chunked_body_ends_in_an_error_and_the_connection_is_dropped(client, body, message):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED + body)
        await writer.drain()  # then closes

    async with fake(handler) as upstream:
        response = await client.request("POST", upstream.url + "/api/generate", {}, b"{}")
        with pytest.raises(http.RemoteProtocolError, match=message):
            await body_of(response)
        response.close()
        assert not any(client._idle.values())


async def test_a_slow_loris_upstream_cannot_hold_a_request_past_the_read_timeout():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
        while True:  # a byte every 50 ms: each read succeeds, the head never ends
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.05)

    client = UpstreamClient(read_timeout=0.5)
    async with fake(handler) as upstream:
        with pytest.raises(http.ReadTimeout):
            await client.request("GET", upstream.url + "/api/tags")
    await client.aclose()


async def test_an_upstream_that_stops_sending_times_out_between_pieces():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED + chunk(b'{"response":"a"}\n'))
        await reader.read()  # and nothing more

    client = UpstreamClient(read_timeout=0.3)
    async with fake(handler) as upstream:
        response = await client.request("POST", upstream.url + "/api/generate", {}, b"{}")
        pieces = response.aiter_raw()
        assert await anext(pieces) == b'{"response":"a"}\n'
        with pytest.raises(http.ReadTimeout):
            await anext(pieces)
        response.close()
    await client.aclose()


async def test_cannot_connect_and_dropped_before_the_answer(client):
    with pytest.raises(http.ConnectError):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/api/tags")

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # takes the request, closes without a word

    async with fake(hang_up) as upstream:
        with pytest.raises(http.RemoteProtocolError, match="without sending a response"):
            await client.request("GET", upstream.url + "/api/tags")


# --- the relay's answers to those faults -------------------------------------------------------------------------


def generate(idempotent: bool = True) -> Outbound:
    return Outbound("POST", "/api/generate", b'{"model":"m"}', {"content-type": "application/json"},
                    model="m", idempotent=idempotent)


async def relay(client: UpstreamClient, urls: list[str], request: Outbound) -> tuple[Head, bytes, Outcome, Upstreams]:
    async with httpx.AsyncClient() as checks:
        upstreams = Upstreams(urls, checks)
        outcome = Outcome()
        pieces = exchange(client, upstreams, request, outcome)
        async with contextlib.aclosing(pieces):
            head = await anext(pieces)
            assert isinstance(head, Head)
            body = b"".join([piece async for piece in pieces])  # type: ignore[misc]
        return head, body, outcome, upstreams


def ok_stream() -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(CHUNKED + chunk(b'{"response":"a"}\n') + chunk(b'{"done":true,"eval_count":1}\n')
                         + b"0\r\n\r\n")

    return handler


async def test_an_upstream_that_cannot_be_reached_is_taken_out_and_the_request_goes_to_another(client):
    dead = f"http://127.0.0.1:{free_port()}"
    async with fake(ok_stream()) as alive:
        head, body, outcome, upstreams = await relay(client, [dead, alive.url], generate(idempotent=False))
    assert head.status == 200 and body.endswith(b'{"done":true,"eval_count":1}\n')
    assert outcome.complete and outcome.upstream == alive.url and outcome.tail.counts() == {"eval_count": 1}
    down, up = upstreams.upstreams
    assert not down.healthy and "cannot connect" in (down.last_error or "") and up.healthy


@pytest.mark.parametrize("broken", [
    b"",  # closes without a word
    b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * 70_000 + b"\r\n\r\n",  # a head past the bound
])
async def test_an_upstream_that_drops_the_request_gets_only_requests_that_may_run_twice_sent_elsewhere(client, broken):
    async def breaks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(broken)
        await writer.drain()

    async with fake(breaks) as bad, fake(ok_stream()) as good:
        head, _, outcome, upstreams = await relay(client, [bad.url, good.url], generate())
        assert head.status == 200 and outcome.upstream == good.url and not upstreams.upstreams[0].healthy
        with pytest.raises(UpstreamFailed) as failed:
            await relay(client, [bad.url, good.url], generate(idempotent=False))  # a create, a delete...
        assert failed.value.status == 502 and bad.url in failed.value.message
        assert good.connections == 1  # the second request never reached it


@pytest.mark.parametrize(("content_type", "ending"), [
    ("application/x-ndjson", b'\n{"error":'),
    ("text/event-stream", b'\n\ndata: {"error":{"message":'),
])
async def test_an_upstream_that_dies_mid_answer_ends_the_stream_with_an_error_in_its_framing(client, content_type,
                                                                                            ending):
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
                     % content_type.encode() + chunk(b'{"response":"a"') + b"20\r\npartial")
        await writer.drain()  # then the connection closes in the middle of a chunk

    async with fake(dies) as upstream:
        head, body, outcome, _ = await relay(client, [upstream.url], generate())
    assert head.status == 200 and outcome.status == 502 and outcome.complete
    assert body.startswith(b'{"response":"a"partial') and ending in body and body.endswith(b"\n")
    last = body.strip().split(b"\n")[-1].removeprefix(b"data: ")
    message = json.loads(last)["error"]
    assert "stopped in the middle of the answer" in (message if isinstance(message, str) else message["message"])


async def test_an_upstream_that_does_not_answer_in_time_is_a_504():
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    client = UpstreamClient(read_timeout=0.3)
    async with fake(silent) as upstream:
        with pytest.raises(UpstreamFailed) as failed:
            await relay(client, [upstream.url], generate())
    await client.aclose()
    assert failed.value.status == 504 and "did not answer in time (timed out: ReadTimeout)" in failed.value.message


# --- the gateway in front of a fake: a student who hangs up ------------------------------------------------------


def ollama_with(generate: Handler, seen: dict[str, asyncio.Event]) -> Handler:
    """A fake Ollama: version and tags answered, ``/api/generate`` by ``generate``; ``seen`` marks its requests."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ")[1]
            if target == b"/api/generate":
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                seen["generate"].set()
                await generate(reader, writer)
                return
            body = b'{"version":"0.12.6"}' if target == b"/api/version" else b'{"models":[{"name":"m","model":"m"}]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))

    return handler


@pytest.mark.parametrize("answers_head", [False, True])
async def test_a_student_who_hangs_up_closes_the_upstream_request(tmp_path, answers_head):
    """While the upstream thinks (no head yet) or streams slowly (a line, then nothing): either way the
    gateway notices the student leaving, closes the upstream connection and logs a 499."""
    from support import ServedApp

    from llm_experiment.classroom.gateway import create_app
    from llm_experiment.classroom.policy import Policy, PolicySettings
    from llm_experiment.classroom.roster import Roster
    from llm_experiment.classroom.usage import UsageLog

    seen = {"generate": asyncio.Event(), "closed": asyncio.Event()}

    async def generate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answers_head:
            writer.write(CHUNKED + chunk(b'{"response":"a","done":false}\n'))
        await reader.read()  # nothing more, until the gateway closes the connection
        seen["closed"].set()

    roster = Roster(tmp_path / "classroom.sqlite")
    key = roster.add_student("alice")
    usage = UsageLog(tmp_path / "classroom.sqlite")
    async with fake(ollama_with(generate, seen)) as upstream:
        app = create_app([upstream.url], roster, Policy(PolicySettings(keep_alive=-1)), usage)
        with ServedApp(app) as url:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=20) as student:
                for _ in range(200):  # until the gateway's first check has found the model
                    if (await student.get(url + "/api/tags")).json().get("models"):
                        break
                    await asyncio.sleep(0.05)
                request = student.build_request("POST", url + "/api/generate", json={"model": "m", "prompt": "hi"})
                response = await student.send(request, stream=True) if answers_head else None
                if response is not None:
                    assert response.status_code == 200
                    assert await anext(response.aiter_lines()) == '{"response":"a","done":false}'
                    await response.aclose()  # the student hangs up in the middle of the answer
                else:
                    waiting = asyncio.ensure_future(student.send(request, stream=True))
                    await seen["generate"].wait()
                    waiting.cancel()  # the student hangs up before the answer has begun
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiting
                await asyncio.wait_for(seen["closed"].wait(), 15)
            for _ in range(200):
                usage.flush()
                if [row["status"] for row in usage.rows() if row["endpoint"] == "/api/generate"] == [499]:
                    break
                await asyncio.sleep(0.05)
            assert [row["status"] for row in usage.rows() if row["endpoint"] == "/api/generate"] == [499]
    usage.close()
