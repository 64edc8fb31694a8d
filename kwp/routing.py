"""Which consumers take a webhook: JMESPath filters over its headers and body.

A filter is compiled once, when the config loads (``compile_filter``), and
evaluated once per webhook over ``{"headers": {...}, "body": <JSON>}``.  A
webhook is taken when the result is truthy in JMESPath's sense: everything
but false, null and empty strings, arrays and objects.  Pure: no Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions
from jmespath.visitor import TreeInterpreter

Evaluate = Callable[[Any], Any]

# One interpreter for every filter and webhook: ParsedResult.search builds a
# new one, with its table of functions, on each call.  It keeps no state
# between evaluations.
_INTERPRETER = TreeInterpreter()
_FUNCTIONS = Functions()
_COMPARE = TreeInterpreter.COMPARATOR_FUNC


@dataclass(frozen=True, eq=False)
class Filter:
    source: str
    evaluate: Evaluate

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def matches(self, document: Any) -> bool:
        """Whether the expression is truthy over document; raises whatever
        the evaluation raises (a JMESPath type error, say)."""
        return truthy(self.evaluate(document))


def compile_filter(source: str) -> Filter:
    """The compiled filter; ValueError with JMESPath's message when it does
    not compile."""
    try:
        parsed = jmespath.compile(source).parsed
    except JMESPathError as e:
        raise ValueError(f"invalid JMESPath expression: {' '.join(str(e).split())}") from None
    return Filter(source, _compile(parsed))


def _compile(node: dict) -> Evaluate:
    """node of JMESPath's syntax tree as one Python function of the value.

    jmespath's interpreter visits the tree on each evaluation, a dispatch per
    node that costs more than the node's own work; the kinds filters are made
    of (fields, comparisons, literals, lists, and/or, function calls) become
    closures here, with the interpreter's semantics, and every other kind
    is left to the interpreter.
    """
    kind = node["type"]
    if kind == "field":
        return _path((node["value"],))
    if kind == "literal":
        constant = node["value"]
        return lambda value: constant
    if kind in ("current", "identity"):
        return lambda value: value
    if kind == "function_expression":
        name, arguments = node["value"], [_compile(child) for child in node["children"]]
        return lambda value: _FUNCTIONS.call_function(name, [argument(value) for argument in arguments])
    if kind == "subexpression" and all(child["type"] == "field" for child in node["children"]):
        return _path(tuple(child["value"] for child in node["children"]))
    children = [_compile(child) for child in node["children"]] if kind in _COMPOSED else ()
    if kind in ("subexpression", "pipe"):
        return lambda value: _chain(children, value)
    if kind == "multi_select_list":
        return lambda value: None if value is None else [child(value) for child in children]
    if kind == "comparator":
        return _comparator(node["value"], *children)
    if kind == "and_expression":
        left, right = children
        return lambda value: right(value) if truthy(matched := left(value)) else matched
    if kind == "or_expression":
        left, right = children
        return lambda value: matched if truthy(matched := left(value)) else right(value)
    return lambda value: _INTERPRETER.visit(node, value)


def _path(names: tuple[str, ...]) -> Evaluate:
    def evaluate(value):
        for name in names:
            if not isinstance(value, dict):
                return None
            value = value.get(name)
        return value

    return evaluate


def _chain(steps: list[Evaluate], value: Any) -> Any:
    for step in steps:
        value = step(value)
    return value


_COMPOSED = frozenset(("subexpression", "pipe", "multi_select_list", "comparator", "and_expression", "or_expression"))


def _comparator(operation: str, left: Evaluate, right: Evaluate) -> Evaluate:
    compare = _COMPARE[operation]
    if operation in ("eq", "ne"):
        equal = operation == "eq"

        def equality(value):
            a, b = left(value), right(value)
            # A string equals only a string: jmespath's special case of 0
            # and 1 against booleans cannot apply.
            if type(a) is str or type(b) is str:
                return (a == b) is equal
            return compare(a, b)

        return equality

    def ordered(value):
        # Ordering is only for numbers and strings; anything else is null.
        a, b = left(value), right(value)
        return compare(a, b) if _orderable(a) and _orderable(b) else None

    return ordered


def _orderable(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def truthy(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def document(headers: Mapping[str, str], body: Any) -> dict:
    """What a filter sees of a webhook."""
    return {"headers": dict(headers), "body": body}


def route(
    consumers: Iterable[tuple[str, Filter | None]],
    headers: Mapping[str, str],
    body: Any,
    on_error: Callable[[str, Exception], None],
) -> list[str]:
    """The names of the consumers whose filter takes the webhook (no filter:
    every webhook).  A filter that raises while it evaluates takes nothing;
    on_error(name, exception) is told."""
    taken = []
    view = None
    for name, flt in consumers:
        if flt is None:
            taken.append(name)
            continue
        if view is None:
            view = document(headers, body)
        try:
            if flt.matches(view):
                taken.append(name)
        except Exception as e:
            on_error(name, e)
    return taken
