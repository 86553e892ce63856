"""Timing fields of a final answer: nanoseconds to seconds, tokens per second."""

from __future__ import annotations

import pytest

from llm_experiment.stats import format_summary, rate, summarize

# A final object as Ollama sends it (durations in nanoseconds).
FINAL = {
    "model": "smollm2:135m", "done": True, "done_reason": "stop",
    "total_duration": 2_000_000_000, "load_duration": 500_000_000,
    "prompt_eval_count": 10, "prompt_eval_duration": 250_000_000,
    "eval_count": 30, "eval_duration": 1_500_000_000,
}


def test_rate_is_tokens_per_second():
    assert rate(30, 1_500_000_000) == pytest.approx(20.0)
    assert rate(1, 1_000) == pytest.approx(1e6)  # 1 token in a microsecond


@pytest.mark.parametrize("tokens, duration", [(30, 0), (30, None), (0, 1_000), (None, 1_000)])
def test_rate_is_none_when_there_is_nothing_to_divide(tokens, duration):
    assert rate(tokens, duration) is None


def test_summarize():
    s = summarize(FINAL)
    assert (s["total_duration"], s["load_duration"], s["prompt_eval_duration"], s["eval_duration"]) == (
        pytest.approx(2.0), pytest.approx(0.5), pytest.approx(0.25), pytest.approx(1.5))
    assert (s["prompt_eval_count"], s["eval_count"]) == (10, 30)
    assert s["prompt_tokens_per_s"] == pytest.approx(40.0)
    assert s["tokens_per_s"] == pytest.approx(20.0)
    assert s["done_reason"] == "stop"


def test_summarize_a_load_answer_without_metrics():
    # An empty prompt only loads the model: the final object has no counts or durations.
    s = summarize({"model": "smollm2:135m", "response": "", "done": True, "done_reason": "load"})
    assert s["total_duration"] == 0 and s["eval_count"] == 0
    assert s["tokens_per_s"] is None and s["prompt_tokens_per_s"] is None


def test_format_summary():
    text = format_summary(FINAL)
    assert "2.000 s" in text and "done_reason: stop" in text
    assert "40.0 tokens/s" in text and "20.0 tokens/s" in text
    assert len(text.splitlines()) == 4


def test_format_summary_without_metrics_says_n_a():
    text = format_summary({"done": True, "done_reason": "load"})
    assert text.count("n/a") == 2
