"""The OpenAI-compatible ``/v1`` routes, driven over a real socket by the official ``openai`` client."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from pydantic import BaseModel
from support import MODEL

HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]}], max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL and r.system_fingerprint == "fp_ollama" and r.created > 0
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, finish, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content)
    assert finish.choices[0].finish_reason == "length" and finish.usage is None
    assert last.choices == [] and last.usage.completion_tokens == 6 and last.usage.prompt_tokens > 0


def test_chat_stream_wire_format(url):
    r = requests.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 2,
                                                          "stream": True}, timeout=120)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_chat_max_tokens_gives_length(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    r = client.chat.completions.create(model=MODEL, messages=HI, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_chat_stop(client):
    r = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=30, stop=["e"])
    assert "e" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=30, stop="o")
    assert "o" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_chat_seed_is_reproducible(client):
    def once() -> str:
        r = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=10, temperature=0, seed=7)
        return r.choices[0].message.content

    assert once() == once()


def test_chat_json_object(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "A JSON object."}],
                                       max_tokens=40, temperature=0, response_format={"type": "json_object"})
    content = r.choices[0].message.content
    assert content.lstrip().startswith("{")  # the grammar allows only an object
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


class City(BaseModel):
    name: str
    population: int


def test_chat_json_schema_parse(client):
    r = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
                                      max_tokens=60, temperature=0, response_format=City)
    city = r.choices[0].message.parsed
    assert isinstance(city, City)


def test_beta_parse_as_older_code_calls_it(client):
    """Code written for openai 1.x calls ``client.beta.chat.completions.parse``; it still works."""
    r = client.beta.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Describe Rome."}],
                                           max_tokens=60, temperature=0, response_format=City)
    assert isinstance(r.choices[0].message.parsed, City) and r.usage.completion_tokens > 0


def test_completion(client):
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 4


def test_completion_stream_with_usage(client):
    chunks = list(client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3


def test_response(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=8)
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.model == MODEL and r.created_at > 0 and r.output_text
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.max_output_tokens == 8 and r.temperature == 1.0 and r.instructions is None


def test_response_instructions_and_items(client):
    r = client.responses.create(model=MODEL, instructions="You are terse.", temperature=0, top_p=0.9,
                                max_output_tokens=6, input=[
                                    {"role": "user", "content": "Say hello."},
                                    {"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": "Hello."}]},
                                    {"type": "message", "role": "user",
                                     "content": [{"type": "input_text", "text": "Again."}]}])
    assert r.output_text and r.instructions == "You are terse." and (r.temperature, r.top_p) == (0, 0.9)
    short = client.responses.create(model=MODEL, input="Again.", max_output_tokens=6)
    assert r.usage.input_tokens > short.usage.input_tokens  # the instructions and earlier turns were sent


def test_response_stream(client):
    events = list(client.responses.create(model=MODEL, input="Hi", max_output_tokens=5, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text and events[-4].text == text and done.output_text == text and done.status == "completed"
    assert done.usage.output_tokens == 5 and len({e.response.id for e in (events[0], events[-1])}) == 1


def test_response_wire_format_and_errors(url):
    r = requests.post(url + "/v1/responses", json={"model": MODEL, "input": "Hi", "max_output_tokens": 1,
                                                   "stream": True}, timeout=120)
    assert r.headers["content-type"].startswith("text/event-stream")
    first = r.text.split("\n\n")[0].split("\n")
    assert first[0] == "event: response.created" and json.loads(first[1][len("data: "):])["sequence_number"] == 0
    for body, status, message in [
        ({"input": 3}, 400, "input must be a string or array: json: cannot unmarshal number 3 into Go value of "
                            "type []json.RawMessage"),
        ({"input": [{"content": "x"}]}, 400, "input[0]: input item missing required 'type' field"),
        ({"input": [{"type": "image"}]}, 400, 'input[0]: unknown input item type: "image"'),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400,
         "file inputs are not currently supported"),
        ({"input": "x", "max_output_tokens": "8"}, 400, "json: cannot unmarshal string into Go struct field "
                                                         "ResponsesRequest.max_output_tokens of type int"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, 501,
         "does not support function_call_output input items"),
    ]:
        r = requests.post(url + "/v1/responses", json={"model": MODEL, **body}, timeout=30)
        assert r.status_code == status and message in r.json()["error"]["message"], (body, r.text)


def test_response_is_stateless(client):
    r = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, previous_response_id="resp_1")
    assert r.status == "completed" and r.previous_response_id is None  # ignored, as Ollama does


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    m = client.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "library") and m.created > 0


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model:1b")
    assert "model 'no-such-model:1b' not found" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert 'model "no-such-model" not found' in info.value.message
    assert info.value.body["type"] == "not_found_error"


def test_bad_requests(client, url):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert "too short" in info.value.message
    r = requests.post(url + "/v1/chat/completions", json={"model": MODEL, "messages": HI, "temperature": "hot"},
                      timeout=30)
    assert r.status_code == 400 and r.json() == {"error": {
        "message": "json: cannot unmarshal string into Go struct field ChatCompletionRequest.temperature of type "
                   "float64", "type": "invalid_request_error", "param": None, "code": None}}
    with pytest.raises(openai.BadRequestError, match="invalid type for 'stop' field: float64"):
        client.completions.create(model=MODEL, prompt="x", stop=["a", 1])  # type: ignore[list-item]


def test_unbuilt_routes_say_so(url):
    r = requests.post(url + "/v1/messages", json={"model": MODEL}, timeout=30)
    assert r.status_code == 501 and "does not support POST /v1/messages" in r.json()["error"]["message"]

