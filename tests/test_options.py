"""Request options and keep_alive, checked and converted as Ollama does (api.Options.FromMap, api.Duration)."""

from __future__ import annotations

import math

import pytest

from llm_experiment.engine.options import DurationError, OptionError, parse_keep_alive, parse_options


def test_ollama_defaults():
    opts = parse_options(None)
    assert (opts.temperature, opts.top_k, opts.top_p, opts.num_predict, opts.seed, opts.stop) == (
        0.8, 40, 0.9, -1, -1, [])


def test_request_options_override_model_defaults():
    opts = parse_options({"temperature": 0.1}, defaults={"temperature": 0.5, "top_k": 10})
    assert opts.temperature == 0.1  # from the request
    assert opts.top_k == 10  # from the model's PARAMETERs
    assert opts.top_p == 0.9  # from Ollama's defaults


def test_unknown_names_are_ignored():
    assert parse_options({"temprature": "hot", "temperature": 0.2}).temperature == 0.2


def test_null_keeps_the_default():
    assert parse_options({"temperature": None}, defaults={"temperature": 0.5}).temperature == 0.5


def test_numbers_convert_like_go():
    opts = parse_options({"num_predict": 1.7, "seed": -2.9, "temperature": 1})
    assert opts.num_predict == 1 and opts.seed == -2  # int64(f) truncates toward zero
    assert opts.temperature == 1.0 and isinstance(opts.temperature, float)


def test_stop_must_be_a_list_as_in_ollama():
    assert parse_options({"stop": ["a", "b"]}).stop == ["a", "b"]
    with pytest.raises(OptionError, match='^option "stop" must be of type array$'):
        parse_options({"stop": "\n\n"})


@pytest.mark.parametrize("name, value, message", [
    ("num_predict", "x", 'option "num_predict" must be of type integer'),
    ("num_ctx", True, 'option "num_ctx" must be of type integer'),  # a JSON bool is not a number in Go
    ("temperature", "hot", 'option "temperature" must be of type float32'),
    ("top_p", [0.5], 'option "top_p" must be of type float32'),
    ("use_mmap", 1, 'option "use_mmap" must be of type boolean'),
])
def test_wrong_types_get_ollamas_message(name, value, message):
    with pytest.raises(OptionError) as info:
        parse_options({name: value})
    assert str(info.value) == message


# FromMap has two messages for slices: "must be of type array" when the value is not a JSON
# array, "must be of an array of strings" when an element is not a string.
@pytest.mark.parametrize("value, message", [
    (5, 'option "stop" must be of type array'),
    (["a", 1], 'option "stop" must be of an array of strings'),
])
def test_wrong_stop_gets_ollamas_message(value, message):
    with pytest.raises(OptionError) as info:
        parse_options({"stop": value})
    assert str(info.value) == message


@pytest.mark.parametrize("value, seconds", [
    (None, None),  # not given: the server's default applies
    (42, 42.0), (2.5, 2.5), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250ms", 0.25),
    (-1, math.inf), ("-1m", math.inf), ("-1s", math.inf),  # negative: keep the model loaded forever
    (0, 0.0), ("0", 0.0), ("0s", 0.0),  # zero: unload right after the request
])
def test_keep_alive(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["abc", "5 minutes", "1m5", "", True, [1], {"m": 5}])
def test_bad_keep_alive(value):
    with pytest.raises(DurationError):
        parse_keep_alive(value)


def test_a_number_in_a_string_is_seconds_only_in_the_environment():
    with pytest.raises(DurationError, match='^time: missing unit in duration "10"$'):
        parse_keep_alive("10")
    assert parse_keep_alive("10", env=True) == 10.0
    assert parse_keep_alive("-1", env=True) == math.inf


def test_bad_keep_alive_string_gets_gos_message():
    with pytest.raises(DurationError, match='^time: invalid duration "abc"$'):
        parse_keep_alive("abc")


def test_bool_keep_alive_gets_ollamas_message():
    with pytest.raises(DurationError) as info:
        parse_keep_alive(True)
    assert str(info.value) == "Unsupported type: 'bool'"


@pytest.mark.parametrize("value", ["nan", "inf", "infinity"])
def test_keep_alive_float_words_are_not_durations(value):
    with pytest.raises(DurationError):
        parse_keep_alive(value)
