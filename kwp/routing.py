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
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

# One interpreter for every filter and webhook: ParsedResult.search builds a
# new one, with its table of functions, on each call, which costs as much as
# evaluating a short expression.  It keeps no state between evaluations.
_INTERPRETER = TreeInterpreter()


@dataclass(frozen=True, eq=False)
class Filter:
    source: str
    _expression: ParsedResult

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def matches(self, document: Any) -> bool:
        """Whether the expression is truthy over document; raises whatever
        the evaluation raises (a JMESPath type error, say)."""
        return truthy(_INTERPRETER.visit(self._expression.parsed, document))


def compile_filter(source: str) -> Filter:
    """The compiled filter; ValueError with JMESPath's message when it does
    not compile."""
    try:
        return Filter(source, jmespath.compile(source))
    except JMESPathError as e:
        raise ValueError(f"invalid JMESPath expression: {' '.join(str(e).split())}") from None


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
