"""One loaded model: llama-cpp-python doing the actual work, measured honestly.

Only one generation runs on a :class:`Runner` at a time (the scheduler sees to it); the
generation loop runs in a worker thread and hands out text through a callback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from .loader import load_llama
from .models import Model
from .options import Options
from .textstream import TextStream

log = logging.getLogger("llm_experiment.engine")


@dataclass
class Generation:
    """What one generation did, with Ollama's counts and durations (nanoseconds)."""

    prompt_tokens: list[int]
    output_tokens: list[int] = field(default_factory=list)
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    done_reason: str = "stop"  # stop (end of text or a stop string), length (num_predict or context full)
    cancelled: bool = False


class Runner:
    """A model loaded into memory, with a context window of ``num_ctx`` tokens."""

    def __init__(self, model: Model, num_ctx: int, threads: int | None = None):
        threads = threads or os.cpu_count() or 1
        start = time.perf_counter_ns()
        # Ollama uses every physical core; llama-cpp-python's default is half of them.
        self.llm = load_llama(
            model.path, n_ctx=num_ctx, n_threads=threads, n_threads_batch=threads,
            n_batch=512, verbose=False,
        )
        self.load_duration = time.perf_counter_ns() - start
        self.model = model
        self.num_ctx = num_ctx
        self._vocab = self.llm._model.vocab

    # text <-> tokens -----------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (special tokens like ``<|im_start|>`` recognised)."""
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")

    # generation ----------------------------------------------------------------------------

    def generate(self, prompt: list[int], opts: Options, emit: Callable[[str], None],
                 cancelled: Callable[[], bool], grammar: llama_cpp.LlamaGrammar | None = None) -> Generation:
        """Evaluate ``prompt``, then sample tokens, calling ``emit`` with each new piece of text.

        Stops at an end-of-generation token or a stop string (``stop``), after ``num_predict``
        tokens or when the context is full (``length``), or when ``cancelled()`` turns true.
        """
        llm = self.llm
        prompt = self._fit(prompt, opts)
        result = Generation(prompt_tokens=prompt)

        start = time.perf_counter_ns()
        result.prompt_eval_count = self._prefill(prompt)
        prompt_done = time.perf_counter_ns()
        result.prompt_eval_duration = prompt_done - start

        llm.set_seed(opts.seed if opts.seed >= 0 else int.from_bytes(os.urandom(4), "little"))
        llm.last_n_tokens_size = opts.repeat_last_n if opts.repeat_last_n >= 0 else self.num_ctx
        sampler = llm._init_sampler(
            top_k=opts.top_k, top_p=opts.top_p, min_p=opts.min_p, typical_p=opts.typical_p,
            temp=opts.temperature, repeat_penalty=opts.repeat_penalty, frequency_penalty=opts.frequency_penalty,
            presence_penalty=opts.presence_penalty, grammar=grammar,
        )
        text = TextStream(opts.stop)
        limit = opts.num_predict if opts.num_predict >= 0 else None
        try:
            while True:
                if cancelled():
                    result.cancelled = True
                    break
                if limit is not None and result.eval_count >= limit:
                    result.done_reason = "length"
                    break
                token = sampler.sample(llm._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    break
                result.eval_count += 1
                result.output_tokens.append(token)
                piece = text.feed(llm.detokenize([token]))
                if piece:
                    emit(piece)
                if text.stopped:
                    break
                if llm.n_tokens >= self.num_ctx:
                    result.done_reason = "length"
                    break
                llm.eval([token])
            rest = text.flush()
            if rest and not result.cancelled:
                emit(rest)
        finally:
            sampler.close() if hasattr(sampler, "close") else None
        result.eval_duration = time.perf_counter_ns() - prompt_done
        if result.cancelled:
            log.info("generation stopped after %d tokens: the client went away", result.eval_count)
        return result

    def _fit(self, prompt: list[int], opts: Options) -> list[int]:
        """Cut a prompt longer than the context as Ollama does: keep the first ``num_keep`` tokens and the end."""
        room = self.num_ctx - 1
        if len(prompt) <= room:
            return prompt
        keep = min(max(opts.extra.get("num_keep", 4), 0), room)
        log.warning("prompt of %d tokens exceeds num_ctx %d: truncating", len(prompt), self.num_ctx)
        return prompt[:keep] + prompt[len(prompt) - (room - keep):]

    def _prefill(self, prompt: list[int]) -> int:
        """Evaluate the prompt, reusing the cached start it shares with the previous one; return tokens evaluated."""
        llm = self.llm
        cached = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], prompt, strict=False):
            if a != b:
                break
            cached += 1
        cached = min(cached, len(prompt) - 1)  # evaluate at least one token, for fresh logits
        llm.n_tokens = cached  # eval() drops the cache beyond this point
        llm.eval(prompt[cached:])
        return len(prompt) - cached

    def close(self) -> None:
        self.llm.close()
