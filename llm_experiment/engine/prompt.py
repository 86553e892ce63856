"""Building the prompt text the model sees, as Ollama's template for smollm2 does (ChatML)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# What /api/show reports as the model's TEMPLATE, in Ollama's Go-template language. The engine
# renders the same thing in Python below. (Ollama's library template also has a tools branch;
# this engine does not do tool calls, so the model lists no "tools" capability.)
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""


def collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    """Split a conversation as Ollama's template engine does.

    All system messages are joined (blank line between) into one system text; the other
    messages keep their order, consecutive messages of the same role (tool results excepted) merged with a blank line.
    """
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict[str, str]] = []
    for m in messages:
        if m["role"] == "system":
            continue
        if turns and turns[-1]["role"] == m["role"] != "tool":  # each tool result stays its own turn
            turns[-1]["content"] += "\n\n" + m["content"]
        else:
            turns.append({"role": m["role"], "content": m["content"]})
    return system, turns


def render_chatml(messages: list[dict[str, Any]]) -> str:
    """The prompt for ``messages``, ending where the assistant's answer begins."""
    system, turns = collate(messages)
    out = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    for m in turns:
        role = "user" if m["role"] == "tool" else m["role"]
        out.append(f"<|im_start|>{role}\n{m['content']}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def render(template: str, messages: list[dict[str, Any]]) -> str:
    """The prompt for ``messages`` under a model's TEMPLATE; ``""`` means the built-in ChatML."""
    if not template:
        return render_chatml(messages)
    from .gotemplate import render_conversation  # only models created with a TEMPLATE need it

    return render_conversation(template, "", messages)  # the caller has put the system message first


def fit_messages(messages: list[dict[str, Any]], num_ctx: int, count_tokens: Callable[[str], int],
                 render: Callable[[list[dict[str, Any]]], str] = render_chatml) -> list[dict[str, Any]]:
    """Drop the oldest messages until the prompt fits ``num_ctx`` tokens, as Ollama's ``chatPrompt`` does.

    The latest message is always kept (even if alone it is too long), and so are the system
    messages that come before the kept part. Ollama tries longer and longer tails one by one; the
    count only grows with the tail, so a binary search finds the same place with a few renders
    (a long conversation would otherwise cost a render and a tokenization per message).
    """

    def window(start: int) -> list[dict[str, Any]]:
        return [m for m in messages[:start] if m["role"] == "system"] + messages[start:]

    def fits(start: int) -> bool:
        return count_tokens(render(window(start))) <= num_ctx

    low, high = 0, max(len(messages) - 1, 0)  # the answer lies in [low, high]; high always "fits"
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return window(high)
