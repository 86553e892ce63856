"""The classroom gateway's fair queue and rate limits: pure asyncio, no server.

Each simulated request is a task that takes a slot and holds it until the test lets it go, so the order
in which students are served is exactly what the queue decided.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llm_experiment.classroom.fairqueue import QUEUE_FULL, FairQueue, QueueFull, RateLimits

pytestmark = pytest.mark.timeout(60)


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(10):
        await asyncio.sleep(0)


class Request:
    """One student's request: waits for a slot, records that it was served, holds the slot until released."""

    def __init__(self, queue: FairQueue, student: str, served: list[Request], fail: bool = False):
        self.queue, self.student, self.served = queue, student, served
        self.release = asyncio.Event()
        self.fail = fail
        self.holding = False
        self.waited_ns: int | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.queue.slot(self.student) as waited_ns:
            self.waited_ns = waited_ns
            self.served.append(self)
            self.holding = True
            try:
                await self.release.wait()
                if self.fail:
                    raise RuntimeError("the upstream failed")
            finally:
                self.holding = False

    def __repr__(self) -> str:
        return f"Request({self.student})"


async def serve_all(requests: list[Request]) -> None:
    """Release whoever holds a slot until every request has finished."""
    while not all(r.task.done() for r in requests):
        for r in requests:
            if r.holding:
                r.release.set()
        await settle()


def students_of(served: list[Request]) -> list[str]:
    return [r.student for r in served]


# --- fairness -------------------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_another_students_first_request_does_not_wait_behind_a_greedy_student():
    queue, served = FairQueue(capacity=1), []
    greedy = [Request(queue, "greedy", served) for _ in range(10)]
    await settle()
    other = Request(queue, "other", served)
    await settle()
    counts = {name: (s["running"], s["waiting"]) for name, s in queue.status()["students"].items()}
    assert counts == {"greedy": (1, 9), "other": (0, 1)}
    await serve_all([*greedy, other])
    # The greedy student's first request held the only slot when the other one arrived: the other is next.
    assert students_of(served)[:3] == ["greedy", "other", "greedy"]
    assert served[1] is other


@pytest.mark.anyio
async def test_turns_go_round_robin_and_each_students_requests_in_arrival_order():
    queue, served = FairQueue(capacity=1), []
    requests = [Request(queue, student, served) for student in "aaabbbccc"]
    await settle()
    await serve_all(requests)
    assert students_of(served) == list("abcabcabc")
    for student in "abc":
        mine = [r for r in requests if r.student == student]
        assert [r for r in served if r.student == student] == mine


@pytest.mark.anyio
async def test_a_student_who_keeps_sending_still_takes_turns_with_the_others():
    queue, served = FairQueue(capacity=2), []
    requests = [Request(queue, "a", served) for _ in range(6)] + [Request(queue, s, served) for s in "bbcc"]
    await settle()
    await serve_all(requests)
    # Two slots: the first six turns go twice to each student, then a has the slots to itself.
    assert sorted(students_of(served)[:6]) == ["a", "a", "b", "b", "c", "c"]
    assert students_of(served)[6:] == ["a"] * 4


# --- limits ---------------------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_no_student_holds_more_than_per_student_slots():
    queue, served = FairQueue(capacity=4, per_student=2), []
    a = [Request(queue, "a", served) for _ in range(5)]
    b = Request(queue, "b", served)
    await settle()
    status = queue.status()
    assert status["students"]["a"]["running"] == 2 and status["students"]["a"]["waiting"] == 3
    assert status["students"]["b"]["running"] == 1
    assert status["running"] == 3  # a free slot stays free: a is at its limit and nobody else waits
    await serve_all([*a, b])


@pytest.mark.anyio
async def test_no_more_than_capacity_run_at_once():
    queue, served = FairQueue(capacity=3), []
    requests = [Request(queue, f"s{i}", served) for i in range(5)]
    await settle()
    assert (queue.running, queue.waiting) == (3, 2)
    assert [r.holding for r in requests] == [True, True, True, False, False]
    requests[1].release.set()
    await settle()
    assert (queue.running, queue.waiting) == (3, 1)
    assert requests[3].holding
    await serve_all(requests)
    assert (queue.running, queue.waiting) == (0, 0)
    assert queue.status()["students"] == {}


@pytest.mark.anyio
async def test_too_many_waiting_raises_queue_full_with_ollamas_message():
    queue, served = FairQueue(capacity=1, max_waiting=2), []
    requests = [Request(queue, s, served) for s in "abc"]  # a runs, b and c wait
    await settle()
    with pytest.raises(QueueFull, match="maximum pending requests exceeded") as refused:
        async with queue.slot("d"):
            pytest.fail("a request over max_waiting must not get a slot")
    assert str(refused.value) == QUEUE_FULL
    assert (queue.running, queue.waiting) == (1, 2)
    assert "d" not in queue.status()["students"]
    await serve_all(requests)


@pytest.mark.anyio
async def test_a_request_that_can_run_at_once_is_not_refused_when_the_queue_is_full():
    queue, served = FairQueue(capacity=2, per_student=1, max_waiting=1), []
    requests = [Request(queue, "a", served), Request(queue, "a", served)]  # one runs, one waits: queue full
    await settle()
    async with queue.slot("b") as waited_ns:  # the second slot is free and b may use it
        assert waited_ns < 1_000_000_000
        assert queue.running == 2
    await serve_all(requests)


# --- cancellation and failure ---------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_no_trace_and_the_order_of_the_others_holds():
    queue, served = FairQueue(capacity=1), []
    a, b1, c, b2 = (Request(queue, s, served) for s in ["a", "b", "c", "b"])
    await settle()
    c.task.cancel()  # the client hung up while waiting
    await settle()
    assert c.task.cancelled()
    assert "c" not in queue.status()["students"]
    assert (queue.running, queue.waiting) == (1, 2)
    await serve_all([a, b1, b2])
    assert served == [a, b1, b2]
    assert queue.status() == {"capacity": 1, "per_student": 1, "max_waiting": 512, "running": 0, "waiting": 0,
                              "students": {}}


@pytest.mark.anyio
async def test_cancelling_a_student_s_only_waiter_keeps_it_out_of_the_table():
    queue, served = FairQueue(capacity=1), []
    a = Request(queue, "a", served)
    waiters = [Request(queue, "b", served) for _ in range(3)]
    await settle()
    for w in waiters:
        w.task.cancel()
    await settle()
    assert queue.status()["students"] == {"a": {"running": 1, "waiting": 0, "longest_wait_s": 0.0}}
    await serve_all([a])
    assert served == [a] and queue.status()["students"] == {}


@pytest.mark.anyio
async def test_a_waiter_cancelled_just_as_its_turn_came_passes_the_slot_on():
    queue, served = FairQueue(capacity=1), []
    async with queue.slot("a"):
        b = Request(queue, "b", served)
        c = Request(queue, "c", served)
        await settle()
    # Leaving the block gave b its turn; b is cancelled before it could run. Its slot must go to c.
    b.task.cancel()
    await settle()
    assert b.task.cancelled()
    assert served == [c] and c.holding
    assert queue.running == 1
    await serve_all([c])
    assert (queue.running, queue.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_waiter_cancelled_before_a_release_in_the_same_tick_is_skipped():
    queue, served = FairQueue(capacity=1), []
    a, b, c = (Request(queue, s, served) for s in "abc")
    await settle()
    a.release.set()  # a leaves on its next step, and gives the turn to b ...
    b.task.cancel()  # ... but b was cancelled before that: c gets it
    await settle()
    assert served == [a, c] and b.task.cancelled()
    await serve_all([c])
    assert queue.status()["students"] == {}


@pytest.mark.anyio
async def test_an_exception_or_a_cancellation_while_holding_releases_the_slot():
    queue, served = FairQueue(capacity=1), []
    failing = Request(queue, "a", served, fail=True)
    hung_up = Request(queue, "b", served)
    last = Request(queue, "c", served)
    await settle()
    failing.release.set()
    await settle()
    with pytest.raises(RuntimeError):
        failing.task.result()
    assert hung_up.holding
    hung_up.task.cancel()  # the client hung up while its answer was being generated
    await settle()
    assert last.holding and queue.running == 1
    await serve_all([last])
    assert (queue.running, queue.waiting) == (0, 0)


@pytest.mark.anyio
async def test_waited_ns_and_status_use_the_injected_clock():
    now = [100.0]
    queue, served = FairQueue(capacity=1, clock=lambda: now[0]), []
    a = Request(queue, "a", served)
    await settle()
    b = Request(queue, "b", served)
    await settle()
    now[0] = 102.5
    assert queue.status()["students"]["b"] == {"running": 0, "waiting": 1, "longest_wait_s": 2.5}
    await serve_all([a, b])
    assert a.waited_ns == 0
    assert b.waited_ns == 2_500_000_000


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        FairQueue(capacity=0)
    with pytest.raises(ValueError, match="per_student"):
        FairQueue(capacity=1, per_student=0)


# --- the property: random arrivals, cancellations, releases and failures --------------------------------------------

STUDENTS = ["ann", "bob", "cy", "dee"]
# Half of the operations are arrivals, so that queues build up; the number picks the student or the request.
KINDS = ["arrive"] * 4 + [
    "cancel",  # the client hangs up, waiting or being served
    "release",  # an answer is complete
    "fail",  # the upstream fails while answering
    "release+cancel",  # a slot is freed and a waiter cancelled in the same tick
]
OPERATIONS = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 40)), max_size=60)


def check_invariants(queue: FairQueue, requests: list[Request]) -> None:
    status = queue.status()
    holding = [r for r in requests if r.holding]
    assert len(holding) == status["running"] == queue.running <= queue.capacity
    for student, counts in status["students"].items():
        assert counts["running"] == sum(r.student == student for r in holding) <= queue.per_student
        assert counts["running"] or counts["waiting"], "an idle student stays in the table"
    waiting = [r for r in requests if not r.task.done() and not r.holding]
    assert status["waiting"] == len(waiting) <= queue.max_waiting
    # Work-conserving: a free slot stays free only while everyone waiting is at the per-student limit.
    if queue.running < queue.capacity:
        for r in waiting:
            assert status["students"][r.student]["running"] == queue.per_student


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS, capacity=st.integers(1, 3), per_student=st.integers(1, 2),
       max_waiting=st.integers(0, 6))
def test_slots_never_exceed_the_limits_and_every_remaining_waiter_is_served(operations, capacity, per_student,
                                                                          max_waiting):
    async def scenario() -> None:
        queue, served = FairQueue(capacity, per_student, max_waiting), []
        requests: list[Request] = []
        cancelled: set[Request] = set()
        for op, arg in operations:
            if op == "arrive":
                requests.append(Request(queue, STUDENTS[arg % len(STUDENTS)], served))
            else:  # the index picks among the requests the operation applies to
                pending = [r for r in requests if not r.task.done()]
                holders = [r for r in pending if r.holding]
                waiters = [r for r in pending if not r.holding]
                if op == "cancel" and pending:
                    r = pending[arg % len(pending)]
                    r.task.cancel()
                    cancelled.add(r)
                    event(op)
                elif op == "release+cancel" and waiters and holders:
                    holders[arg % len(holders)].release.set()
                    r = waiters[arg % len(waiters)]
                    r.task.cancel()  # in the same tick: the slot may go to a waiter whose task is cancelled
                    cancelled.add(r)
                    event(op)
                elif op in ("release", "fail") and holders:
                    r = holders[arg % len(holders)]
                    r.fail = op == "fail"
                    r.release.set()
            await settle()
            check_invariants(queue, requests)
        refused = {r for r in requests if r.task.done() and not r.task.cancelled()
                   and isinstance(r.task.exception(), QueueFull)}
        await serve_all(requests)
        for r in requests:  # every outcome is looked at, so asyncio does not warn about unretrieved exceptions
            assert r.task.cancelled() or isinstance(r.task.exception(), (type(None), QueueFull, RuntimeError))
        for r in requests:
            if r not in cancelled and r not in refused:
                assert r in served, f"{r} was neither cancelled nor refused, and never served"
            if r in refused:
                assert r not in served
        assert queue.status() == {"capacity": capacity, "per_student": per_student, "max_waiting": max_waiting,
                                  "running": 0, "waiting": 0, "students": {}}

    asyncio.run(scenario())


# --- rate limits ----------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_over_a_sliding_window():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=3, clock=clock)
    for t in (1000, 1010, 1020):
        clock.now = t
        assert limits.check("ann") is None
    clock.now = 1030
    assert limits.check("ann") == pytest.approx(30.0)  # the request at 1000 leaves the window at 1060
    assert limits.check("bob") is None  # each student has their own window
    clock.now = 1059.5
    assert limits.check("ann") == pytest.approx(0.5)  # refused checks do not count
    clock.now = 1060
    assert limits.check("ann") is None
    assert limits.check("ann") == pytest.approx(1070 - 1060)
    assert limits.usage("ann") == {"requests_last_minute": 3, "tokens_last_hour": 0}


def test_tokens_per_hour_waits_until_enough_tokens_leave_the_window():
    clock = FakeClock(0.0)
    limits = RateLimits(tokens_per_hour=100, clock=clock)
    assert limits.check("ann") is None
    limits.add_tokens("ann", 60)
    clock.now = 100
    assert limits.check("ann") is None  # 60 used, under the budget: the next request may start
    limits.add_tokens("ann", 50)
    clock.now = 200
    assert limits.check("ann") == pytest.approx(3400.0)  # 110 used; under 100 once the 60 from t=0 expire
    assert limits.usage("ann") == {"requests_last_minute": 0, "tokens_last_hour": 110}
    clock.now = 3600
    assert limits.check("ann") is None
    assert limits.usage("ann")["tokens_last_hour"] == 50


def test_the_longer_wait_wins_when_both_limits_are_reached():
    clock = FakeClock(0.0)
    limits = RateLimits(requests_per_minute=1, tokens_per_hour=10, clock=clock)
    assert limits.check("ann") is None
    limits.add_tokens("ann", 10)
    clock.now = 5
    assert limits.check("ann") == pytest.approx(3595.0)
    clock.now = 61
    assert limits.check("ann") == pytest.approx(3539.0)


def test_no_limit_and_zero_limits():
    clock = FakeClock(0.0)
    unlimited = RateLimits(clock=clock)
    for _ in range(1000):
        assert unlimited.check("ann") is None
        unlimited.add_tokens("ann", 10**6)
    assert unlimited.usage("ann") == {"requests_last_minute": 0, "tokens_last_hour": 0}  # nothing is kept
    closed = RateLimits(requests_per_minute=0, tokens_per_hour=0, clock=clock)
    assert closed.check("ann") == pytest.approx(3600.0)


@pytest.mark.anyio
async def test_coming_back_after_a_pause_does_not_jump_ahead_of_a_backlog():
    """A student who was served, paused and came back waits their turn like one who kept requests waiting:
    otherwise, with students coming and going all the time, a student with a backlog would starve."""
    queue, served = FairQueue(capacity=1), []
    greedy_first = Request(queue, "greedy", served)
    await settle()
    backlog = [Request(queue, "greedy", served) for _ in range(2)]
    alice_first, bob = Request(queue, "alice", served), Request(queue, "bob", served)
    await settle()
    greedy_first.release.set()
    await settle()  # alice's turn (never served), greedy's backlog waits
    alice_first.release.set()
    await settle()  # bob's turn; alice has nothing left and leaves the table
    alice_again = Request(queue, "alice", served)  # back after a pause, while greedy still waits
    await settle()
    bob.release.set()
    await settle()  # greedy was served before alice: greedy's turn now, not alice's
    assert students_of(served) == ["greedy", "alice", "bob", "greedy"]
    await serve_all([*backlog, alice_again])
    assert students_of(served) == ["greedy", "alice", "bob", "greedy", "alice", "greedy"]


@pytest.mark.anyio
async def test_a_smaller_capacity_holds_new_turns_and_a_larger_one_lets_them_go() -> None:
    """An upstream down: the queue shrinks (running requests keep their slots); back up: waiters go at once."""
    queue = FairQueue(capacity=2, per_student=2)
    first, second = queue.slot("alice"), queue.slot("bob")
    await first.__aenter__()
    await second.__aenter__()
    queue.resize(1)
    await first.__aexit__(None, None, None)  # one slot left running: at the new capacity already
    waiting = asyncio.ensure_future(_hold(queue, "carol"))
    await asyncio.sleep(0)
    assert not waiting.done() and queue.waiting == 1
    queue.resize(2)  # the upstream is back
    await asyncio.sleep(0)
    assert waiting.done() and queue.running == 2
    await second.__aexit__(None, None, None)
    queue.resize(0)
    assert queue.capacity == 1  # never below one


async def _hold(queue: FairQueue, student: str) -> None:
    await queue.slot(student).__aenter__()
