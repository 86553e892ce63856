"""Modelfiles: read as Ollama's parser/parser.go reads them, written back, sent as /api/create JSON.

Many expected values come straight from Ollama's parser/parser_test.go.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import ollama
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from llm_experiment.modelfile import Modelfile, ModelfileError, parse, render, to_create_request
from llm_experiment.protocol import OPTION_TYPES

# Ollama's parser/parser.go, word for word (it learnt DRAFT, RENDERER, PARSER and REQUIRES in 2025).
BAD_INSTRUCTION = ('command must be one of "from", "license", "template", "system", "adapter", "draft", "renderer", '
                   '"parser", "parameter", "message", or "requires"')
BAD_ROLE = 'message role must be one of "system", "user", or "assistant"'


def system_of(value_text: str) -> str | None:
    return parse(f"FROM x\nSYSTEM {value_text}\n").system


def error_of(text: str) -> ModelfileError:
    with pytest.raises(ModelfileError) as caught:
        parse(text)
    return caught.value


# Every instruction -----------------------------------------------------------------------------

EVERYTHING = '''
# a comment, then every instruction in lower, upper and mixed case
from smollm2:135m
   # an indented comment
PARAMETER temperature 0.7
parameter stop "<|im_end|>"
Parameter stop """
User:"""
PARAMETER num_ctx 4096
PARAMETER use_mmap True
SYSTEM You are terse. # not a comment: "#" only starts one at the start of a line
template """{{ if .System }}{{ .System }}
# still the template
{{ end }}{{ .Prompt }}"""
ADAPTER ./lora.gguf
LICENSE MIT
license """Apache
2.0"""
MESSAGE user Hi
message assistant "Hello
there"
'''


def test_every_instruction():
    assert parse(EVERYTHING) == Modelfile(
        from_="smollm2:135m",
        parameters={"temperature": 0.7, "stop": ["<|im_end|>", "\nUser:"], "num_ctx": 4096, "use_mmap": True},
        template="{{ if .System }}{{ .System }}\n# still the template\n{{ end }}{{ .Prompt }}",
        system='You are terse. # not a comment: "#" only starts one at the start of a line',
        adapters=["./lora.gguf"],
        license=["MIT", "Apache\n2.0"],
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello\nthere"}],
    )


def test_the_newer_instructions():
    mf = parse("FROM qwen3:0.6b\nRENDERER qwen3-coder\nPARSER qwen3-coder\nREQUIRES 0.14.0\nDRAFT ./draft.gguf\n")
    assert (mf.renderer, mf.parser, mf.requires, mf.draft) == ("qwen3-coder", "qwen3-coder", "0.14.0", "./draft.gguf")
    assert parse("FROM x\nREQUIRES v1.2\n").requires == "1.2"  # Go's semver: "v" optional, minor and patch too
    assert parse("FROM x\nREQUIRES 1.2.3-rc.1+build.5\n").requires == "1.2.3-rc.1+build.5"
    for wrong in ("latest", "1.2.3.4", "01.2.3", "1.2-rc"):
        error = error_of(f"FROM x\nREQUIRES {wrong}\n")
        assert (error.message, error.line) == ("requires must be a valid semver (e.g. 0.14.0)", 2)
    body = to_create_request(parse("FROM x\nRENDERER r\nPARSER p\nREQUIRES 0.14.0\n"), "m")
    assert body == {"model": "m", "from": "x", "renderer": "r", "parser": "p", "requires": "0.14.0"}
    with pytest.raises(ValueError, match="draft.gguf"):  # a draft model is a file to upload first
        to_create_request(parse("FROM x\nDRAFT ./draft.gguf\n"), "m")


def test_the_smallest_modelfile():
    assert parse("FROM llama3:7b-instruct-q4_K_M") == Modelfile(from_="llama3:7b-instruct-q4_K_M", parameters={})


@pytest.mark.parametrize("keyword", ["FROM", "from", "From", "fRoM"])
def test_keywords_ignore_case(keyword):
    assert parse(f"{keyword} foo").from_ == "foo"


def test_instructions_in_any_order():
    mf = parse("SYSTEM s\nPARAMETER top_k 1\nMESSAGE user hi\nFROM foo\n")
    assert (mf.from_, mf.system, mf.parameters, mf.messages) == ("foo", "s", {"top_k": 1}, [
        {"role": "user", "content": "hi"}])


def test_a_later_from_template_system_or_parameter_wins_stop_and_license_add_up():
    mf = parse("FROM a\nFROM b\nSYSTEM one\nSYSTEM two\nPARAMETER top_k 1\nPARAMETER top_k 2\n"
               "PARAMETER stop x\nPARAMETER stop y\nPARAMETER stop x\nLICENSE l1\nLICENSE l2\n")
    assert (mf.from_, mf.system) == ("b", "two")
    assert mf.parameters == {"top_k": 2, "stop": ["x", "y", "x"]}
    assert mf.license == ["l1", "l2"]


def test_comments_and_blank_lines():
    assert parse("\n# comment\n\t  # indented comment\n\nFROM foo\n\t\n# last") == Modelfile("foo", {})


def test_bare_values_run_to_the_end_of_the_line_without_surrounding_blanks():
    assert parse("FROM     FOOO BAR    ").from_ == "FOOO BAR"
    assert parse("FROM /what/is/the path \n").from_ == "/what/is/the path"
    assert system_of("\t two  words\there \t") == "two  words\there"
    assert system_of('say "hi" # twice') == 'say "hi" # twice'


def test_windows_line_endings():
    mf = parse('FROM foo\r\nSYSTEM """one\r\ntwo"""\r\nPARAMETER stop end\r\n')
    assert (mf.system, mf.parameters) == ("one\r\ntwo", {"stop": ["end"]})


def test_a_byte_order_mark_is_ignored():
    assert parse("\ufeff# saved by Notepad\nFROM foo").from_ == "foo"


GO_QUOTES = """''"'""'""'"'''''""'""'"""  # from parser_test.go: both kinds of quote inside """..."""


@pytest.mark.parametrize(("written", "value"), [
    ('"""\nThis is a\nmultiline system.\n"""', "\nThis is a\nmultiline system.\n"),
    ('"""\nThis is a\nmultiline system."""', "\nThis is a\nmultiline system."),
    ('"""This is a\nmultiline system."""', "This is a\nmultiline system."),
    ('"""This is a multiline system."""', "This is a multiline system."),
    ('"""\nThis is a multiline system with "quotes".\n"""', '\nThis is a multiline system with "quotes".\n'),
    ('"one\ntwo\n\nthree"', "one\ntwo\n\nthree"),
    ('"""  padded  """   ', "  padded  "),
    ('""""""', ""),
    ('""', ""),
    ('"\'"', "'"),
    ('"""' + GO_QUOTES + '"""', GO_QUOTES),
    ('"a" b\nc"', 'a" b\nc'),  # a value only ends at a line break: here the second one
    ('""""quoted""""', '"quoted"'),
])
def test_quoted_values(written, value):
    assert system_of(written) == value


def test_quotes_keep_surrounding_blanks_from_parser_test_go():
    mf = parse('FROM "     model 1"\nLICENSE "MIT       "\nPARAMETER stop "### User: "\nPARAMETER stop ### User: \n')
    assert (mf.from_, mf.license) == ("     model 1", ["MIT       "])
    assert mf.parameters["stop"] == ["### User: ", "### User:"]


def test_control_characters_are_dropped_as_in_ollama():
    assert system_of("a\x00b\u200bc\u00a0d") == "abcd"


# Parameters --------------------------------------------------------------------------------------

SAMPLE = {"int": ("1", 1), "float32": ("1.0", 1.0), "bool": ("true", True), "[]string": ("</s>", ["</s>"])}


@pytest.mark.parametrize("name", sorted(OPTION_TYPES))
def test_every_parameter_gets_its_type(name):
    text, expected = SAMPLE[OPTION_TYPES[name]]
    value = parse(f"FROM foo\nPARAMETER {name} {text}").parameters[name]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("text", "value"), [
    ("42", 42), ("-1", -1), ("+7", 7), ("007", 7), ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -2**63),
])
def test_ints_as_go_parses_them(text, value):
    assert parse(f"FROM x\nPARAMETER num_ctx {text}").parameters["num_ctx"] == value


@pytest.mark.parametrize(("text", "value"), [
    ("0.7", 0.7), ("1", 1.0), ("1.", 1.0), (".5", 0.5), ("-2.5e-3", -0.0025), ("1E2", 100.0), ("1_000.5", 1000.5),
    ("0x1.8p1", 3.0), ("0x_1p-2", 0.25), ("1e-50", 0.0), ("3.4028235e38", 3.4028235e38),
    ("0.123456789", 0.12345679),  # float32 holds ~7 digits; Ollama sends 0.12345679
])
def test_floats_as_go_parses_them_and_json_writes_them(text, value):
    assert parse(f"FROM x\nPARAMETER temperature {text}").parameters["temperature"] == value


@pytest.mark.parametrize(("text", "value"), [(t, True) for t in ["1", "t", "T", "TRUE", "true", "True"]]
                         + [(f, False) for f in ["0", "f", "F", "FALSE", "false", "False"]])
def test_bools_as_go_parses_them(text, value):
    assert parse(f"FROM x\nPARAMETER use_mmap {text}").parameters["use_mmap"] is value


@pytest.mark.parametrize(("name", "text", "message"), [
    ("num_ctx", "1.0", "invalid int value [1.0]"),
    ("num_ctx", "1e3", "invalid int value [1e3]"),
    ("num_ctx", "1_000", "invalid int value [1_000]"),
    ("num_ctx", "0x10", "invalid int value [0x10]"),
    ("num_ctx", "٣", "invalid int value [٣]"),  # Python's int() would take an Arabic-Indic 3; Go does not
    ("seed", "9223372036854775808", "invalid int value [9223372036854775808]"),
    ("top_k", "forty two", "invalid int value [forty two]"),
    ("temperature", "hot", "invalid float value [hot]"),
    ("temperature", "1,5", "invalid float value [1,5]"),
    ("temperature", "1e39", "invalid float value [1e39]"),  # beyond float32
    ("temperature", "nan", "invalid float value [nan]"),
    ("temperature", "inf", "invalid float value [inf]"),
    ("temperature", "1__0", "invalid float value [1__0]"),
    ("temperature", "_1", "invalid float value [_1]"),
    ("temperature", "0x1.8", "invalid float value [0x1.8]"),  # a hex float needs its p exponent
    ("top_p", "", "invalid float value []"),
    ("use_mmap", "yes", "invalid bool value [yes]"),
    ("use_mmap", "TRue", "invalid bool value [TRue]"),
])
def test_wrong_values_fail_with_ollamas_words(name, text, message):
    error = error_of(f"FROM x\n\nPARAMETER {name} {text}\n")
    assert (error.line, error.message, str(error)) == (3, message, f"line 3: {message}")


# Errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "message"), [
    ("\nFROM foo\nBADCOMMAND param1 value1\n", 3, BAD_INSTRUCTION),  # parser_test.go: line 3
    ("FROM foo\nFROM\n", 2, BAD_INSTRUCTION),  # a keyword must be followed by a blank
    ("FROM foo\nSYSTEM: hi\n", 2, BAD_INSTRUCTION),
    ('"FROM" foo', 1, BAD_INSTRUCTION),
    ("FROM foo\nPARAMETER foo 1", 2, "unknown parameter 'foo'"),
    ("FROM foo\nPARAMETER Temperature 1", 2, "unknown parameter 'Temperature'"),  # names are case-sensitive
    ("FROM foo\nPARAMETER num_gqa 1", 2, "unknown parameter 'num_gqa'"),
    ('\nFROM foo\nMESSAGE badguy I\'m a bad guy!\n', 3, BAD_ROLE),
    ("FROM foo\nMESSAGE User hi", 2, BAD_ROLE),  # roles are case-sensitive
    ("FROM foo\nMESSAGE tool hi", 2, BAD_ROLE),
    ('FROM foo\nSYSTEM "', 2, "unexpected EOF"),
    ('FROM foo\nSYSTEM "unclosed\nstill\nopen', 2, "unexpected EOF"),
    ('FROM foo\n\nTEMPLATE """{{ .Prompt }}\n"" not closed\n', 3, "unexpected EOF"),
    ('FROM foo\nSYSTEM """This is a multiline system.""\n', 2, "unexpected EOF"),
    ("FROM foo\nSYS", 2, "unexpected EOF"),  # the text ends inside a keyword
    ("FROM foo\nMESSAGE system", 2, "unexpected EOF"),
    ("FROM foo\nMESSAGE system\n", 2, "unexpected EOF: system"),  # Ollama adds what it had read
    ("FROM foo\nPARAMETER param1\n", 2, "unexpected EOF: param1"),
    ("FROM foo\nPARAMETER top-k 1\n", 2, "unexpected EOF: top"),
])
def test_errors_give_ollamas_message_and_the_instructions_line(text, line, message):
    error = error_of(text)
    assert (error.line, error.message, str(error)) == (line, message, f"line {line}: {message}")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("text", ["", "\n\n# only a comment\n", "PARAMETER top_k 1", "SYSTEM hi\nTEMPLATE t\n"])
def test_no_from_line(text):
    error = error_of(text)
    assert (error.line, error.message, str(error)) == (None, "no FROM line", "no FROM line")


def test_errors_come_in_ollamas_order():
    # mistakes in the text first, then the missing FROM, then parameter values (Ollama checks those last)
    assert error_of("PARAMETER top_k x\nBAD\n").message == BAD_INSTRUCTION
    assert error_of("PARAMETER top_k x\n").message == "no FROM line"
    assert error_of("FROM a\nPARAMETER top_k x\nPARAMETER foo 1\n").message == "invalid int value [x]"


def test_line_numbers_count_windows_line_breaks_once():
    assert error_of("FROM a\r\n\r\nSYSTEM hi\r\nBAD x\r\n").line == 4


# Writing back ----------------------------------------------------------------------------------------

def test_render_is_plain_where_it_can_be():
    mf = Modelfile(from_="smollm2:135m",
                   parameters={"temperature": 0.2, "stop": ["<|im_end|>", "\n"], "use_mmap": False},
                   template="{{ .Prompt }}\n", system='Say "hi".', license=["MIT"],
                   messages=[{"role": "user", "content": " padded "}])
    assert render(mf) == (
        'FROM smollm2:135m\n'
        'TEMPLATE """{{ .Prompt }}\n"""\n'
        'SYSTEM Say "hi".\n'
        'PARAMETER temperature 0.2\n'
        'PARAMETER stop <|im_end|>\n'
        'PARAMETER stop """\n"""\n'
        'PARAMETER use_mmap false\n'
        'MESSAGE user " padded "\n'
        'LICENSE MIT\n'
    )
    assert parse(render(mf)) == mf


@pytest.mark.parametrize("value", ["", " ", '"', '"""', '""x', 'x"\ny', '""x\ny"', '"a"', "a\r\nb", "\n"])
def test_render_quotes_what_needs_quotes(value):
    mf = Modelfile(from_="m", parameters={}, system=value, messages=[{"role": "system", "content": value}])
    assert parse(render(mf)) == mf


def test_render_refuses_what_no_modelfile_can_say():
    # a line ending in a quote before a line break would close "..." early, one ending in """ would close """..."""
    with pytest.raises(ValueError, match="cannot be written in a Modelfile"):
        render(Modelfile(from_="m", parameters={}, system='one"""\ntwo'))


# /api/create ---------------------------------------------------------------------------------------------

def test_create_request_as_ollama_create_sends_it():
    # parser_test.go TestCreateRequest: License []string{"license1", "license2"},
    # Parameters {"temperature": float32(0.5), "top_k": int64(1)}
    mf = parse("FROM test\nPARAMETER temperature 0.5\nPARAMETER top_k 1\nSYSTEM You are a bot.\nLICENSE license1\n"
               "LICENSE license2\nMESSAGE user Hello there!\nMESSAGE assistant Hi! How are you?\n")
    assert to_create_request(mf, "bot") == {
        "model": "bot",
        "from": "test",
        "system": "You are a bot.",
        "parameters": {"temperature": 0.5, "top_k": 1},
        "messages": [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi! How are you?"}],
        "license": ["license1", "license2"],
    }


def test_create_request_leaves_out_empty_fields():
    assert to_create_request(parse("FROM test\nSYSTEM \"\"\n"), "m") == {"model": "m", "from": "test"}


def test_create_request_is_a_copy():
    mf = parse("FROM test\nPARAMETER stop a\nMESSAGE user hi\nLICENSE l\n")
    body = to_create_request(mf, "m")
    body["parameters"]["stop"].append("b")
    body["messages"][0]["content"] = "changed"
    body["license"].append("l2")
    assert mf == parse("FROM test\nPARAMETER stop a\nMESSAGE user hi\nLICENSE l\n")


@pytest.mark.parametrize("text", ["FROM ./model.gguf", "FROM /models/x.gguf", "FROM ~/m.gguf", "FROM .",
                                  "FROM base\nADAPTER lora"])
def test_create_request_refuses_local_files(text):
    with pytest.raises(ValueError, match="POST /api/blobs"):
        to_create_request(parse(text), "m")


def sent_by_ollama_python(**kwargs) -> dict:
    """The JSON body the official client's create() sends, caught before it leaves the process."""
    bodies = []

    def reply(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "success"})

    ollama.Client(host="http://ollama.invalid:11434", transport=httpx.MockTransport(reply)).create(**kwargs)
    (body,) = bodies
    assert body.pop("stream") is False
    return body


def test_create_request_matches_the_official_client():
    mf = parse(EVERYTHING.replace("ADAPTER ./lora.gguf\n", ""))
    body = to_create_request(mf, "terse")
    assert body == sent_by_ollama_python(
        model="terse", from_=mf.from_, template=mf.template, system=mf.system, parameters=mf.parameters,
        messages=mf.messages, license=mf.license)


# Properties ----------------------------------------------------------------------------------------------

# Characters Ollama keeps (letters, marks, numbers, punctuation, symbols) and the ones that matter to it.
CHARS = st.characters(categories=["L", "M", "N", "P", "S"]) | st.sampled_from(' \t\n\r"#')
TEXTS = st.text(CHARS, max_size=20)


def ollama_can_produce(value: str) -> bool:
    """Whether any Modelfile line reads as ``value``, by the rules of Ollama's parser.

    Bare, a value has no line break, no blank at either end, and does not start with a quote.
    Quoted, a line break inside it ends it early when the text before the break (trailing blanks
    aside) already ends with the closing quote; and a value starting with two quotes cannot go
    in "..." (three quotes in a row open \"\"\"...\"\"\").
    """
    if not all(char.isprintable() or char in " \t\r\n" for char in value):
        return False
    if value and value == value.strip(" \t\r\n") and not value.startswith('"') and not set("\r\n") & set(value):
        return True
    cuts = [value[:i].rstrip(" \t\r\n") for i, char in enumerate(value) if char in "\r\n"]
    single = not value.startswith('""') and not any(cut.endswith('"') for cut in cuts)
    triple = not any(cut.endswith('"""') for cut in cuts)
    return single or triple


VALUES = TEXTS.filter(ollama_can_produce)
# Floats as a parsed Modelfile holds them: a float32, in the shortest form Go's JSON (and numpy) writes it.
FLOAT32S = st.floats(width=32, allow_nan=False, allow_infinity=False).map(lambda f: float(str(np.float32(f))))
BY_TYPE = {"int": st.integers(-(2**63), 2**63 - 1), "float32": FLOAT32S, "bool": st.booleans(),
           "[]string": st.lists(VALUES, min_size=1, max_size=3)}
MODELFILES = st.builds(
    Modelfile,
    from_=VALUES,
    parameters=st.lists(st.sampled_from(sorted(OPTION_TYPES)), unique=True, max_size=6).flatmap(
        lambda names: st.fixed_dictionaries({name: BY_TYPE[OPTION_TYPES[name]] for name in names})),
    template=st.none() | VALUES,
    system=st.none() | VALUES,
    adapters=st.lists(VALUES, max_size=2),
    license=st.lists(VALUES, max_size=2),
    messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                             "content": VALUES}), max_size=3),
    draft=st.none() | VALUES,
    renderer=st.none() | VALUES,
    parser=st.none() | VALUES,
    requires=st.none() | st.from_regex(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){0,2}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(MODELFILES)
def test_parse_reads_back_what_render_writes(mf):
    assert parse(render(mf)) == mf


@settings(max_examples=100, deadline=None)
@given(MODELFILES, st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}(:[a-z0-9._-]{1,10})?", fullmatch=True))
def test_create_request_is_what_the_official_client_sends(mf, model):
    mf.adapters.clear()  # files must be uploaded first; refused, see above
    mf.draft = mf.renderer = mf.parser = mf.requires = None  # fields the official client cannot send
    mf.from_ = "base-" + mf.from_  # a model name, not a path
    assert to_create_request(mf, model) == sent_by_ollama_python(
        model=model, from_=mf.from_, template=mf.template or None, system=mf.system or None,
        parameters=mf.parameters or None, messages=mf.messages or None, license=mf.license or None)


@settings(max_examples=300, deadline=None)
@given(TEXTS)
def test_render_writes_exactly_the_values_ollama_can_read(value):
    mf = Modelfile(from_="m", parameters={"stop": [value]}, system=value)
    if ollama_can_produce(value):
        assert parse(render(mf)) == mf
    else:
        event("refused")
        with pytest.raises(ValueError):
            render(mf)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-3.4e38, max_value=3.4e38))
def test_floats_become_the_float32_go_would_send(number):
    value = parse(f"FROM x\nPARAMETER top_p {number!r}").parameters["top_p"]
    assert value == float(str(np.float32(number)))  # numpy rounds to float32 and writes it shortest, as Go


def check_parse_outcome(text: str) -> Modelfile | None:
    """``parse`` returns a Modelfile or raises ModelfileError with a sensible line; nothing else."""
    try:
        mf = parse(text)
    except ModelfileError as error:
        event(f"error: {error.message[:20]}")
        assert error.line is None or 1 <= error.line <= text.count("\n") + text.count("\r") + 1
        return None
    event("parsed")
    return mf


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_or_raises_modelfile_error(text):
    check_parse_outcome(text)


def case_mixes(word: str) -> st.SearchStrategy[str]:
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(word))
    return st.sampled_from([word, word.upper(), word.capitalize(), mixed])


FRAGMENTS = st.sampled_from([
    "FROM", "from", "PARAMETER", "SYSTEM", "TEMPLATE", "ADAPTER", "LICENSE", "MESSAGE", "message", "BOGUS",
    " ", "  ", "\t", "\n", "\r\n", "\r", '"', '"""', "#", "user", "assistant", "system", "bob", "temperature",
    "stop", "num_ctx", "use_mmap", "top-k", "0.5", "-1", "1e39", "true", "x", "smollm2:135m", "é", "👋",
    "\x00", "\ufeff", "\u00a0", "{{ .Prompt }}",
])
VALUE_FORMS = st.one_of(TEXTS, TEXTS.map(lambda v: f'"{v}"'), TEXTS.map(lambda v: f'"""{v}"""'))
PARAMETER_LINES = st.sampled_from(sorted(OPTION_TYPES)).flatmap(
    lambda name: st.tuples(st.just(name), BY_TYPE[OPTION_TYPES[name]].map(str) | VALUE_FORMS)
).map(lambda pair: f"{pair[0]} {pair[1]}")
LINES = st.one_of(
    st.tuples(st.sampled_from(["from", "template", "system", "adapter", "license"]).flatmap(case_mixes),
              VALUE_FORMS).map(" ".join),
    st.tuples(case_mixes("parameter"), PARAMETER_LINES).map(" ".join),
    st.tuples(case_mixes("message"), st.sampled_from(["system", "user", "assistant"]), VALUE_FORMS).map(" ".join),
    TEXTS.map(lambda v: "#" + v),
)
MODELFILE_LIKE_TEXTS = st.builds(lambda lines, newline: newline.join(["FROM base", *lines]),
                                 st.lists(LINES, max_size=6), st.sampled_from(["\n", "\r\n"]))


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS | st.text(max_size=3), max_size=20).map("".join))
def test_keyword_soup_parses_or_raises_modelfile_error(text):
    check_parse_outcome(text)


@settings(max_examples=300, deadline=None)
@given(MODELFILE_LIKE_TEXTS)
def test_whatever_parse_returns_render_writes_back(text):
    mf = check_parse_outcome(text)
    if mf is not None:
        assert parse(render(mf)) == mf
