"""Continuous batching: several generations share one model, one decode step at a time.

As llama.cpp's server does for Ollama's ``OLLAMA_NUM_PARALLEL`` (``-np N``): the context holds
``parallel`` sequences, each with its own KV cache of ``num_ctx`` tokens. Every :meth:`BatchDecoder.step`
builds one batch from the next token of every sequence that is generating and a bounded chunk of a
newcomer's prompt, makes one ``llama_decode`` call, then lets each sequence sample its next token
from its own logits with its own sampler (options, seed, grammar) and stop strings. Requests join
and leave between steps, and a sequence slot keeps what it evaluated, so a request that continues
a conversation reuses its start (the prompt cache).

Runs only in a runner process (it calls llama.cpp). With ``parallel`` 1 it is the plain serial engine.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from .generation import Generation, Request
from .llama import PREFILL_CHUNK, LlamaModel
from .options import Options, clamp_repeat_last_n, clamp_top_k, normalize_seed
from .textstream import TextStream

log = logging.getLogger("llm_experiment.runner")

#: Prompt tokens a newcomer evaluates per step while other sequences are generating: a small chunk
#: keeps their tokens flowing (a step costs about as much as the tokens in it), a big one ends the
#: newcomer's wait sooner. Alone, a prompt goes in chunks of PREFILL_CHUNK.
PREFILL_SHARED = 128


@dataclass
class _Slot:
    """A sequence of the context: the tokens in its KV cache, kept after its request ends."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    last_used: float = 0.0
    busy: bool = False


@dataclass
class _Sequence:
    """A request in progress on a slot."""

    request: Request
    slot: _Slot
    result: Generation
    sampler: Any
    text: TextStream
    pending: list[int]  # tokens to evaluate next: the rest of the prompt, then the last sampled token
    prefilling: bool = True
    limit: int | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)  # logprobs of text not yet sent
    started_ns: int = 0
    prompt_done_ns: int = 0
    logits_at: int = -1  # where this sequence's logits are in the batch just decoded (-1: none)


class BatchDecoder:
    """Up to ``parallel`` generations at once on ``model`` (loaded with that many sequences)."""

    def __init__(self, model: LlamaModel, parallel: int):
        self.model = model
        self.llm = model.llm
        self.slots = [_Slot(seq_id=i) for i in range(parallel)]
        self.n_batch = PREFILL_CHUNK
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self.llm._ctx.ctx)
        self._running: list[_Sequence] = []  # in arrival order: the oldest prompt is evaluated first

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def free(self) -> int:
        return len(self.slots) - len(self._running)

    # joining ---------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Start ``request`` on a free slot, reusing the start of its prompt that the slot's cache holds."""
        if not request.prompt:
            raise ValueError("the prompt is empty: there is nothing for the model to continue")
        prompt = self.model.fit(request.prompt, request.opts)
        slot, shared = self._pick_slot(prompt)
        cached = min(shared, len(prompt) - 1)  # at least one token to evaluate, for fresh logits
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, cached, -1)
        del slot.tokens[cached:]
        slot.busy = True
        opts = request.opts
        result = Generation(prompt_tokens=prompt, prompt_eval_count=len(prompt), prompt_eval_cached_count=cached)
        self._running.append(_Sequence(
            request=request, slot=slot, result=result, sampler=self._sampler(opts, request.grammar),
            text=TextStream(opts.stop), pending=prompt[cached:],
            limit=opts.num_predict if opts.num_predict >= 0 else None, started_ns=time.perf_counter_ns()))

    def _pick_slot(self, prompt: list[int]) -> tuple[_Slot, int]:
        """The free slot for ``prompt`` and how many of its first tokens the slot's cache holds: the slot
        whose cache it continues (a conversation's next turn) or that holds at least half of it (a shared
        system prompt); otherwise the least recently used, so the other conversations keep their caches."""
        free = [(_common_prefix(slot.tokens, prompt), slot) for slot in self.slots if not slot.busy]
        if not free:
            raise RuntimeError("no free sequence slot")
        shared, best = max(free, key=lambda pair: (pair[0], -pair[1].last_used))
        if shared and (shared == len(best.tokens) or 2 * shared >= len(prompt)):
            return best, shared
        shared, oldest = min(free, key=lambda pair: pair[1].last_used)
        return oldest, shared

    def _sampler(self, opts: Options, grammar: Any) -> Any:
        """A sampler chain of the request's own options and seed (llama-cpp-python builds it from these)."""
        llm = self.llm
        seed = normalize_seed(opts.seed)
        llm.set_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        llm.last_n_tokens_size = clamp_repeat_last_n(opts.repeat_last_n, self.model.num_ctx)
        return llm._init_sampler(
            top_k=clamp_top_k(opts.top_k, self.model.n_vocab), top_p=opts.top_p, min_p=opts.min_p,
            typical_p=opts.typical_p, temp=opts.temperature, repeat_penalty=opts.repeat_penalty,
            frequency_penalty=opts.frequency_penalty, presence_penalty=opts.presence_penalty, grammar=grammar,
        )

    # one step ------------------------------------------------------------------------------

    def step(self, cancelled: Callable[[int], bool]) -> list[tuple[int, Generation]]:
        """Decode one batch; return ``(jid, generation)`` of every request that ended in it.

        ``cancelled(jid)`` true ends that request before the batch (``generation.cancelled``).
        Raises ``RuntimeError`` when llama.cpp refuses the batch: then every running request failed
        (call :meth:`reset`).
        """
        finished = [self._finish(seq, cancel=True) for seq in list(self._running) if cancelled(seq.request.jid)]
        if not self._running:
            return finished
        evaluated = self._fill()
        code = llama_cpp.llama_decode(self.llm._ctx.ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        now = time.perf_counter_ns()
        for seq, tokens in evaluated:
            seq.slot.tokens += tokens
            del seq.pending[:len(tokens)]
            if seq.prefilling:
                if seq.pending:
                    seq.request.progress()
                    continue
                seq.prefilling = False
                seq.prompt_done_ns = now
                seq.result.prompt_eval_duration = now - seq.started_ns
                if seq.limit == 0:  # num_predict 0: the prompt is evaluated (and cached), nothing generated
                    seq.result.done_reason = "length"
                    finished.append(self._finish(seq))
                    continue
            if self._next_token(seq):
                finished.append(self._finish(seq))
        return finished

    def _fill(self) -> list[tuple[_Sequence, list[int]]]:
        """Put the next token of every generating sequence, then prompt chunks, into the batch."""
        batch = self._batch
        batch.n_tokens = 0
        evaluated: list[tuple[_Sequence, list[int]]] = []

        def put(seq: _Sequence, tokens: list[int], logits: bool) -> None:
            pos = len(seq.slot.tokens)
            for offset, token in enumerate(tokens):
                i = batch.n_tokens
                batch.token[i] = token
                batch.pos[i] = pos + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq.slot.seq_id
                batch.logits[i] = False
                batch.n_tokens = i + 1
            seq.logits_at = batch.n_tokens - 1 if logits else -1
            batch.logits[batch.n_tokens - 1] = logits
            evaluated.append((seq, tokens))

        generating = [seq for seq in self._running if not seq.prefilling]
        for seq in generating:
            put(seq, seq.pending[:1], logits=True)
        room = self.n_batch - batch.n_tokens
        if generating:
            room = min(room, PREFILL_SHARED)
        for seq in self._running:
            if not seq.prefilling or room <= 0:
                continue
            chunk = seq.pending[:room]
            put(seq, chunk, logits=len(chunk) == len(seq.pending))
            room -= len(chunk)
        return evaluated

    def _next_token(self, seq: _Sequence) -> bool:
        """Sample ``seq``'s next token from its logits and send its text; return whether it has ended."""
        result = seq.result
        token = seq.sampler.sample(self.llm._ctx, seq.logits_at)
        if llama_cpp.llama_vocab_is_eog(self.model.vocab, token):
            return True
        result.eval_count += 1
        result.output_tokens.append(token)
        if seq.request.logprobs is not None:
            seq.entries.append(self.model.logprob(token, seq.request.logprobs, seq.logits_at))
        piece = seq.text.feed(self.llm.detokenize([token]))
        if piece:
            seq.request.emit(piece, seq.entries)
            seq.entries = []
        if seq.text.stopped:
            return True
        if len(seq.slot.tokens) >= self.model.num_ctx or (seq.limit is not None and result.eval_count >= seq.limit):
            result.done_reason = "length"  # this sequence's context is full, or num_predict tokens were made
            return True
        seq.pending = [token]
        return False

    def _finish(self, seq: _Sequence, cancel: bool = False) -> tuple[int, Generation]:
        """End ``seq``: send the text it still holds, free its slot (keeping its cache), time it."""
        result = seq.result
        result.cancelled = cancel
        rest = seq.text.flush()
        if (rest or seq.entries) and not cancel:
            seq.request.emit(rest, seq.entries)
        now = time.perf_counter_ns()
        if seq.prefilling:  # cancelled (or refused) before the prompt was done
            result.prompt_eval_duration = now - seq.started_ns
        else:
            result.eval_duration = now - seq.prompt_done_ns
        seq.sampler.close()
        seq.slot.busy = False
        seq.slot.last_used = time.monotonic()
        self._running.remove(seq)
        return seq.request.jid, result

    def reset(self) -> list[int]:
        """After a failed decode: drop every request and every cache; return the jids dropped."""
        dropped = [seq.request.jid for seq in self._running]
        for seq in self._running:
            seq.sampler.close()
        self._running.clear()
        llama_cpp.llama_memory_clear(self._memory, True)
        for slot in self.slots:
            slot.tokens.clear()
            slot.busy = False
        return dropped

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
