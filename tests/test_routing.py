from __future__ import annotations

import jmespath
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


DOCUMENTS = [
    {"headers": {"content-type": "application/json", "x-n": "7"}, "body": {"action": "opened", "number": 12}},
    {"headers": {}, "body": {"action": "", "number": 0, "draft": False, "tags": ["a", "b"], "sender": {"login": "octo"}}},
    {"headers": {"x-n": "1"}, "body": {"number": 1.5, "draft": True, "tags": [], "sender": None}},
    {"headers": {}, "body": ["opened", 1, None]},
    {"headers": {}, "body": "text"},
    {"headers": {}, "body": None},
]
EXPRESSIONS = [
    "body.action",
    "body.action == 'opened'",
    "body.action != 'opened'",
    "body.number > `10`",
    "body.number <= `1`",
    "body.number < body.action",
    "headers.\"x-n\" >= '5'",
    "body.draft == `false`",
    "body.number == `false`",
    "body.number == `0`",
    "body.draft == `1`",
    "body.action == `0`",
    "body.number != 'x'",
    "body.draft == 'true'",
    "body.action == body.number",
    "body.sender.login.name",
    "body.tags.x",
    "body.sender | login",
    "body.action | length(@)",
    "body.action && body.number",
    "body.number && body.action",
    "body.number || body.action",
    "body.action || body.number",
    "!body.draft",
    "!body.number",
    "body.sender.login",
    "body.tags[0]",
    "body.tags[*]",
    "body[?@ != `null`]",
    "['x', body.action]",
    "{a: body.action}",
    "contains(['octo'], body.sender.login)",
    "contains(body.tags, 'a')",
    "length(body.tags) > `1`",
    "starts_with(body.action, 'op')",
    "to_number(headers.\"x-n\") > `5`",
    "body | action",
    "@.body.number",
    "sort_by(body.tags, &@)",
    "body.number > `10` && headers.\"content-type\" == 'application/json'",
]


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_compiled_filters_evaluate_as_jmespath_does(source):
    """Each filter gives what jmespath's own interpreter gives, or raises
    the same error, for every document."""
    flt = compile_filter(source)
    for doc in DOCUMENTS:
        try:
            expected = jmespath.search(source, doc)
        except Exception as e:
            with pytest.raises(type(e)):
                flt.evaluate(doc)
        else:
            got = flt.evaluate(doc)
            assert got == expected and type(got) is type(expected), (doc, got, expected)
