"""Deterministic experiment assignment by hashing (user id, salt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from bta.errors import ConfigError, check_param
from bta.serve import _kernels as K

__all__ = ["Experiment", "hash_unit"]


def hash_unit(key: str) -> float:
    """A uniform number in [0, 1) from a string: its BLAKE2b-64 digest (RFC 7693, UTF-8 with
    ``surrogatepass``) read little-endian over 2**64; same key, same number. One compiled
    implementation (:func:`bta.serve._kernels.hash_key`), which a replay runs for many keys
    at once (:func:`bta.serve._kernels.hash_units`)."""
    return K.hash_key(np.frombuffer(key.encode("utf-8", "surrogatepass"), dtype=np.uint8))


@dataclass(frozen=True)
class Experiment:
    """Users split into arms by a hash of (salt, user id): stable across requests and servers.

    Parameters
    ----------
    arms : mapping of str to float
        Arm name -> weight (normalized to shares). Every arm except ``control`` is targeted.
    control : str
        The arm that always gets the untargeted choice (the comparison the evaluator makes).
    salt : str
        Experiment salt: a new salt re-randomizes everyone.
    holdout : float, default 0.0
        Share of users held out of the experiment (served untargeted, arm ``"holdout"``);
        taken before the arms split the rest.

    Notes
    -----
    ``u = BLAKE2b_64(salt + ":" + str(user_id)) / 2**64``; a user is in the holdout when
    ``u < holdout``; otherwise ``v = (u - holdout) / (1 - holdout)`` picks the first arm whose
    cumulative share exceeds ``v``.
    """

    arms: Mapping[str, float] = field(default_factory=lambda: {"control": 0.5, "targeted": 0.5})
    control: str = "control"
    salt: str = "bta"
    holdout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.arms, Mapping) or not self.arms:
            raise ConfigError(f"arms must be a non-empty mapping of arm name to weight, got "
                              f"{self.arms!r}")
        names = list(self.arms)
        w = np.array([float(self.arms[a]) for a in names])
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"arm weights must be finite, >= 0 and not all 0, got "
                              f"{dict(self.arms)}")
        if self.control not in self.arms:
            raise ConfigError(f"control arm {self.control!r} is not one of the arms {names}")
        if "holdout" in self.arms:
            raise ConfigError("'holdout' is reserved for the holdout share; rename that arm")
        check_param("holdout", self.holdout, 0.0 <= float(self.holdout) < 1.0,
                    "a share in [0, 1)")
        check_param("salt", self.salt, isinstance(self.salt, str), "a string")
        object.__setattr__(self, "arms", dict(zip(names, (w / w.sum()).tolist())))
        acc, cum = 0.0, []
        for share in self.arms.values():  # summed left to right, as the shares are read
            acc += share
            cum.append(acc)
        object.__setattr__(self, "_cum", np.array(cum, dtype=np.float64))

    @property
    def arm_names(self) -> tuple[str, ...]:
        """The arms, then ``"holdout"``: the names of :meth:`arm_codes`."""
        return tuple(self.arms) + ("holdout",)

    def arm_codes(self, units: np.ndarray) -> np.ndarray:
        """Arm codes (positions in :attr:`arm_names`) of users' hashes ``units``
        (``hash_unit(salt + ":" + user id)``), the rule :meth:`assign` applies to one."""
        units = np.ascontiguousarray(units, dtype=np.float64)
        out = np.empty(units.shape[0], dtype=np.int64)
        K.arm_codes(units, float(self.holdout), self._cum, out)
        return out

    @property
    def weights(self) -> dict[str, float]:
        """Expected share of each arm among all users, holdout included (for the SRM check)."""
        out = {a: s * (1.0 - self.holdout) for a, s in self.arms.items()}
        if self.holdout:
            out["holdout"] = self.holdout
        return out

    def assign(self, user_id: Any) -> str:
        """Arm of ``user_id``."""
        j = K.arm_code(hash_unit(f"{self.salt}:{user_id}"), float(self.holdout), self._cum)
        return self.arm_names[j]

    def is_targeted(self, arm: str) -> bool:
        return arm != self.control and arm != "holdout"
