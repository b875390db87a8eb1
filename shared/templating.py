"""Safe templates: the one hardened Jinja sandbox the scheduler checks templates with and the
dispatcher renders them with.

A template is written by a user of an organisation and rendered for each of its recipients, so
it is untrusted code. Jinja's sandbox stops attribute escapes; this module adds what it leaves
open:

- **Size.** `*`, `**`, `+`, `//` and `%` are intercepted (Jinja then never folds them at compile
  time, so `{{ "x" * 10**9 }}` costs nothing to compile) and refuse results longer than the
  output limit or integers of more than `MAX_INT_BITS` bits; `~` concatenation, the filters that
  can grow text (`center`, `indent`, `wordwrap`, `replace`, `join`, `format`, ...) and the string
  methods that can (`center`, `ljust`, `replace`, `join`, ...) are checked before they allocate;
  the output is counted as it is produced.
- **Work.** Each render has a budget of `WORK_BUDGET` units: a loop iteration, an item of a
  `range` (at most `MAX_RANGE` per call) and a call each cost one. Deep recursion is an error.
  Wall-clock or CPU time is limited by the caller (`time_limit`): the dispatcher renders in a
  worker process (services/dispatcher/rendering.py), the scheduler checks within a time limit.
- **What reaches a message.** An output (`{{ ... }}`) may be text, an integer, a float, a
  Decimal or markup; `None` renders as "" (an attribute stored as JSON null). Anything else —
  a function, a method, a module, a class, a list, an undefined value, any other object — is a
  `TemplateProblem`, never its repr (which would show internals and memory addresses). Filters
  and `~` that turn their input into text accept the same kinds of values, so `{{ range|string }}`
  is refused too.
- **One error type.** Whatever goes wrong while compiling or rendering becomes `TemplateProblem`
  with a short message such as "template_error: division by zero".
"""

from __future__ import annotations

import functools
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal
from types import ModuleType
from typing import Any, Generic, TypeVar

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import make_attrgetter
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_CHARS = 100_000
# Python refuses to print an integer of more than 4,300 digits; 14,000 bits is about 4,200.
MAX_INT_BITS = 14_000
MAX_RANGE = 10_000
WORK_BUDGET = 100_000
# Largest list, tuple or mapping a template may build, counted as a tree: each item, and each
# character of a string in it, once per path to it. What C code does with a structure in one
# call (compare it, sort it, dump it as JSON) costs up to this, and a template could otherwise
# nest shared references into a structure of 2**30 paths in 30 steps.
MAX_STRUCTURE = 1_000_000
# Longest message a TemplateProblem carries (it ends up in a delivery's failure reason).
_MAX_REASON = 200

# Variables every recipient can provide (the recipients table's columns), with sample values
# for the check at creation.
SAMPLE_COLUMNS: dict[str, str] = {
    "first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com",
    "phone": "+4512345678",
}
# Names Jinja resolves to something other than a recipient's variables.
SPECIAL_NAMES = frozenset({"self", "super", "loop", "caller", "varargs", "kwargs"})


class TemplateProblem(Exception):
    """A template cannot be rendered (or could not be, for these variables).

    `str()` is "template_error: <reason>", short, naming the problem; never a repr of an object.
    """

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.split())
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON - 1] + "…"
        self.reason = reason
        super().__init__(f"template_error: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (TemplateProblem, (self.reason,))


# --- the per-render state ----------------------------------------------------------------------

@dataclass
class _Render:
    work_left: int
    max_output_chars: int
    # Tree size of each structure seen in this render, by id (the structure kept alive with it,
    # so that its id is not reused).
    sizes: dict[int, tuple[Any, int]] = field(default_factory=dict)


_CURRENT: ContextVar[_Render | None] = ContextVar("sendout_template_render", default=None)


def _charge(units: int) -> None:
    state = _CURRENT.get()
    if state is None:
        return
    state.work_left -= units
    if state.work_left < 0:
        raise TemplateProblem(f"too much work (more than {WORK_BUDGET:,} loop iterations, "
                              "range items and calls)")


def _max_chars() -> int:
    state = _CURRENT.get()
    return state.max_output_chars if state is not None else MAX_OUTPUT_CHARS


def _refuse_longer(length: int, what: str) -> None:
    limit = _max_chars()
    if length > limit:
        raise TemplateProblem(f"{what} would be longer than {limit:,} characters")


# --- what may become text ----------------------------------------------------------------------

_NUMBERS = (int, float, Decimal)


def _kind(value: Any) -> str:
    """What a value is, in the user's words, without its repr."""
    if isinstance(value, ModuleType):
        return "a module"
    if isinstance(value, type):
        return "a class"
    if isinstance(value, Undefined):
        return "an undefined value"
    if callable(value):
        return "a function"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"an object of type {type(value).__name__}"


def _text_like(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, *_NUMBERS)):
        return
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises its own error, naming the variable
    hint = "; join its items, e.g. |join(', ')" if isinstance(value, list | tuple) else ""
    raise TemplateProblem(f"{where} got {_kind(value)}, not text or a number{hint}")


def output_value(value: Any) -> str:
    """The text an output `{{ ... }}` puts into a message (the environment's `finalize`)."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, (str, *_NUMBERS)):
        return str(value)
    _text_like(value, "an output")
    raise AssertionError("unreachable")  # pragma: no cover


# --- structures --------------------------------------------------------------------------------

_STRUCTURES = (list, tuple, dict, set, frozenset)


def _tree_size(value: Any) -> int:
    """How many items and characters `value` holds, counted once per path (a cheap walk: each
    distinct structure is measured once per render); stops early past MAX_STRUCTURE."""
    state = _CURRENT.get()
    return _measure(value, state.sizes if state is not None else {})


def _measure(value: Any, sizes: dict[int, tuple[Any, int]]) -> int:
    if isinstance(value, str):
        return len(value) + 1
    if not isinstance(value, _STRUCTURES):
        return 1
    known = sizes.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    total = 1
    for item in (value.items() if isinstance(value, dict) else value):
        total += _measure(item, sizes)
        if total > MAX_STRUCTURE:
            break
    sizes[id(value)] = (value, total)
    return total


def _refuse_larger(size: int) -> None:
    if size > MAX_STRUCTURE:
        raise TemplateProblem(f"a list or mapping larger than {MAX_STRUCTURE:,} items and "
                              "characters")


def _structure(value: Any) -> Any:
    """A list, tuple or mapping a template built (a literal, a call's or a filter's result),
    if it is within MAX_STRUCTURE."""
    if isinstance(value, _STRUCTURES):
        try:
            _refuse_larger(_tree_size(value))
        except RecursionError:
            raise TemplateProblem("a list or mapping nested too deeply") from None
    return value


# --- guarded operations ------------------------------------------------------------------------

_PERCENT_SPEC = re.compile(
    r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")


def _check_percent_widths(fmt: str) -> None:
    for width, precision, _conversion in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise TemplateProblem("'*' widths in % formatting are not supported")
            if number and (len(number) > 9 or int(number) > _max_chars()):
                raise TemplateProblem(f"a % format width of {number} is too wide")


def _check_percent_format(fmt: str, args: Any) -> None:
    _check_percent_widths(fmt)
    values = args.values() if isinstance(args, Mapping) else args if isinstance(
        args, tuple) else (args,)
    for value in values:
        _text_like(value, "% formatting")
    _refuse_longer(len(fmt) + sum(len(v) for v in values if isinstance(v, str)),
                   "the formatted text")


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise TemplateProblem(f"a number too large (more than {MAX_INT_BITS:,} bits)")


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple | bytes)


def _multiply(left: Any, right: Any) -> Any:
    if _sized(left) and isinstance(right, int):
        _refuse_longer(len(left) * max(right, 0), "a repetition")
        if not isinstance(left, str):
            _refuse_larger(_tree_size(left) * max(right, 0))
    elif _sized(right) and isinstance(left, int):
        _refuse_longer(len(right) * max(left, 0), "a repetition")
        if not isinstance(right, str):
            _refuse_larger(_tree_size(right) * max(left, 0))
    elif type(left) is int and type(right) is int:
        _check_int_bits(left.bit_length() + right.bit_length())
    return left * right


def _power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_int_bits(abs(left).bit_length() * right if right < MAX_INT_BITS + 1
                        else MAX_INT_BITS + 1)
    elif isinstance(left, Decimal) or isinstance(right, Decimal):
        if abs(right) > MAX_INT_BITS:
            raise TemplateProblem("an exponent too large")
    return left**right


def _add(left: Any, right: Any) -> Any:
    if _sized(left) and _sized(right):
        _refuse_longer(len(left) + len(right), "a concatenation")
        if not isinstance(left, str):
            _refuse_larger(_tree_size(left) + _tree_size(right))
    return left + right


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _check_percent_format(left, right)
    return left % right


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "*": _multiply, "**": _power, "+": _add, "%": _modulo, "//": lambda a, b: a // b,
}


def _concat(parts: tuple[Any, ...]) -> str:
    """`a ~ b`: what Jinja's str_join does, for text and numbers only, within the size limit."""
    for part in parts:
        _text_like(part, "'~'")
    texts = [output_value(part) for part in parts]
    _refuse_longer(sum(map(len, texts)), "a concatenation")
    return "".join(texts)


def _iterate(iterable: Any) -> Iterator[Any]:
    """The iterable of a `{% for %}` loop, each iteration charged to the render's budget."""
    for item in iterable:
        _charge(1)
        yield item


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateProblem(f"range() of more than {MAX_RANGE:,} items")
    _charge(len(numbers))
    return numbers


# Methods of a string a template may call; the others (format, format_map, translate, encode,
# expandtabs, ...) can make huge or leaky text and have a filter where one is needed.
_STR_METHODS = frozenset({
    "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
    "isalpha", "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
    "isupper", "join", "ljust", "lower", "lstrip", "partition", "removeprefix", "removesuffix",
    "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
    "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
})


def _replaced_length(text: str, old: Any, new: Any, count: Any = -1) -> int:
    old, new = str(old), str(new)
    hits = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _check_padding(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width", 0)
    if isinstance(width, int):
        _refuse_longer(width, f"{name}()")


def _check_replace(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) >= 2:
        _refuse_longer(_replaced_length(text, *args[:3]), "replace()")


def _check_join(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if not args:
        return
    items = args[0]
    if isinstance(items, list | tuple):
        _charge(len(items))
        _refuse_longer(sum(len(i) for i in items if isinstance(i, str))
                       + len(text) * max(len(items) - 1, 0), "join()")


# The str methods whose result can outgrow the limits, and the check of each.
_STR_METHOD_CHECKS: dict[str, Callable[[str, str, tuple[Any, ...], dict[str, Any]], None]] = {
    "center": _check_padding, "ljust": _check_padding, "rjust": _check_padding,
    "zfill": _check_padding, "replace": _check_replace, "join": _check_join,
}


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    check = _STR_METHOD_CHECKS.get(name)
    if check is not None:
        check(text, name, args, kwargs)


# --- filters -----------------------------------------------------------------------------------

def _width(width: Any) -> int:
    return width if isinstance(width, int) else len(str(width))


def _filter_text(value: Any, *_: Any, **__: Any) -> None:
    _text_like(value, "the filter")


def _filter_center(value: Any, width: Any = 80) -> None:
    _filter_text(value)
    _refuse_longer(_width(width), "center")


def _filter_indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    _filter_text(value)
    lines = str(value).count("\n") + 1
    _refuse_longer(len(str(value)) + lines * _width(width), "indent")


def _filter_wordwrap(value: Any, width: int = 79, break_long_words: bool = True,
                     wrapstring: str | None = None, *_: Any, **__: Any) -> None:
    _filter_text(value)
    breaks = len(str(value)) // max(width if isinstance(width, int) else 1, 1) + 1
    _refuse_longer(len(str(value)) + breaks * len(wrapstring or "\n"), "wordwrap")


def _filter_replace(value: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    for part in (value, old, new):
        _filter_text(part)
    _refuse_longer(_replaced_length(str(value), old, new,
                                    -1 if count is None else count), "replace")


def _filter_format(value: Any, *args: Any, **kwargs: Any) -> None:
    _filter_text(value)
    _check_percent_format(str(value), kwargs if kwargs else args)


def _filter_counted(value: Any, count: Any = 1, *_: Any, **__: Any) -> None:
    if isinstance(count, int) and count > MAX_RANGE:
        raise TemplateProblem(f"a count of {count} is too large")


def _filter_total(value: Any, attribute: Any = None, start: Any = 0) -> None:
    if not isinstance(start, _NUMBERS):
        raise TemplateProblem("sum() adds numbers only")


def _filter_checks() -> dict[str, Callable[..., None]]:
    text = _filter_text
    return {
        "capitalize": text, "e": text, "escape": text, "forceescape": text, "lower": text,
        "safe": text, "string": text, "striptags": text, "title": text, "trim": text,
        "truncate": text, "upper": text, "urlize": text, "wordcount": text,
        "center": _filter_center, "indent": _filter_indent, "wordwrap": _filter_wordwrap,
        "replace": _filter_replace, "format": _filter_format, "batch": _filter_counted,
        "slice": _filter_counted, "sum": _filter_total,
    }


def _guarded_join(environment: SafeEnvironment) -> Callable[..., str]:
    def join(value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
        items = list(value)
        _charge(len(items))
        if attribute is not None:
            getter = make_attrgetter(environment, attribute)
            items = [getter(item) for item in items]
        texts = [output_value(item) for item in items]
        separator = output_value(d)
        _refuse_longer(sum(map(len, texts)) + len(separator) * max(len(texts) - 1, 0), "join")
        return separator.join(texts)

    return join


def _guarded(func: Callable[..., Any], check: Callable[..., None]) -> Callable[..., Any]:
    # A filter that takes the context/environment first is marked so by Jinja; the marking is
    # copied by functools.wraps, so Jinja passes the same first argument to the wrapper.
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args[skip:], **kwargs)
        return _structure(func(*args, **kwargs))

    return guarded


def _no_check(*_: Any, **__: Any) -> None:
    pass


# --- the environment ---------------------------------------------------------------------------

class _GuardedCodeGenerator(CodeGenerator):
    """Compiles `{% for %}` over a budgeted iterator and `~` through the guarded concatenation."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            if not _is_guarded(loop.iter):
                loop.iter = nodes.Call(nodes.EnvironmentAttribute("guarded_iterate"),
                                       [loop.iter], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.guarded_structure(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.guarded_structure(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target: `{% for a, b in ... %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.guarded_structure(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _is_guarded(node: nodes.Node) -> bool:
    return (isinstance(node, nodes.Call) and isinstance(node.node, nodes.EnvironmentAttribute)
            and node.node.name == "guarded_iterate")


class SafeEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with size, work and output guards; see the module's doc."""

    intercepted_binops = frozenset(_BINOPS)
    code_generator_class = _GuardedCodeGenerator

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, finalize=output_value)
        self.globals["range"] = _range
        # lipsum can be asked for any amount of text; a message has no use for it.
        self.globals.pop("lipsum", None)
        # pprint and xmlattr print reprs / build HTML attributes: no use in a message.
        for name in ("pprint", "xmlattr"):
            self.filters.pop(name, None)
        self.filters["join"] = _guarded_join(self)
        checks = _filter_checks()
        for name, func in list(self.filters.items()):
            self.filters[name] = _guarded(func, checks.get(name, _no_check))
        self.guarded_iterate = _iterate
        self.guarded_concat = _concat
        self.guarded_structure = _structure

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator](left, right)

    def wrap_str_format(self, value: Any) -> None:
        # str.format and format_map are refused (see _STR_METHODS), not sandboxed: a format
        # spec can ask for any width.
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, (*_NUMBERS, bytes)):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _charge(1)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        return _structure(super().call(__context, __obj, *args, **kwargs))


ENV = SafeEnvironment()


# --- compiling, with a bounded cache -----------------------------------------------------------

_V = TypeVar("_V")


class BoundedCache(Generic[_V]):
    """Least recently used entries keyed by template text, bounded in count and in total text.

    What it holds is at most proportional to the text of its templates: the guarded operators
    are never folded at compile time, so a compiled template holds no giant constant.
    """

    def __init__(self, max_entries: int = 512, max_text_chars: int = 5_000_000) -> None:
        self.max_entries = max_entries
        self.max_text_chars = max_text_chars
        self._entries: OrderedDict[str, _V] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, text: str, make: Callable[[str], _V]) -> _V:
        # A hit takes no lock (this runs twice per message on the dispatcher's hot path): each
        # OrderedDict operation is atomic under the GIL, and an entry evicted in between is a
        # miss.
        try:
            value = self._entries[text]
            self._entries.move_to_end(text)
            return value
        except KeyError:
            pass
        value = make(text)
        if len(text) > self.max_text_chars:
            return value
        with self._lock:
            if text not in self._entries:
                self._entries[text] = value
                self._chars += len(text)
                while (len(self._entries) > self.max_entries
                       or self._chars > self.max_text_chars):
                    old, _ = self._entries.popitem(last=False)
                    self._chars -= len(old)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def text_chars(self) -> int:
        return self._chars


_COMPILED: BoundedCache[Template] = BoundedCache()


def compile_template(text: str) -> Template:
    """The compiled template (cached), or TemplateProblem naming the syntax error."""
    return _COMPILED.get(text, _compile)


def _compile(text: str) -> Template:
    try:
        return ENV.from_string(text)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"syntax error on line {exc.lineno}: {exc.message}") from None
    except TemplateProblem:
        raise
    except Exception as exc:  # any failure to compile or render is the template's problem
        raise TemplateProblem(_reason(exc)) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TemplateProblem):
        return exc.reason
    if isinstance(exc, RecursionError):
        return "too deeply nested (recursion)"
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error on line {exc.lineno}: {exc.message}"
    return text


# --- rendering ---------------------------------------------------------------------------------

def render(text: str, variables: Mapping[str, Any], *,
           max_output_chars: int = MAX_OUTPUT_CHARS) -> str:
    """The template rendered with these variables, or TemplateProblem (no time limit here: the
    caller wraps this in `time_limit` or runs it where a hang can be cut off)."""
    template = compile_template(text)
    state = _Render(work_left=WORK_BUDGET, max_output_chars=max_output_chars)
    token = _CURRENT.set(state)
    try:
        out: list[str] = []
        size = 0
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > max_output_chars:
                raise TemplateProblem(f"the message would be longer than {max_output_chars:,} "
                                      "characters")
            out.append(chunk)
        return "".join(out)
    except TemplateProblem:
        raise
    except Exception as exc:  # any failure to compile or render is the template's problem
        raise TemplateProblem(_reason(exc)) from None
    finally:
        _CURRENT.reset(token)


class _TimeUp(BaseException):
    """Raised by the timer's signal handler; a BaseException so templates cannot swallow it."""


@contextmanager
def time_limit(seconds: float, *, cpu: bool = False) -> Iterator[None]:
    """Interrupts the block after `seconds` (of this process's CPU time if `cpu`, else of wall
    time) with TemplateProblem("timed out").

    A signal timer: it works in the main thread only (elsewhere the block runs without it, still
    bounded by the work budget) and interrupts Python code, not one long C call — which is why
    the operations that could make one are guarded by size.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    which, signum = ((signal.ITIMER_PROF, signal.SIGPROF) if cpu
                     else (signal.ITIMER_REAL, signal.SIGALRM))
    armed = True

    def on_timer(_signum: int, _frame: Any) -> None:
        if armed:
            raise _TimeUp

    previous = signal.signal(signum, on_timer)
    try:
        try:
            signal.setitimer(which, seconds)
            yield
        finally:
            armed = False
            signal.setitimer(which, 0)
            signal.signal(signum, previous)
    except _TimeUp:
        raise TemplateProblem("timed out") from None


def render_batch(text: str, variables: Iterable[Mapping[str, Any]], *,
                 time_limit_seconds: float, max_output_chars: int = MAX_OUTPUT_CHARS,
                 max_timeouts: int = 3) -> list[str | TemplateProblem]:
    """Each message's text or its problem, each within its own CPU time limit.

    After `max_timeouts` messages of the batch timed out, the rest are not tried (each gets
    "timed out" at once): a template that loops forever would otherwise hold the renderer for
    messages times the limit.
    """
    results: list[str | TemplateProblem] = []
    try:
        compile_template(text)
    except TemplateProblem as problem:
        return [problem for _ in variables]
    timeouts = 0
    for item in variables:
        if timeouts >= max_timeouts:
            results.append(TemplateProblem("timed out (as earlier messages of this batch did)"))
            continue
        try:
            with time_limit(time_limit_seconds, cpu=True):
                results.append(render(text, item, max_output_chars=max_output_chars))
        except TemplateProblem as problem:
            if problem.reason == "timed out":
                timeouts += 1
            results.append(problem)
    return results


# --- the check at creation ---------------------------------------------------------------------

class _Sample(str):
    """A sample value of a recipient attribute, whose type the check cannot know: text that also
    passes for a number in arithmetic and comparisons, and for a mapping (`{{ address.city }}`),
    so that a template is refused only for what fails whatever the attribute holds."""

    def _number(self, other: Any) -> Any:
        if isinstance(other, _NUMBERS) and not isinstance(other, bool):
            return 1
        return NotImplemented

    __sub__ = __rsub__ = __truediv__ = __rtruediv__ = __rmul__ = __rpow__ = _number
    __radd__ = __rfloordiv__ = __floordiv__ = __rmod__ = _number

    def _compare(self, other: Any) -> Any:
        if isinstance(other, _NUMBERS):
            return True
        return NotImplemented

    __lt__ = __le__ = __gt__ = __ge__ = _compare
    __hash__ = str.__hash__

    def __add__(self, other: Any) -> Any:
        if isinstance(other, _NUMBERS) and not isinstance(other, bool):
            return 1
        return str.__add__(self, other)

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, float | Decimal):
            return 1
        return str.__mul__(self, other)

    def __pow__(self, other: Any) -> Any:
        return self._number(other)

    def __mod__(self, other: Any) -> Any:
        if isinstance(other, _NUMBERS):
            return 1
        return str.__mod__(self, other)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return _Sample("sample")
        return str.__getitem__(self, key)


def template_variables(text: str) -> set[str]:
    """The recipient variables a template reads (names it neither defines nor gets from Jinja)."""
    names = meta.find_undeclared_variables(ENV.parse(text))
    return {n for n in names if n not in ENV.globals and n not in SPECIAL_NAMES}


def sample_recipient(text: str) -> dict[str, Any]:
    """Variables a recipient could have: the columns, and a sample of each attribute read."""
    variables: dict[str, Any] = dict(SAMPLE_COLUMNS)
    try:
        names = template_variables(text)
    except Exception:  # a template that does not parse has no variables to sample
        return variables
    for name in names - SAMPLE_COLUMNS.keys():
        variables[name] = _Sample("sample")
    return variables


def check_template(text: str, sample_variables: Mapping[str, Any] | None = None, *,
                   time_limit_seconds: float = 1.0,
                   max_output_chars: int = MAX_OUTPUT_CHARS) -> None:
    """Compile the template and render it once with sample data (by default `sample_recipient`),
    within a (wall) time limit; TemplateProblem if either fails."""
    started = time.monotonic()
    with time_limit(time_limit_seconds):
        compile_template(text)
        variables = sample_recipient(text) if sample_variables is None else sample_variables
        render(text, variables, max_output_chars=max_output_chars)
    if time.monotonic() - started > time_limit_seconds:
        raise TemplateProblem("timed out")


def plain_parts(tree: nodes.Template) -> list[tuple[str, str | None]] | None:
    """The (text, None) and ("", variable) parts of a template that is only text and
    `{{ name }}` outputs, else None.

    Such a template reads no attribute, calls nothing and applies no filter: rendering it is
    joining its text with `output_value` of each variable, which the dispatcher does inline.
    """
    parts: list[tuple[str, str | None]] = []
    for node in tree.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append((child.data, None))
            elif (isinstance(child, nodes.Name) and child.ctx == "load"
                  and child.name not in ENV.globals and child.name not in SPECIAL_NAMES):
                parts.append(("", child.name))
            else:
                return None
    return parts


# Longest template whose inline renderer is cached: with the cache's entries, this bounds it.
_MAX_INLINE_CACHED = 100_000


def inline_renderer(text: str) -> Callable[..., str] | None:
    """For a template that is only text and `{{ name }}` outputs, a function of (variables,
    max_output_chars=MAX_OUTPUT_CHARS) that renders it by joining its parts (no Jinja context,
    nothing to guard, fast enough for a million messages); None for any other template, which
    `render` must run (under a time limit)."""
    if len(text) > _MAX_INLINE_CACHED:
        return _make_inline(text)
    return _cached_inline(text)


@functools.lru_cache(maxsize=128)  # at most 128 x 100,000 characters of template text
def _cached_inline(text: str) -> Callable[..., str] | None:
    return _make_inline(text)


def _make_inline(text: str) -> Callable[..., str] | None:
    try:
        parts = plain_parts(ENV.parse(text))
    except Exception:
        return None
    if parts is None:
        return None

    def render_inline(variables: Mapping[str, Any],
                      max_output_chars: int = MAX_OUTPUT_CHARS) -> str:
        out = []
        for data, name in parts:
            if name is None:
                out.append(data)
                continue
            try:
                value = variables[name]
            except KeyError:
                raise TemplateProblem(f"{name!r} is undefined") from None
            out.append(value if type(value) is str else output_value(value))
        message = "".join(out)
        if len(message) > max_output_chars:
            raise TemplateProblem(f"the message would be longer than {max_output_chars:,} "
                                  "characters")
        return message

    return render_inline
