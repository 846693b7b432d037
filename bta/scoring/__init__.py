"""Compiled scorers: LightGBM tree ensembles and linear models run by numba kernels.

Both the segment makers (propensity, lookalike scores) and the serving engine use them;
:class:`TreeScorer` and :class:`LinearScorer` compile at load (``warmup``), score one row
without allocating, and release the GIL so that request threads score in parallel.
"""

from bta.scoring.linear import LinearScorer
from bta.scoring.trees import TreeScorer

__all__ = ["TreeScorer", "LinearScorer"]
