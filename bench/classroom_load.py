#!/usr/bin/env python3
"""A class of simulated students through the classroom gateway, in front of two embedded engines.

Starts two engines (private, empty model stores: each serves the bundled smollm2:135m; ``OLLAMA_KEEP_ALIVE=-1``)
and the gateway in front of both (``llm-experiment classroom serve`` in its own process, with the command's
defaults: one request at a time per engine, one per student, 512 may wait, no rate limits; a temporary roster
and usage log). Then, for ``--seconds``, ``--students`` students (asyncio and httpx, one connection each, on
loopback) each loop: a short streamed ``/api/generate`` or ``/api/chat`` (``num_predict`` 8 to 16), NDJSON lines
read one by one, then a think time of 0.2 to 1.0 s. ``--greedy`` of them send 4 requests at once each time.

Prints the answers by kind (2xx, the expected 429 and 503, anything else or an exception is a failure),
p50/p95 latency and time to first token, Jain's fairness index over the tokens each student was served
in the window, and, with the load stopped, the gateway's added time to first byte against engine 1
called directly (the baseline), alternating single short requests.

    python bench/classroom_load.py [--students 30] [--seconds 60] [--greedy 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_experiment.classroom.roster import Roster  # noqa: E402
from llm_experiment.classroom.usage import UsageLog  # noqa: E402
from llm_experiment.embedded import EmbeddedServer, free_port, is_serving  # noqa: E402

MODEL = "smollm2:135m"
BURST = 4  # requests a greedy student sends at once
THINK = (0.2, 1.0)  # seconds between a student's requests
PROMPTS = ["Say hi.", "Name a colour.", "What is 2 + 2?", "Give me one word.", "Name a fruit.", "Say yes or no."]
DIRECT_REPEATS = 20


@dataclass
class Stats:
    ok: int = 0
    rate_limited: int = 0  # 429: expected when limits are set
    queue_full: int = 0  # 503: expected when too many wait
    failures: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)  # whole answer, s
    ttft: list[float] = field(default_factory=list)  # to the first piece of text, s
    tokens: dict[str, int] = field(default_factory=dict)  # per student, pieces received within the window
    requests: dict[str, int] = field(default_factory=dict)  # per student, answers started (2xx)


def body_for(rng: random.Random) -> tuple[str, dict]:
    options = {"num_predict": rng.randint(8, 16)}
    prompt = rng.choice(PROMPTS)
    if rng.random() < 0.5:
        return "/api/generate", {"model": MODEL, "prompt": prompt, "options": options}
    return "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "options": options}


def piece_of(line: dict) -> str:
    return line.get("response") or (line.get("message") or {}).get("content") or ""


async def one_request(client: httpx.AsyncClient, url: str, student: str, rng: random.Random, stats: Stats,
                      window_end: float) -> None:
    path, body = body_for(rng)
    start = time.perf_counter()
    first = None
    try:
        async with client.stream("POST", url + path, json=body) as r:
            if r.status_code == 429:
                stats.rate_limited += 1
                await r.aread()
                return
            if r.status_code == 503:
                stats.queue_full += 1
                await r.aread()
                return
            if not 200 <= r.status_code < 300:
                stats.failures.append(f"{student} {path}: HTTP {r.status_code} {(await r.aread())[:200]!r}")
                return
            stats.requests[student] = stats.requests.get(student, 0) + 1
            done = False
            async for line in r.aiter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    stats.failures.append(f"{student} {path}: error line {obj['error']!r}")
                    return
                if piece_of(obj):
                    now = time.perf_counter()
                    first = first or now
                    if now <= window_end:
                        stats.tokens[student] = stats.tokens.get(student, 0) + 1
                done = done or bool(obj.get("done"))
            if not done:
                stats.failures.append(f"{student} {path}: stream ended without done")
                return
        stats.ok += 1
        stats.latency.append(time.perf_counter() - start)
        if first is not None:
            stats.ttft.append(first - start)
    except Exception as exc:  # noqa: BLE001 - every exception is a failure to count
        stats.failures.append(f"{student} {path}: {type(exc).__name__}: {exc}")


async def student_loop(url: str, key: str, student: str, greedy: bool, stats: Stats, window_end: float,
                       seed: int) -> None:
    rng = random.Random(seed)
    stats.tokens.setdefault(student, 0)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(300.0, connect=10.0),
                                 limits=httpx.Limits(max_connections=BURST)) as client:
        await asyncio.sleep(rng.uniform(*THINK))  # the class does not all press Enter in the same millisecond
        while time.perf_counter() < window_end:
            n = BURST if greedy else 1
            await asyncio.gather(*(one_request(client, url, student, rng, stats, window_end) for _ in range(n)))
            await asyncio.sleep(rng.uniform(*THINK))


def jain(values: list[int]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one gets everything."""
    total, squares = sum(values), sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def ttfb(client: httpx.Client, url: str) -> float:
    """One short streamed generate; seconds to the first line of the answer."""
    body = {"model": MODEL, "prompt": "Say hi.", "options": {"num_predict": 8, "temperature": 0}}
    start = time.perf_counter()
    with client.stream("POST", url + "/api/generate", json=body) as r:
        r.raise_for_status()
        lines = r.iter_lines()
        next(line for line in lines if line)
        first = time.perf_counter() - start
        for _ in lines:
            pass
    return first


def start_gateway(db: Path, upstreams: list[str], log) -> tuple[subprocess.Popen, str]:  # noqa: ANN001
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "llm_experiment", "classroom", "serve", "--db", str(db), "--port", str(port),
               "--keep-alive", "-1", "--log-level", "warning"]
    for up in upstreams:
        command += ["--upstream", up]
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 30
    while not is_serving(url, timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the gateway did not start (see {log.name})")
        time.sleep(0.1)
    return process, url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=30, help="simulated students (default 30)")
    parser.add_argument("--seconds", type=float, default=60, help="length of the load window (default 60)")
    parser.add_argument("--greedy", type=int, default=3, help=f"students who send {BURST} requests at once (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="CPU threads of each engine (default: half the cores, so that the two engines share "
                             "the machine instead of fighting over every core; 0: all cores each, as one engine "
                             "per machine would run)")
    args = parser.parse_args()
    if not 0 <= args.greedy < args.students:
        parser.error("--greedy must be below --students")

    print(f"{args.students} students ({args.greedy} greedy, {BURST} requests at once), {args.seconds:g} s, "
          f"{os.cpu_count()} CPU threads, model {MODEL}, 2 engines with "
          f"{args.engine_threads or 'all'} thread(s) each", flush=True)
    threads = ["--threads", str(args.engine_threads)] if args.engine_threads else None
    with tempfile.TemporaryDirectory(prefix="classroom-load-") as tmp_name:
        tmp = Path(tmp_name)
        engine_logs = [open(tmp / f"engine{i}.log", "w") for i in (1, 2)]  # noqa: SIM115 - closed below
        engines = [EmbeddedServer(log=log, args=threads,
                                  env={"OLLAMA_MODELS": str(tmp / f"models{i}"), "OLLAMA_KEEP_ALIVE": "-1"})
                   for i, log in enumerate(engine_logs, 1)]
        gateway_log = open(tmp / "gateway.log", "w")  # noqa: SIM115 - closed below
        gateway = None
        try:
            for engine in engines:
                engine.start()
            with httpx.Client(timeout=120) as warm:  # load the model in both, outside the measurements
                for engine in engines:
                    ttfb(warm, engine.url)
            db = tmp / "classroom.sqlite"
            roster = Roster(db)
            names = [f"s{i:02d}" for i in range(args.students)]
            keys = {name: roster.add_student(name) for name in names}
            greedy = set(names[:args.greedy])
            gateway, url = start_gateway(db, [e.url for e in engines], gateway_log)
            with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {keys[names[0]]}"}) as c:
                deadline = time.monotonic() + 30  # until the gateway's first check has found the model
                while True:
                    try:
                        ttfb(c, url)
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)

            # the load ---------------------------------------------------------------------------------
            stats = Stats()
            started = time.perf_counter()
            window_end = started + args.seconds

            async def run_class() -> None:
                await asyncio.gather(*(student_loop(url, keys[n], n, n in greedy, stats, window_end, args.seed + i)
                                       for i, n in enumerate(names)))

            asyncio.run(run_class())
            drained = time.perf_counter() - window_end

            # the gateway's added latency, with the load stopped -----------------------------------------
            direct_t, gateway_t = [], []
            with httpx.Client(timeout=120) as direct, \
                    httpx.Client(timeout=120, headers={"Authorization": f"Bearer {keys[names[-1]]}"}) as through:
                ttfb(direct, engines[0].url), ttfb(through, url)  # connections opened, not counted
                for _ in range(DIRECT_REPEATS):
                    direct_t.append(ttfb(direct, engines[0].url))
                    gateway_t.append(ttfb(through, url))
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(timeout=15)
            for engine in engines:
                engine.stop()
            for log in [*engine_logs, gateway_log]:
                log.close()
        with UsageLog(db) as usage:
            rows = usage.rows()

    # the report ---------------------------------------------------------------------------------------
    total = stats.ok + stats.rate_limited + stats.queue_full + len(stats.failures)
    print()
    print(f"requests: {total} sent in the window; 2xx {stats.ok}, 429 {stats.rate_limited}, 503 {stats.queue_full}, "
          f"failures {len(stats.failures)}  ({'zero failures: OK' if not stats.failures else 'FAILED'})")
    for failure in stats.failures[:10]:
        print(f"  {failure}")
    print(f"  the last answers finished {drained:.1f} s after the window closed; usage log rows: {len(rows)}")
    if stats.latency:
        print(f"latency (whole answer):  p50 {pct(stats.latency, 50) * 1000:7.0f} ms   "
              f"p95 {pct(stats.latency, 95) * 1000:7.0f} ms")
        print(f"time to first token:     p50 {pct(stats.ttft, 50) * 1000:7.0f} ms   "
              f"p95 {pct(stats.ttft, 95) * 1000:7.0f} ms")
    tokens_all = [stats.tokens[n] for n in names]
    tokens_fair = [stats.tokens[n] for n in names if n not in greedy]
    served = sum(tokens_all)
    print(f"tokens served in the window: {served} ({served / args.seconds:.1f}/s), "
          f"{sum(stats.requests.values())} answers")
    print(f"  per ordinary student: min {min(tokens_fair)}, median {statistics.median(tokens_fair):g}, "
          f"max {max(tokens_fair)}")
    if greedy:
        tokens_greedy = [stats.tokens[n] for n in names if n in greedy]
        share = statistics.mean(tokens_greedy) / max(1e-9, statistics.mean(tokens_fair))
        print(f"  per greedy student:   {sorted(tokens_greedy)}  ({share:.2f}x an ordinary student's mean)")
    print(f"Jain's fairness index, ordinary students: {jain(tokens_fair):.3f}")
    print(f"Jain's fairness index, all students:      {jain(tokens_all):.3f}  (target >= 0.95: the fair queue "
          "gives each waiting student a turn, so greedy students should not get more than their share)")
    d, g = statistics.median(direct_t), statistics.median(gateway_t)
    print(f"time to first byte, load stopped, {DIRECT_REPEATS} alternating requests: engine 1 direct "
          f"{d * 1000:.1f} ms, through the gateway {g * 1000:.1f} ms")
    print(f"gateway added latency (p50): {(g - d) * 1000:+.1f} ms  (target < 2 ms); "
          f"p95 direct {pct(direct_t, 95) * 1000:.1f} ms, gateway {pct(gateway_t, 95) * 1000:.1f} ms")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
