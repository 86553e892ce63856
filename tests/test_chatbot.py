"""The chatbot service (``llm-experiment chatbot``), over real sockets, in front of the session's embedded engine."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route
from support import MODEL, ServedApp

from llm_experiment.chatbot import create_app
from llm_experiment.chatbot_schema import MAX_BODY, MAX_CONTENT, MAX_MESSAGES, ROUTE
from llm_experiment.cli import main
from llm_experiment.embedded import free_port

HI = "Say hello."
SYSTEM = "You are a pirate."
# Greedy, this prompt makes smollm2:135m write for far longer than the tests wait (1200 tokens and more).
ENDLESS = "Count from 1 to 1000, separated by commas."


@pytest.fixture(scope="module")
def service(engine) -> str:
    """The service in front of the engine, with a system prompt of its own."""
    with ServedApp(create_app(engine.url, MODEL, SYSTEM)) as url:
        yield url


def post(service: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(service + ROUTE, json=body, timeout=60, **kwargs)


def direct(engine, messages: list[dict[str, str]], num_predict: int) -> dict[str, Any]:
    """The same question asked straight to the engine's /api/chat, greedy."""
    r = requests.post(engine.url + "/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                                      "options": {"temperature": 0, "num_predict": num_predict}},
                      timeout=60)
    r.raise_for_status()
    return r.json()


def events(text: str) -> list[Any]:
    """The data of each server-sent event; ``[DONE]`` stays a string."""
    assert text.endswith("\n\n")
    blocks = text[:-2].split("\n\n")
    assert all(b.startswith("data: ") for b in blocks), text
    return [b[6:] if b == "data: [DONE]" else json.loads(b[6:]) for b in blocks]


# --- answers --------------------------------------------------------------------------------------------------------


def test_text_message_gets_a_chat_completion_with_the_upstream_counts(service, engine):
    r = post(service, {"messages": HI, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion"
    assert abs(answer["created"] - time.time()) < 60 and answer["model"] == MODEL
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    # the service's system prompt came first: the engine, asked the same, counts and says the same
    same = direct(engine, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": HI}], 5)
    assert choice["message"]["content"] == same["message"]["content"]
    assert answer["usage"] == {"prompt_tokens": same["prompt_eval_count"], "completion_tokens": same["eval_count"],
                               "total_tokens": same["prompt_eval_count"] + same["eval_count"]}
    assert answer["usage"]["completion_tokens"] == 5


def test_message_list_with_its_own_system_prompt_keeps_it(service, engine):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": HI}]
    answer = post(service, {"messages": messages, "max_tokens": 3, "temperature": 0}).json()
    same = direct(engine, messages, 3)  # without the service's pirate: it is not added
    assert answer["choices"][0]["message"]["content"] == same["message"]["content"]
    assert answer["usage"]["prompt_tokens"] == same["prompt_eval_count"]


def test_service_without_system_prompt_sends_the_messages_as_they_are(engine):
    with ServedApp(create_app(engine.url)) as url:  # model: the default one
        answer = post(url, {"messages": [{"role": "user", "content": HI}], "max_tokens": 2, "temperature": 0}).json()
    same = direct(engine, [{"role": "user", "content": HI}], 2)
    assert answer["model"] == MODEL and answer["usage"]["prompt_tokens"] == same["prompt_eval_count"]
    assert answer["choices"][0]["message"]["content"] == same["message"]["content"]


def test_stream_sends_role_text_finish_usage_and_done(service):
    whole = post(service, {"messages": HI, "max_tokens": 6, "temperature": 0}).json()
    r = post(service, {"messages": HI, "max_tokens": 6, "temperature": 0, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    *chunks, done = events(r.text)
    assert done == "[DONE]"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    first, *pieces, finish, last = chunks
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    assert all(list(p["choices"][0]["delta"]) == ["content"] and p["choices"][0]["finish_reason"] is None
               for p in pieces)
    assert "".join(p["choices"][0]["delta"]["content"] for p in pieces) == whole["choices"][0]["message"]["content"]
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}] and finish["usage"] is None
    assert last["choices"] == [] and last["usage"] == whole["usage"]


def test_finish_reason_stop_when_the_model_ends(service):
    terse = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    answer = post(service, {"messages": terse, "max_tokens": 50, "temperature": 0}).json()
    assert answer["choices"][0]["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] < 50


def test_unknown_fields_are_ignored(service):
    r = post(service, {"messages": HI, "max_tokens": 1, "n": 3, "tools": [], "user": "x", "model": None})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1


# --- refused requests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": 3}, "messages", "valid array"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({}, "messages", "Field required"),
    ([{"role": "user", "content": "x"}], "body", "object"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role", "'system', 'user' or 'assistant'"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "Field required"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "valid string"),
    ({"messages": "x", "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"messages": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"messages": "x", "max_tokens": 4097}, "max_tokens", "less than or equal to 4096"),
    ({"messages": "x", "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"messages": "x", "stream": "yes"}, "stream", "valid boolean"),
    ({"messages": [{"role": "user", "content": "x"}] * (MAX_MESSAGES + 1)}, "messages", "at most 100 items"),
    ({"messages": "x" * (MAX_CONTENT + 1)}, "messages.0.content", "at most 32768 characters"),
])
def test_schema_violations_are_422_with_what_was_wrong(service, body, param, words):
    r = post(service, body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"] and f"{param}: " in error["message"]
    assert error["type"] == "invalid_request_error" and set(r.json()) == {"error"}


def test_every_fault_is_listed(service):
    error = post(service, {"messages": [{"role": "bot", "content": 1}], "temperature": -1}).json()["error"]
    for fault in ("messages.0.role: ", "messages.0.content: ", "temperature: "):
        assert fault in error["message"]


@pytest.mark.parametrize("raw", [b"{bad", b"", b"\xff\xfe", b'{"messages": "x",}'])
def test_invalid_json_is_400(service, raw):
    r = requests.post(service + ROUTE, data=raw, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_too_large_body_is_413(service):
    body = json.dumps({"messages": "x" * MAX_BODY}).encode()
    r = requests.post(service + ROUTE, data=body, timeout=10)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["error"]["message"]

    def chunked():  # no content-length: the limit holds while reading
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    r = requests.post(service + ROUTE, data=chunked(), timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert post(service, {"messages": HI, "max_tokens": 1}).status_code == 200  # and the service goes on


def test_other_routes_and_methods_answer_in_the_same_shape(service):
    r = requests.get(service + "/nothing-here", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.get(service + ROUTE, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "error" in r.json()


def test_a_bug_is_a_clean_500_and_logged(engine, caplog):
    caplog.set_level(logging.INFO, logger="llm_experiment.chatbot")
    app = create_app(engine.url)

    async def broken(request):
        raise RuntimeError("secret internals")

    app.router.routes.append(Route("/broken", broken))
    with ServedApp(app) as url:
        r = requests.get(url + "/broken", timeout=10)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "RuntimeError('secret internals')" in caplog.text


# --- the upstream's failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_with_what_to_pull(service, stream):
    r = post(service, {"messages": HI, "model": "no-such-model:1b", "stream": stream})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert "`ollama pull no-such-model:1b`" in error["message"] and error["param"] == "model"
    assert error["type"] == "not_found_error"


def test_refused_model_name_is_400_quoting_the_upstream(service):
    r = post(service, {"messages": HI, "model": "not a name!"})
    assert r.status_code == 400 and "invalid model name" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_down_is_502_with_what_to_check(stream):
    nobody = f"http://127.0.0.1:{free_port()}"
    with ServedApp(create_app(nobody)) as url:
        r = post(url, {"messages": HI, "stream": stream})
        health = requests.get(url + "/health", timeout=10)
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert nobody in message and "OLLAMA_HOST" in message and "--upstream" in message and "ollama serve" in message
    assert health.status_code == 503
    assert health.json()["status"] == "degraded" and health.json()["upstream"]["reachable"] is False
    assert nobody in health.json()["upstream"]["error"]


def test_upstream_too_slow_is_504():
    # A fake upstream: the real engine cannot be made to stay silent after accepting a request. A listening socket
    # that never accepts is enough: the kernel completes the connection, nobody ever answers.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        upstream = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with ServedApp(create_app(upstream, read_timeout=0.5)) as url:
            started = time.monotonic()
            r = post(url, {"messages": HI})
            assert time.monotonic() - started < 5
    assert r.status_code == 504 and "did not answer within 0.5 s" in r.json()["error"]["message"]


def fake_ollama() -> Starlette:
    """A fake upstream, only for faults the engine cannot be made to produce on demand: an error in the middle of an
    answer ("fails"), an answer that ends without its last line ("cut"), a busy server ("busy")."""

    async def chat(request):
        model = (await request.json())["model"]
        if model == "busy":
            return JSONResponse({"error": "server busy, please try again."}, status_code=503)

        async def lines():
            yield json.dumps({"model": model, "message": {"role": "assistant", "content": "Hel"}, "done": False}) + "\n"
            if model == "fails":
                yield json.dumps({"error": "model runner has unexpectedly stopped"}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return Starlette(routes=[Route("/api/chat", chat, methods=["POST"])])


@pytest.mark.parametrize(("model", "words"), [("fails", "failed while answering: model runner has unexpectedly"),
                                              ("cut", "ended its answer too early")])
def test_upstream_failing_mid_answer_is_502_or_an_error_event(model, words):
    with ServedApp(fake_ollama()) as upstream, ServedApp(create_app(upstream)) as url:
        r = post(url, {"messages": HI, "model": model})
        assert r.status_code == 502 and words in r.json()["error"]["message"]
        r = post(url, {"messages": HI, "model": model, "stream": True})
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError, match=words):
            list(client.post("/example-service", cast_to=ChatCompletionChunk, stream=True,
                             stream_cls=openai.Stream[ChatCompletionChunk],
                             body={"messages": HI, "model": model, "stream": True}))
    assert r.status_code == 200  # the status line went before the failure: the error comes as the last event
    first, text, error = events(r.text)
    assert first["choices"][0]["delta"]["role"] == "assistant" and text["choices"][0]["delta"]["content"] == "Hel"
    assert error["error"]["code"] == "upstream_error" and words in error["error"]["message"]


def test_upstream_error_status_is_502_quoting_it():
    with ServedApp(fake_ollama()) as upstream, ServedApp(create_app(upstream)) as url:
        r = post(url, {"messages": HI, "model": "busy"})
    assert r.status_code == 502 and "failed with 503: server busy, please try again." in r.json()["error"]["message"]


# --- health ---------------------------------------------------------------------------------------------------------


def test_health_ok(service, engine):
    r = requests.get(service + "/health", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "upstream": {"url": engine.url, "reachable": True, "model": MODEL,
                                                     "model_present": True}}


def test_health_503_without_the_model(engine):
    with ServedApp(create_app(engine.url, "no-such-model:1b")) as url:
        r = requests.get(url + "/health", timeout=10)
    assert r.status_code == 503
    upstream = r.json()["upstream"]
    assert upstream["reachable"] is True and upstream["model_present"] is False
    assert "ollama pull no-such-model:1b" in upstream["error"]


# --- a client that leaves stops the generation ----------------------------------------------------------------------


def engine_answers_within(engine, seconds: float) -> bool:
    """Whether the engine answers a load request (no messages) in time. It generates nothing, but waits for the
    model like any request: the engine runs one generation at a time per model."""
    try:
        return requests.post(engine.url + "/api/chat", json={"model": MODEL, "messages": [], "stream": False},
                             timeout=seconds).json()["done_reason"] == "load"
    except requests.ReadTimeout:
        return False


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_stops_the_upstream_generation(service, engine, stream, caplog):
    caplog.set_level(logging.INFO, logger="llm_experiment.chatbot")
    body = json.dumps({"messages": ENDLESS, "max_tokens": 4096, "temperature": 0, "stream": stream}).encode()
    host, port = service.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)), timeout=60)
    client.sendall(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                   % (ROUTE.encode(), len(body), body))
    if stream:  # wait for the text to flow
        received = b""
        while received.count(b'"content"') < 5:
            piece = client.recv(65536)
            assert piece, received
            received += piece
    else:
        time.sleep(0.5)
    # The engine is busy with our 4096 tokens (a minute or more): a request for the model waits behind them...
    assert not engine_answers_within(engine, 1.0)
    client.close()
    # ...until the client leaves: the service closes its upstream request and the engine stops generating. (Within
    # a second on an idle machine; the margin is for other processes on the same cores.)
    assert engine_answers_within(engine, 10.0)
    if not stream:
        assert "the client left" in caplog.text


# --- the official openai client -------------------------------------------------------------------------------------


def test_openai_client_calls_the_route(service):
    client = openai.OpenAI(base_url=service + "/v1", api_key="unused", max_retries=0, timeout=60)
    reply = client.post("/example-service", cast_to=ChatCompletion,
                        body={"messages": [{"role": "user", "content": HI}], "max_tokens": 4, "temperature": 0})
    assert isinstance(reply, ChatCompletion) and reply.choices[0].message.content
    assert reply.usage.completion_tokens == 4 and reply.choices[0].finish_reason == "length"

    stream = client.post("/example-service", cast_to=ChatCompletionChunk, stream=True,
                         stream_cls=openai.Stream[ChatCompletionChunk],
                         body={"messages": HI, "max_tokens": 4, "temperature": 0, "stream": True})
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content and chunks[-1].usage == reply.usage

    with pytest.raises(openai.NotFoundError) as info:
        client.post("/example-service", cast_to=ChatCompletion, body={"messages": HI, "model": "no-such-model:1b"})
    assert "ollama pull" in info.value.message and info.value.code == "model_not_found"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.post("/example-service", cast_to=ChatCompletion, body={"messages": []})
    assert info.value.param == "messages"


# --- the schema: published, documented, and what the service does --------------------------------------------------


def test_openapi_document_and_docs_page(service):
    spec = requests.get(service + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    answers = spec["paths"][ROUTE]["post"]["responses"]
    assert set(answers) == {"200", "400", "404", "413", "422", "500", "502", "504"}
    assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"ChatRequest", "Message", "ChatCompletion", "ChatCompletionChunk", "ErrorBody", "Health"} <= set(
        spec["components"]["schemas"])
    assert set(spec["paths"]["/health"]["get"]["responses"]) == {"200", "503", "500"}

    page = requests.get(service + "/docs", timeout=10)
    assert page.headers["content-type"].startswith("text/html")
    assert f"curl -s {service}{ROUTE}" in page.text and "max_tokens" in page.text and "/health" in page.text
    # self-contained: nothing to fetch, so it works in a classroom without internet
    for fetching in ("<script", "<link", "src=", "url(", "@import", "href='http", 'href="http'):
        assert fetching not in page.text


def _tightened(spec: dict[str, Any]) -> dict[str, Any]:
    """The published schema with cheap bounds, for positive examples: a few short messages, at most 3 tokens, the
    model that is there. (Its own bounds allow answers of 4096 tokens: minutes each on these machines.)"""
    spec = json.loads(json.dumps(spec))
    schemas = spec["components"]["schemas"]
    request = schemas["ChatRequest"]
    request["properties"]["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": 3}
    request["properties"]["model"] = {"enum": [MODEL]}
    request["required"] = ["messages", "max_tokens"]
    request["properties"]["messages"] = {"anyOf": [
        {"type": "string", "maxLength": 40},
        {"type": "array", "items": {"$ref": "#/components/schemas/Message"}, "minItems": 1, "maxItems": 3}]}
    schemas["Message"]["properties"]["content"]["maxLength"] = 40
    return spec


FUZZ = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


def test_schemathesis_positive_examples_get_valid_answers(service):
    spec = requests.get(service + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(_tightened(spec))

    @settings(FUZZ, max_examples=20)
    @given(case=schema[ROUTE]["POST"].as_strategy(schemathesis.GenerationMode.POSITIVE))
    def chat(case):
        case.call_and_validate(base_url=service, timeout=60)

    @settings(FUZZ, max_examples=3)
    @given(case=schema["/health"]["GET"].as_strategy(schemathesis.GenerationMode.POSITIVE))
    def health(case):
        case.call_and_validate(base_url=service, timeout=10)

    chat()
    health()


def test_schemathesis_negative_examples_are_refused(service):
    schema = schemathesis.openapi.from_url(service + "/openapi.json")  # the schema as published

    @settings(FUZZ, max_examples=40)
    @given(case=schema[ROUTE]["POST"].as_strategy(schemathesis.GenerationMode.NEGATIVE))
    def chat(case):
        response = case.call_and_validate(base_url=service, timeout=60)
        assert response.status_code in (400, 413, 422), response.text  # refused before any upstream call

    chat()


# --- the command ----------------------------------------------------------------------------------------------------


def test_command_help_and_bad_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["chatbot", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--upstream", "--host", "--port", "--model", "--system", "OLLAMA_HOST", "/v1/example-service"):
        assert option in out
    assert main(["chatbot", "--read-timeout", "0"]) == 2


def test_command_on_a_port_in_use_says_so(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        assert main(["chatbot", "--port", str(busy.getsockname()[1])]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_command_serves_until_ctrl_c(engine):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llm_experiment", "chatbot", "--upstream", engine.url,
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and process.poll() is None, "the service did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in out
    assert "GET /health HTTP/1.1\" 200" in out and out.rstrip().endswith("llm-experiment chatbot: stopped")
