"""What the chatbot service accepts and answers: pydantic models, its OpenAPI document and its /docs page.

The models are the single source of truth: :mod:`llm_experiment.chatbot` validates requests and builds answers
with them, and :func:`openapi_document` derives the published schema from them, so the two cannot drift apart.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import models_json_schema

MAX_BODY = 1024 * 1024  # bytes in a request body
MAX_MESSAGES = 100
MAX_CONTENT = 32 * 1024  # characters in one message
MAX_TOKENS = 4096  # the most tokens one answer may have; also the default, so no request runs unbounded
ROUTE = "/v1/example-service"


# --- the request ---------------------------------------------------------------------------------------------------


class Message(BaseModel):
    """One turn of the conversation, as in OpenAI's chat API."""

    # strict: a number where text is expected is an error, not silently turned into text
    model_config = ConfigDict(strict=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT)


def _text_as_message(value: Any) -> Any:
    """A bare string is one user message."""
    return [{"role": "user", "content": value}] if isinstance(value, str) else value


Messages = Annotated[
    list[Message],
    Field(min_length=1, max_length=MAX_MESSAGES),
    # The schema shows what a client may send (text or a list); the service then works with a list only.
    BeforeValidator(_text_as_message, json_schema_input_type=Union[  # noqa: UP007 (pydantic needs a runtime type)
        Annotated[str, Field(max_length=MAX_CONTENT)],
        Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]]),
]


def _whole_number(value: Any) -> Any:
    """JSON has one type of number: 3.0 is the integer 3 (as JSON Schema says), 3.5 is no integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class ChatRequest(BaseModel):
    """The body of `POST /v1/example-service`. Unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    messages: Messages = Field(description="The conversation: a string (one user message) or a list of "
                                           "{role, content} messages, as in OpenAI's chat API.")
    model: str | None = Field(None, min_length=1, max_length=200,
                              description="The Ollama model to ask; default: the service's --model.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; 0 is deterministic. "
                                                                    "Default: the model's own.")
    max_tokens: Annotated[int | None, BeforeValidator(_whole_number)] = Field(
        None, ge=1, le=MAX_TOKENS, description=f"The most tokens to generate (default and limit: {MAX_TOKENS}).")
    stream: bool | None = Field(False, description="true: answer chat.completion.chunk objects as server-sent "
                                                   "events, ending with `data: [DONE]`.")


# --- the answers ---------------------------------------------------------------------------------------------------


class _Always(BaseModel):
    """Answers whose every field is always sent (the schema says so: required in the output)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class Usage(_Always):
    """Token counts, as the upstream Ollama server reported them (`prompt_eval_count`, `eval_count`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(_Always):
    role: Literal["assistant"] = "assistant"
    content: str


FinishReason = Literal["stop", "length"]


class Choice(_Always):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason = Field(description="stop: the model ended its answer; length: max_tokens reached.")


class ChatCompletion(_Always):
    """OpenAI's `chat.completion` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time (seconds).")
    model: str
    choices: list[Choice]
    usage: Usage | None = Field(description="null only if the upstream server did not report token counts.")


class Delta(BaseModel):
    """What a chunk adds: the role (first chunk only) and a piece of the text."""

    role: Literal["assistant"] | None = Field(None, exclude_if=lambda v: v is None)
    content: str | None = Field(None, exclude_if=lambda v: v is None)


class ChunkChoice(_Always):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Always):
    """OpenAI's `chat.completion.chunk`: one server-sent event of a streamed answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice] = Field(description="Empty in the last chunk, the one with the usage.")
    usage: Usage | None = None


class ErrorDetail(_Always):
    message: str = Field(description="What went wrong and what to try.")
    type: str
    param: str | None = Field(None, description="The request field at fault, if one is.")
    code: str | None = None


class ErrorBody(_Always):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


class UpstreamHealth(BaseModel):
    url: str
    reachable: bool
    model: str
    model_present: bool
    error: str | None = Field(None, exclude_if=lambda v: v is None, description="Why not healthy, if it is not.")


class Health(_Always):
    status: Literal["ok", "degraded"]
    upstream: UpstreamHealth


# --- the OpenAPI document ------------------------------------------------------------------------------------------

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "The body is not JSON.",
    404: "The model is not on the upstream Ollama server (pull it first), or no such route.",
    413: f"The body is larger than {MAX_BODY} bytes.",
    422: "The body does not match the schema; the message lists each field path and what was wrong.",
    500: "A bug in the service (logged).",
    502: "The upstream Ollama server is unreachable, or it failed.",
    504: "The upstream Ollama server did not answer in time.",
}
SSE_DESCRIPTION = ("With `stream: true`, server-sent events `data: {chat.completion.chunk}` (the first with the role, "
                   "then the text, then one with finish_reason, then one with the usage and no choices), then "
                   "`data: [DONE]`. An error after the answer began comes as `data: {\"error\": {...}}`.")


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(model=schema)}}}}


def openapi_document(model: str, upstream: str) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document, with the JSON schemas of the models above."""
    _, schemas = models_json_schema(
        [(ChatRequest, "validation"), (ChatCompletion, "serialization"), (ChatCompletionChunk, "serialization"),
         (ErrorBody, "serialization"), (Health, "serialization")], ref_template=REF)
    chat_answers: dict[str, Any] = {"200": _json("ChatCompletion", f"The answer. {SSE_DESCRIPTION}")}
    # Before OpenAPI 3.2, the schema of an event stream describes one event: here its `data`, JSON or [DONE].
    chunk_or_error = {"anyOf": [{"$ref": REF.format(model=m)} for m in ("ChatCompletionChunk", "ErrorBody")]}
    chat_answers["200"]["content"]["text/event-stream"] = {"schema": {
        "type": "object", "description": SSE_DESCRIPTION, "required": ["data"],
        "properties": {"data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": chunk_or_error}]}}}}
    chat_answers.update({str(status): _json("ErrorBody", text) for status, text in ERRORS.items()})
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM Experiment chatbot service", "version": "1.0.0",
                 "description": f"OpenAI's chat.completion shape in front of an Ollama server ({upstream}); "
                                f"default model {model}."},
        "paths": {
            ROUTE: {"post": {
                "operationId": "chat", "summary": "Answer a conversation",
                "description": "Asks the upstream Ollama server's /api/chat and answers an OpenAI chat.completion, "
                               "or its chunks as server-sent events with `stream: true`. The service's system "
                               "prompt comes first when the messages have none.",
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ChatRequest")}}}},
                "responses": chat_answers}},
            "/health": {"get": {
                "operationId": "health", "summary": "Whether the upstream answers and has the model",
                "description": "For a healthcheck: 200 when the upstream Ollama server answers and has the model, "
                               "503 otherwise. Answers within a few seconds.",
                "responses": {"200": _json("Health", "Healthy."), "503": _json("Health", "Not healthy: see error."),
                              "500": _json("ErrorBody", ERRORS[500])}}},
        },
        "components": {"schemas": schemas["$defs"]},
    }


# --- the /docs page: the same document as HTML, with no script and nothing fetched from elsewhere ----------------

_STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{font-family:ui-monospace,monospace;background:#f4f4f4}pre{padding:.8rem;overflow-x:auto}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
h2{border-top:2px solid #ccc;padding-top:1rem}.m{font-weight:bold;color:#06c}"""


def _type(schema: dict[str, Any]) -> str:
    """A JSON schema in a few words: ``string or array of Message``."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[1]
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        return " | ".join(json.dumps(v) for v in schema.get("enum", [schema.get("const")]))
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def _limits(schema: dict[str, Any]) -> str:
    words = {"minimum": ">=", "maximum": "<=", "minLength": "min length", "maxLength": "max length",
             "minItems": "min items", "maxItems": "max items"}
    found = [f"{words[k]} {v}" for s in [schema, *schema.get("anyOf", [])] for k, v in s.items() if k in words]
    return ", ".join(found)


def _content(content: dict[str, Any]) -> str:
    """``application/json: ChatCompletion; text/event-stream`` for a response's content."""
    return "; ".join(f"{kind}: {_type(media['schema'])}" if kind == "application/json" else kind
                     for kind, media in content.items())


def _fields(name: str, schema: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(field)}</code></td><td>{html.escape(_type(s))}</td>"
        f"<td>{'yes' if field in schema.get('required', []) else ''}</td><td>{html.escape(_limits(s))}</td>"
        f"<td>{html.escape(s.get('description', ''))}</td></tr>" for field, s in schema.get("properties", {}).items())
    return (f"<h3 id='{name}'>{name}</h3><p>{html.escape(schema.get('description', ''))}</p><table><tr><th>field</th>"
            f"<th>type</th><th>required</th><th>limits</th><th>meaning</th></tr>{rows}</table>")


def docs_page(document: dict[str, Any], base_url: str) -> str:
    """A self-contained HTML page documenting the routes of ``document``, with a curl example for each."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(document['info']['title'])}</title>",
             f"<style>{_STYLE}</style><h1>{html.escape(document['info']['title'])}</h1>",
             f"<p>{html.escape(document['info']['description'])} The machine-readable schema: "
             f"<a href='/openapi.json'>/openapi.json</a>.</p>"]
    example = json.dumps({"messages": "Why is the sky blue?", "max_tokens": 40})
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            data = f" \\\n  -H 'content-type: application/json' -d '{example}'" if method == "post" else ""
            parts.append(f"<h2><span class='m'>{method.upper()}</span> <code>{html.escape(path)}</code></h2>"
                         f"<p><b>{html.escape(op['summary'])}.</b> {html.escape(op['description'])}</p>"
                         f"<pre>curl -s {html.escape(base_url + path)}{html.escape(data)}</pre>")
            if "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                parts.append(f"<p>Request body: <a href='#{_type(body)}'>{_type(body)}</a> (JSON).</p>")
            rows = "".join(f"<tr><td>{status}</td><td>{html.escape(_content(answer['content']))}</td>"
                           f"<td>{html.escape(answer['description'])}</td></tr>"
                           for status, answer in op["responses"].items())
            parts.append(f"<table><tr><th>status</th><th>content</th><th>meaning</th></tr>{rows}</table>")
    parts.append("<h2>Schemas</h2>")
    parts += [_fields(name, schema) for name, schema in document["components"]["schemas"].items()]
    return "\n".join(parts)
