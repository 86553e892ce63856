"""Names and tables of Ollama's API that the client helpers and the engine both use.

This module imports nothing from :mod:`llm_experiment.engine`, so the client side (a student's
notebook) never loads the server's code: model name rules and the table of ``options``.
"""

from __future__ import annotations

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

# name -> Go type in Ollama's api.Options. Every one is accepted; the embedded engine uses the
# sampling options, num_ctx, num_keep and stop; the others only matter to a GPU or another runner.
OPTION_TYPES: dict[str, str] = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float32",
    "min_p": "float32", "typical_p": "float32", "repeat_last_n": "int", "temperature": "float32",
    "repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
    "stop": "[]string", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int",
    "use_mmap": "bool", "num_thread": "int",
    # deprecated in Ollama, still accepted
    "mirostat": "int", "mirostat_tau": "float32", "mirostat_eta": "float32", "tfs_z": "float32",
    "penalize_newline": "bool", "low_vram": "bool", "f16_kv": "bool", "logits_all": "bool",
    "vocab_only": "bool", "use_mlock": "bool", "numa": "bool",
}


def normalize_name(name: str) -> str | None:
    """``smollm2:135m`` -> ``registry.ollama.ai/library/smollm2:135m``; ``None`` if not a valid name.

    As in Ollama, the tag defaults to ``latest``, the namespace to ``library`` and the host to
    ``registry.ollama.ai``; names are compared without regard to case.
    """
    name = name.strip()
    path, tag = name, "latest"
    if ":" in name.rsplit("/", 1)[-1]:  # a colon in the last part starts the tag; earlier ones are a host's port
        path, tag = name.rsplit(":", 1)
    tag = tag or "latest"
    parts = path.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, parts[0]]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    if len(parts) != 3 or not all(_valid_part(p) for p in [*parts, tag]):
        return None
    return f"{'/'.join(parts)}:{tag}".lower()


def display_name(full: str) -> str:
    """The short form users see: ``registry.ollama.ai/library/x:y`` -> ``x:y``."""
    prefix = f"{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/"
    if full.startswith(prefix):
        return full[len(prefix):]
    if full.startswith(f"{DEFAULT_REGISTRY}/"):
        return full[len(DEFAULT_REGISTRY) + 1:]
    return full


def _valid_part(part: str) -> bool:
    return bool(part) and len(part) <= 80 and part[0].isalnum() and all(c.isalnum() or c in "._-" for c in part)
