"""The part of Go's template language that Ollama model templates use, and how Ollama renders a chat with it.

An Ollama model's TEMPLATE says how a conversation becomes the one string the model reads. It is
written in Go's ``text/template`` language (https://pkg.go.dev/text/template). This module reads
such a template and renders a conversation the way Ollama's server does (``template/template.go``
in ollama/ollama), so a model created with a custom TEMPLATE sees here what it would see there.

Understood: text, ``{{ .Field }}``, ``{{ $.Field }}``, ``{{ $var }}``, ``{{ $var := ... }}``,
if / else if / else / end, range / else / end (also ``range $i, $m := ...``), break and continue,
``{{-`` and ``-}}`` (which trim the whitespace before / after), comments ``{{/* */}}``, string and
integer literals, true / false / nil, parentheses, and the functions eq, ne, and, or, not, len,
slice and index. Anything else (with, template, define, block, printf, json, "|" pipelines, method
calls...) raises TemplateError when the template is *parsed*, so a model can be refused when it is
created rather than be sent a wrongly rendered prompt later.

``parse(text)`` gives a Template; ``Template.execute(values)`` runs it on a dict. ``render_conversation``
builds the prompt of a chat exactly as Ollama does (see its docstring).

A template may come from any client (POST /api/create), so none is trusted: ``parse`` refuses one
longer than MAX_TEMPLATE_BYTES or nested deeper than MAX_DEPTH, and an execution stops with
TemplateError past MAX_STEPS steps or MAX_OUTPUT_CHARS characters of output (see Budget).
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections import namedtuple
from typing import Any

SPACE = " \t\r\n"  # what {{- and -}} remove (Go's idea of space)
# Limits for templates from untrusted clients. Ollama's own templates are under 10 KB, nest under 10 deep,
# and render a chat of 2,000 messages in under a tenth of these steps and output.
MAX_TEMPLATE_BYTES = 64 * 1024  # the longest template parse() accepts, in UTF-8 bytes
MAX_DEPTH = 100  # the deepest nesting of if, else if, range and parentheses parse() accepts
MAX_STEPS = 1_000_000  # the most steps one rendering may take (under a second of work)
MAX_OUTPUT_CHARS = 32 * 1024 * 1024  # the longest text one rendering may write: far past any context window
_UNITS_PER_STEP = 256  # copying or comparing this many list items or string bytes costs one step more
KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
# The supported functions, with their (fewest, most) arguments; 99 means any number.
ARITY = {"eq": (2, 99), "ne": (2, 2), "and": (1, 99), "or": (1, 99), "not": (1, 1), "len": (1, 1),
         "slice": (1, 3), "index": (1, 99)}


class TemplateError(ValueError):
    """The template is malformed, uses something not supported here, or failed while executing."""


class BudgetError(TemplateError):
    """An execution went past its Budget: too many steps or too much output."""


# The syntax tree has the shapes of Go's own (text/template/parse), because Ollama edits that tree
# (see _cut_after_response) and the edit is only copied exactly on the same shapes.
Text = namedtuple("Text", "text")
Field = namedtuple("Field", "names")  # .A.B -> ("A", "B"); "." alone -> ()
Variable = namedtuple("Variable", "name names")  # $x.A -> "$x", ("A",); "$" is the value given to execute()
Literal = namedtuple("Literal", "value")
Function = namedtuple("Function", "name")
Pipe = namedtuple("Pipe", "decl assign args")  # [$a[, $b] := or =] then a function and its args, or one value
Action = namedtuple("Action", "pipe")  # {{ pipe }} prints its value, unless it declares a variable
If = namedtuple("If", "pipe body else_body")  # {{ else if }} is an If alone in else_body, as in Go
Range = namedtuple("Range", "pipe body else_body")
Loop = namedtuple("Loop", "word")  # {{ break }} or {{ continue }}, inside a range
_Action = namedtuple("_Action", "tokens src line")  # an action as read: (kind, text) tokens, its text, its line

_SPACES = re.compile(r"[ \t\r\n]*")
# One step through an action: spaces, then the closing " -}}" or "}}", or a token.
_STEP = re.compile(r'[ \t\r\n]*(?:(?P<close>[ \t\r\n]-}}|}})|(?P<string>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)'
                   r"|(?P<number>[-+]?[0-9][\w.]*)|(?P<field>(?:\.[A-Za-z_]\w*)+|\.)"
                   r"|(?P<var>\$\w*(?:\.[A-Za-z_]\w*)*)|(?P<word>[A-Za-z_]\w*)|(?P<punct>:=|[()|,=]))")


def _closing(src: str, p: int) -> int:
    """The length of the delimiter closing an action at ``p``: 2 for "}}", 4 for " -}}", 0 if there is none."""
    if src.startswith("}}", p):
        return 2
    return 4 if p < len(src) and src[p] in SPACE and src.startswith("-}}", p + 1) else 0


def _lex(src: str) -> list[Any]:
    """Split the template into Text and _Action items, applying the {{- -}} trims as Go does while reading."""
    items: list[Any] = []
    pos, trim_next, line, counted = 0, False, 1, 0  # line: the line number at src[counted]
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:  # the previous action ended with " -}}"
            text = text.lstrip(SPACE)
        p = start + 2
        if start >= 0 and src.startswith("-", p) and p + 1 < len(src) and src[p + 1] in SPACE:  # "{{- "
            text, p = text.rstrip(SPACE), p + 2
        if text:
            items.append(Text(text))
        if start < 0:
            return items
        line, counted = line + src.count("\n", counted, start), start  # counting from 0 each time was quadratic
        comment = src.startswith("/*", p)  # a comment starts right after "{{" or "{{- " and ends just before "}}"
        if comment:
            p = src.find("*/", p) + 2
            if p == 1:
                raise TemplateError(f"line {line}: unclosed comment")
            if not _closing(src, p):
                raise TemplateError(f"line {line}: comment ends before closing delimiter")
        tokens = []
        while True:
            m = _STEP.match(src, p)
            if not m:
                p = _SPACES.match(src, p).end()
                if p >= len(src):
                    raise TemplateError(f"line {line}: unclosed action {src[start:start + 30]!r}")
                raise TemplateError(f"line {line}: unexpected {src[p]!r} in action")
            kind, p = m.lastgroup, m.end()
            if kind == "close":
                break
            at = m.start(kind)
            tokens.append(("chain" if kind == "field" and src[at - 1] == ")" else kind, src[at:p]))  # (pipeline).Field
        trim_next, pos = m.group("close") != "}}", p
        if not comment:
            items.append(_Action(tuple(tokens), src[start:pos], line))


def _unsupported(item: _Action, why: str = "") -> TemplateError:
    quoted = json.dumps(item.src, ensure_ascii=False)  # quoted the way Go's %q would
    return TemplateError(f"unsupported template construct {quoted}" + (f" ({why})" if why else ""))


class _Parser:
    """Builds the tree from the items; like Go, refuses a variable used before it is declared."""

    def __init__(self, items: list[Any]):
        self.items, self.i, self.vars, self.ranges = items, 0, ["$"], 0  # ranges: how many we are inside
        self.declared = {"$": 1}  # how many times each name is in self.vars: a quick "is it declared"
        self.depth = 0  # how many if, range and parentheses we are inside

    def enter(self, item: _Action) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TemplateError(f"line {item.line}: template nested too deeply (more than {MAX_DEPTH} levels of "
                                "if, else if, range and parentheses)")

    def forget(self, mark: int) -> None:
        """Drop the variables declared since ``self.vars`` had ``mark`` names."""
        for name in self.vars[mark:]:
            self.declared[name] -= 1
        del self.vars[mark:]

    def parse_list(self, opener: _Action | None) -> tuple[tuple[Any, ...], _Action | None]:
        """Nodes up to the {{ end }} or {{ else }} that closes ``opener`` (None: up to the end of the template)."""
        nodes: list[Any] = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if isinstance(item, Text):
                nodes.append(item)
                continue
            word = item.tokens[0][1] if item.tokens and item.tokens[0][0] == "word" else ""
            if word in ("end", "else"):
                if opener is None:
                    raise TemplateError(f"line {item.line}: unexpected {item.src}")
                return tuple(nodes), item
            if word in ("if", "range"):
                nodes.append(self.block(item, word, item.tokens[1:]))
            elif word in ("break", "continue"):
                if not self.ranges or len(item.tokens) > 1:
                    raise TemplateError(f"line {item.line}: unexpected {item.src} (allowed alone, inside a range)")
                nodes.append(Loop(word))
            elif word in KEYWORDS:
                raise _unsupported(item)
            else:
                nodes.append(Action(self.pipe(item, item.tokens)))
        if opener is not None:
            raise TemplateError(f"line {opener.line}: unexpected EOF: {opener.src} has no {{{{ end }}}}")
        return tuple(nodes), None

    def block(self, item: _Action, keyword: str, tokens: tuple[Any, ...]) -> If | Range:
        """{{ if }} or {{ range }}, up to and with its {{ end }}; its variables end there too."""
        mark = len(self.vars)
        self.enter(item)
        pipe = self.pipe(item, tokens, two_vars=keyword == "range")
        self.ranges += keyword == "range"
        body, closer = self.parse_list(item)
        self.ranges -= keyword == "range"
        else_body, rest = None, closer.tokens[1:]
        if closer.tokens[0][1] == "else":
            if keyword == "if" and rest[:1] == (("word", "if"),):  # {{ else if }} shares the first if's {{ end }}
                else_body, closer = (self.block(closer, "if", rest[1:]),), None
            elif rest:
                raise _unsupported(closer)
            else:
                else_body, closer = self.parse_list(item)
        if closer is not None and closer.tokens != (("word", "end"),):
            raise TemplateError(f"line {closer.line}: unexpected {closer.src}")
        self.forget(mark)
        self.depth -= 1
        return (If if keyword == "if" else Range)(pipe, body, else_body)

    def pipe(self, item: _Action, tokens: tuple[Any, ...], two_vars: bool = False) -> Pipe:
        """[$x := or $x = or (in range) $i, $m :=] and a command."""
        decl, texts = (), [text for _, text in tokens[:4]]  # all a declaration needs
        if len(tokens) > 1 and tokens[0][0] == "var" and texts[1] in (":=", "="):
            decl, tokens = (texts[0],), tokens[2:]
        elif two_vars and len(tokens) > 3 and tokens[0][0] == tokens[2][0] == "var" and texts[1:4:2] == [",", ":="]:
            decl, tokens = (texts[0], texts[2]), tokens[4:]
        args, _ = self.command(item, tokens, 0, nested=False)
        assign = bool(decl) and texts[1] == "="
        for name in decl:
            if "." in name or name == "$":
                raise TemplateError(f"line {item.line}: cannot declare {name} in {item.src}")
            if assign:
                self.check_var(item, name)
            else:
                self.vars.append(name)
                self.declared[name] = self.declared.get(name, 0) + 1
        return Pipe(decl, assign, args)

    def command(self, item: _Action, tokens: tuple[Any, ...], i: int, nested: bool) -> tuple[tuple[Any, ...], int]:
        """The operands from tokens[i] to the end, or to the ")" that closes a "(" (then i is at the ")")."""
        args: list[Any] = []
        while i < len(tokens) and not (nested and tokens[i][1] == ")"):
            kind, text = tokens[i]
            if text == "|":
                raise _unsupported(item, 'pipelines with "|"')
            if text == "(":
                self.enter(item)
                sub, i = self.command(item, tokens, i + 1, nested=True)
                self.depth -= 1
                if i >= len(tokens):
                    raise TemplateError(f"line {item.line}: unclosed left paren in {item.src}")
                args.append(Pipe((), False, sub))
            else:
                args.append(self.operand(item, kind, text))
            i += 1
        if not args:
            raise TemplateError(f"line {item.line}: missing value in {item.src}")
        if len(args) > 1 and isinstance(args[0], (Field, Variable)):
            raise _unsupported(item, "method call")
        if len(args) > 1 and not isinstance(args[0], Function):
            raise TemplateError(f"line {item.line}: can't give argument to non-function in {item.src}")
        if isinstance(args[0], Literal) and args[0].value is None:
            raise TemplateError(f"line {item.line}: nil is not a command, in {item.src}")
        return tuple(args), i

    def operand(self, item: _Action, kind: str, text: str) -> Any:
        try:
            if kind in ("string", "raw"):  # Python's escapes include Go's (\n \t \" \\ \x41 \u00e9 ...)
                return Literal(ast.literal_eval(text) if kind == "string" else text[1:-1])
            if kind == "number":
                return Literal(int(text, 0))
        except (SyntaxError, ValueError):
            raise _unsupported(item, f"literal {text}") from None
        if kind == "field":
            return Field(tuple(text.split(".")[1:]) if text != "." else ())
        if kind == "var":
            name, *names = text.split(".")
            self.check_var(item, name)
            return Variable(name, tuple(names))
        if kind == "chain":
            raise _unsupported(item, "field of a parenthesized value")
        if text in ("true", "false", "nil"):
            return Literal({"true": True, "false": False, "nil": None}[text])
        if text in ARITY:
            return Function(text)
        if kind == "word" and text not in KEYWORDS:
            raise TemplateError(f'unsupported function "{text}"')
        raise TemplateError(f"line {item.line}: unexpected {text!r} in {item.src}")

    def check_var(self, item: _Action, name: str) -> None:
        if not self.declared.get(name):
            raise TemplateError(f'line {item.line}: undefined variable "{name}"')


def parse(template: str) -> Template:
    """Parse ``template``; raise TemplateError if it is malformed, too large, or uses anything not supported here."""
    if not isinstance(template, str):
        raise TemplateError(f"a template is a string, not {type(template).__name__}")
    if len(template) > MAX_TEMPLATE_BYTES or len(template.encode()) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"template too large: {len(template.encode()):,} bytes, the limit is "
                            f"{MAX_TEMPLATE_BYTES:,} bytes")
    return Template(template, _Parser(_lex(template)).parse_list(None)[0])


_parse_cached = functools.lru_cache(maxsize=32)(parse)  # a chat renders the same TEMPLATE many times


class Budget:
    """The work left to one rendering: steps (nodes run, loop turns, values looked up) and output characters.

    ``Template.execute`` makes a new one unless given one; ``render_conversation`` shares one among
    the executions of a chat. Going past either limit raises BudgetError (a TemplateError).
    """

    def __init__(self, max_steps: int | None = None, max_output: int | None = None):
        self.max_steps = MAX_STEPS if max_steps is None else max_steps
        self.max_output = MAX_OUTPUT_CHARS if max_output is None else max_output
        self.steps = self.output = 0

    def spend(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > self.max_steps:
            raise BudgetError(f"template does too much work: more than {self.max_steps:,} steps "
                              "(nodes run, loop turns and values looked up)")

    def write(self, out: list[str], text: str) -> None:
        self.output += len(text)
        if self.output > self.max_output:
            raise BudgetError(f"template does too much work: its output passes {self.max_output:,} characters")
        out.append(text)


class Template:
    """A parsed template. ``execute(values)`` renders it with ``values`` as its "." (and "$")."""

    def __init__(self, source: str, nodes: tuple[Any, ...]):
        self.source, self.nodes = source, nodes

    def execute(self, values: dict[str, Any], *, budget: Budget | None = None) -> str:
        """The text; TemplateError if it fails or goes past ``budget`` (by default MAX_STEPS, MAX_OUTPUT_CHARS)."""
        run = _Execution(Budget() if budget is None else budget, [("$", values)])
        run.run(self.nodes, values)
        return "".join(run.out)

    def identifiers(self) -> set[str]:
        """The field and variable names used, lower-cased: what Ollama's ``Template.Vars`` looks at."""
        return {name.lower() for node in self.nodes for name in _names(node)}


def _names(node: Any) -> list[str]:
    """The field and variable names in ``node``, collected as Ollama's ``Identifiers`` does."""
    if isinstance(node, Field):
        return list(node.names)
    if isinstance(node, Variable):
        return [node.name, *node.names]
    if isinstance(node, Pipe):
        children = node.args
    elif isinstance(node, Action):
        children = (node.pipe,)
    elif isinstance(node, (If, Range)):
        children = (node.pipe, *node.body, *(node.else_body or ()))
    else:  # Text, Literal, Function
        return []
    return [name for child in children for name in _names(child)]


class _Continue(Exception):
    """{{ continue }}: go on with the next element of the innermost range."""


class _Break(Exception):
    """{{ break }}: leave the innermost range."""


class _Execution:
    """One run of a tree: its variables, its output, and the budget every step is paid from.

    Variables live in one list of (name, value), newest last. An if or range remembers its length and
    cuts it back at its end, so a variable lasts until the {{ end }} of the block that declared it.
    """

    def __init__(self, budget: Budget, variables: list[tuple[str, Any]]):
        self.budget, self.variables, self.out = budget, variables, []

    def run(self, nodes: tuple[Any, ...], dot: Any) -> None:
        variables, budget, write = self.variables, self.budget, self.budget.write
        for node in nodes:  # (this loop runs for every node of every turn: it avoids calls where it can)
            budget.steps += 1
            if budget.steps > budget.max_steps:
                budget.spend(0)  # raises
            kind = type(node)
            if kind is Text:
                budget.output += len(node.text)
                if budget.output > budget.max_output:
                    write(self.out, "")  # raises
                self.out.append(node.text)
            elif kind is Action:
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    write(self.out, value if type(value) is str else self.print(value))
            elif kind is If:
                mark = len(variables)
                value = self.pipe(node.pipe, dot)
                branch = node.body if (value if type(value) is bool else _truth(value)) else node.else_body
                if branch:
                    self.run(branch, dot)
                del variables[mark:]
            elif kind is Loop:
                raise _Break() if node.word == "break" else _Continue()
            else:
                self.range(node, dot)

    def range(self, node: Range, dot: Any) -> None:
        variables, mark, decl = self.variables, len(self.variables), node.pipe.decl
        seq = self.command(node.pipe.args, dot)
        if isinstance(seq, dict):
            self.budget.spend(len(seq) // _UNITS_PER_STEP)
            pairs = sorted(seq.items())  # Go visits a map in key order
        elif isinstance(seq, (list, tuple)) or seq is None:  # nil: no turns, and no error
            self.budget.spend(len(seq or ()) // _UNITS_PER_STEP)
            pairs = list(enumerate(seq or ()))
        else:
            raise TemplateError(f"range can't iterate over {seq!r}")
        budget = self.budget
        for key, elem in pairs:
            budget.steps += 1
            if budget.steps > budget.max_steps:
                budget.spend(0)  # raises
            if len(decl) == 2:  # range $i, $m := ...
                variables += [(decl[0], key), (decl[1], elem)]
            elif decl:  # range $m := ...
                variables.append((decl[0], elem))
            try:
                self.run(node.body, elem)  # inside the range, "." is the element
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del variables[mark:]
        if not pairs and node.else_body:
            self.run(node.else_body, dot)
            del variables[mark:]

    def pipe(self, pipe: Pipe, dot: Any) -> Any:
        args = pipe.args
        value = self.call(args[0].name, args[1:], dot) if type(args[0]) is Function else self.value(args[0], dot)
        if not pipe.decl:
            return value
        variables = self.variables
        if pipe.assign:  # $x = value: change the newest $x
            self.budget.spend(len(variables) // 8)  # the search goes through the variables
            i = len(variables) - 1
            while variables[i][0] != pipe.decl[0]:  # the parser saw it declared: it is there
                i -= 1
            variables[i] = (pipe.decl[0], value)
        elif pipe.decl:  # $x := value
            variables.append((pipe.decl[0], value))
        return value

    def command(self, args: tuple[Any, ...], dot: Any) -> Any:
        if isinstance(args[0], Function):
            return self.call(args[0].name, args[1:], dot)
        return self.value(args[0], dot)

    def value(self, node: Any, dot: Any) -> Any:
        budget = self.budget
        budget.steps += 1
        if budget.steps > budget.max_steps:
            budget.spend(0)  # raises
        kind = type(node)
        if kind is Field:
            if len(node.names) == 1 and type(dot) is dict:  # .Role, .Content: the common case
                return dot.get(node.names[0])
            value = dot
        elif kind is Literal:
            return node.value
        elif kind is Pipe:  # (parenthesized)
            budget.spend()
            return self.pipe(node, dot)
        elif kind is Function:  # a function given as an argument is called with no arguments
            return self.call(node.name, (), dot)
        else:
            budget.spend(len(self.variables) // 8)  # the search goes through the variables
            value = None
            for name, held in reversed(self.variables):
                if name == node.name:
                    value = held
                    break
        for name in node.names:
            if isinstance(value, dict):
                value = value.get(name)  # a missing key gives nil, which prints "<no value>"
            elif value is None:
                raise TemplateError(f"nil pointer evaluating .{name}")
            else:
                raise TemplateError(f"can't evaluate field {name} in type {type(value).__name__}")
        return value

    def go_bytes(self, value: Any) -> Any:
        """A string as Go sees it, in bytes (paid for by its length); anything else as it is."""
        if not isinstance(value, str):
            return value
        self.budget.spend(len(value) // _UNITS_PER_STEP)
        return value.encode()

    def call(self, name: str, args: tuple[Any, ...], dot: Any) -> Any:
        self.budget.spend()
        fewest, most = ARITY[name]
        if not fewest <= len(args) <= most:
            raise TemplateError(f"wrong number of args for {name}: want {fewest} got {len(args)}")
        if name in ("and", "or"):  # stop at the first argument that decides, and return it (not a bool)
            for arg in args:
                value = self.value(arg, dot)
                if _truth(value) != (name == "and"):
                    break
            return value
        if name in ("eq", "ne") and len(args) == 2:  # the common case (eq .Role "user"), made quicker
            first, other = self.value(args[0], dot), self.value(args[1], dot)
            if type(first) is str and type(other) is str:
                self.budget.spend((len(first) + len(other)) // _UNITS_PER_STEP)
                return (first == other) == (name == "eq")
            rest = [other]
        else:
            first, *rest = (self.value(arg, dot) for arg in args)
        if name == "not":
            return not _truth(first)
        if name in ("eq", "ne"):  # eq x a b: is x equal to a or to b
            self.budget.spend(sum(len(v) for v in (first, *rest) if isinstance(v, str)) // _UNITS_PER_STEP)
            return any(_equal(first, other) for other in rest) == (name == "eq")
        if name == "len":
            if not isinstance(first, (str, list, tuple, dict)):
                raise TemplateError(f"len of type {type(first).__name__}")
            return len(self.go_bytes(first))  # a Go string's length is in bytes
        if name == "index":  # index x 1 2 is x[1][2]
            if first is None:
                raise TemplateError("error calling index: index of untyped nil")
            for key in rest:
                seq = self.go_bytes(first)  # a Go string is indexed by byte
                if isinstance(seq, dict) and isinstance(key, str):
                    first = seq.get(key)
                elif isinstance(seq, (bytes, list, tuple)) and _kind(key) == "int" and 0 <= key < len(seq):
                    first = seq[key]
                else:
                    raise TemplateError(f"error calling index: cannot index {first!r} with {key!r}")
            return first
        # slice x i j is x[i:j] (a string is cut in bytes, as in Go)
        seq = self.go_bytes(first)
        if not isinstance(seq, (bytes, list, tuple)):
            raise TemplateError(f"error calling slice: can't slice item of type {type(first).__name__}")
        start, end = [*rest, len(seq)][:2] if rest else (0, len(seq))
        if {_kind(start), _kind(end)} != {"int"} or not 0 <= start <= end <= len(seq):
            raise TemplateError(f"error calling slice: cannot slice {first!r} with {rest!r}")
        self.budget.spend((end - start) // _UNITS_PER_STEP)
        return seq[start:end].decode(errors="replace") if isinstance(seq, bytes) else seq[start:end]

    def print(self, value: Any, inside: bool = False) -> str:
        """A value as Go's fmt prints it: true, 42, [a b], map[k:v]; each item of a list or map is a step."""
        if value is None:
            return "<nil>" if inside else "<no value>"  # "<no value>": what Go prints for a missing key
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int)):
            return str(value)
        if isinstance(value, (list, tuple)):
            self.budget.spend(len(value))
            return "[" + " ".join(self.print(v, True) for v in value) + "]"
        if isinstance(value, dict):  # (Go would print a message as a struct, &{user hi ...}: nobody does that)
            self.budget.spend(len(value))
            return "map[" + " ".join(f"{k}:{self.print(v, True)}" for k, v in sorted(value.items())) + "]"
        raise TemplateError(f"printing a value of type {type(value).__name__} is not supported")


def _kind(value: Any) -> str:
    """Go's "basic kind" of a value: eq refuses to compare, say, a string with a number."""
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("string", str)):
        if isinstance(value, types):
            return kind
    return "nil" if value is None else "other"


def _equal(a: Any, b: Any) -> bool:
    ka, kb = _kind(a), _kind(b)
    if "nil" in (ka, kb):
        return ka == kb
    if ka != kb or ka == "other":
        raise TemplateError(f"error calling eq: cannot compare {a!r} with {b!r}")
    return bool(a == b)


def _truth(value: Any) -> bool:
    """Go's truth: false, 0, nil and empty strings, lists and maps are false; anything else is true."""
    return bool(value) if isinstance(value, (type(None), bool, int, float, str, list, tuple, dict)) else True


# ----------------------------------------------------------------------------- Ollama's rendering
def _collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's ``collate``: all system texts joined by a blank line; neighbours of one role merged likewise.

    System messages *stay in the list* as well (Ollama's templates skip them with ``if eq .Role "user"``
    ... or print them from .Messages), so they keep the turns around them apart. Tool results are never merged.
    In a template, a message has Go's field names: .Role, .Content, .ToolCalls (always empty here).
    """
    system = "\n\n".join(m.get("content") or "" for m in messages if m["role"] == "system")
    turns: list[dict[str, Any]] = []
    parts: list[list[str]] = []  # each turn's texts, joined at the end (adding them one by one was quadratic)
    for m in messages:
        if turns and turns[-1]["Role"] == m["role"] != "tool":
            parts[-1].append(m.get("content") or "")
        else:
            turns.append({"Role": m["role"], "Content": "", "Thinking": m.get("thinking", ""),
                          "ToolName": m.get("tool_name", ""), "ToolCalls": [], "Images": []})
            parts.append([m.get("content") or ""])
    for turn, texts in zip(turns, parts, strict=True):
        turn["Content"] = "\n\n".join(texts)
    return system, turns


def _cut_after_response(nodes: tuple[Any, ...]) -> tuple[Any, ...]:
    """The tree without what follows the first ``{{ .Response }}``: Ollama's ``deleteNode``, for the last turn.

    That prompt must end where the model's answer begins, so what a template writes after the
    answer (say, an end-of-turn tag) is left out. Like Ollama, this walks the tree in order, sees
    .Response only where a value is printed (not in if or range conditions) and drops all after it.
    """
    cut = False

    def walk(node: Any) -> Any:
        nonlocal cut
        if isinstance(node, Field) and "Response" in node.names:
            cut = True
            return node
        if cut:
            return None
        if isinstance(node, Action):
            pipe = walk(node.pipe)
            return None if pipe is None else Action(pipe)
        if isinstance(node, Pipe):  # the command loses the arguments after .Response
            args = walk_list(node.args)
            return node._replace(args=args) if args else None
        if isinstance(node, (If, Range)):
            body = walk_list(node.body)
            if node.else_body is not None and cut:  # Ollama's Go code panics here: HTTP 500
                raise TemplateError("Ollama cannot render the last turn: {{ .Response }} comes before an {{ else }}")
            return node._replace(body=body, else_body=node.else_body and walk_list(node.else_body))
        return node

    def walk_list(nodes: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(n for n in map(walk, nodes) if n is not None)

    return walk_list(nodes)


def render_conversation(template: str | Template, system: str, messages: list[dict[str, Any]], *,
                        response: str = "", budget: Budget | None = None) -> str:
    """The prompt Ollama builds from ``messages`` (dicts with "role" and "content") with this TEMPLATE.

    ``system`` is the model's SYSTEM prompt (or ""): as in Ollama's chat handler, it is put first
    unless the conversation already starts with a system message. ``response`` (an answer begun,
    to be continued) is the same as ending ``messages`` with that assistant message.

    A template that uses .Messages is executed once, with the whole conversation. An older template
    that only knows .System, .Prompt and .Response is executed once per user turn (with the answer
    that followed it), and the last turn stops right after {{ .Response }}.

    All the executions are paid from one ``budget`` (by default a new Budget()); past it, TemplateError.
    """
    tmpl = _parse_cached(template) if isinstance(template, str) else template if isinstance(template, Template) \
        else parse(template)  # (parse refuses it)
    budget = Budget() if budget is None else budget
    messages = list(messages)
    if system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    if response:
        messages.append({"role": "assistant", "content": response})
    joined_system, turns = _collate(messages)
    think = {"Think": False, "ThinkLevel": "", "IsThinkSet": False}
    names = tmpl.identifiers()
    if "messages" in names or "document" in names:
        # There is no "Prompt" here, as in Ollama: a bare {{ .Prompt }} prints "<no value>".
        return tmpl.execute({"System": joined_system, "Messages": turns, "Tools": [], "Response": "", **think,
                             "Query": "", "Document": "", "Instruction": ""}, budget=budget)

    nodes = tmpl.nodes
    if "response" not in names:  # Ollama puts a {{ .Response }} at the end of a template that has none
        nodes += (Action(Pipe((), False, (Field(("Response",)),))),)
    out: list[str] = []
    turn = dict.fromkeys(("System", "Prompt", "Response"), "")
    for m in turns:  # as Ollama: a system message after a prompt or answer, or a user one after an answer, ends a turn
        role, content = m["Role"], m["Content"]
        if (role == "system" and (turn["Prompt"] or turn["Response"])) or (role == "user" and turn["Response"]):
            out.append(Template(tmpl.source, nodes).execute({**turn, **think}, budget=budget))
            turn = dict.fromkeys(turn, "")
        if role in ("system", "user", "assistant"):  # tool results are left out of such templates
            turn[{"system": "System", "user": "Prompt", "assistant": "Response"}[role]] = content
    out.append(Template(tmpl.source, _cut_after_response(nodes)).execute({**turn, **think}, budget=budget))
    return "".join(out)
