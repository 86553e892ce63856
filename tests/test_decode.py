"""parse_body: request bodies decoded as Ollama's Go server does, with Go's error texts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine.decode import FIELDS, parse_body
from llm_experiment.engine.wire import APIError


def error_of(raw: bytes, struct: str = "GenerateRequest") -> APIError:
    with pytest.raises(APIError) as info:
        parse_body(raw, struct)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("raw", [b"", b"   \n\t"])
def test_empty_body(raw):
    assert error_of(raw).message == "missing request body"


@pytest.mark.parametrize("raw, struct, message", [
    (b"abc", "GenerateRequest", "invalid character 'a' looking for beginning of value"),
    (b'{"model":', "GenerateRequest", "unexpected EOF"),
    (b'{"prompt": 1}', "GenerateRequest",
     "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"),
    (b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}', "ChatRequest",
     "json: cannot unmarshal array into Go struct field ChatRequest.messages.content of type string"),
    (b'{"options": "x"}', "GenerateRequest",
     "json: cannot unmarshal string into Go struct field GenerateRequest.options of type map[string]interface {}"),
    (b'{"stream": "yes"}', "ChatRequest",
     "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool"),
])
def test_go_error_messages(raw, struct, message):
    assert error_of(raw, struct).message == message


def test_null_body_is_an_empty_request():
    assert parse_body(b"null", "GenerateRequest") == {}


def test_bytes_after_the_first_value_are_ignored():
    assert parse_body(b'{"model": "m"} trailing {garbage', "GenerateRequest") == {"model": "m"}


def test_unknown_fields_are_ignored():
    body = parse_body(b'{"model": "m", "banana": [1, {"x": null}]}', "ChatRequest")
    assert body["model"] == "m"


# Go's texts for syntax errors (encoding/json scanner; quoteChar writes '"' and '\'').
@pytest.mark.parametrize("raw, message", [
    (b'{"model": "smol', "unexpected EOF"),  # a body cut inside a string
    (b"tru", "unexpected EOF"),
    (b'{"model" "m"}', "invalid character '\"' after object key"),
    (b"'m'", "invalid character '\\'' looking for beginning of value"),
    (b"[1 2]", "invalid character '2' after array element"),
    (b'{"model": "a\nb"}', "invalid character '\\n' in string literal"),
    (b'{"model": NaN}', "invalid character 'N' looking for beginning of value"),  # Go has no NaN
])
def test_go_syntax_error_texts(raw, message):
    assert error_of(raw).message == message


def test_keys_match_fields_whatever_their_case():
    assert error_of(b'{"PROMPT": 1}').message == (
        "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string")


@pytest.mark.parametrize("raw", [
    b'{"context": [1' + b"0" * 400 + b"]}",  # an int too large for float()
    b"1" * 5000,  # more digits than Python's int() accepts
    b"[" * 100_000,  # deeper than Python's recursion limit
])
def test_extreme_inputs_are_rejected_cleanly(raw):
    error_of(raw)


# Arbitrary bytes, and real JSON (using the struct's field names) cut anywhere.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from([*FIELDS["ChatRequest"], "role", "content", "x"]), inner, max_size=4),
    max_leaves=12,
)
json_prefixes = st.builds(lambda v, n: json.dumps(v).encode()[:n], json_values, st.integers(0, 300))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=80) | json_prefixes, struct=st.sampled_from(sorted(FIELDS)))
def test_only_api_errors_escape(raw, struct):
    try:
        body = parse_body(raw, struct)
    except APIError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(body, dict)
