"""What a runner's generation loop takes and gives back: a :class:`Request` in, a :class:`Generation` out.

Plain data, no llama.cpp: the runner's loop (:mod:`.runner_main`), the batch decoder
(:mod:`.batch`) and the tests' fake model share these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .options import Options


@dataclass
class Request:
    """One generation to run: its prompt tokens and how to sample, and where its text goes."""

    jid: int
    prompt: list[int]
    opts: Options
    emit: Callable[[str, list[dict[str, Any]]], None]  # a piece of text and its logprob entries
    progress: Callable[[], None] = lambda: None  # called after each chunk of the prompt
    grammar: Any = None  # a llama_cpp.LlamaGrammar, or None
    logprobs: int | None = None  # alternatives wanted per token (0-20), or None for no logprobs


@dataclass
class Generation:
    """What one generation did, with Ollama's counts and durations (nanoseconds)."""

    prompt_tokens: list[int]
    output_tokens: list[int] = field(default_factory=list)
    prompt_eval_count: int = 0  # the whole prompt, as current Ollama counts it
    prompt_eval_cached_count: int = 0  # of which reused from the sequence's cache
    prompt_eval_duration: int = 0  # evaluating the rest
    eval_count: int = 0
    eval_duration: int = 0
    done_reason: str = "stop"  # stop (end of text or a stop string), length (num_predict or context full)
    cancelled: bool = False
