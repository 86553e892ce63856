"""Request options and keep_alive, checked and converted as Ollama does (api.Options.FromMap, api.Duration)."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine.options import (
    DurationError,
    InvalidTokenError,
    OptionError,
    bound_num_predict,
    check_context_tokens,
    clamp_num_ctx,
    clamp_num_keep,
    clamp_repeat_last_n,
    clamp_top_k,
    normalize_seed,
    parse_go_duration,
    parse_keep_alive,
    parse_options,
)
from llm_experiment.protocol import OPTION_TYPES


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


# What Go's api.Options no longer has is ignored; float32 and int conversions as FromMap does them.


def test_repeat_penalty_default_is_ollamas_current_one():
    assert parse_options(None).repeat_penalty == 1.0


def test_options_go_no_longer_has_are_ignored():
    opts = parse_options({"mirostat": "x", "penalize_newline": 3, "tfs_z": [], "draft_num_predict": 2.9})
    assert opts.extra == {"draft_num_predict": 2}


@pytest.mark.parametrize("value", [1e30, -1e30, 2**63, 10**400])
def test_out_of_range_integers_become_min_int64_as_go_on_amd64(value):
    assert parse_options({"num_predict": value}).num_predict == -(2**63)


@pytest.mark.parametrize("value, shown", [(1e39, "+Inf"), (-1e300, "-Inf"), (10**400, "+Inf")])
def test_float32_overflow_fails_as_ollama_fails_to_send_it(value, shown):
    with pytest.raises(OptionError) as info:
        parse_options({"temperature": value})
    assert str(info.value) == f"failed to marshal completion request: json: unsupported value: {shown}"


def test_options_must_be_an_object():
    with pytest.raises(OptionError):
        parse_options(["temperature"])  # type: ignore[arg-type]


# keep_alive: Go's time.Duration holds int64 nanoseconds; more is refused instead of wrapping around.


@pytest.mark.parametrize("value", [1e300, 9223372036.854776, 2**63, 10**400, math.inf])
def test_keep_alive_too_long_for_a_go_duration(value):
    with pytest.raises(DurationError, match="is too long: the longest is 2562047h47m16.854775807s"):
        parse_keep_alive(value)


@pytest.mark.parametrize("value", [-1e300, -(10**400), -math.inf, "-99h"])
def test_any_negative_keep_alive_is_forever(value):
    assert parse_keep_alive(value) == math.inf


def test_keep_alive_just_below_the_limit_and_nanosecond_truncation():
    assert parse_keep_alive(9223372036.854774) == pytest.approx(9223372036.854774)
    assert parse_keep_alive(1e-10) == 0.0  # under a nanosecond: Go's Duration is 0
    assert parse_keep_alive(0.0) == 0.0 and parse_keep_alive(0.0) is not None


@pytest.mark.parametrize("text, message", [
    ("99999999999h", 'time: invalid duration "99999999999h"'),
    ("9223372036854775808ns", 'time: invalid duration "9223372036854775808ns"'),
    ("3", 'time: missing unit in duration "3"'),
    ("1d", 'time: unknown unit "d" in duration "1d"'),
    (" 5m", 'time: invalid duration " 5m"'),  # Go does not trim a request's value
    ("5\u5206", 'time: unknown unit "\\xe5\\x88\\x86" in duration "5\\xe5\\x88\\x86"'),
    (".s", 'time: invalid duration ".s"'),
    ("", 'time: invalid duration ""'),
])
def test_go_duration_errors(text, message):
    with pytest.raises(DurationError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


# From Go's time package tests (parseDurationTests).
@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("-0", 0), ("+0", 0), ("5.s", 5 * 10**9), (".5s", 5 * 10**8), ("1.004s", 1004 * 10**6),
    ("100.00100s", 100001 * 10**6), ("12µs", 12000), ("12μs", 12000), ("10.5s4m", 250500000000),
    ("-2m3.4s", -123400000000), ("1h2m3s4ms5us6ns", 3723004005006), ("39h9m14.425s", 140954425000000),
    ("0.3333333333333333333h", 20 * 60 * 10**9), ("9223372036854775807ns", 2**63 - 1),
    ("9223372036854775.807us", 2**63 - 1), ("9223372036s854ms775us807ns", 2**63 - 1),
    ("-9223372036854775808ns", -(2**63)), ("-9223372036854775.808us", -(2**63)),
    ("0.100000000000000000000h", 6 * 60 * 10**9), ("0.830103483285477580700h", 2988372539827),
])
def test_go_duration_values(text, ns):
    assert parse_go_duration(text) == ns


@pytest.mark.parametrize("value, seconds", [
    ("0", 0.0), (" '0' ", 0.0), ('"5m"', 300.0), ("+5", 5.0), ("-1", math.inf), ("", None), (None, None),
])
def test_ollama_keep_alive_environment(value, seconds):
    assert parse_keep_alive(value, env=True) == seconds  # 0 means unload at once: not None


@pytest.mark.parametrize("value", ["1.5", "abc", "99999999999", "9223372036854775808"])
def test_environment_values_ollama_ignores(value):
    with pytest.raises(DurationError):  # envconfig.KeepAlive falls back to 5m for these
        parse_keep_alive(value, env=True)


# Bounds applied when a request runs.


def test_clamp_num_ctx(caplog):
    assert clamp_num_ctx(2, 8192) == 4
    assert clamp_num_ctx(-(2**63), None) == 4
    assert clamp_num_ctx(4096, 0) == 4096  # no training context known
    assert clamp_num_ctx(1000, 8192, vision=True) == 2048
    with caplog.at_level(logging.WARNING):
        assert clamp_num_ctx(100_000, 8192) == 8192
    assert "requested context size too large for model" in caplog.text


@pytest.mark.parametrize("num_predict, num_ctx, expected", [
    (-1, 2048, 20480), (0, 2048, 20480), (128, 2048, 128), (20480, 2048, 20480), (20481, 2048, 20480),
    (-(2**63), 2048, 20480), (-1, 0, -1),
])
def test_bound_num_predict(num_predict, num_ctx, expected):
    assert bound_num_predict(num_predict, num_ctx) == expected


@pytest.mark.parametrize("value, expected", [(-1, 2048), (0, 0), (64, 64), (10**9, 2048), (2048, 2048)])
def test_clamp_repeat_last_n(value, expected):
    assert clamp_repeat_last_n(value, 2048) == expected


def test_repeat_last_n_below_minus_one():
    with pytest.raises(OptionError, match="^repeat_last_n must be >= -1$"):
        clamp_repeat_last_n(-2, 2048)


@pytest.mark.parametrize("value, expected", [(0, 0), (-5, 0), (40, 40), (10**12, 49152)])
def test_clamp_top_k(value, expected):
    assert clamp_top_k(value, 49152) == expected


@pytest.mark.parametrize("seed, expected", [(-1, None), (2**32 - 1, None), (-2, 2**32 - 2), (2**40 + 7, 7), (42, 42),
                                            (0, 0), (-(2**63), 0)])
def test_normalize_seed(seed, expected):
    assert normalize_seed(seed) == expected


@pytest.mark.parametrize("num_keep, adds_bos, expected", [
    (4, True, 5), (4, False, 4), (-1, True, 101), (-1, False, 100), (10**6, True, 2047), (0, False, 0),
])
def test_clamp_num_keep(num_keep, adds_bos, expected):
    assert clamp_num_keep(num_keep, 100, 2048, adds_bos=adds_bos) == expected


def test_check_context_tokens():
    check_context_tokens([], 10)
    check_context_tokens([0, 9, 5], 10)
    with pytest.raises(InvalidTokenError) as info:
        check_context_tokens([3, -1, 10], 49152)
    assert str(info.value) == "context contains token id -1, outside the model's vocabulary (0..49151)"
    with pytest.raises(InvalidTokenError, match="token id 49152,"):
        check_context_tokens([49152], 49152)


# Property tests: only OptionError / DurationError, whatever JSON comes in.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**80), 2**80) | st.floats() | st.text(max_size=8)
    | st.sampled_from([10**400, -(10**400), 1e308, 2**63, "5m", "-1h", "1.5", "99999999999h"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
option_maps = st.dictionaries(st.sampled_from([*OPTION_TYPES, "draft_num_predict", "x"]), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(given_=option_maps | json_values, defaults=option_maps | st.none())
def test_parse_options_raises_only_option_error(given_, defaults):
    try:
        opts = parse_options(given_, defaults)
    except OptionError as exc:
        assert str(exc)
    else:
        for name in ("top_k", "seed", "num_predict", "repeat_last_n"):
            assert -(2**63) <= getattr(opts, name) < 2**63
        assert all(isinstance(s, str) for s in opts.stop)


@settings(max_examples=300, deadline=None)
@given(value=json_values, env=st.booleans())
def test_parse_keep_alive_raises_only_duration_error(value, env):
    if env and not isinstance(value, str):
        value = None if value is None else str(value)
    try:
        seconds = parse_keep_alive(value, env=env)
    except DurationError as exc:
        assert str(exc)
    else:
        assert seconds is None or seconds == math.inf or 0 <= seconds < 2**63 / 1e9
