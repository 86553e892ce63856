"""The helpers students use, against the embedded engine (and a fake server for what it cannot do)."""

from __future__ import annotations

import socket
import threading
import typing

import pytest
from support import GREEDY

from llm_experiment import Conversation, OllamaError, Reply, Stream, chat, generate
from llm_experiment.client import get
from llm_experiment.embedded import free_port

SHORT = {**GREEDY, "num_predict": 8}


def test_generate_returns_the_text_and_the_statistics(url):
    reply = generate("Why is the sky blue?", server=url, options=SHORT)
    assert isinstance(reply, Reply) and reply.text and str(reply) == reply.text
    assert reply.stats["done"] is True and reply.stats["eval_count"] == 8


def test_generate_streams_pieces_and_keeps_the_final_object(url):
    stream = generate("Why is the sky blue?", server=url, options=SHORT, stream=True)
    assert isinstance(stream, Stream)
    pieces = list(stream)
    assert len(pieces) > 1 and stream.reply is not None
    assert stream.reply.text == "".join(pieces) == generate("Why is the sky blue?", server=url, options=SHORT).text
    assert stream.reply.stats["eval_count"] == 8


def test_chat_returns_the_assistant_message(url):
    reply = chat([{"role": "user", "content": "Hello!"}], server=url, options=SHORT)
    assert reply.text and reply.stats["message"]["role"] == "assistant"


def test_unknown_model_error_carries_status_url_and_advice(url):
    with pytest.raises(OllamaError) as err:
        generate("hi", model="no-such-model", server=url)
    e = err.value
    assert e.status == 404 and e.url == url + "/api/generate"
    assert "not found" in e.message and "ollama pull no-such-model" in e.advice


def test_connection_refused_says_to_start_a_server():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OllamaError) as err:
        generate("hi", server=url)
    assert err.value.status is None and "could not connect" in err.value.message
    assert "OLLAMA_HOST" in err.value.advice


def test_server_comes_from_ollama_host(url, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", url)
    assert generate("Hi", options=SHORT).stats["done"]


def test_conversation_remembers_and_trims(url, tmp_path):
    conversation = Conversation("You answer briefly.", server=url, options=SHORT, budget=60)
    conversation.ask("My name is Ada.")
    conversation.ask("I like owls.")
    assert [m["role"] for m in conversation.history][-2:] == ["user", "assistant"]
    conversation.ask("What do I like?" + " please" * 30)  # a long turn pushes the oldest ones out
    assert conversation.messages[0] == {"role": "system", "content": "You answer briefly."}
    assert all("Ada" not in m["content"] for m in conversation.history)
    conversation.save(tmp_path / "chat.json")
    again = Conversation.load(tmp_path / "chat.json", server=url)
    assert again.history == conversation.history and again.system == conversation.system


def test_conversation_stream_keeps_a_partial_answer_when_stopped(url):
    conversation = Conversation(server=url, options={**GREEDY, "num_predict": 50})
    pieces = conversation.ask_stream("Tell me a long story.")
    first = next(pieces)
    pieces.close()  # the student stopped reading (Ctrl-C in chat.py)
    assert conversation.history == [{"role": "user", "content": "Tell me a long story."},
                                    {"role": "assistant", "content": first}]


def fake_server(reply: bytes) -> str:
    """A one-shot server that sends ``reply`` and hangs up: for faults the real engine cannot produce."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(reply)
        conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_connection_cut_mid_stream_is_a_clear_error():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    line = b'{"model":"m","response":"Hel","done":false}\n'
    url = fake_server(head + b"%x\r\n%s\r\n" % (len(line), line))  # no final chunk: the connection just ends
    stream = generate("hi", server=url, stream=True)
    with pytest.raises(OllamaError) as err:
        list(stream)
    assert "broke" in err.value.message


def test_a_503_is_reported_with_advice():
    body = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    url = fake_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(OllamaError) as err:
        generate("hi", server=url)
    assert err.value.status == 503 and "busy" in err.value.message and "try again" in err.value.advice


def test_a_stream_used_with_with_hangs_up_when_the_block_ends(url):
    with generate("Tell me a long story.", server=url, options={**GREEDY, "num_predict": 50}, stream=True) as s:
        first = next(iter(s))
    assert first and s.reply is None
    with pytest.raises(StopIteration):
        next(iter(s))  # closed: nothing more comes


@pytest.mark.parametrize("function", [generate, chat])
def test_the_overloads_tell_a_type_checker_what_stream_returns(function):
    # What mypy reads: stream=False (the default) gives a Reply, stream=True a Stream, a bool either.
    overloads = typing.get_overloads(function)
    assert [(o.__kwdefaults__.get("stream"), o.__annotations__["stream"], o.__annotations__["return"])
            for o in overloads] == [(False, "Literal[False]", "Reply"), (None, "Literal[True]", "Stream"),
                                    (None, "bool", "Reply | Stream")]


def test_chat_with_an_unknown_model_says_to_pull_it(url):
    with pytest.raises(OllamaError) as err:
        chat([{"role": "user", "content": "Hi"}], model="no-such-model", server=url, stream=True)
    assert err.value.status == 404 and "ollama pull no-such-model" in err.value.advice


def test_get_reads_a_route_and_reports_a_stopped_server(url):
    assert get("/api/version", server=url).json()["version"]
    with pytest.raises(OllamaError) as err:
        get("/api/tags", server=f"http://127.0.0.1:{free_port()}")
    assert err.value.status is None and "OLLAMA_HOST" in err.value.advice
