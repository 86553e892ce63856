"""The task queue (issue #13) over real sockets: the manager as its own process, workers on the embedded engine.

The manager runs as ``llm-experiment queue serve`` so that it can be killed (SIGKILL) and restarted on the
same file; workers run as ``llm-experiment worker`` processes where signals matter, in threads elsewhere.
Generations stay short (``num_predict``), except where a task must still be running when its worker dies.
Nothing asserts on timings: waits poll with generous deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import GREEDY, MODEL

from llm_experiment.classroom.roster import Roster
from llm_experiment.cli import main
from llm_experiment.embedded import free_port
from llm_experiment.taskqueue.worker import Worker

SHORT = {**GREEDY, "num_predict": 8}


class ManagerProcess:
    """``llm-experiment queue serve`` on a free port, started, killed and restarted on the same files."""

    def __init__(self, folder: Path, *args: str):
        self.folder, self.args = folder, list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "manager.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagerProcess:
        command = [sys.executable, "-m", "llm_experiment", "queue", "serve", "--db", str(self.folder / "tasks.sqlite"),
                   "--port", str(self.port), "--log-level", "info", *self.args]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _answers(self.url + "/health"), "the manager to start", self.process)
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def wait_for(condition: Callable[[], Any], what: str, process: subprocess.Popen[bytes] | None = None,
             timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"gave up waiting for {what}: the process exited with {process.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what} after {timeout} s")


class Keys:
    """A roster with an instructor, two students and two workers, and a session per key."""

    def __init__(self, path: Path):
        self.path = path
        roster = Roster(path)
        self.key = {"teacher": roster.add_instructor("teacher"), "alice": roster.add_student("alice"),
                    "bob": roster.add_student("bob"), "gpu-1": roster.add_worker("gpu-1"),
                    "gpu-2": roster.add_worker("gpu-2")}

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key[name]}"}


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "classroom.sqlite")


@pytest.fixture
def manager(tmp_path: Path, keys: Keys) -> Iterator[ManagerProcess]:
    process = ManagerProcess(tmp_path, "--roster", str(keys.path), "--lease", "2s", "--max-attempts", "3").start()
    yield process
    process.stop()


@pytest.fixture
def open_manager(tmp_path: Path) -> Iterator[ManagerProcess]:
    process = ManagerProcess(tmp_path, "--open", "--lease", "2s").start()
    yield process
    process.stop()


def submit(manager: ManagerProcess, keys: Keys | None, who: str, **task: Any) -> str:
    headers = keys.headers(who) if keys else {}
    response = requests.post(manager.url + "/submit", json=task, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def result(manager: ManagerProcess, keys: Keys | None, who: str, task_id: str) -> dict[str, Any]:
    headers = keys.headers(who) if keys else {}
    return requests.get(f"{manager.url}/result/{task_id}", headers=headers, timeout=10).json()


def finished(manager: ManagerProcess, keys: Keys | None, who: str, task_id: str) -> dict[str, Any]:
    return wait_for(lambda: (r := result(manager, keys, who, task_id))["status"] in ("done", "failed") and r,
                    f"task {task_id} to finish")


# the naive protocol --------------------------------------------------------------------------------------


def test_the_naive_protocol_s_clients_keep_working(open_manager: ManagerProcess) -> None:
    """The four routes of the in-memory Flask version, with its request and response shapes."""
    url = open_manager.url
    submitted = requests.post(url + "/submit", json={"prompt": "Why is the sky blue?"}).json()
    assert submitted["status"] == "Task submitted." and set(submitted) == {"task_id", "status"}
    waiting = requests.get(f"{url}/result/{submitted['task_id']}").json()
    assert "result" not in waiting and waiting["status"] == "queued"

    task = requests.get(url + "/task").json()
    assert {k: task[k] for k in ("task_id", "prompt", "model")} == {
        "task_id": submitted["task_id"], "prompt": "Why is the sky blue?", "model": MODEL}
    assert requests.get(url + "/task").status_code == 204  # nothing else to do

    naive = requests.post(url + "/task", json={"task_id": task["task_id"], "result": "Rayleigh scattering."})
    assert naive.status_code == 400 and "lease_token" in naive.json()["error"]  # the one thing workers must add
    posted = requests.post(url + "/task", json={"task_id": task["task_id"], "result": "Rayleigh scattering.",
                                                "lease_token": task["lease_token"]})
    assert posted.json() == {"message": "Result received."}
    answer = requests.get(f"{url}/result/{submitted['task_id']}").json()
    assert (answer["task_id"], answer["result"], answer["status"]) == (submitted["task_id"], "Rayleigh scattering.",
                                                                       "done")


def test_open_access_is_refused_beyond_this_computer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["queue", "serve", "--open", "--host", "0.0.0.0", "--db", str(tmp_path / "t.sqlite")]) == 2
    assert "--open" in capsys.readouterr().err
    assert main(["queue", "serve", "--roster", str(tmp_path / "none.sqlite"), "--db", str(tmp_path / "t.sqlite")]) == 1
    assert "add-worker" in capsys.readouterr().err


# keys and isolation --------------------------------------------------------------------------------------


def test_keys_decide_who_submits_who_works_and_who_reads(manager: ManagerProcess, keys: Keys) -> None:
    url = manager.url
    no_key = requests.post(url + "/submit", json={"prompt": "Hi"})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in no_key.json()["error"]
    wrong = requests.post(url + "/submit", json={"prompt": "Hi"}, headers={"Authorization": "Bearer llmx_nope"})
    assert wrong.status_code == 401

    task_id = submit(manager, keys, "alice", prompt="Alice's secret")
    worker_submits = requests.post(url + "/submit", json={"prompt": "Hi"}, headers=keys.headers("gpu-1"))
    assert worker_submits.status_code == 403 and "student" in worker_submits.json()["error"]
    student_works = requests.get(url + "/task", headers=keys.headers("alice"))
    assert student_works.status_code == 403 and "add-worker" in student_works.json()["error"]

    assert requests.get(f"{url}/result/{task_id}", headers=keys.headers("bob")).status_code == 404
    assert [t["task_id"] for t in requests.get(url + "/tasks", headers=keys.headers("bob")).json()["tasks"]] == []
    assert result(manager, keys, "alice", task_id)["status"] == "queued"
    assert result(manager, keys, "teacher", task_id)["status"] == "queued"  # an instructor sees every task
    listed = requests.get(url + "/tasks", headers=keys.headers("alice")).json()["tasks"]
    assert [t["task_id"] for t in listed] == [task_id]

    task = requests.get(url + "/task", headers=keys.headers("gpu-1")).json()
    assert task["prompt"] == "Alice's secret"
    Roster(keys.path).revoke("gpu-1")  # at once, in the running manager
    revoked = requests.post(url + "/task", json={"task_id": task_id, "lease_token": task["lease_token"],
                                                 "result": "x"}, headers=keys.headers("gpu-1"))
    assert revoked.status_code == 401


def test_a_late_result_is_refused_and_the_next_worker_s_is_kept(manager: ManagerProcess, keys: Keys) -> None:
    task_id = submit(manager, keys, "alice", prompt="Hi")
    url, slow = manager.url, keys.headers("gpu-1")
    stale = requests.get(url + "/task", headers=slow).json()
    time.sleep(2.5)  # past the 2 s lease, without a heartbeat
    late = requests.post(url + "/task", json={"task_id": task_id, "lease_token": stale["lease_token"],
                                              "result": "late"}, headers=slow)
    assert late.status_code == 409 and "not stored" in late.json()["error"]
    beat = requests.post(url + "/task/heartbeat", json={"task_id": task_id, "lease_token": stale["lease_token"]},
                         headers=slow)
    assert beat.status_code == 409

    fresh = requests.get(url + "/task", headers=keys.headers("gpu-2")).json()
    assert (fresh["task_id"], fresh["attempt"]) == (task_id, 2)
    for _ in range(2):  # posting twice (a retry after a lost answer) stores it once
        ok = requests.post(url + "/task", json={"task_id": task_id, "lease_token": fresh["lease_token"],
                                                "result": "on time"}, headers=keys.headers("gpu-2"))
        assert ok.status_code == 200
    assert ok.json() == {"message": "Result already received."}
    again = requests.post(url + "/task", json={"task_id": task_id, "lease_token": stale["lease_token"],
                                               "result": "late"}, headers=slow)
    assert again.status_code == 409
    assert result(manager, keys, "alice", task_id)["result"] == "on time"


def test_attempts_run_out_and_the_task_fails_with_its_last_error(manager: ManagerProcess, keys: Keys) -> None:
    task_id = submit(manager, keys, "alice", prompt="Hi")
    worker = keys.headers("gpu-1")
    for attempt in (1, 2, 3):
        task = requests.get(manager.url + "/task", headers=worker).json()
        assert task["attempt"] == attempt
        failed = requests.post(manager.url + "/task", headers=worker, json={
            "task_id": task_id, "lease_token": task["lease_token"], "error": f"out of memory ({attempt})"})
        assert failed.json()["status"] == ("failed" if attempt == 3 else "queued")
    shown = result(manager, keys, "alice", task_id)
    assert (shown["status"], shown["error"], shown["attempts"]) == ("failed", "out of memory (3)", 3)
    assert "result" not in shown
    assert requests.get(manager.url + "/task", headers=worker).status_code == 204


def test_a_restart_loses_nothing(manager: ManagerProcess, keys: Keys) -> None:
    url, worker = manager.url, keys.headers("gpu-1")
    done, running, failed, queued = (submit(manager, keys, "alice", prompt=p) for p in ("d", "r", "f", "q"))
    leases = [requests.get(url + "/task", headers=worker).json() for _ in range(3)]
    requests.post(url + "/task", headers=worker, json={**_lease(leases[0]), "result": "the answer"})
    requests.post(url + "/task", headers=worker, json={**_lease(leases[2]), "error": "bad", "retry": False})

    manager.kill()  # no goodbye: SIGKILL
    manager.start()
    assert result(manager, keys, "alice", done)["result"] == "the answer"
    assert result(manager, keys, "alice", failed)["status"] == "failed"
    assert result(manager, keys, "alice", queued)["status"] == "queued"
    assert result(manager, keys, "alice", running)["status"] == "running"
    # The worker that held a lease before the restart can still post its result.
    posted = requests.post(url + "/task", headers=worker, json={**_lease(leases[1]), "result": "survived"})
    assert posted.status_code == 200
    assert result(manager, keys, "alice", running)["result"] == "survived"
    assert requests.get(url + "/task", headers=worker).json()["task_id"] == queued


def _lease(task: dict[str, Any]) -> dict[str, str]:
    return {"task_id": task["task_id"], "lease_token": task["lease_token"]}


# bad input -----------------------------------------------------------------------------------------------

BAD_SUBMISSIONS = [
    ({}, 400, "either"),
    ({"prompt": 42}, 400, "string"),
    ({"prompt": "  "}, 400, "empty"),
    ({"prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}, 400, "not both"),
    ({"messages": "Hi"}, 400, "list"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, 400, "role"),
    ({"prompt": "Hi", "model": "../../etc/passwd"}, 400, "invalid model name"),
    ({"prompt": "Hi", "model": 7}, 400, "invalid model name"),
    ({"prompt": "Hi", "options": [1]}, 400, "options"),
    ({"prompt": "Hi", "system": {"x": 1}}, 400, "system"),
    ({"prompt": "x" * 200_001}, 413, "at most 200000"),
    ({"tasks": []}, 400, "non-empty"),
    ({"tasks": [{"prompt": "ok"}, {"prompt": 1}]}, 400, "task 1"),
    ({"tasks": [{"prompt": "x"}] * 1001}, 400, "at most 1000"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_SUBMISSIONS)
def test_bad_submissions_get_a_clear_4xx(open_manager: ManagerProcess, body: dict[str, Any], status: int,
                                         says: str) -> None:
    response = requests.post(open_manager.url + "/submit", json=body)
    assert response.status_code == status and says in response.json()["error"], response.text


def test_other_bad_requests_get_a_clear_4xx(open_manager: ManagerProcess) -> None:
    url = open_manager.url
    cases = [
        requests.post(url + "/submit", data=b"{not json"),
        requests.post(url + "/submit", data=b"\xff\xfe"),
        requests.post(url + "/submit", json=["a", "list"]),
        requests.post(url + "/submit", data=b"[" * 100_000),
        requests.post(url + "/submit", data=b"x" * (8 * 1024 * 1024 + 1)),
        requests.get(url + "/result/no-such-task"),
        requests.post(url + "/task", json={"task_id": "no-such-task", "lease_token": "t", "result": "x"}),
        requests.post(url + "/task", json={"result": "x"}),
        requests.post(url + "/task/heartbeat", json={"task_id": 1, "lease_token": "t"}),
        requests.get(url + "/tasks?status=lost"),
        requests.get(url + "/tasks?limit=-1"),
        requests.delete(url + "/submit"),
        requests.get(url + "/admin"),
    ]
    assert [r.status_code for r in cases] == [400, 400, 400, 400, 413, 404, 404, 400, 400, 400, 400, 405, 404]
    assert all(r.json()["error"] for r in cases)
    task_id = submit(open_manager, None, "", prompt="Hi")
    task = requests.get(url + "/task").json()
    bad_stats = requests.post(url + "/task", json={**_lease(task), "result": "x", "stats": "fast"})
    assert bad_stats.status_code == 400
    huge = requests.post(url + "/task", json={**_lease(task), "result": "x" * 2_000_001})
    assert huge.status_code == 413
    assert result(open_manager, None, "", task_id)["status"] == "running"  # nothing was stored
    assert requests.get(url + "/health").json()["status"] == "ok"


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                             st.sampled_from(["prompt", "model", "messages", "tasks", "options", "system", "x"]),
                             inner, max_size=4), max_leaves=12))
def test_no_submission_makes_the_manager_fail(open_manager: ManagerProcess, body: Any) -> None:
    response = requests.post(open_manager.url + "/submit", json=body, timeout=10)
    assert response.status_code in (200, 400, 413), response.text
    assert ("task_id" in response.json() or "task_ids" in response.json()) if response.ok else response.json()["error"]


# workers on the embedded engine --------------------------------------------------------------------------


def start_worker(manager: ManagerProcess, keys: Keys, name: str, ollama: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LLM_QUEUE_KEY": keys.key[name]}
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "llm_experiment", "worker", "--queue", manager.url, "--ollama",
                                 ollama, "--idle-wait", "0.5s"], env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_worker_runs_prompts_and_chats_like_the_engine_does(manager: ManagerProcess, keys: Keys, url: str,
                                                              tmp_path: Path) -> None:
    generate_id = submit(manager, keys, "alice", prompt="Name a colour.", options=SHORT)
    chat_id = submit(manager, keys, "bob", messages=[{"role": "user", "content": "Name a fruit."}],
                     system="Answer in one word.", options=SHORT)
    worker = start_worker(manager, keys, "gpu-1", url, tmp_path / "worker.log")
    try:
        generated = finished(manager, keys, "alice", generate_id)
        chatted = finished(manager, keys, "bob", chat_id)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    direct = requests.post(url + "/api/generate", json={"model": MODEL, "prompt": "Name a colour.",
                                                        "options": SHORT, "stream": False}).json()
    assert generated["result"] == direct["response"]  # greedy: the same answer as asking the engine
    messages = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a fruit."}]
    direct_chat = requests.post(url + "/api/chat", json={"model": MODEL, "options": SHORT, "stream": False,
                                                         "messages": messages}).json()
    assert chatted["result"] == direct_chat["message"]["content"]
    for shown in (generated, chatted):
        assert shown["stats"]["eval_count"] == 8 and shown["stats"]["eval_duration"] > 0
        assert shown["attempts"] == 1
    assert "stopped after 2 result(s)" in (tmp_path / "worker.log").read_text()


def test_a_worker_killed_mid_task_loses_nothing_and_the_task_is_done_once(manager: ManagerProcess, keys: Keys,
                                                                          url: str, tmp_path: Path) -> None:
    task_id = submit(manager, keys, "alice", prompt="Count from 1 to 200.",
                     options={**GREEDY, "num_predict": 300, "num_ctx": 512})
    doomed = start_worker(manager, keys, "gpu-1", url, tmp_path / "doomed.log")
    wait_for(lambda: result(manager, keys, "alice", task_id)["status"] == "running", "the task to start")
    doomed.kill()  # SIGKILL: no release, no result
    doomed.wait(10)
    rescuer = start_worker(manager, keys, "gpu-2", url, tmp_path / "rescuer.log")
    try:
        shown = finished(manager, keys, "alice", task_id)
    finally:
        rescuer.terminate()
        rescuer.wait(30)
    assert (shown["status"], shown["attempts"]) == ("done", 2)
    assert shown["stats"]["eval_count"] > 0
    log = (tmp_path / "manager.log").read_text()
    assert log.count(f"task {task_id}: result stored") == 1
    assert f"task {task_id} leased to gpu-2" in log


def test_ctrl_c_finishes_the_current_task_and_sigterm_gives_it_back(manager: ManagerProcess, keys: Keys, url: str,
                                                                    tmp_path: Path) -> None:
    long = {**GREEDY, "num_predict": 120, "num_ctx": 512}
    finishing = submit(manager, keys, "alice", prompt="Count from 1 to 100.", options=long)
    worker = start_worker(manager, keys, "gpu-1", url, tmp_path / "first.log")
    wait_for(lambda: result(manager, keys, "alice", finishing)["status"] == "running", "the first task to start")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(120) == 0
    shown = result(manager, keys, "alice", finishing)
    assert (shown["status"], shown["attempts"]) == ("done", 1)

    released = submit(manager, keys, "alice", prompt="Count from 1 to 300.", options={**long, "num_predict": 400})
    worker = start_worker(manager, keys, "gpu-1", url, tmp_path / "second.log")
    wait_for(lambda: result(manager, keys, "alice", released)["status"] == "running", "the second task to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    shown = result(manager, keys, "alice", released)
    assert (shown["status"], shown["attempts"]) == ("queued", 0)  # back in the queue, the attempt not counted
    assert "given back to the queue" in (tmp_path / "second.log").read_text()


def test_many_workers_never_share_a_task(manager: ManagerProcess, keys: Keys, url: str) -> None:
    batch = [{"prompt": f"Say {n}.", "options": {**GREEDY, "num_predict": 2}} for n in range(24)]
    submitted = requests.post(manager.url + "/submit", headers=keys.headers("alice"), json={"tasks": batch})
    ids = submitted.json()["task_ids"]
    workers = [Worker(manager.url, url, key=keys.key[name], concurrency=2, idle_wait=0.2, say=lambda _: None)
               for name in ("gpu-1", "gpu-2", "gpu-1")]
    threads = [threading.Thread(target=w.run) for w in workers]
    for thread in threads:
        thread.start()
    try:
        shown = [finished(manager, keys, "alice", task_id) for task_id in ids]
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(60)
    assert all(s["status"] == "done" and s["attempts"] == 1 for s in shown)
    assert sum(w.done for w in workers) == 24  # each result stored by exactly one worker


def test_a_worker_outlives_a_manager_restart(manager: ManagerProcess, keys: Keys, url: str) -> None:
    worker = Worker(manager.url, url, key=keys.key["gpu-1"], idle_wait=0.2, say=lambda _: None)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        before = submit(manager, keys, "alice", prompt="Hi", options=SHORT)
        assert finished(manager, keys, "alice", before)["status"] == "done"
        manager.kill()
        time.sleep(1.5)  # the worker finds nobody there for a while
        manager.start()
        after = submit(manager, keys, "alice", prompt="Hello", options=SHORT)
        assert finished(manager, keys, "alice", after)["status"] == "done"
    finally:
        worker.stop()
        thread.join(60)
    assert worker.done == 2


def test_a_worker_whose_ollama_is_down_gives_tasks_back_unspent(manager: ManagerProcess, keys: Keys) -> None:
    task_id = submit(manager, keys, "alice", prompt="Hi", options=SHORT)
    said: list[str] = []
    worker = Worker(manager.url, f"http://127.0.0.1:{free_port()}", key=keys.key["gpu-1"], idle_wait=0.2,
                    say=said.append)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: any("does not answer" in line for line in said), "the worker to notice", timeout=30)
        time.sleep(0.5)
        shown = result(manager, keys, "alice", task_id)
        assert (shown["status"], shown["attempts"]) == ("queued", 0)  # no attempt spent on a dead Ollama
    finally:
        worker.stop(now=True)
        thread.join(60)
    assert sum("does not answer" in line for line in said) == 1  # it waits before taking the task again


def test_a_missing_model_fails_at_once_with_what_to_do(manager: ManagerProcess, keys: Keys, url: str) -> None:
    task_id = submit(manager, keys, "alice", prompt="Hi", model="no-such-model:1b")
    worker = Worker(manager.url, url, key=keys.key["gpu-1"], idle_wait=0.2, say=lambda _: None)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        shown = finished(manager, keys, "alice", task_id)
    finally:
        worker.stop()
        thread.join(60)
    assert (shown["status"], shown["attempts"]) == ("failed", 1)  # retrying cannot make a model appear
    assert "not found" in shown["error"] and "pull" in shown["error"]
