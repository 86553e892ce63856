"""The scheduler and the runner supervision, in-process, with a fake runner (no model, no llama.cpp).

tests/fake_runner.py is runner_main around a scripted model: words in the prompt make it crash,
abort, hang, run slowly or eat memory (see its docstring).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

from llm_experiment.engine import scheduler as scheduler_module
from llm_experiment.engine.models import Model
from llm_experiment.engine.runner import CRASHED, RunnerLimits, RunnerProcess
from llm_experiment.engine.scheduler import Scheduler
from llm_experiment.engine.wire import APIError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

FAKE = (sys.executable, str(Path(__file__).with_name("fake_runner.py")))
LIMITS = {"stall_timeout": 1, "grammar_timeout": 1, "load_timeout": 5, "memory": 256 << 20}
QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's ErrMaxQueue
NUM_CTX = 256


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def processes(monkeypatch):
    """Every runner process the scheduler starts; those still running at the end are killed."""
    started: list[RunnerProcess] = []

    class Recorded(RunnerProcess):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(scheduler_module, "RunnerProcess", Recorded)
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


@pytest.fixture
async def make(processes):
    """Build schedulers that run the fake; all are closed at the end, and every process ended."""
    made: list[Scheduler] = []

    def build(**kwargs) -> Scheduler:
        limits = RunnerLimits(command=FAKE, **{**LIMITS, **kwargs.pop("limits", {})})
        made.append(Scheduler(num_ctx=NUM_CTX, limits=limits, **kwargs))
        return made[-1]

    yield build
    for scheduler in made:
        scheduler.close()
    for process in processes:  # while the loop runs, so that no reader thread finds it closed
        process.kill("the test is over")  # a process the scheduler lost track of
        if process._reader is not None:
            await asyncio.to_thread(process._reader.join, 5)


@pytest.fixture
def model(tmp_path):
    def build(name: str = "tiny", file: str = "") -> Model:
        path = tmp_path / f"{file or name}.gguf"
        path.write_bytes(b"GGUF not really")
        return Model(name=name, path=path, details={})

    return build


def job(text: str) -> dict:
    return {"kind": "raw", "prompt": text, "options": {}}


async def answer(scheduler: Scheduler, model: Model, text: str = "hello big world", keep_alive: float | None = None):
    """Run one job; return the runner's process and every event."""
    async with scheduler.use(model, keep_alive, NUM_CTX) as runner:
        return runner.process.proc, [event async for event in runner.run(job(text))]


async def exit_code(proc, timeout: float = 5) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def names(scheduler: Scheduler) -> list[str]:
    return sorted(name for name, *_ in scheduler.loaded())


async def test_a_job_yields_pieces_then_done(make, model):
    s, m = make(), model()
    async with s.use(m, None, NUM_CTX) as runner:
        assert (runner.load_duration, runner.n_vocab) == (1_000_000, 0x110000)
        events = [event async for event in runner.run(job("hello big world"))]
    assert [e["ev"] for e in events] == ["progress", "piece", "piece", "piece", "done"]
    assert "".join(e["text"] for e in events if e["ev"] == "piece") == "hello big world"
    assert events[-1] == {"ev": "done", "id": 1, "prompt_eval_count": 15, "prompt_eval_cached_count": 0,
                          "prompt_eval_duration": 1000, "eval_count": 3, "eval_duration": 2000, "done_reason": "stop",
                          "cancelled": False}
    assert names(s) == ["tiny"]
    again, events = await answer(s, m)
    assert again is runner.process.proc and events[-1]["ev"] == "done"  # the model stays loaded


@pytest.mark.parametrize(("word", "sig"), [("crash", signal.SIGSEGV), ("abort", signal.SIGABRT)])
async def test_a_runner_that_dies_mid_answer_is_reported_and_replaced(make, model, word, sig):
    s, m = make(), model()
    first, events = await answer(s, m, word)
    assert [e["ev"] for e in events] == ["progress", "piece", "error"]
    assert events[-1] == {"ev": "error", "status": 500, "message": f"{CRASHED}: killed by signal {sig.name}"}
    assert await exit_code(first) == -sig
    assert s.loaded() == []
    second, events = await answer(s, m)
    assert second.pid != first.pid and events[-1]["ev"] == "done"
    assert names(s) == ["tiny"]


async def test_a_hung_runner_is_killed_by_the_watchdog(make, model):
    s, m = make(), model()
    start = time.monotonic()
    hung, events = await answer(s, m, "hang")
    assert 1 <= time.monotonic() - start < 4
    assert [e["ev"] for e in events] == ["progress", "piece", "error"]
    assert events[-1]["message"] == f"{CRASHED}: no answer for 1 s (phase run); the runner was killed"
    assert await exit_code(hung) == -signal.SIGKILL
    fresh, events = await answer(s, m)
    assert fresh.pid != hung.pid and events[-1]["ev"] == "done"


async def test_the_watchdog_spares_runners_that_talk_or_idle(make, model):
    s, m = make(limits={"stall_timeout": 0.5}), model()
    first, events = await answer(s, m, "slow 8")  # 0.8 s in all, but a piece every 0.1 s
    assert events[-1]["ev"] == "done" and events[-1]["eval_count"] == 8
    await asyncio.sleep(1.6)  # idle past stall_timeout plus the watchdog's 1 s round
    again, events = await answer(s, m)
    assert again is first and events[-1]["ev"] == "done"


async def test_closing_the_events_early_cancels_the_job(make, model):
    s, m = make(), model()
    async with s.use(m, None, NUM_CTX) as runner:
        events = runner.run(job("slow 100"))
        assert [(await anext(events))["ev"] for _ in range(3)] == ["progress", "piece", "piece"]
        start = time.monotonic()
        await events.aclose()  # returns once the runner confirmed: not after the 10 s of pieces
        assert time.monotonic() - start < 1
        second = [event async for event in runner.run(job("hello big world"))]
    assert [e["ev"] for e in second] == ["progress", "piece", "piece", "piece", "done"]
    assert {e["id"] for e in second} == {2}  # nothing left over from job 1
    assert second[-1]["cancelled"] is False
    again, events = await answer(s, m)
    assert again is runner.process.proc and events[-1]["ev"] == "done"


async def test_a_cancelled_request_stops_its_job(make, model):
    s, m = make(), model()
    await answer(s, m)  # loaded
    task = asyncio.create_task(answer(s, m, "slow 100"))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    start = time.monotonic()
    proc, events = await answer(s, m)
    assert time.monotonic() - start < 1
    assert [e["ev"] for e in events] == ["progress", "piece", "piece", "piece", "done"]
    assert proc.poll() is None and names(s) == ["tiny"]


async def test_a_model_that_cannot_load_is_a_500_and_the_server_goes_on(make, model, processes):
    s = make()
    with pytest.raises(APIError) as info:
        await answer(s, model("broken", "badmodel"))
    assert info.value.status == 500
    assert info.value.message.startswith("llama runner process has terminated: error loading model: failed to")
    assert await exit_code(processes[0].proc) == 1
    assert s.loaded() == []
    _, events = await answer(s, model())
    assert events[-1]["ev"] == "done" and names(s) == ["tiny"]


async def test_the_memory_cap_fails_the_job_not_the_server(make, model):
    s, m = make(), model()
    proc, events = await answer(s, m, "hog")
    assert events[-1] == {"ev": "error", "id": 1, "status": 500, "message": "MemoryError"}
    again, events = await answer(s, m)
    assert again is proc and events[-1]["ev"] == "done"


async def test_max_loaded_unloads_the_least_recently_used_idle_model(make, model):
    s = make(max_loaded=2)
    a, b, c = model("a"), model("b"), model("c")
    pa, _ = await answer(s, a)
    pb, _ = await answer(s, b)
    again, _ = await answer(s, a)  # b is now the least recently used
    pc, _ = await answer(s, c)
    assert again is pa
    assert await exit_code(pb) == 0
    assert pa.poll() is None and pc.poll() is None
    assert names(s) == ["a", "c"]


async def test_a_model_waits_while_all_loaded_models_are_busy(make, model):
    s = make(max_loaded=2)
    a, b, c = model("a"), model("b"), model("c")
    ready = {"a": asyncio.Event(), "b": asyncio.Event()}
    release = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def hold(m: Model):
        async with s.use(m, None, NUM_CTX) as runner:
            ready[m.name].set()
            await release[m.name].wait()
            return runner.process.proc

    holders = {m.name: asyncio.create_task(hold(m)) for m in (a, b)}
    await ready["a"].wait()
    await ready["b"].wait()
    third = asyncio.create_task(answer(s, c))
    await asyncio.sleep(0.5)
    assert not third.done() and names(s) == ["a", "b"]
    release["a"].set()
    pa = await holders["a"]
    pc, events = await third
    assert events[-1]["ev"] == "done"
    assert await exit_code(pa) == 0
    assert names(s) == ["b", "c"]
    release["b"].set()
    await holders["b"]


async def test_a_full_queue_answers_503(make, model):
    s, m = make(max_queue=1), model()
    busy, release = asyncio.Event(), asyncio.Event()

    async def hold():
        async with s.use(m, None, NUM_CTX):
            busy.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await busy.wait()
    waiting = asyncio.create_task(answer(s, m))
    await asyncio.sleep(0.1)
    with pytest.raises(APIError) as info:
        await answer(s, m)
    assert (info.value.status, info.value.message) == (503, QUEUE_FULL)
    release.set()
    await holder
    _, events = await waiting
    assert events[-1]["ev"] == "done"


async def test_keep_alive_zero_unloads_after_the_request(make, model):
    s = make()
    proc, events = await answer(s, model(), keep_alive=0)
    assert events[-1]["ev"] == "done"
    assert s.loaded() == []
    assert await exit_code(proc) == 0


async def test_keep_alive_runs_out(make, model):
    s = make()
    proc, _ = await answer(s, model(), keep_alive=0.5)
    assert names(s) == ["tiny"]
    assert await exit_code(proc) == 0
    assert s.loaded() == []


async def test_close_leaves_no_child_processes(make, model, processes):
    s = make(max_loaded=2)
    await answer(s, model("a"))
    await answer(s, model("b"), "crash")
    await answer(s, model("b"))  # replaces the crashed runner
    task = asyncio.create_task(answer(s, model("a"), "slow 100"))
    await asyncio.sleep(0.3)  # a is busy while the server shuts down
    s.close()
    await asyncio.wait_for(task, 5)
    assert len(processes) >= 4 and [p.proc.poll() for p in processes if p.proc.poll() is None] == []


async def test_a_load_that_hangs_is_killed_after_load_timeout(make, model):
    s = make(limits={"load_timeout": 1})
    with pytest.raises(APIError) as info:
        await asyncio.wait_for(answer(s, model("stuck", "hangload")), 3)
    assert info.value.status == 500 and "no answer for 1 s (phase load)" in info.value.message


async def test_concurrent_loads_respect_max_loaded(make, model):
    s = make(max_loaded=1)
    await asyncio.gather(answer(s, model("a", "slowload-a")), answer(s, model("b", "slowload-b")))
    assert len(s.loaded()) == 1


async def test_a_request_cancelled_during_load_leaves_no_process(make, model, processes):
    s = make()
    task = asyncio.create_task(answer(s, model("tiny", "slowload")))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s.close()
    deadline = time.monotonic() + 5  # a killed process takes a moment to be gone
    while any(p.proc.poll() is None for p in processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [p.proc.pid for p in processes if p.proc.poll() is None] == []


# --- parallel slots: several jobs in one runner ---------------------------------------------------


async def test_parallel_jobs_run_together_in_one_runner(make, model):
    s, m = make(parallel=2), model()
    arrivals = []  # which job each piece came from, in the order they arrived

    async def run(name: str):
        async with s.use(m, None, NUM_CTX) as runner:
            events = []
            async for event in runner.run(job("slow 5")):
                events.append(event)
                if event["ev"] == "piece":
                    arrivals.append(name)
            return runner.process.proc, events

    (p1, first), (p2, second) = await asyncio.gather(run("a"), run("b"))
    assert p1 is p2  # one runner, stepping both: their pieces interleave instead of one answer after the other
    last_a, last_b = len(arrivals) - 1 - arrivals[::-1].index("a"), len(arrivals) - 1 - arrivals[::-1].index("b")
    assert arrivals.index("b") < last_a and arrivals.index("a") < last_b, arrivals
    for events in (first, second):
        assert "".join(e["text"] for e in events if e["ev"] == "piece") == "0 1 2 3 4 "
        assert events[-1]["ev"] == "done" and events[-1]["eval_count"] == 5
    assert {first[-1]["id"], second[-1]["id"]} == {1, 2}


async def test_beyond_the_parallel_slots_requests_wait_their_turn(make, model):
    s, m = make(parallel=2), model()
    ends = {}

    async def timed(text: str, name: str):
        await answer(s, m, text)
        ends[name] = time.monotonic()

    await asyncio.gather(timed("slow 4", "a"), timed("slow 4", "b"), timed("slow 1", "c"))
    assert ends["c"] > min(ends["a"], ends["b"])  # the third went in only when a slot was free


async def test_a_runner_that_dies_mid_batch_fails_every_job_in_it(make, model):
    s, m = make(parallel=2), model()
    (_, slow), (proc, crash) = await asyncio.gather(answer(s, m, "slow 50"), answer(s, m, "crash"))
    for events in (slow, crash):
        assert events[-1]["ev"] == "error" and events[-1]["message"].startswith(CRASHED)
    assert await exit_code(proc) == -signal.SIGSEGV
    again, events = await answer(s, m)
    assert again.pid != proc.pid and events[-1]["ev"] == "done"


async def test_cancelling_one_job_of_a_batch_leaves_the_other_running(make, model):
    s, m = make(parallel=2), model()
    quitter = asyncio.create_task(answer(s, m, "slow 100"))
    stayer = asyncio.create_task(answer(s, m, "slow 8"))
    await asyncio.sleep(0.3)
    quitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await quitter
    _, events = await stayer
    assert events[-1]["ev"] == "done" and events[-1]["eval_count"] == 8 and not events[-1]["cancelled"]


async def test_another_num_ctx_waits_until_the_model_is_idle(make, model):
    s, m = make(parallel=2), model()
    first = asyncio.create_task(answer(s, m, "slow 5"))
    await asyncio.sleep(0.1)
    async with s.use(m, None, NUM_CTX * 2) as runner:  # a reload: only after the first job is over
        assert first.done() and runner.num_ctx == NUM_CTX * 2
    proc, _ = await first
    assert await exit_code(proc) == 0  # the old runner was stopped for the reload


async def test_an_embedding_model_runs_one_job_at_a_time(make, tmp_path):
    s = make(parallel=4)
    path = tmp_path / "embedder.gguf"
    path.write_bytes(b"GGUF not really")
    embedder = Model(name="embedder", path=path, details={}, capabilities=["embedding"])
    async with s.use(embedder, None, NUM_CTX) as runner:
        assert runner.parallel == 1
