"""A chat box for Jupyter and Voilà: ipywidgets around a :class:`Conversation`, answers streamed in a thread.

>>> box = ChatBox()            # doctest: +SKIP
>>> box                        # the last line of a cell shows it
>>> box.send("Hi!").join()     # or type in it and press Enter
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as widgets

from .client import get
from .conversation import Conversation
from .errors import OllamaError
from .hosts import server_url

EMBEDDING_FAMILIES = {"bert", "nomic-bert"}  # for servers whose /api/tags has no `capabilities`


def chat_models(server: str | None = None) -> list[str]:
    """The names of the server's models that can chat (``GET /api/tags``), embedding-only models left out."""
    models = get("/api/tags", server=server, timeout=(5.0, 30.0)).json().get("models") or []
    return sorted(m["name"] for m in models if not _embedding_only(m))


def _embedding_only(model: dict[str, Any]) -> bool:
    capabilities = model.get("capabilities")
    if capabilities is not None:  # the engine and recent Ollama say what a model can do
        return "completion" not in capabilities
    return (model.get("details") or {}).get("family") in EMBEDDING_FAMILIES or "embed" in model["name"]


def explain(exc: Exception, model: str, server: str) -> str:
    """What went wrong and what to do about it, in Markdown, for a student (never a traceback)."""
    if isinstance(exc, ValueError):  # JSON that did not parse: something else answers there
        return f"**The server at {server} does not answer as Ollama does** ({exc}): check `OLLAMA_HOST`."
    if not isinstance(exc, OllamaError):
        return f"**Unexpected error** `{type(exc).__name__}: {exc}`"
    if exc.status is None and "connect" in exc.message:
        return (f"**No server answers at {server}.** Start one with `llm-experiment serve` (or Ollama), "
                "or set `OLLAMA_HOST` to where yours runs.")
    if exc.status == 404 and "not found" in exc.message:
        return f"**The server has no model `{model}`.** Pull it with `llm-experiment pull {model}` (or `ollama pull`)."
    if exc.status == 503:
        return f"**The server is busy** (its queue is full): wait a moment and send again. ({exc.message})"
    if exc.status == 401:
        return (f"**The classroom gateway refused the key** ({exc.message}). Set `OLLAMA_API_KEY` to the key "
                "your instructor gave you (`os.environ[\"OLLAMA_API_KEY\"] = ...`), then send again.")
    if exc.status in (403, 429):
        return f"**The classroom gateway says no:** {exc.message}"
    return f"**{exc.message}**" + (f" {exc.advice}" if exc.advice else "")


class ChatBox(widgets.VBox):
    """A chat with the model: bubbles in Markdown, Enter sends, Stop, Reset, model, system prompt, temperature.

    ``options`` are more Ollama options for every answer (``{"num_predict": 100}``); the slider sets
    ``temperature``. The :class:`Conversation` is ``box.conversation``: save and load it as usual.
    """

    def __init__(self, model: str | None = None, *, system: str = "", temperature: float = 0.7,
                 options: dict[str, Any] | None = None, server: str | None = None, budget: int | None = None):
        self.conversation = Conversation(model=model, server=server, budget=budget)
        self.server = server_url(server)
        self.options = options or {}
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()

        label = {"style": {"description_width": "initial"}}  # room for the whole description
        self.model = widgets.Dropdown(description="Model", options=[self.conversation.model], **label)
        self.system = widgets.Text(value=system, description="System prompt", placeholder="(optional)",
                                   layout=widgets.Layout(width="98%"), **label)
        self.temperature = widgets.FloatSlider(value=temperature, min=0, max=2, step=0.1, description="Temperature",
                                               **label)
        self.history = widgets.VBox(layout=widgets.Layout(max_height="480px", overflow="auto"))
        self.input = widgets.Text(placeholder="Ask something, press Enter", continuous_update=False,
                                  layout=widgets.Layout(flex="1"))  # the text reaches Python on Enter, not per key
        self.send_button = widgets.Button(description="Send", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", disabled=True)
        self.reset_button = widgets.Button(description="Reset")
        self.status = widgets.HTML()
        for widget, name in [(self.input, "input"), (self.send_button, "send"), (self.stop_button, "stop"),
                             (self.reset_button, "reset"), (self.status, "status"), (self.history, "history")]:
            widget.add_class(f"chatbox-{name}")  # names for the page's CSS and for the browser test

        # The Text widget sends a "submit" message when Enter is pressed (on_submit is deprecated in ipywidgets 8).
        self.input.on_msg(lambda _, content, __: content.get("event") == "submit" and self._submit_soon())
        self.send_button.on_click(lambda _: self._submit_soon())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        settings = widgets.HBox([self.model, self.temperature])
        buttons = widgets.HBox([self.input, self.send_button, self.stop_button, self.reset_button])
        super().__init__([settings, self.system, self.history, buttons, self.status])
        self.add_class("chatbox")
        self.refresh_models()

    def refresh_models(self) -> None:
        """Fill the model dropdown from the server; the chosen model stays even if the server lacks it."""
        try:
            names = chat_models(self.server)
        except Exception as exc:  # shown in the box, as every failure
            self._error(explain(exc, self.model.value, self.server))
            return
        current = self.model.value
        self.model.options = names if current in names else [current, *names]
        self.model.value = current

    def send(self, text: str) -> threading.Thread | None:
        """Ask ``text``; the answer streams into a new bubble. Returns the thread doing it (``join()`` waits)."""
        text = text.strip()
        if not text or self.busy:
            return None
        self.conversation.model = self.model.value  # the settings as they are now
        self.conversation.system = self.system.value.strip() or None
        self.conversation.options = {**self.options, "temperature": self.temperature.value}
        self._bubble("user", text)
        answer = self._bubble("assistant", "…")
        self._stop.clear()
        self.stop_button.disabled, self.send_button.disabled = False, True
        self.status.value = f"<i>{html.escape(self.model.value)} is answering…</i>"
        thread = threading.Thread(target=self._answer, args=(text, answer), daemon=True)
        thread.start()  # the kernel stays free while the model answers
        self.thread = thread
        return thread

    @property
    def busy(self) -> bool:
        """Whether an answer is streaming."""
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current answer is finished (for notebooks run top to bottom, and tests)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def stop(self) -> None:
        """End the streaming answer: we hang up, and the server stops generating.

        The thread hangs up when the next piece arrives (within a token once the model writes).
        """
        self.stop_button.disabled = True  # at once, as a sign that the click was seen
        self._stop.set()

    def reset(self) -> None:
        """Stop any answer and forget the conversation (the system prompt stays)."""
        self.stop()
        self.wait(30)
        self.conversation.reset()
        self.history.children = ()
        self.status.value = ""

    def _submit_soon(self) -> None:
        # The browser sends "submit" at once, but the text itself a moment later, as an ordinary value
        # update: read the input box only when that has arrived.
        threading.Timer(0.3, self._submit).start()

    def _submit(self) -> None:
        if not self.busy and self.input.value.strip():
            text, self.input.value = self.input.value, ""
            self.send(text)

    def _answer(self, text: str, bubble: widgets.Output) -> None:
        """Runs in the thread: stream the answer into ``bubble``, then show its speed, or the error."""
        start, first, shown = time.monotonic(), None, 0.0
        pieces: list[str] = []
        stream = self.conversation.ask_stream(text)
        try:
            for piece in stream:
                first = first or time.monotonic()
                pieces.append(piece)
                if time.monotonic() - shown > 0.05:  # redraw at most 20 times a second
                    self._show(bubble, "".join(pieces) + " ▌")
                    shown = time.monotonic()
                if self._stop.is_set():
                    break
        except Exception as exc:  # every failure is shown in the box, none as a traceback
            self._show(bubble, "".join(pieces) or "*(no answer)*")
            self._error(explain(exc, self.conversation.model, self.server))
            return
        finally:
            stream.close()  # after a Stop: closes the connection, so the server stops generating
            self.stop_button.disabled, self.send_button.disabled = True, False
        self._show(bubble, "".join(pieces))
        reply = self.conversation.last_reply
        if self._stop.is_set() or reply is None:
            self.status.value = f"<b>Stopped</b> after {len(pieces)} pieces."
            return
        stats = reply.stats
        speed = stats.get("eval_count", 0) / max(stats.get("eval_duration", 0) / 1e9, 1e-9)
        self.status.value = (f"{html.escape(self.conversation.model)}: {stats.get('eval_count', 0)} tokens, "
                             f"{speed:.1f} tokens/s, first token after {(first or time.monotonic()) - start:.2f} s")

    def _bubble(self, role: str, text: str) -> widgets.Output:
        """A new bubble in the history: yours on the right in blue, the model's on the left in grey."""
        mine = role == "user"
        bubble = widgets.Output(layout=widgets.Layout(
            border=f"1px solid {'#4a90d9' if mine else '#aaaaaa'}", padding="0 8px", margin="4px 0",
            align_self="flex-end" if mine else "flex-start", max_width="85%"))
        bubble.add_class(f"chatbox-{role}")
        self._show(bubble, text)
        label = widgets.HTML(f"<b>{'You' if mine else html.escape(self.conversation.model)}</b>",
                             layout=widgets.Layout(align_self=bubble.layout.align_self))
        self.history.children = (*self.history.children, label, bubble)
        return bubble

    def _show(self, bubble: widgets.Output, markdown: str) -> None:
        """Replace what ``bubble`` shows by ``markdown``, rendered by Jupyter (or Voilà) as Markdown."""
        bubble.outputs = ({"output_type": "display_data", "metadata": {},
                           "data": {"text/markdown": markdown, "text/plain": markdown}},)

    def _error(self, markdown: str) -> None:
        """An error, with its fix, in a red box in the history; the status line points at it."""
        note = widgets.Output(layout=widgets.Layout(border="1px solid #d9534f", padding="0 8px"))
        note.add_class("chatbox-error")
        self._show(note, markdown)
        self.history.children = (*self.history.children, note)
        self.status.value = "<b style='color:#d9534f'>Error</b>: see above."
