"""OLLAMA_NUM_PARALLEL: several requests on one model decoded together (continuous batching).

An engine started with ``--parallel 3`` runs up to three generations at once in one runner, each in
its own sequence of the context. Each must get exactly what it gets alone: its own options, seed,
stop strings, logprobs and counts, whoever joins or leaves the batch around it.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import MODEL, engine_running

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
# Raw counting runs on and on (greedy): a request that stays busy until we hang up.
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
        "options": {"temperature": 0, "num_predict": 4000}}

# Three requests that differ in everything a sequence keeps for itself.
REQUESTS = [
    {"prompt": "Why is the sky blue?", "options": {"temperature": 0, "num_predict": 32}},
    {"prompt": "Write a short poem about the sea.",
     "options": {"temperature": 0.9, "seed": 11, "top_k": 50, "top_p": 0.9, "num_predict": 24}},
    {"prompt": "List three colours, one per line.", "options": {"temperature": 0, "stop": ["\n\n", "3."],
                                                               "num_predict": 40}},
]
SAME = ("response", "eval_count", "prompt_eval_count", "done_reason")


@pytest.fixture(scope="module")
def parallel_engine(tmp_path_factory):
    with engine_running(tmp_path_factory.mktemp("parallel"), "parallel", args=["--parallel", "3"]) as running:
        yield running


@pytest.fixture(scope="module")
def alone(parallel_engine) -> list[dict]:
    """REQUESTS' answers, each sent alone."""
    return [generate(parallel_engine.url, body) for body in REQUESTS]


def generate(url: str, body: dict, **extra) -> dict:
    reply = requests.post(url + "/api/generate", json={"model": MODEL, "stream": False, **body, **extra}, timeout=300)
    assert reply.status_code == 200, reply.text
    return reply.json()


def together(url: str, bodies: list[dict]) -> list[dict]:
    """Send ``bodies`` at the same moment; their answers in order."""
    start = threading.Barrier(len(bodies))

    def one(body: dict) -> dict:
        start.wait()
        return generate(url, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def stream(url: str, body: dict):
    """A streamed generate: the response and its iterator of decoded lines."""
    response = requests.post(url + "/api/generate", json={"model": MODEL, **body}, stream=True, timeout=300)
    assert response.status_code == 200, response.text
    return response, (json.loads(line) for line in response.iter_lines() if line)


def test_requests_decoded_together_get_what_each_gets_alone(parallel_engine, alone):
    batched = together(parallel_engine.url, REQUESTS)
    for one, other in zip(alone, batched, strict=True):
        assert {k: one[k] for k in SAME} == {k: other[k] for k in SAME}
    assert batched[2]["done_reason"] == "stop" and batched[0]["done_reason"] == "length"
    for answer in batched:  # each request's own counts and durations
        assert answer["prompt_eval_duration"] > 0 and answer["eval_duration"] > 0
        parts = answer["load_duration"] + answer["prompt_eval_duration"] + answer["eval_duration"]
        assert parts <= answer["total_duration"]


def test_logprobs_are_each_sequences_own(parallel_engine):
    url = parallel_engine.url
    bodies = [{"prompt": p, "options": {"temperature": 0, "num_predict": 6}, "logprobs": True, "top_logprobs": 2}
              for p in ("The capital of France is", "Two plus two is", "My favourite animal is")]
    alone = [generate(url, body) for body in bodies]
    batched = together(url, bodies)
    for one, other in zip(alone, batched, strict=True):
        assert [e["token"] for e in one["logprobs"]] == [e["token"] for e in other["logprobs"]]
        assert [[t["token"] for t in e["top_logprobs"]] for e in one["logprobs"]] == \
               [[t["token"] for t in e["top_logprobs"]] for e in other["logprobs"]]
        for a, b in zip(one["logprobs"], other["logprobs"], strict=True):
            # Not bit for bit: llama.cpp's matrix kernels add up in another order for a batch of
            # another size, which moves a logprob in its third decimal (as in llama.cpp's own server).
            assert a["logprob"] == pytest.approx(b["logprob"], abs=0.05)


def test_a_client_hanging_up_mid_batch_leaves_the_others_intact(parallel_engine, alone):
    url = parallel_engine.url
    quitter, lines = stream(url, LONG)
    for _ in range(3):
        assert next(lines)["done"] is False
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(generate, url, body) for body in REQUESTS[:2]]
        time.sleep(0.3)
        quitter.close()  # hang up while the other two are decoded with it
        batched = [a.result() for a in answers]
    for one, other in zip(alone[:2], batched, strict=True):
        assert {k: one[k] for k in SAME} == {k: other[k] for k in SAME}
    deadline = time.monotonic() + 30
    while "generation stopped after" not in parallel_engine.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "generation stopped after" in parallel_engine.log()


def test_a_long_prompt_joins_while_others_keep_streaming(parallel_engine):
    url = parallel_engine.url
    counting = {**LONG, "options": {"temperature": 0, "num_predict": 400}}
    long_prompt = {"prompt": "Summarise: " + "The quick brown fox jumps over the lazy dog. " * 80,
                   "options": {"temperature": 0, "num_predict": 8}}
    by_itself = generate(url, long_prompt)
    assert by_itself["prompt_eval_count"] > 800  # at least 7 chunks of 128 beside a running stream
    response, lines = stream(url, counting)
    pieces_seen = []
    seen_lock, enough = threading.Lock(), threading.Event()

    def read_counting() -> None:
        for line in lines:
            with seen_lock:
                pieces_seen.append(time.monotonic())
            if line["done"] or enough.is_set():
                response.close()  # hang up (from this thread, which reads the stream)
                return

    reader = threading.Thread(target=read_counting)
    reader.start()
    while len(pieces_seen) < 2:
        time.sleep(0.01)
    with seen_lock:
        before = len(pieces_seen)
    joined = generate(url, long_prompt, keep_alive="5m")  # evaluated in chunks between the counting's steps
    with seen_lock:
        during = len(pieces_seen) - before
    enough.set()
    reader.join(60)
    # The long prompt went in several chunks, and the counting got a token at each step in between.
    assert during >= 4, f"{during} tokens streamed while a {joined['prompt_eval_count']}-token prompt joined"
    assert {k: by_itself[k] for k in SAME} == {k: joined[k] for k in SAME}


def test_a_conversation_keeps_its_cache_while_others_come_and_go(parallel_engine):
    url = parallel_engine.url
    chat = url + "/api/chat"
    opts = {"temperature": 0, "num_predict": 20}
    history = [{"role": "user", "content": "My name is Ada. Please remember it."}]
    first = requests.post(chat, json={"model": MODEL, "messages": history, "stream": False, "options": opts},
                          timeout=120).json()
    for word in ("apples", "rivers"):  # other students' requests in between
        generate(url, {"prompt": f"Tell me about {word}.", "options": opts})
    history += [first["message"], {"role": "user", "content": "What is my name?"}]
    second = requests.post(chat, json={"model": MODEL, "messages": history, "stream": False, "options": opts},
                           timeout=120).json()
    assert second["prompt_eval_cached_count"] >= first["prompt_eval_count"]


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    with engine_running(tmp_path_factory.mktemp("parallel-queue"), "parallel-queue",
                        args=["--parallel", "2", "--max-queue", "1"]) as running:
        yield running


def test_the_queue_bound_counts_only_requests_beyond_the_slots(small_queue):
    url = small_queue.url
    busy = [stream(url, LONG) for _ in range(2)]  # both slots
    for _, lines in busy:
        assert next(lines)["done"] is False
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(generate, url, {"prompt": "Hi", "options": {"num_predict": 2}})
        time.sleep(0.5)
        assert not waiting.done()  # the one place in the queue
        refused = requests.post(url + "/api/generate", json={"model": MODEL, "prompt": "Hi"}, timeout=30)
        assert (refused.status_code, refused.json()) == (503, {"error": QUEUE_FULL})
        for response, _ in busy:
            response.close()
        assert waiting.result(timeout=120)["done"] is True


def test_another_num_ctx_waits_for_the_batch_then_reloads(small_queue):
    url = small_queue.url
    response, lines = stream(url, LONG)
    assert next(lines)["done"] is False
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(generate, url, {"prompt": "Hi", "options": {"num_predict": 2, "num_ctx": 1024}})
        time.sleep(0.5)
        assert not other.done()  # the running request keeps its model
        response.close()
        assert other.result(timeout=120)["done"] is True
    loaded = requests.get(url + "/api/ps", timeout=30).json()["models"]
    assert [m["context_length"] for m in loaded] == [1024]
