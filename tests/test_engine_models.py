"""Model management on the engine: create, show, copy, delete, pull, blobs, and a store that survives."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import ollama
import pytest
import requests
from support import GREEDY, MODEL, engine_running

from llm_experiment.engine.models import bundled_gguf
from llm_experiment.engine.store import Store


def post(url: str, path: str, body: dict, method: str = "POST") -> requests.Response:
    return requests.request(method, url + path, json=body, timeout=120)


def statuses(response: requests.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture
def client(url) -> ollama.Client:
    return ollama.Client(host=url)


def test_create_streams_statuses_and_the_model_is_listed_and_shown(url):
    body = {"model": "teacher", "from": MODEL, "system": "You are a patient teacher.",
            "parameters": {"temperature": 0.2, "stop": ["Student:"], "num_predict": 3},
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, student!"}]}
    lines = statuses(post(url, "/api/create", body))
    assert lines[-2:] == [{"status": "writing manifest"}, {"status": "success"}]
    assert any(s["status"].startswith("creating new layer sha256:") for s in lines)
    assert "teacher:latest" in [m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]]
    shown = post(url, "/api/show", {"model": "teacher"}).json()
    assert shown["system"] == "You are a patient teacher."
    assert shown["details"]["parent_model"] == MODEL
    assert shown["messages"] == body["messages"]
    assert "temperature" in shown["parameters"] and '"Student:"' in shown["parameters"]
    # Ollama quotes a SYSTEM text only when it has newlines or spaces at its ends
    assert "SYSTEM You are a patient teacher.\n" in shown["modelfile"]
    assert "model_info" in shown and shown["capabilities"] == ["completion"]
    post(url, "/api/delete", {"model": "teacher"}, "DELETE")


def test_a_created_models_parameters_are_defaults_that_requests_override(url):
    post(url, "/api/create", {"model": "brief", "from": MODEL, "parameters": {"num_predict": 3, "temperature": 0}})
    by_default = post(url, "/api/generate", {"model": "brief", "prompt": "Tell me a story", "stream": False}).json()
    overridden = post(url, "/api/generate", {"model": "brief", "prompt": "Tell me a story", "stream": False,
                                             "options": {"num_predict": 6}}).json()
    assert (by_default["eval_count"], by_default["done_reason"]) == (3, "length")
    assert overridden["eval_count"] == 6
    post(url, "/api/delete", {"model": "brief"}, "DELETE")


def test_a_created_models_system_and_messages_reach_the_prompt(url):
    options = {**GREEDY, "num_predict": 1}
    base = post(url, "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                   "stream": False, "options": options}).json()
    post(url, "/api/create", {"model": "fewshot", "from": MODEL, "system": "Answer like a pirate. " * 5,
                              "messages": [{"role": "user", "content": "Hello"},
                                           {"role": "assistant", "content": "Ahoy, matey!"}]})
    shaped = post(url, "/api/chat", {"model": "fewshot", "messages": [{"role": "user", "content": "Hi"}],
                                     "stream": False, "options": {**options, "num_ctx": 2048}}).json()
    assert shaped["prompt_eval_count"] > base["prompt_eval_count"] + 20  # system and example turns were read
    post(url, "/api/delete", {"model": "fewshot"}, "DELETE")


def test_copy_and_delete_share_and_keep_blobs(url):
    post(url, "/api/create", {"model": "original", "from": MODEL, "system": "Be kind."})
    assert post(url, "/api/copy", {"source": "original", "destination": "copy"}).status_code == 200
    names = [m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]]
    assert {"original:latest", "copy:latest"} <= set(names)
    assert post(url, "/api/delete", {"model": "original"}, "DELETE").status_code == 200
    reply = post(url, "/api/generate", {"model": "copy", "prompt": "Hi", "stream": False,
                                        "options": {"num_predict": 2}})
    assert reply.status_code == 200  # the copy's blobs were kept
    assert post(url, "/api/show", {"model": "copy"}).json()["system"] == "Be kind."
    assert post(url, "/api/delete", {"model": "copy"}, "DELETE").status_code == 200
    assert post(url, "/api/delete", {"model": "copy"}, "DELETE").status_code == 404


def test_deleting_the_last_user_removes_its_blobs():
    store = Path(os.environ["LLM_EXPERIMENT_TEST_MODELS"])
    url = os.environ["LLM_EXPERIMENT_TEST_ENGINE"]
    post(url, "/api/create", {"model": "lonely", "from": MODEL, "system": "A unique system prompt 8472."})
    system_blobs = [b for b in (store / "blobs").iterdir() if b.read_bytes()[:32] == b"A unique system prompt 8472."]
    assert len(system_blobs) == 1
    post(url, "/api/delete", {"model": "lonely"}, "DELETE")
    assert not system_blobs[0].exists()


MANAGEMENT_ERRORS = [
    ("/api/create", "POST", {"model": "x"}, 400, "neither 'from' or 'files' was specified"),
    ("/api/create", "POST", {"model": "x", "from": "no-such-model", "stream": False}, 500,
     "pull model manifest: file does not exist"),
    ("/api/create", "POST", {"model": "bad name!", "from": MODEL}, 400, "invalid model name"),
    ("/api/create", "POST", {"model": "x", "from": MODEL, "parameters": {"colour": "red"}}, 400,
     "unknown parameter 'colour'"),
    ("/api/create", "POST", {"model": "x", "from": MODEL, "parameters": {"num_predict": "ten"}}, 400,
     'option "num_predict" must be of type integer'),
    ("/api/copy", "POST", {"source": "no-such-model", "destination": "y"}, 404, 'model "no-such-model" not found'),
    ("/api/delete", "DELETE", {"model": "no-such-model"}, 404, "model 'no-such-model' not found"),
]


@pytest.mark.parametrize("path, method, body, status, message", MANAGEMENT_ERRORS,
                         ids=[e[4][:30] for e in MANAGEMENT_ERRORS])
def test_management_errors(url, path, method, body, status, message):
    r = post(url, path, body, method)
    assert (r.status_code, r.json()) == (status, {"error": message})


def test_the_bundled_model_stays_when_its_pulled_copy_is_deleted(url):
    assert post(url, "/api/pull", {"model": MODEL, "stream": False}).json() == {"status": "success"}
    assert post(url, "/api/delete", {"model": MODEL}, "DELETE").status_code == 200  # the copy in the store
    refused = post(url, "/api/delete", {"model": MODEL}, "DELETE")
    assert (refused.status_code, refused.json()) == (
        400, {"error": "smollm2:135m comes with the embedded engine and cannot be deleted"})
    assert MODEL in [m["name"] for m in requests.get(url + "/api/tags", timeout=10).json()["models"]]


def test_the_official_client_manages_models(client):
    assert client.create("pirate", from_=MODEL, system="You are a pirate.", parameters={"temperature": 0}).status \
        == "success"
    assert "SYSTEM You are a pirate.\n" in client.show("pirate").modelfile
    client.copy("pirate", "pirate2")
    assert {"pirate:latest", "pirate2:latest"} <= {m.model for m in client.list().models}
    client.delete("pirate")
    client.delete("pirate2")
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("pirate")
    assert err.value.status_code == 404
    progress = list(client.pull(MODEL, stream=True))
    assert progress[-1].status == "success" and any(p.completed == p.total and p.total for p in progress)


def test_create_from_a_local_gguf_file(client):
    digest = client.create_blob(bundled_gguf())
    assert requests.head(f"{client._client.base_url}/api/blobs/{digest}", timeout=10).status_code == 200
    assert client.create("local-gguf", files={"model.gguf": digest}).status == "success"
    shown = client.show("local-gguf")
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert client.generate("local-gguf", "Hi", options={"num_predict": 2}).eval_count <= 2
    client.delete("local-gguf")


def test_a_blob_whose_content_does_not_match_its_digest_is_refused(url):
    r = requests.post(url + "/api/blobs/sha256:" + "0" * 64, data=b"not that", timeout=10)
    assert r.status_code == 400 and "digest mismatch" in r.json()["error"]


def test_created_models_survive_a_restart(tmp_path):
    with engine_running(tmp_path, "first") as first:
        post(first.url, "/api/create", {"model": "durable", "from": MODEL, "system": "I persist."})
    with engine_running(tmp_path, "second") as second:
        assert post(second.url, "/api/show", {"model": "durable"}).json()["system"] == "I persist."


def test_concurrent_creates_and_deletes_leave_a_consistent_store(url):
    errors: list[str] = []

    def churn(i: int) -> None:
        for round_ in range(3):
            name = f"churn{i % 3}"
            r = post(url, "/api/create", {"model": name, "from": MODEL, "system": f"v{i}-{round_}", "stream": False})
            if r.status_code != 200:
                errors.append(r.text)
            post(url, "/api/delete", {"model": name}, "DELETE")  # may be 404: another thread deleted it

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    store = Store(Path(os.environ["LLM_EXPERIMENT_TEST_MODELS"]))
    manifests = [p for p in store.manifests.rglob("*") if p.is_file()]
    assert all(store.get(str(p.relative_to(store.manifests)).rsplit("/", 1)[0].split("/", 2)[-1] + ":" + p.name)
               for p in manifests)
    used = {layer["digest"] for p in manifests for layer in
            [json.loads(p.read_text())["config"], *json.loads(p.read_text())["layers"]]}
    on_disk = {b.name.replace("-", ":", 1) for b in store.blobs.glob("sha256-*")}
    assert used <= on_disk  # nothing a manifest names is missing
    assert not (on_disk - used)  # and nothing is left that no manifest names
    assert not list(store.root.rglob(".tmp-*"))  # no half-written files
