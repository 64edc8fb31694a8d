"""Tests for kwp.templates, the sandboxed Tera-subset compiler."""

import pytest
from hypothesis import given, strategies as st

from kwp.templates import Template, TemplateError, compile_template


def render(source: str, **variables: str) -> str:
    return compile_template(source).render(**variables)


# --- channel-config examples -------------------------------------------------


def test_extract_example() -> None:
    template = compile_template('{{ raw | replace(from="sha256=", to="") }}')
    assert template.render(raw="sha256=abc") == "abc"
    assert template.variables == frozenset({"raw"})


def test_sign_example() -> None:
    template = compile_template("sha256={{ signature }}")
    assert template.render(signature="ff") == "sha256=ff"
    assert template.variables == frozenset({"signature"})


def test_split_last_trim_example() -> None:
    assert render('{{ raw | split(pat=",") | last | trim }}', raw="t=1, v1=abc ") == "v1=abc"


def test_template_attributes() -> None:
    source = "a{{ x }}b{{ y | upper }}{{ x }}{{ 'lit' }}"
    template = compile_template(source)
    assert isinstance(template, Template)
    assert template.source == source
    assert template.variables == frozenset({"x", "y"})
    assert compile_template("no vars").variables == frozenset()


# --- filters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "raw", "expected"),
    [
        ('{{ raw | replace(from="a", to="b") }}', "banana", "bbnbnb"),
        ('{{ raw | replace(to="-", from="") }}', "ab", "-a-b-"),
        ('{{ raw | split(pat=",") | first }}', "x,y,z", "x"),
        ('{{ raw | split(pat=",") | last }}', "x,y,z", "z"),
        ('{{ raw | split(pat=",") | last }}', "", ""),
        ('{{ raw | split(pat="") | first }}', "abc", ""),
        ('{{ raw | split(pat="::") | last }}', "a::b", "b"),
        ("{{ raw | trim }}", " \t\n x y \u3000", "x y"),
        ("{{ raw | trim }}", "\x1fx\x1f", "\x1fx\x1f"),
        ("{{ raw | lower }}", "AbC", "abc"),
        ("{{ raw | upper }}", "AbC", "ABC"),
        ("{{ raw | trim() }}", " x ", "x"),
    ],
)
def test_filters(source: str, raw: str, expected: str) -> None:
    assert render(source, raw=raw) == expected


def test_filter_chain() -> None:
    source = '{{ raw | split(pat=";") | last | trim | replace(from="V1=", to="") | lower }}'
    assert render(source, raw="t=1; V1=ABCDEF") == "abcdef"


def test_split_empty_string_on_empty_pattern() -> None:
    assert render('{{ raw | split(pat="") | last }}', raw="") == ""


# --- literals and syntax -----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('{{ "double" }}', "double"),
        ("{{ 'single' }}", "single"),
        ("{{ `backtick` }}", "backtick"),
        ("{{ 'say \"hi\"' }}", 'say "hi"'),
        ('{{ "it\'s" }}', "it's"),
        ('{{ "back\\slash" }}', "back\\slash"),
        ('{{ "}}" }}', "}}"),
        ('{{ "{{" }}', "{{"),
        ('{{ "" }}', ""),
        ('{{ "MiXeD" | lower }}', "mixed"),
    ],
)
def test_string_literals(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{raw}}", "axb"),
        ("{{ raw }}", "axb"),
        ("{{\n\traw\r\n}}", "axb"),
        ("{{raw|upper}}", "AXB"),
        ("{{  raw  |  upper  }}", "AXB"),
        ('{{ raw | replace( from = "x" , to = "y" ) | upper }}', "AYB"),
        ('{{ raw|replace(from="x",to="y")|upper }}', "AYB"),
    ],
)
def test_whitespace_inside_braces(source: str, expected: str) -> None:
    assert render(source, raw="axb") == expected


def test_plain_text_and_lone_braces_are_literal() -> None:
    assert render("") == ""
    assert render("just text") == "just text"
    assert render("{ a } }} {") == "{ a } }} {"
    assert render('{"json": {{ raw }}}', raw="1") == '{"json": 1}'


def test_whitespace_control() -> None:
    assert render("a  {{- raw -}}  \n b", raw="X") == "aXb"
    assert render("a  {{- raw }}  b", raw="X") == "aX  b"
    assert render("a  {{ raw -}}  b", raw="X") == "a  Xb"
    assert render("{{- raw -}}", raw=" X ") == " X "


def test_extra_variables_are_ignored() -> None:
    assert render("{{ a }}", a="1", b="2") == "1"


def test_render_is_repeatable() -> None:
    template = compile_template("<{{ v }}>")
    assert template.render(v="1") == "<1>"
    assert template.render(v="2") == "<2>"


# --- compile-time rejections ---------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ raw", "expected '|' or '}}', found end of template"),
        ("{{ raw }", "expected '|' or '}}'"),
        ("{{", "expected a variable name or a string literal"),
        ("{{ }}", "expected a variable name or a string literal"),
        ("{{ 42 }}", "expected a variable name or a string literal"),
        ("{{ -raw }}", "expected a variable name or a string literal, found '-'"),
        ("{{ raw - }}", "expected '}}' after '-'"),
        ("{{ 'abc }}", "unterminated string literal"),
        ("{% if raw %}x{% endif %}", "statements ({% ... %}) are not supported"),
        ("{# comment #}", "comments ({# ... #}) are not supported"),
        ("{{ raw | nope }}", "unknown filter 'nope'"),
        ("{{ raw | safe }}", "unknown filter 'safe'"),
        ("{{ raw | }}", "expected a filter name"),
        ("{{ raw || upper }}", "expected a filter name"),
        ('{{ raw | replace(from="a") }}', "missing argument(s) 'to'"),
        ("{{ raw | replace }}", "missing argument(s) 'from', 'to'"),
        ('{{ raw | split(sep=",") }}', "filter 'split' has no argument 'sep'"),
        ('{{ raw | upper(x="y") }}', "filter 'upper' has no argument 'x'"),
        ('{{ raw | split(pat=",", pat=";") }}', "argument 'pat' given twice"),
        ("{{ raw | split(pat=1) }}", "expected a string literal for argument 'pat'"),
        ("{{ raw | split(pat=other) }}", "expected a string literal for argument 'pat'"),
        ('{{ raw | split(pat) }}', "expected '='"),
        ('{{ raw | split(pat=",",) }}', "expected an argument name"),
        ('{{ raw | split(pat="," }}', "expected ',' or ')'"),
        ('{{ raw | replace(from="a" to="b") }}', "expected ',' or ')'"),
        ("{{ raw.attr }}", "attribute access is not supported"),
        ("{{ raw[0] }}", "index access is not supported"),
        ("{{ now() }}", "function calls are not supported"),
        ("{{ raw ~ 'x' }}", "expected '|' or '}}'"),
        ("{{ raw raw }}", "expected '|' or '}}'"),
        ("{{ true }}", "'true' is a reserved word"),
        ("{{ not raw }}", "'not' is a reserved word"),
        ("{{ {{ raw }} }}", "expected a variable name or a string literal"),
    ],
)
def test_compile_errors(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(source)
    assert message in str(info.value)


def test_error_reports_line_and_column() -> None:
    with pytest.raises(TemplateError, match=r"line 2, column 12: unknown filter 'bogus'"):
        compile_template("first\nx {{ raw | bogus }}")


def test_template_error_is_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


def test_non_string_source_rejected() -> None:
    with pytest.raises(TemplateError):
        compile_template(b"{{ raw }}")  # type: ignore[arg-type]


# --- render-time rejections ----------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ raw }}", "variable 'raw' is not defined"),
        ('{{ raw | split(pat=",") }}', "evaluates to a list"),
        ("{{ raw | last }}", "filter 'last' expects a list, got a string"),
        ("{{ raw | first }}", "filter 'first' expects a list, got a string"),
        ('{{ raw | split(pat=",") | trim }}', "filter 'trim' expects a string, got a list"),
        ('{{ raw | split(pat=",") | upper }}', "filter 'upper' expects a string"),
        ('{{ raw | split(pat=",") | lower }}', "filter 'lower' expects a string"),
        ('{{ raw | split(pat=",") | replace(from="a", to="b") }}', "'replace' expects a string"),
        ('{{ raw | split(pat=",") | split(pat=",") }}', "'split' expects a string"),
    ],
)
def test_render_errors(source: str, message: str) -> None:
    template = compile_template(source)
    kwargs = {} if "not defined" in message else {"raw": "a,b"}
    with pytest.raises(TemplateError) as info:
        template.render(**kwargs)
    assert message in str(info.value)


def test_missing_variable_detected_even_if_other_given() -> None:
    with pytest.raises(TemplateError, match="'signature' is not defined"):
        compile_template("sha256={{ signature }}").render(raw="x")


def test_non_string_variable_rejected() -> None:
    with pytest.raises(TemplateError, match="must be a string"):
        compile_template("{{ raw }}").render(raw=["a"])  # type: ignore[arg-type]


# --- properties ----------------------------------------------------------------

_template_alphabet = st.sampled_from(
    list("{}%#|-()=,\"'` \t\nabr_w.[]0") + ["raw", "{{", "}}", "split", "last", "trim", "replace"]
)


@given(st.one_of(st.text(), st.lists(_template_alphabet).map("".join)))
def test_compile_never_raises_anything_but_template_error(source: str) -> None:
    try:
        template = compile_template(source)
    except TemplateError:
        return
    assert isinstance(template, Template)
    try:
        result = template.render(**{name: "a,b " for name in template.variables})
    except TemplateError:
        return
    assert isinstance(result, str)


@given(st.text().filter(lambda s: "{" not in s))
def test_text_without_open_brace_renders_to_itself(source: str) -> None:
    template = compile_template(source)
    assert template.variables == frozenset()
    assert template.render() == source


@given(st.text(), st.text())
def test_replace_matches_python_for_nonempty_pattern(raw: str, old: str) -> None:
    if not old or '"' in old:
        return
    template = compile_template('{{ raw | replace(from="' + old + '", to="") }}')
    assert template.render(raw=raw) == raw.replace(old, "")
