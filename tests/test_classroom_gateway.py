"""The classroom gateway (issue #12) over real sockets, in front of real embedded engines.

The session's engine is the upstream; the failover test starts a second one and stops it mid-answer.
Generations stay tiny (the policy caps them at 8 tokens), except where a request must keep a slot busy:
those are cut short by closing them or stopping their engine. Assertions are on order, never on timings.
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from support import GREEDY, MODEL, ServedApp, start_engine

from llm_experiment.classroom.fairqueue import QUEUE_FULL
from llm_experiment.classroom.gateway import create_app
from llm_experiment.classroom.policy import Policy, PolicySettings
from llm_experiment.classroom.relay import Tail, error_chunk
from llm_experiment.classroom.roster import Roster
from llm_experiment.classroom.usage import UsageLog
from llm_experiment.cli import main
from llm_experiment.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CAP = 8  # the class's num_predict
# keep_alive -1 as the session engine's own setting: the gateway's requests leave its models as they were.
POLICY = Policy(PolicySettings(keep_alive=-1, num_predict=CAP))
LONG_POLICY = Policy(PolicySettings(keep_alive=-1, num_predict=2000))  # for answers that must outlast a check
# Greedy, this prompt makes smollm2:135m write on and on (1200 tokens and more).
ENDLESS = "Count from 1 to 1000, separated by commas."
STUDENTS = ("alice", "bob", "greedy", "patient", "counter", "leaver", "clients")


@dataclass
class Class:
    db: Path
    roster: Roster
    usage: UsageLog
    keys: dict[str, str]


@pytest.fixture(scope="module")
def classroom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Class]:
    db = tmp_path_factory.mktemp("classroom") / "classroom.sqlite"
    roster = Roster(db)
    keys = {name: roster.add_student(name) for name in STUDENTS}
    keys["teacher"] = roster.add_instructor("teacher")
    usage = UsageLog(db)
    yield Class(db, roster, usage, keys)
    usage.close()


@pytest.fixture(scope="module")
def gateway(engine, classroom: Class) -> Iterator[str]:
    """The gateway in front of the session's engine: one request at a time, one per student."""
    with ServedApp(create_app([engine.url], classroom.roster, POLICY, classroom.usage)) as url:
        yield url


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def generate(url: str, key: str, num_predict: int = 2, **body: Any) -> requests.Response:
    body = {"model": MODEL, "prompt": "Say hi.", "stream": False,
            "options": {**GREEDY, "num_predict": num_predict}, **body}
    return requests.post(url + "/api/generate", json=body, headers=bearer(key), timeout=120)


def status(url: str, classroom: Class) -> dict[str, Any]:
    r = requests.get(url + "/classroom/status", headers=bearer(classroom.keys["teacher"]), timeout=30)
    r.raise_for_status()
    return r.json()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def rows_of(classroom: Class, student: str) -> list[dict[str, Any]]:
    return [row for row in classroom.usage.rows() if row["student"] == student]


def wall_time(created_at: str) -> float:
    """An RFC 3339 UTC timestamp with up to nanoseconds ("2025-03-04T09:00:00.123456789Z") as time.time()."""
    whole, _, fraction = created_at.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


# --- keys ------------------------------------------------------------------------------------------------------------


def test_only_the_root_and_the_version_answer_without_a_key(gateway):
    assert requests.get(gateway + "/", timeout=30).text == "Ollama is running"
    assert isinstance(requests.get(gateway + "/api/version", timeout=30).json()["version"], str)
    r = requests.get(gateway + "/api/tags", timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "OLLAMA_API_KEY" in r.json()["error"]
    r = requests.post(gateway + "/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_a_wrong_or_revoked_key_is_401(gateway, classroom):
    for key in ("llmx_not-a-key-of-this-class", "nonsense", classroom.keys["alice"] + "x"):
        assert requests.get(gateway + "/api/tags", headers=bearer(key), timeout=30).status_code == 401
    assert requests.get(gateway + "/api/tags", headers=bearer(classroom.keys["leaver"]), timeout=30).status_code == 200
    classroom.roster.revoke("leaver")  # the running gateway sees it at once
    r = generate(gateway, classroom.keys["leaver"])
    assert r.status_code == 401 and "error" in r.json()


# --- the policy, end to end ------------------------------------------------------------------------------------------


def test_students_create_and_delete_in_their_own_namespace_only(gateway, classroom, engine):
    alice, bob = bearer(classroom.keys["alice"]), bearer(classroom.keys["bob"])
    r = requests.post(gateway + "/api/create", json={"model": "bob/x", "from": MODEL}, headers=alice, timeout=30)
    assert r.status_code == 403 and '"alice/x"' in r.json()["error"]
    r = requests.post(gateway + "/api/create", json={"model": "alice/brief", "from": MODEL, "system": "Be brief.",
                                                    "stream": False}, headers=alice, timeout=60)
    assert r.status_code == 200, r.text
    try:
        names = [m["name"] for m in requests.get(engine.url + "/api/tags", timeout=30).json()["models"]]
        assert "alice/brief:latest" in names
        r = requests.delete(gateway + "/api/delete", json={"model": "alice/brief"}, headers=bob, timeout=30)
        assert r.status_code == 403
        r = requests.post(gateway + "/api/pull", json={"model": MODEL}, headers=alice, timeout=30)
        assert r.status_code == 403 and "instructor" in r.json()["error"]
    finally:
        r = requests.delete(gateway + "/api/delete", json={"model": "alice/brief"}, headers=alice, timeout=30)
    assert r.status_code == 200
    assert "alice/brief:latest" not in [m["name"] for m in requests.get(engine.url + "/api/tags", timeout=30).json()
                                        ["models"]]


def test_keep_alive_0_does_not_unload_the_model_for_everyone(gateway, classroom, engine):
    r = generate(gateway, classroom.keys["alice"], num_predict=1, keep_alive=0)
    assert r.status_code == 200
    assert MODEL in [m["name"] for m in requests.get(engine.url + "/api/ps", timeout=30).json()["models"]]


def test_num_predict_reaches_the_upstream_capped(gateway, classroom):
    r = generate(gateway, classroom.keys["alice"], num_predict=1000, prompt=ENDLESS)
    assert r.status_code == 200 and r.json()["eval_count"] == CAP
    r = generate(gateway, classroom.keys["alice"], num_predict=-1, prompt=ENDLESS)
    assert r.json()["eval_count"] == CAP
    r = requests.post(gateway + "/v1/chat/completions", headers=bearer(classroom.keys["alice"]), timeout=60,
                      json={"model": MODEL, "messages": [{"role": "user", "content": ENDLESS}], "max_tokens": 500,
                            "temperature": 0, "seed": 42})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == CAP


# --- streaming and turns ---------------------------------------------------------------------------------------------


def test_a_stream_passes_through_as_it_is_generated(gateway, classroom):
    body = {"model": MODEL, "prompt": ENDLESS, "options": {**GREEDY, "num_predict": CAP}}
    arrivals = []
    with httpx.stream("POST", gateway + "/api/generate", json=body, headers=bearer(classroom.keys["alice"]),
                      timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        for line in r.iter_lines():
            if line:
                arrivals.append((time.time(), json.loads(line)))
    *tokens, (_, last) = arrivals
    assert len(tokens) == CAP and last["done"] and last["eval_count"] == CAP
    # The first line reached us before the engine had even made the last one: nothing waits for the whole answer.
    assert arrivals[0][0] < wall_time(last["created_at"])


def test_another_student_is_served_before_a_greedy_students_backlog(engine, classroom):
    app = create_app([engine.url], classroom.roster, LONG_POLICY, classroom.usage)  # one request at a time

    def ask(student: str) -> float:
        """When the engine finished the student's answer (its clock: the order it served them in)."""
        r = generate(url, classroom.keys[student], num_predict=1)
        assert r.status_code == 200, r.text
        return wall_time(r.json()["created_at"])

    def waiting(student: str) -> int:
        return status(url, classroom)["queue"]["students"].get(student, {}).get("waiting", 0)

    with ServedApp(app) as url, ThreadPoolExecutor(6) as pool:
        body = {"model": MODEL, "prompt": ENDLESS, "options": {**GREEDY, "num_predict": 2000}}
        with httpx.stream("POST", url + "/api/generate", json=body, headers=bearer(classroom.keys["greedy"]),
                          timeout=60) as running:
            lines = running.iter_lines()
            next(lines)  # the greedy student holds the only slot...
            greedy = [pool.submit(ask, "greedy") for _ in range(5)]
            wait_for(lambda: waiting("greedy") == 5, "five more greedy requests waiting")
            patient = pool.submit(ask, "patient")  # ...and has five more waiting when another student asks
            wait_for(lambda: waiting("patient") == 1, "the patient student's request waiting")
        # The greedy stream is closed: the slot goes to the student who has not been served yet, then round-robin.
        patient_done, greedy_done = patient.result(), [f.result() for f in greedy]
    assert patient_done < min(greedy_done)


def test_rate_limits_answer_429_with_retry_after(engine, classroom):
    app = create_app([engine.url], classroom.roster, POLICY, classroom.usage, requests_per_minute=2)
    with ServedApp(app) as url:
        key = classroom.keys["bob"]
        assert [generate(url, key, num_predict=1).status_code for _ in range(2)] == [200, 200]
        r = generate(url, key, num_predict=1)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "2 requests per minute" in r.json()["error"]
        r = requests.post(url + "/v1/chat/completions", headers=bearer(key), timeout=30,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
        assert r.status_code == 429 and "requests per minute" in r.json()["error"]["message"]
        # looking around is not limited, and other students have their own budget
        assert requests.get(url + "/api/tags", headers=bearer(key), timeout=30).status_code == 200
        assert generate(url, classroom.keys["alice"], num_predict=1).status_code == 200
    app = create_app([engine.url], classroom.roster, POLICY, classroom.usage, tokens_per_hour=10)
    with ServedApp(app) as url:
        assert generate(url, key, num_predict=1).status_code == 200  # a request under budget always finishes
        r = generate(url, key, num_predict=1)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 60


def test_a_full_queue_is_503_and_a_client_that_leaves_frees_its_turn(engine, classroom):
    app = create_app([engine.url], classroom.roster, LONG_POLICY, classroom.usage, max_waiting=0)
    with ServedApp(app) as url:
        body = {"model": MODEL, "prompt": ENDLESS, "options": {**GREEDY, "num_predict": 2000}}
        with httpx.stream("POST", url + "/api/generate", json=body, headers=bearer(classroom.keys["counter"]),
                          timeout=60) as long:
            lines = long.iter_lines()  # kept: a dropped iterator would close the connection
            next(lines)  # it is running: the gateway's only slot is taken
            r = generate(url, classroom.keys["patient"], num_predict=1)
            assert r.status_code == 503 and r.json() == {"error": QUEUE_FULL}
        # The client left: the gateway closes the upstream request, the slot is free and the engine stops.
        wait_for(lambda: status(url, classroom)["queue"]["running"] == 0, "the slot to be released")
        wait_for(lambda: any(row["status"] == 499 for row in rows_of(classroom, "counter")), "the 499 in the log")
        assert generate(url, classroom.keys["patient"], num_predict=1).status_code == 200
    assert rows_of(classroom, "patient")[-2]["status"] == 503


def test_failover_and_a_stream_cut_by_a_dying_upstream(engine, classroom, tmp_path):
    second, log = start_engine(tmp_path, "second")
    try:
        # The second engine first: on a tie, the first listed is picked. No periodic checks: the gateway
        # must notice the dead engine by itself.
        app = create_app([second.url, engine.url], classroom.roster, LONG_POLICY, classroom.usage, check_every=3600)
        with ServedApp(app) as url:
            wait_for(lambda: all(up["models"] for up in status(url, classroom)["upstreams"]), "the first check")
            # The model lists of both engines, merged: a model only the second has, the shared one once.
            requests.post(second.url + "/api/copy", json={"source": MODEL, "destination": "second-only"},
                          timeout=30).raise_for_status()
            alice = bearer(classroom.keys["alice"])
            names = [m["name"] for m in requests.get(url + "/api/tags", headers=alice, timeout=30).json()["models"]]
            assert names.count(MODEL) == 1 and "second-only:latest" in names
            ids = [m["id"] for m in requests.get(url + "/v1/models", headers=alice, timeout=30).json()["data"]]
            assert ids.count(MODEL) == 1 and "second-only:latest" in ids
            assert status(url, classroom)["queue"]["capacity"] == 2
            body = {"model": MODEL, "prompt": ENDLESS, "options": {**GREEDY, "num_predict": 2000}}
            with httpx.stream("POST", url + "/api/generate", json=body, headers=bearer(classroom.keys["alice"]),
                              timeout=60) as stream:
                lines = stream.iter_lines()
                assert "response" in json.loads(next(lines))
                ups = status(url, classroom)["upstreams"]
                assert [up["active"] for up in ups] == [1, 0]  # it runs on the second engine
                stopping = threading.Thread(target=second.server.stop)
                stopping.start()
                rest = [json.loads(line) for line in lines if line]
            stopping.join()
            assert not rest[-1].get("done") and "error" in rest[-1], rest[-3:]
            # New requests go to the second engine first (idle, listed first), fail to connect, and are sent
            # to the first engine instead.
            for _ in range(3):
                r = generate(url, classroom.keys["bob"], num_predict=1)
                assert r.status_code == 200, r.text
            dead, alive = status(url, classroom)["upstreams"]
            assert not dead["healthy"] and "cannot connect" in dead["last_error"] and alive["healthy"]
            assert status(url, classroom)["queue"]["capacity"] == 1  # as many at once as the healthy engine takes
            names = [m["name"] for m in requests.get(url + "/api/tags", headers=alice, timeout=30).json()["models"]]
            assert MODEL in names and "second-only:latest" not in names
    finally:
        second.server.stop()
        log.close()


def test_an_instructor_s_model_changes_reach_every_upstream(engine, classroom, tmp_path):
    second, log = start_engine(tmp_path, "second")

    def names(server: str) -> list[str]:
        return [m["name"] for m in requests.get(server + "/api/tags", timeout=30).json()["models"]]

    try:
        app = create_app([engine.url, second.url], classroom.roster, POLICY, classroom.usage, check_every=3600)
        with ServedApp(app) as url:
            teacher = bearer(classroom.keys["teacher"])
            copied = requests.post(url + "/api/copy", json={"source": MODEL, "destination": "class-copy"},
                                   headers=teacher, timeout=60)
            assert copied.status_code == 200, copied.text
            with requests.post(url + "/api/create", json={"model": "class-tutor", "from": MODEL, "system": "Be brief."},
                               headers=teacher, stream=True, timeout=120) as created:
                lines = [json.loads(line) for line in created.iter_lines() if line]
            assert created.status_code == 200 and [line.get("status") for line in lines].count("success") == 2, lines
            for server in (engine.url, second.url):
                assert {"class-copy:latest", "class-tutor:latest"} <= set(names(server))

            client = ollama.Client(host=url, headers=teacher)  # the official client: its delete, non-streamed
            for name in ("class-copy", "class-tutor"):
                client.delete(name)
            for server in (engine.url, second.url):
                assert not {"class-copy:latest", "class-tutor:latest"} & set(names(server))

            # A student's model lives on one server: deleting it everywhere finds it there, and that is enough.
            requests.post(second.url + "/api/copy", json={"source": MODEL, "destination": "alice/only-here"},
                          timeout=60).raise_for_status()
            gone = requests.delete(url + "/api/delete", json={"model": "alice/only-here"}, headers=teacher, timeout=60)
            assert gone.status_code == 200 and "alice/only-here:latest" not in names(second.url)
            nowhere = requests.delete(url + "/api/delete", json={"model": "nowhere"}, headers=teacher, timeout=60)
            assert nowhere.status_code == 404 and "not found" in nowhere.json()["error"]
    finally:
        second.server.stop()
        log.close()


def test_web_pages_of_the_given_origins_may_call_it_from_a_browser(engine, classroom):
    """CORS: the browser's preflight carries no key and is answered for the given origins only."""
    app = create_app([engine.url], classroom.roster, POLICY, classroom.usage, origins=["https://app.example.org"])
    with ServedApp(app) as url:
        asked = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
        preflight = requests.options(url + "/api/chat", headers=asked, timeout=30)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = requests.options(url + "/api/chat", headers={**asked, "Origin": "https://evil.example"}, timeout=30)
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        listed = requests.get(url + "/api/tags", timeout=30, headers={
            "Origin": "https://app.example.org", **bearer(classroom.keys["alice"])})
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == "https://app.example.org"
        no_key = requests.get(url + "/api/tags", headers={"Origin": "https://app.example.org"}, timeout=30)
        assert no_key.status_code == 401  # CORS lets the page read the answer, not skip the key
    with ServedApp(create_app([engine.url], classroom.roster, POLICY, classroom.usage)) as url:  # the default
        preflight = requests.options(url + "/api/chat", headers=asked, timeout=30)
        assert "access-control-allow-origin" not in preflight.headers


# --- the official clients --------------------------------------------------------------------------------------------


def test_the_ollama_client_sends_the_key_from_headers_or_from_ollama_api_key(gateway, classroom, monkeypatch):
    key = classroom.keys["clients"]
    client = ollama.Client(host=gateway, headers={"Authorization": f"Bearer {key}"})
    assert client.generate(MODEL, "Say hi.", options={**GREEDY, "num_predict": 2}).eval_count == 2
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=gateway).list()
    assert refused.value.status_code == 401 and "OLLAMA_API_KEY" in refused.value.error
    monkeypatch.setenv("OLLAMA_API_KEY", key)  # ollama-python reads it when the client is made
    chunks = list(ollama.Client(host=gateway).chat(MODEL, [{"role": "user", "content": "Hi"}], stream=True,
                                                   options={**GREEDY, "num_predict": 3}))
    assert chunks[-1].done and chunks[-1].eval_count == 3


def test_the_openai_client_sends_api_key(gateway, classroom):
    client = openai.OpenAI(base_url=gateway + "/v1", api_key=classroom.keys["clients"], max_retries=0, timeout=60)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert answer.usage.completion_tokens == 2
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                            stream=True, stream_options={"include_usage": True})
    assert [chunk.usage.completion_tokens for chunk in stream if chunk.usage] == [2]
    wrong = openai.OpenAI(base_url=gateway + "/v1", api_key="llmx_wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


# --- the usage log and the instructor's views ------------------------------------------------------------------------


def test_every_request_is_logged_with_its_counts(gateway, classroom, tmp_path):
    key = classroom.keys["counter"]
    before = len(rows_of(classroom, "counter"))
    answer = generate(gateway, key, num_predict=3).json()
    with httpx.stream("POST", gateway + "/api/chat", headers=bearer(key), timeout=60,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                            "options": {**GREEDY, "num_predict": 2}}) as r:
        last = json.loads([line for line in r.iter_lines() if line][-1])
    v1 = requests.post(gateway + "/v1/chat/completions", headers=bearer(key), timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).json()
    refused = requests.post(gateway + "/api/pull", json={"model": MODEL}, headers=bearer(key), timeout=30)
    assert refused.status_code == 403
    rows = rows_of(classroom, "counter")[before:]
    assert [(r["endpoint"], r["model"], r["status"]) for r in rows] == [
        ("/api/generate", MODEL, 200), ("/api/chat", MODEL, 200), ("/v1/chat/completions", MODEL, 200),
        ("/api/pull", MODEL, 403)]
    assert (rows[0]["prompt_eval_count"], rows[0]["eval_count"]) == (answer["prompt_eval_count"], 3)
    assert rows[0]["total_duration_ns"] == answer["total_duration"]
    assert (rows[1]["prompt_eval_count"], rows[1]["eval_count"]) == (last["prompt_eval_count"], 2)
    assert (rows[2]["prompt_eval_count"], rows[2]["eval_count"]) == (v1["usage"]["prompt_tokens"], 2)
    assert all(r["wait_ns"] is not None for r in rows[:3]) and rows[3]["eval_count"] is None

    out = tmp_path / "usage.csv"
    assert main(["classroom", "report", "--db", str(classroom.db), "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0].startswith("started_at,student,endpoint,model,status")
    assert sum(",counter,/api/chat," in line for line in out.read_text().splitlines()) >= 1


def test_the_classroom_status_is_for_instructors(gateway, classroom):
    r = requests.get(gateway + "/classroom/status", timeout=30)
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    r = requests.get(gateway + "/classroom/status", headers=bearer(classroom.keys["alice"]), timeout=30)
    assert r.status_code == 403
    report = status(gateway, classroom)
    assert report["queue"]["capacity"] == 1 and report["limits"]["num_predict"] == CAP
    assert report["upstreams"][0]["healthy"] and MODEL in report["upstreams"][0]["models"]
    # the page, as a browser asks for it after its login box (any user name, the key as password)
    basic = base64.b64encode(f"teacher:{classroom.keys['teacher']}".encode()).decode()
    r = requests.get(gateway + "/classroom", headers={"Authorization": f"Basic {basic}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/classroom/status" in r.text and "setInterval(refresh, 2000)" in r.text
    assert requests.get(gateway + "/classroom", timeout=30).status_code == 401


def test_instructors_pass_the_policy_unchanged(gateway, classroom):
    r = generate(gateway, classroom.keys["teacher"], num_predict=CAP + 2, prompt=ENDLESS)
    assert r.status_code == 200 and r.json()["eval_count"] == CAP + 2


# --- counting without keeping the answer ------------------------------------------------------------------------------

NATIVE_STREAM = (b'{"model":"m","response":"Hi","done":false}\n'
                 b'{"model":"m","response":"","done":true,"total_duration":123456,"prompt_eval_count":31,'
                 b'"eval_count":7}\n')
# not streamed: one JSON object, no newline; a tool call's arguments name a count too (Ollama's comes last)
NATIVE_JSON = (b'{"model":"m","message":{"role":"assistant","content":"say \\"eval_count\\": 99",'
               b'"tool_calls":[{"function":{"name":"f","arguments":{"eval_count":5}}}]},"done":true,'
               b'"total_duration":123456,"prompt_eval_count":31,"eval_count":7}')
OPENAI_STREAM = (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
                 b'data: {"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":7,"total_tokens":38,'
                 b'"prompt_tokens_details":{"cached_tokens":0}}}\n\ndata: [DONE]\n\n')


@settings(max_examples=200, deadline=None, derandomize=True)  # the same examples each run: CI stays repeatable
@given(answer=st.sampled_from([NATIVE_STREAM, NATIVE_JSON, OPENAI_STREAM]), data=st.data())
def test_the_counts_are_found_however_the_answer_is_split(answer, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(answer)), max_size=8)))
    tail = Tail()
    for start, end in zip([0, *cuts], [*cuts, len(answer)], strict=True):
        tail.feed(answer[start:end])
    counts = tail.counts()
    assert (counts["prompt_eval_count"], counts["eval_count"]) == (31, 7)
    assert counts.get("total_duration") == (None if answer is OPENAI_STREAM else 123456)


def test_a_long_answer_keeps_only_its_end():
    tail = Tail()
    tail.feed(b'{"embeddings":[[' + b"0.5," * 100_000)
    tail.feed(b'0.5]],"prompt_eval_count":12}')
    assert tail.counts() == {"prompt_eval_count": 12} and len(tail.partial) <= Tail.KEEP


def test_an_error_that_ends_a_stream_is_framed_like_the_stream():
    tail = Tail()
    tail.feed(b'{"response":"Hi","done":false}\n{"respo')  # cut mid-line: the error starts a line of its own
    assert error_chunk("application/x-ndjson", tail, "gone").split(b"\n")[1:] == [b'{"error":"gone"}', b""]
    event = error_chunk("text/event-stream", Tail(), "gone")
    assert event.endswith(b"\n\n") and json.loads(event.strip().removeprefix(b"data: "))["error"]["message"] == "gone"


# --- the command line ------------------------------------------------------------------------------------------------


def test_roster_commands(tmp_path, capsys):
    db = str(tmp_path / "class.sqlite")
    assert main(["classroom", "list", "--db", db]) == 1
    assert main(["classroom", "add-student", "Eve", "--db", db]) == 2
    assert main(["classroom", "add-student", "eve", "--db", db]) == 0
    key = capsys.readouterr().out.strip()
    assert Roster(db).authenticate(key).name == "eve"
    assert main(["classroom", "add-student", "eve", "--db", db]) == 1
    (tmp_path / "names.csv").write_text("name\nfrank\ngrace\n")
    keys = tmp_path / "keys.csv"
    assert main(["classroom", "import", str(tmp_path / "names.csv"), "--out", str(keys), "--db", db]) == 0
    assert keys.read_text().splitlines()[0] == "name,key" and len(keys.read_text().splitlines()) == 3
    assert main(["classroom", "revoke", "frank", "--db", db]) == 0
    assert main(["classroom", "revoke", "nobody", "--db", db]) == 1
    capsys.readouterr()
    assert main(["classroom", "list", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "eve " in listing and "revoked" in listing.split("frank")[1].splitlines()[0]
    assert main(["classroom", "report", "--since", "last week", "--db", db]) == 2
    assert main(["classroom", "report", "--since", "2020-01-01T00:00Z", "--db", db]) == 0
    assert main(["classroom"]) == 2
    assert main(["classroom", "serve", "--upstream", "x", "--keep-alive", "soon", "--db", db]) == 2
    assert main(["classroom", "serve", "--upstream", "x", "--parallel", "0", "--db", db]) == 2


def test_classroom_serve_runs_until_ctrl_c(engine, tmp_path):
    db = tmp_path / "class.sqlite"
    key = Roster(db).add_student("alice")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llm_experiment", "classroom", "serve", "--upstream", engine.url,
                                "--port", str(port), "--db", str(db), "--num-predict", "2"], cwd=ROOT,
                               env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(url + "/api/version", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert process.poll() is None, process.communicate()[0]
                return False

        wait_for(up, "the gateway to start")
        r = generate(url, key, num_predict=50)
        assert r.status_code == 200 and r.json()["eval_count"] == 2
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert f"{url} -> {engine.url}" in output and "stopped" in output
    assert [row["status"] for row in UsageLog(db).rows()] == [200]
