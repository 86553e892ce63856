"""Conversation without a server: history, trimming, saving and loading, and a failed turn."""

from __future__ import annotations

import json

import pytest

from llm_experiment import Conversation, OllamaError
from llm_experiment.conversation import estimate_tokens

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing listens there, the connection is refused


def turn(role: str, n: int) -> dict[str, str]:
    """A message of 40 characters, about 11 estimated tokens."""
    return {"role": role, "content": f"{role} {n}".ljust(40, ".")}


def chat_with(history: list[dict[str, str]], **kwargs) -> Conversation:
    conv = Conversation("Be brief.", model="smollm2:135m", **kwargs)
    conv.history = list(history)
    return conv


HISTORY = [turn("user", 1), turn("assistant", 1), turn("user", 2), turn("assistant", 2)]


def test_messages_start_with_the_system_prompt():
    conv = chat_with(HISTORY[:2])
    assert conv.messages == [{"role": "system", "content": "Be brief."}, *HISTORY[:2]]
    assert Conversation(model="m").messages == []  # no system prompt, nothing sent for it


def test_trim_drops_the_oldest_turns_first():
    system, one = estimate_tokens("Be brief."), estimate_tokens(HISTORY[0]["content"])
    conv = chat_with(HISTORY, budget=system + 2 * one)  # room for two turns
    assert conv.trim() == HISTORY[:2]
    assert conv.history == HISTORY[2:]
    assert conv.tokens() <= conv.budget


def test_trim_keeps_the_system_prompt_and_the_newest_message():
    conv = chat_with(HISTORY, budget=1)  # too small for anything
    conv.trim()
    assert conv.messages == [{"role": "system", "content": "Be brief."}, HISTORY[-1]]


def test_no_budget_no_trimming():
    conv = chat_with(HISTORY)
    assert conv.trim() == [] and conv.history == HISTORY


def test_reset_forgets_the_turns_not_the_system_prompt():
    conv = chat_with(HISTORY)
    conv.reset()
    assert conv.history == [] and conv.messages == [{"role": "system", "content": "Be brief."}]


def test_save_and_load(tmp_path):
    path = tmp_path / "chat.json"
    chat_with([turn("user", 1), {"role": "assistant", "content": "Ça va ? 👋"}], budget=500).save(path)

    loaded = Conversation.load(path, server=NOBODY)
    assert loaded.history == [turn("user", 1), {"role": "assistant", "content": "Ça va ? 👋"}]
    assert (loaded.system, loaded.model, loaded.budget, loaded.server) == ("Be brief.", "smollm2:135m", 500, NOBODY)


@pytest.mark.parametrize("content", [
    {"messages": "hello"},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"model": "m"},
    {"messages": [], "budget": "lots"},  # would fail only later, at the next question
    {"messages": [], "system": ["Be brief."]},
])
def test_load_rejects_a_file_that_is_not_a_conversation(tmp_path, content):
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="chat.json"):
        Conversation.load(path)


@pytest.mark.parametrize("text", ["{not json", "[]", b"\xff\xfe not text"])
def test_load_names_the_file_when_it_is_not_json_of_a_conversation(tmp_path, text):
    path = tmp_path / "chat.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError) as info:
        Conversation.load(path)
    assert str(path) in str(info.value)


def test_failed_ask_leaves_the_history_as_it_was():
    conv = chat_with(HISTORY, server=NOBODY)
    with pytest.raises(OllamaError) as info:
        conv.ask("Are you there?")
    assert info.value.status is None  # no answer came at all
    assert conv.history == HISTORY


def test_failed_ask_stream_leaves_the_history_as_it_was():
    conv = chat_with(HISTORY, server=NOBODY)
    with pytest.raises(OllamaError):
        list(conv.ask_stream("Are you there?"))
    assert conv.history == HISTORY


def test_failed_ask_with_a_budget_leaves_the_history_as_it_was():
    conv = chat_with(HISTORY, server=NOBODY, budget=30)
    with pytest.raises(OllamaError):
        conv.ask("Are you there?")
    assert conv.history == HISTORY
