"""Declared parameter constraints, checked before a tool touches anything (scikit-learn's ``_param_validation`` idea).

A tool declares its constraints once::

    @validate_params(n_epochs=Interval(int, 1, None), mode=Options({"regular", "greedy"}))
    def map_cells(sdata, *, n_epochs=100, mode="regular"): ...

and every call checks the bound arguments first, raising :class:`~stmap.StmapInputError` that names the parameter,
what it must be and what was given. The constraints stay on the function (``func.__stmap_params__``), so tests can
generate an invalid value for each declared parameter with :func:`invalid_values`.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ._errors import StmapInputError

__all__ = ["Interval", "Options", "Instance", "Constraint", "validate_params", "check_param", "invalid_values"]

F = TypeVar("F", bound=Callable[..., Any])


class Constraint:
    """One rule a parameter value must satisfy."""

    def ok(self, value: Any) -> bool:  # pragma: no cover - interface
        """Whether ``value`` satisfies the rule."""
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        """The rule in words, e.g. ``'an integer >= 1'``."""
        raise NotImplementedError

    def invalid(self) -> list[Any]:
        """Values that break the rule (for tests)."""
        return []


@dataclass(frozen=True)
class Interval(Constraint):
    """A real (``kind=float``) or integer (``kind=int``) number in ``[low, high]``; ``None`` is an open end.

    ``closed`` is ``'both'``, ``'left'``, ``'right'`` or ``'neither'``. Booleans are never numbers here; NaN never
    passes.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is a number of the right kind inside the interval."""
        if isinstance(value, bool | np.bool_):
            return False
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return bool(lo_ok and hi_ok)

    def describe(self) -> str:
        """E.g. ``'an integer >= 1'`` or ``'a number in (0, 1]'``."""
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            lb = "[" if self.closed in ("both", "left") else "("
            rb = "]" if self.closed in ("both", "right") else ")"
            return f"{what} in {lb}{self.low}, {self.high}{rb}"
        if self.low is not None:
            return f"{what} {'>=' if self.closed in ('both', 'left') else '>'} {self.low}"
        if self.high is not None:
            return f"{what} {'<=' if self.closed in ('both', 'right') else '<'} {self.high}"
        return what

    def invalid(self) -> list[Any]:
        """Just outside each end, a non-number and (for integers) a fraction."""
        bad: list[Any] = ["x", True]
        if self.low is not None:
            bad.append(self.low - 1 if self.kind is int else self.low - 0.5)
            if self.closed in ("right", "neither"):
                bad.append(self.low)
        if self.high is not None:
            bad.append(self.high + 1 if self.kind is int else self.high + 0.5)
            if self.closed in ("left", "neither"):
                bad.append(self.high)
        if self.kind is int:
            bad.append(1.5)
        else:
            bad.append(float("nan"))
        return bad


@dataclass(frozen=True)
class Options(Constraint):
    """One of a fixed set of values (strings are compared as given)."""

    values: frozenset

    def __init__(self, values: Iterable[Any]) -> None:
        object.__setattr__(self, "values", frozenset(values))

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is one of the options."""
        try:
            return value in self.values
        except TypeError:
            return False

    def describe(self) -> str:
        """E.g. ``"one of 'greedy', 'regular'"``."""
        return "one of " + ", ".join(repr(v) for v in sorted(self.values, key=repr))

    def invalid(self) -> list[Any]:
        """A string that is not an option."""
        return ["not-an-option"]


@dataclass(frozen=True)
class Instance(Constraint):
    """An instance of one of ``types`` (e.g. ``Instance((str,))``; add ``type(None)`` to allow ``None``)."""

    types: tuple

    def ok(self, value: Any) -> bool:
        """Whether ``value`` is an instance of one of the types (``bool`` is not an ``int`` here)."""
        if isinstance(value, bool) and bool not in self.types:
            return False
        return isinstance(value, self.types)

    def describe(self) -> str:
        """E.g. ``'a str or None'``."""
        names = ["None" if t is type(None) else t.__name__ for t in self.types]
        return "a " + " or ".join(names)

    def invalid(self) -> list[Any]:
        """A value of an unrelated type."""
        return [_UNRELATED]


class _Unrelated:
    """A value of no type a parameter accepts; its repr is stable (test ids must match across processes)."""

    def __repr__(self) -> str:
        return "<unrelated object>"


_UNRELATED = _Unrelated()


def _as_rules(spec: Any) -> tuple[Constraint | None, ...]:
    """A constraint, ``None`` (meaning the value ``None``) or a tuple/list of those: any one may hold."""
    if isinstance(spec, list | tuple):
        return tuple(spec)
    return (spec,)


def check_param(name: str, value: Any, spec: Any, *, where: str = "") -> None:
    """Raise :class:`~stmap.StmapInputError` unless ``value`` satisfies one of the rules in ``spec``.

    Parameters
    ----------
    name
        Parameter name, for the message.
    value
        The value given.
    spec
        A :class:`Constraint`, ``None`` (allowing ``None``) or a list of those (any one may hold).
    where
        The function, for the message.
    """
    rules = _as_rules(spec)
    for r in rules:
        if (r is None and value is None) or (r is not None and r.ok(value)):
            return
    words = " or ".join("None" if r is None else r.describe() for r in rules)
    loc = f"{where}: " if where else ""
    raise StmapInputError(f"{loc}{name} must be {words}; got {value!r}.")


def validate_params(**specs: Any) -> Callable[[F], F]:
    """Decorate a tool so that its declared parameters are checked before it runs.

    Parameters
    ----------
    **specs
        ``parameter=constraint`` (see :func:`check_param`). Unknown parameter names raise at decoration time.

    Returns
    -------
    The decorator. The wrapped function keeps its signature and docstring and carries ``__stmap_params__``.
    """

    def deco(func: F) -> F:
        sig = inspect.signature(func)
        unknown = set(specs) - set(sig.parameters)
        if unknown:
            raise TypeError(f"{func.__qualname__} has no parameters {sorted(unknown)}")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind_partial(*args, **kwargs)
            for name, spec in specs.items():
                value = bound.arguments[name] if name in bound.arguments else sig.parameters[name].default
                if value is inspect.Parameter.empty:
                    continue
                check_param(name, value, spec, where=func.__name__)
            return func(*args, **kwargs)

        wrapper.__stmap_params__ = dict(specs)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return deco


def invalid_values(spec: Any) -> list[Any]:
    """Values that satisfy none of the rules in ``spec`` (for tests that feed each parameter a bad value)."""
    rules = _as_rules(spec)
    out = []
    for r in rules:
        if r is None:
            continue
        for v in r.invalid():
            if v is None and any(x is None for x in rules):
                continue
            if not any((x is None and v is None) or (x is not None and x.ok(v)) for x in rules):
                out.append(v)
    return out
