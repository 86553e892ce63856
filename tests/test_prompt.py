"""The prompt the model sees: ChatML rendering, collating messages, dropping old ones to fit num_ctx."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine.prompt import collate, fit_messages, render_chatml


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


def test_render_one_user_message():
    assert render_chatml([msg("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_render_a_conversation_with_a_system_prompt():
    messages = [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4"), msg("user", "3+3?")]
    prompt = render_chatml(messages)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_collate_joins_system_messages_and_merges_same_role_neighbours():
    system, turns = collate([msg("system", "A"), msg("user", "u1"), msg("user", "u2"), msg("system", "B"),
                             msg("assistant", "a1")])
    assert system == "A\n\nB"
    assert turns == [msg("user", "u1\n\nu2"), msg("assistant", "a1")]


def test_collate_does_not_change_its_input():
    messages = [msg("user", "u1"), msg("user", "u2")]
    collate(messages)
    assert messages == [msg("user", "u1"), msg("user", "u2")]


def test_tool_results_stay_separate():
    _, turns = collate([msg("user", "weather?"), msg("tool", "Paris: 21C"), msg("tool", "Rome: 25C")])
    assert turns == [msg("user", "weather?"), msg("tool", "Paris: 21C"), msg("tool", "Rome: 25C")]


CHAT = [msg("system", "Be brief."), msg("user", "one two three"), msg("assistant", "four five"),
        msg("user", "six seven eight nine")]


def test_everything_fits():
    assert fit_messages(CHAT, 1000, words) == CHAT


def test_the_latest_message_is_kept_even_when_nothing_fits():
    assert fit_messages(CHAT, 0, words) == [CHAT[0], CHAT[-1]]


def test_oldest_messages_are_dropped_first():
    without_first_turn = [CHAT[0], CHAT[2], CHAT[3]]
    num_ctx = words(render_chatml(without_first_turn))  # room for exactly these
    assert words(render_chatml(CHAT)) > num_ctx
    assert fit_messages(CHAT, num_ctx, words) == without_first_turn


roles = st.sampled_from(["system", "user", "assistant"])
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
        assert words(render_chatml(kept)) <= num_ctx
    if start > 0:  # one more message would not fit
        assert words(render_chatml(window(start - 1))) > num_ctx
