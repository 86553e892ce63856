"""Embeddings: texts as vectors with ``/api/embed``, how alike two vectors are, and a tiny vector index."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .client import post
from .errors import OllamaError

DEFAULT_EMBED_MODEL = "all-minilm"  # Ollama's name for all-MiniLM-L6-v2: 384 numbers per text


def default_embed_model() -> str:
    """The embedding model the course uses: ``$LLM_EMBED_MODEL`` or ``all-minilm``."""
    return os.environ.get("LLM_EMBED_MODEL") or DEFAULT_EMBED_MODEL


def embed(texts: str | Sequence[str], *, model: str | None = None, server: str | None = None,
          truncate: bool | None = None, dimensions: int | None = None, batch_size: int = 256) -> list[list[float]]:
    """One vector per text, in order, from ``/api/embed``; a single string gives a list with one vector.

    ``truncate=False`` makes a text longer than the model's context an error instead of cutting it;
    ``dimensions`` shortens the vectors. At most ``batch_size`` texts go in one request, so a long
    list is neither one huge request nor thousands of tiny ones. ``np.array(embed(...))`` gives a matrix.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    # Always send a list: Ollama answers the string "" with no vector at all, but the list [""] with
    # one vector (or an error), so every text gets its vector and the order stays aligned.
    texts = [texts] if isinstance(texts, str) else list(texts)
    model = model or default_embed_model()
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        body = {"model": model, "input": batch, "truncate": truncate, "dimensions": dimensions}
        response = post("/api/embed", {k: v for k, v in body.items() if v is not None}, server=server)
        got = response.json().get("embeddings") or []
        if len(got) != len(batch):  # a mismatch would silently pair texts with the wrong vectors
            raise OllamaError(f"asked for {len(batch)} embeddings, got {len(got)}", status=response.status_code,
                              url=response.url, advice="Is this an Ollama-compatible server? Its answer does not "
                                                        "match the request.")
        vectors.extend(got)
    return vectors


def cosine_similarity(a: ArrayLike, b: ArrayLike) -> float:
    """How alike two vectors are by direction alone: 1 same, 0 unrelated, -1 opposite.

    Their lengths do not matter. A zero vector has no direction, so it is 0 to everything
    (as in scikit-learn) rather than an error: an index with one empty text still searches.
    """
    a, b = _vector(a), _vector(b)
    _same_length(a, b)
    lengths = np.linalg.norm(a) * np.linalg.norm(b)
    if lengths == 0:
        return 0.0
    # Rounding can land a hair outside [-1, 1] (1.0000000000000002 for a vector and itself).
    return float(np.clip(a @ b / lengths, -1.0, 1.0))


def similarity_matrix(vectors_a: ArrayLike, vectors_b: ArrayLike | None = None) -> np.ndarray:
    """The cosine similarity of every vector of ``vectors_a`` (rows) with every one of ``vectors_b``.

    Without ``vectors_b``, ``vectors_a`` against itself. Zero vectors score 0, as in :func:`cosine_similarity`.
    """
    a = _unit_rows(vectors_a)
    b = a if vectors_b is None else _unit_rows(vectors_b)
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    _same_length(a[0], b[0])
    # Cosine is the dot product of the vectors scaled to length 1. Ollama already sends its
    # embeddings at length 1, so for them `a @ b.T` alone would do; scaling again costs little
    # and keeps this right for any vectors (another server's, or a test's).
    return np.clip(a @ b.T, -1.0, 1.0)


def _vector(values: ArrayLike) -> np.ndarray:
    vector = np.asarray(values, dtype=float)
    if vector.ndim != 1:
        raise ValueError(f"expected one vector, got an array of shape {vector.shape}; use similarity_matrix")
    return vector


def _unit_rows(vectors: ArrayLike) -> np.ndarray:
    """The vectors as the rows of a matrix, each scaled to length 1 (a zero vector stays zero)."""
    matrix = np.asarray(vectors, dtype=float)
    if matrix.size == 0:
        return np.zeros((0, 0))
    if matrix.ndim != 2:
        raise ValueError(f"expected a list of vectors, got an array of shape {matrix.shape}")
    lengths = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(lengths == 0, 1.0, lengths)


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"vectors of different lengths ({a.size} and {b.size}): were they made by the same model?")


@dataclass
class Hit:
    """One search result: the stored ``text``, its cosine ``score``, its ``metadata`` and where it was added."""

    text: str
    score: float
    metadata: dict[str, Any]
    index: int


class VectorIndex:
    """Texts and their embeddings in memory, searched by meaning.

    ``search`` compares the query with every stored vector: one matrix product, fast enough for
    thousands of texts. Vector databases do the same job at scale with approximate indexes (HNSW,
    IVF) that skip most vectors. ``embed_fn`` (a list of texts -> their vectors) replaces the server;
    without it the index calls :func:`embed` with its ``model`` and ``server``.
    """

    def __init__(self, model: str | None = None, server: str | None = None,
                 embed_fn: Callable[[list[str]], ArrayLike] | None = None):
        # The model is fixed now: vectors from two models cannot be compared, so every add and
        # every query must use the same one even if $LLM_EMBED_MODEL changes meanwhile.
        self.model = model or default_embed_model()
        self.server = server
        self.embed_fn = embed_fn or functools.partial(embed, model=self.model, server=self.server)
        self.texts: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self._vectors = np.zeros((0, 0))  # one row per text, scaled to length 1 so that search is a dot product

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: str | Sequence[str], metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Embed ``texts`` and store them, each with its dict of ``metadata`` (e.g. ``{"source": ...}``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        metadata = [{} for _ in texts] if metadata is None else [dict(m) for m in metadata]
        if len(metadata) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadata)} metadata dicts: give one per text")
        if not texts:
            return
        vectors = _unit_rows(self.embed_fn(texts))
        if len(vectors) != len(texts):
            raise ValueError(f"embed_fn gave {len(vectors)} vectors for {len(texts)} texts")
        if len(self):
            _same_length(self._vectors[0], vectors[0])
            vectors = np.vstack([self._vectors, vectors])
        self._vectors = vectors
        self.texts.extend(texts)
        self.metadata.extend(metadata)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` stored texts most similar to ``query``, best first (fewer if the index is smaller)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if not len(self):
            return []  # nothing to compare with, and no need to embed the query
        query_vector = _unit_rows(self.embed_fn([query]))[0]
        _same_length(self._vectors[0], query_vector)
        scores = np.clip(self._vectors @ query_vector, -1.0, 1.0)
        # A stable sort keeps equal scores in the order they were added, so results are reproducible.
        best = np.argsort(-scores, kind="stable")[:k]
        return [Hit(self.texts[i], float(scores[i]), self.metadata[i], int(i)) for i in best]
