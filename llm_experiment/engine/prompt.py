"""Building the prompt text the model sees, as Ollama's template for smollm2 does (ChatML)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .gotemplate import BudgetError, parse, render_conversation

# The TEMPLATE of a model created without one: what /api/show reports, and what render() runs.
# It renders as Ollama's smollm2 template (ollama.com blob dfebd0343bdd) does, less its tools branch
# (this engine has no "tools" capability) and plus the <|im_end|> that one leaves out after the system
# text: all system texts joined on top, system messages skipped in place, tool results as user turns,
# and a last assistant message left open, to be continued. Ollama's $last (len (slice ...)) costs a copy
# per message here; $open, set by an assistant message and closed by the next one, is linear.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- $open := false }}
{{- range .Messages }}
{{- if $open }}<|im_end|>
{{ $open = false }}{{ end }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ $open = true }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- end }}
{{- if not $open }}<|im_start|>assistant
{{ end }}"""

_CHATML = parse(CHATML_TEMPLATE)  # parsed once: a chat is rendered several times per request


def render(template: str, messages: list[dict[str, Any]]) -> str:
    """The prompt for ``messages`` under a model's TEMPLATE; ``""`` means CHATML_TEMPLATE.

    The caller has already put the model's SYSTEM first; raises TemplateError if the template fails.
    """
    return render_conversation(template or _CHATML, "", messages)


def fit_messages(messages: list[dict[str, Any]], num_ctx: int, count_tokens: Callable[[str], int],
                 render: Callable[[list[dict[str, Any]]], str] | None = None) -> list[dict[str, Any]]:
    """Drop the oldest messages until the prompt fits ``num_ctx`` tokens, as Ollama's ``chatPrompt`` does.

    ``render`` makes the prompt text of some messages (by default CHATML_TEMPLATE's); a window it
    cannot render within its Budget does not fit. The latest message is always kept (even if alone
    it is too long), and so are the system messages that come before the kept part. Ollama tries
    longer and longer tails one by one; the count only grows with the tail, so after trying the whole
    conversation a binary search finds the same place with a few renders (a long conversation would
    otherwise cost a render and a tokenization per message).
    """
    as_text = render or functools.partial(render_conversation, _CHATML, "")

    def window(start: int) -> list[dict[str, Any]]:
        return [m for m in messages[:start] if m["role"] == "system"] + messages[start:]

    def fits(start: int) -> bool:
        try:
            return count_tokens(as_text(window(start))) <= num_ctx
        except BudgetError:  # too long to render (some 60,000 messages for CHATML_TEMPLATE): too long to fit
            return False

    low, high = 0, max(len(messages) - 1, 0)  # the answer lies in [low, high]; high always "fits"
    if low < high and fits(low):  # the usual case, everything fits: one render, not a search
        high = low
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return window(high)

