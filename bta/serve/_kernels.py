"""Serving kernels: all campaign targeting rules of an Engine evaluated for one user at once."""

from __future__ import annotations

import numpy as np

from bta._jit import serving_jit
from bta.segment._rule_kernels import eval_row

__all__ = ["eval_rules"]


@serving_jit()
def eval_rules(code, code_off, consts, consts_off, columns, col_off, nan_absent, seg_map,
               seg_off, stack_sizes, user_segments, indices, values, out):
    """``out[r]`` = whether rule ``r`` holds for the user (packed rules, one kernel call).

    Rule ``r`` owns ``code[code_off[r]:code_off[r+1]]`` and likewise for its constants, feature
    columns and segment slots; ``seg_map`` maps a rule's segment slots to positions in
    ``user_segments`` (-1: segment unknown to the store, read as not a member).
    """
    n_rules = out.shape[0]
    for r in range(n_rules):
        s0 = seg_off[r]
        s1 = seg_off[r + 1]
        flags = np.zeros(max(s1 - s0, 1), dtype=np.bool_)
        for k in range(s0, s1):
            j = seg_map[k]
            flags[k - s0] = j >= 0 and user_segments[j]
        out[r] = eval_row(code[code_off[r]:code_off[r + 1]], consts[consts_off[r]:consts_off[r + 1]],
                          columns[col_off[r]:col_off[r + 1]], nan_absent[col_off[r]:col_off[r + 1]],
                          flags, indices, values, stack_sizes[r])
