"""Declared parameter constraints, and ``get_params`` / ``set_params`` for bta's estimators.

A class declares what each parameter accepts as data, in a ``_parameter_constraints`` class
attribute mapping a parameter name to a list of constraints (the value must satisfy at least
one), as scikit-learn's ``_parameter_constraints`` does::

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "early_stopping_rounds": [None, Interval(Integral, 1, None, closed="left")],
        "method": [Options(("centroid", "knn"))],
        "idf": ["boolean"],
        "random_state": ["random_state"],
    }

:func:`validate_params` checks values against such a mapping and raises
:class:`~bta.errors.ConfigError` with the one message template of
:func:`~bta.errors.check_param`: ``"<name> must be <description>, got <value!r>"``, where the
description joins the constraints' :meth:`Constraint.describe` texts ("None or an integer >= 1").
Besides :class:`Constraint` objects a list may hold ``None`` (the value ``None``), ``"boolean"``
(``True``/``False``) and ``"random_state"`` (None, an int or a numpy Generator).

:class:`ParamsMixin` reads the parameter names from the ``__init__`` signature, so an estimator
declares its parameters once, as constructor arguments stored unchanged under the same names.
That is what ``sklearn.base.clone`` relies on: it rebuilds an estimator from
``get_params(deep=False)`` and checks that each stored attribute is the very object it passed.
Its :meth:`ParamsMixin._validate_params` checks the stored values against the declaration (the
estimators call it at construction and again in ``fit``); ``set_params`` only sets, as in
scikit-learn, so a bad value set there is reported by the next ``fit``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np

from bta.errors import ConfigError, check_param

__all__ = [
    "Boolean",
    "Constraint",
    "InstanceOf",
    "Interval",
    "NoneConstraint",
    "Options",
    "ParamsMixin",
    "Predicate",
    "RandomState",
    "describe",
    "make_constraint",
    "validate_args",
    "validate_fields",
    "validate_params",
]


def _join(texts: list[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``."""
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


class Constraint:
    """What one parameter accepts: :meth:`is_satisfied_by` and its :meth:`describe` text.

    Parameters
    ----------
    desc : str, optional
        Description used instead of the generated one (the text after "must be").
    show_type : bool, default False
        Show the value's type name after "got" instead of its repr (for values whose repr
        says little or is long, such as a DataFrame).
    """

    def __init__(self, *, desc: str | None = None, show_type: bool = False):
        self.desc = desc
        self.show_type = show_type

    def is_satisfied_by(self, value: Any) -> bool:
        raise NotImplementedError

    def _default_description(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """What the constraint accepts, in words, to follow "must be"."""
        return self.desc if self.desc is not None else self._default_description()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class NoneConstraint(Constraint):
    """The value ``None`` (written ``None`` in a declaration)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None

    def _default_description(self) -> str:
        return "None"


class Boolean(Constraint):
    """``True`` or ``False`` (a Python or NumPy bool; 0/1 are not), written ``"boolean"``."""

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def _default_description(self) -> str:
        return "True or False"


def _is_integer(value: Any) -> bool:
    # bool is an int subclass, but True as a count is a bug at the caller
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


class RandomState(Constraint):
    """A source of randomness: None, an int or a ``numpy.random.Generator`` (``"random_state"``)."""

    def is_satisfied_by(self, value: Any) -> bool:
        return value is None or _is_integer(value) or isinstance(value, np.random.Generator)

    def _default_description(self) -> str:
        return "None, an int or a numpy Generator"


class Interval(Constraint):
    """A number of type ``kind`` between ``low`` and ``high``.

    Parameters
    ----------
    kind : {numbers.Integral, numbers.Real}
        ``Integral`` takes Python and NumPy integers; ``Real`` takes any real number, integers
        included. Bools are neither, and a ``Real`` must be finite (NaN and infinity are never
        in the interval, so a bound of ``None`` means "unbounded" among finite numbers).
    low, high : number or None
        The bounds; ``None`` for no bound on that side.
    closed : {"left", "right", "both", "neither"}, default "both"
        Which bounds belong to the interval.
    """

    def __init__(self, kind: type, low: float | None, high: float | None, *,
                 closed: Literal["left", "right", "both", "neither"] = "both",
                 desc: str | None = None, show_type: bool = False):
        super().__init__(desc=desc, show_type=show_type)
        if kind not in (Integral, Real):
            raise TypeError(f"Interval kind must be numbers.Integral or numbers.Real, got {kind}")
        if closed not in ("left", "right", "both", "neither"):
            raise TypeError(f"Interval closed must be 'left', 'right', 'both' or 'neither', "
                            f"got {closed!r}")
        if low is not None and high is not None and low > high:
            raise TypeError(f"Interval low must be <= high, got {low} > {high}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    @property
    def low_closed(self) -> bool:
        return self.closed in ("left", "both")

    @property
    def high_closed(self) -> bool:
        return self.closed in ("right", "both")

    def is_satisfied_by(self, value: Any) -> bool:
        if not (_is_integer(value) if self.kind is Integral else _is_number(value)):
            return False
        if self.kind is Real and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low
                                                          and not self.low_closed)):
            return False
        return self.high is None or not (value > self.high or (value == self.high
                                                               and not self.high_closed))

    def _default_description(self) -> str:
        noun = "an integer" if self.kind is Integral else "a number"
        if self.low is not None and self.high is not None:
            return (f"{noun} in {'[' if self.low_closed else '('}{self.low}, {self.high}"
                    f"{']' if self.high_closed else ')'}")
        if self.kind is Real:
            if self.low == 0 and not self.low_closed and self.high is None:
                return "a positive number"
            noun = "a finite number"
        if self.low is not None:
            return f"{noun} {'>=' if self.low_closed else '>'} {self.low}"
        if self.high is not None:
            return f"{noun} {'<=' if self.high_closed else '<'} {self.high}"
        return noun


class Options(Constraint):
    """One of the given values (same type and equal: ``1`` is not ``True``)."""

    def __init__(self, options: Iterable[Any], *, desc: str | None = None,
                 show_type: bool = False):
        super().__init__(desc=desc, show_type=show_type)
        self.options = tuple(options)  # declaration order is the order of the message

    @classmethod
    def one_of(cls, options: Iterable[Any]) -> "Options":
        """Options described as ``"one of ('a', 'b')"`` (for longer lists of choices)."""
        options = tuple(options)
        return cls(options, desc=f"one of {options}")

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return any(type(value) is type(o) and value == o for o in self.options)
        except (TypeError, ValueError):  # a value whose == is not a bool (an array)
            return False

    def _default_description(self) -> str:
        return _join([repr(o) for o in self.options])


class InstanceOf(Constraint):
    """An instance of one of ``types`` (described as "a <TypeName>" unless ``desc`` says)."""

    def __init__(self, *types: type, desc: str | None = None, show_type: bool = False):
        super().__init__(desc=desc, show_type=show_type)
        self.types = types

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, self.types)

    def _default_description(self) -> str:
        names = [t.__name__ for t in self.types]
        return _join([f"{'an' if n[0].lower() in 'aeiou' else 'a'} {n}" for n in names])


class Predicate(Constraint):
    """Values for which ``test(value)`` is true; ``desc`` says which in words.

    An exception raised by ``test`` counts as "not satisfied".
    """

    def __init__(self, test: Callable[[Any], bool], desc: str, *, show_type: bool = False):
        super().__init__(desc=desc, show_type=show_type)
        self.test = test

    def is_satisfied_by(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, AttributeError, OverflowError):
            return False


def make_constraint(c: Any) -> Constraint:
    """The :class:`Constraint` a declaration entry stands for."""
    if isinstance(c, Constraint):
        return c
    if c is None:
        return NoneConstraint()
    if c == "boolean":
        return Boolean()
    if c == "random_state":
        return RandomState()
    raise TypeError(f"unknown parameter constraint {c!r}")


def describe(constraints: Iterable[Any]) -> str:
    """The "must be" text of a list of constraints: their descriptions joined with "or"."""
    return _join([make_constraint(c).describe() for c in constraints])


def validate_params(constraints: Mapping[str, list[Any]], values: Mapping[str, Any],
                    owner: str) -> None:
    """Check each of ``values`` against its declared constraints.

    Parameters
    ----------
    constraints : mapping of str to list
        Parameter name to the constraints it may satisfy (at least one must hold).
    values : mapping of str to object
        Parameter name to value; names without constraints are not checked.
    owner : str
        The class or function that declares ``constraints`` (named when the declaration
        itself is wrong).

    Raises
    ------
    ConfigError
        For the first parameter, in declaration order, that satisfies none of its
        constraints: ``"<name> must be <description>, got <value!r>"``.
    """
    for name, cs in constraints.items():
        if name not in values:
            # a declaration for a parameter that does not exist: a programming error of owner
            raise TypeError(f"{owner} declares constraints for {name!r}, which is not one of "
                            f"its parameters {sorted(values)}")
        value = values[name]
        objs = [make_constraint(c) for c in cs]
        if any(c.is_satisfied_by(value) for c in objs):
            continue
        got = type(value).__name__ if all(c.show_type for c in objs) else None
        check_param(name, value, False, describe(objs), got=got)


def validate_args(constraints: Mapping[str, list[Any]], owner: str, **values: Any) -> None:
    """:func:`validate_params` for the named ``values`` only: a function's arguments checked
    against a module's declaration (``validate_args(_PARAMS, "f", prefix=prefix)``).

    Raises
    ------
    ConfigError
        As :func:`validate_params`.
    TypeError
        A value whose name ``constraints`` does not declare (a programming error of owner).
    """
    missing = sorted(set(values) - set(constraints))
    if missing:
        raise TypeError(f"{owner} checks {missing}, which have no declared constraints")
    validate_params({name: constraints[name] for name in values}, values, owner)


def validate_fields(obj: Any) -> None:
    """:func:`validate_params` for a dataclass: its fields, as they are now, against its class's
    ``_parameter_constraints`` (call it in ``__post_init__``).

    Raises
    ------
    ConfigError
        As :func:`validate_params`.
    """
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    validate_params(type(obj)._parameter_constraints, values, type(obj).__name__)


class ParamsMixin:
    """``get_params`` and ``set_params`` from the constructor's named parameters.

    The subclass's ``__init__`` must take only named parameters (no ``*args``/``**kwargs``)
    and store each one unchanged as the attribute of the same name. Its
    ``_parameter_constraints`` declare what each parameter accepts (see :func:`validate_params`).
    """

    _parameter_constraints: dict[str, list[Any]] = {}

    def _validate_params(self) -> None:
        """Check the stored parameters against ``_parameter_constraints``.

        Raises
        ------
        ConfigError
            The first parameter, in declaration order, outside its constraints.
        """
        validate_params(self._parameter_constraints, self.get_params(deep=False),
                        type(self).__name__)

    @classmethod
    def _param_names(cls) -> list[str]:
        """The constructor's parameter names, in signature order."""
        names = []
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                # a parameter list clone() could not rebuild: a programming error of the class
                raise TypeError(f"{cls.__name__}.__init__ must list its parameters by name, "
                                f"not {p}")
            names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, as passed to the constructor.

        Parameters
        ----------
        deep : bool, default True
            Also return the parameters of parameters that are estimators themselves, as
            ``{name}__{sub_name}``.

        Returns
        -------
        dict of str to object
        """
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Any:
        """Set parameters (``{name}__{sub_name}`` reaches a parameter of a parameter).

        Values are checked by the next ``fit``, not here (scikit-learn's convention).

        Returns
        -------
        self

        Raises
        ------
        ConfigError
            A name that is not a parameter, or ``{name}__{sub_name}`` where ``name`` is not an
            estimator with that parameter (the valid names are listed); nothing is set then.
        """
        if not params:
            return self
        valid = self.get_params(deep=True)
        unknown = sorted(k for k in params if k not in valid)
        if unknown:
            raise ConfigError(f"{type(self).__name__}.set_params: unknown parameter(s) "
                              f"{unknown}; expected some of {self._param_names()}")
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if delim:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self
