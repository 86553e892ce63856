"""The model store on its own: which blobs a delete removes, what start-up cleanup sweeps, and threads.

No engine and no real weights: a fake GGUF is a few bytes starting with ``GGUF`` (the store never parses
weights). Expected behaviour follows Ollama's ``Manifest.RemoveLayers`` (manifest/manifest.go) for
delete and ``PruneLayers`` / ``PruneDirectory`` (server/images.go, manifest/paths.go) for start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from llm_experiment.engine.store import Store, StoreError
from llm_experiment.protocol import normalize_name

OLD = 2 * 3600  # seconds: older than the start-up grace period (Ollama's layerPruneGracePeriod, one hour)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(store: Store, data: bytes) -> Path:
    return store.blob_path(digest_of(data))


def upload(store: Store, data: bytes) -> dict[str, object]:
    """What ``POST /api/blobs/<digest>`` does."""
    digest = digest_of(data)
    with store.receiving(digest) as write:
        write(data[:3])
        write(data[3:])
    return {"digest": digest, "size": len(data)}


def create(store: Store, name: str, weights: dict[str, object], system: str = "") -> None:
    store.write_manifest(name, weights, {"family": "test"}, system=system)


def manifest_file(store: Store, name: str) -> Path:
    full = normalize_name(name)
    assert full is not None
    return store._manifest_path(full)


def manifest_digests(store: Store, name: str) -> set[str]:
    data = json.loads(manifest_file(store, name).read_bytes())
    return {layer["digest"] for layer in [data["config"], *data["layers"]]}


def make_old(*paths: Path) -> None:
    then = time.time() - OLD
    for path in paths:
        os.utime(path, (then, then))


def all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.delenv("OLLAMA_NOPRUNE", raising=False)
    return Store(tmp_path / "models")


# delete ------------------------------------------------------------------------------------------


def test_delete_keeps_shared_blobs_and_unrelated_uploads(store: Store) -> None:
    weights = upload(store, b"GGUF shared weights")
    create(store, "a", weights, system="same system")
    create(store, "b", weights, system="same system")
    waiting = upload(store, b"GGUF uploaded, its /api/create not sent yet")
    stray = store.blobs / ("sha256-" + "1" * 64)  # an upload from before a restart: no manifest, no memory of it
    stray.write_bytes(b"GGUF older upload")
    shared = manifest_digests(store, "b")

    removed = Store(store.root).delete("a")  # a fresh Store too: it knows nothing of the pending upload

    assert removed == []  # a and b are made of the same blobs
    assert all(store.blob_path(d).is_file() for d in shared)
    assert store.blob_path(waiting["digest"]).is_file() and stray.is_file()
    assert store.get("a") is None
    b = store.get("b")
    assert b is not None and b.system == "same system"


def test_delete_removes_only_the_models_own_unused_blobs(store: Store) -> None:
    mine, theirs = upload(store, b"GGUF weights of a"), upload(store, b"GGUF weights of b")
    create(store, "a", mine, system="only a says this")
    create(store, "a:other", mine)  # same weights under another tag: they must stay
    create(store, "b", theirs, system="only b says this")
    own = manifest_digests(store, "a") - manifest_digests(store, "a:other")
    others = manifest_digests(store, "a:other") | manifest_digests(store, "b")

    removed = store.delete("a")

    assert set(removed) == own and len(own) == 2  # the system prompt and the config
    assert not any(store.blob_path(d).exists() for d in own)
    assert all(store.blob_path(d).is_file() for d in others)
    store.delete("a:other")
    assert not store.blob_path(mine["digest"]).exists()
    assert not (store.manifests / "registry.ollama.ai" / "library" / "a").exists()  # its empty folder went too
    assert store.get("b") is not None


def test_delete_keeps_a_blob_uploaded_again_for_a_create(store: Store) -> None:
    """Uploading a blob a model already has, then deleting that model, must not lose the upload."""
    weights = upload(store, b"GGUF weights")
    create(store, "a", weights)
    store = Store(store.root)  # restart: nothing pending
    upload(store, b"GGUF weights")  # the client sends it again, for a create
    store.delete("a")
    assert store.blob_path(weights["digest"]).is_file()
    create(store, "b", weights)
    assert store.get("b") is not None
    store.delete("b")  # now named by a manifest, it goes with its last model
    assert not store.blob_path(weights["digest"]).exists()


def test_create_refuses_weights_that_are_gone(store: Store) -> None:
    with pytest.raises(StoreError) as info:
        create(store, "a", {"digest": "sha256:" + "2" * 64, "size": 5})
    assert info.value.status == 400
    assert store.get("a") is None and not store.manifests.exists()


def test_an_unreadable_manifest_stops_blob_deletion(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    create(store, "a", upload(store, b"GGUF weights of a"), system="a")
    create(store, "b", upload(store, b"GGUF weights of b"), system="b")
    own = manifest_digests(store, "a")
    manifest_file(store, "b").write_text("{not json")

    with caplog.at_level(logging.WARNING, logger="llm_experiment.engine"):
        removed = store.delete("a")

    assert removed == [] and store.get("a") is None
    assert all(store.blob_path(d).is_file() for d in own)  # better a leftover than a loss
    assert "cannot be read" in caplog.text


def test_deleting_an_unreadable_manifest_removes_the_name_only(store: Store) -> None:
    weights = upload(store, b"GGUF weights")
    create(store, "a", weights)
    before = {p.name for p in store.blobs.iterdir()}
    manifest_file(store, "a").write_text("[]")
    assert store.delete("a") == []
    assert {p.name for p in store.blobs.iterdir()} == before


# start-up cleanup --------------------------------------------------------------------------------


def test_cleanup_removes_leftovers_orphans_and_empty_folders(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    create(store, "a", upload(store, b"GGUF weights of a"), system="kept")
    used = manifest_digests(store, "a")
    orphan = store.blobs / ("sha256-" + "3" * 64)
    orphan.write_bytes(b"GGUF left by an old delete")
    partial_blob = store.blobs / ".tmp-k1ll3d"
    partial_blob.write_bytes(b"GGUF half")
    partial_manifest = store.manifests / "registry.ollama.ai" / "library" / "a" / ".tmp-x7"
    partial_manifest.write_text("{")
    empty = store.manifests / "registry.ollama.ai" / "library" / "gone"
    empty.mkdir()
    foreign = [store.blobs / "notes.txt", store.blobs / ("sha256-" + "4" * 64 + "-partial"), store.blobs / "SHA256-x"]
    for path in foreign:
        path.write_bytes(b"not ours")
    make_old(*all_files(store.root))

    with caplog.at_level(logging.INFO, logger="llm_experiment.engine"):
        summary = Store(store.root).cleanup()

    assert not orphan.exists() and not partial_blob.exists() and not partial_manifest.exists()
    assert not empty.exists() and store.manifests.is_dir()
    assert all(path.is_file() for path in foreign)  # only sha256-<64 hex> files are blobs
    assert all(store.blob_path(d).is_file() for d in used)
    model = store.get("a")
    assert model is not None and model.system == "kept"
    assert len(summary) == 3 and all(line in caplog.text for line in summary)
    assert "2 unfinished file(s)" in summary[0] and "1 model file(s) no model uses" in summary[1]
    assert Store(store.root).cleanup() == []  # nothing left to do


def test_cleanup_keeps_recent_files(store: Store) -> None:
    """Another engine sharing the folder may still be writing or about to name them (Ollama's grace period)."""
    orphan = store.blobs / ("sha256-" + "5" * 64)
    partial = store.blobs / ".tmp-recent"
    store.blobs.mkdir(parents=True)
    orphan.write_bytes(b"GGUF just uploaded")
    partial.write_bytes(b"GGUF still coming")
    assert store.cleanup() == []
    assert orphan.is_file() and partial.is_file()
    store.cleanup(grace_seconds=0)
    assert not orphan.exists() and not partial.exists()


def test_cleanup_spares_uploads_of_this_process(store: Store) -> None:
    finished = upload(store, b"GGUF uploaded, waiting for its create")
    with store.receiving(digest_of(b"GGUF streaming")) as write:
        write(b"GGUF ")
        (streaming,) = store.blobs.glob(".tmp-*")
        make_old(streaming, store.blob_path(finished["digest"]))
        store.cleanup(grace_seconds=0)
        assert streaming.is_file()
        write(b"streaming")
    assert blob_file(store, b"GGUF streaming").is_file()
    assert store.blob_path(finished["digest"]).is_file()
    assert list(store.blobs.glob(".tmp-*")) == []


@pytest.mark.parametrize(("value", "kept"), [("1", True), ("true", True), ("yes", True), ('"1"', True),
                                             ("0", False), ("false", False), ("", False)])
def test_noprune_keeps_orphans(store: Store, monkeypatch: pytest.MonkeyPatch, value: str, kept: bool) -> None:
    """OLLAMA_NOPRUNE is read as Ollama's envconfig.Bool reads it; leftovers of killed writes go regardless."""
    monkeypatch.setenv("OLLAMA_NOPRUNE", value)
    store.blobs.mkdir(parents=True)
    orphan, partial = store.blobs / ("sha256-" + "6" * 64), store.blobs / ".tmp-old"
    orphan.write_bytes(b"GGUF unused")
    partial.write_bytes(b"GGUF half")
    make_old(orphan, partial)
    summary = store.cleanup()
    assert orphan.exists() == kept and not partial.exists()
    assert ("OLLAMA_NOPRUNE is set" in summary[-1]) == kept


def test_cleanup_with_an_unreadable_manifest_keeps_orphans(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    create(store, "a", upload(store, b"GGUF weights"))
    manifest_file(store, "a").write_text("{not json")
    make_old(*all_files(store.blobs))
    with caplog.at_level(logging.INFO, logger="llm_experiment.engine"):
        summary = Store(store.root).cleanup()
    assert len(list(store.blobs.iterdir())) == 2  # the weights and the config
    assert "cannot be read" in summary[0] and "WARNING" in caplog.text


# threads -----------------------------------------------------------------------------------------


def test_an_upload_in_progress_does_not_block_the_store(store: Store) -> None:
    create(store, "a", upload(store, b"GGUF weights"))
    with store.receiving(digest_of(b"GGUF slow upload")) as write:
        write(b"GGUF slow")
        other = threading.Thread(target=lambda: (store.delete("a"), create(store, "b", upload(store, b"GGUF b"))))
        other.start()
        other.join(timeout=10)
        assert not other.is_alive(), "delete or create waited for the upload"
        write(b" upload")
    assert store.get("a") is None and store.get("b") is not None
    assert blob_file(store, b"GGUF slow upload").is_file()


def test_concurrent_creates_deletes_and_uploads(store: Store) -> None:
    """Creators and deleters share system prompts; an uploader's blobs wait for a create that never comes."""
    weights = upload(store, b"GGUF shared weights")
    create(store, "keep", weights, system="kept by one model throughout")
    errors: list[BaseException] = []
    uploads: list[bytes] = []
    start = threading.Barrier(4)

    def churn(worker: int) -> None:
        try:
            start.wait()
            for i in range(25):
                name = f"m{worker}-{i % 3}"
                create(store, name, weights, system=f"system {i % 2}")  # the same two prompts in every thread
                model = store.get(name)  # no other thread's delete may take blobs this model uses
                assert model is not None and model.system == f"system {i % 2}", name
                store.delete(name)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def uploader() -> None:
        try:
            start.wait()
            for i in range(40):
                data = f"GGUF upload {i}".encode()
                upload(store, data)
                uploads.append(data)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(3)] + [threading.Thread(target=uploader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert [m.name for m in store.all() if not m.bundled] == ["keep:latest"]
    keep = store.get("keep")
    assert keep is not None and keep.system == "kept by one model throughout"
    assert all(blob_file(store, data).is_file() for data in uploads) and len(uploads) == 40
    assert not [p for p in all_files(store.root) if p.name.startswith(".tmp-")]
