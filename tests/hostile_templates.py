"""Templates that must be refused when created (issue 12 "Safe templates", issue 15 "Template
output leaks internals"), each with a pattern (re.search) of the reason it is refused for."""

from __future__ import annotations

NESTED_RANGES = ("{% for a in range(100000) %}{% for b in range(100000) %}"
                 "{% for c in range(100000) %}x{% endfor %}{% endfor %}{% endfor %}")

# From the issues, verbatim where they give the text.
REPORTED: dict[str, str] = {
    "{{ 1/0 }}": "division by zero",
    "{{ first_name + 1 }}": "can only concatenate str",
    "{{ 10**100000 }}": "number too large",
    "{% for i in range(10**8) %}x{% endfor %}": r"range\(\) of more than",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}": "recursion",
    "{{ first_name|wordwrap(-1) }}": "invalid width",
    "{{ first_name|truncate(-5) }}": "expected length",
    NESTED_RANGES: r"range\(\) of more than",
    '{{ "x" * 10**9 }}': "repetition would be longer than",
    "{{ first_name.format_map }}": "unsafe",
    "{{ range }}": "an output got a function",
    "{{ self }}": "an output got an object of type TemplateReference",
}

# Other ways to the same harms: huge text in one C call, unbounded work, a repr in the message.
MORE: dict[str, str] = {
    "{{ range|string }}": "the filter got a function",
    "{{ 'Hi ' ~ first_name.upper }}": "'~' got a function",
    "{{ [first_name.upper]|join(', ') }}": "an output got a function",
    "{{ 'x'|center(1000000000) }}": "center would be longer than",
    "{{ first_name.ljust(1000000000) }}": r"ljust\(\) would be longer than",
    "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}": "concatenation would be longer",
    "{{ ('x' * 100000)|replace('x', 'x' * 100000) }}": "replace would be longer than",
    "{{ ('x' * 100000).replace('x', 'x' * 100000) }}": r"replace\(\) would be longer than",
    "{{ '%999999999d' % 1 }}": "format width",
    "{{ '%999999999d'|format(1) }}": "format width",
    "{{ '{:>999999999}'.format(1) }}": "unsafe",
    "{{ (10).to_bytes(1000000000, 'big') }}": "unsafe",
    "{{ 'ab'.translate({97: 'x' * 100000}) }}": "unsafe",
    "{{ (range(10000)|list * 10)|sum(start=[]) }}": r"sum\(\) adds numbers only",
    "{{ [1, 2] }}": "an output got a list",
    "{{ dict }}": "an output got a class",
    "{% for a in first_name * 20000 %}{% for b in first_name * 20000 %}{% endfor %}{% endfor %}":
        "too much work|timed out",
    "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}":
        "too much work|timed out",
    # Shared references nested into 2**30 paths: one comparison, sort or JSON dump of it would
    # run in C for a minute, out of reach of any time limit.
    "{% macro f(a, b, n) %}{% if n %}{{ f([a, a], [b, b], n-1) }}{% else %}{{ a == b }}"
    "{% endif %}{% endmacro %}{{ f([1], [1], 30) }}": "list or mapping larger than",
    "{% set ns = namespace(l=[1]) %}{% for i in range(30) %}{% set ns.l = ns.l + ns.l %}"
    "{% endfor %}{{ ns.l|tojson }}": "list or mapping larger than|repetition|concatenation",
    "{% macro f(l, n) %}{% if n %}{{ f(dict(a=l, b=l), n-1) }}{% else %}{{ l|tojson }}"
    "{% endif %}{% endmacro %}{{ f([1], 30) }}": "list or mapping larger than",
    "{{ ([['x' * 100000]] * 100)|tojson }}": "list or mapping larger than",
    "{% include 'other' %}": "no loader",
    "Hi\n{{ first_name ": "syntax error on line 2",
}

HOSTILE = {**REPORTED, **MORE}

# Still accepted, and what they render for Ada.
NORMAL: dict[str, str] = {
    "Hi {{ first_name }}": "Hi Ada",
    "{% if first_name %}Dear {{ first_name }}{% else %}Hello{% endif %}": "Dear Ada",
    "{{ first_name|upper }}": "ADA",
    '{{ nickname|default("friend") }}': "friend",
    "{{ first_name ~ '!' }}": "Ada!",
    "{% for i in range(3) %}{{ i }}{% endfor %}": "012",
    "{{ '%s is %d' % (first_name, 3) }}": "Ada is 3",
    "{{ [first_name, last_name]|join(' ') }}": "Ada Lovelace",
    "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}"
    "{{ ns.n }}": "3",
    "{{ 2**10 }} {{ 7 // 2 }} {{ 7 % 2 }} {{ 'ab' * 2 }}": "1024 3 1 abab",
    "{{ first_name|center(7) }}|": "  Ada  |",
    "{{ first_name.replace('A', 'E') }}": "Eda",
    "{% for k, v in {'b': 2, 'a': 1}|dictsort %}{{ k }}{{ v }}{% endfor %}": "a1b2",
    "{% set a, b = first_name, 2 %}{{ a }}{{ b }}": "Ada2",
    "{{ [first_name, [1, 2], {'k': (3, 4)}]|tojson }}": '["Ada", [1, 2], {"k": [3, 4]}]',
}
