from __future__ import annotations

import pytest

from kwp.routing import compile_filter, route, truthy


def test_truthiness_is_jmespaths():
    assert [truthy(v) for v in (None, False, "", [], {})] == [False] * 5
    assert [truthy(v) for v in (True, 0, 0.0, "x", [0], {"a": None})] == [True] * 6


def test_filters_over_headers_and_body():
    push = compile_filter("headers.\"x-github-event\" == 'push'")
    opened = compile_filter("contains(['opened', 'closed'], body.action)")
    consumers = [("ci", push), ("chat", opened), ("audit", None)]
    errors = []
    assert route(consumers, {"x-github-event": "push"}, {"action": "x"}, lambda *a: errors.append(a)) == ["ci", "audit"]
    assert route(consumers, {}, {"action": "opened"}, lambda *a: errors.append(a)) == ["chat", "audit"]
    assert errors == []


def test_a_filter_that_raises_takes_nothing_and_is_reported():
    errors = []
    taken = route([("chat", compile_filter("contains(body, `1`)"))], {}, 5, lambda name, e: errors.append(name))
    assert taken == [] and errors == ["chat"]


def test_compile_errors_and_equality():
    with pytest.raises(ValueError, match="invalid JMESPath expression"):
        compile_filter("foo[")
    assert compile_filter("a.b") == compile_filter("a.b") != compile_filter("a.c")
    assert hash(compile_filter("a.b")) == hash(compile_filter("a.b"))
