"""Ollama's OpenAI-compatible ``/v1`` routes, as its ``openai`` middleware builds them.

Like Ollama, each request is translated into a native ``/api/chat`` or ``/api/generate`` body, run
through the engine's own path (:mod:`.completion`), and the native answer (one JSON object, or
NDJSON lines) is translated back: ``chat.completion`` objects, or server-sent events of
``chat.completion.chunk`` / ``text_completion`` ending with ``data: [DONE]``; ``/v1/responses`` (stateless,
text only) answers a ``response`` object, or its named events (``event: response.created`` ...). Errors take OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}`` with Ollama's status codes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..protocol import display_name, normalize_name, parse_name
from . import completion, embed
from .decode import scrub_surrogates
from .state import DECODE_IN_THREAD, Engine
from .wire import APIError, dumps, go_float32_array

log = logging.getLogger("llm_experiment.engine")

FINGERPRINT = "fp_ollama"


# answers -------------------------------------------------------------------------------------


class OpenAIJSON(Response):
    """``application/json`` written as Go's ``json.Encoder`` does (a trailing newline), as Ollama's middleware."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return (dumps(content) + "\n").encode()


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error object, typed by status as Ollama's ``openai.NewError`` does."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(status: int, message: str) -> OpenAIJSON:
    return OpenAIJSON(error_body(status, message), status_code=status)


def _sse(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


DONE = b"data: [DONE]\n\n"

Handler = Callable[[Engine, Request], Awaitable[Response]]


def _openai_errors(handler: Handler) -> Handler:
    """Turn the engine's errors (Ollama's shape) into OpenAI's, keeping the status."""

    async def wrapped(engine: Engine, request: Request) -> Response:
        try:
            return await handler(engine, request)
        except APIError as exc:
            return openai_error(exc.status, exc.message)
        except Exception as exc:  # noqa: BLE001 - an internal error still answers in OpenAI's shape
            log.exception("internal error on %s", request.url.path)
            return openai_error(500, f"internal error: {exc}")

    wrapped.__doc__ = handler.__doc__
    return wrapped


async def not_yet(request: Request) -> Response:
    """``/v1`` routes of Ollama's that this engine has not built yet."""
    return openai_error(501, f"the embedded engine does not support {request.method} {request.url.path} yet; "
                             "use a real Ollama server for it")


# reading and checking requests ---------------------------------------------------------------


async def _read(engine: Engine, request: Request, struct: str) -> dict[str, Any]:
    """The body as a JSON object, within the engine's size limits; 400 with Go's text when unusable."""
    raw = await engine.read(request)
    if not raw.strip():
        raise APIError(400, "EOF")
    try:
        body = await asyncio.to_thread(json.loads, raw) if len(raw) > DECODE_IN_THREAD else json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"invalid JSON: {exc}") from None
    body = scrub_surrogates(raw, body)
    if not isinstance(body, dict):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(body)} into Go value of type openai.{struct}")
    return {k: v for k, v in body.items() if v is not None}  # null is Go's zero value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {json.dumps(value)}"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def _go_type(value: Any) -> str:
    """The Go dynamic type (``%T``) a JSON value decodes to in an ``any``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    return {str: "string", list: "[]interface {}", dict: "map[string]interface {}"}.get(type(value), "<nil>")


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float64": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "float32": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}

CHAT_FIELDS = {
    "model": "string", "messages": "array", "stream": "bool", "stream_options": "object", "max_tokens": "int",
    "max_completion_tokens": "int", "seed": "int", "temperature": "float64", "frequency_penalty": "float64",
    "presence_penalty": "float64", "top_p": "float64", "response_format": "object", "tools": "array",
    "reasoning": "object", "reasoning_effort": "string", "logprobs": "bool", "top_logprobs": "int",
}
COMPLETION_FIELDS = {
    "model": "string", "prompt": "string", "frequency_penalty": "float32", "max_tokens": "int",
    "presence_penalty": "float32", "seed": "int", "stream": "bool", "stream_options": "object",
    "temperature": "float32", "top_p": "float32", "suffix": "string", "logprobs": "int",
}


RESPONSES_FIELDS = {
    "model": "string", "background": "bool", "include": "array", "instructions": "string",
    "max_output_tokens": "int", "reasoning": "object", "temperature": "float64", "text": "object",
    "top_p": "float64", "truncation": "string", "tools": "array", "stream": "bool",
}
EMBEDDING_FIELDS = {"model": "string", "dimensions": "int", "encoding_format": "string"}
GO_TYPES = {
    "ChatCompletionRequest": {"messages": "[]openai.Message", "stream_options": "openai.StreamOptions",
                              "response_format": "openai.ResponseFormat", "tools": "api.Tools",
                              "reasoning": "openai.Reasoning"},
    "CompletionRequest": {"stream_options": "openai.StreamOptions"},
    "EmbedRequest": {},
    "ResponsesRequest": {"include": "[]string", "max_output_tokens": "int", "reasoning": "openai.ResponsesReasoning",
                         "text": "openai.ResponsesText", "tools": "[]openai.ResponsesTool"},
}


def _check_types(body: dict[str, Any], fields: dict[str, str], struct: str) -> None:
    """Refuse a wrongly typed field with Go's ``UnmarshalTypeError`` text, as gin's binding does."""
    for key, kind in fields.items():
        if key in body and not _CHECKS[kind](body[key]):
            go = GO_TYPES[struct].get(key, kind)
            raise APIError(400, f"json: cannot unmarshal {_json_kind(body[key])} into Go struct field "
                                f"{struct}.{key} of type {go}")


def _stops(stop: Any, *, strict: bool) -> list[str] | None:
    """``stop`` as a list: a string or a list of strings (others are dropped, or refused if ``strict``)."""
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        return None
    bad = [s for s in stop if not isinstance(s, str)]
    if bad and strict:
        raise APIError(400, f"invalid type for 'stop' field: {_go_type(bad[0])}")
    return [s for s in stop if isinstance(s, str)] or None


def _think(body: dict[str, Any]) -> bool | str | None:
    """``reasoning.effort`` / ``reasoning_effort`` as Ollama's ``think`` value."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    levels = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
              "xhigh": "max", "ultra": "max"}
    if not effort:
        return None
    if effort not in levels:
        raise APIError(400, f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                            '"xhigh", "ultra", "max", or "none")')
    return levels[effort]


def _image(url: Any) -> str:
    """A base64 ``data:`` URL's payload, checked as Ollama's ``decodeImageURL``."""
    if not isinstance(url, str):
        raise APIError(400, "invalid message format")
    if url.startswith(("http://", "https://")):
        raise APIError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    prefixes = ["data:;base64,"] + [f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp")]
    prefix = next((p for p in prefixes if url.startswith(p)), None)
    if prefix is None:
        raise APIError(400, "invalid image input")
    try:
        base64.b64decode(url[len(prefix):], validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "invalid image input") from None
    return url[len(prefix):]


def _messages(given: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as native ones: one per text or image part, as Ollama's ``FromChatRequest``."""
    out: list[dict[str, Any]] = []
    for m in given:
        if not isinstance(m, dict):
            raise APIError(400, f"json: cannot unmarshal {_json_kind(m)} into Go struct field "
                                "ChatCompletionRequest.messages of type openai.Message")
        role = m.get("role") or ""
        if not isinstance(role, str):
            raise APIError(400, f"json: cannot unmarshal {_json_kind(role)} into Go struct field "
                                "ChatCompletionRequest.messages.role of type string")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    out.append({"role": role, "content": part["text"]})
                elif kind == "image_url":
                    url = part.get("image_url")
                    out.append({"role": role, "content": "",
                                "images": [_image(url.get("url") if isinstance(url, dict) else url)]})
                else:
                    raise APIError(400, "invalid message format")
        elif m.get("tool_calls"):
            out.append({"role": role, "content": ""})  # an assistant turn that only called tools
        else:
            raise APIError(400, f"invalid message content type: {_go_type(content)}")
    return out


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/chat/completions`` body as a native ``/api/chat`` body (Ollama's ``FromChatRequest``)."""
    _check_types(body, CHAT_FIELDS, "ChatCompletionRequest")
    if not body.get("messages"):
        raise APIError(400, "[] is too short - 'messages'")
    messages = _messages(body["messages"])
    options: dict[str, Any] = {}
    stop = _stops(body.get("stop"), strict=False)
    if stop:
        options["stop"] = stop
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = body.get("temperature", 1.0)
    for key in ("seed", "frequency_penalty", "presence_penalty"):
        if key in body:
            options[key] = body[key]
    options["top_p"] = body.get("top_p", 1.0)
    native: dict[str, Any] = {"model": body.get("model", ""), "messages": messages, "options": options,
                              "stream": bool(body.get("stream"))}
    fmt = body.get("response_format") or {}
    kind = str(fmt.get("type") or "").strip().lower()
    if kind == "json_object":
        native["format"] = "json"
    elif kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        native["format"] = fmt["json_schema"].get("schema")
    if body.get("tools"):
        native["tools"] = body["tools"]
    think = _think(body)
    if think is not None:
        native["think"] = think
    if body.get("logprobs"):
        native.update(logprobs=True, top_logprobs=body.get("top_logprobs", 0))
    return native


def completion_request(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/completions`` body as a native ``/api/generate`` body (Ollama's ``FromCompleteRequest``)."""
    _check_types(body, COMPLETION_FIELDS, "CompletionRequest")
    options: dict[str, Any] = {}
    stop = _stops(body.get("stop"), strict=True)
    if stop:
        options["stop"] = stop
    if "max_tokens" in body:
        options["num_predict"] = body["max_tokens"]
    options["temperature"] = body.get("temperature", 1.0)
    if "seed" in body:
        options["seed"] = body["seed"]
    options["frequency_penalty"] = body.get("frequency_penalty", 0.0)
    options["presence_penalty"] = body.get("presence_penalty", 0.0)
    options["top_p"] = body.get("top_p") or 1.0
    native: dict[str, Any] = {"model": body.get("model", ""), "prompt": body.get("prompt", ""),
                              "options": options, "stream": bool(body.get("stream"))}
    if body.get("suffix"):
        native["suffix"] = body["suffix"]
    if body.get("logprobs", 0) > 0:
        native.update(logprobs=True, top_logprobs=body["logprobs"])
    return native


def _not_yet_feature(what: str) -> APIError:
    return APIError(501, f"the embedded engine does not support {what} in /v1/responses yet; "
                         "use a real Ollama server for it")


def _responses_content(i: int, content: Any) -> dict[str, Any]:
    """A Responses message's content (a string, or input_text / output_text / input_image parts) as one message."""
    if isinstance(content, str):
        return {"content": content}
    if content is None:
        return {"content": ""}
    if not isinstance(content, list):
        raise APIError(400, f"input[{i}]: content must be a string or array: json: cannot unmarshal "
                            f"{_json_kind(content)} into Go value of type []json.RawMessage")
    text, images = "", []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise APIError(400, f"input[{i}]: content[{j}]: json: cannot unmarshal {_json_kind(part)} into Go "
                                'value of type struct { Type string "json:\\"type\\"" }')
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            text += part.get("text") or ""
        elif kind == "input_image":
            if part.get("image_url"):  # a file_id alone is skipped, as in Ollama
                images.append(_image(part["image_url"]))
        elif kind == "input_file":
            raise APIError(400, "file inputs are not currently supported")
        else:
            raise APIError(400, f"input[{i}]: content[{j}]: unknown content type: {kind or ''}")
    return {"content": text, "images": images} if images else {"content": text}


def responses_request(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/responses`` body as a native ``/api/chat`` body (Ollama's ``FromResponsesRequest``).

    Stateless, as Ollama: ``previous_response_id``, ``conversation``, ``store`` and the like are ignored.
    Function tools and function-call items are not built yet (501).
    """
    _check_types(body, RESPONSES_FIELDS, "ResponsesRequest")
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input", "")
    if isinstance(given, str):
        if given:
            messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for i, item in enumerate(given):
            if not isinstance(item, dict):
                raise APIError(400, f"input[{i}]: json: cannot unmarshal {_json_kind(item)} into Go value of type "
                                    'struct { Type string "json:\\"type\\""; Role string "json:\\"role\\"" }')
            kind = item.get("type") or ("message" if item.get("role") else "")
            if kind == "message":
                messages.append({"role": item.get("role") or "", **_responses_content(i, item.get("content"))})
            elif kind in ("reasoning", "web_search_call"):
                continue  # history metadata; this engine keeps no thinking to merge it into
            elif kind in ("function_call", "function_call_output"):
                raise _not_yet_feature(f"{kind} input items")
            elif not kind:
                raise APIError(400, f"input[{i}]: input item missing required 'type' field")
            else:
                raise APIError(400, f"input[{i}]: unknown input item type: {json.dumps(kind)}")
    else:
        raise APIError(400, f"input must be a string or array: json: cannot unmarshal {_json_kind(given)} "
                            "into Go value of type []json.RawMessage")
    if body.get("tools"):
        raise _not_yet_feature("tools")
    options: dict[str, Any] = {"temperature": body.get("temperature", 1.0)}
    if "top_p" in body:  # no default here, as in Ollama: the model's own applies
        options["top_p"] = body["top_p"]
    if "max_output_tokens" in body:
        options["num_predict"] = body["max_output_tokens"]
    native: dict[str, Any] = {"model": body.get("model", ""), "messages": messages, "options": options,
                              "stream": bool(body.get("stream"))}
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and fmt.get("schema") is not None:
        native["format"] = fmt["schema"]
    think = _think(body)
    if think is not None:
        native["think"] = think
    return native


# translating answers -------------------------------------------------------------------------


def _unix(stamp: Any) -> int:
    """An RFC 3339 ``created_at`` as Unix seconds (now, if missing)."""
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except (TypeError, ValueError):
        return int(time.time())


def usage(native: dict[str, Any]) -> dict[str, int]:
    """OpenAI's usage from the native counts (Ollama's ``ToUsage``)."""
    prompt, completion_ = native.get("prompt_eval_count", 0), native.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion_, "total_tokens": prompt + completion_}


def chat_completion(cid: str, native: dict[str, Any]) -> dict[str, Any]:
    """A native ``/api/chat`` answer as a ``chat.completion`` (Ollama's ``ToChatCompletion``)."""
    message = native.get("message") or {}
    choice: dict[str, Any] = {"index": 0, "message": {"role": message.get("role", ""),
                                                      "content": message.get("content", "")},
                              "finish_reason": native.get("done_reason") or None}
    if native.get("logprobs"):
        choice["logprobs"] = {"content": native["logprobs"]}
    return {"id": cid, "object": "chat.completion", "created": _unix(native.get("created_at")),
            "model": native.get("model", ""), "system_fingerprint": FINGERPRINT, "choices": [choice],
            "usage": usage(native)}


def text_completion(cid: str, native: dict[str, Any]) -> dict[str, Any]:
    """A native ``/api/generate`` answer as a ``text_completion`` (Ollama's ``ToCompletion``)."""
    return {"id": cid, "object": "text_completion", "created": _unix(native.get("created_at")),
            "model": native.get("model", ""), "system_fingerprint": FINGERPRINT,
            "choices": [{"text": native.get("response", ""), "index": 0,
                         "finish_reason": native.get("done_reason") or None}],
            "usage": usage(native)}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [_output_text(text)]}


def responses_usage(native: dict[str, Any]) -> dict[str, Any]:
    prompt, completion_ = native.get("prompt_eval_count", 0), native.get("eval_count", 0)
    return {"input_tokens": prompt, "output_tokens": completion_, "total_tokens": prompt + completion_,
            "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}


def response_object(request: dict[str, Any], rid: str, status: str, created_at: int, output: list[Any],
                    usage_: dict[str, Any] | None) -> dict[str, Any]:
    """A ``response`` object echoing the request, as Ollama's ``ToResponse`` / ``buildResponseObject``."""
    reasoning = request.get("reasoning") or {}
    fmt = (request.get("text") or {}).get("format")
    fmt = {k: v for k, v in fmt.items() if k in ("type", "name", "schema", "strict")} \
        if isinstance(fmt, dict) else {"type": "text"}
    return {
        "id": rid, "object": "response", "created_at": created_at,
        "completed_at": int(time.time()) if status == "completed" else None, "status": status,
        "incomplete_details": None, "model": request.get("model", ""), "previous_response_id": None,
        "instructions": request.get("instructions") or None, "output": output, "error": None, "tools": [],
        "tool_choice": "auto", "truncation": request.get("truncation", "disabled"), "parallel_tool_calls": True,
        "text": {"format": fmt}, "top_p": request.get("top_p", 1.0), "presence_penalty": 0,
        "frequency_penalty": 0, "top_logprobs": 0, "temperature": request.get("temperature", 1.0),
        "reasoning": ({"effort": reasoning.get("effort") or None, "summary": reasoning.get("summary") or None}
                      if reasoning.get("effort") or reasoning.get("summary") else None),
        "usage": usage_, "max_output_tokens": request.get("max_output_tokens"), "max_tool_calls": None,
        "store": False, "background": bool(request.get("background")), "service_tier": "default",
        "metadata": {}, "safety_identifier": None, "prompt_cache_key": None,
    }


async def _lines(body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The native NDJSON stream as objects; closing this closes the native stream."""
    pending = b""
    try:
        async for part in body:
            pending += part
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    finally:
        await body.aclose()  # type: ignore[attr-defined]


async def _chat_events(native: AsyncIterator[bytes], cid: str, include_usage: bool) -> AsyncIterator[bytes]:
    """Native chat lines as ``chat.completion.chunk`` events (Ollama's ``ChatWriter``)."""
    lines = _lines(native)
    created: int | None = None
    first_sent = False
    try:
        async for obj in lines:
            if "error" in obj:  # a mid-stream error: the openai client raises on an "error" event
                yield _sse(error_body(500, obj["error"]))
                return
            created = _unix(obj.get("created_at")) if created is None else created
            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": obj.get("model", ""),
                    "system_fingerprint": FINGERPRINT}
            content = (obj.get("message") or {}).get("content", "")
            # the metrics-only trailer is not sent as a content chunk (unless nothing came before it)
            if not (obj.get("done") and first_sent and not content and not obj.get("logprobs")):
                delta = {"content": content} if first_sent else {"role": "assistant", "content": content}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
                if obj.get("logprobs"):
                    choice["logprobs"] = {"content": obj["logprobs"]}
                yield _sse({**head, "choices": [choice]})
                first_sent = True
            if obj.get("done"):
                reason = obj.get("done_reason") or "stop"
                yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(obj)})
                yield DONE
                return
    finally:
        await lines.aclose()


async def _completion_events(native: AsyncIterator[bytes], cid: str, include_usage: bool) -> AsyncIterator[bytes]:
    """Native generate lines as ``text_completion`` events (Ollama's ``CompleteWriter``)."""
    lines = _lines(native)
    try:
        async for obj in lines:
            if "error" in obj:
                yield _sse(error_body(500, obj["error"]))
                return
            event: dict[str, Any] = {
                "id": cid, "object": "text_completion", "created": int(time.time()),
                "choices": [{"text": obj.get("response", ""), "index": 0,
                             "finish_reason": obj.get("done_reason") or None}],
                "model": obj.get("model", ""), "system_fingerprint": FINGERPRINT}
            if include_usage:
                event["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            yield _sse(event)
            if obj.get("done"):
                if include_usage:
                    yield _sse({**event, "choices": [], "usage": usage(obj)})
                yield DONE
                return
    finally:
        await lines.aclose()


class _ResponseEvents:
    """Native chat lines as the Responses API's named events (Ollama's ``ResponsesStreamConverter``, text only)."""

    def __init__(self, request: dict[str, Any], rid: str, item_id: str):
        self.request, self.rid, self.item_id = request, rid, item_id
        self.sequence = 0
        self.text: str | None = None  # None until the message item is opened by the first text

    def event(self, kind: str, **data: Any) -> bytes:
        data.update(type=kind, sequence_number=self.sequence)
        self.sequence += 1
        return f"event: {kind}\ndata: {dumps(data)}\n\n".encode()

    def response(self, status: str, output: list[Any], usage_: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(self.request, self.rid, status, int(time.time()), output, usage_)

    def start(self) -> list[bytes]:
        return [self.event("response.created", response=self.response("in_progress", [])),
                self.event("response.in_progress", response=self.response("in_progress", []))]

    def text_delta(self, content: str) -> list[bytes]:
        where = {"item_id": self.item_id, "output_index": 0}
        events = []
        if self.text is None:
            self.text = ""
            events += [self.event("response.output_item.added", output_index=0,
                                  item={"id": self.item_id, "type": "message", "status": "in_progress",
                                        "role": "assistant", "content": []}),
                       self.event("response.content_part.added", **where, content_index=0, part=_output_text(""))]
        self.text += content
        return events + [self.event("response.output_text.delta", **where, content_index=0, delta=content,
                                    logprobs=[])]

    def finish(self, native: dict[str, Any]) -> list[bytes]:
        events, output = [], []
        if self.text is not None:
            where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
            item = _message_item(self.item_id, self.text)
            events += [self.event("response.output_text.done", **where, text=self.text, logprobs=[]),
                       self.event("response.content_part.done", **where, part=_output_text(self.text)),
                       self.event("response.output_item.done", output_index=0, item=item)]
            output.append(item)
        return events + [self.event("response.completed",
                                    response=self.response("completed", output, responses_usage(native)))]


async def _response_events(native: AsyncIterator[bytes], request: dict[str, Any], rid: str,
                           item_id: str) -> AsyncIterator[bytes]:
    lines = _lines(native)
    events = _ResponseEvents(request, rid, item_id)
    try:
        for e in events.start():
            yield e
        async for obj in lines:
            if "error" in obj:  # a mid-stream error: the openai client raises on an "error" payload
                yield f"event: error\ndata: {dumps(error_body(500, obj['error']))}\n\n".encode()
                return
            content = (obj.get("message") or {}).get("content", "")
            for e in (events.text_delta(content) if content else []):
                yield e
            if obj.get("done"):
                for e in events.finish(obj):
                    yield e
                return
    finally:
        await lines.aclose()


def _translate(native: Response, whole: Callable[[dict[str, Any]], dict[str, Any]],
               events: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> Response:
    """A native answer in OpenAI's shape: a stream becomes SSE (``events`` of its NDJSON lines), one
    object becomes one object (``whole`` of it)."""
    if isinstance(native, completion.ReleasingStream):
        return native.rewrapped(events(native.body_iterator), "text/event-stream")
    if native.status_code != 200:  # 499: the client hung up, nobody reads this
        return native
    return OpenAIJSON(whole(json.loads(native.body)))


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# the routes ----------------------------------------------------------------------------------


@_openai_errors
async def chat_completions(engine: Engine, request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    started = time.perf_counter_ns()
    body = await _read(engine, request, "ChatCompletionRequest")
    native = await completion.chat_body(engine, request, chat_request(body), started)
    cid, usage = f"chatcmpl-{random.randrange(999)}", _include_usage(body)
    return _translate(native, lambda answer: chat_completion(cid, answer),
                      lambda lines: _chat_events(lines, cid, usage))


@_openai_errors
async def completions(engine: Engine, request: Request) -> Response:
    """``POST /v1/completions``."""
    started = time.perf_counter_ns()
    body = await _read(engine, request, "CompletionRequest")
    native = await completion.generate_body(engine, request, completion_request(body), started)
    cid, usage = f"cmpl-{random.randrange(999)}", _include_usage(body)
    return _translate(native, lambda answer: text_completion(cid, answer),
                      lambda lines: _completion_events(lines, cid, usage))


@_openai_errors
async def responses(engine: Engine, request: Request) -> Response:
    """``POST /v1/responses`` (stateless, text only)."""
    started = time.perf_counter_ns()
    body = await _read(engine, request, "ResponsesRequest")
    native = await completion.chat_body(engine, request, responses_request(body), started)
    rid, item_id = f"resp_{random.randrange(999999)}", f"msg_{random.randrange(999999)}"

    def whole(answer: dict[str, Any]) -> dict[str, Any]:
        text = (answer.get("message") or {}).get("content", "")
        return response_object(body, rid, "completed", _unix(answer.get("created_at")),
                               [_message_item(item_id, text)], responses_usage(answer))

    answer = _translate(native, whole, lambda lines: _response_events(lines, body, rid, item_id))
    if isinstance(answer, completion.ReleasingStream):
        answer.headers.update({"cache-control": "no-cache", "connection": "keep-alive"})
    return answer


@_openai_errors
async def embeddings(engine: Engine, request: Request) -> Response:
    """``POST /v1/embeddings``: ``/api/embed`` underneath; vectors as floats or base64 of little-endian float32."""
    started = time.perf_counter_ns()
    body = await _read(engine, request, "EmbedRequest")
    _check_types(body, EMBEDDING_FIELDS, "EmbedRequest")
    fmt = body.get("encoding_format") or ""
    if fmt and fmt.lower() not in ("float", "base64"):
        raise APIError(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].")
    given = body.get("input")
    if given == "":
        given = [""]  # Ollama's middleware embeds an empty string rather than nothing
    if given is None or given == []:
        raise APIError(400, "invalid input")
    inputs = embed.inputs_of(given)
    name = body.get("model") or ""
    result = await embed.embed_vectors(engine, request, {"model": name}, inputs, started=started,
                                       empty_status=404, empty_message=f"model '{name}' not found",
                                       dimensions=max(body.get("dimensions") or 0, 0))
    text = await asyncio.to_thread(_embedding_list, name, result, fmt.lower() == "base64")
    return Response(text, media_type="application/json")


def _embedding_list(name: str, result: embed.Embeddings, as_base64: bool) -> str:
    """OpenAI's ``list`` of ``embedding`` objects, as Ollama's ``ToEmbeddingList`` writes it."""
    items = []
    for i, row in enumerate(result.vectors):
        vector = dumps(base64.b64encode(row.astype("<f4").tobytes()).decode()) if as_base64 else go_float32_array(row)
        items.append(f'{{"object":"embedding","embedding":{vector},"index":{i}}}')
    tokens = result.prompt_eval_count
    return (f'{{"object":"list","data":[{",".join(items)}],"model":{dumps(name)},'
            f'"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}\n')


def _model_entry(name: str, modified_ns: int) -> dict[str, Any]:
    parts = parse_name(name)
    return {"id": name, "object": "model", "created": modified_ns // 1_000_000_000,
            "owned_by": parts[1] if parts else ""}


@_openai_errors
async def list_models(engine: Engine, request: Request) -> Response:
    """``GET /v1/models``: the local models, newest first (``data`` is null when there are none, as in Ollama)."""
    models = await asyncio.to_thread(engine.store.all)
    models = sorted(models, key=lambda m: m.modified_ns, reverse=True)
    data = [_model_entry(m.name, m.modified_ns) for m in models]
    return OpenAIJSON({"object": "list", "data": data or None})


@_openai_errors
async def retrieve_model(engine: Engine, request: Request) -> Response:
    """``GET /v1/models/{model}``: one model, or 404 with Ollama's ``ShowHandler`` message."""
    name = request.path_params["model"]
    full = normalize_name(name)
    if full is None:
        raise APIError(400, "invalid model name")
    model = await asyncio.to_thread(engine.store.get, name)
    if model is None:
        raise APIError(404, f"model '{display_name(full)}' not found")
    return OpenAIJSON(_model_entry(name, model.modified_ns))
