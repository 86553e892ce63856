"""parse_body: request bodies decoded as Ollama's Go server does, with Go's error texts."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine.decode import FIELDS, MAX_DEPTH, TOO_DEEP, parse_body
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


# 1. Lone surrogates and invalid UTF-8 become U+FFFD, as Go's decoder does (keys and values, nested).


def test_lone_surrogates_become_replacement_characters():
    body = parse_body(b'{"prompt": "a\\ud800b", "model": "\\udc00\\ud83d\\ude00", "options": {"\\uDBFF": ["\\udfff"]}}',
                      "GenerateRequest")
    assert body["prompt"] == "a\ufffdb"
    assert body["model"] == "\ufffd\U0001F600"  # a valid pair stays one character
    assert body["options"] == {"\ufffd": ["\ufffd"]}


def test_surrogate_in_a_message():
    body = parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "ChatRequest")
    assert body["messages"] == [{"role": "user", "content": "\ufffd"}]


def test_invalid_utf8_bytes_become_one_replacement_each():
    # Go's decodeRune takes each bad byte alone: ED A0 80 (an encoded surrogate) is three of them.
    body = parse_body(b'{"prompt": "a\xed\xa0\x80b\xe2\x82c"}', "GenerateRequest")
    assert body["prompt"] == "a\ufffd\ufffd\ufffdb\ufffd\ufffdc"


def test_no_string_walk_without_surrogate_escapes(monkeypatch):
    import llm_experiment.engine.decode as decode

    def fail(value):
        raise AssertionError("walked a body that has no \\ud8..\\udf escape")

    monkeypatch.setattr(decode, "_scrub", fail)
    assert parse_body(b'{"prompt": "\\u00e9\\n\xc3\xa9"}', "GenerateRequest")["prompt"] == "\xe9\n\xe9"


# 2. Go's int takes only integer literals within int64.


@pytest.mark.parametrize("literal", [b"1.0", b"1e3", b"1E3", b"-0.0", b"9223372036854775808", b"-9223372036854775809",
                                     b"1e400", b"1" + b"0" * 5000])
def test_context_needs_integer_literals(literal):
    message = error_of(b'{"context": [1, ' + literal + b"]}").message
    assert message == ("json: cannot unmarshal number " + literal.decode()
                       + " into Go struct field GenerateRequest.context of type int")


def test_context_integers_at_the_int64_bounds_and_null():
    body = parse_body(b'{"context": [9223372036854775807, -9223372036854775808, null]}', "GenerateRequest")
    assert body["context"] == [2**63 - 1, -(2**63), 0]  # null leaves Go's zero value


@pytest.mark.parametrize("raw, message", [
    (b'{"top_logprobs": 2.5}', "json: cannot unmarshal number 2.5 into Go struct field GenerateRequest.top_logprobs "
                               "of type int"),
    (b'{"context": ["1"]}', "json: cannot unmarshal string into Go struct field GenerateRequest.context of type int"),
    (b'{"context": [true]}', "json: cannot unmarshal bool into Go struct field GenerateRequest.context of type int"),
    (b'{"context": 5}', "json: cannot unmarshal number into Go struct field GenerateRequest.context of type []int"),
])
def test_int_field_messages(raw, message):
    assert error_of(raw).message == message


# 3. CreateRequest: files map[string]string; license any, which the create handler wants as []string.


@pytest.mark.parametrize("raw, message", [
    (b'{"files": {"a.gguf": 5}}', "number into Go struct field CreateRequest.files of type string"),
    (b'{"adapters": {"a": true}}', "bool into Go struct field CreateRequest.adapters of type string"),
    (b'{"files": ["a"]}', "array into Go struct field CreateRequest.files of type map[string]string"),
])
def test_create_digest_maps(raw, message):
    assert error_of(raw, "CreateRequest").message == "json: cannot unmarshal " + message


def test_null_digest_is_the_empty_string():
    assert parse_body(b'{"files": {"a.gguf": null}}', "CreateRequest")["files"] == {"a.gguf": ""}


@pytest.mark.parametrize("license, message", [
    (b"5", "json: cannot unmarshal number into Go value of type []string"),
    (b"true", "json: cannot unmarshal bool into Go value of type []string"),
    (b'{"a": "b"}', "json: cannot unmarshal object into Go value of type []string"),
    (b'["MIT", 5]', "json: cannot unmarshal number into Go value of type string"),
    (b'[["MIT"]]', "json: cannot unmarshal array into Go value of type string"),
])
def test_unusable_license_gets_the_create_handlers_500(license, message):
    with pytest.raises(APIError) as info:
        parse_body(b'{"model": "m", "license": ' + license + b"}", "CreateRequest")
    assert (info.value.status, info.value.message) == (500, message)


@pytest.mark.parametrize("license, expected", [(b'"MIT"', "MIT"), (b'["MIT", null]', ["MIT", ""]), (b"[]", [])])
def test_usable_licenses(license, expected):
    assert parse_body(b'{"license": ' + license + b"}", "CreateRequest")["license"] == expected


# 4. keep_alive is checked while decoding, as api.Duration.UnmarshalJSON does; it stops decoding at once.


@pytest.mark.parametrize("value, message", [
    (b'"99999999999h"', 'time: invalid duration "99999999999h"'),
    (b'"5 minutes"', 'time: unknown unit " minutes" in duration "5 minutes"'),
    (b"true", "Unsupported type: 'bool'"),
    (b"[1]", "Unsupported type: '[]interface {}'"),
    (b"1e400", "json: cannot unmarshal number 1e400 into Go struct field GenerateRequest.keep_alive of type float64"),
])
def test_keep_alive_errors(value, message):
    assert error_of(b'{"model": 5, "keep_alive": ' + value + b"}").message == message  # beats the saved model error


def test_keep_alive_too_long_for_go_is_refused():
    message = error_of(b'{"keep_alive": 1e300}').message
    assert message.startswith("keep_alive 1e+300 is too long")
    assert parse_body(b'{"keep_alive": -1e300}', "GenerateRequest") == {"keep_alive": -1e300}  # forever


# Overflowing float64 anywhere inside an interface{} or map[string]any field.


@pytest.mark.parametrize("raw, message", [
    (b'{"options": {"x": [1, -2e308]}}',
     "json: cannot unmarshal number -2e308 into Go struct field GenerateRequest.options of type float64"),
    (b'{"options": {"x": 1' + b"0" * 400 + b"}}",
     "json: cannot unmarshal number 1" + "0" * 400 + " into Go struct field GenerateRequest.options of type float64"),
])
def test_float64_overflow_in_any(raw, message):
    assert error_of(raw).message == message


def test_numbers_float64_holds_are_kept():
    body = parse_body(b'{"options": {"a": 1e308, "b": 1' + b"0" * 300 + b"}}", "GenerateRequest")
    assert body["options"] == {"a": 1e308, "b": 10**300}


# 6. Nesting: Go's scanner stops at 10000 levels; Python's parser far earlier, which must never crash.


@pytest.mark.parametrize("raw, message", [
    (b"[" * 10001, "invalid character '[' exceeded max depth"),
    (b'{"a":' * 10000 + b"{", "invalid character '{' exceeded max depth"),
    (b"[" * 10000, "unexpected EOF"),
    (b"[" * 3000 + b"1 2", "invalid character '2' after array element"),
    (b"[" * 3000 + b"]" * 3000, "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, TOO_DEEP),
    (b'{"format":' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}", TOO_DEEP),
])
def test_deep_nesting(raw, message):
    assert error_of(raw).message == message


def test_nesting_up_to_the_limit_is_accepted():
    raw = b'{"format":' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert "format" in parse_body(raw, "GenerateRequest")


def test_two_million_keys_in_linear_time():
    raw = b"{" + b",".join(b'"k%d": %d' % (i, i) for i in range(2_000_000)) + b', "model": "m"}'
    started = time.perf_counter()
    body = parse_body(raw, "GenerateRequest")
    assert body["model"] == "m" and len(body) == 2_000_001
    started2 = time.perf_counter()
    assert error_of(raw[:-1] + b', "x": [1,}').message == "invalid character '}' looking for beginning of value"
    assert started2 - started < 30 and time.perf_counter() - started2 < 30  # quadratic would take hours


# More of Go's texts: scanner errors, precedence, null, field names, messages, think, images.


@pytest.mark.parametrize("raw, message", [
    (b"\xc3\xa9", "invalid character '\xc3' looking for beginning of value"),  # the first byte, as a Latin-1 rune
    (b"\x0c{}", "invalid character '\\f' looking for beginning of value"),  # Go's whitespace is only " \t\r\n"
    (b"\x01", "invalid character '\\x01' looking for beginning of value"),
    (b"\xef\xbb\xbf{}", "invalid character '\xef' looking for beginning of value"),  # no BOM skipping
    (b'{"a": -}', "invalid character '}' in numeric literal"),
    (b'{"a": 1.}', "invalid character '}' after decimal point in numeric literal"),
    (b'{"a": 1e+}', "invalid character '}' in exponent of numeric literal"),
    (b'{"a": tx}', "invalid character 'x' in literal true (expecting 'r')"),
    (b'{"a": nul}', "invalid character '}' in literal null (expecting 'l')"),
    (b'"\\q"', "invalid character 'q' in string escape code"),
    (b'"\\u12G4"', "invalid character 'G' in \\u hexadecimal character escape"),
    (b"{,}", "invalid character ',' looking for beginning of object key string"),
    (b'{"a": 1 "b": 2}', "invalid character '\"' after object key:value pair"),
    (b"[1,]", "invalid character ']' looking for beginning of value"),
    (b'{"a": -Infinity}', "invalid character 'I' in numeric literal"),
    (b'{"a": [1, 2' + b", 3" * 100_000, "unexpected EOF"),
    (b"01", "json: cannot unmarshal number into Go value of type api.GenerateRequest"),  # Go reads the 0 alone
    (b'"x"', "json: cannot unmarshal string into Go value of type api.GenerateRequest"),
])
def test_more_go_texts(raw, message):
    assert error_of(raw).message == message


def test_the_first_saved_error_wins():
    assert error_of(b'{"model": 5, "stream": "x"}', "ChatRequest").message == (
        "json: cannot unmarshal number into Go struct field ChatRequest.model of type string")


@pytest.mark.parametrize("raw, message", [
    # Message.UnmarshalJSON decodes an alias type: its first error stops decoding, ahead of saved ones.
    (b'{"model": 5, "messages": [{"content": 1}]}',
     "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string"),
    (b'{"messages": [5]}', "json: cannot unmarshal number into Go struct field ChatRequest.messages of type api.Alias"),
    (b'{"messages": {"role": "user"}}',
     "json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message"),
    (b'{"messages": [{"images": [5]}]}',
     "json: cannot unmarshal number into Go struct field ChatRequest.messages.images of type api.ImageData"),
    (b'{"tools": [5]}', "json: cannot unmarshal number into Go struct field ChatRequest.tools of type api.Tool"),
    (b'{"think": "x\\n"}', 'invalid think value: "x\\n" (must be "high", "medium", "low", "max", true, or false)'),
    (b'{"think": 1}', 'think must be a boolean or string ("high", "medium", "low", "max", true, or false)'),
])
def test_chat_messages(raw, message):
    assert error_of(raw, "ChatRequest").message == message


def test_messages_are_normalised_as_go_decodes_them():
    body = parse_body(b'{"messages": [null, {"ROLE": "User", "Content": "hi"}], "think": "high"}', "ChatRequest")
    assert body["messages"] == [{}, {"role": "user", "content": "hi"}]  # Message.UnmarshalJSON lower-cases the role
    assert body["think"] == "high"


def test_null_fields_are_left_out_and_keep_primitives():
    body = parse_body(b'{"prompt": "a", "PROMPT": null, "stream": null, "options": {}, "Options": null}',
                      "GenerateRequest")
    assert body == {"prompt": "a"}


def test_go_case_folding_of_keys():
    # Go folds K (Kelvin sign) to K and the long s to S; Python's lower() alone would miss the second.
    body = parse_body('{"\u212aeep_alive": "5m", "\u017ftream": false}'.encode(), "GenerateRequest")
    assert body == {"keep_alive": "5m", "stream": False}
    assert parse_body('{"me\u00dfages": 1}'.encode(), "ChatRequest") == {"me\u00dfages": 1}  # ß is not "ss" in Go


def test_images_as_byte_arrays_become_base64():
    assert parse_body(b'{"images": [[1, 2, 3], null, "abc"]}', "GenerateRequest")["images"] == ["AQID", "", "abc"]
    assert error_of(b'{"images": [[256]]}').message == (
        "json: cannot unmarshal number 256 into Go struct field GenerateRequest.images of type uint8")


# Property tests: whatever the body, only APIError; results hold only valid Unicode.

surrogates = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
any_text = st.text(st.characters() | surrogates, max_size=6)
all_keys = sorted({key for spec in FIELDS.values() for key in spec} | {"role", "content", "images", "x", "\ud800"})
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | st.floats() | any_text
           | st.sampled_from(["5m", "-1", "high", 1e308, 2**63, -(2**63) - 1, 0.5]))
any_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(all_keys) | any_text, inner, max_size=5),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(all_keys), any_values, max_size=6)


def _strings(value):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


@settings(max_examples=300, deadline=None)
@given(body=bodies | any_values, struct=st.sampled_from(sorted(FIELDS)), ascii_only=st.booleans())
def test_only_api_errors_for_any_json_value(body, struct, ascii_only):
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        result = parse_body(raw, struct)
    except APIError as exc:
        assert exc.message and exc.status in ((400, 500) if struct == "CreateRequest" else (400,))
    else:
        assert isinstance(result, dict)
        for text in _strings(result):
            text.encode("utf-8")  # no lone surrogate left


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(0, 11_000), opener=st.sampled_from([b"[", b'{"a":', b'{"messages":[']),
       closed=st.booleans(), struct=st.sampled_from(sorted(FIELDS)))
def test_any_nesting_gives_an_api_error_or_a_body(depth, opener, closed, struct):
    closer = {b"[": b"]", b'{"a":': b"}", b'{"messages":[': b"]}"}[opener]
    raw = opener * depth + (b"1" + closer * depth if closed else b"")
    try:
        assert isinstance(parse_body(raw, struct), dict)
    except APIError as exc:
        assert exc.status == 400 and exc.message
