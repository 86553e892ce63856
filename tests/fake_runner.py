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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FOREVER = 3600.0


@dataclass
class Generation:
    """The fields of llama.Generation that runner_main reports."""

    prompt_tokens: list[int]
    output_tokens: list[int] = field(default_factory=list)
    prompt_eval_count: int = 0
    prompt_eval_cached_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    done_reason: str = "stop"
    cancelled: bool = False


class FakeModel:
    """Stands in for llama.LlamaModel: one token per character."""

    def __init__(self, path: str, num_ctx: int, threads: int | None = None, embedding: bool = False):
        self.embedding = embedding
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

    def generate(self, prompt: list[int], opts: Any, emit: Callable[[str, list[Any]], None],
                 cancelled: Callable[[], bool], grammar: Any = None, progress: Callable[[], None] = lambda: None,
                 logprobs: int | None = None) -> Generation:
        text = self.detokenize(prompt)
        result = Generation(prompt_tokens=prompt, prompt_eval_count=len(prompt), prompt_eval_duration=1000)
        pieces, delay = re.findall(r"\S+\s*", text), 0.0
        if slow := re.search(r"slow (\d+)", text):
            pieces, delay = [f"{i} " for i in range(int(slow[1]))], 0.1
        elif "hog" in text:
            hoard = []
            while True:
                hoard.append(bytearray(16 << 20))
        for word in ("crash", "abort", "hang"):
            if word in text:
                emit("partial ", [])
                if word == "crash":
                    os.kill(os.getpid(), signal.SIGSEGV)
                if word == "abort":
                    os.abort()
                time.sleep(FOREVER)
        for piece in pieces:
            if cancelled():
                result.cancelled = True
                break
            time.sleep(delay)
            emit(piece, [])
            result.eval_count += 1
            result.output_tokens.append(result.eval_count)
        result.eval_duration = 2000
        return result


# runner_main imports llama.cpp's wrapper lazily: put the fake in its place first.
sys.modules["llm_experiment.engine.llama"] = types.SimpleNamespace(LlamaModel=FakeModel, grammar_for=lambda f: None)

if __name__ == "__main__":
    from llm_experiment.engine import runner_main

    sys.exit(runner_main.main())
