"""Go templates as Ollama uses them: the supported subset, what is refused, and the prompt Ollama builds."""

from __future__ import annotations

import pytest

from llm_experiment.engine.gotemplate import TemplateError, parse, render_conversation
from llm_experiment.engine.prompt import CHATML_TEMPLATE, render_chatml


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


@pytest.mark.parametrize("messages", [
    USER, USER_ASSISTANT_USER, SYSTEM_USER_ASSISTANT_USER, [msg("user", "a"), msg("user", "b")],
    [msg("system", "A"), msg("system", "B"), *USER], [*USER, msg("assistant", "partial")], [],
])
def test_chatml_template_renders_as_render_chatml(messages: list[dict[str, str]]):
    assert render_conversation(CHATML_TEMPLATE, "", messages) == render_chatml(messages)


@pytest.mark.parametrize("messages", [
    pytest.param([msg("user", "weather?"), msg("tool", "Paris: 21C")], marks=pytest.mark.xfail(
        strict=True, reason="CHATML_TEMPLATE prints .Role, <|im_start|>tool; render_chatml writes <|im_start|>user")),
    pytest.param([msg("user", "a"), msg("system", "s"), msg("user", "b")], marks=pytest.mark.xfail(
        strict=True, reason="Ollama's collate keeps the system message between the two user messages, so they "
                            "stay apart; render_chatml drops it first and merges them")),
])
def test_chatml_template_and_render_chatml_still_differ_on(messages: list[dict[str, str]]):
    assert render_conversation(CHATML_TEMPLATE, "", messages) == render_chatml(messages)


# This variant also writes tool results as render_chatml does.
CHATML_TOOL_AS_USER = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ if eq .Role "tool" }}user{{ else }}{{ .Role }}{{ end }}
{{ .Content }}<|im_end|>
{{ end }}{{ end }}<|im_start|>assistant
"""


@pytest.mark.parametrize("messages", [
    SYSTEM_USER_ASSISTANT_USER, [msg("user", "weather?"), msg("tool", "Paris: 21C"), msg("tool", "Rome: 25C")],
])
def test_a_chatml_template_writing_tool_results_as_user_matches_render_chatml(messages: list[dict[str, str]]):
    assert render_conversation(CHATML_TOOL_AS_USER, "", messages) == render_chatml(messages)


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
