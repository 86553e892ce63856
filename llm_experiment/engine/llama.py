"""Calls into llama.cpp (through llama-cpp-python), run only in a runner process: loading a model,
tokens, grammars, embeddings. Generating is in :mod:`.batch`, the only other module that calls llama.cpp.

Native code can crash, abort or loop on hostile input (a malformed grammar, a bad token id, a
broken GGUF). The server process never imports this module: :mod:`.runner_main` does, in a
child process the server can kill and replace (see :mod:`.runner`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_c
import numpy as np

from .options import Options, clamp_num_keep

log = logging.getLogger("llm_experiment.runner")

#: Prompt tokens evaluated per ``llama_decode`` call; the runner reports progress after each chunk.
PREFILL_CHUNK = 512
#: A text of more than num_ctx x this many characters cannot fit the context (tokens are shorter).
CHARS_PER_TOKEN_AT_MOST = 16
#: Characters kept from the start of a clipped text: more than the ``num_keep`` tokens :meth:`_fit` keeps.
CLIP_HEAD = 256
#: Tokens of several short inputs an embedding model evaluates together. An encoder attends over its
#: whole batch (masked per input), a cost that grows with the square of the batch: measured with
#: all-minilm on 2 cores, 47 glossary texts took 1.0 s one by one and 2.0 s / 5.5 s in 512 / 2048-token
#: batches; 64 short texts 0.19 s in 64-token groups, 0.23 s one by one, 0.35 s in one 512-token batch.
EMBED_GROUP_TOKENS = 64
#: Seconds between the runner's progress reports while it embeds (the watchdog wants a sign of life).
EMBED_PROGRESS_EVERY = 1.0
#: An embedding input longer than its token limit times this many characters is clipped before tokenizing
#: (generous: a WordPiece token may stand for a whole long word).
EMBED_CHARS_PER_TOKEN_AT_MOST = 64

_patch_lock = threading.Lock()


@cache
def cpu_has_amx() -> bool:
    """Whether the CPU advertises Intel AMX (recent Xeons)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def load_llama(path: str | Path, *, sequences: int = 1, **kwargs: Any) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path=path, **kwargs)``, with ``sequences`` KV caches and without AMX kernels.

    ``Llama()`` offers no argument for either, so we adjust llama.cpp's default parameters while it loads:

    - ``sequences`` > 1: the context holds that many sequences, each with its own KV cache of
      ``n_ctx / sequences`` cells (``n_seq_max``, ``kv_unified`` off), as llama.cpp's server
      ``-np N`` that Ollama runs for ``OLLAMA_NUM_PARALLEL`` (see :mod:`.batch`).
    - With llama-cpp-python 0.3.36 on an AMX-capable Xeon, evaluating more than one token at once
      crashes inside ``ggml_backend_amx_mul_mat`` (a segmentation fault, seen on the course's
      machines). On such CPUs we turn off llama.cpp's "extra buffer types" (AMX and weight repacking).
    """
    no_amx, parallel = cpu_has_amx(), sequences > 1
    if not (no_amx or parallel):
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    with _patch_lock:
        model_defaults, context_defaults = llama_c.llama_model_default_params, llama_c.llama_context_default_params

        def without_extra_buffers() -> Any:
            params = model_defaults()
            params.use_extra_bufts = False
            return params

        def with_sequences() -> Any:
            params = context_defaults()
            params.n_seq_max = sequences
            params.kv_unified = False
            return params

        if no_amx:
            llama_c.llama_model_default_params = without_extra_buffers
        if parallel:
            llama_c.llama_context_default_params = with_sequences
        try:
            return llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            llama_c.llama_model_default_params = model_defaults
            llama_c.llama_context_default_params = context_defaults


def check_vocabulary(path: str) -> None:
    """Load only the vocabulary of the GGUF at ``path`` and tokenize a little text; raise if llama.cpp refuses.

    Run in a throwaway process (see :func:`.gguf_info.validate_in_subprocess`): a hostile file may
    abort or crash llama.cpp here. ``verbose=True`` keeps llama.cpp's error messages on stderr for the
    parent to report; a small context, because llama-cpp-python allocates n_batch x n_vocab floats
    even for a vocabulary-only load.
    """
    llm = load_llama(path, vocab_only=True, verbose=True, n_ctx=8, n_batch=8)
    try:
        llm.detokenize(llm.tokenize(b"Hello, world! 123\n", add_bos=True, special=True))
    finally:
        llm.close()


@cache
def _json_grammar() -> llama_cpp.LlamaGrammar:
    return llama_cpp.LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)


def grammar_for(fmt: Any) -> llama_cpp.LlamaGrammar | None:
    """``format`` (already checked by the server): ``"json"`` or a JSON schema, as a grammar.

    Raises ``ValueError`` for a schema llama.cpp cannot turn into a grammar.
    """
    if fmt is None:
        return None
    if fmt == "json":
        return _json_grammar()
    try:
        return llama_cpp.LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception as exc:  # noqa: BLE001 - llama-cpp-python raises several kinds for a schema it cannot convert
        raise ValueError("invalid JSON schema in format") from exc


class LlamaModel:
    """A model loaded into memory, with a context window of ``num_ctx`` tokens for each of ``parallel`` sequences.

    Generation runs in a :class:`.batch.BatchDecoder` over :attr:`llm`. With ``embedding`` (a model
    whose GGUF names a pooling type, like all-minilm) the context computes pooled sentence vectors
    instead of next-token logits: see :meth:`embed`.
    """

    def __init__(self, path: str, num_ctx: int, threads: int | None = None, embedding: bool = False,
                 parallel: int = 1):
        threads = threads or os.cpu_count() or 1
        start = time.perf_counter_ns()
        # Ollama uses every physical core; llama-cpp-python's default is half of them.
        if embedding:
            # An input is at most num_ctx tokens and an encoder sees it whole (n_ubatch = n_batch);
            # short inputs share a batch (see EMBED_GROUP_TOKENS).
            size = max(num_ctx, EMBED_GROUP_TOKENS)
            self.llm = load_llama(path, n_ctx=size, n_batch=size, n_ubatch=size, n_threads=threads,
                                  n_threads_batch=threads, embedding=True, verbose=False)
            parallel = 1  # as Ollama: embedding models always load with parallel 1
        else:
            # As Ollama asks llama.cpp's server: num_ctx x parallel cells, num_ctx for each sequence.
            self.llm = load_llama(path, sequences=parallel, n_ctx=num_ctx * parallel, n_threads=threads,
                                  n_threads_batch=threads, n_batch=PREFILL_CHUNK, verbose=False)
            per_sequence = llama_cpp.llama_n_ctx_seq(self.llm._ctx.ctx)
            if per_sequence < num_ctx:
                self.llm.close()
                raise ValueError(f"llama.cpp gave each of {parallel} sequences {per_sequence} tokens of context, "
                                 f"fewer than num_ctx {num_ctx}")
        self.embedding = embedding
        self.parallel = parallel
        self.load_duration = time.perf_counter_ns() - start
        self.num_ctx = num_ctx
        self.vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()

    # text <-> tokens -----------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (special tokens like ``<|im_start|>`` recognised).

        A text far longer than the context is clipped first, keeping its start and its end: only
        those survive :meth:`fit` anyway, and llama.cpp's tokenizer slows down quadratically with
        the number of special tokens in a text (60,000 ``<|im_start|>`` took 14 s).
        """
        limit = self.num_ctx * CHARS_PER_TOKEN_AT_MOST
        if len(text) > limit + CLIP_HEAD:
            text = text[:CLIP_HEAD] + text[-limit:]
        return self.llm.tokenize(text.encode("utf-8", errors="replace"), add_bos=True, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")

    # generation helpers (the generating itself is in .batch) ----------------------------------

    def batch(self) -> Any:
        """A :class:`.batch.BatchDecoder` running up to :attr:`parallel` generations at once on this model."""
        from .batch import BatchDecoder

        return BatchDecoder(self, self.parallel)

    def logprob(self, token: int, top: int, index: int = -1) -> dict[str, Any]:
        """Ollama's logprob entry for ``token`` just sampled: ``{token, logprob, bytes, top_logprobs}``.

        As llama-server computes them for Ollama (``n_probs``): the log-softmax of the model's raw
        logits (those of the batch's ``index``-th token), before temperature or any other sampler
        changes them.
        """
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, index),
                                       shape=(self.n_vocab,))
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        entry = self._token_entry(token, float(logits[token]) - log_total)
        if top > 0:
            best = np.argpartition(logits, -top)[-top:]
            best = best[np.argsort(logits[best])[::-1]]
            entry["top_logprobs"] = [self._token_entry(int(t), float(logits[t]) - log_total) for t in best]
        return entry

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        text = self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")
        entry: dict[str, Any] = {"token": text, "logprob": logprob}
        if text:
            entry["bytes"] = list(text.encode())  # as Ollama: the bytes of the token's text
        return entry

    def fit(self, prompt: list[int], opts: Options) -> list[int]:
        """Cut a prompt longer than the context as Ollama does: keep the first ``num_keep`` tokens and the end."""
        room = self.num_ctx - 1
        if len(prompt) <= room:
            return prompt
        keep = clamp_num_keep(opts.extra.get("num_keep", 4), len(prompt), self.num_ctx, adds_bos=True)
        log.warning("prompt of %d tokens exceeds num_ctx %d: truncating", len(prompt), self.num_ctx)
        return prompt[:keep] + prompt[len(prompt) - (room - keep):]

    # embeddings ----------------------------------------------------------------------------

    def embed(self, texts: list[str], *, truncate: bool, limit: int, dimensions: int,
              progress: Callable[[], None] = lambda: None,
              cancelled: Callable[[], bool] = lambda: False) -> tuple[np.ndarray, int]:
        """Unit-length vectors for ``texts`` (float32, one row each) and the tokens evaluated, as Ollama's
        ``/api/embed``: each input is cut to ``limit`` tokens counting [CLS] and [SEP] (or refused
        with ``truncate=False``), its pooled vector L2-normalised, then cut to ``dimensions`` (0: all)
        and normalised again. Raises :class:`EmbedError` with Ollama's message and status."""
        room = limit - self._special_count()  # Ollama's adjustTokenLimit: room for [CLS] and [SEP]
        if room <= 0:
            raise EmbedError(400, "input after truncation exceeds maximum context length")
        fitted = [self._fit_input(text, room, truncate) for text in texts]
        vectors: list[np.ndarray] = []
        count = 0
        reported = time.monotonic()
        for group in _groups(fitted, EMBED_GROUP_TOKENS):
            if cancelled():
                raise EmbedError(499, "request canceled")
            rows, tokens = self.llm.embed([text for text, _ in group], normalize=False, truncate=False,
                                          return_count=True)
            vectors.append(np.asarray(rows, dtype=np.float32).reshape(len(group), -1))
            count += tokens
            if time.monotonic() - reported > EMBED_PROGRESS_EVERY:
                progress()
                reported = time.monotonic()
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.llm.n_embd()), np.float32)
        matrix = _normalized(matrix)
        if 0 < dimensions < matrix.shape[1]:
            matrix = _normalized(matrix[:, :dimensions])
        return matrix, count

    def _special_count(self) -> int:
        """How many special tokens the tokenizer adds around a text (2 for BERT's [CLS] ... [SEP])."""
        return len(self.llm.tokenize(b"", add_bos=True, special=False))

    def _fit_input(self, text: str, room: int, truncate: bool) -> tuple[str, int]:
        """``text`` cut to ``room`` tokens (without the special ones), as Ollama does it: by tokens,
        then back to text; and about how many tokens it has. A text far longer than any context is
        clipped first, so a hostile input costs no more tokenizing than a long one."""
        head = text[:room * EMBED_CHARS_PER_TOKEN_AT_MOST]
        tokens = self.llm.tokenize(head.encode("utf-8", errors="replace"), add_bos=False, special=False)
        if len(tokens) <= room and len(head) == len(text):
            return text, len(tokens)
        if not truncate:
            raise EmbedError(400, "the input length exceeds the context length")
        if len(tokens) <= room:  # clipped, yet few tokens (one huge "word"): keep what fits
            return head, len(tokens)
        return self.llm.detokenize(tokens[:room]).decode("utf-8", errors="replace"), room

    def close(self) -> None:
        self.llm.close()


class EmbedError(Exception):
    """An input the model cannot embed: Ollama's status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _groups(items: list[tuple[str, int]], budget: int) -> list[list[tuple[str, int]]]:
    """Consecutive ``(text, tokens)`` items in groups of at most ``budget`` tokens (a longer text alone)."""
    groups: list[list[tuple[str, int]]] = []
    size = 0
    for item in items:
        if not groups or size + item[1] > budget:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item[1]
    return groups


def _normalized(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (Ollama's ``normalize``: a zero row stays zero); NaN or Inf refused."""
    if not np.isfinite(matrix).all():
        raise EmbedError(400, "embedding contains NaN or Inf values")
    norms = np.sqrt(np.square(matrix, dtype=np.float32).sum(axis=1, keepdims=True, dtype=np.float32))
    return (matrix / np.maximum(norms, np.float32(1e-12))).astype(np.float32)
