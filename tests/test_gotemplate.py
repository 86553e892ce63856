"""Go templates as Ollama uses them: the supported subset, what is refused, and the prompt Ollama builds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_experiment.engine import gotemplate
from llm_experiment.engine.gotemplate import (
    MAX_DEPTH,
    MAX_OUTPUT_CHARS,
    MAX_STEPS,
    MAX_TEMPLATE_BYTES,
    Budget,
    TemplateError,
    parse,
    render_conversation,
)
from llm_experiment.engine.prompt import CHATML_TEMPLATE, render


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def run(template: str, **values: object) -> str:
    return parse(template).execute(values)


# The conversations of Ollama's own template tests (template/template_test.go in ollama/ollama).
USER = [msg("user", "Hello, how are you?")]
USER_ASSISTANT_USER = [*USER, msg("assistant", "I'm doing great. How can I help you today?"),
                       msg("user", "I'd like to show off how chat templating works!")]
SYSTEM_USER_ASSISTANT_USER = [msg("system", "You are a helpful assistant."), *USER_ASSISTANT_USER]

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

# ollama.com's smollm2 template (blob dfebd0343bdd), as quoted in the project's research notes.
SMOLLM2 = """{{- if .Messages }}
{{- if .Tools }}<|im_start|>system
You are an expert in composing functions. You are given a question and a set of possible functions.
<tools>{{ .Tools }}</tools><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>[
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}{{ end }}
]</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""  # (the tools text is shortened)


# --------------------------------------------------------------------------------- real templates
def test_chatml_with_messages():
    assert render_conversation(CHATML, "", USER_ASSISTANT_USER) == (  # Ollama's testdata/chatml.gotmpl
        "<|im_start|>user\nHello, how are you?<|im_end|>\n"
        "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n"
        "<|im_start|>user\nI'd like to show off how chat templating works!<|im_end|>\n"
        "<|im_start|>assistant\n")


OLLAMA_CHATML_EXPECTED = ("<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n"
                          "<|im_start|>user\nHello friend!<|im_end|>\n<|im_start|>assistant\nHello human!<|im_end|>\n"
                          "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("template", [
    # legacy: executed once per turn, the last one cut after {{ .Response }}
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
    "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
    # .Messages without .System: the system message is printed from .Messages
    "\n{{- range $index, $_ := .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n",
])
def test_ollamas_own_chatml_case(template: str):
    """TestExecuteWithMessages/chatml: both forms give the same prompt."""
    messages = [msg("system", "You are a helpful assistant!"), msg("user", "Hello friend!"),
                msg("assistant", "Hello human!"), msg("user", "What is your name?")]
    assert render_conversation(template, "", messages) == OLLAMA_CHATML_EXPECTED


MISTRAL_TEMPLATES = [
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ",  # no {{ .Response }}: Ollama adds one
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
    "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n{{- if eq .Role \"user\" }}"
    "{{ .Content }}[/INST] {{ else if eq .Role \"assistant\" }}{{ .Content }}[INST] {{ end }}\n{{- end }}",
]
MISTRAL_CHAT = [msg("user", "Hello friend!"), msg("assistant", "Hello human!"), msg("user", "What is your name?")]


@pytest.mark.parametrize("template", MISTRAL_TEMPLATES)
def test_ollamas_own_mistral_cases(template: str):
    """TestExecuteWithMessages/mistral and /mistral system: legacy and .Messages templates agree."""
    assert render_conversation(template, "", MISTRAL_CHAT) == \
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "
    assert render_conversation(template, "You are a helpful assistant!", MISTRAL_CHAT) == \
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "


@pytest.mark.parametrize("template", [
    "[INST] {{ .Prompt }}[/INST] ", "[INST] {{ .Prompt }}[/INST] {{ .Response }}",
    "\n{{- range $i, $m := .Messages }}\n{{- if eq .Role \"user\" }}[INST] {{ .Content }}[/INST] "
    "{{ else if eq .Role \"assistant\" }}{{ .Content }}{{ end }}\n{{- end }}",
])
def test_an_answer_begun_is_continued(template: str):
    """TestExecuteWithMessages/mistral assistant: a last assistant message is left open."""
    expected = "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"
    assert render_conversation(template, "", [*MISTRAL_CHAT, msg("assistant", "My name is Ollama and I")]) == expected
    assert render_conversation(template, "", MISTRAL_CHAT, response="My name is Ollama and I") == expected


def test_legacy_llama2_template_over_several_turns():
    template = ("[INST] <<SYS>>{{ if .System }}{{ .System }}{{ end }}<</SYS>>\n\n"
                "{{ .Prompt }} [/INST] {{ .Response }}</s>")
    assert render_conversation(template, "", SYSTEM_USER_ASSISTANT_USER) == (
        "[INST] <<SYS>>You are a helpful assistant.<</SYS>>\n\nHello, how are you? [/INST] "
        "I'm doing great. How can I help you today?</s>"
        "[INST] <<SYS>><</SYS>>\n\nI'd like to show off how chat templating works! [/INST] ")  # "</s>" cut off


def test_legacy_turns_merge_neighbours_start_on_system_and_skip_tools():
    template = "{{ if .System }}<<{{ .System }}>>{{ end }}[{{ .Prompt }}]{{ .Response }};"
    messages = [msg("user", "a"), msg("user", "b"), msg("assistant", "A"), msg("system", "s"), msg("tool", "t"),
                msg("user", "c")]
    assert render_conversation(template, "", messages) == "[a\n\nb]A;<<s>>[c]"


def test_smollm2_renders_one_user_message():
    assert render_conversation(SMOLLM2, "", [msg("user", "hi")]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_smollm2_renders_a_conversation():
    messages = [msg("user", "hi"), msg("assistant", "hello"), msg("tool", "21C"), msg("user", "and?")]
    assert render_conversation(SMOLLM2, "Be brief.", messages) == (
        "<|im_start|>system\nBe brief.\n"  # this template writes no <|im_end|> after the system text
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
        "<|im_start|>user\nand?<|im_end|>\n<|im_start|>assistant\n")
    assert render_conversation(SMOLLM2, "", [msg("user", "hi"), msg("assistant", "hel")]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhel"  # left open, to be continued


def test_the_system_argument_comes_first_unless_the_conversation_has_its_own():
    template = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}"
    assert render_conversation(template, "S", USER) == "system: S\nuser: Hello, how are you?\n"
    assert render_conversation(template, "S", SYSTEM_USER_ASSISTANT_USER).startswith(
        "system: You are a helpful assistant.\nuser: Hello")


def test_system_messages_stay_in_messages_as_in_ollama():
    """Ollama's collate puts every system text in .System *and* keeps the system messages in .Messages."""
    messages = [msg("system", "A"), msg("system", "B"), msg("user", "u1"), msg("user", "u2")]
    assert render_conversation("{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}", "",
                               messages) == "A\n\nB|system=A\n\nB;user=u1\n\nu2;"


def test_with_messages_there_is_no_prompt():
    assert render_conversation("{{ range .Messages }}{{ end }}{{ .Prompt }}", "", USER) == "<no value>"


# ------------------------------------------------------------------- the engine's default template
OPEN = "<|im_start|>assistant\n"  # where the model's answer begins


@pytest.mark.parametrize(("messages", "expected"), [
    (USER, "<|im_start|>user\nHello, how are you?<|im_end|>\n" + OPEN),
    (SYSTEM_USER_ASSISTANT_USER,
     "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n"
     "<|im_start|>assistant\nI'm doing great. How can I help you today?<|im_end|>\n"
     "<|im_start|>user\nI'd like to show off how chat templating works!<|im_end|>\n" + OPEN),
    ([msg("user", "a"), msg("user", "b")], "<|im_start|>user\na\n\nb<|im_end|>\n" + OPEN),
    ([msg("system", "A"), msg("system", "B"), *USER],
     "<|im_start|>system\nA\n\nB<|im_end|>\n<|im_start|>user\nHello, how are you?<|im_end|>\n" + OPEN),
    ([*USER, msg("assistant", "partial")],  # an answer begun is left open, to be continued
     "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\npartial"),
    ([], OPEN),
    # A tool result is a user turn, as in Ollama's smollm2 template (it once rendered as <|im_start|>tool).
    ([msg("user", "weather?"), msg("tool", "Paris: 21C"), msg("tool", "Rome: 25C")],
     "<|im_start|>user\nweather?<|im_end|>\n<|im_start|>user\n<tool_response>\nParis: 21C\n</tool_response><|im_end|>\n"
     "<|im_start|>user\n<tool_response>\nRome: 25C\n</tool_response><|im_end|>\n" + OPEN),
    # A system message goes on top; in place it keeps the user messages around it apart (Ollama's collate).
    ([msg("user", "a"), msg("system", "s"), msg("user", "b")],
     "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>user\nb<|im_end|>\n" + OPEN),
    ([msg("user", "a"), msg("assistant", "b"), msg("system", "s")],  # a message after an answer closes it
     "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n" + OPEN),
], ids=["user", "conversation", "merged", "systems", "continued", "empty", "tools", "system-between", "system-last"])
def test_the_engine_renders_exactly_what_chatml_template_gives(messages: list[dict[str, str]], expected: str):
    """What /api/show reports for a model without TEMPLATE is what the runner renders with."""
    assert render_conversation(CHATML_TEMPLATE, "", messages) == expected
    assert render("", messages) == expected
    assert render(CHATML_TEMPLATE, messages) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(msg, st.sampled_from(["system", "user", "assistant", "tool", "other"]),
                          st.sampled_from(["", "a", "b\n", "\n\n"])), max_size=8))
def test_chatml_template_renders_as_ollamas_smollm2_template(messages: list[dict[str, str]]):
    """Byte for byte, except the <|im_end|> that Ollama's template leaves out after the system text."""
    ours, theirs = render_conversation(CHATML_TEMPLATE, "", messages), render_conversation(SMOLLM2, "", messages)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    if system:
        assert theirs.startswith(f"<|im_start|>system\n{system}\n")
        theirs = f"<|im_start|>system\n{system}<|im_end|>\n" + theirs.removeprefix(f"<|im_start|>system\n{system}\n")
    assert ours == theirs


# ------------------------------------------------------------------------------ the language itself
def test_text_fields_variables_and_literals():
    assert run("Hi {{ .Name }}, {{ $.Name }} {{ .A.B }} {{ 42 }} {{ \"q\\n\" }}{{ `r\\n` }} {{ true }}",
               Name="Ann", A={"B": "deep"}) == "Hi Ann, Ann deep 42 q\nr\\n true"
    assert run("{{ .Missing }}") == "<no value>"  # what Go prints for a missing key


def test_trimming():
    assert run("a  \n {{- .X -}} \t\n b", X="x") == "axb"
    assert run("a {{- .X }} b {{ .X -}} c", X="x") == "ax b xc"
    assert run("a {{-3}} b") == "a -3 b"  # no space after "{{-": a negative number, not a trim
    assert run("a {{- /* a\nnote */ -}} b {{/* another */}}c") == "ab c"
    assert run("{{- if true }}\n  yes\n{{- end }}\n") == "\n  yes\n"


@pytest.mark.parametrize(("role", "expected"), [
    ("user", "U"), ("assistant", "A"), ("tool", "T"), ("other", "?"),
])
def test_else_if_chain(role: str, expected: str):
    template = ('{{ if eq .Role "user" }}U{{ else if eq .Role "assistant" }}A'
                '{{ else if eq .Role "tool" }}T{{ else }}?{{ end }}')
    assert run(template, Role=role) == expected


@pytest.mark.parametrize(("value", "truth"), [
    (None, False), (False, False), (0, False), ("", False), ([], False), ({}, False),
    (True, True), (1, True), ("0", True), ([0], True), ({"a": 0}, True),
])
def test_truth_is_gos(value: object, truth: bool):
    assert run("{{ if .V }}T{{ else }}F{{ end }}", V=value) == ("T" if truth else "F")


def test_range_forms_and_variables():
    values = {"L": ["a", "b", "c"], "S": "top"}
    assert run("{{ range .L }}{{ . }}{{ $.S }} {{ end }}", **values) == "atop btop ctop "
    assert run("{{ range $i, $m := .L }}{{ $i }}{{ $m }}{{ if ne $i 2 }},{{ end }}{{ end }}", **values) == "0a,1b,2c"
    assert run("{{ range $m := .L }}{{ $m }}{{ end }}", **values) == "abc"
    assert run("{{ range .E }}x{{ else }}empty{{ end }}", E=[]) == "empty"
    assert run("{{ $n := 0 }}{{ range .L }}{{ $n = . }}{{ end }}{{ $n }}", **values) == "c"
    assert run("{{ range .L }}{{ if eq . \"b\" }}{{ continue }}{{ end }}{{ . }}{{ end }}", **values) == "ac"
    assert run("{{ range .L }}{{ if eq . \"b\" }}{{ break }}{{ end }}{{ . }}{{ end }}", **values) == "a"


def test_functions():
    values = {"L": ["a", "b", "c"], "S": "héllo"}
    assert run("{{ eq 1 2 3 1 }} {{ ne \"a\" \"b\" }} {{ not 0 }} {{ len .L }} {{ len .S }}", **values) == \
        "true true true 3 6"  # len of a string counts bytes, as in Go
    assert run("{{ index .L 1 }} {{ len (slice .L 1) }} {{ index (slice .L 1 2) 0 }} {{ slice .S 0 1 }}",
               **values) == "b 2 b h"
    assert run("{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 \"\" }} {{ or 0 \"x\" 3 }}") == "0 2  x"
    assert run("{{ and .Missing .Missing.Field }}") == "<no value>"  # and stops at the first empty argument
    assert run("{{ eq .Missing \"x\" }}") == "false"
    assert run("{{ index .S 0 }} {{ index .M \"k\" }} {{ index .M \"no\" }}", S="a", M={"k": "v"}) == "97 v <no value>"


def test_printing_lists_and_maps_as_go_does():
    assert run("{{ .L }} {{ .M }} {{ .E }}", L=["a", 1, True, None], M={"b": [], "a": "x"}, E=[]) == \
        "[a 1 true <nil>] map[a:x b:[]] []"


@pytest.mark.parametrize("template", [
    '{{ eq "1" 1 }}', "{{ index .L 5 }}", "{{ slice .L 2 1 }}", "{{ len 3 }}", "{{ .L.Field }}", "{{ index .X }}",
    "{{ not 1 2 }}", "{{ range 3 }}{{ end }}",
])
def test_execution_errors(template: str):
    with pytest.raises(TemplateError):
        run(template, L=[1, 2])


def test_identifiers_are_what_ollama_looks_at():
    template = parse("{{ range $i, $_ := .Messages }}{{ $.System }}{{ if .Tools }}{{ end }}{{ end }}")
    assert template.identifiers() == {"messages", "system", "tools", "$"}  # not $i: Ollama skips declarations


# ------------------------------------------------------------------------------------------ refused
@pytest.mark.parametrize(("template", "name"), [
    ('{{ template "x" }}', "template"),
    ('{{ define "x" }}y{{ end }}', "define"),
    ('{{ block "x" . }}y{{ end }}', "block"),
    ("{{ with .System }}{{ . }}{{ end }}", "with"),
    ('{{ printf "%s" .System }}', "printf"),
    ("{{ json .Tools }}", "json"),
    ("{{ toJson .Tools }}", "toJson"),
    ("{{ lt 1 2 }}", "lt"),
    ("{{ .System | len }}", "|"),
    ("{{ .Tools.String 2 }}", "method call"),
    ("{{ (index .Messages 0).Role }}", "parenthesized"),
    ("{{ 1.5 }}", "1.5"),
    ("{{ range .Messages }}{{ else if .X }}{{ end }}", "else if"),
    ("{{ if .X }}{{ else with .Y }}{{ end }}", "else with"),
])
def test_unsupported_constructs_are_refused_by_name(template: str, name: str):
    with pytest.raises(TemplateError, match="unsupported") as error:
        parse(template)
    assert name in str(error.value)


def test_the_error_quotes_the_construct():
    with pytest.raises(TemplateError) as error:
        parse('ok {{ template "x" }}')
    assert str(error.value) == 'unsupported template construct "{{ template \\"x\\" }}"'
    with pytest.raises(TemplateError) as error:
        parse('{{ printf "%d" 1 }}')
    assert str(error.value) == 'unsupported function "printf"'


@pytest.mark.parametrize(("template", "words"), [
    ("{{ if .System }}system", ["{{ if .System }}", "{{ end }}"]),
    ("{{ range .Messages }}{{ if .X }}{{ end }}", ["{{ range .Messages }}", "{{ end }}"]),
    ("text {{ .System ", ["unclosed action"]),
    ("{{ end }}", ["unexpected {{ end }}"]),
    ("{{ else }}", ["unexpected {{ else }}"]),
    ("{{ if 1 }}{{ else }}{{ else }}{{ end }}", ["unexpected {{ else }}"]),
    ("{{/* never closed", ["unclosed comment"]),
    ("{{ /* not a comment */ }}", ["unexpected"]),
    ("{{ $undeclared }}", ['undefined variable "$undeclared"']),
    ("{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}", ['undefined variable "$x"']),
    ("{{ }}", ["missing value"]),
    ("{{ eq (len .X 1 }}", ["unclosed left paren"]),
    ('{{ "unterminated }}', ["unexpected"]),
    ("{{ break }}", ["{{ break }}"]),
    ("line 1\n{{ if .X }}", ["line 2"]),
])
def test_syntax_errors(template: str, words: list[str]):
    with pytest.raises(TemplateError) as error:
        parse(template)
    for word in words:
        assert word in str(error.value)


def test_a_response_before_an_else_fails_as_in_ollama():
    """Ollama's cut after {{ .Response }} panics when an {{ else }} follows it in the same if (HTTP 500)."""
    template = "{{ .Prompt }}{{ if .Response }}{{ .Response }}{{ else }}...{{ end }}"
    with pytest.raises(TemplateError, match="Response"):
        render_conversation(template, "", USER)


# ------------------------------------------------------------------------- limits (any client may send a template)
LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""  # the shape of ollama.com's llama3.1 template, without its tools part
LEGACY_CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                 "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
                 "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
CHAT_48 = [msg("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(48)]


def nested_ranges(body: str, depth: int = 4) -> str:
    return "{{ range $.Messages }}" * depth + body + "{{ end }}" * depth


class CountingStr(str):
    """A template that adds up how many characters its find() and count() calls look through."""

    scanned = 0

    def find(self, sub: str, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
        found = super().find(sub, start, len(self) if end is None else end)
        CountingStr.scanned += (len(self) if found < 0 else found + len(sub)) - start
        return found

    def count(self, sub: str, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
        CountingStr.scanned += (len(self) if end is None else end) - start
        return super().count(sub, start, len(self) if end is None else end)


def test_a_template_past_the_size_limit_is_refused():
    assert parse("x" * MAX_TEMPLATE_BYTES).execute({}) == "x" * MAX_TEMPLATE_BYTES
    for template in ["x" * (MAX_TEMPLATE_BYTES + 1), "é" * (MAX_TEMPLATE_BYTES // 2 + 1), "{{ .X }}" * 10**6]:
        with pytest.raises(TemplateError, match="too large") as error:
            parse(template)
        assert f"the limit is {MAX_TEMPLATE_BYTES:,} bytes" in str(error.value)


@pytest.mark.parametrize("template", [None, 3, ["{{ .X }}"]])
def test_a_template_that_is_not_a_string_is_refused(template: object):
    with pytest.raises(TemplateError, match="string"):
        parse(template)  # type: ignore[arg-type]


def test_the_lexer_reads_each_character_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch):
    """Counting the lines from the start for each action made parsing quadratic (1.3 MB: 23 s)."""
    monkeypatch.setattr(gotemplate, "MAX_TEMPLATE_BYTES", 1 << 22)
    source = CountingStr("{{ .System }}x\n" * 70_000 + "{{ if")  # about 1 MB; the error needs the line number
    CountingStr.scanned = 0
    with pytest.raises(TemplateError, match="line 70001"):
        parse(source)
    assert CountingStr.scanned < 3 * len(source)


@pytest.mark.timeout(20)  # a sanity bound only: each takes well under a second; quadratic parsing took minutes
@pytest.mark.parametrize("template", [
    "{{ .System }}x\n" * 70_000,
    "a {{- .X -}} b\n" * 70_000,
    "{{ if .X }}y{{ else }}z{{ end }}" * 35_000,
    "".join(f"{{{{ $v{i} := 1 }}}}" for i in range(30_000)) + "{{ $v0 }}" * 30_000,  # many variables in scope
    "{{ and" + " 1" * 500_000 + " }}",
    "{{" + " " * 1_000_000 + ".X }}",
    "x" * 1_000_000, "{{/* note */}}" * 70_000,
])
def test_parsing_a_megabyte_is_linear(template: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(gotemplate, "MAX_TEMPLATE_BYTES", 1 << 22)
    assert parse(template).source == template


@pytest.mark.parametrize("nest", [
    lambda n: "{{ if 1 }}" * n + "{{ end }}" * n,
    lambda n: "{{ range $.L }}" * n + "{{ end }}" * n,
    lambda n: "{{ len " + "(" * n + "slice .L" + ")" * n + " }}",
    lambda n: "{{ if 0 }}" + "{{ else if 0 }}" * (n - 1) + "{{ else }}ok{{ end }}",
], ids=["if", "range", "parentheses", "else if"])
def test_nesting_up_to_the_limit_is_fine_and_one_more_is_refused(nest: Callable[[int], str]):
    parse(nest(MAX_DEPTH)).execute({"L": [1]})  # and no RecursionError
    with pytest.raises(TemplateError, match=f"nested too deeply \\(more than {MAX_DEPTH} levels"):
        parse(nest(MAX_DEPTH + 1))


@pytest.mark.timeout(20)  # a sanity bound only: the budget stops it within a second
def test_a_nested_range_bomb_runs_out_of_steps():
    """48 ** 4 = 5.3 million turns used to run for 16 s; the budget stops it at MAX_STEPS."""
    budget = Budget()
    with pytest.raises(TemplateError, match=f"too much work: more than {MAX_STEPS:,} steps"):
        render_conversation(nested_ranges("{{ if eq .Role \"user\" }}{{ end }}"), "", CHAT_48, budget=budget)
    assert budget.steps == MAX_STEPS + 1


@pytest.mark.parametrize("body", [
    "{{ continue }}", "{{ $x := (not (not (not .Content))) }}", "{{ $x := slice $.Messages 0 }}",
    "{{ $x := $.Messages }}", "{{ range . }}{{ end }}",
])
def test_every_kind_of_work_is_paid_for(body: str):
    with pytest.raises(TemplateError, match="too much work"):
        render_conversation(nested_ranges(body), "", CHAT_48, budget=Budget(max_steps=100_000))


@pytest.mark.parametrize(("template", "values", "least"), [
    ("{{ slice .L 1 }}", {"L": list(range(256 * 100))}, 100),  # copying a list
    ("{{ len .S }}", {"S": "é" * 256 * 100}, 100),  # a string is measured in bytes: it is encoded
    ("{{ eq .S .S }}", {"S": "x" * 256 * 100}, 100),
    ("{{ .L }}", {"L": list(range(1000))}, 1000),  # printing a list prints each item
])
def test_big_values_cost_steps_in_proportion(template: str, values: dict[str, object], least: int):
    budget = Budget()
    parse(template).execute(values, budget=budget)
    assert budget.steps >= least


@pytest.mark.timeout(20)
def test_an_output_bomb_runs_out_of_output():
    budget = Budget()
    with pytest.raises(TemplateError, match=f"too much work: its output passes {MAX_OUTPUT_CHARS:,} characters"):
        render_conversation(nested_ranges("{{ $.System }}", 2), "S" * 100_000, CHAT_48, budget=budget)
    assert budget.output <= MAX_OUTPUT_CHARS + 100_000  # it stopped at the first write past the limit


def test_a_budget_can_be_smaller_and_is_shared_by_the_turns_of_a_legacy_template():
    with pytest.raises(TemplateError, match="more than 10 steps"):
        parse("{{ range .L }}{{ . }}{{ end }}").execute({"L": list(range(10))}, budget=Budget(max_steps=10))
    with pytest.raises(TemplateError, match="output passes 5 characters"):
        parse("{{ .S }}").execute({"S": "123456"}, budget=Budget(max_output=5))
    turns = [msg("user" if i % 2 == 0 else "assistant", "x") for i in range(100)]  # 50 executions
    assert render_conversation(LEGACY_CHATML, "", turns, budget=Budget(max_steps=2000))
    with pytest.raises(TemplateError, match="too much work"):
        render_conversation(LEGACY_CHATML, "", turns, budget=Budget(max_steps=500))  # each turn alone fits


@pytest.mark.timeout(20)
@pytest.mark.parametrize("template", [CHATML, SMOLLM2, LLAMA3, LEGACY_CHATML, MISTRAL_TEMPLATES[2], CHATML_TEMPLATE])
def test_a_long_conversation_renders_well_within_the_budget(template: str):
    messages = [msg("user" if i % 2 == 0 else "assistant", f"Message number {i}. " * 20) for i in range(2000)]
    budget = Budget()
    prompt = render_conversation(template, "Be brief.", messages, budget=budget)
    assert "Message number 0. " in prompt and "Message number 1999. " in prompt
    assert budget.steps < MAX_STEPS // 10 and budget.output < MAX_OUTPUT_CHARS // 10


@pytest.mark.timeout(20)
def test_many_neighbours_of_one_role_are_merged_in_linear_time():
    prompt = render_conversation(CHATML, "", [msg("user", "x" * 1000)] * 20_000)  # 20 MB: merging was quadratic
    assert prompt.count("\n\n") == 19_999
