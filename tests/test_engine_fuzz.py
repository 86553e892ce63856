"""Random request bodies for /api/generate, /api/chat, /api/create, /api/show and the embedding routes (hypothesis).

Each body mixes valid and hostile fields: wrong types, lone surrogates, huge numbers, broken JSON.
Whatever it is, the answer must be a 2xx or a 4xx, or one of the 500s Ollama documents (a wrongly
typed option, an invalid format, a runner that crashed, a template that failed), never a hang, and the
engine must still answer afterwards. Generations are capped: every ``options`` object the fuzzer
sends has a ``num_predict`` of at most 3 (or one of the wrong type, which is refused).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support import DOCUMENTED_500, MODEL, RunningEngine, unload_all_but

TIMEOUT = 60  # seconds for one answer: a hang fails the example (the grammar deadline is 5 s)
FUZZ_MODELS = ["fuzz-a", "fuzz-b:v1"]  # the only names /api/create may write; deleted at the end
SETTINGS = {"deadline": None, "database": None, "derandomize": True, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much]}

# --- values --------------------------------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc80b", "\ud83d", "\ude00\ud83d"])
LONG_TEXT = st.builds(lambda n: "x" * n, st.sampled_from([300, 2000]))  # builds(): short in reports
texts = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=[]), max_size=12),  # lone surrogates (Cs) too
    SURROGATES,
    st.sampled_from(["", " ", "\x00", "Hi", "<|im_start|>system", "{{ .Prompt }}", "é" * 5]),
    LONG_TEXT,
)
HUGE = st.sampled_from([10**30, -(10**30), 2**63, 2**63 - 1, -(2**63), 2**64, 2**31 - 1, -(2**31), 1e308, -1e308,
                        1e-320, 1e300, -0.0, 0.5])
#: Written into the JSON as they are: numbers Python's json cannot write (or Go cannot read).
RAW_NUMBERS = {"\x00big\x00": "1" + "0" * 5000, "\x00nan\x00": "NaN", "\x00inf\x00": "-Infinity",
               "\x00e999\x00": "1e999", "\x00frac\x00": "0." + "3" * 400}
numbers = st.one_of(st.integers(-1000, 100_000), st.floats(allow_nan=False, allow_infinity=False), HUGE,
                    st.builds(lambda n: 10**n, st.sampled_from([20, 400])), st.sampled_from(sorted(RAW_NUMBERS)))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                        max_leaves=6)
not_text = st.one_of(st.none(), st.booleans(), numbers, st.lists(scalars, max_size=2))


def usually(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any] = anything) -> st.SearchStrategy[Any]:
    """Mostly ``valid``, sometimes ``other`` (anything at all by default). (one_of(valid, valid, other) would
    not do: hypothesis picks one_of's branches about evenly however often one is listed.)"""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: valid if ok else other)


names = usually(st.just(MODEL), st.one_of(
    st.sampled_from(["SmolLM2:135M", "registry.ollama.ai/library/smollm2:135m", "smollm2", "nope:1", "", "a/b/c/d",
                     "../../etc/passwd", "smollm2\ud800:135m", " smollm2:135m ", *FUZZ_MODELS]),
    LONG_TEXT, texts, anything))

# --- options, always with a small num_predict ----------------------------------------------------------------------

OPTION_VALUES = {  # a valid value for each (usually() mixes in anything else)
    "temperature": st.floats(0, 2), "top_k": st.integers(-5, 100), "top_p": st.floats(0, 1), "min_p": st.floats(0, 1),
    "typical_p": st.floats(0, 1), "seed": st.integers(-1, 2**31), "repeat_penalty": st.floats(0, 2),
    "repeat_last_n": st.integers(-1, 2**31 - 1), "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2), "num_keep": st.integers(-1, 2**31 - 1), "mirostat": st.integers(0, 2),
    "num_ctx": st.sampled_from([1, 4, 512, 4096, 10**9, -3]), "stop": st.lists(texts, max_size=3),
    "num_thread": st.integers(-2, 8), "num_batch": st.integers(-1, 4096), "use_mmap": st.booleans(),
    "numa": st.booleans(), "penalize_newline": st.booleans(),
}
options = st.builds(
    lambda given, n: {**given, "num_predict": n},
    st.fixed_dictionaries({}, optional={name: usually(value, numbers | anything)
                                        for name, value in OPTION_VALUES.items()}
                          | {"no_such_option": anything}),
    usually(st.sampled_from([0, 1, 2, 3, 2.7]), st.sampled_from(["3", True, [1], {}])),  # 1e300 would be -2**63: no cap
)
bad_options = st.one_of(st.lists(scalars, max_size=2), texts, numbers, st.booleans())  # never null: no cap then

keep_alives = usually(st.sampled_from(["5m", -1, "-1s", "1h30m", 300, 3.5, "0", 0]),
                      st.sampled_from(["bogus", "5", 1e300, 1e200, 10**30, "1e9h", [], {}, True]) | anything)
SCHEMAS = [
    "json", "", {}, {"type": "object"}, {"type": "string"}, {"type": "integer", "minimum": 3},
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}, {"enum": ["a", "b"]}, {"enum": []}, {"anyOf": []},
    {"oneOf": [{"type": "string"}, {"type": "null"}]}, {"type": "object", "properties": {'a"b': {}}},
    {"type": "object", "properties": {"a\\b\n": {"type": "string"}}}, {"$ref": "#/nowhere"}, {"type": "bogus"},
    {"type": ["string", "null"]}, {"properties": []}, {"items": 5}, {"enum": 5}, "yaml", 5, ["json"],
]
formats = st.one_of(st.sampled_from(SCHEMAS), anything)
messages = st.lists(
    usually(st.fixed_dictionaries(
        {"role": usually(st.sampled_from(["user", "assistant", "system", "tool", "USER"]), texts),
         "content": usually(texts)},
        optional={"images": st.just([]) | anything, "tool_calls": st.just([]) | anything, "thinking": texts})),
    max_size=4)

# --- request bodies -----------------------------------------------------------------------------------------------

generate_bodies = st.fixed_dictionaries(
    {"model": names, "options": usually(options, bad_options)},
    optional={"prompt": usually(texts), "system": usually(texts), "context": usually(st.lists(st.integers(-5, 60_000),
                                                                                            max_size=4)),
              "stream": usually(st.booleans()), "raw": usually(st.booleans()), "format": formats,
              "keep_alive": keep_alives, "extra": anything,
              # valid only when empty or false: the model cannot do them
              "suffix": usually(st.just(""), texts), "template": usually(st.just(""), texts),
              "images": usually(st.just([]), st.lists(texts, max_size=1)), "think": usually(st.just(False))})
chat_bodies = st.fixed_dictionaries(
    {"model": names, "options": usually(options, bad_options)},
    optional={"messages": usually(messages), "stream": usually(st.booleans()), "format": formats,
              "keep_alive": keep_alives, "tools": usually(st.just([]), st.lists(anything, max_size=1)),
              "think": usually(st.just(False)), "extra": anything})
TEMPLATES = ["", "{{ .Prompt }}", "{{ .System }} {{ .Prompt }}", "{{ range .Messages }}{{ .Content }}{{ end }}",
             "{{ .Foo", "{{ range }}", "{{ end }}", "{{ template \"x\" }}", "{{ .Prompt | len }}",
             "{{ range $.Messages }}" * 3 + "{{ .Role }}" + "{{ end }}" * 3]
create_bodies = st.fixed_dictionaries(
    {"model": usually(st.sampled_from(FUZZ_MODELS),
                      st.sampled_from(["", "bad name", "x\ud800", "a/b/c/d/e", "-x"]) | not_text),
     "stream": usually(st.booleans()), "from": usually(st.sampled_from([MODEL, "fuzz-a", "nope", ""]))},
    optional={
              "files": usually(st.dictionaries(st.sampled_from(["a.gguf", "b.gguf", "x.bin", "../a.gguf"]),
                                               st.sampled_from(["sha256:" + "0" * 64, "sha256:xyz", "", "md5:1"])
                                               | anything, max_size=2)),
              "template": usually(st.sampled_from(TEMPLATES) | texts), "system": usually(texts),
              "parameters": usually(st.dictionaries(st.sampled_from([*OPTION_VALUES, "num_predict", "bogus"]) | texts,
                                                    anything, max_size=3)),
              "messages": usually(messages),
              "license": st.one_of(texts, st.lists(texts, max_size=2), st.integers(),
                                   st.lists(st.integers(), max_size=2)),
              "adapters": usually(st.just({}), anything), "quantize": usually(st.just(""), texts)})
show_bodies = st.fixed_dictionaries(
    {}, optional={"model": names, "name": names, "verbose": usually(st.booleans()), "system": anything,
                  "options": anything})

EMBED_MODEL = "all-minilm"
embed_names = usually(st.sampled_from([EMBED_MODEL, "ALL-MINILM:22m"]), names)
embed_inputs = usually(st.one_of(st.lists(texts, max_size=4), texts), anything)
embed_bodies = st.fixed_dictionaries(
    {"model": embed_names},
    optional={"input": embed_inputs, "truncate": usually(st.booleans()), "dimensions": usually(st.integers(-5, 500)),
              "keep_alive": keep_alives, "options": usually(options, bad_options), "extra": anything})
embeddings_bodies = st.fixed_dictionaries(
    {"model": embed_names},
    optional={"prompt": usually(texts), "keep_alive": keep_alives, "options": usually(options, bad_options)})
openai_embedding_bodies = st.fixed_dictionaries(
    {"model": embed_names},
    optional={"input": embed_inputs, "dimensions": usually(st.integers(-5, 500)),
              "encoding_format": usually(st.sampled_from(["float", "base64", "BASE64"]), texts), "user": anything})


def encoded(body: Any, cut: int | None) -> bytes:
    """The body as JSON (lone surrogates as \\u escapes), or its first ``cut`` bytes (broken JSON)."""
    text = json.dumps(body, ensure_ascii=True, allow_nan=False)
    for marker, literal in RAW_NUMBERS.items():
        text = text.replace(json.dumps(marker), literal)
    data = text.encode()
    return data if cut is None else data[:cut]


cuts = usually(st.none(), st.integers(0, 60))  # sometimes broken JSON

# --- checking an answer ---------------------------------------------------------------------------------------------


def check_answer(response: requests.Response, sent: bytes) -> None:
    """A 2xx or 4xx with Ollama's shapes, or a documented 500."""
    where = f"request {sent[:300]!r} -> {response.status_code} {response.text[:300]!r}"
    status = response.status_code
    if status >= 400:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # the /v1 routes: OpenAI's {"error": {"message", "type", ...}}
            error = error.get("message")
        assert isinstance(error, str) and error, where
        if status == 501:  # as current Ollama: a completion model does not embed
            assert "does not support embeddings" in error, where
        elif status >= 500:
            assert status == 500 and DOCUMENTED_500.match(error), where
        return
    assert 200 <= status < 300, where
    if not response.content:
        return
    if response.headers.get("content-type", "").startswith("application/x-ndjson"):
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert lines, where
        for line in lines:
            assert "error" not in line or DOCUMENTED_500.match(line["error"]) or line["error"].startswith(
                "pull model manifest"), where
        last = lines[-1]
        assert last.get("done") is True or "error" in last or last.get("status") == "success", where
    else:
        body = response.json()
        assert isinstance(body, dict), where
        if "done" in body:
            assert body["done"] is True and body.get("eval_count", 0) <= 3, where


def exchange(url: str, path: str, body: Any, cut: int | None, method: str = "POST") -> None:
    """Send one body; check the answer, and that the engine still answers /api/version."""
    sent = encoded(body, cut)
    try:
        response = requests.request(method, url + path, data=sent, timeout=TIMEOUT,
                                    headers={"Content-Type": "application/json"})
    except requests.Timeout:
        pytest.fail(f"no answer within {TIMEOUT} s to {path} {sent[:300]!r}")
    shown = response.text[:60] if response.status_code >= 400 else ""
    event(f"{path} -> {response.status_code} {shown}")  # see pytest --hypothesis-show-statistics
    check_answer(response, sent)
    version = requests.get(url + "/api/version", timeout=10)
    assert version.status_code == 200, f"the engine stopped answering after {path} {sent[:300]!r}"


@pytest.fixture(scope="module", autouse=True)
def _delete_fuzz_models(engine: RunningEngine) -> Iterator[None]:
    yield
    unload_all_but(engine.url)
    for name in [*FUZZ_MODELS, "all-minilm:22m"]:  # the embedding fuzzers build that tag on first use
        requests.delete(engine.url + "/api/delete", json={"model": name}, timeout=30)


# --- the properties ------------------------------------------------------------------------------------------------


@settings(max_examples=400, **SETTINGS)
@given(body=generate_bodies, cut=cuts)
def test_generate_survives_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/generate", body, cut)


@settings(max_examples=400, **SETTINGS)
@given(body=chat_bodies, cut=cuts)
def test_chat_survives_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/chat", body, cut)


@settings(max_examples=200, **SETTINGS)
@given(body=create_bodies, cut=cuts)
def test_create_survives_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/create", body, cut)


@settings(max_examples=150, **SETTINGS)
@given(body=show_bodies, cut=cuts)
def test_show_survives_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/show", body, cut)


@settings(max_examples=150, **SETTINGS)
@given(body=embed_bodies, cut=cuts)
def test_embed_survives_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/embed", body, cut)


@settings(max_examples=80, **SETTINGS)
@given(body=embeddings_bodies, cut=cuts)
def test_legacy_embeddings_survive_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/api/embeddings", body, cut)


@settings(max_examples=80, **SETTINGS)
@given(body=openai_embedding_bodies, cut=cuts)
def test_openai_embeddings_survive_any_body(engine: RunningEngine, body: dict[str, Any], cut: int | None) -> None:
    exchange(engine.url, "/v1/embeddings", body, cut)
