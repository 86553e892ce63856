#!/usr/bin/env python3
"""What the task queue costs: tasks per second through the manager, and real work through it vs straight to Ollama.

Two measurements in one run, against a manager started here (``llm-experiment queue serve --open`` on a free
port, a fresh SQLite file) and the embedded engine started here:

1. **the queue alone**: ``--tasks`` tasks submitted in batches, drained by ``--workers`` no-op workers (threads
   that take a task and post a fixed result at once, each with its own HTTP connection). Tasks per second is
   the manager's ceiling: every task costs one claim and one result, each an SQLite write transaction.
2. **real work**: ``--prompts`` prompts answered (``num_predict`` ``--tokens``, greedy) by one
   ``llm_experiment`` worker on the engine, against the same prompts sent one after another straight to the
   engine's ``/api/generate``; alternated ``--repeats`` times so a noisy machine hurts both alike. The ratio
   (direct time / queued time) says what share of the engine's speed survives the queue.

    python bench/task_queue.py [--tasks 2000] [--workers 4] [--prompts 20] [--tokens 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_experiment.embedded import EmbeddedServer, free_port  # noqa: E402
from llm_experiment.taskqueue.worker import Worker  # noqa: E402

MODEL = "smollm2:135m"


def start_manager(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "llm_experiment", "queue", "serve", "--open", "--port",
                                str(port), "--db", str(folder / "tasks.sqlite"), "--log-level", "warning"],
                               stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            requests.get(url + "/health", timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the manager did not start")


def submit(url: str, tasks: list[dict]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(tasks), 1000):
        response = requests.post(url + "/submit", json={"tasks": tasks[start:start + 1000]}, timeout=60)
        response.raise_for_status()
        ids += response.json()["task_ids"]
    return ids


def noop_worker(url: str, done: list[int]) -> None:
    """Take tasks and post a fixed result at once, until the queue answers 204."""
    session = requests.Session()
    count = 0
    while (response := session.get(url + "/task", timeout=30)).status_code == 200:
        task = response.json()
        session.post(url + "/task", json={"task_id": task["task_id"], "lease_token": task["lease_token"],
                                          "result": "ok"}, timeout=30).raise_for_status()
        count += 1
    done.append(count)


def queue_alone(url: str, tasks: int, workers: int) -> tuple[float, float]:
    """(submitted tasks/s, drained tasks/s) for ``tasks`` no-op tasks and ``workers`` no-op workers."""
    start = time.perf_counter()
    submit(url, [{"prompt": f"task {n}"} for n in range(tasks)])
    submitted = tasks / (time.perf_counter() - start)
    done: list[int] = []
    threads = [threading.Thread(target=noop_worker, args=(url, done)) for _ in range(workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    drained = time.perf_counter() - start
    assert sum(done) == tasks, f"{sum(done)} results for {tasks} tasks"
    return submitted, tasks / drained


def direct(engine: str, prompts: list[str], options: dict) -> float:
    start = time.perf_counter()
    for prompt in prompts:
        requests.post(engine + "/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                                      "options": options}, timeout=300).raise_for_status()
    return time.perf_counter() - start


def through_queue(url: str, engine: str, prompts: list[str], options: dict) -> float:
    start = time.perf_counter()
    ids = submit(url, [{"prompt": p, "options": options} for p in prompts])
    worker = Worker(url, engine, idle_wait=0.05, say=lambda _: None)
    thread = threading.Thread(target=worker.run)
    thread.start()
    while worker.done < len(ids):
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    worker.stop()
    thread.join()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks for the queue alone (default 2000)")
    parser.add_argument("--workers", type=int, default=4, help="no-op workers draining them (default 4)")
    parser.add_argument("--prompts", type=int, default=20, help="real prompts per round (default 20)")
    parser.add_argument("--tokens", type=int, default=16, help="num_predict of each real prompt (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of direct vs queued (default 3)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manager, url = start_manager(folder)
        try:
            submitted, drained = queue_alone(url, args.tasks, args.workers)
            print(f"queue alone: {args.tasks} tasks submitted at {submitted:,.0f}/s (batches of 1000); drained by "
                  f"{args.workers} no-op workers at {drained:,.0f} tasks/s ({1000 / drained:.2f} ms per task)")
            with open(folder / "engine.log", "w") as log, EmbeddedServer(log=log, env={
                    "OLLAMA_MODELS": str(folder / "models"), "OLLAMA_KEEP_ALIVE": "-1"}) as engine:
                options = {"temperature": 0, "seed": 42, "num_predict": args.tokens}
                direct(engine, ["Hi"], options)  # load the model before timing anything
                plain, queued = [], []
                for round_ in range(args.repeats):
                    prompts = [f"Round {round_}, question {n}: name a colour." for n in range(args.prompts)]
                    plain.append(direct(engine, prompts, options))
                    queued.append(through_queue(url, engine, prompts, options))
                d, q = statistics.median(plain), statistics.median(queued)
                print(f"real work: {args.prompts} prompts of {args.tokens} tokens, median of {args.repeats}: "
                      f"direct {d:.2f} s, through the queue {q:.2f} s; ratio direct/queued {d / q:.3f}x "
                      f"({(q - d) / args.prompts * 1000:+.1f} ms per task)")
        finally:
            manager.terminate()
            manager.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
