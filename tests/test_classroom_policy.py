"""The classroom policy: every route a student may use or not, the overrides, hostile names and bodies."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.classroom.policy import LOAD_OPTIONS, Decision, Policy, PolicySettings
from llm_experiment.classroom.roster import Member
from llm_experiment.protocol import parse_name

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
ALICE = Member("alice", "student", NOW)
TEACHER = Member("teacher", "instructor", NOW)
SETTINGS = PolicySettings(keep_alive="30m", num_ctx=4096, num_predict=1024, max_body_bytes=10_000)
POLICY = Policy(SETTINGS)
CLASS = Policy(PolicySettings(num_ctx=4096, allowed_models=("smollm2:135m", "all-minilm")))
FREE = Policy()  # the defaults: no num_ctx, any model


def check(method: str, path: str, body: Any = None, *, policy: Policy = POLICY, member: Member | None = ALICE
          ) -> Decision:
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    return policy.check(member, method, path, raw)


def refused(decision: Decision, status: int, *words: str) -> None:
    assert (decision.status, decision.allowed) == (status, False), decision
    for word in words:
        assert word in decision.error, decision.error


# who -------------------------------------------------------------------------------------------------

def test_no_member_is_401_and_says_where_the_key_goes() -> None:
    decision = check("GET", "/api/tags", member=None)
    refused(decision, 401, "OLLAMA_API_KEY", "api_key")
    assert decision.payload() == {"error": decision.error}


def test_a_revoked_member_is_401() -> None:
    refused(check("GET", "/api/tags", member=Member("alice", "student", NOW, revoked=NOW)), 401, "revoked")


def test_refusals_on_v1_routes_have_openais_shape() -> None:
    decision = check("POST", "/v1/chat/completions", {"messages": []})
    assert decision.payload() == {"error": {"message": "model is required", "type": "invalid_request_error",
                                            "param": None, "code": None}}
    assert check("GET", "/v1/models", member=None).payload()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/pull", {"model": "llama3"}), ("POST", "/api/push", {"model": "teacher/x"}),
    ("POST", "/api/blobs/sha256:" + "0" * 64, b"GGUF..."), ("POST", "/api/create", {"model": "x", "files": {"a": "b"}}),
    ("DELETE", "/api/delete", {"model": "smollm2:135m"}), ("POST", "/api/generate", {"model": "x", "keep_alive": 0}),
    ("GET", "/admin/whatever", None), ("POST", "/api/generate", b"x" * 20_000),
])
def test_instructors_pass_unchanged(method: str, path: str, body: Any) -> None:
    decision = check(method, path, body, member=TEACHER, policy=CLASS)
    assert decision.allowed and decision.passthrough and decision.body is None and decision.changes == ()


# routes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("HEAD", "/"), ("GET", "/api/version"), ("HEAD", "/api/version"), ("GET", "/api/tags"),
    ("HEAD", "/api/tags"), ("GET", "/api/ps"), ("GET", "/v1/models"), ("GET", "/v1/models/smollm2:135m"),
    ("GET", "/v1/models/alice/mymodel:latest"), ("get", "/api/tags"),
])
def test_students_may_look_around(method: str, path: str) -> None:
    decision = check(method, path, b"ignored")
    assert decision.allowed and decision.body is None and not decision.passthrough


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": "smollm2:135m", "prompt": "Hi"}),
    ("/api/chat", {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}]}),
    ("/api/embed", {"model": "all-minilm", "input": ["a", "b"]}),
    ("/api/embeddings", {"model": "all-minilm", "prompt": "a"}),
    ("/api/show", {"model": "smollm2:135m"}),
    ("/api/show", {"name": "smollm2:135m"}),
    ("/api/create", {"model": "alice/pirate", "from": "smollm2:135m", "system": "Arr."}),
    ("/api/copy", {"source": "smollm2:135m", "destination": "alice/copy"}),
    ("/v1/chat/completions", {"model": "smollm2:135m", "messages": [{"role": "user", "content": "Hi"}]}),
    ("/v1/completions", {"model": "smollm2:135m", "prompt": "Hi"}),
    ("/v1/responses", {"model": "smollm2:135m", "input": "Hi"}),
    ("/v1/embeddings", {"model": "all-minilm", "input": "Hi"}),
])
def test_students_may_use_models(path: str, body: dict[str, Any]) -> None:
    decision = check("POST", path, body, policy=CLASS)
    assert decision.allowed and isinstance(decision.body, dict), decision
    assert decision.body.get("model") == body.get("model", body.get("name"))
    assert "name" not in decision.body  # show's older "name" is forwarded as "model", the field Ollama reads first


def test_students_may_delete_their_own_models() -> None:
    decision = check("DELETE", "/api/delete", {"model": "alice/pirate"})
    assert decision.allowed and decision.body == {"model": "alice/pirate"}


@pytest.mark.parametrize("path, words", [
    ("/api/pull", "pulling models is for the instructor"), ("/api/push", "pushing models is for the instructor"),
    ("/api/blobs/sha256:" + "a" * 64, "uploading model files is for the instructor"),
])
def test_instructor_only_routes_are_403(path: str, words: str) -> None:
    for method in ("POST", "HEAD"):
        refused(check(method, path, {"model": "llama3"}), 403, words, "/api/tags")


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/nothing"), ("POST", "/api/generate/"), ("POST", "//api/generate"), ("GET", "/api/../api/pull"),
    ("GET", "/metrics"), ("POST", "/v1/messages"), ("GET", "/v1/models/"), ("POST", "/API/GENERATE"), ("GET", ""),
])
def test_other_routes_are_404(method: str, path: str) -> None:
    refused(check(method, path, {"model": "smollm2:135m"}), 404, "404 page not found")


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/generate"), ("POST", "/api/tags"), ("DELETE", "/api/create"), ("POST", "/api/delete"),
    ("HEAD", "/api/ps"), ("POST", "/v1/models/smollm2"), ("PUT", "/api/chat"),
])
def test_wrong_methods_are_405(method: str, path: str) -> None:
    refused(check(method, path, {"model": "smollm2:135m"}), 405, "405 method not allowed")


# own namespace --------------------------------------------------------------------------------------

def test_creating_outside_the_own_namespace_says_what_to_name_it() -> None:
    decision = check("POST", "/api/create", {"model": "mymodel", "from": "smollm2:135m"})
    refused(decision, 403)
    assert decision.error == ('students may only create models in their own namespace "alice/...": '
                              'name it "alice/mymodel"')
    refused(check("POST", "/api/create", {"model": "bob/x:v2", "from": "smollm2:135m"}), 403, 'name it "alice/x:v2"')


@pytest.mark.parametrize("name", [
    "smollm2:135m", "library/smollm2:135m", "bob/x", "ALICE/x", "Alice/x", "evil.example/alice/x",
    "registry.ollama.ai/bob/x", "alice", "alice:latest", "alicex/y", "alice-/y",
])
def test_names_outside_the_own_namespace_are_403_for_every_change(name: str) -> None:
    refused(check("POST", "/api/create", {"model": name, "from": "smollm2:135m"}), 403, "create models in")
    refused(check("POST", "/api/copy", {"source": "smollm2:135m", "destination": name}), 403, "copy models into",
            "name the copy")
    refused(check("DELETE", "/api/delete", {"model": name}), 403, "delete models in", "is not yours")


@pytest.mark.parametrize("name", ["alice/x", "alice/x:v1", "registry.ollama.ai/alice/x", "Registry.Ollama.AI/alice/x",
                                  "alice/My-Model.v2:Q4_K_M"])
def test_names_in_the_own_namespace_are_allowed(name: str) -> None:
    assert check("POST", "/api/create", {"model": name, "from": "smollm2:135m"}).allowed
    assert check("POST", "/api/copy", {"source": "smollm2:135m", "destination": name}).allowed
    assert check("DELETE", "/api/delete", {"model": name}).allowed


def test_the_older_name_field_is_checked_too() -> None:
    refused(check("DELETE", "/api/delete", {"name": "smollm2:135m"}), 403, "not yours")
    refused(check("DELETE", "/api/delete", {"model": "", "name": "bob/x"}), 403, "not yours")
    decision = check("DELETE", "/api/delete", {"model": "alice/x", "name": "bob/x"})  # Ollama reads model first
    assert decision.allowed and decision.body == {"model": "alice/x"}  # and only model is forwarded
    refused(check("DELETE", "/api/delete", {}), 400, "model is required")


@pytest.mark.parametrize("body, status, words", [
    ({"model": "alice/x", "from": "smollm2:135m", "files": {"model.gguf": "sha256:" + "0" * 64}}, 403,
     ["uploaded files (a GGUF blob) is for the instructor"]),
    ({"model": "alice/x", "from": "smollm2:135m", "adapters": {"a.gguf": "sha256:1"}}, 403, ["adapter"]),
    ({"model": "alice/x", "from": "smollm2:135m", "quantize": "q4_K_M"}, 403, ["quantizing"]),
    ({"model": "alice/x", "from": "smollm2:135m", "quantization": "q4_K_M"}, 403, ["quantizing"]),
    ({"model": "alice/x", "from": "/models/x.gguf"}, 403, ["file path", "is for the instructor"]),
    ({"model": "alice/x", "from": "./x.gguf"}, 403, ["file path"]),
    ({"model": "alice/x", "from": "../weights"}, 403, ["file path"]),
    ({"model": "alice/x", "from": "~/x"}, 403, ["file path"]),
    ({"model": "alice/x", "from": "C:\\models\\x"}, 403, ["file path"]),
    ({"model": "alice/x", "from": "model.gguf"}, 403, ["file path"]),
    ({"model": "alice/x"}, 400, ['"from" is required']),
    ({"model": "alice/x", "modelfile": "FROM /etc/passwd"}, 400, ["Modelfile as fields"]),
    ({"model": "alice/x", "from": "llama3:70b"}, 403, ["not one of this class's models", "smollm2:135m"]),
    ({"model": "alice/x", "from": "bob/x"}, 403, ["not one of this class's models"]),
    ({"model": "alice/x", "from": 5}, 400, ['"from" must be a model name']),
    ({"model": "alice/x", "from": "smollm2:135m", "parameters": ["num_ctx", 5]}, 400, ["parameters must be"]),
    ({"model": "alice/x", "from": "smollm2:135m", "parameters": {"temperature": "hot"}}, 400,
     ['option "temperature" must be of type float32']),
])
def test_create_refusals(body: dict[str, Any], status: int, words: list[str]) -> None:
    refused(check("POST", "/api/create", body, policy=CLASS), status, *words)


def test_create_from_the_students_own_model_and_its_parameters_pinned() -> None:
    body = {"model": "alice/y", "from": "alice/x", "parameters": {"num_ctx": 32768, "num_thread": 1,
                                                                   "num_predict": -1, "temperature": 0.2}}
    decision = check("POST", "/api/create", body, policy=CLASS)
    assert decision.allowed and decision.body is not None
    assert decision.body["parameters"] == {"num_ctx": 4096, "num_predict": 1024, "temperature": 0.2}
    assert any("num_thread removed" in c for c in decision.changes)
    without_ctx = check("POST", "/api/create", {"model": "alice/y", "from": "alice/x", "parameters": {"top_k": 5}})
    assert without_ctx.body is not None and without_ctx.body["parameters"] == {"top_k": 5}  # only replaced if given
    stripped = check("POST", "/api/create", {"model": "alice/y", "from": "x", "parameters": {"num_ctx": 9}},
                     policy=FREE)
    assert stripped.body is not None and stripped.body["parameters"] == {}


def test_copy_needs_both_names_and_a_usable_source() -> None:
    refused(check("POST", "/api/copy", {"source": "smollm2:135m"}), 400, '"source" and "destination" are required')
    refused(check("POST", "/api/copy", {"source": "bob/secret", "destination": "alice/x"}, policy=CLASS), 403,
            "not one of this class's models")
    assert check("POST", "/api/copy", {"source": "bob/shared", "destination": "alice/x"}, policy=FREE).allowed


# allowed models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/show", "/v1/chat/completions",
                                  "/v1/completions", "/v1/responses", "/v1/embeddings"])
def test_allowed_models_limit_what_students_use(path: str) -> None:
    refused(check("POST", path, {"model": "llama3"}, policy=CLASS), 403, '"llama3" is not one of this class',
            "all-minilm, smollm2:135m", '"alice/..."')
    assert check("POST", path, {"model": "alice/pirate"}, policy=CLASS).allowed
    assert check("POST", path, {"model": "registry.ollama.ai/library/smollm2:135m"}, policy=CLASS).allowed
    assert check("POST", path, {"model": "SmolLM2:135M"}, policy=CLASS).allowed  # Ollama ignores case
    assert check("POST", path, {"model": "all-minilm:latest"}, policy=CLASS).allowed
    assert check("POST", path, {"model": "llama3"}, policy=FREE).allowed


def test_bad_settings_are_refused() -> None:
    for bad in ({"keep_alive": "forever"}, {"num_ctx": 0}, {"num_ctx": 4096.0}, {"num_predict": 0},
                {"max_body_bytes": -1}, {"allowed_models": "smollm2"}, {"allowed_models": ["../x"]}):
        with pytest.raises(ValueError):
            Policy(bad)
    assert Policy({"keep_alive": -1, "allowed_models": ["smollm2:135m"]}).settings.keep_alive == -1


# model names -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, words", [
    ("../x", ['".."']), ("alice/../bob/x", ['".."']), ("alice/x/../../y", ['".."']), ("x..y", ['".."']),
    ("a" * 201, ["longer than 200"]), ("alice/" + "a" * 81, ["names look like"]), ("café", ["names look like"]),
    ("ｍodel", ["names look like"]), ("İstanbul", ["names look like"]), ("alice/x\u0000", ["names look like"]),
    (" smollm2:135m", ["spaces"]), ("smollm2:135m\n", ["spaces"]), ("https://registry.ollama.ai/alice/x", ["scheme"]),
    ("a/b/c/d", ["names look like"]), ("alice\\x", ["names look like"]), ("x:", ["names look like"]),
    ("-x", ["names look like"]), ("alice/x;rm -rf", ["names look like"]),
])
def test_hostile_names_are_400_everywhere(name: str, words: list[str]) -> None:
    refused(check("POST", "/api/generate", {"model": name}), 400, "invalid model name", *words)
    refused(check("POST", "/api/create", {"model": name, "from": "smollm2:135m"}), 400, "invalid model name", *words)
    source = check("POST", "/api/create", {"model": "alice/x", "from": name})
    assert source.status == (403 if name.startswith(".") or "\\" in name else 400), source  # a path is 403
    refused(check("POST", "/api/copy", {"source": name, "destination": "alice/x"}), 400, *words)
    refused(check("POST", "/api/copy", {"source": "smollm2", "destination": name}), 400, *words)
    refused(check("DELETE", "/api/delete", {"model": name}), 400, *words)


def test_hostile_names_in_the_v1_models_path() -> None:
    refused(check("GET", "/v1/models/alice/../../api/pull"), 400, '".."')
    refused(check("GET", "/v1/models/" + "a" * 300), 400, "longer than 200")


def test_a_very_long_name_is_quoted_short() -> None:
    decision = check("POST", "/api/generate", {"model": "x" * 100_000})
    assert len(decision.error) < 300


@pytest.mark.parametrize("model", [5, ["smollm2"], {"name": "x"}, True])
def test_a_model_that_is_not_a_string_is_400(model: Any) -> None:
    refused(check("POST", "/api/generate", {"model": model}), 400, '"model" must be a model name')


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/v1/chat/completions"])
def test_a_missing_model_is_400(path: str) -> None:
    refused(check("POST", path, {"prompt": "hi"}), 400, "model is required")
    refused(check("POST", path, {"model": ""}), 400, "model is required")


# bodies ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, status, words", [
    (b"", 400, ["missing request body"]), (None, 400, ["missing request body"]),
    (b"{", 400, ["not valid JSON"]), (b"\xff\xfe", 400, ["not valid JSON"]), (b"[1, 2]", 400, ["JSON object"]),
    (b'"model"', 400, ["JSON object"]), (b"null", 400, ["missing request body"]),
    (b'{"model": "smollm2", "options": {"temperature": NaN}}', 400, ["NaN is not a JSON number"]),
    (b"[" * 100_000, 413, ["too large"]), (b"[" * 5_000 + b"]" * 5_000, 400, ["not valid JSON"]),
    (b'{"model": "' + b"x" * 10_001 + b'"}', 413, ["10014 bytes", "the class limit is 10000"]),
])
def test_bodies_that_are_not_a_json_object(raw: bytes | None, status: int, words: list[str]) -> None:
    refused(POLICY.check(ALICE, "POST", "/api/generate", raw), status, *words)


@pytest.mark.parametrize("path, body, key", [
    ("/api/generate", {"model": "smollm2", "KEEP_ALIVE": 0}, '"KEEP_ALIVE"'),
    ("/api/generate", {"model": "smollm2", "keep_alive": "30m", "Keep_Alive": 0}, '"Keep_Alive"'),
    ("/api/generate", {"model": "smollm2", "Options": {"num_ctx": 99999}}, '"Options"'),
    ("/api/generate", {"model": "smollm2", "options": {"NUM_CTX": 99999}}, '"NUM_CTX" in options'),
    ("/api/create", {"model": "alice/x", "from": "x", "parameters": {"Num_Ctx": 9}}, '"Num_Ctx" in parameters'),
    ("/api/delete", {"Model": "smollm2", "model": "alice/x"}, '"Model"'),
    ("/v1/chat/completions", {"model": "smollm2", "max_tokens": 5, "MAX_TOKENS": 99999}, '"MAX_TOKENS"'),
    ("/api/generate", {"model": "smollm2", "\u212aeep_alive": 0}, '"\u212aeep_alive"'),  # KELVIN SIGN: Go reads "k"
    ("/v1/completions", {"model": "smollm2", "max_tokenſ": 99999}, '"max_tokenſ"'),  # LONG S: Go reads "s"
])
def test_field_names_go_could_read_as_another_field_are_400(path: str, body: dict[str, Any], key: str) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    refused(check(method, path, body), 400, "field names are lowercase", key)


def test_nested_field_names_are_not_policed() -> None:
    body = {"model": "smollm2", "format": {"type": "object", "properties": {"Name": {"type": "string"}}}}
    assert check("POST", "/api/generate", body).allowed


def test_the_callers_dict_is_not_changed() -> None:
    body = {"model": "smollm2", "keep_alive": 0, "options": {"num_ctx": 99, "num_predict": -1}}
    before = copy.deepcopy(body)
    decision = POLICY.check(ALICE, "POST", "/api/generate", body)
    assert decision.allowed and body == before and decision.body != before


# overrides -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings"])
def test_keep_alive_is_always_the_instructors(path: str) -> None:
    for sent in (0, "0", "0s", -1, "24h", None, "nonsense", {"a": 1}):
        decision = check("POST", path, {"model": "smollm2", "keep_alive": sent})
        assert decision.allowed and decision.body is not None and decision.body["keep_alive"] == "30m"
    decision = check("POST", path, {"model": "smollm2"})
    assert decision.body is not None and decision.body["keep_alive"] == "30m"
    assert not any("keep_alive" in change for change in decision.changes)  # nothing the student asked was changed


def test_a_students_unload_becomes_a_load() -> None:
    decision = check("POST", "/api/generate", {"model": "smollm2:135m", "keep_alive": 0})
    assert decision.body == {"model": "smollm2:135m", "keep_alive": "30m",
                             "options": {"num_ctx": 4096, "num_predict": 1024}}
    assert decision.changes[0] == "keep_alive: the class's \"30m\" instead of 0"


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings"])
def test_num_ctx_is_pinned_so_no_student_reloads_the_model(path: str) -> None:
    for sent in (256, 4096, 131072, None):
        options = {} if sent is None else {"num_ctx": sent}
        decision = check("POST", path, {"model": "smollm2", "options": options})
        assert decision.body is not None and decision.body["options"]["num_ctx"] == 4096
    free = check("POST", path, {"model": "smollm2", "options": {"num_ctx": 256}}, policy=FREE)
    assert free.body is not None and "num_ctx" not in free.body["options"]  # the server's own context
    assert any("num_ctx removed" in c for c in free.changes)


def test_other_load_options_are_removed() -> None:
    options = {name: 1 for name in LOAD_OPTIONS - {"num_ctx", "use_mmap", "low_vram", "f16_kv", "use_mlock", "numa",
                                                  "vocab_only", "logits_all"}}
    options.update(use_mmap=False, numa=True, temperature=0, seed=42)
    decision = check("POST", "/api/chat", {"model": "smollm2", "messages": [], "options": options})
    assert decision.body is not None
    assert decision.body["options"] == {"temperature": 0, "seed": 42, "num_ctx": 4096, "num_predict": 1024}


@pytest.mark.parametrize("given, forwarded", [
    (None, 1024), (-1, 1024), (-2, 1024), (0, 1024), (1, 1), (5.7, 5.7), (1024, 1024), (1025, 1024),
    (10**12, 1024), (1e30, 1024), (-1e30, 1024),
])
def test_num_predict_is_capped(given: Any, forwarded: int) -> None:
    options = {} if given is None else {"num_predict": given}
    decision = check("POST", "/api/generate", {"model": "smollm2", "options": options})
    assert decision.body is not None and decision.body["options"]["num_predict"] == forwarded
    assert ("num_predict" in "".join(decision.changes)) == (given is not None and forwarded != given)


def test_embeddings_get_no_num_predict() -> None:
    decision = check("POST", "/api/embed", {"model": "all-minilm", "input": "x"})
    assert decision.body is not None and "num_predict" not in decision.body["options"]


@pytest.mark.parametrize("options, words", [
    ({"num_predict": "100"}, 'option "num_predict" must be of type integer'),
    ({"stop": "x"}, 'option "stop" must be of type array'),
    ({"temperature": 1e300}, "unsupported value"),
    ("fast", "options must be a JSON object"),
])
def test_bad_options_are_400_with_ollamas_words(options: Any, words: str) -> None:
    refused(check("POST", "/api/generate", {"model": "smollm2", "options": options}), 400, words)


@pytest.mark.parametrize("path, field, others", [
    ("/v1/chat/completions", "max_tokens", ()), ("/v1/chat/completions", "max_completion_tokens", ("max_tokens",)),
    ("/v1/completions", "max_tokens", ()), ("/v1/responses", "max_output_tokens", ()),
])
def test_v1_token_limits_are_capped(path: str, field: str, others: tuple[str, ...]) -> None:
    for sent, forwarded in ((None, 1024), (0, 1024), (-1, 1024), (50, 50), (1024, 1024), (99999, 1024)):
        body = {"model": "smollm2"} if sent is None else {"model": "smollm2", field: sent}
        decision = check("POST", path, body)
        assert decision.body is not None
        for name in (field, *others) if sent is not None else (_first_field(path),):
            assert decision.body[name] == forwarded, (name, sent)
        assert "keep_alive" not in decision.body and "options" not in decision.body  # /v1 has neither
    refused(check("POST", path, {"model": "smollm2", field: 5.5}), 400, f'"{field}" must be an integer')
    refused(check("POST", path, {"model": "smollm2", field: "10"}), 400, "must be an integer")
    refused(check("POST", path, {"model": "smollm2", field: True}), 400, "must be an integer")


def test_chat_completions_with_both_limits_uses_max_tokens_first() -> None:
    decision = check("POST", "/v1/chat/completions", {"model": "smollm2", "max_tokens": 10,
                                                       "max_completion_tokens": 99999})
    assert decision.body is not None and decision.body["max_tokens"] == decision.body["max_completion_tokens"] == 10


def _first_field(path: str) -> str:
    return {"/v1/responses": "max_output_tokens"}.get(path, "max_tokens")


# any body, never an exception --------------------------------------------------------------------------

ROUTES = [("GET", "/"), ("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/generate"), ("POST", "/api/chat"),
          ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("POST", "/api/create"), ("POST", "/api/copy"),
          ("DELETE", "/api/delete"), ("POST", "/api/pull"), ("POST", "/v1/chat/completions"),
          ("POST", "/v1/completions"), ("POST", "/v1/responses"), ("POST", "/v1/embeddings"), ("GET", "/v1/models/x")]
FIELDS = ["model", "name", "from", "files", "adapters", "quantize", "modelfile", "parameters", "source", "destination",
          "options", "keep_alive", "max_tokens", "max_completion_tokens", "max_output_tokens", "prompt", "messages",
          "Model", "KEEP_ALIVE"]
OPTION_NAMES = ["num_ctx", "num_predict", "num_thread", "temperature", "stop", "seed", "use_mmap", "NUM_CTX"]
NAMES = st.sampled_from(["smollm2:135m", "alice/x", "bob/x", "../x", "alice/../bob/x", "ALICE/x", "", "x" * 300,
                         "registry.ollama.ai/alice/x", "café", "/etc/passwd", "all-minilm"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | NAMES
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
BODIES = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), JSON, max_size=8)
NUMBERS = st.integers() | st.floats(allow_nan=False) | st.none()
OPTIONS = st.dictionaries(st.sampled_from(OPTION_NAMES[:-1]), NUMBERS, max_size=5)
# mostly well-formed bodies, so that many are allowed and the clamps are checked on them
PLAUSIBLE = st.fixed_dictionaries({"model": NAMES}, optional={
    "options": OPTIONS, "parameters": OPTIONS, "keep_alive": SCALARS, "from": NAMES, "source": NAMES,
    "destination": NAMES, "max_tokens": NUMBERS, "max_completion_tokens": NUMBERS, "max_output_tokens": NUMBERS,
    "name": NAMES, "prompt": st.text(max_size=10)})


V1_LIMITS = {"/v1/chat/completions": ("max_tokens", "max_completion_tokens"), "/v1/completions": ("max_tokens",),
             "/v1/responses": ("max_output_tokens",)}


@settings(max_examples=400, deadline=None, derandomize=True)  # the same examples each run: CI stays repeatable
@given(route=st.sampled_from(ROUTES), body=BODIES | PLAUSIBLE, policy=st.sampled_from([POLICY, CLASS, FREE]))
def test_any_body_gives_a_decision_and_allowed_ones_are_clamped(route: tuple[str, str], body: dict[str, Any],
                                                                 policy: Policy) -> None:
    method, path = route
    before = copy.deepcopy(body)
    for given_body in (body, json.dumps(body).encode()):
        decision = policy.check(ALICE, method, path, given_body)
        assert isinstance(decision, Decision)
        assert body == before
        if not decision.allowed:
            assert decision.status in (400, 403, 404, 405, 413) and decision.error
            json.dumps(decision.payload())
            continue
        if decision.body is None:
            continue
        json.dumps(decision.body)  # what the gateway forwards is JSON
        forwarded = decision.body
        if path in ("/api/generate", "/api/chat", "/api/embed", "/api/embeddings"):
            assert forwarded["keep_alive"] == policy.settings.keep_alive
            options = forwarded["options"]
            assert not (LOAD_OPTIONS - {"num_ctx"}) & options.keys()
            assert options.get("num_ctx") == policy.settings.num_ctx
            if path in ("/api/generate", "/api/chat"):
                assert 0 < options["num_predict"] <= policy.settings.num_predict
        for name in V1_LIMITS.get(path, ()):  # elsewhere these fields mean nothing to Ollama and pass as sent
            if name in forwarded:
                assert 0 < forwarded[name] <= policy.settings.num_predict
        if path in ("/api/create", "/api/delete", "/api/copy"):
            changed = forwarded["destination" if path == "/api/copy" else "model"]
            assert parse_name(changed)[:2] in (("registry.ollama.ai", "alice"), ("Registry.Ollama.AI", "alice"))
            assert "name" not in forwarded


@settings(max_examples=200, deadline=None, derandomize=True)  # the same examples each run: CI stays repeatable
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=200), method=st.sampled_from(["GET", "POST", "X"]))
def test_any_bytes_give_a_decision(route: tuple[str, str], raw: bytes, method: str) -> None:
    assert isinstance(POLICY.check(ALICE, method, route[1], raw), Decision)
    assert isinstance(POLICY.check(ALICE, route[0], route[1], raw), Decision)


@settings(max_examples=200, deadline=None, derandomize=True)  # the same examples each run: CI stays repeatable
@given(path=st.text(max_size=60), method=st.text(max_size=8))
def test_any_path_gives_a_decision(path: str, method: str) -> None:
    decision = POLICY.check(ALICE, method, path, b"{}")
    assert isinstance(decision, Decision)
    json.dumps(decision.payload())
    decision.error.encode()  # a message the gateway can always send
