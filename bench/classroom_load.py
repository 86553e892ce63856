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

With ``--latency-only`` there is no class: one engine, the gateway in front of it, and ``--samples``
single requests alternating between the engine directly and the gateway (p50/p95 of the time to the first
line, and the difference); then the same against a stub upstream that answers at once (``--stub-delay``
milliseconds before its first line), which shows the gateway's own cost without a model's noise.

    python bench/classroom_load.py [--students 30] [--seconds 60] [--greedy 3]
    python bench/classroom_load.py --latency-only [--samples 100] [--stub-delay 0]
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


def compare(direct_url: str, gateway_url: str, key: str, samples: int) -> tuple[list[float], list[float]]:
    """``samples`` first-byte times each, direct and through the gateway, in the order d g g d d g g d ...

    The two alternate so that whatever else the machine does hits both alike; the first request on each
    connection is not counted (it opens the connection).
    """
    direct_t: list[float] = []
    gateway_t: list[float] = []
    with httpx.Client(timeout=120) as direct, \
            httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as through:
        ttfb(direct, direct_url), ttfb(through, gateway_url)
        for i in range(samples):
            pair = [(direct_t, direct, direct_url), (gateway_t, through, gateway_url)]
            for times, client, url in pair if i % 2 == 0 else reversed(pair):
                times.append(ttfb(client, url))
    return direct_t, gateway_t


def report_latency(what: str, direct_t: list[float], gateway_t: list[float]) -> None:
    d, g = statistics.median(direct_t), statistics.median(gateway_t)
    pairs = statistics.median([b - a for a, b in zip(direct_t, gateway_t, strict=True)])
    print(f"{what}: {len(direct_t)} alternating requests each")
    print(f"  direct   p50 {d * 1000:6.2f} ms   p95 {pct(direct_t, 95) * 1000:6.2f} ms")
    print(f"  gateway  p50 {g * 1000:6.2f} ms   p95 {pct(gateway_t, 95) * 1000:6.2f} ms")
    print(f"  gateway added latency (p50 difference): {(g - d) * 1000:+.2f} ms  (target < 2 ms); "
          f"median of paired differences {pairs * 1000:+.2f} ms")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def serve_stub(port: int, delay: float) -> None:
    """An instant Ollama stand-in on 127.0.0.1:``port``: version, tags, and a streamed generate.

    Each ``/api/generate`` answers its headers and first NDJSON line ``delay`` seconds after the request
    (written apart, as the engine writes them), then 8 more lines and the done line. Keep-alive, HTTP/1.1.
    """

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def answer(status: bytes, body: bytes) -> bytes:
        return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json; charset=utf-8\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body))

    version = answer(b"200 OK", b'{"version":"0.12.6"}')
    tags = answer(b"200 OK", json.dumps({"models": [{"name": MODEL, "model": MODEL}]}).encode())
    missing = answer(b"404 Not Found", b'{"error":"404 page not found"}')
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
    line = json.dumps({"model": MODEL, "response": "hi", "done": False}).encode() + b"\n"
    done = json.dumps({"model": MODEL, "response": "", "done": True, "prompt_eval_count": 3,
                       "eval_count": 9, "total_duration": 1000}).encode() + b"\n"

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for header in request.split(b"\r\n")[1:]:
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                target = request.split(b" ", 2)[1]
                if target == b"/api/generate":
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(head)
                    writer.write(chunk(line))
                    for _ in range(8):
                        writer.write(chunk(line))
                    writer.write(chunk(done) + b"0\r\n\r\n")
                else:
                    writer.write(version if target == b"/api/version" else tags if target == b"/api/tags" else missing)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def start_stub(delay_ms: float, log) -> tuple[subprocess.Popen, str]:  # noqa: ANN001
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-stub", str(port), "--stub-delay", str(delay_ms)],
                               stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(process, url, "the stub upstream", log, timeout=15)
    return process, url


def wait_until_serving(process: subprocess.Popen, url: str, what: str, log, timeout: float) -> None:  # noqa: ANN001
    """Until ``url`` answers; kill ``process`` and raise if it ends or takes longer than ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not is_serving(url, timeout=0.5):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} did not start (see {log.name})")
        time.sleep(0.05)


def wait_for_model(url: str, key: str) -> None:
    """Until the gateway's first check has found the model (a request through it succeeds)."""
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {key}"}) as c:
        deadline = time.monotonic() + 30
        while True:
            try:
                ttfb(c, url)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def latency_only(args: argparse.Namespace) -> int:
    """One engine, the gateway in front of it; then a stub upstream and the gateway in front of that."""
    threads = ["--threads", str(args.engine_threads)] if args.engine_threads else None
    print(f"latency only: {args.samples} samples each way, {os.cpu_count()} CPU threads, model {MODEL}, one engine "
          f"with {args.engine_threads or 'all'} thread(s); stub's first line after {args.stub_delay:g} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="classroom-latency-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "classroom.sqlite"
        key = Roster(db).add_student("s00")
        logs = {name: open(tmp / f"{name}.log", "w") for name in ("engine", "gateway", "stub", "gateway-stub")}  # noqa: SIM115
        engine = EmbeddedServer(log=logs["engine"], args=threads,
                                env={"OLLAMA_MODELS": str(tmp / "models"), "OLLAMA_KEEP_ALIVE": "-1"})
        processes: list[subprocess.Popen] = []
        try:
            engine.start()
            with httpx.Client(timeout=120) as warm:
                ttfb(warm, engine.url)
            gateway, url = start_gateway(db, [engine.url], logs["gateway"])
            processes.append(gateway)
            wait_for_model(url, key)
            print(f"load average before: {load_average()}", flush=True)
            direct_t, gateway_t = compare(engine.url, url, key, args.samples)
            print(f"load average after:  {load_average()}")
            report_latency("engine (first line = first token)", direct_t, gateway_t)
        finally:
            engine.stop()
            for process in processes:
                process.terminate()
                process.wait(timeout=15)
            processes.clear()
        try:
            stub, stub_url = start_stub(args.stub_delay, logs["stub"])
            processes.append(stub)
            gateway, url = start_gateway(tmp / "classroom.sqlite", [stub_url], logs["gateway-stub"])
            processes.append(gateway)
            wait_for_model(url, key)
            print(f"load average before: {load_average()}", flush=True)
            direct_t, gateway_t = compare(stub_url, url, key, args.samples)
            print(f"load average after:  {load_average()}")
            report_latency(f"stub upstream (first line after {args.stub_delay:g} ms)", direct_t, gateway_t)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=15)
            for log in logs.values():
                log.close()
    return 0


def start_gateway(db: Path, upstreams: list[str], log) -> tuple[subprocess.Popen, str]:  # noqa: ANN001
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "llm_experiment", "classroom", "serve", "--db", str(db), "--port", str(port),
               "--keep-alive", "-1", "--log-level", "warning"]
    for up in upstreams:
        command += ["--upstream", up]
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=Path(__file__).resolve().parent.parent)
    wait_until_serving(process, url, "the gateway", log, timeout=30)
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
    parser.add_argument("--latency-only", action="store_true",
                        help="no class: only the gateway's added time to first byte, against one engine and a stub")
    parser.add_argument("--samples", type=int, default=100, help="requests each way with --latency-only (default 100)")
    parser.add_argument("--stub-delay", type=float, default=0.0,
                        help="milliseconds the stub upstream waits before its first line (default 0)")
    parser.add_argument("--serve-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stub:
        serve_stub(args.serve_stub, args.stub_delay / 1000)
        return 0
    if args.latency_only:
        return latency_only(args)
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
            wait_for_model(url, keys[names[0]])

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
            direct_t, gateway_t = compare(engines[0].url, url, keys[names[-1]], DIRECT_REPEATS)
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
