"""Choice policies: which eligible creative to show, and with what probability.

Every policy returns the probability with which it chose the creative it chose (the
propensity), so off-policy estimators can re-weight the log later. Randomness is a number
``u`` in [0, 1) passed in by the caller (the Engine derives it from a hash of the request id,
so a replay makes the same choices).

Each policy also names its ``kind`` (and ``param``) so that :meth:`Engine.decide_batch` can run
the same choice inside its compiled replay; the softmax is one compiled function shared by both
paths, so a replay's propensities are bit-identical to those of ``decide``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bta.errors import check_param
from bta.serve import _kernels as K

__all__ = ["Greedy", "EpsilonGreedy", "Softmax", "Uniform", "Policy"]


@dataclass(frozen=True)
class Greedy:
    """Highest score; ties broken by the lowest index. Propensity 1."""

    name: str = "greedy"
    kind = 0
    param = 0.0

    def choose(self, scores: np.ndarray, u: float) -> tuple[int, float]:
        return int(np.argmax(scores)), 1.0

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        p = np.zeros(scores.shape[0])
        p[int(np.argmax(scores))] = 1.0
        return p


@dataclass(frozen=True)
class EpsilonGreedy:
    """With probability ``epsilon`` a uniform choice, else the highest score.

    ``P(a) = (1 - epsilon) [a = argmax] + epsilon / n``.
    """

    epsilon: float = 0.1
    name: str = "epsilon_greedy"
    kind = 1

    @property
    def param(self) -> float:
        return float(self.epsilon)

    def __post_init__(self) -> None:
        check_param("epsilon", self.epsilon, 0.0 <= float(self.epsilon) <= 1.0,
                    "a probability in [0, 1]")

    def choose(self, scores: np.ndarray, u: float) -> tuple[int, float]:
        n = scores.shape[0]
        best = int(np.argmax(scores))
        if u < self.epsilon:
            # reuse u: rescaled, it is uniform on [0, 1) given u < epsilon
            a = min(int(u / self.epsilon * n), n - 1)
        else:
            a = best
        p = self.epsilon / n + (1.0 - self.epsilon) * (a == best)
        return a, p

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        n = scores.shape[0]
        p = np.full(n, self.epsilon / n)
        p[int(np.argmax(scores))] += 1.0 - self.epsilon
        return p


@dataclass(frozen=True)
class Softmax:
    """``P(a) = exp(s_a / T) / sum_b exp(s_b / T)`` over scores relative to the best."""

    temperature: float = 1.0
    name: str = "softmax"
    kind = 2

    @property
    def param(self) -> float:
        return float(self.temperature)

    def __post_init__(self) -> None:
        check_param("temperature", self.temperature,
                    math.isfinite(float(self.temperature)) and float(self.temperature) > 0,
                    "a finite number > 0")

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        s = np.ascontiguousarray(scores, dtype=np.float64)
        p = np.empty(s.shape[0])
        K.softmax_p(s, float(self.temperature), p)
        return p

    def choose(self, scores: np.ndarray, u: float) -> tuple[int, float]:
        """The first candidate whose cumulative probability exceeds ``u``."""
        s = np.ascontiguousarray(scores, dtype=np.float64)
        a, p = K.softmax_choose(s, float(self.temperature), float(u), np.empty(s.shape[0]))
        return int(a), float(p)


@dataclass(frozen=True)
class Uniform:
    """Every candidate with the same probability ``1 / n`` (rotation, blind to scores)."""

    name: str = "uniform"
    kind = 3
    param = 0.0

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return np.full(scores.shape[0], 1.0 / scores.shape[0])

    def choose(self, scores: np.ndarray, u: float) -> tuple[int, float]:
        n = scores.shape[0]
        return min(int(u * n), n - 1), 1.0 / n


Policy = Greedy | EpsilonGreedy | Softmax | Uniform
