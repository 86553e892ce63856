"""The task queue's store (issue #13): leases, one result per task, attempts, fair turns, restarts.

No server and no model here: these drive :class:`TaskStore` directly, with several threads and processes
where the claim is that they cannot get in each other's way. Lease expiry uses short leases and waits a
little past them; no assertion depends on how fast anything runs.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_experiment.taskqueue.store import DONE, FAILED, QUEUED, RUNNING, NewTask, TaskStore


def prompts(*texts: str) -> list[NewTask]:
    return [NewTask(model="smollm2:135m", prompt=text) for text in texts]


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(tmp_path / "tasks.sqlite")


def test_a_task_goes_from_queued_to_running_to_done(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    assert store.get(task_id).status == QUEUED
    task = store.claim("gpu-1", lease=60)
    assert (task.id, task.prompt, task.status, task.attempts, task.worker) == (task_id, "Hi", RUNNING, 1, "gpu-1")
    assert store.claim("gpu-2", lease=60) is None  # nothing else waits
    assert store.complete(task_id, task.lease_token, "Hello!", {"eval_count": 3}) == "stored"
    done = store.get(task_id)
    assert (done.status, done.result, done.stats, done.error) == (DONE, "Hello!", {"eval_count": 3}, None)


def test_a_result_is_stored_once_and_a_repeat_changes_nothing(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    task = store.claim("gpu-1", lease=60)
    assert store.complete(task_id, task.lease_token, "first") == "stored"
    assert store.complete(task_id, task.lease_token, "second") == "duplicate"  # a retried POST
    assert store.complete(task_id, "a-forged-token", "third") == "refused"
    assert store.get(task_id).result == "first"


def test_a_late_result_is_refused_and_the_task_goes_to_the_next_worker(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    slow = store.claim("slow", lease=0.2)
    time.sleep(0.4)
    assert store.complete(task_id, slow.lease_token, "late") == "refused"  # even before anyone took it over
    assert store.get(task_id).status == QUEUED
    assert "slow" in store.get(task_id).error and "expired" in store.get(task_id).error
    fast = store.claim("fast", lease=60)
    assert (fast.id, fast.attempts) == (task_id, 2)
    assert store.complete(task_id, slow.lease_token, "late again") == "refused"
    assert store.complete(task_id, fast.lease_token, "on time") == "stored"
    assert store.get(task_id).result == "on time"


def test_a_heartbeat_keeps_a_lease_alive_and_cannot_revive_an_ended_one(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    task = store.claim("gpu-1", lease=0.5)
    for _ in range(4):
        time.sleep(0.2)
        assert store.heartbeat(task_id, task.lease_token, lease=0.5) is not None
    assert store.get(task_id).status == RUNNING  # 0.8 s after a 0.5 s lease: the heartbeats kept it
    time.sleep(0.7)
    assert store.heartbeat(task_id, task.lease_token, lease=0.5) is None
    assert store.get(task_id).status == QUEUED


def test_attempts_run_out_and_the_task_fails_with_its_last_error(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.sqlite", max_attempts=2)
    [task_id] = store.submit("alice", prompts("Hi"))
    first = store.claim("gpu-1", lease=60)
    assert store.fail(task_id, first.lease_token, "model exploded") == QUEUED
    second = store.claim("gpu-2", lease=0.1)
    time.sleep(0.3)  # the second worker goes silent
    failed = store.get(task_id)
    assert (failed.status, failed.attempts) == (FAILED, 2)
    assert "gpu-2" in failed.error and "attempt 2 of 2" in failed.error
    assert store.claim("gpu-3", lease=60) is None
    assert store.complete(task_id, second.lease_token, "too late") == "refused"


def test_a_failure_that_retrying_cannot_fix_fails_at_once(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    task = store.claim("gpu-1", lease=60)
    assert store.fail(task_id, task.lease_token, 'model "nope" not found', retry=False) == FAILED
    assert store.get(task_id).error == 'model "nope" not found'


def test_a_released_task_is_queued_again_without_using_an_attempt(store: TaskStore) -> None:
    [task_id] = store.submit("alice", prompts("Hi"))
    task = store.claim("gpu-1", lease=60)
    assert store.release(task_id, task.lease_token)
    assert not store.release(task_id, task.lease_token)  # the lease is gone
    again = store.claim("gpu-2", lease=60)
    assert (again.id, again.attempts) == (task_id, 1)


def test_turns_alternate_between_submitters(store: TaskStore) -> None:
    """Alice's ten tasks do not all go before Bob's first: each round serves everyone who waits."""
    store.submit("alice", prompts(*(f"a{n}" for n in range(10))))
    store.submit("bob", prompts("b0", "b1"))
    store.submit("carol", prompts("c0"))
    order = []
    while (task := store.claim("gpu", lease=60)) is not None:
        order.append(task.prompt)
    assert order[:6] == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert order[6:] == [f"a{n}" for n in range(3, 10)]


def test_a_latecomer_waits_for_the_current_round_only(store: TaskStore) -> None:
    store.submit("alice", prompts(*(f"a{n}" for n in range(6))))
    assert [store.claim("gpu", 60).prompt for _ in range(3)] == ["a0", "a1", "a2"]
    store.submit("bob", prompts("b0"))
    # Bob joins the round being served: his first task goes before alice's next, not after all of hers.
    assert [store.claim("gpu", 60).prompt for _ in range(4)] == ["b0", "a3", "a4", "a5"]


def test_a_restart_keeps_tasks_in_every_state(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite"
    store = TaskStore(path, max_attempts=1)
    done, running, failed, queued = store.submit("alice", prompts("done", "running", "failed", "queued"))
    task = store.claim("w", 60)
    store.complete(done, task.lease_token, "the answer")
    running_lease = store.claim("w", 60)
    failing = store.claim("w", 60)
    store.fail(failed, failing.lease_token, "boom")

    reopened = TaskStore(path)  # what a restarted manager does
    assert reopened.get(done).result == "the answer"
    assert reopened.get(failed).status == FAILED and reopened.get(failed).error == "boom"
    assert reopened.get(queued).status == QUEUED
    assert reopened.get(running).status == RUNNING  # the worker's lease survives the restart...
    assert reopened.complete(running, running_lease.lease_token, "after the restart") == "stored"  # ...and its result
    assert reopened.counts() == {QUEUED: 1, RUNNING: 0, DONE: 2, FAILED: 1}


def test_only_the_owner_s_tasks_are_listed(store: TaskStore) -> None:
    store.submit("alice", prompts("a0", "a1"))
    store.submit("bob", prompts("b0"))
    assert [t.prompt for t in store.list("alice")] == ["a0", "a1"]
    assert [t.prompt for t in store.list(None)] == ["a0", "a1", "b0"]
    assert [t.prompt for t in store.list("alice", limit=1)] == ["a1"]
    assert store.list("bob", status=DONE) == []
    assert store.pending("alice") == 2


def test_a_chat_task_keeps_its_messages_and_options(store: TaskStore) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    [task_id] = store.submit("alice", [NewTask(model="m", messages=messages, system="Be brief.",
                                                options={"temperature": 0})])
    task = store.claim("w", 60)
    assert (task.id, task.messages, task.system, task.options, task.prompt) == (
        task_id, messages, "Be brief.", {"temperature": 0}, None)


def test_the_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    TaskStore(tmp_path / "tasks.sqlite")
    assert (tmp_path / "tasks.sqlite").stat().st_mode & 0o077 == 0
    with sqlite3.connect(tmp_path / "tasks.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_many_threads_never_get_the_same_task(store: TaskStore) -> None:
    ids = store.submit("alice", prompts(*(str(n) for n in range(200))))

    def drain(worker: str) -> list[str]:
        mine = []
        while (task := store.claim(worker, 60)) is not None:
            mine.append(task.id)
            assert store.complete(task.id, task.lease_token, worker) == "stored"
        return mine

    with ThreadPoolExecutor(8) as pool:
        taken = [task for got in pool.map(drain, [f"w{n}" for n in range(8)]) for task in got]
    assert sorted(taken) == sorted(ids)  # every task once, none twice
    assert all(store.get(task_id).attempts == 1 for task_id in ids)


def _drain_in_a_process(path: str) -> list[str]:
    store = TaskStore(path)
    mine = []
    while (task := store.claim("proc", 60)) is not None:
        mine.append(task.id)
        store.complete(task.id, task.lease_token, "x")
    return mine


def test_many_processes_never_get_the_same_task(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite"
    ids = TaskStore(path).submit("alice", prompts(*(str(n) for n in range(150))))
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        taken = [task for got in pool.map(_drain_in_a_process, [str(path)] * 4) for task in got]
    assert sorted(taken) == sorted(ids)
