#!/usr/bin/env python3
"""What the embedded engine's HTTP layer costs, measured against llama-cpp-python called directly.

Same model, prompt, greedy settings, token count and threads, in one run, alternating the
contestants so that a noisy machine hurts them alike. Prints medians and the ratios.

    python bench/engine_overhead.py [--tokens 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_experiment.embedded import EmbeddedServer  # noqa: E402

os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as the engine sets it for its runner processes
from llm_experiment.engine.llama import load_llama  # noqa: E402
from llm_experiment.engine.models import bundled_gguf  # noqa: E402

# Counting runs on for as long as we ask (greedy), one token per number piece.
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
THREADS = os.cpu_count() or 1


def measure(pieces: Iterator[object], start: float) -> tuple[float, float, int]:
    """(time to first token in s, decode tokens/s after the first, pieces seen)."""
    stamps = [time.perf_counter() for _ in pieces]
    if len(stamps) < 2:
        raise RuntimeError("too few tokens to measure")
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def direct(llm, tokens: int) -> tuple[float, float, int]:
    """llama-cpp-python's own streaming completion, in this process."""
    llm.reset()  # no prompt cache: the server is given a cold prompt too (see below)
    start = time.perf_counter()
    stream = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, top_k=40, top_p=0.9,
                                   repeat_penalty=1.1, stream=True)
    return measure((c for c in stream if c["choices"][0]["text"]), start)


def served(url: str, tokens: int) -> tuple[float, float, int]:
    """The engine over HTTP, read as a client reads it: NDJSON lines parsed one by one."""
    # The direct side resets its cache each run; a different prompt first does the same for the server.
    requests.post(url + "/api/generate", json={"model": "smollm2:135m", "prompt": "x", "raw": True,
                                               "stream": False, "options": {"num_predict": 1}}, timeout=60)
    body = {"model": "smollm2:135m", "prompt": PROMPT, "raw": True,
            "options": {"temperature": 0, "num_predict": tokens, "top_k": 40, "top_p": 0.9, "repeat_penalty": 1.1}}
    start = time.perf_counter()
    with requests.post(url + "/api/generate", json=body, stream=True, timeout=120) as r:
        lines = (json.loads(line) for line in r.iter_lines() if line)
        return measure((o for o in lines if o.get("response")), start)


def load_time(url: str) -> tuple[float, float]:
    """(direct Llama() load, the server's reported load_duration after an unload), in seconds."""
    start = time.perf_counter()
    llm = load_llama(bundled_gguf(), n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    direct_s = time.perf_counter() - start
    llm.close()
    requests.post(url + "/api/generate", json={"model": "smollm2:135m", "keep_alive": 0}, timeout=60)
    reply = requests.post(url + "/api/generate", json={"model": "smollm2:135m", "prompt": "Hi", "stream": False,
                                                       "options": {"num_predict": 1}}, timeout=60).json()
    return direct_s, reply["load_duration"] / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per run (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per contestant (default 5)")
    args = parser.parse_args()

    print(f"model smollm2:135m ({bundled_gguf().name}), {THREADS} threads, {args.tokens} tokens, "
          f"{args.repeats} repeats", flush=True)
    llm = load_llama(bundled_gguf(), n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    with EmbeddedServer(env={"OLLAMA_KEEP_ALIVE": "-1"}) as url:
        contestants: dict[str, Callable[[], tuple[float, float, int]]] = {
            "direct": lambda: direct(llm, args.tokens),
            "server": lambda: served(url, args.tokens),
        }
        for run in contestants.values():  # warm-up, not counted
            run()
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in contestants}
        for i in range(args.repeats):
            for name, run in contestants.items():
                results[name].append(run())
                print(f"  run {i + 1} {name:6s} ttft {results[name][-1][0] * 1000:6.1f} ms  "
                      f"{results[name][-1][1]:6.1f} tok/s  ({results[name][-1][2]} tokens)", flush=True)
        llm.close()
        direct_load, server_load = load_time(url)

    med = {name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
           for name, rows in results.items()}
    print()
    print(f"{'':8s}{'first token':>14s}{'decode':>14s}")
    for name, (ttft, rate) in med.items():
        print(f"{name:8s}{ttft * 1000:11.1f} ms{rate:9.1f} tok/s")
    print()
    print(f"server / direct decode speed: {med['server'][1] / med['direct'][1]:.3f}x  (target >= 0.95x)")
    print(f"server - direct first token:  {(med['server'][0] - med['direct'][0]) * 1000:+.1f} ms  (target <= 10 ms)")
    print(f"model load: direct {direct_load:.2f} s, server cold start {server_load:.2f} s  (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
