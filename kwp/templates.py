"""Sandboxed compiler for the small subset of Tera used by channel configs.

Grammar (whitespace is space, tab, CR or LF)::

    template := (text | "{{" "-"? expr "-"? "}}")*
    expr     := (identifier | string) ("|" filter)*
    filter   := identifier ("(" [kwarg ("," kwarg)*] ")")?
    kwarg    := identifier "=" string

Strings are delimited by ``"``, ``'`` or a backtick and, as in Tera, have no
escape sequences: use another delimiter to embed a quote.  ``{{-`` and ``-}}``
strip the whitespace before/after the block.  ``{%`` and ``{#`` are rejected;
any other ``{`` or ``}`` in text is literal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Union

__all__ = ["Template", "TemplateError", "compile_template"]


class TemplateError(ValueError):
    """A template failed to compile or to render."""


Value = Union[str, list[str]]

# Characters Rust's `char::is_whitespace` (used by Tera's `trim`) accepts.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_EXPR_WHITESPACE = " \t\r\n"
_QUOTES = "\"'`"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = frozenset({"true", "false", "True", "False", "and", "or", "not", "in", "is"})
_UNSUPPORTED_AFTER_NAME = {
    ".": "attribute access is not supported",
    "[": "index access is not supported",
    "(": "function calls are not supported",
}


def _string(filter_name: str, value: Value) -> str:
    if not isinstance(value, str):
        raise TemplateError(f"filter {filter_name!r} expects a string, got a list")
    return value


def _list(filter_name: str, value: Value) -> list[str]:
    if not isinstance(value, list):
        raise TemplateError(f"filter {filter_name!r} expects a list, got a string")
    return value


def _split(value: Value, args: Mapping[str, str]) -> list[str]:
    text, pat = _string("split", value), args["pat"]
    if not pat:
        return ["", *text, ""]  # Rust's `str::split("")`
    return text.split(pat)


def _first(value: Value, args: Mapping[str, str]) -> str:
    items = _list("first", value)
    return items[0] if items else ""


def _last(value: Value, args: Mapping[str, str]) -> str:
    items = _list("last", value)
    return items[-1] if items else ""


@dataclass(frozen=True)
class _FilterSpec:
    arguments: frozenset[str]
    apply: Callable[[Value, Mapping[str, str]], Value]


_FILTERS: dict[str, _FilterSpec] = {
    "replace": _FilterSpec(
        frozenset({"from", "to"}),
        lambda v, a: _string("replace", v).replace(a["from"], a["to"]),
    ),
    "split": _FilterSpec(frozenset({"pat"}), _split),
    "first": _FilterSpec(frozenset(), _first),
    "last": _FilterSpec(frozenset(), _last),
    "trim": _FilterSpec(frozenset(), lambda v, a: _string("trim", v).strip(_RUST_WHITESPACE)),
    "lower": _FilterSpec(frozenset(), lambda v, a: _string("lower", v).lower()),
    "upper": _FilterSpec(frozenset(), lambda v, a: _string("upper", v).upper()),
}


@dataclass(frozen=True)
class _Filter:
    function: Callable[[Value, Mapping[str, str]], Value]
    arguments: Mapping[str, str]

    def apply(self, value: Value) -> Value:
        return self.function(value, self.arguments)


@dataclass(frozen=True)
class _Expression:
    text: str
    variable: str | None
    literal: str
    filters: tuple[_Filter, ...]

    def evaluate(self, variables: Mapping[str, str]) -> str:
        value: Value = self.literal
        if self.variable is not None:
            if self.variable not in variables:
                raise TemplateError(f"variable {self.variable!r} is not defined in {self.text}")
            value = variables[self.variable]
            if not isinstance(value, str):
                raise TemplateError(f"variable {self.variable!r} must be a string")
        try:
            for filter_ in self.filters:
                value = filter_.apply(value)
        except TemplateError as exc:
            raise TemplateError(f"{exc} in {self.text}") from None
        if not isinstance(value, str):
            raise TemplateError(f"{self.text} evaluates to a list, which cannot be rendered")
        return value


class Template:
    """A compiled template; build it with :func:`compile_template`."""

    __slots__ = ("source", "variables", "_parts")

    def __init__(self, source: str, parts: tuple[str | _Expression, ...]) -> None:
        self.source = source
        self._parts = parts
        self.variables = frozenset(
            p.variable for p in parts if isinstance(p, _Expression) and p.variable is not None
        )

    def render(self, **variables: str) -> str:
        """Render with the given string variables; raise TemplateError on failure."""
        return "".join(p if isinstance(p, str) else p.evaluate(variables) for p in self._parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    # A template is what its source compiles to: configs that load the same
    # source twice hold equal templates.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


class _Parser:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> TemplateError:
        pos = self.pos if pos is None else pos
        line = self.src.count("\n", 0, pos) + 1
        column = pos - self.src.rfind("\n", 0, pos)
        return TemplateError(f"line {line}, column {column}: {message}")

    def found(self) -> str:
        return repr(self.src[self.pos]) if self.pos < len(self.src) else "end of template"

    def expected(self, what: str) -> TemplateError:
        return self.error(f"expected {what}, found {self.found()}")

    def skip_whitespace(self, chars: str = _EXPR_WHITESPACE) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in chars:
            self.pos += 1

    def eat(self, token: str) -> bool:
        if self.src.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def identifier(self, what: str) -> str:
        match = _IDENT.match(self.src, self.pos)
        if not match:
            raise self.expected(what)
        self.pos = match.end()
        return match.group()

    def string(self) -> str:
        quote = self.src[self.pos]
        end = self.src.find(quote, self.pos + 1)
        if end == -1:
            raise self.error(f"unterminated string literal (missing closing {quote})")
        value = self.src[self.pos + 1 : end]
        self.pos = end + 1
        return value

    def parse(self) -> tuple[str | _Expression, ...]:
        parts: list[str | _Expression] = []
        text_start = scan = 0
        while True:
            brace = self.src.find("{", scan)
            if brace == -1 or brace + 1 == len(self.src):
                break
            following = self.src[brace + 1]
            if following == "%":
                raise self.error("statements ({% ... %}) are not supported", brace)
            if following == "#":
                raise self.error("comments ({# ... #}) are not supported", brace)
            if following != "{":
                scan = brace + 1
                continue
            self.pos = brace + 2
            text = self.src[text_start:brace]
            if self.eat("-"):
                text = text.rstrip(_RUST_WHITESPACE)
            if text:
                parts.append(text)
            expression, trim_after = self.expression(brace)
            parts.append(expression)
            if trim_after:
                self.skip_whitespace(_RUST_WHITESPACE)
            text_start = scan = self.pos
        if text_start < len(self.src):
            parts.append(self.src[text_start:])
        return tuple(parts)

    def expression(self, start: int) -> tuple[_Expression, bool]:
        self.skip_whitespace()
        variable, literal = None, ""
        if self.pos < len(self.src) and self.src[self.pos] in _QUOTES:
            literal = self.string()
        else:
            name_pos = self.pos
            variable = self.identifier("a variable name or a string literal")
            if variable in _RESERVED:
                raise self.error(f"{variable!r} is a reserved word, not a variable", name_pos)
            if self.pos < len(self.src) and self.src[self.pos] in _UNSUPPORTED_AFTER_NAME:
                raise self.error(_UNSUPPORTED_AFTER_NAME[self.src[self.pos]])
        filters = []
        while True:
            self.skip_whitespace()
            trim_after = self.eat("-")
            if self.eat("}}"):
                text = self.src[start : self.pos]
                return _Expression(text, variable, literal, tuple(filters)), trim_after
            if trim_after:
                raise self.expected("'}}' after '-'")
            if not self.eat("|"):
                raise self.expected("'|' or '}}'")
            self.skip_whitespace()
            filters.append(self.filter())

    def filter(self) -> _Filter:
        name_pos = self.pos
        name = self.identifier("a filter name")
        spec = _FILTERS.get(name)
        if spec is None:
            known = ", ".join(sorted(_FILTERS))
            raise self.error(f"unknown filter {name!r} (supported: {known})", name_pos)
        arguments: dict[str, str] = {}
        if self.eat("("):
            self.skip_whitespace()
            while not self.eat(")"):
                if arguments and not self.eat(","):
                    raise self.expected("',' or ')'")
                self.skip_whitespace()
                arg_pos = self.pos
                key = self.identifier("an argument name")
                if key not in spec.arguments:
                    raise self.error(f"filter {name!r} has no argument {key!r}", arg_pos)
                if key in arguments:
                    raise self.error(f"argument {key!r} given twice", arg_pos)
                self.skip_whitespace()
                if not self.eat("="):
                    raise self.expected("'='")
                self.skip_whitespace()
                if self.pos >= len(self.src) or self.src[self.pos] not in _QUOTES:
                    raise self.expected(f"a string literal for argument {key!r}")
                arguments[key] = self.string()
                self.skip_whitespace()
        missing = spec.arguments - arguments.keys()
        if missing:
            names = ", ".join(repr(m) for m in sorted(missing))
            raise self.error(f"filter {name!r} is missing argument(s) {names}", name_pos)
        return _Filter(spec.apply, arguments)


def compile_template(source: str) -> Template:
    """Compile ``source``; raise TemplateError describing the first syntax error."""
    if not isinstance(source, str):
        raise TemplateError(f"template must be a string, not {type(source).__name__}")
    return Template(source, _Parser(source).parse())
