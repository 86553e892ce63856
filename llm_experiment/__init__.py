"""LLM Experiment: helpers for talking to a local LLM through Ollama's HTTP API.

The client side (what the notebooks use) lives here; the embedded engine, an Ollama-compatible
server for machines without Ollama, lives in :mod:`llm_experiment.engine`.
"""

from .client import Reply, Stream, chat, generate
from .conversation import Conversation
from .embeddings import (
    DEFAULT_EMBED_MODEL,
    VectorIndex,
    cosine_similarity,
    default_embed_model,
    embed,
    similarity_matrix,
)
from .errors import OllamaError
from .hosts import DEFAULT_MODEL, default_model, server_url
from .ndjson import iter_ndjson

__all__ = [
    "DEFAULT_EMBED_MODEL", "DEFAULT_MODEL", "Conversation", "OllamaError", "Reply", "Stream", "VectorIndex", "chat",
    "cosine_similarity", "default_embed_model", "default_model", "embed", "generate", "iter_ndjson", "server_url",
    "similarity_matrix",
]
