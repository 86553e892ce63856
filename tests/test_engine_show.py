"""``/api/show``, ``/api/tags`` and model names over a real socket, checked against Ollama's source.

Ollama facts: ``GetModelInfo`` and ``getModelData`` (server/routes.go), ``ShowResponse`` and
``ListModelResponse`` (api/types.go), ``Model.String`` (server/images.go), ``Command.String`` and
``quote`` (parser/parser.go), ``buildModelListSummary`` (server/model_list_cache.go), names in
types/model/name.go and ``getExistingName`` (server/routes.go).
"""

from __future__ import annotations

import json
import math

import ollama
import pytest
import requests
from support import MODEL

from llm_experiment.engine.models import SMOLLM2_SYSTEM
from llm_experiment.engine.prompt import CHATML_TEMPLATE

PARAMETER_COUNT = 134_515_008  # the sum of SmolLM2-135M's tensor sizes, as Ollama computes it
VOCABULARY = 49_152


def post(url: str, path: str, body: dict, method: str = "POST") -> requests.Response:
    return requests.request(method, url + path, json=body, timeout=120)


def keys_in_order(response: requests.Response) -> list[str]:
    """The top-level keys as they appear in the bytes (``json`` keeps the order of the text)."""
    return list(json.loads(response.content))


def tags(url: str) -> list[dict]:
    return requests.get(url + "/api/tags", timeout=30).json()["models"]


def quoted(text: str) -> str:
    """Ollama's parser.quote, written out again for the test."""
    if "\n" in text or text[:1] == " " or text[-1:] == " ":
        return '"""' + text + '"""' if '"' in text else '"' + text + '"'
    return text


@pytest.fixture
def created(url):
    """Create models for a test; delete them afterwards, whatever happened."""
    names: list[str] = []

    def create(name: str, **body) -> requests.Response:
        r = post(url, "/api/create", {"model": name, "from": MODEL, "stream": False, **body})
        if r.status_code == 200:
            names.append(name)
        return r

    yield create
    for name in names:
        post(url, "/api/delete", {"model": name}, "DELETE")


# --- /api/show ------------------------------------------------------------------------------------


def test_show_fields_are_ollamas_in_its_order(url):
    r = post(url, "/api/show", {"model": MODEL})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json; charset=utf-8"
    # ShowResponse's order; parameters and messages are empty for the bundled model, so left out (omitempty)
    assert keys_in_order(r) == ["license", "modelfile", "template", "system", "details", "model_info", "tensors",
                                "capabilities", "modified_at"]
    shown = r.json()
    assert shown["license"] == "Apache-2.0" and shown["system"] == SMOLLM2_SYSTEM
    assert shown["template"] == CHATML_TEMPLATE and shown["capabilities"] == ["completion"]
    assert list(shown["details"]) == ["parent_model", "format", "family", "families", "parameter_size",
                                      "quantization_level"]  # show's details have no context_length
    assert shown["details"]["parameter_size"] == "134.52M" and shown["details"]["quantization_level"] == "Q4_1"


def test_show_lists_the_tensors_with_their_real_shapes(url):
    shown = post(url, "/api/show", {"model": MODEL}).json()
    tensors = shown["tensors"]  # not only with verbose: Ollama fills Tensors for every GGUF model
    assert len(tensors) == 272 and all(list(t) == ["name", "type", "shape"] for t in tensors)
    assert tensors[0] == {"name": "token_embd.weight", "type": "Q8_0", "shape": [576, VOCABULARY]}
    by_name = {t["name"]: t for t in tensors}
    assert by_name["blk.0.ffn_down.weight"] == {"name": "blk.0.ffn_down.weight", "type": "Q4_1", "shape": [1536, 576]}
    assert by_name["output_norm.weight"]["type"] == "F32" and by_name["output_norm.weight"]["shape"] == [576]
    assert {t["type"] for t in tensors} == {"Q8_0", "Q4_1", "F32"}
    assert sum(math.prod(t["shape"]) for t in tensors) == PARAMETER_COUNT


def test_model_info_has_the_parameter_count_and_hides_name_and_chat_template(url):
    info = post(url, "/api/show", {"model": MODEL}).json()["model_info"]
    assert info["general.parameter_count"] == PARAMETER_COUNT
    assert "general.name" not in info and "tokenizer.chat_template" not in info
    assert list(info) == sorted(info)  # a Go map: keys sorted
    assert info["llama.embedding_length"] == 576 and info["tokenizer.ggml.bos_token_id"] == 1


def test_arrays_are_null_unless_verbose(url):
    plain = post(url, "/api/show", {"model": MODEL}).json()["model_info"]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "general.languages"):
        assert key in plain and plain[key] is None  # Ollama's array with values nil marshals as null
    r = post(url, "/api/show", {"model": MODEL, "verbose": True})
    verbose = r.json()["model_info"]
    tokens = verbose["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCABULARY and len(verbose["tokenizer.ggml.token_type"]) == VOCABULARY
    assert tokens[verbose["tokenizer.ggml.bos_token_id"]] == "<|im_start|>"
    assert tokens[verbose["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert len(verbose["tokenizer.ggml.merges"]) == 48_900 and verbose["general.languages"] == ["en"]
    assert b'"\\u003c|im_start|\\u003e"' in r.content  # Go's encoding/json escapes < and >
    assert {k: v for k, v in verbose.items() if not isinstance(v, list)} == \
        {k: v for k, v in plain.items() if v is not None}
    # and the plain answer after a verbose one is plain again (the two are cached apart)
    assert post(url, "/api/show", {"model": MODEL}).json()["model_info"]["tokenizer.ggml.tokens"] is None


def test_show_modelfile_is_ollamas_text(url, created):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy,\nmatey!"}]
    assert created("Pirate", system="You are a pirate.", license="MIT",
                   parameters={"temperature": 0.7, "stop": ["Captain:", " spaced "], "seed": 1234567,
                               "num_ctx": 4096},
                   messages=messages).status_code == 200
    shown = post(url, "/api/show", {"model": "pirate"}).json()
    assert list(shown)[:7] == ["license", "modelfile", "parameters", "template", "system", "details", "messages"]
    assert shown["messages"] == messages and shown["license"] == "Apache-2.0\nMIT"  # the base's license, then ours
    # Model.String: FROM, TEMPLATE, SYSTEM, PARAMETERs (%v of float64), LICENSE, MESSAGEs; quoted only if needed
    lines = shown["modelfile"].split("\n")
    assert lines[:4] == ['# Modelfile generated by "ollama show"',
                         "# To build a new Modelfile based on this, replace FROM with:", "# FROM Pirate:latest", ""]
    assert lines[4].startswith("FROM /") and "sha256-" in lines[4]
    text = "\n".join(lines[5:])
    assert text.startswith(f"TEMPLATE {quoted(CHATML_TEMPLATE)}\nSYSTEM You are a pirate.\n")
    assert ("PARAMETER temperature 0.7\nPARAMETER stop Captain:\nPARAMETER stop \" spaced \"\n"
            "PARAMETER seed 1.234567e+06\nPARAMETER num_ctx 4096\nLICENSE Apache-2.0\nLICENSE MIT\nMESSAGE user Hi\n"
            "MESSAGE assistant \"Ahoy,\nmatey!\"\n") in text
    assert text.endswith("\n") and not text.endswith("\n\n")
    # parameters: %-30s %#v, strings quoted as Go quotes them, numbers as float64
    assert shown["parameters"].split("\n") == [
        f"{'temperature':<30} 0.7", f"{'stop':<30} \"Captain:\"", f"{'stop':<30} \" spaced \"",
        f"{'seed':<30} 1.234567e+06", f"{'num_ctx':<30} 4096"]


def test_show_request_system_and_options_change_the_modelfile_only(url):
    shown = post(url, "/api/show", {"model": MODEL, "system": "Be brief.", "options": {"top_k": 5}}).json()
    assert shown["system"] == "Be brief."
    assert "\nSYSTEM Be brief.\n" in shown["modelfile"] and "\nPARAMETER top_k 5\n" in shown["modelfile"]
    assert "parameters" not in shown  # Ollama formats parameters before it merges the request's options


def test_show_unknown_model_names_it_as_parsed(url):
    r = post(url, "/api/show", {"model": "no-such-model"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'no-such-model:latest' not found"})
    r = post(url, "/api/show", {"model": "İstanbul"})
    assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})


def test_the_official_client_reads_show(url):
    shown = ollama.Client(host=url).show(MODEL)
    assert shown.modelinfo is not None and shown.modelinfo["general.parameter_count"] == PARAMETER_COUNT
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities == ["completion"] and shown.modified_at is not None
    assert len(ollama.Client(host=url)._request_raw("POST", "/api/show", json={"model": MODEL, "verbose": True})
               .json()["model_info"]["tokenizer.ggml.tokens"]) == VOCABULARY


# --- /api/tags ------------------------------------------------------------------------------------


def test_tags_have_capabilities_and_context_from_the_gguf(url):
    r = requests.get(url + "/api/tags", timeout=30)
    entry = next(m for m in r.json()["models"] if m["name"] == MODEL)
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert entry["capabilities"] == ["completion"]
    assert list(entry["details"]) == ["parent_model", "format", "family", "families", "parameter_size",
                                      "quantization_level", "context_length", "embedding_length"]
    assert entry["details"]["context_length"] == 8192 and entry["details"]["embedding_length"] == 576
    assert any(m.model == MODEL for m in ollama.Client(host=url).list().models)


# --- load and unload --------------------------------------------------------------------------------


def test_load_and_unload_answers_have_ollamas_fields(url):
    r = post(url, "/api/chat", {"model": MODEL})
    assert keys_in_order(r) == ["model", "created_at", "message", "done", "done_reason"]
    assert r.json()["message"] == {"role": "assistant", "content": ""} and r.json()["done_reason"] == "load"
    r = post(url, "/api/generate", {"model": MODEL, "keep_alive": 0})
    assert keys_in_order(r) == ["model", "created_at", "response", "done", "done_reason"]
    assert (r.json()["response"], r.json()["done"], r.json()["done_reason"]) == ("", True, "unload")
    assert r.json()["created_at"].endswith("Z")  # time.Now().UTC()


# --- names ----------------------------------------------------------------------------------------


def test_non_ascii_names_are_refused_everywhere_as_in_ollama(url, created):
    for name in ("İstanbul", "i̇stanbul", "café:latest", "ns/naïve"):
        r = created(name)
        assert (r.status_code, r.json()) == (400, {"error": "invalid model name"}), name
        r = post(url, "/api/copy", {"source": MODEL, "destination": name})
        assert r.status_code == 400, name
    assert all(m["name"].isascii() for m in tags(url))


def test_names_keep_their_case_and_match_without_it(url, created):
    assert created("İstanbul").status_code == 400
    assert created("Istanbul").status_code == 200
    names = [m["name"] for m in tags(url)]
    assert "Istanbul:latest" in names and "istanbul:latest" not in names
    for spelling in ("Istanbul", "istanbul", "ISTANBUL:LATEST", "registry.ollama.ai/library/istanbul"):
        shown = post(url, "/api/show", {"model": spelling})
        assert shown.status_code == 200, spelling
        assert shown.json()["modelfile"].split("\n")[2] == "# FROM Istanbul:latest"
    # creating it again in another case replaces the same model (getExistingName), it does not add one
    assert created("ISTANBUL", system="Merhaba.").status_code == 200
    assert [m["name"] for m in tags(url)].count("Istanbul:latest") == 1
    assert not any(m["name"].lower() == "istanbul:latest" and m["name"] != "Istanbul:latest" for m in tags(url))
    assert post(url, "/api/show", {"model": "istanbul"}).json()["system"] == "Merhaba."
    # copy and delete find it whatever the case; the copy keeps the case it was given
    assert post(url, "/api/copy", {"source": "istanbul", "destination": "Someone/Istanbul:Old"}).status_code == 200
    assert "Someone/Istanbul:Old" in [m["name"] for m in tags(url)]
    assert post(url, "/api/delete", {"model": "someone/istanbul:old"}, "DELETE").status_code == 200
    assert post(url, "/api/delete", {"model": "ISTANBUL"}, "DELETE").status_code == 200
    assert not any(m["name"].lower().startswith(("istanbul", "someone/")) for m in tags(url))
    r = post(url, "/api/delete", {"model": "Istanbul"}, "DELETE")
    assert r.status_code == 404


def test_every_listed_model_can_be_shown(url, created):
    assert created("Mixed.Case_model-1:Tag.2").status_code == 200
    for entry in tags(url):
        assert post(url, "/api/show", {"model": entry["name"]}).status_code == 200, entry["name"]
