"""The chat box's logic without a browser: send, stream, stop, reset, the model list, errors in the box.

Against the embedded engine; a small fake server only for what the engine will not do for us here
(a full queue, a classroom gateway that checks keys, an embedding-only model in /api/tags).
"""

from __future__ import annotations

import socket
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from support import MODEL, ServedApp

import llm_experiment
from llm_experiment.conversation import Conversation
from llm_experiment.widgets import ChatBox, chat_models

LONG = "List 200 animals, one per line, numbered."  # greedy, this runs to num_predict


def text_of(output) -> str:
    return output.outputs[0]["data"]["text/markdown"]


def bubbles(box: ChatBox, role: str) -> list[str]:
    return [text_of(c) for c in box.history.children if f"chatbox-{role}" in c._dom_classes]


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_send_streams_the_answer_into_its_bubble(url):
    box = ChatBox(server=url, temperature=0, options={"num_predict": 30})
    shown: list[str] = []
    show = box._show
    box._show = lambda bubble, markdown: (shown.append(markdown), show(bubble, markdown))  # record each redraw
    box.send("Why is the sky blue?")
    box.wait(120)
    expected = llm_experiment.chat([{"role": "user", "content": "Why is the sky blue?"}], server=url,
                                   options={"num_predict": 30, "temperature": 0}).text
    assert bubbles(box, "user") == ["Why is the sky blue?"]
    assert bubbles(box, "assistant") == [expected]  # the same text as one plain request
    assert len([s for s in shown if s.endswith("▌")]) >= 2, "the answer should appear piece by piece"
    assert box.conversation.history[-1] == {"role": "assistant", "content": expected}
    assert "30 tokens" in box.status.value and "tokens/s" in box.status.value
    assert "first token after" in box.status.value
    assert box.stop_button.disabled and not box.send_button.disabled


def test_enter_in_the_input_sends_and_settings_apply(url):
    box = ChatBox(server=url, options={"num_predict": 8, "seed": 42})
    box.system.value = "You are a pirate."
    box.temperature.value = 0
    box.input.value = "Hello"
    box.input._handle_custom_msg({"event": "submit"}, [])  # what the browser sends when Enter is pressed
    wait_for(lambda: box.input.value == "" and box.thread is not None)
    box.wait(120)
    assert box.conversation.messages[0] == {"role": "system", "content": "You are a pirate."}
    assert box.conversation.options == {"num_predict": 8, "seed": 42, "temperature": 0}
    assert bubbles(box, "user") == ["Hello"] and len(box.conversation.history) == 2


def test_stop_ends_the_stream_and_the_server_stops_generating(engine):
    stops_before = engine.log().count("generation stopped after")
    box = ChatBox(server=engine.url, temperature=0, options={"num_predict": 1500})
    box.send(LONG)
    assert box.busy and not box.stop_button.disabled
    wait_for(lambda: bubbles(box, "assistant")[-1] != "…")  # the first piece arrived
    box.stop_button.click()
    box.wait(60)
    assert not box.busy and "Stopped" in box.status.value
    partial = box.conversation.history[-1]["content"]
    assert partial and bubbles(box, "assistant")[-1] == partial  # the partial answer stays, in the history too
    wait_for(lambda: engine.log().count("generation stopped after") > stops_before, timeout=30)
    stopped = [line for line in engine.log().splitlines() if "generation stopped after" in line][-1]
    assert int(stopped.split("after ")[1].split()[0]) < 1500  # the server stopped early
    box.options = {"num_predict": 5}
    box.send("Hi")
    box.wait(120)
    assert "tokens/s" in box.status.value  # the model is free again, and the conversation goes on
    assert len(box.conversation.history) == 4


def test_reset_forgets_the_conversation_and_keeps_the_system_prompt(url, tmp_path):
    box = ChatBox(server=url, system="Be brief.", temperature=0, options={"num_predict": 5})
    box.send("Hi")
    box.wait(120)
    box.conversation.save(tmp_path / "chat.json")  # save and load come with the Conversation
    assert Conversation.load(tmp_path / "chat.json").history == box.conversation.history
    box.reset_button.click()
    assert box.history.children == () and box.conversation.history == [] and box.status.value == ""
    box.send("Hello")
    box.wait(120)
    assert box.conversation.messages[0]["content"] == "Be brief." and len(box.conversation.history) == 2


def test_reset_while_answering_stops_first(url):
    box = ChatBox(server=url, temperature=0, options={"num_predict": 1500})
    box.send(LONG)
    wait_for(lambda: bubbles(box, "assistant")[-1] != "…")
    box.reset()
    assert not box.busy and box.conversation.history == [] and box.history.children == ()


def test_the_model_list_comes_from_the_server(url):
    assert MODEL in chat_models(url)
    box = ChatBox(server=url)
    assert box.model.value == MODEL and MODEL in box.model.options


def test_one_send_at_a_time_and_no_empty_questions(url):
    box = ChatBox(server=url, temperature=0, options={"num_predict": 1500})
    assert box.send("   ") is None
    box.send(LONG)
    assert box.send("another") is None  # ignored while an answer streams
    box.stop()
    box.wait(60)
    assert bubbles(box, "user") == [LONG]


# Errors: shown in the box with their fix, never raised --------------------------------------------------------


def errors(box: ChatBox) -> list[str]:
    return [text_of(c) for c in box.history.children if "chatbox-error" in c._dom_classes]


def test_an_unknown_model_says_how_to_pull_it(url):
    box = ChatBox("no-such-model:1b", server=url)
    assert box.model.value == "no-such-model:1b" and MODEL in box.model.options
    box.send("Hi")
    box.wait(60)
    assert "llm-experiment pull no-such-model:1b" in errors(box)[-1]
    assert box.conversation.history == []  # a failed turn leaves no trace
    assert bubbles(box, "assistant") == ["*(no answer)*"] and not box.send_button.disabled


def test_no_server_says_how_to_start_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    box = ChatBox(server=nobody)  # the model list fails already
    assert "No server answers at " + nobody in errors(box)[0] and "llm-experiment serve" in errors(box)[0]
    box.send("Hi")
    box.wait(60)
    assert len(errors(box)) == 2 and "Error" in box.status.value


KEY = "sk-right"


async def fake_tags(request: Request) -> JSONResponse:
    return JSONResponse({"models": [
        {"name": "all-minilm:latest", "details": {"family": "bert"}, "capabilities": ["embedding"]},
        {"name": "nomic-embed-text:latest", "details": {"family": "nomic-bert"}},  # an older Ollama: no capabilities
        {"name": "llama3.2:1b", "details": {"family": "llama"}},
        {"name": MODEL, "details": {"family": "llama"}, "capabilities": ["completion"]}]})


async def fake_gateway_chat(request: Request) -> JSONResponse:
    """A classroom gateway in miniature: a key check, and a queue that is always full."""
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return JSONResponse({"error": "missing or unknown API key: set OLLAMA_API_KEY"}, status_code=401)
    return JSONResponse({"error": "server busy, please try again.  maximum pending requests exceeded"},
                        status_code=503)


@pytest.fixture(scope="module")
def fake():
    app = Starlette(routes=[Route("/api/tags", fake_tags), Route("/api/chat", fake_gateway_chat, methods=["POST"])])
    with ServedApp(app) as url:
        yield url


def test_embedding_models_are_left_out_of_the_dropdown(fake):
    assert chat_models(fake) == ["llama3.2:1b", MODEL]
    assert ChatBox(server=fake).model.options == ("llama3.2:1b", MODEL)


def test_a_refused_key_and_a_full_queue(fake, monkeypatch):
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    box = ChatBox(server=fake)
    box.send("Hi")
    box.wait(60)
    assert "refused the key" in errors(box)[-1] and "OLLAMA_API_KEY" in errors(box)[-1]
    monkeypatch.setenv("OLLAMA_API_KEY", KEY)  # sent as Authorization: Bearer, read at each request
    box.send("Hi")
    box.wait(60)
    assert "The server is busy" in errors(box)[-1] and "maximum pending requests" in errors(box)[-1]


def test_a_server_that_is_not_ollama_is_reported_in_the_box():
    from starlette.responses import PlainTextResponse

    app = Starlette(routes=[Route("/api/tags", lambda request: PlainTextResponse("<html>a web page</html>"))])
    with ServedApp(app) as url:
        box = ChatBox(server=url)  # no traceback: the failure is in the box
    assert f"The server at {url} does not answer as Ollama does" in errors(box)[0] and "Error" in box.status.value
