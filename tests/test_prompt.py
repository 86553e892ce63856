"""The prompt the model sees: render() through the Go template, dropping old messages to fit num_ctx."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine.gotemplate import MAX_STEPS, Budget, TemplateError, render_conversation
from llm_experiment.engine.models import SMOLLM2_SYSTEM
from llm_experiment.engine.prompt import CHATML_TEMPLATE, fit_messages, render


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


def chatml(messages: list[dict[str, str]]) -> str:
    return render("", messages)


def test_render_one_user_message():
    assert render("", [msg("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_smollm2_default_system_prompt_renders_as_it_always_has():
    """The bundled model's SYSTEM, put first by completion.chat when a chat has none: pinned byte for byte."""
    assert render("", [msg("system", SMOLLM2_SYSTEM), msg("user", "hi")]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_render_a_conversation_with_a_system_prompt():
    messages = [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4"), msg("user", "3+3?")]
    assert render("", messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_system_messages_are_joined_on_top_and_same_role_neighbours_merged():
    messages = [msg("system", "A"), msg("user", "u1"), msg("user", "u2"), msg("system", "B"), msg("assistant", "a1"),
                msg("user", "u3")]
    assert render("", messages) == (
        "<|im_start|>system\nA\n\nB<|im_end|>\n<|im_start|>user\nu1\n\nu2<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nu3<|im_end|>\n<|im_start|>assistant\n")


def test_render_does_not_change_its_input():
    messages = [msg("user", "u1"), msg("user", "u2")]
    render("", messages)
    assert messages == [msg("user", "u1"), msg("user", "u2")]


def test_tool_results_stay_separate():
    prompt = render("", [msg("user", "weather?"), msg("tool", "Paris: 21C"), msg("tool", "Rome: 25C")])
    assert prompt.count("<tool_response>") == 2


def test_a_model_template_is_used_when_there_is_one():
    assert render("{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}", [msg("user", "hi")]) == "user:hi;"
    with pytest.raises(TemplateError):
        render("{{ .Content.Missing.Field }}", [msg("user", "hi")])


def test_rendering_2000_messages_is_quick():
    messages = [msg("system", "Be brief.")] + [msg("user" if i % 2 == 0 else "assistant", f"Message number {i}. " * 5)
                                               for i in range(2000)]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        render("", messages)
        best = min(best, time.process_time() - started)
    assert best < 0.1  # about 10 ms here


def test_the_longest_chat_a_request_can_hold_renders_within_the_budget():
    """A body holds at most 100,000 keys (state.MAX_KEYS): some 50,000 messages with role and content."""
    messages = [msg("user" if i % 2 == 0 else "assistant", "x") for i in range(50_000)]
    budget = Budget()
    render_conversation(CHATML_TEMPLATE, "", messages, budget=budget)
    assert budget.steps < MAX_STEPS


CHAT = [msg("system", "Be brief."), msg("user", "one two three"), msg("assistant", "four five"),
        msg("user", "six seven eight nine")]


def test_everything_fits():
    assert fit_messages(CHAT, 1000, words) == CHAT


def test_the_latest_message_is_kept_even_when_nothing_fits():
    assert fit_messages(CHAT, 0, words) == [CHAT[0], CHAT[-1]]


def test_oldest_messages_are_dropped_first():
    without_first_turn = [CHAT[0], CHAT[2], CHAT[3]]
    num_ctx = words(chatml(without_first_turn))  # room for exactly these
    assert words(chatml(CHAT)) > num_ctx
    assert fit_messages(CHAT, num_ctx, words) == without_first_turn


def test_fit_uses_the_given_render():
    calls: list[int] = []

    def count(text: str) -> int:
        calls.append(len(text))
        return len(text)

    assert fit_messages(CHAT, 10**6, count, lambda ms: "".join(m["content"] for m in ms)) == CHAT
    assert calls == [len("Be brief.one two threefour fivesix seven eight nine")]  # all fit: one render only


def test_a_window_too_long_to_render_does_not_fit():
    chat = [msg("user" if i % 2 == 0 else "assistant", "") for i in range(1000)]

    def small_budget(messages: list[dict[str, str]]) -> str:
        return render_conversation(CHATML_TEMPLATE, "", messages, budget=Budget(max_steps=1000))

    kept = fit_messages(chat, 10**6, words, small_budget)
    assert 1 < len(kept) < len(chat) and kept[-1] is chat[-1]
    small_budget(kept)
    with pytest.raises(TemplateError, match="too much work"):
        small_budget(chat[-len(kept) - 1:])


roles = st.sampled_from(["system", "user", "assistant", "tool"])
conversations = st.lists(st.builds(msg, roles, st.text("ab ", max_size=12)), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(messages=conversations, num_ctx=st.integers(0, 80))
def test_fit_keeps_the_longest_suffix_that_fits(messages, num_ctx):
    kept = fit_messages(messages, num_ctx, words)

    def window(start: int) -> list[dict[str, str]]:
        """messages[start:] plus the system messages before it."""
        return [m for m in messages[:start] if m["role"] == "system"] + messages[start:]

    def same(a: list, b: list) -> bool:  # the very same message objects, in the same order
        return [id(m) for m in a] == [id(m) for m in b]

    start = next(i for i in range(len(messages)) if same(window(i), kept))  # kept is some window
    assert kept[-1] is messages[-1]
    if not same(kept, window(len(messages) - 1)):  # more than the latest message: it must fit
        assert words(chatml(kept)) <= num_ctx
    if start > 0:  # one more message would not fit
        assert words(chatml(window(start - 1))) > num_ctx
