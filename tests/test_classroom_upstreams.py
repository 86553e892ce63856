"""Routing over several upstream Ollama servers: health checks, failover, least busy, model names.

The upstreams here are fakes behind ``httpx.MockTransport``: these are unit tests of the routing logic
(which server is picked, when one is taken out and comes back), and a fake can be switched off and on
in one line. The gateway's own tests run it against real engines over real sockets.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from llm_experiment.classroom.upstreams import CHECK_TIMEOUT, NoUpstream, Upstream, Upstreams

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

A, B, C = "http://lab-a:11434", "http://lab-b:11434", "http://lab-c:11434"


@pytest.fixture
def anyio_backend():
    return "asyncio"


class FakeOllamas:
    """Answers ``/api/version`` and ``/api/tags`` for each host as an Ollama server would, or not at all."""

    def __init__(self, models: dict[str, list[str]]):
        self.models = models  # url -> names in /api/tags
        self.down: set[str] = set()
        self.broken: dict[str, tuple[int, str]] = {}  # url -> (status, text) it answers instead
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        url = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if url in self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if url in self.broken:
            status, text = self.broken[url]
            return httpx.Response(status, text=text)
        if request.url.path == "/api/version":
            return httpx.Response(200, json={"version": "0.12.6"})
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": n, "model": n} for n in self.models[url]]})
        return httpx.Response(404, json={"error": "404 page not found"})


@pytest.fixture
async def fake():
    return FakeOllamas({A: ["smollm2:135m", "all-minilm:latest"], B: ["smollm2:135m"], C: ["Qwen3:latest"]})


@pytest.fixture
async def client(fake):
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as client:
        yield client


async def test_refresh_reads_version_and_models_with_short_timeouts(fake, client):
    upstreams = Upstreams([A, B], client)
    await upstreams.refresh()
    a, b = upstreams.upstreams
    assert (a.healthy, a.version, a.last_error) == (True, "0.12.6", None)
    assert a.models == ["all-minilm:latest", "smollm2:135m"]
    assert b.models == ["smollm2:135m"]
    assert {r.url.path for r in fake.seen} == {"/api/version", "/api/tags"}
    assert all(r.extensions["timeout"] == CHECK_TIMEOUT.as_dict() for r in fake.seen)
    assert CHECK_TIMEOUT.connect <= 2 and CHECK_TIMEOUT.read <= 5


async def test_pick_takes_the_least_busy_upstream_that_has_the_model(client):
    upstreams = Upstreams([A, B, C], client)
    await upstreams.refresh()
    a, b, c = upstreams.upstreams
    assert upstreams.pick("smollm2:135m") is a  # equally idle: the first listed
    async with upstreams.use(a):
        assert a.active == 1
        assert upstreams.pick("smollm2:135m") is b
        async with upstreams.use(b), upstreams.use(b):
            assert upstreams.pick("smollm2:135m") is a
            assert upstreams.pick("all-minilm") is a  # only a has it, busy or not
    assert a.active == b.active == 0


async def test_model_names_match_as_in_ollama(client):
    upstreams = Upstreams([A, C], client)
    await upstreams.refresh()
    a, c = upstreams.upstreams
    async with upstreams.use(a):  # a is busier, so c is picked only when it is the one with the model
        assert upstreams.pick("qwen3") is c  # no tag means :latest, and case does not matter
        assert upstreams.pick("QWEN3:LATEST") is c
        assert upstreams.pick("registry.ollama.ai/library/qwen3:latest") is c
        assert upstreams.pick("qwen3:8b") is c  # nobody has it: the least busy healthy one answers 404 itself
        assert upstreams.pick("not a valid name!") is c
        assert c.has_model("Qwen3") and not a.has_model("qwen3")


async def test_load_counts_each_upstreams_parallelism(client):
    big, small = Upstream(A, parallel=4), Upstream(B, parallel=1)
    upstreams = Upstreams([small, big], client)
    assert upstreams.capacity == 5
    await upstreams.refresh()
    async with upstreams.use(big), upstreams.use(big), upstreams.use(small):
        assert upstreams.pick("smollm2:135m") is big  # 2 of 4 busy beats 1 of 1


async def test_a_server_that_is_down_is_skipped_and_comes_back_after_a_refresh(fake, client):
    upstreams = Upstreams([A, B], client)
    fake.down.add(A)
    await upstreams.refresh()
    a, b = upstreams.upstreams
    assert not a.healthy and "cannot connect" in a.last_error and "refused" in a.last_error
    assert b.healthy
    async with upstreams.use(b), upstreams.use(b):
        assert upstreams.pick("smollm2:135m") is b  # busy, but the only one up
    fake.down.clear()
    await upstreams.refresh()
    assert a.healthy and a.last_error is None
    assert upstreams.pick("smollm2:135m") is a


async def test_mark_failed_takes_an_upstream_out_until_a_refresh_finds_it_healthy(client):
    upstreams = Upstreams([A, B], client)
    await upstreams.refresh()
    a, b = upstreams.upstreams
    upstreams.mark_failed(a, "502 from the upstream")
    assert not a.healthy and a.last_error == "502 from the upstream"
    assert upstreams.pick("smollm2:135m") is b
    await upstreams.refresh()
    assert upstreams.pick("smollm2:135m") is a


async def test_a_connection_error_inside_use_marks_the_upstream_failed(client):
    upstreams = Upstreams([A, B], client)
    a, b = upstreams.upstreams
    with pytest.raises(httpx.ConnectError):
        async with upstreams.use(a):
            raise httpx.ConnectError("[Errno 111] Connection refused")
    assert not a.healthy and a.active == 0
    with pytest.raises(ValueError):  # any other error is the caller's business: counted out, not marked
        async with upstreams.use(b):
            raise ValueError("a bad request")
    assert b.healthy and b.active == 0


async def test_a_server_that_answers_but_not_like_ollama_is_unhealthy(fake, client):
    fake.broken[A] = (500, "Internal Server Error")
    fake.broken[B] = (200, "<html>a login page</html>")
    upstreams = Upstreams([A, B, C], client)
    await upstreams.refresh()
    a, b, c = upstreams.upstreams
    assert not a.healthy and a.last_error == "/api/version answered 500, not 200"
    assert not b.healthy and b.last_error == "/api/version answers, but not like Ollama does (not its JSON)"
    assert c.healthy
    fake.broken[C] = (200, '{"version": "0.12.6", "models": [{"size": 1}]}')
    await upstreams.refresh()
    assert c.last_error == "/api/tags answers, but not like Ollama does (a model without a name)"
    assert not c.healthy and c.models == ["Qwen3:latest"]  # what it listed when it last answered well


async def test_no_healthy_upstream_names_every_url_and_what_to_check(fake, client):
    fake.down.update({A, B})
    upstreams = Upstreams([A, B], client)
    await upstreams.refresh()
    with pytest.raises(NoUpstream) as caught:
        upstreams.pick("smollm2:135m")
    message = str(caught.value)
    assert A in message and B in message and "refused" in message
    assert "ollama serve" in message and "OLLAMA_HOST=0.0.0.0" in message


async def test_before_the_first_check_every_upstream_counts_as_healthy(client):
    upstreams = Upstreams(["lab-a", "http://lab-b:11434/"], client)
    a, b = upstreams.upstreams
    assert (a.url, b.url) == (A, B)  # OLLAMA_HOST rules: default scheme and port, no trailing slash
    assert a.healthy and a.models is None
    assert upstreams.pick("smollm2:135m") is a
    assert upstreams.status()[0] == {"url": A, "healthy": True, "active": 0, "parallel": 1, "models": None,
                                     "version": None, "last_error": None, "checked_s_ago": None}


async def test_run_checks_again_and_again_until_cancelled(fake, client):
    upstreams = Upstreams([A, B], client, check_every=0.01)
    fake.down.add(B)
    checker = asyncio.create_task(upstreams.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(fake.seen) >= 8:
                break
        assert not upstreams.upstreams[1].healthy
        fake.down.clear()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if upstreams.upstreams[1].healthy:
                break
        assert upstreams.upstreams[1].healthy
    finally:
        checker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await checker
    status = upstreams.status()
    assert [s["url"] for s in status] == [A, B]
    assert all(s["healthy"] and s["checked_s_ago"] is not None for s in status)


def test_an_upstream_needs_a_url_and_a_positive_parallelism():
    with pytest.raises(ValueError, match="at least one"):
        Upstreams([], httpx.AsyncClient())
    with pytest.raises(ValueError, match="parallel"):
        Upstream(A, parallel=0)
