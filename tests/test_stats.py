"""Timing fields of a final answer: nanoseconds to seconds, tokens per second; and measuring's errors."""

from __future__ import annotations

import pytest

from llm_experiment import OllamaError
from llm_experiment.embedded import free_port
from llm_experiment.stats import format_summary, measure, rate, summarize, unload

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


def test_summarize_counts_only_uncached_prompt_tokens_in_the_prompt_speed():
    s = summarize({**FINAL, "prompt_eval_count": 110, "prompt_eval_cached_count": 100})
    assert (s["prompt_eval_count"], s["prompt_eval_cached_count"], s["prompt_evaluated"]) == (110, 100, 10)
    assert s["prompt_tokens_per_s"] == pytest.approx(40.0)  # 10 tokens read in 0.25 s


def test_summarize_a_server_that_does_not_say_what_was_cached():
    # Ollama sends no prompt_eval_cached_count: unknown, and the whole prompt counts as read (as `ollama run --verbose`)
    s = summarize({**FINAL, "prompt_eval_count": 110})
    assert (s["prompt_eval_cached_count"], s["prompt_evaluated"]) == (None, 110)
    assert s["prompt_tokens_per_s"] == pytest.approx(440.0)
    assert "(of 110; ? cached)" in format_summary({**FINAL, "prompt_eval_count": 110})


def test_summarize_the_waiting_share():
    # 2.0 s in all: 0.5 loading, 0.25 reading, 1.5 writing; no time left unaccounted here
    assert summarize(FINAL)["wait"] == pytest.approx(0.0, abs=1e-9)
    assert summarize({**FINAL, "total_duration": 3_000_000_000})["wait"] == pytest.approx(0.75)


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


# Failures go through the client's errors: an OllamaError with advice, never a bare requests exception.

def test_measure_an_unknown_model_says_to_pull_it(url):
    with pytest.raises(OllamaError) as err:
        measure("Hi", model="no-such-model", server=url)
    assert err.value.status == 404 and err.value.url == url + "/api/generate"
    assert "not found" in err.value.message and "ollama pull no-such-model" in err.value.advice


def test_unload_an_unknown_model_says_to_pull_it(url):
    with pytest.raises(OllamaError) as err:
        unload("no-such-model", url)
    assert err.value.status == 404 and "ollama pull no-such-model" in err.value.advice


@pytest.mark.parametrize("call", [lambda server: measure("Hi", server=server), lambda server: unload(server=server)],
                         ids=["measure", "unload"])
def test_a_stopped_server_says_to_start_one(call):
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens: the connection is refused
    with pytest.raises(OllamaError) as err:
        call(server)
    assert err.value.status is None and "could not connect" in err.value.message
    assert err.value.url.startswith(server) and "OLLAMA_HOST" in err.value.advice
