"""model/template_sandbox.py: a hostile template is refused before it spends much, whatever
it tries; an ordinary one renders as Jinja would."""

from __future__ import annotations

import threading
import time

import pytest
from jinja2.exceptions import SecurityError, TemplateAssertionError, UndefinedError

from model.template_sandbox import (
    MAX_STEPS,
    BoundedTemplate,
    Budget,
    OutputTooLong,
    printed_size,
)

MESSAGES = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]


def render(source: str, max_chars: int = 2000) -> str:
    return BoundedTemplate(source).render({"messages": MESSAGES}, max_chars)


def test_an_ordinary_template_renders():
    source = (
        "{% for m in messages %}{{ loop.index }}. {{ m.role | upper }}: "
        "{{ m.content ~ '!' }}{% if not loop.last %}, {% endif %}{% endfor %}"
        "{{ messages | map(attribute='content') | join('/') }}{{ messages | tojson }}"
    )
    assert render(source) == (
        '1. USER: Hello!, 2. ASSISTANT: Hi!Hello/Hi[{"role": "user", "content": "Hello"}, '
        '{"role": "assistant", "content": "Hi"}]'
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",  # one big string
        "{{ ['x'] * 10**9 }}",
        "{{ 2 ** 100000 }}",  # one big number
        "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}",
        "{{ '%1000000000s' % 'x' }}",  # widths
        "{{ '%1000000000s' | format('x') }}",
        "{{ '%*s' % (5, 'x') }}",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}",  # doubling
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
        "{% set ns = namespace(l=['x' * 50000]) %}{% for i in range(30) %}"
        "{% set ns.l = ns.l + ns.l %}{% endfor %}",
        "{{ ('x' * 50000).replace('x', 'y' * 50000) }}",
        "{{ (['x' * 50000] * 10) | join }}",
        "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(60) }}",  # exponential calls
        "{% set s %}{% for i in range(99999) %}{{ 'y' * 50 }}{% endfor %}{% endset %}",
        "{% set l = ['x' * 40000] * 20 %}{% for i in range(100) %}{{ l|length }}{% set t %}"
        "{{ l }}{% endset %}{% endfor %}",  # printing a big list
    ],
)
def test_hostile_templates_are_refused_quickly(source):
    started = time.perf_counter()
    with pytest.raises(SecurityError):
        render(source)
    assert time.perf_counter() - started < 10  # bounded (about 0.5 s at most on one core)


@pytest.mark.parametrize(
    "source, error",
    [
        ("{{ 'x'.ljust(10**9) }}", SecurityError),  # methods: read-only ones only
        ("{{ '{:>1000000000}'.format(1) }}", SecurityError),
        ("{{ messages.append(1) }}", SecurityError),
        ("{{ messages.__class__.__mro__ }}", (SecurityError, AttributeError)),
        ("{{ 'x' | center(10**9) }}", TemplateAssertionError),  # filters left out
        ("{{ [1, 2] | random }}", TemplateAssertionError),
        ("{{ lipsum(10**5) }}", UndefinedError),
        ("{{ [[1], [2]] | sum(start=[]) }}", SecurityError),
    ],
)
def test_what_the_sandbox_leaves_out(source, error):
    with pytest.raises(error):
        render(source)


def test_a_namespace_holding_itself_prints_once():
    assert render("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}").count("{...}") == 1


def test_output_past_the_limit_stops_the_render():
    with pytest.raises(OutputTooLong):
        render("{% for i in range(1000) %}abcdefghij{% endfor %}", max_chars=50)
    assert len(render("{% for i in range(5) %}abcdefghij{% endfor %}", max_chars=50)) == 50


def test_budget_counts_steps_and_characters():
    budget = Budget(steps=2, chars=10)
    budget.spend(4)
    budget.allow(6, "this")
    with pytest.raises(SecurityError, match="could make 7 characters"):
        budget.allow(7, "that")
    budget.spend(6)
    with pytest.raises(SecurityError, match="ran past 2 steps"):
        budget.spend()
    with pytest.raises(SecurityError, match="more than 3 characters"):
        Budget(steps=5, chars=3).spend(4)


def test_printed_size_bounds_str_without_making_it():
    values = ["abc", [1, "de", {"k": None}], 2**100, 1.5, ("x",), {"a", "b"}]
    for value in values:
        assert printed_size(value, 10**6) >= len(str(value))
    shared = ["y" * 1000] * 1000
    assert printed_size(shared, 5000) <= 5000 + 1002  # stops soon after the limit


def test_steps_run_out_at_the_budget():
    loop = "{% for i in range(N) %}{% endfor %}"
    render(loop.replace("N", str(MAX_STEPS // 2)))
    with pytest.raises(SecurityError, match="steps"):
        render(loop.replace("N", str(MAX_STEPS // 2 + 1)) * 2)


def test_renders_in_threads_keep_their_own_budgets():
    template = BoundedTemplate("{% for i in range(40000) %}{% endfor %}{{ messages|length }}")
    results, errors = [], []

    def run() -> None:
        try:
            results.append(template.render({"messages": MESSAGES}, 100))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == ["2"] * 4


def test_long_input_is_read_within_a_budget_that_grows_with_it():
    big = {"messages": [{"role": "user", "content": "a" * 2_000_000}]}
    template = BoundedTemplate("{% for m in messages %}{{ m.content | trim }}{% endfor %}")
    with pytest.raises(SecurityError):  # the budget alone would not read it
        template.render(big, 100)
    with pytest.raises(OutputTooLong):  # with its size counted, it is found too long
        template.render(big, 100, input_chars=2_000_000)
