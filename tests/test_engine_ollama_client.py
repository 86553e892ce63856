"""The official ollama Python client, unchanged, against the embedded engine."""

from __future__ import annotations

import asyncio

import ollama
import pytest
from support import GREEDY, MODEL

SHORT = {**GREEDY, "num_predict": 8}


@pytest.fixture
def client(url) -> ollama.Client:
    return ollama.Client(host=url)


def test_generate(client):
    r = client.generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT)
    assert r.done and r.done_reason == "length" and r.eval_count == 8 and r.response
    assert r.context and r.total_duration > 0


def test_generate_streamed(client):
    parts = list(client.generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == client.generate(model=MODEL, prompt="Why is the sky blue?",
                                                                 options=SHORT).response


def test_chat(client):
    r = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hello!"}], options=SHORT)
    assert r.message.role == "assistant" and r.message.content and r.eval_count == 8


def test_chat_streamed(client):
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "Hello!"}], options=SHORT,
                             stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content for p in parts)


def test_list_show_ps(client):
    assert MODEL in [m.model for m in client.list().models]
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion"] and shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    client.generate(model=MODEL, prompt="", keep_alive="1m")  # load
    running = client.ps().models
    assert [m.model for m in running] == [MODEL] and running[0].expires_at is not None


def test_errors_are_response_errors(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model", prompt="hi")
    assert err.value.status_code == 404 and "not found" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], think=True)
    assert err.value.status_code == 400 and err.value.error == '"smollm2:135m" does not support thinking'
    with pytest.raises(ollama.ResponseError) as err:
        list(client.generate(model="no-such-model", prompt="hi", stream=True))
    assert err.value.status_code == 404


def test_format_json_through_the_client(client):
    r = client.generate(model=MODEL, prompt="A cat as JSON with a name.", format="json",
                        options={**GREEDY, "num_predict": 40})
    assert r.response.lstrip().startswith("{")


def test_async_client_serves_several_prompts(url):
    async def ask_all() -> list[str]:
        client = ollama.AsyncClient(host=url)
        prompts = ["Hi", "Hello", "Hey there"]
        replies = await asyncio.gather(*(client.generate(model=MODEL, prompt=p, options=SHORT) for p in prompts))
        return [r.response for r in replies]

    replies = asyncio.run(ask_all())
    assert len(replies) == 3 and all(replies)
