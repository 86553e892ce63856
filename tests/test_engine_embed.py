"""Embeddings over a real socket: ``/api/embed``, ``/api/embeddings`` and ``/v1/embeddings`` on all-minilm,
built from its PyPI package on first use, driven by requests and the official ``ollama`` and ``openai`` clients."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ollama
import openai
import pytest
import requests
from support import MODEL, unload_all_but

EMBED_MODEL = "all-minilm"
SKY = json.loads((Path(__file__).parent / "data" / "ollama_all_minilm_sky.json").read_text())


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def post(url: str, path: str, body: dict) -> requests.Response:
    return requests.post(url + path, json=body, timeout=300)


@pytest.fixture(scope="module")
def client(engine) -> Iterator[ollama.Client]:
    c = ollama.Client(host=engine.url, timeout=300)
    c.embed(model=EMBED_MODEL, input="warm up")  # the first use builds all-minilm from PyPI (a few seconds)
    yield c
    unload_all_but(engine.url)  # other tests expect only smollm2 in /api/ps


# /api/embed ---------------------------------------------------------------------------------------


def test_embed_matches_real_ollama(client):
    r = client.embed(model=EMBED_MODEL, input=SKY["input"])
    assert r.model == EMBED_MODEL and len(r.embeddings) == 1 and len(r.embeddings[0]) == 384
    assert cosine(r.embeddings[0], SKY["embedding"]) > 0.999  # Ollama's own test accepts 0.99
    assert abs(np.linalg.norm(r.embeddings[0]) - 1) < 1e-5
    assert r.prompt_eval_count == SKY["prompt_eval_count"] == 8  # [CLS] why is the sky blue ? [SEP]
    assert r.total_duration >= r.load_duration >= 0 and r.total_duration > 0


def test_embed_batch_in_order(client):
    one = client.embed(model=EMBED_MODEL, input="why is the grass green?").embeddings[0]
    r = client.embed(model=EMBED_MODEL, input=[SKY["input"], "why is the grass green?"])
    assert len(r.embeddings) == 2 and r.prompt_eval_count == 16
    assert cosine(r.embeddings[1], one) > 0.9999 and cosine(r.embeddings[0], SKY["embedding"]) > 0.999


def test_many_inputs_in_one_request(client):
    texts = [f"sentence number {i} of the batch" for i in range(200)]
    r = client.embed(model=EMBED_MODEL, input=texts)
    assert len(r.embeddings) == 200
    alone = client.embed(model=EMBED_MODEL, input=texts[137]).embeddings[0]
    assert cosine(r.embeddings[137], alone) > 0.9999  # batching does not mix up or change the vectors


#: (anchor, paraphrase, unrelated): Ollama's integration cases plus a few of our own.
TRIPLES = [
    ("The cat is sleeping on the sofa", "A feline is sleeping on the couch", "Quantum physics is complex"),
    ("I love programming in python", "Coding in python brings me joy", "Pizza is delicious"),
    ("Machine learning is fascinating", "Artificial intelligence is amazing", "I need to buy groceries"),
    ("The quick brown fox jumps over the lazy dog", "A fast brown fox leaps over a sleepy dog",
     "The weather is warm and sunny today"),
    ("A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."),
    ("How do I stream tokens from the model?", "How can I receive the model's output as a stream?",
     "The museum opens at nine on Sundays"),
]


@pytest.mark.parametrize(("anchor", "close", "far"), TRIPLES)
def test_paraphrases_rank_above_unrelated_sentences(client, anchor, close, far):
    a, b, c = client.embed(model=EMBED_MODEL, input=[anchor, close, far]).embeddings
    assert cosine(a, b) > cosine(a, c) + 0.2, (cosine(a, b), cosine(a, c))


def test_semantic_search_finds_the_right_document(client):
    docs = ["Ollama streams its answer as NDJSON: one JSON object per line.",
            "The temperature option makes sampling more or less random.",
            "A Modelfile builds a new model from a base model with a system prompt.",
            "Embeddings turn a text into a vector of numbers that captures its meaning."]
    vectors = np.array(client.embed(model=EMBED_MODEL, input=docs).embeddings)
    queries = {"In what format does Ollama stream its answer?": 0, "How do I make the output less random?": 1,
               "How can I give a model a permanent persona?": 2, "What is a sentence vector?": 3}
    for query, want in queries.items():
        q = np.array(client.embed(model=EMBED_MODEL, input=query).embeddings[0])
        assert int(np.argmax(vectors @ q)) == want, query


def test_truncation_as_ollama(url):
    why = post(url, "/api/embed", {"model": EMBED_MODEL, "input": "why"}).json()["embeddings"][0]
    cut = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"], "options": {"num_ctx": 3}})
    assert cut.status_code == 200 and cosine(cut.json()["embeddings"][0], why) > 0.999
    refused = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"], "truncate": False,
                                       "options": {"num_ctx": 3}})
    assert refused.status_code == 400 and refused.json() == {"error": "the input length exceeds the context length"}
    nothing = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"], "options": {"num_ctx": 1}})
    assert nothing.status_code == 400
    assert nothing.json() == {"error": "input after truncation exceeds maximum context length"}
    long = post(url, "/api/embed", {"model": EMBED_MODEL, "input": "word " * 5000})
    assert long.status_code == 200 and long.json()["prompt_eval_count"] == 512  # cut to the training context
    too_long = post(url, "/api/embed", {"model": EMBED_MODEL, "input": "word " * 5000, "truncate": False})
    assert too_long.status_code == 400


def test_dimensions(url):
    full = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"]}).json()["embeddings"][0]
    r = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"], "dimensions": 8}).json()
    short = r["embeddings"][0]
    assert len(short) == 8 and abs(np.linalg.norm(short) - 1) < 1e-5
    assert np.allclose(short, np.array(full[:8]) / np.linalg.norm(full[:8]), atol=1e-6)
    assert len(post(url, "/api/embed", {"model": EMBED_MODEL, "input": "x", "dimensions": 1000}).json()
               ["embeddings"][0]) == 384  # more than the model has: all of them, as Ollama


def test_empty_inputs(url):
    for given in ("", [], None):
        r = post(url, "/api/embed", {"model": EMBED_MODEL, "input": given})
        assert r.status_code == 200 and r.json() == {"model": EMBED_MODEL, "embeddings": []}
    r = post(url, "/api/embed", {"model": EMBED_MODEL, "input": [""]}).json()
    assert len(r["embeddings"]) == 1 and r["prompt_eval_count"] == 2  # an empty text is [CLS] [SEP]


def test_wire_format_is_gos(url):
    raw = post(url, "/api/embed", {"model": EMBED_MODEL, "input": SKY["input"]})
    assert raw.headers["content-type"] == "application/json; charset=utf-8"
    assert raw.text.startswith('{"model":"all-minilm","embeddings":[[')
    assert re.search(r'\]\],"total_duration":\d+,"load_duration":\d+,"prompt_eval_count":8}$', raw.text)
    numbers = re.findall(r"-?[0-9.]+(?:e[-+]\d+)?", raw.text.split("[[")[1].split("]]")[0])
    assert len(numbers) == 384
    # float32 written as Go does: the shortest digits that read back as the same float32 (at most 9)
    assert all(len(n.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) <= 9 for n in numbers)
    assert not any("e-0" in n or n.endswith(".0") for n in numbers)


def test_bad_requests(url):
    cases = [
        ({"model": EMBED_MODEL, "input": [1, 2]}, 400, "invalid input type"),
        ({"model": EMBED_MODEL, "input": {"text": "x"}}, 400, "invalid input type"),
        ({"model": EMBED_MODEL, "input": ["ok", None]}, 400, "invalid input type"),
        ({"model": "no-such-model", "input": "x"}, 404, 'model "no-such-model" not found, try pulling it first'),
        ({"model": "", "input": "x"}, 404, "model '' not found"),
        ({"model": EMBED_MODEL, "input": "x", "keep_alive": "soon"}, 400, None),
    ]
    for body, status, message in cases:
        r = post(url, "/api/embed", body)
        assert r.status_code == status, (body, r.text)
        if message:
            assert r.json() == {"error": message}
    r = post(url, "/api/embed", {"model": EMBED_MODEL, "input": ["x"] * 2049})
    assert r.status_code == 400 and "at most 2048" in r.json()["error"]
    r = requests.post(url + "/api/embed", data=b'{"model": "all-minilm", "input": ', timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "unexpected EOF"


def test_a_completion_model_does_not_embed(url):
    r = post(url, "/api/embed", {"model": MODEL, "input": "hello"})
    assert r.status_code == 501 and "does not support embeddings" in r.json()["error"]
    loaded = post(url, "/api/embed", {"model": MODEL})  # as Ollama: no input just loads the model
    assert loaded.status_code == 200 and loaded.json() == {"model": MODEL, "embeddings": []}


def test_an_embedding_model_does_not_generate(url):
    r = post(url, "/api/generate", {"model": EMBED_MODEL, "prompt": "hi"})
    assert r.status_code == 400 and r.json() == {"error": '"all-minilm" does not support generate'}
    r = post(url, "/api/chat", {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json() == {"error": '"all-minilm" does not support chat'}
    r = post(url, "/v1/chat/completions", {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == '"all-minilm" does not support chat'


# the legacy /api/embeddings ------------------------------------------------------------------------


def test_legacy_embeddings(client, url):
    r = client.embeddings(model=EMBED_MODEL, prompt=SKY["input"])
    assert len(r.embedding) == 384 and cosine(r.embedding, SKY["embedding"]) > 0.999
    assert abs(np.linalg.norm(r.embedding) - 1) < 1e-5  # current Ollama normalises these too
    raw = post(url, "/api/embeddings", {"model": EMBED_MODEL, "prompt": "hi"}).text
    assert raw.startswith('{"embedding":[') and re.search(r"\d{12,}", raw)  # []float64: all digits of a float32
    assert post(url, "/api/embeddings", {"model": EMBED_MODEL, "prompt": ""}).json() == {"embedding": []}
    r = post(url, "/api/embeddings", {"model": "", "prompt": "x"})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = post(url, "/api/embeddings", {"model": EMBED_MODEL, "prompt": "word " * 5000})
    assert r.status_code == 500 and r.json() == {"error": "the input length exceeds the context length"}
    r = post(url, "/api/embeddings", {"model": MODEL, "prompt": "hello"})
    assert r.status_code == 500 and "does not support embeddings" in r.json()["error"]


# /v1/embeddings with the openai client -------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_embeddings(oai, client):
    r = oai.embeddings.create(model=EMBED_MODEL, input=[SKY["input"], "hello"])  # the client asks for base64
    assert r.object == "list" and r.model == EMBED_MODEL and [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 384 and cosine(r.data[0].embedding, SKY["embedding"]) > 0.999
    native = client.embed(model=EMBED_MODEL, input=[SKY["input"], "hello"])
    assert r.usage.prompt_tokens == r.usage.total_tokens == native.prompt_eval_count
    assert np.allclose(r.data[1].embedding, native.embeddings[1], atol=1e-7)
    floats = oai.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="float", dimensions=16)
    assert len(floats.data[0].embedding) == 16 and abs(np.linalg.norm(floats.data[0].embedding) - 1) < 1e-5


def test_openai_embeddings_wire(url):
    r = post(url, "/v1/embeddings", {"model": EMBED_MODEL, "input": "hello", "encoding_format": "base64"})
    body = r.json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    empty = post(url, "/v1/embeddings", {"model": EMBED_MODEL, "input": ""}).json()
    assert len(empty["data"]) == 1  # Ollama's middleware embeds "" rather than nothing


def test_openai_embedding_errors(oai, url):
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="no-such-model", input="x")
    assert "not found" in info.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        oai.embeddings.create(model=EMBED_MODEL, input=[])
    assert bad.value.body["message"] == "invalid input"
    r = post(url, "/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "encoding_format": "int8"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == ("Invalid value for 'encoding_format' = int8. "
                                            "Supported values: ['float', 'base64'].")
    r = post(url, "/v1/embeddings", {"model": EMBED_MODEL, "input": "x", "dimensions": "8"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# the model itself --------------------------------------------------------------------------------


def test_listed_and_shown_as_an_embedding_model(client):
    listed = {m.model: m for m in client.list().models}
    row = listed["all-minilm:latest"]
    assert row.details.family == "bert" and row.details.quantization_level == "F16"
    assert row.details.parameter_size == "22.57M" and 40e6 < row.size < 50e6
    shown = client.show(EMBED_MODEL)
    assert shown.capabilities == ["embedding"]
    assert shown.modelinfo["bert.pooling_type"] == 1 and shown.modelinfo["bert.embedding_length"] == 384
    assert shown.modelinfo["bert.context_length"] == 512


def test_pulling_another_tag_shares_the_weights(client, engine):
    statuses = [p.status for p in client.pull("all-minilm:22m", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    listed = {m.model: m for m in client.list().models}
    assert listed["all-minilm:22m"].digest == listed["all-minilm:latest"].digest
    assert client.embed(model="all-minilm:22m", input="x").embeddings
    client.delete("all-minilm:22m")
    assert client.embed(model=EMBED_MODEL, input="x").embeddings  # the shared blob is still there
