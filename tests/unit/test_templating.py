"""The shared template sandbox (shared/templating.py): what it refuses, quickly and without
allocating, and what it still renders."""

from __future__ import annotations

import pickle
import re
import resource
import time

import pytest

from shared import templating
from shared.templating import TemplateProblem, check_template, render, render_batch
from tests.hostile_templates import HOSTILE, NORMAL

ADA = {"first_name": "Ada", "last_name": "Lovelace"}
# Pure Python work in small steps, within the work budget: only a time limit stops it (about
# 7 s of CPU without one).
SLOW = ('{% set s = "ab" * 50000 %}{% for j in range(4) %}{% for i in range(10000) %}'
        '{% if (s|upper|lower|upper|lower) == "" %}x{% endif %}{% endfor %}{% endfor %}')


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("text", list(HOSTILE))
def test_a_hostile_template_is_refused_quickly_naming_the_problem(text: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem) as problem:
        check_template(text)
    # The check's own time limit is 1 s; the machine may be loaded.
    assert time.monotonic() - started < 3.0
    message = str(problem.value)
    assert message.startswith("template_error: ") and re.search(HOSTILE[text], message), message
    assert " at 0x" not in message and len(message) <= 220


@pytest.mark.parametrize("text", list(NORMAL))
def test_a_normal_template_passes_the_check_and_renders(text: str) -> None:
    check_template(text)
    assert render(text, ADA) == NORMAL[text]


def test_a_giant_constant_is_neither_folded_at_compile_time_nor_allocated() -> None:
    before = _peak_rss_mb()
    started = time.monotonic()
    text = '{{ "x" * 10**9 }}{{ "y" * 1000000000 }}{{ "z"|center(1000000000) }}'
    # The compiled code holds no folded constant: the operators are intercepted, the filter
    # checked before it runs.
    assert len(templating.ENV.compile(text, raw=True)) < 5_000
    templating.compile_template(text)
    with pytest.raises(TemplateProblem):
        render(text, {})
    assert time.monotonic() - started < 2.0
    assert _peak_rss_mb() - before < 50


def test_intercepted_operators_are_not_folded_by_jinjas_optimizer() -> None:
    # jinja2's BinExpr.as_const raises Impossible for an intercepted operator in a sandbox, so
    # the expression stays in the code and is evaluated (and checked) at render time.
    code = templating.ENV.compile("{{ 6 * 7 }}{{ 2 ** 3 }}{{ 1 + 1 }}{{ 7 // 2 }}{{ 7 % 2 }}",
                                  raw=True)
    assert "call_binop" in code and "42" not in code
    assert render("{{ 6 * 7 }}", {}) == "42"


def test_the_compile_cache_is_bounded_in_entries_and_text() -> None:
    cache = templating.BoundedCache(max_entries=10, max_text_chars=1_000)
    for i in range(50):
        cache.get(f"{i} {{{{ first_name }}}}", templating.ENV.from_string)
    assert len(cache) == 10
    cache.get("x" * 600, templating.ENV.from_string)
    cache.get("y" * 600, templating.ENV.from_string)
    assert cache.text_chars <= 1_000 and len(cache) <= 10
    cache.get("z" * 2_000, templating.ENV.from_string)  # larger than the whole cache: not kept
    assert cache.text_chars <= 1_000


def test_outputs_are_text_or_numbers_and_none_is_empty() -> None:
    assert render("{{ n }} {{ x }} [{{ nothing }}] {{ yes }}",
                  {"n": 3, "x": 2.5, "nothing": None, "yes": True}) == "3 2.5 [] True"
    for value in ([1], {"a": 1}, object(), len, pytest):
        with pytest.raises(TemplateProblem, match="an output got") as problem:
            render("{{ v }}", {"v": value})
        assert " at 0x" not in str(problem.value)


def test_the_output_is_limited() -> None:
    with pytest.raises(TemplateProblem, match="longer than 50 characters"):
        render("{% for i in range(10) %}{{ first_name }}-------{% endfor %}", ADA,
               max_output_chars=50)
    with pytest.raises(TemplateProblem, match="longer than 100,000 characters"):
        render("{% for i in range(3) %}{{ 'x' * 40000 }}{% endfor %}", {})


def test_a_template_problem_survives_pickling_as_it_was() -> None:
    problem = pickle.loads(pickle.dumps(TemplateProblem("division by zero")))
    assert str(problem) == "template_error: division by zero"
    assert problem.reason == "division by zero"


def test_check_template_stops_a_slow_template_at_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match="timed out"):
        check_template(SLOW, time_limit_seconds=0.3)
    assert time.monotonic() - started < 2.0


def test_render_batch_gives_each_message_its_own_result() -> None:
    results = render_batch("{{ 10 // n }} {{ first_name|upper }}",
                           [{"n": 2, "first_name": "a"}, {"n": 0, "first_name": "b"},
                            {"n": 5}, {"n": 1, "first_name": "d"}],
                           time_limit_seconds=1.0)
    assert results[0] == "5 A" and results[3] == "10 D"
    assert isinstance(results[1], TemplateProblem) and "division" in str(results[1])
    assert isinstance(results[2], TemplateProblem) and "'first_name' is undefined" in str(
        results[2])


def test_render_batch_times_out_each_slow_message_and_gives_up_after_three() -> None:
    started = time.process_time()
    results = render_batch(SLOW, [{}] * 6, time_limit_seconds=0.2)
    assert all(isinstance(r, TemplateProblem) and "timed out" in str(r) for r in results)
    # CPU time: three messages of 0.2 s, the other three not tried.
    assert time.process_time() - started < 3 * 0.2 + 0.5


def test_the_check_samples_every_variable_the_template_reads() -> None:
    text = "{{ first_name }} {{ ward }} {% for i in range(2) %}{{ loop.index }}{% endfor %}"
    assert templating.template_variables(text) == {"first_name", "ward"}
    samples = templating.sample_recipient(text)
    assert samples["first_name"] == "Ada" and "ward" in samples and "range" not in samples


def test_an_attribute_of_unknown_type_may_be_used_as_a_number_or_a_mapping() -> None:
    for text in ("{{ age + 1 }}", "{% if age > 17 %}adult{% endif %}", "{{ address.city }}",
                 "{{ score * 1.5 }}"):
        check_template(text)
    # A column is known to be text.
    with pytest.raises(TemplateProblem):
        check_template("{{ last_name * 1.5 }}")
