#!/usr/bin/env python3
"""What parallel slots (OLLAMA_NUM_PARALLEL) buy: N clients streaming at once from one model.

In one run, for 1, 2, 4 and 8 concurrent streaming clients (raw counting prompts, greedy, the same
number of tokens each), against an engine with ``--parallel 1`` (one request at a time: the others
queue) and engines with ``--parallel 4`` and ``--parallel 8`` (decoded together), alternating
engines on each repeat; and, as the ceiling, the same batch decoded by llama-cpp-python directly in
this process (one ``llama_decode`` per step over all sequences, the same sampler chain). Prints the
aggregate tokens/s (all tokens / time until the last answer ends), time to first token (median and
worst), and the ratios.

    python bench/parallel.py [--tokens 64] [--repeats 3] [--clients 1 2 4 8]

Run it on a quiet machine: llama.cpp uses every core, so anything else running skews it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_experiment.embedded import EmbeddedServer  # noqa: E402

os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as the engine sets it for its runner processes
MODEL = "smollm2:135m"
NUM_CTX = 1024


_fresh = itertools.count()


def prompt() -> str:
    """A number used nowhere before and a comma, raw: greedy decoding goes on counting. A few tokens,
    so that decoding, which batching speeds up, is what is measured (reading a prompt is not: its
    tokens already go through the model together), and no request finds its prompt in a cache."""
    return f"{1000 + 37 * next(_fresh)},"


def one_stream(url: str, text: str, tokens: int, barrier: threading.Barrier) -> tuple[float, float, int]:
    """(first token time, end time, tokens) of one streamed raw generate, in perf_counter seconds."""
    body = {"model": MODEL, "prompt": text, "raw": True,
            "options": {"temperature": 0, "num_predict": tokens, "num_ctx": NUM_CTX}}
    barrier.wait()
    first = None
    with requests.post(url + "/api/generate", json=body, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            event = json.loads(line)
            if first is None and event.get("response"):
                first = time.perf_counter()
            if event["done"]:
                return first or time.perf_counter(), time.perf_counter(), event["eval_count"]
    raise RuntimeError("the stream ended without done")


def served(url: str, texts: list[str], tokens: int) -> dict[str, float]:
    clients = len(texts)
    barrier = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one_stream, url, text, tokens, barrier) for text in texts]
        barrier.wait()
        start = time.perf_counter()
        results = [f.result() for f in futures]
    end = max(r[1] for r in results)
    ttft = [r[0] - start for r in results]
    return {"tps": sum(r[2] for r in results) / (end - start), "ttft": statistics.median(ttft), "ttft_max": max(ttft)}


class Direct:
    """llama-cpp-python with as many sequences as clients, driven by hand: the batched ceiling."""

    def __init__(self, sequences: int):
        import llama_cpp

        from llm_experiment.engine.llama import load_llama
        from llm_experiment.engine.models import bundled_gguf

        self.c = llama_cpp
        self.n = sequences
        threads = os.cpu_count() or 1
        self.llm = load_llama(bundled_gguf(), sequences=sequences, n_ctx=NUM_CTX * sequences, n_batch=512,
                              n_threads=threads, n_threads_batch=threads, verbose=False)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self.memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)

    def run(self, tokens: int, texts: list[str]) -> dict[str, float]:
        c, llm, batch = self.c, self.llm, self.batch
        c.llama_memory_clear(self.memory, True)
        samplers = []
        for _ in range(self.n):
            llm.set_seed(0)
            samplers.append(llm._init_sampler(temp=0.0, repeat_penalty=1.1, top_k=40, top_p=0.9))
        prompts = [llm.tokenize(text.encode(), add_bos=True, special=True) for text in texts]
        start = time.perf_counter()
        batch.n_tokens = 0
        at = []
        for seq, toks in enumerate(prompts):  # every prompt in one batch, as the engine does when all arrive at once
            for pos, tok in enumerate(toks):
                self._put(tok, pos, seq, pos == len(toks) - 1)
            at.append(batch.n_tokens - 1)
        if c.llama_decode(llm._ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        positions = [len(p) for p in prompts]
        first = time.perf_counter()
        made = 0
        for _ in range(tokens):
            picked = [samplers[s].sample(llm._ctx, at[s]) for s in range(self.n)]
            for tok in picked:
                llm.detokenize([tok])
            made += self.n
            batch.n_tokens = 0
            at = []
            for s, tok in enumerate(picked):
                self._put(tok, positions[s], s, True)
                positions[s] += 1
                at.append(batch.n_tokens - 1)
            if c.llama_decode(llm._ctx.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        end = time.perf_counter()
        for sampler in samplers:
            sampler.close()
        return {"tps": made / (end - start), "ttft": first - start, "ttft_max": first - start}

    def _put(self, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        b.n_tokens = i + 1

    def close(self) -> None:
        self.c.llama_batch_free(self.batch)
        self.llm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per client (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, medians reported (default 3)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent clients")
    parser.add_argument("--parallel", type=int, nargs="+", default=[4, 8], help="parallel slots to compare with 1")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.2f}; {args.tokens} tokens per client, "
          f"{args.repeats} repeats, medians", flush=True)
    engines: dict[int, EmbeddedServer] = {}
    try:
        for p in [1, *args.parallel]:
            server = EmbeddedServer(args=["--parallel", str(p), "--keep-alive", "-1"],
                                    env={"OLLAMA_MODELS": f"/tmp/bench-parallel-{p}"})
            server.start()
            engines[p] = server
            served(server.url, [prompt()], 4)  # the model loaded before anything is timed
        for clients in args.clients:
            runs: dict[str, list[dict[str, float]]] = {}
            rounds = [[prompt() for _ in range(clients)] for _ in range(args.repeats)]  # each contestant gets these
            for texts in rounds:
                for p, server in engines.items():
                    runs.setdefault(f"parallel {p}", []).append(served(server.url, texts, args.tokens))
            direct = Direct(clients)
            try:
                direct.run(4, [prompt() for _ in range(clients)])  # warm-up, as the engines' model was
                runs["direct"] = [direct.run(args.tokens, texts) for texts in rounds]
            finally:
                direct.close()
            med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
            serial = med["parallel 1"]["tps"]
            best = max(args.parallel, key=lambda p: med[f"parallel {p}"]["tps"] if p >= clients else 0)
            print(f"\n{clients} client(s):", flush=True)
            for name, m in med.items():
                print(f"  {name:<11} {m['tps']:7.1f} tok/s  ({m['tps'] / serial:.2f}x parallel 1)   "
                      f"TTFT median {m['ttft'] * 1000:7.0f} ms, worst {m['ttft_max'] * 1000:7.0f} ms", flush=True)
            ceiling = med[f"parallel {best}"]["tps"] / med["direct"]["tps"]
            print(f"  parallel {best} / direct batched ceiling: {ceiling:.2f}x", flush=True)
    finally:
        for server in engines.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
