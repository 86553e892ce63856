"""What the engine reports about a generation, as current Ollama does: prompt counts with the
cached part, log probabilities, and what ``load_duration`` covers."""

from __future__ import annotations

import json
import math
import threading

import ollama
import pytest
import requests
from support import GREEDY, MODEL


def post(url: str, path: str, body: dict, **kwargs) -> requests.Response:
    return requests.post(url + path, json=body, timeout=120, **kwargs)


def stream_lines(url: str, path: str, body: dict) -> list[dict]:
    with requests.post(url + path, json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        return [json.loads(line) for line in r.iter_lines() if line]


# prompt_eval_count and prompt_eval_cached_count ------------------------------------------------


def test_a_growing_conversation_shows_growing_prompt_and_cached_counts(url):
    messages = [{"role": "system", "content": "You answer in one short sentence."}]
    counts, cached = [], []
    for question in ("What is a cat?", "And a dog?", "And a bird?"):
        messages.append({"role": "user", "content": question})
        reply = post(url, "/api/chat", {"model": MODEL, "messages": messages, "stream": False,
                                        "options": {**GREEDY, "num_predict": 12}}).json()
        messages.append(reply["message"])
        counts.append(reply["prompt_eval_count"])
        cached.append(reply["prompt_eval_cached_count"])
        assert reply["prompt_eval_cached_count"] < reply["prompt_eval_count"]
    assert counts[0] < counts[1] < counts[2], counts  # the whole history reaches the model each time
    assert cached[0] < cached[1] < cached[2], cached  # and the part it saw before is reused


def test_a_repeated_prompt_counts_in_full_and_is_almost_all_cached(url):
    body = {"model": MODEL, "prompt": "Name three colours of the rainbow.", "stream": False,
            "options": {**GREEDY, "num_predict": 4}}
    first = post(url, "/api/generate", {**body, "prompt": "Something else first, to fill the cache."}).json()
    again = [post(url, "/api/generate", body).json() for _ in range(2)]
    assert first["prompt_eval_count"] > 0
    assert again[0]["prompt_eval_count"] == again[1]["prompt_eval_count"]
    assert again[1]["prompt_eval_cached_count"] == again[1]["prompt_eval_count"] - 1  # one token is re-evaluated
    assert again[1]["prompt_eval_duration"] > 0


def test_the_final_object_has_ollamas_fields_in_order(url):
    reply = post(url, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False,
                                        "options": {**GREEDY, "num_predict": 2}}).json()
    assert list(reply)[-7:] == ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_cached_count",
                                "prompt_eval_duration", "eval_count", "eval_duration"]


# logprobs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_logprobs_whole_answer(url, path):
    body = {"model": MODEL, "stream": False, "logprobs": True, "top_logprobs": 5,
            "options": {**GREEDY, "num_predict": 8}}
    body.update({"prompt": "Why is the sky blue?"} if path == "/api/generate" else
                {"messages": [{"role": "user", "content": "Why is the sky blue?"}]})
    reply = post(url, path, body).json()
    entries = reply["logprobs"]
    assert len(entries) == reply["eval_count"]
    text = reply.get("response", reply.get("message", {}).get("content"))
    assert "".join(e["token"] for e in entries) == text
    for entry in entries:
        assert entry["logprob"] <= 0
        assert entry["bytes"] == list(entry["token"].encode())
        top = entry["top_logprobs"]
        assert len(top) == 5
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6  # probabilities of a distribution
        assert top[0]["token"] == entry["token"]  # greedy: the chosen token is the most likely one
        assert top[0]["logprob"] == pytest.approx(entry["logprob"])


def test_logprobs_streamed_with_each_chunk(url):
    lines = stream_lines(url, "/api/generate", {"model": MODEL, "prompt": "Count: 1, 2, 3,", "logprobs": True,
                                                "options": {**GREEDY, "num_predict": 6}})
    pieces = [line for line in lines if not line["done"]]
    assert all(line["logprobs"] for line in pieces if line["response"])
    entries = [e for line in pieces for e in line.get("logprobs", [])]
    assert len(entries) == lines[-1]["eval_count"]
    assert all("top_logprobs" not in e for e in entries)  # top_logprobs 0: only the chosen token
    assert "logprobs" not in lines[-1]


def test_no_logprobs_unless_asked(url):
    reply = post(url, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False, "top_logprobs": 3,
                                        "options": {**GREEDY, "num_predict": 2}}).json()
    assert "logprobs" not in reply


@pytest.mark.parametrize("top", [-1, 21])
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
def test_top_logprobs_out_of_range(url, path, top):
    r = post(url, path, {"model": MODEL, "prompt": "Hi", "messages": [], "top_logprobs": top})
    assert r.status_code == 400
    assert r.json() == {"error": "top_logprobs must be between 0 and 20"}


def test_the_official_client_reads_logprobs(url):
    client = ollama.Client(host=url)
    reply = client.generate(model=MODEL, prompt="Hi", logprobs=True, top_logprobs=2,
                            options={**GREEDY, "num_predict": 3})
    assert len(reply.logprobs) == reply.eval_count
    assert reply.logprobs[0].top_logprobs[0].token == reply.logprobs[0].token
    chat = client.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], logprobs=True,
                       options={**GREEDY, "num_predict": 3})
    assert len(chat.logprobs) == chat.eval_count


# load_duration --------------------------------------------------------------------------------------


def test_waiting_behind_another_generation_is_not_load_time(url):
    """As in Ollama, load_duration ends when a loaded model is there; waiting for its turn is in
    total_duration only (the part not covered by load, prompt and eval)."""
    post(url, "/api/generate", {"model": MODEL, "prompt": "", "keep_alive": -1})  # loaded before we start
    generating = threading.Event()

    def long_answer() -> None:
        body = {"model": MODEL, "prompt": "Count from one to one hundred.", "options": {**GREEDY, "num_predict": 60}}
        with requests.post(url + "/api/generate", json=body, stream=True, timeout=120) as r:
            for _ in r.iter_lines():
                generating.set()

    first = threading.Thread(target=long_answer)
    first.start()
    try:
        assert generating.wait(60)
        short = post(url, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False,
                                            "options": {**GREEDY, "num_predict": 1}}).json()
    finally:
        first.join()
    waited = short["total_duration"] - short["load_duration"] - short["prompt_eval_duration"] - short["eval_duration"]
    assert short["load_duration"] < waited, short
