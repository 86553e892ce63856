"""The embedding helpers without a model: vector arithmetic, the index, request batching, errors, the glossary.

The real embedding model (all-minilm in the embedded engine) is exercised by the engine's own tests;
here the index gets a deterministic bag-of-words stand-in, and ``embed`` talks to a recording fake
server, so that these tests check our code, not a model's opinion of which texts are alike.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from llm_experiment import (
    OllamaError,
    VectorIndex,
    cosine_similarity,
    default_embed_model,
    embed,
    similarity_matrix,
)

GLOSSARY = Path(__file__).resolve().parent.parent / "notebooks" / "data" / "glossary.jsonl"


# --- cosine similarity -------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "expected"), [
    ([1, 0], [0, 1], 0.0),          # perpendicular: unrelated
    ([1, 2, 3], [1, 2, 3], 1.0),    # the same direction
    ([1, 2, 3], [-1, -2, -3], -1.0),  # opposite
    ([1, 1], [1, 0], np.sqrt(0.5)),  # 45 degrees
])
def test_cosine_similarity_of_known_vectors(a, b, expected):
    assert cosine_similarity(a, b) == pytest.approx(expected)


def test_cosine_similarity_ignores_length():
    a, b = np.array([0.3, -1.2, 2.0]), np.array([1.5, 0.1, 0.7])
    assert cosine_similarity(a, 7 * a) == pytest.approx(1.0)
    assert cosine_similarity(3 * a, 0.5 * b) == pytest.approx(cosine_similarity(a, b))


def test_a_zero_vector_is_similar_to_nothing():
    # The documented choice: no direction, so 0 (not an error, not NaN), in both functions.
    assert cosine_similarity([0, 0, 0], [1, 2, 3]) == 0.0
    assert cosine_similarity([0, 0], [0, 0]) == 0.0
    assert similarity_matrix([[0, 0], [1, 0]]).tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_vectors_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same model"):
        cosine_similarity([1, 0, 0], [1, 0])
    with pytest.raises(ValueError, match="same model"):
        similarity_matrix([[1, 0, 0]], [[1, 0]])
    with pytest.raises(ValueError, match="similarity_matrix"):
        cosine_similarity([[1, 0]], [[1, 0]])


def test_similarity_matrix_is_every_pair_of_cosines():
    rng = np.random.default_rng(42)
    a, b = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    matrix = similarity_matrix(a, b)
    assert matrix.shape == (4, 3)
    assert matrix == pytest.approx(np.array([[cosine_similarity(x, y) for y in b] for x in a]))


def test_similarity_matrix_of_one_set_is_symmetric_with_ones_on_the_diagonal():
    vectors = np.random.default_rng(7).normal(size=(5, 8))
    matrix = similarity_matrix(vectors)
    assert matrix == pytest.approx(matrix.T) and np.diag(matrix) == pytest.approx(np.ones(5))


def test_for_unit_vectors_similarity_is_the_dot_product():
    vectors = np.random.default_rng(1).normal(size=(4, 6))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # what Ollama sends
    assert similarity_matrix(unit) == pytest.approx(unit @ unit.T)


def test_similarity_matrix_edge_shapes():
    assert similarity_matrix([], [[1, 0]]).shape == (0, 1)
    with pytest.raises(ValueError, match="list of vectors"):
        similarity_matrix([1, 0])


# --- the vector index, with a stand-in embedder --------------------------------------------------

# A deterministic bag-of-words "embedder": one dimension per word of a small vocabulary, counting
# it. It sees shared words, not meaning, which is enough to check ordering, k and metadata.
VOCABULARY = ["token", "tokens", "stream", "json", "line", "model", "memory", "vector", "similar"]


def bag_of_words(texts: list[str]) -> list[list[float]]:
    rows = []
    for text in texts:
        words = re.findall(r"[a-z]+", text.lower())
        rows.append([float(words.count(w)) for w in VOCABULARY])
    return rows


DOCS = ["NDJSON is one JSON object per line.",
        "Streaming sends the answer piece by piece: a stream of JSON lines.",
        "keep_alive keeps a model in memory.",
        "An embedding is a vector; similar texts have similar vectors."]
SOURCES = [{"source": "glossary/NDJSON"}, {"source": "glossary/streaming"},
           {"source": "glossary/keep_alive"}, {"source": "glossary/embedding"}]


@pytest.fixture
def index() -> VectorIndex:
    index = VectorIndex(embed_fn=bag_of_words)
    index.add(DOCS, metadata=SOURCES)
    return index


def test_search_ranks_by_similarity_and_keeps_metadata(index):
    hits = index.search("which model stays in memory?", k=2)
    assert [h.text for h in hits][0] == DOCS[2]
    assert hits[0].metadata == {"source": "glossary/keep_alive"} and hits[0].index == 2
    assert hits[0].score == pytest.approx(cosine_similarity(bag_of_words([DOCS[2]])[0],
                                                            bag_of_words(["which model stays in memory?"])[0]))
    assert hits[0].score >= hits[1].score


def test_search_returns_all_texts_when_k_is_larger_than_the_index(index):
    hits = index.search("a json stream", k=10)
    assert len(hits) == len(index) == 4
    assert [h.index for h in hits][:2] == [1, 0]  # both words shared (cosine 1.0), then one of two (0.5)
    assert [h.score for h in hits][:2] == pytest.approx([1.0, 0.5])
    assert sorted(h.index for h in hits) == [0, 1, 2, 3]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_equal_scores_keep_the_order_of_adding(index):
    hits = index.search("nothing in the vocabulary", k=4)  # a zero vector: every score is 0
    assert [h.index for h in hits] == [0, 1, 2, 3] and {h.score for h in hits} == {0.0}


def test_an_empty_index_finds_nothing_without_embedding_the_query():
    def no_calls(texts: list[str]) -> list[list[float]]:
        raise AssertionError("an empty index must not embed the query")

    index = VectorIndex(embed_fn=no_calls)
    assert len(index) == 0 and index.search("anything") == []


def test_adding_twice_appends_with_running_indices_and_default_metadata(index):
    index.add("A token is a piece of a word.")
    assert len(index) == 5
    hit = index.search("tokens and token", k=1)[0]
    assert (hit.index, hit.metadata, hit.text) == (4, {}, "A token is a piece of a word.")


def test_add_checks_metadata_and_vector_counts():
    with pytest.raises(ValueError, match="one per text"):
        VectorIndex(embed_fn=bag_of_words).add(["a", "b"], metadata=[{"source": "x"}])
    with pytest.raises(ValueError, match="vectors for"):
        VectorIndex(embed_fn=lambda texts: [[1.0, 0.0]]).add(["a", "b"])
    index = VectorIndex(embed_fn=bag_of_words)
    with pytest.raises(ValueError, match="at least 1"):
        index.search("x", k=0)


def test_metadata_is_copied_on_add():
    metadata = [{"source": "glossary/NDJSON"}]
    index = VectorIndex(embed_fn=bag_of_words)
    index.add(DOCS[:1], metadata=metadata)
    metadata[0]["source"] = "changed afterwards"  # the caller reusing its dicts does not change the index
    assert index.search("json", k=1)[0].metadata == {"source": "glossary/NDJSON"}


def test_the_embed_model_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("LLM_EMBED_MODEL", raising=False)
    assert default_embed_model() == "all-minilm"
    monkeypatch.setenv("LLM_EMBED_MODEL", "nomic-embed-text")
    assert default_embed_model() == "nomic-embed-text"
    assert VectorIndex().model == "nomic-embed-text"  # fixed when the index is made


# --- embed(): batching and errors, against a recording fake server ----------------------------------

# A fake server is acceptable here only because these tests check what embed() sends (how it splits
# the texts into requests) and how it maps error answers; the real /api/embed and the real model
# are tested against the embedded engine.
class FakeOllama(BaseHTTPRequestHandler):
    """Answers /api/embed as Ollama does; each text's "vector" is [its length], so order is visible."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, **body})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if body["model"] == "missing":
            self._send(404, {"error": 'model "missing" not found, try pulling it first'})
        elif body["model"] == "drops-one":
            self._send(200, {"model": body["model"], "embeddings": [[1.0]] * (len(texts) - 1)})
        else:
            self._send(200, {"model": body["model"], "embeddings": [[float(len(t))] for t in texts],
                             "total_duration": 1000, "load_duration": 10, "prompt_eval_count": len(texts)})

    def _send(self, status: int, answer: dict) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def fake() -> Iterator[tuple[str, list[dict]]]:
    """The URL of a fake Ollama and the list of request bodies it received."""
    FakeOllama.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeOllama.requests
    server.shutdown()
    server.server_close()
    thread.join()


def test_embed_sends_at_most_batch_size_texts_per_request_in_order(fake):
    url, received = fake
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    assert embed(texts, model="all-minilm", server=url, batch_size=2) == [[1.0], [2.0], [3.0], [4.0], [5.0]]
    assert [r["input"] for r in received] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    assert {r["path"] for r in received} == {"/api/embed"} and {r["model"] for r in received} == {"all-minilm"}


def test_embed_one_string_gives_one_vector_and_sends_only_what_was_set(fake, monkeypatch):
    url, received = fake
    monkeypatch.delenv("LLM_EMBED_MODEL", raising=False)
    assert embed("hello", server=url) == [[5.0]]
    assert embed("hi", server=url, truncate=False, dimensions=64) == [[2.0]]
    assert received[0] == {"path": "/api/embed", "model": "all-minilm", "input": ["hello"]}
    assert received[1]["truncate"] is False and received[1]["dimensions"] == 64


def test_embed_nothing_sends_nothing(fake):
    url, received = fake
    assert embed([], server=url) == [] and received == []
    with pytest.raises(ValueError, match="batch_size"):
        embed(["a"], server=url, batch_size=0)


def test_an_unknown_embedding_model_is_an_ollama_error_with_advice(fake):
    url, _ = fake
    with pytest.raises(OllamaError) as err:
        embed(["a"], model="missing", server=url)
    e = err.value
    assert e.status == 404 and e.url == url + "/api/embed"
    assert "not found" in e.message and "ollama pull missing" in e.advice


def test_a_wrong_number_of_vectors_is_an_error_not_a_silent_shift(fake):
    url, _ = fake
    with pytest.raises(OllamaError, match="asked for 3 embeddings, got 2"):
        embed(["a", "b", "c"], model="drops-one", server=url)


def test_the_index_embeds_through_its_model_and_server(fake):
    url, received = fake
    index = VectorIndex(model="all-minilm", server=url)
    index.add(["x", "yy"])
    index.search("zzz", k=1)
    assert [r["input"] for r in received] == [["x", "yy"], ["zzz"]]
    assert {r["model"] for r in received} == {"all-minilm"}


# --- the glossary corpus ----------------------------------------------------------------------------

def test_the_glossary_is_json_lines_with_unique_terms():
    lines = GLOSSARY.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert 36 <= len(entries) <= 48
    assert all(set(e) == {"term", "text"} and e["term"].strip() and e["text"].strip() for e in entries)
    terms = [e["term"].lower() for e in entries]
    assert len(set(terms)) == len(terms)
    assert all(len(e["text"]) <= 450 for e in entries)  # short: one to three sentences, retrieved and cited alone
