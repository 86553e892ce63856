"""A conversation with the model: history, a system prompt, trimming, saving and loading."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .client import Reply, chat
from .hosts import default_model


def estimate_tokens(text: str) -> int:
    """A rough token count: English text averages about four characters per token."""
    return len(text) // 4 + 1


class Conversation:
    """Keeps the messages of a chat so that the model sees the whole history each turn.

    ``budget`` (estimated tokens, optional) bounds the history sent: the oldest turns are
    dropped first, never the system prompt and never the newest message.
    """

    def __init__(self, system: str | None = None, *, model: str | None = None, budget: int | None = None,
                 options: dict[str, Any] | None = None, server: str | None = None):
        self.system = system
        self.model = model or default_model()
        self.budget = budget
        self.options = options
        self.server = server
        self.history: list[dict[str, str]] = []  # user and assistant turns, oldest first
        self.last_reply: Reply | None = None  # the latest complete answer, with the server's stats

    @property
    def messages(self) -> list[dict[str, str]]:
        """What is sent to ``/api/chat``: the system prompt, then the (trimmed) history."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history

    def ask(self, text: str) -> str:
        """Send ``text``, remember the answer, and return it."""
        before = list(self.history)
        self.history.append({"role": "user", "content": text})
        self.trim()
        try:
            reply = chat(self.messages, model=self.model, options=self.options, server=self.server)
        except BaseException:
            self.history = before  # a failed turn leaves the history as it was, trimmed turns included
            raise
        self.history.append({"role": "assistant", "content": reply.text})
        self.last_reply = reply
        return reply.text

    def ask_stream(self, text: str) -> Iterator[str]:
        """Like :meth:`ask`, yielding the answer piece by piece.

        If the caller stops early (Ctrl-C, ``break``, ``close()``), the connection is closed, so the
        server stops generating; the partial answer is kept only when something was received; the
        user's turn stays either way, so the history stays usable. After a complete answer,
        ``last_reply.stats`` holds the server's final object (token counts, durations).
        """
        before = list(self.history)
        self.history.append({"role": "user", "content": text})
        self.trim()
        pieces: list[str] = []
        self.last_reply = None
        try:
            with chat(self.messages, model=self.model, options=self.options, server=self.server,
                      stream=True) as stream:
                for piece in stream:
                    pieces.append(piece)
                    yield piece
            self.last_reply = stream.reply
        except BaseException:
            if not pieces:
                self.history = before
                raise
            self.history.append({"role": "assistant", "content": "".join(pieces)})
            raise
        self.history.append({"role": "assistant", "content": "".join(pieces)})

    def reset(self) -> None:
        """Forget every turn; keep the system prompt."""
        self.history.clear()

    def tokens(self) -> int:
        """Estimated tokens of everything that would be sent."""
        return sum(estimate_tokens(m["content"]) for m in self.messages)

    def trim(self) -> list[dict[str, str]]:
        """Drop the oldest turns until the history fits ``budget``; return what was dropped."""
        dropped = []
        while self.budget is not None and self.tokens() > self.budget and len(self.history) > 1:
            dropped.append(self.history.pop(0))
        return dropped

    def save(self, path: str | Path) -> None:
        """Write the conversation to a JSON file."""
        data = {"model": self.model, "system": self.system, "budget": self.budget, "messages": self.history}
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Conversation:
        """Read a conversation written by :meth:`save`. ``kwargs`` (``server``, ``options``) are passed on."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a saved conversation (expected a JSON object)")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
            raise ValueError(f"{path}: not a saved conversation (expected a list of role/content messages)")
        for key, kind in (("model", str), ("system", str), ("budget", int)):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise ValueError(f"{path}: not a saved conversation ({key!r} should be a {kind.__name__})")
        kwargs.setdefault("model", data.get("model"))
        kwargs.setdefault("budget", data.get("budget"))
        conversation = cls(data.get("system"), **kwargs)
        conversation.history = [{"role": m["role"], "content": m["content"]} for m in messages]
        return conversation


def _is_message(m: Any) -> bool:
    return isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
