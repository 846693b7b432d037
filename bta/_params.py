"""``get_params`` / ``set_params`` for bta's estimators, as scikit-learn's ``BaseEstimator`` has.

The parameter names are read from the ``__init__`` signature, so an estimator declares its
parameters once, as constructor arguments stored unchanged under the same names. That is what
``sklearn.base.clone`` relies on: it rebuilds an estimator from ``get_params(deep=False)`` and
checks that each stored attribute is the very object it passed.

Validation stays with each estimator (at construction and again in ``fit``); ``set_params``
only sets, as in scikit-learn, so a bad value set there is reported by the next ``fit``.
"""

from __future__ import annotations

import inspect
from typing import Any

from bta.errors import ConfigError

__all__ = ["ParamsMixin"]


class ParamsMixin:
    """``get_params`` and ``set_params`` from the constructor's named parameters.

    The subclass's ``__init__`` must take only named parameters (no ``*args``/``**kwargs``)
    and store each one unchanged as the attribute of the same name.
    """

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
