"""A runner process without llama.cpp: the real :mod:`runner_main` loop around a scripted fake model.

``RunnerLimits(command=(sys.executable, "tests/fake_runner.py"))`` runs it; the protocol, the
cancel handling and the memory cap are runner_main's own. What the fake model does is chosen by
the model path at load and by words in the prompt (the raw prompt, or the rendered chat):

    load   "badmodel" -> error event, exit 1    "hangload" -> silence    "slowload" -> 0.5 s
    run    "crash" -> SIGSEGV after one piece   "abort" -> os.abort() after one piece
           "hang" -> one piece, then silence    "slow N" -> N pieces 0.1 s apart
           "hog" -> allocate until the heap cap (MemoryError)    else -> each word is a piece
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_experiment.engine.generation import Generation, Request  # noqa: E402 - after the path is set

FOREVER = 3600.0


@dataclass
class _Sequence:
    request: Request
    result: Generation
    pieces: list[str]
    delay: float
    trouble: str = ""  # "crash", "abort", "hang" or "hog": what happens after the first piece


class FakeBatch:
    """Stands in for batch.BatchDecoder: each step sends the next piece of every running request."""

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.running: list[_Sequence] = []

    @property
    def active(self) -> int:
        return len(self.running)

    @property
    def free(self) -> int:
        return self.parallel - len(self.running)

    def add(self, request: Request) -> None:
        text = "".join(map(chr, request.prompt))
        result = Generation(prompt_tokens=request.prompt, prompt_eval_count=len(request.prompt),
                            prompt_eval_duration=1000)
        pieces, delay = re.findall(r"\S+\s*", text), 0.0
        if slow := re.search(r"slow (\d+)", text):
            pieces, delay = [f"{i} " for i in range(int(slow[1]))], 0.1
        trouble = next((word for word in ("hog", "crash", "abort", "hang") if word in text), "")
        self.running.append(_Sequence(request, result, pieces, delay, trouble))

    def step(self, cancelled: Callable[[int], bool]) -> list[tuple[int, Generation]]:
        finished = []
        time.sleep(max(seq.delay for seq in self.running))
        for seq in list(self.running):
            if seq.trouble == "hog":
                hoard = []
                while True:
                    hoard.append(bytearray(16 << 20))
            if seq.trouble:
                seq.request.emit("partial ", [])
                if seq.trouble == "crash":
                    os.kill(os.getpid(), signal.SIGSEGV)
                if seq.trouble == "abort":
                    os.abort()
                time.sleep(FOREVER)
            if cancelled(seq.request.jid):
                seq.result.cancelled = True
            elif seq.pieces:
                seq.request.emit(seq.pieces.pop(0), [])
                seq.result.eval_count += 1
                seq.result.output_tokens.append(seq.result.eval_count)
            if seq.result.cancelled or not seq.pieces:
                seq.result.eval_duration = 2000
                self.running.remove(seq)
                finished.append((seq.request.jid, seq.result))
        return finished

    def reset(self) -> list[int]:
        dropped = [seq.request.jid for seq in self.running]
        self.running.clear()
        return dropped


class FakeModel:
    """Stands in for llama.LlamaModel: one token per character."""

    def __init__(self, path: str, num_ctx: int, threads: int | None = None, embedding: bool = False,
                 parallel: int = 1):
        self.embedding = embedding
        self.parallel = parallel
        if "badmodel" in path:
            raise ValueError(f"failed to load model from file: {path}")
        if "hangload" in path:
            time.sleep(FOREVER)
        if "slowload" in path:
            time.sleep(0.5)
        self.num_ctx = num_ctx
        self.n_vocab = 0x110000
        self.load_duration = 1_000_000

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens: list[int]) -> str:
        return "".join(map(chr, tokens))

    def batch(self) -> FakeBatch:
        return FakeBatch(self.parallel)


# runner_main imports llama.cpp's wrapper lazily: put the fake in its place first.
sys.modules["llm_experiment.engine.llama"] = types.SimpleNamespace(LlamaModel=FakeModel, grammar_for=lambda f: None)

if __name__ == "__main__":
    from llm_experiment.engine import runner_main

    sys.exit(runner_main.main())
