"""What a class member may ask of the shared Ollama server, decided before anything reaches it.

The gateway calls :meth:`Policy.check` with the member its key belongs to (``None`` for a missing or
unknown key), the request's method and path, and its body as received. The answer is a
:class:`Decision`: a refusal (status and an Ollama-shaped message saying why and what to do) or the
body to forward, with the settings that would hurt the whole class overridden::

    policy = Policy(PolicySettings(keep_alive="30m", num_predict=1024))
    decision = policy.check(alice, "POST", "/api/generate", b'{"model": "smollm2:135m", "keep_alive": 0}')
    decision.allowed, decision.body["keep_alive"]       # (True, '30m')

Instructors pass unchanged. Students may:

- use models: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``, ``/api/show`` and the
  OpenAI-compatible ``/v1`` routes (with ``allowed_models`` set, only those and their own models);
- look around: ``/``, ``/api/version``, ``/api/tags``, ``/api/ps``, ``/v1/models``, ``/v1/models/{model}``;
- make and remove models in their own namespace only (student ``alice``: ``alice/mymodel``):
  ``/api/create`` from another model, ``/api/copy`` into it, ``/api/delete`` from it.

Pulling, pushing, uploading model files (``/api/blobs``, ``files`` and ``adapters`` in a create),
creating from a file path and quantizing are the instructor's. Everything else is 404 or 405.

Why the overrides: one Ollama server keeps one copy of a model in memory for everybody, so

- ``keep_alive`` is always the instructor's: a student's ``0`` would unload the model for everyone, and the
  next request would wait for it to load again;
- ``num_ctx`` and the other options that decide how a model is loaded (``num_batch``, ``num_gpu``,
  ``num_thread``, ...) are not the student's: Ollama reloads a model whenever a request asks for
  different ones, even a smaller context, so clamping ``num_ctx`` to a maximum would not stop two
  students from reloading the model back and forth. With ``num_ctx`` set, every student request runs
  with exactly that context (set the server's ``OLLAMA_CONTEXT_LENGTH`` to the same value, so ``/v1``
  requests, which cannot carry ``num_ctx``, agree); without it (the default), a student's ``num_ctx`` is
  dropped and the server's own context applies. The same goes for ``parameters`` in ``/api/create``,
  since a model's ``PARAMETER num_ctx`` would reload it just the same. (Notebook 03's ``num_ctx: 256``
  demonstration therefore runs with the class context through the gateway.)
- ``num_predict`` (and ``/v1``'s ``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``) is
  capped: a missing, 0 or negative one would let one answer run until the context is full.

Student bodies are checked a little more strictly than Ollama does, so that the body the gateway
forwards means to Ollama exactly what it meant here: field names at the levels read here (the top
level, ``options``, ``parameters``) must be lowercase ASCII, because Go's JSON decoder matches field
names ignoring case (``"KEEP_ALIVE"`` would set ``keep_alive``, and a later key wins); model names must
be plain (no surrounding spaces, no ``scheme://``, no ``..``, at most 200 characters) and valid for
Ollama (:func:`llm_experiment.protocol.parse_name`).

Pure functions over dicts: no I/O. The policy cannot see which models the server has, so a
student's ``"from"`` naming a model the server lacks makes Ollama pull it; set ``allowed_models`` to
keep students to the models you pulled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.options import DurationError, OptionError, parse_keep_alive, parse_options
from ..protocol import DEFAULT_REGISTRY, display_name, name_key, normalize_name, parse_name
from .roster import Member

MAX_NAME_LENGTH = 200  # characters; the longest name a student needs ("alice/" + 80 + ":" + 80) is 167

# Options that decide how Ollama loads a model (api.Runner, plus older names): any change reloads it.
LOAD_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
                          "low_vram", "f16_kv", "use_mlock", "numa", "vocab_only", "logits_all"})


@dataclass(frozen=True)
class PolicySettings:
    """The instructor's settings for every student request."""

    keep_alive: str | float = "30m"  # how long a model stays loaded: a Go duration or seconds, as in Ollama
    num_ctx: int | None = None  # the context every student request runs with; None: the server's own
    num_predict: int = 1024  # the most tokens one answer may have
    allowed_models: tuple[str, ...] | None = None  # None: any model; else these (and students' own)
    max_body_bytes: int = 4 * 1024 * 1024  # a chat with an image or two fits; a 4096-token prompt is ~20 kB


@dataclass(frozen=True)
class Decision:
    """A refusal (``status`` 400-405/413, ``error`` says why) or a request to forward (``status`` 200).

    To forward: if ``passthrough``, send the request exactly as received (instructors); otherwise send
    ``body`` as JSON, or no body when it is ``None`` (GET and HEAD). Forward to the path that was checked.
    ``changes`` says what the policy changed in the body, for the gateway's log or a response header.
    """

    status: int = 200
    error: str = ""
    body: dict[str, Any] | None = None
    passthrough: bool = False
    changes: tuple[str, ...] = ()
    openai: bool = False  # the request was to a /v1 route: answer a refusal in OpenAI's shape

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def payload(self) -> dict[str, Any]:
        """The refusal's JSON body: Ollama's ``{"error": "..."}``, or OpenAI's shape on ``/v1`` routes."""
        if not self.openai:
            return {"error": self.error}
        kind = {400: "invalid_request_error", 404: "not_found_error", 401: "authentication_error",
                403: "permission_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.error, "type": kind, "param": None, "code": None}}


class Refusal(Exception):
    """Raised by the rules below; :meth:`Policy.check` turns it into a refusing :class:`Decision`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


_Rule = Callable[["Policy", Member, dict[str, Any], list[str]], None]


class Policy:
    """The rules for one class, from the instructor's :class:`PolicySettings` (or a dict of them)."""

    def __init__(self, settings: PolicySettings | Mapping[str, Any] | None = None):
        if settings is None:
            settings = PolicySettings()
        elif not isinstance(settings, PolicySettings):
            settings = PolicySettings(**settings)
        try:
            parse_keep_alive(settings.keep_alive)
        except DurationError as e:
            raise ValueError(f"keep_alive {settings.keep_alive!r}: {e}") from None
        if settings.num_ctx is not None and not (isinstance(settings.num_ctx, int) and settings.num_ctx >= 4):
            raise ValueError(f"num_ctx must be a whole number of tokens, at least 4 (got {settings.num_ctx!r})")
        if not (isinstance(settings.num_predict, int) and settings.num_predict > 0):
            raise ValueError(f"num_predict must be a positive whole number (got {settings.num_predict!r})")
        if not (isinstance(settings.max_body_bytes, int) and settings.max_body_bytes > 0):
            raise ValueError(f"max_body_bytes must be a positive whole number (got {settings.max_body_bytes!r})")
        self.settings = settings
        self.class_models: dict[str, str] | None = None  # name_key -> the name as the instructor wrote it
        if settings.allowed_models is not None:
            if isinstance(settings.allowed_models, str):
                raise ValueError("allowed_models must be a list of model names, not one string")
            self.class_models = {}
            for name in settings.allowed_models:
                full = normalize_name(name) if isinstance(name, str) else None
                if full is None:
                    raise ValueError(f"allowed_models: {name!r} is not a valid model name")
                self.class_models[name_key(full)] = name

    # the one entry point ---------------------------------------------------------------------------

    def check(self, member: Member | None, method: str, path: str,
              body: bytes | Mapping[str, Any] | None = None) -> Decision:
        """Decide one request. ``body`` is the request's bytes as received (or its parsed JSON object).

        Pass the bytes: the size limit (413) applies to them, and the parsing is the policy's. The
        gateway should stop reading a student's body after ``settings.max_body_bytes + 1`` bytes.
        Never raises for any method, path or body: every problem becomes a refusing :class:`Decision`.
        """
        openai = path.startswith("/v1/")
        try:
            if member is None:
                raise Refusal(401, "missing or unknown API key: set OLLAMA_API_KEY (ollama client) or api_key "
                                   "(openai client) to the key your instructor gave you")
            if member.revoked is not None:
                raise Refusal(401, f'the key for "{member.name}" was revoked: ask your instructor for a new one')
            if member.is_instructor:
                return Decision(passthrough=True, openai=openai)
            rule = self._route(method.upper(), path)
            if rule is None:  # GET or HEAD: no body is read or forwarded
                return Decision(openai=openai)
            parsed = self._body(body)
            changes: list[str] = []
            rule(self, member, parsed, changes)
            return Decision(body=parsed, changes=tuple(changes), openai=openai)
        except Refusal as refusal:
            return Decision(status=refusal.status, error=refusal.message, openai=openai)

    # routes ----------------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> _Rule | None:
        """The rule for a student's request (``None``: allowed, no body); :class:`Refusal` if there is none."""
        if path.startswith("/api/blobs/") or path in _INSTRUCTOR_ONLY:
            what = _INSTRUCTOR_ONLY.get(path, "uploading model files")
            raise Refusal(403, f"{what} is for the instructor: ask them, or use the models the server has "
                               "(GET /api/tags lists them)")
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            if method != "GET":
                raise Refusal(405, "405 method not allowed")
            _plain_name(path[len("/v1/models/"):], "model")
            return None
        route = _STUDENT_ROUTES.get(path)
        if route is None:
            raise Refusal(404, f"404 page not found: {_quote(path)} is not a route students may use")
        methods, rule = route
        if method not in methods:
            raise Refusal(405, f"405 method not allowed: {path} takes {' or '.join(sorted(methods))}")
        return rule

    def _body(self, body: bytes | Mapping[str, Any] | None) -> dict[str, Any]:
        """The body as a new dict (the caller's is never changed), or :class:`Refusal` 400/413."""
        if isinstance(body, (bytes, bytearray, memoryview)):
            size = len(body)
            if size > self.settings.max_body_bytes:
                raise Refusal(413, f"request body too large: {size} bytes, the class limit is "
                                   f"{self.settings.max_body_bytes} (send smaller images or a shorter history)")
            if not size:
                raise Refusal(400, "missing request body")
            try:
                body = json.loads(bytes(body), parse_constant=_no_constant)
            except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                raise Refusal(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
        if body is None:
            raise Refusal(400, "missing request body")
        if not isinstance(body, Mapping):
            raise Refusal(400, "the request body must be a JSON object")
        parsed = dict(body)
        _lowercase_fields(parsed, "")
        return parsed

    # model names -----------------------------------------------------------------------------------

    def may_use(self, member: Member, name: str) -> bool:
        """Whether ``member`` may run (or show, or build on) the model ``name``, a valid name."""
        if self.class_models is None or _owns(member, name):
            return True
        full = normalize_name(name)
        return full is not None and name_key(full) in self.class_models

    def _usable(self, member: Member, value: Any, field_name: str) -> str:
        name = _plain_name(value, field_name)
        if not self.may_use(member, name):
            assert self.class_models is not None
            choices = ", ".join(sorted(self.class_models.values()))
            raise Refusal(403, f"{_quote(name)} is not one of this class's models: use {choices}, "
                               f'or a model of your own ("{member.name}/...")')
        return name

    # option overrides ------------------------------------------------------------------------------

    def _override_keep_alive(self, body: dict[str, Any], changes: list[str]) -> None:
        wanted = self.settings.keep_alive
        if "keep_alive" in body and body["keep_alive"] != wanted:
            changes.append(f"keep_alive: the class's {_quote(wanted)} instead of {_quote(body['keep_alive'])}")
        body["keep_alive"] = wanted

    def _pin_load_options(self, options: dict[str, Any], changes: list[str], where: str, *, always: bool) -> None:
        """Drop the load options a student gave; with the class's ``num_ctx``, put that in their place.

        ``always``: set the class's ``num_ctx`` even if the student gave none (a request, so every
        request loads the model alike), rather than only in place of theirs (a model's parameters).
        """
        pinned = self.settings.num_ctx
        given = {name: options.pop(name) for name in sorted(LOAD_OPTIONS & options.keys())}
        for name, value in given.items():
            if name == "num_ctx" and pinned is not None:
                if value != pinned:
                    changes.append(f"{where}.num_ctx: the class's {pinned} instead of {_quote(value)}")
            else:
                changes.append(f"{where}.{name} removed (was {_quote(value)}): it would reload the model for everyone")
        if pinned is not None and (always or "num_ctx" in given):
            options["num_ctx"] = pinned

    def _options(self, body: dict[str, Any], changes: list[str], *, generates: bool) -> None:
        """``options`` checked as Ollama reads them, load options pinned, ``num_predict`` capped."""
        options = _object(body, "options")
        try:
            parsed = parse_options(options)
        except OptionError as e:
            raise Refusal(400, str(e)) from None
        self._pin_load_options(options, changes, "options", always=True)
        if generates:
            cap = self.settings.num_predict
            if not 0 < parsed.num_predict <= cap:  # parsed: as Ollama reads it (5.7 -> 5, 1e30 -> -2**63)
                if options.get("num_predict") is not None:
                    changes.append(f"options.num_predict: capped at {cap} (was {_quote(options['num_predict'])})")
                options["num_predict"] = cap
        body["options"] = options

    def _cap_tokens(self, body: dict[str, Any], fields: tuple[str, ...], changes: list[str]) -> None:
        """/v1's token limits: the first of ``fields`` given (an integer, as Go reads it), at most the cap.

        The limit is written to ``fields[0]`` and to every other of them in the body, so Ollama
        reads the same limit whichever of them it prefers.
        """
        cap = self.settings.num_predict
        given: tuple[str, int] | None = None
        for name in fields:
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise Refusal(400, f'"{name}" must be an integer (got {_quote(value)})')
            given = given or (name, value)
        limit = given[1] if given is not None and 0 < given[1] <= cap else cap
        if given is not None and given[1] != limit:
            changes.append(f"{given[0]}: capped at {cap} (was {given[1]})")
        for name in fields:
            if name == fields[0] or name in body:
                body[name] = limit


# the rules, one per route ----------------------------------------------------------------------------

def _generate(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/generate, /api/chat: a usable model; keep_alive, load options and num_predict overridden."""
    policy._usable(member, _required(body, "model"), "model")
    policy._override_keep_alive(body, changes)
    policy._options(body, changes, generates=True)


def _embed(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/embed, /api/embeddings: as generating, nothing to cap."""
    policy._usable(member, _required(body, "model"), "model")
    policy._override_keep_alive(body, changes)
    policy._options(body, changes, generates=False)


def _show(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/show: a usable model (a model's details include its system prompt)."""
    policy._usable(member, _legacy_name(body), "model")


def _create(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/create: into the student's namespace, from a usable model, with no files and no quantizing."""
    _own(member, _legacy_name(body), "model", "create models in", "name it")
    for key, what in (("files", "creating a model from uploaded files (a GGUF blob)"),
                      ("adapters", "adding adapter files to a model"),
                      ("quantize", "quantizing a model"), ("quantization", "quantizing a model")):
        if body.get(key):
            raise Refusal(403, f'{what} is for the instructor: build on a model the server has, '
                               f'with "from": "{_example(policy)}"')
    if body.get("modelfile"):
        raise Refusal(400, 'send the Modelfile as fields ("from", "system", "parameters", "template"), '
                           "as the ollama client does: Ollama no longer reads Modelfile text")
    source = body.get("from")
    if source is None or source == "":
        raise Refusal(400, f'"from" is required: the model to build on, e.g. "{_example(policy)}"')
    if isinstance(source, str) and _looks_like_path(source):
        raise Refusal(403, f"creating a model from a file path ({_quote(source)}) is for the instructor: "
                           f'build on a model the server has, e.g. "from": "{_example(policy)}"')
    policy._usable(member, source, "from")
    parameters = _object(body, "parameters")
    if parameters:
        try:
            parsed = parse_options(parameters)
        except OptionError as e:
            raise Refusal(400, str(e)) from None
        policy._pin_load_options(parameters, changes, "parameters", always=False)
        if "num_predict" in parameters and not 0 < parsed.num_predict <= policy.settings.num_predict:
            changes.append(f"parameters.num_predict: capped at {policy.settings.num_predict}")
            parameters["num_predict"] = policy.settings.num_predict
        body["parameters"] = parameters


def _copy(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/copy: from a usable model into the student's namespace."""
    source, destination = body.get("source"), body.get("destination")
    if source in (None, "") or destination in (None, ""):
        raise Refusal(400, '"source" and "destination" are required, e.g. '
                           f'{{"source": "{_example(policy)}", "destination": "{member.name}/mycopy"}}')
    policy._usable(member, source, "source")
    _own(member, destination, "destination", "copy models into", "name the copy")
    for key in set(body) - {"source", "destination"}:  # a copy needs nothing else: forward nothing else
        del body[key]


def _delete(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/api/delete: only the student's own models."""
    _own(member, _legacy_name(body), "model", "delete models in", None)


def _openai_chat(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    """/v1 routes: a usable model and the token limit capped. Ollama's /v1 reads no keep_alive or num_ctx."""
    policy._usable(member, _required(body, "model"), "model")
    policy._cap_tokens(body, ("max_tokens", "max_completion_tokens"), changes)


def _openai_completions(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    policy._usable(member, _required(body, "model"), "model")
    policy._cap_tokens(body, ("max_tokens",), changes)


def _openai_responses(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    policy._usable(member, _required(body, "model"), "model")
    policy._cap_tokens(body, ("max_output_tokens",), changes)


def _openai_embeddings(policy: Policy, member: Member, body: dict[str, Any], changes: list[str]) -> None:
    policy._usable(member, _required(body, "model"), "model")


_GET = frozenset({"GET"})
_GET_HEAD = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
_STUDENT_ROUTES: dict[str, tuple[frozenset[str], _Rule | None]] = {
    "/": (_GET_HEAD, None), "/api/version": (_GET_HEAD, None), "/api/tags": (_GET_HEAD, None),
    "/api/ps": (_GET, None), "/v1/models": (_GET, None),
    "/api/show": (_POST, _show),
    "/api/generate": (_POST, _generate), "/api/chat": (_POST, _generate),
    "/api/embed": (_POST, _embed), "/api/embeddings": (_POST, _embed),
    "/api/create": (_POST, _create), "/api/copy": (_POST, _copy), "/api/delete": (frozenset({"DELETE"}), _delete),
    "/v1/chat/completions": (_POST, _openai_chat), "/v1/completions": (_POST, _openai_completions),
    "/v1/responses": (_POST, _openai_responses), "/v1/embeddings": (_POST, _openai_embeddings),
}
_INSTRUCTOR_ONLY = {"/api/pull": "pulling models", "/api/push": "pushing models"}


# helpers ---------------------------------------------------------------------------------------------

def _plain_name(value: Any, field_name: str) -> str:
    """``value`` if it is a model name Ollama accepts and reads as we do; else :class:`Refusal` 400."""
    if not isinstance(value, str):
        raise Refusal(400, f'"{field_name}" must be a model name (a string), not {_quote(value)}')
    if not value:
        raise Refusal(400, f"{field_name} is required")
    why = ""
    if len(value) > MAX_NAME_LENGTH:
        why = f"longer than {MAX_NAME_LENGTH} characters"
    elif value != value.strip() or "://" in value:
        why = "write it without spaces around it or a scheme:// in front"
    elif ".." in value:
        why = 'it contains ".."'
    elif parse_name(value) is None:
        why = "names look like smollm2:135m or alice/mymodel:v1: ASCII letters, digits, '_', '-' and '.'"
    if why:
        raise Refusal(400, f"invalid model name {_quote(value)} in {field_name}: {why}")
    return value


def _owns(member: Member, name: str) -> bool:
    """Whether a valid ``name`` is in the member's namespace on the default registry ("alice/...")."""
    parts = parse_name(name)
    return parts is not None and parts[0].lower() == DEFAULT_REGISTRY and parts[1] == member.name


def _own(member: Member, value: Any, field_name: str, action: str, suggest: str | None) -> str:
    """``value`` if it names a model in the student's own namespace; else :class:`Refusal` 400/403."""
    name = _plain_name(value, field_name)
    if _owns(member, name):
        return name
    full = normalize_name(name)
    assert full is not None  # _plain_name checked it
    model, _, tag = full.rpartition("/")[2].partition(":")
    message = f'students may only {action} their own namespace "{member.name}/...": '
    if suggest is None:
        message += f"{_quote(display_name(full))} is not yours"
    else:
        message += f'{suggest} "{member.name}/{model}{"" if tag == "latest" else ":" + tag}"'
    raise Refusal(403, message)


def _required(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is None or value == "":
        raise Refusal(400, f"{key} is required")
    return value


def _legacy_name(body: dict[str, Any]) -> Any:
    """The model a show, create or delete names: ``model``, else the older ``name`` (as Ollama reads them).

    The body is rewritten to carry it as ``model`` alone, so Ollama cannot read it differently.
    """
    value = body.get("model")
    if value is None or value == "":
        value = body.get("name")
    body.pop("name", None)
    if value is None or value == "":
        raise Refusal(400, "model is required")
    body["model"] = value
    return value


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of the JSON object ``body[key]`` (empty if absent or null); :class:`Refusal` if not an object."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Refusal(400, f"{key} must be a JSON object")
    return dict(value)


def _lowercase_fields(body: dict[str, Any], where: str) -> None:
    """Refuse field names Go's case-insensitive JSON decoder could read as another field (see module doc)."""
    for key, value in body.items():
        if not isinstance(key, str) or not key.isascii() or key != key.lower():
            raise Refusal(400, f"field names are lowercase in Ollama's API: {_quote(key)}{where} is not")
        if not where and key in ("options", "parameters") and isinstance(value, Mapping):
            _lowercase_fields(dict(value), f" in {key}")


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", ".", "~")) or "\\" in value or value.lower().endswith((".gguf", ".bin"))


def _example(policy: Policy) -> str:
    return next(iter(policy.class_models.values())) if policy.class_models else "smollm2:135m"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _quote(value: Any) -> str:
    """``value`` for a message: JSON-quoted, cut to 80 characters, safe to encode whatever it holds."""
    if isinstance(value, float) and not math.isfinite(value):
        text = str(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


__all__ = ["LOAD_OPTIONS", "MAX_NAME_LENGTH", "Decision", "Policy", "PolicySettings", "Refusal"]
