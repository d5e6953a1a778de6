"""A Jinja environment for templates nobody vouched for (a checkpoint's chat template):
sandboxed, and bounded in what one render may cost.

Jinja's ImmutableSandboxedEnvironment, the one Hugging Face and vLLM render chat templates
with, keeps a template away from Python's internals and from changing the values it is
given. It does not bound the work: `{{ 'x' * 10**9 }}`, loops inside loops, a string
doubled thirty times in a namespace, or a macro that calls itself twice would each hold
the server. Here every render gets a Budget:

    steps   each call, filter, operator, loop iteration and output piece costs one
    chars   every value those make is charged the characters it prints as

and an operation whose inputs could make more than the budget has left is refused before
it runs (`*`, `+`, `%` and `**` on big operands, `join`, `replace`, `~`, printing a list).
Methods of strings, lists and dicts are limited to read-only ones that make no more text
than they are given; the filters that could (`center`, `wordwrap`, ...) or that draw random
numbers (`random`) are left out. A template that runs past its budget fails with a
SecurityError naming the limit, as do the sandbox's own refusals.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols
from jinja2.filters import FILTERS
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context
from jinja2.visitor import NodeTransformer

MAX_STEPS = 100_000  # a conversation of a thousand messages takes some 20,000
MAX_INT_BITS = 4096  # integers a template computes (`**`, `*`)
# The chars budget of a render: this many times its output limit and its input, plus a
# floor for small limits. A template builds its text from pieces (`+`, `~`, strip()), each
# charged; reading a long message (to find it too long) costs a few times its length.
CHARS_PER_OUTPUT_CHAR = 32
CHARS_PER_INPUT_CHAR = 4
MIN_CHARS_BUDGET = 1_000_000

# Read-only methods that make at most the text they are given (replace and join are
# checked before they run).
SAFE_METHODS = frozenset(
    {
        *("strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "partition"),
        *("rpartition", "startswith", "endswith", "removeprefix", "removesuffix"),
        *("upper", "lower", "title", "capitalize", "casefold", "swapcase", "replace"),
        *("find", "rfind", "index", "rindex", "count", "join"),
        *("isalpha", "isdigit", "isspace", "isalnum", "isupper", "islower", "istitle"),
        *("get", "items", "keys", "values"),
    }
)
# Jinja's filters but those that can make much more text than they read, draw random
# numbers, or serve HTML.
LEFT_OUT_FILTERS = frozenset(
    {
        *("center", "wordwrap", "indent", "batch", "slice", "filesizeformat", "pprint"),
        *("random", "urlize", "urlencode", "xmlattr", "striptags", "forceescape"),
    }
)
_PASSED = (Context, EvalContext, ImmutableSandboxedEnvironment)  # what Jinja hands filters
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")


class Budget:
    """What one render may still spend: steps and characters."""

    def __init__(self, steps: int, chars: int):
        self.steps = steps
        self.chars = chars
        self._max_steps, self._max_chars = steps, chars

    def spend(self, chars: int = 0) -> None:
        """One step that makes `chars` characters."""
        self.steps -= 1
        self.chars -= chars
        if self.steps < 0:
            raise SecurityError(f"the template ran past {self._max_steps:,} steps")
        if self.chars < 0:
            raise SecurityError(f"the template made more than {self._max_chars:,} characters")

    def allow(self, chars: int, what: str) -> None:
        """Refuse an operation that could make `chars` characters, before it runs."""
        if chars > self.chars:
            raise SecurityError(
                f"{what} could make {chars:,} characters; the render has {self.chars:,} "
                f"left of its {self._max_chars:,}"
            )


def printed_size(value: Any, limit: int) -> int:
    """An upper bound of len(str(value)) (and of its JSON with short escapes), counted
    without making it; stops early once past `limit`."""
    total, stack, seen = 0, [value], set()
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, list | tuple | set | frozenset | dict | Namespace):
            if id(item) in seen:  # a namespace can hold itself; repr prints it once
                total += 8
                continue
            seen.add(id(item))
            if isinstance(item, Namespace):
                item = object.__getattribute__(item, "_Namespace__attrs")
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            else:
                stack.extend(item)
            total += 2 + 4 * len(item)
        else:  # loop contexts, macros, undefined: short reprs
            total += 64
    return total


class _Bounded(NodeTransformer):
    """Routes what the sandbox does not intercept through the budget: loop iterations,
    `~` and every piece of output."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(node.iter, "_bounded_iter")
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(nodes.Tuple(node.nodes, "load", lineno=node.lineno), "_bounded_concat")

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [_filter(child, "_bounded_emit") for child in node.nodes]
        return node


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with a Budget charged by every render (see the module's docstring).
    Hugging Face's conventions: blocks trimmed, `break` and `continue`, `raise_exception`,
    a `tojson` that keeps non-ASCII characters."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        self.budget: Budget | None = None  # set for each render
        self.filters = {
            name: self._charged(function)
            for name, function in FILTERS.items()
            if name not in LEFT_OUT_FILTERS
        }
        self.filters["tojson"] = self._charged(self._tojson)
        self.filters["_bounded_iter"] = _bounded_iter
        self.filters["_bounded_concat"] = _bounded_concat
        self.filters["_bounded_emit"] = _bounded_emit
        self.globals.pop("lipsum", None)  # paragraphs of random text

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        return super()._generate(_Bounded().visit(source), *args, **kwargs)

    def spending(self) -> Budget:
        if self.budget is None:  # at compile time: the optimizer then folds nothing
            raise SecurityError("no render is running")
        return self.budget

    def wrap_str_format(self, value: Any) -> None:
        """No str.format or format_map: their widths make text unchecked (is_safe_attribute
        refuses them as it does any method not in SAFE_METHODS)."""
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        builtin = isinstance(obj, str | list | tuple | dict)
        return not (builtin and callable(value) and attr not in SAFE_METHODS)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = __self.spending()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in ("join", "replace"):
            args = _checked_str_method(budget, owner, __obj.__name__, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.spend(printed_size(result, budget.chars + 1))
        return result

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = self.spending()
        _check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.spend(printed_size(result, budget.chars + 1))
        return result

    def _charged(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """A filter that refuses inputs that could print past the budget, and charges
        what it makes."""

        @functools.wraps(function)  # keeps Jinja's pass_context and the like
        def charged(*args: Any, **kwargs: Any) -> Any:
            budget = self.spending()
            values = [a for a in args if not isinstance(a, _PASSED)] + list(kwargs.values())
            size = sum(printed_size(value, budget.chars + 1) for value in values)
            expands = 6 if function.__name__ in ("do_tojson", "_tojson", "escape") else 1
            budget.allow(size * expands, f"the filter {function.__name__}")
            if function.__name__ == "do_format" and values and isinstance(values[0], str):
                budget.allow(_percent_size(values[0], values[1:], budget), "format")
            if function.__name__ == "do_sum":
                _numbers_only(values[0])
            result = function(*args, **kwargs)
            if isinstance(result, Iterator):  # map, select, ...: lazily, item by item
                return _charged_items(budget, result)
            budget.spend(printed_size(result, budget.chars + 1))
            return result

        return charged

    @staticmethod
    def _tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        """Hugging Face's tojson: plain JSON, non-ASCII kept (Jinja's escapes for HTML)."""
        if indent is not None and not 0 <= indent <= 8:
            raise SecurityError("tojson: indent must be 0 to 8")
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )


def _checked_str_method(
    budget: Budget, text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Refuse a str.join or str.replace whose result could be past the budget; a join's
    items are read once here (a generator could not be read twice)."""
    if name == "join" and args:
        items = list(args[0])
        size = sum(printed_size(item, budget.chars + 1) for item in items)
        budget.allow(size + len(text) * len(items), "join")
        return (items, *args[1:])
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        old, new = args[0], args[1]
        if isinstance(new, str):
            count = text.count(old) if old else len(text) + 1
            budget.allow(len(text) + count * max(len(new) - len(old), 0), "replace")
    return args


def _check_binop(budget: Budget, operator: str, left: Any, right: Any) -> None:
    sequences = str | list | tuple
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, sequences) and isinstance(times, int):
                size = printed_size(seq, budget.chars + 1) * max(times, 0)
                budget.allow(size, "*")
        if _is_int(left) and _is_int(right):
            _check_bits(left.bit_length() + right.bit_length())
    elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
        size = printed_size(left, budget.chars + 1) + printed_size(right, budget.chars + 1)
        budget.allow(size, "+")
    elif operator == "**" and _is_int(left) and _is_int(right) and right > 0:
        _check_bits(max(abs(left).bit_length() - 1, 1) * right)
    elif operator == "%" and isinstance(left, str):
        budget.allow(_percent_size(left, [right], budget), "%")


def _percent_size(template: str, values: list[Any], budget: Budget) -> int:
    """An upper bound of the length of `template % values`: its fixed text, each
    field's width and precision, and the values printed."""
    size = len(template) + sum(printed_size(v, budget.chars + 1) for v in values)
    for match in _PERCENT_SPEC.finditer(template):
        width, precision = match.group(1), match.group(2)
        if "*" in (width, precision):
            raise SecurityError("% formatting: a width or precision of * is not allowed")
        size += int(width or 0) + int(precision or 0) + 320  # %f of 1e308: 309 digits
    return size


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise SecurityError(f"an integer of over {MAX_INT_BITS} bits")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers_only(values: Any) -> None:
    """sum: numbers only (adding lists or strings takes time quadratic in their count)."""
    if not isinstance(values, list | tuple | range):
        values = list(values)
    if not all(isinstance(v, int | float) for v in values):
        raise SecurityError("sum adds numbers only")


def _charged_items(budget: Budget, items: Iterator[Any]) -> Iterator[Any]:
    for item in items:
        budget.spend(printed_size(item, budget.chars + 1))
        yield item


@pass_context
def _bounded_iter(context: Context, iterable: Any) -> Iterator[Any]:
    """A loop's items, one step each."""
    budget = context.environment.spending()  # type: ignore[attr-defined]
    for item in iterable:
        budget.spend()
        yield item


@pass_context
def _bounded_concat(context: Context, values: tuple[Any, ...]) -> str:
    """`a ~ b ~ ...`, refused before it runs when it could print past the budget."""
    budget = context.environment.spending()  # type: ignore[attr-defined]
    budget.allow(sum(printed_size(v, budget.chars + 1) for v in values), "~")
    text = "".join(str(v) for v in values)
    budget.spend(len(text))
    return text


@pass_context
def _bounded_emit(context: Context, value: Any) -> str:
    """One piece of output (text of the template, or a `{{ }}`), charged as it prints."""
    budget = context.environment.spending()  # type: ignore[attr-defined]
    if not isinstance(value, str):
        budget.allow(printed_size(value, budget.chars + 1), "printing a value")
        value = str(value)
    budget.spend(len(value))
    return value


class BoundedTemplate:
    """A compiled template and its environment; renders one at a time (the budget is the
    environment's). Raises TemplateSyntaxError when `source` does not compile."""

    def __init__(self, source: str, globals_: dict[str, Any] | None = None):
        self._environment = BoundedEnvironment()
        self._environment.globals.update(globals_ or {})
        self._template = self._environment.from_string(source)
        self._lock = threading.Lock()

    def render(self, variables: dict[str, Any], max_chars: int, input_chars: int = 0) -> str:
        """The template's text for `variables` (holding `input_chars` characters of text).
        Raises OutputTooLong past `max_chars` characters, SecurityError past the budget,
        and whatever else the template does wrong (TemplateError, TypeError, ...)."""
        chars = CHARS_PER_OUTPUT_CHAR * max_chars + CHARS_PER_INPUT_CHAR * input_chars
        steps, chars = MAX_STEPS, max(chars, MIN_CHARS_BUDGET)
        with self._lock:
            self._environment.budget = Budget(steps, chars)
            pieces = self._template.generate(**variables)
            try:
                out: list[str] = []
                length = 0
                for piece in pieces:
                    length += len(piece)
                    if length > max_chars:
                        raise OutputTooLong(max_chars)
                    out.append(piece)
                return "".join(out)
            finally:
                pieces.close()
                self._environment.budget = None


class OutputTooLong(ValueError):
    """A render's text would pass its limit (`limit` characters)."""

    def __init__(self, limit: int):
        super().__init__(f"the text is longer than {limit:,} characters")
        self.limit = limit
