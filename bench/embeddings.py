#!/usr/bin/env python3
"""Embedding throughput through ``/api/embed``, measured against llama-cpp-python embedding in-process.

The same all-minilm GGUF (the engine builds it from PyPI on first use; this script then reads it
from the engine's store), the same texts in batches of ``--batch`` short texts, the same threads,
in one run, alternating the contestants so that a noisy machine hurts them alike. Prints the
median texts per second of each and the ratio.

- **direct**: ``Llama(embedding=True).embed(texts)`` in this process, vectors L2-normalised with numpy
  (as the engine returns them), as plain Python lists (as a client gets them);
- **grouped**: the same in-process call on groups of at most 64 tokens, as the engine's runner embeds
  (an encoder's batch attention costs the square of the batch: small groups are faster);
- **server**: ``POST /api/embed`` to the embedded engine with ``requests``, JSON parsed by the client.

    python bench/embeddings.py [--batch 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_experiment.embedded import EmbeddedServer  # noqa: E402

os.environ.setdefault("GOMP_SPINCOUNT", "20000")  # as the engine sets it for its runner processes
from llm_experiment.engine.llama import EMBED_GROUP_TOKENS, load_llama  # noqa: E402

MODEL = "all-minilm"
THREADS = os.cpu_count() or 1
TOPICS = ["the weather", "a football match", "cooking pasta", "a new phone", "the stock market", "a trip to Rome",
          "learning Python", "a sleepy cat"]


def texts(n: int, round_: int) -> list[str]:
    """``n`` short, different texts (8 to 14 words); a new set each round, so nothing is cached."""
    return [f"Sentence {round_}-{i}: a short remark about {TOPICS[i % len(TOPICS)]}, number {i * 7 + round_}."
            for i in range(n)]


def direct(llm, batch: list[str]) -> float:
    start = time.perf_counter()
    vectors = np.asarray(llm.embed(batch), dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = vectors.tolist()
    assert len(rows) == len(batch)
    return len(batch) / (time.perf_counter() - start)


def direct_grouped(llm, batch: list[str]) -> float:
    """As :func:`direct`, but in groups of at most EMBED_GROUP_TOKENS tokens, as the engine's runner embeds:
    the same work as the server without HTTP, so ``server / grouped`` is what the engine's layers cost."""
    start = time.perf_counter()
    groups: list[list[str]] = []
    size = 0
    for text in batch:
        n = len(llm.tokenize(text.encode(), add_bos=False))
        if not groups or size + n > EMBED_GROUP_TOKENS:
            groups.append([])
            size = 0
        groups[-1].append(text)
        size += n
    vectors = np.asarray([row for group in groups for row in llm.embed(group)], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = vectors.tolist()
    assert len(rows) == len(batch)
    return len(batch) / (time.perf_counter() - start)


def served(session: requests.Session, url: str, batch: list[str]) -> float:
    start = time.perf_counter()
    r = session.post(url + "/api/embed", json={"model": MODEL, "input": batch}, timeout=300)
    r.raise_for_status()
    rows = r.json()["embeddings"]
    assert len(rows) == len(batch)
    return len(batch) / (time.perf_counter() - start)


def model_path(models: Path) -> Path:
    """The GGUF blob all-minilm's manifest names in the engine's store."""
    import json

    manifest = json.loads((models / "manifests/registry.ollama.ai/library/all-minilm/latest").read_text())
    digest = next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"].endswith(".model"))
    return models / "blobs" / digest.replace(":", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="texts per request (default 64)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per contestant (default 7)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        models = Path(tmp) / "models"
        with EmbeddedServer(env={"OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_MODELS": str(models)}) as url:
            session = requests.Session()
            print("building all-minilm in the engine's store (first use)...", flush=True)
            session.post(url + "/api/pull", json={"model": MODEL, "stream": False}, timeout=600).raise_for_status()
            path = model_path(models)
            # llama-cpp-python as its documentation shows it: Llama(embedding=True) with a 512-token context
            # and batch (the model's), all cores.
            llm = load_llama(path, n_ctx=512, n_threads=THREADS, n_threads_batch=THREADS, embedding=True,
                             verbose=False)
            print(f"model {MODEL} ({path.stat().st_size / 1e6:.1f} MB GGUF), {THREADS} threads, "
                  f"batch {args.batch} texts, {args.repeats} repeats", flush=True)
            contestants = {"direct": lambda batch: direct(llm, batch),
                           "grouped": lambda batch: direct_grouped(llm, batch),
                           "server": lambda batch: served(session, url, batch)}
            for i, run in enumerate(contestants.values()):  # warm-up, not counted
                run(texts(args.batch, -1 - i))
            results: dict[str, list[float]] = {name: [] for name in contestants}
            for i in range(args.repeats):
                batch = texts(args.batch, i)
                for name, run in contestants.items():
                    results[name].append(run(batch))
                line = "   ".join(f"{name} {rows[-1]:7.1f} texts/s" for name, rows in results.items())
                print(f"  run {i + 1}  {line}", flush=True)
            llm.close()

    med = {name: statistics.median(rows) for name, rows in results.items()}
    print()
    for name, rate in med.items():
        print(f"{name:8s}{rate:9.1f} texts/s")
    print(f"\nserver / direct:  {med['server'] / med['direct']:.3f}x  (target >= 0.9x)")
    print(f"server / grouped: {med['server'] / med['grouped']:.3f}x  (the same grouping in-process: what HTTP, the "
          "runner pipe and JSON cost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
