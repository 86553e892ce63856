"""Many clients at once: queueing, the 503 bound, and clients that hang up mid-answer."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import MODEL, engine_running

# Raw counting runs on and on (greedy), so this request stays busy until we hang up.
LONG = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
        "options": {"temperature": 0, "num_predict": 4000}}
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


def short(url: str, prompt: str) -> requests.Response:
    return requests.post(url + "/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                                      "options": {"num_predict": 4, "seed": 1}}, timeout=120)


def test_simultaneous_requests_are_all_served(url):
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(lambda i: short(url, f"Say the number {i}"), range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    assert all(r.json()["done"] and 0 < r.json()["eval_count"] <= 4 for r in replies)


def test_a_client_that_hangs_up_stops_its_generation(engine):
    response = requests.post(engine.url + "/api/generate", json=LONG, stream=True, timeout=60)
    lines = response.iter_lines()
    for _ in range(3):
        assert json.loads(next(lines))["done"] is False
    response.close()  # hang up mid-answer
    deadline = time.monotonic() + 30
    while "generation stopped after" not in engine.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = [line for line in engine.log().splitlines() if "generation stopped after" in line]
    assert stopped, "the engine did not log that it stopped the generation"
    assert int(stopped[-1].split("after ")[1].split()[0]) < 4000  # it stopped early
    assert short(engine.url, "Hi").status_code == 200  # and the model is free again


@pytest.fixture(scope="module")
def small_queue_engine(tmp_path_factory):
    with engine_running(tmp_path_factory.mktemp("queue"), "queue", args=["--max-queue", "1"]) as running:
        yield running


def test_past_the_queue_bound_the_answer_is_503(small_queue_engine):
    url = small_queue_engine.url
    busy = requests.post(url + "/api/generate", json=LONG, stream=True, timeout=60)
    # Keep the line iterator: dropped, it is garbage-collected at some later moment, and urllib3
    # then closes the connection (a half-read stream), which ends the busy request early.
    lines = busy.iter_lines()
    first = json.loads(next(lines))
    assert first.get("done") is False, first  # the model is now busy with this request
    results: list[requests.Response] = []
    threads = [threading.Thread(target=lambda: results.append(short(url, "Hi"))) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while not results and time.monotonic() < deadline:  # one waits in the queue, the other is refused
        time.sleep(0.05)
    assert len(results) == 1
    assert (results[0].status_code, results[0].json()) == (503, {"error": QUEUE_FULL})
    busy.close()  # free the model: the waiting request is served
    for t in threads:
        t.join(timeout=60)
    assert sorted(r.status_code for r in results) == [200, 503]
