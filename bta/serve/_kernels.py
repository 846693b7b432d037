"""Serving kernels: all campaign targeting rules of an Engine evaluated for one user at once."""

from __future__ import annotations

import numpy as np

from bta._jit import serving_jit
from bta.segment._rule_kernels import run_code

__all__ = ["eval_rules"]


@serving_jit()
def eval_rules(code, code_off, consts, consts_off, columns, col_off, nan_absent, seg_map,
               seg_off, stack_sizes, user_segments, indices, values, n_features, out):
    """``out[r]`` = whether rule ``r`` holds for the user (packed rules, one kernel call).

    Rule ``r`` owns ``code[code_off[r]:code_off[r+1]]`` and likewise for its constants, feature
    columns and segment slots; ``seg_map`` maps a rule's segment slots to positions in
    ``user_segments`` (-1: segment unknown to the store, read as not a member). The user's
    entries are scattered once into a dense row, so each rule reads its columns directly
    (hundreds of rules per request: no per-rule search through the profile).
    """
    n_rules = out.shape[0]
    dense = np.zeros(n_features)
    present = np.zeros(n_features, dtype=np.bool_)
    for k in range(indices.shape[0]):
        j = indices[k]
        if 0 <= j < n_features:
            dense[j] = values[k]
            present[j] = True
    max_slots = 1
    max_segs = 1
    max_stack = 1
    for r in range(n_rules):
        max_slots = max(max_slots, col_off[r + 1] - col_off[r])
        max_segs = max(max_segs, seg_off[r + 1] - seg_off[r])
        max_stack = max(max_stack, stack_sizes[r])
    local = np.empty(max_slots)
    flags = np.zeros(max_segs, dtype=np.bool_)
    stack = np.empty(max_stack)
    for r in range(n_rules):
        c0 = col_off[r]
        n_slots = col_off[r + 1] - c0
        for s in range(n_slots):
            j = columns[c0 + s]
            if present[j]:
                local[s] = dense[j]
            elif nan_absent[c0 + s]:
                local[s] = np.nan
            else:
                local[s] = 0.0
        s0 = seg_off[r]
        for k in range(s0, seg_off[r + 1]):
            m = seg_map[k]
            flags[k - s0] = m >= 0 and user_segments[m]
        out[r] = run_code(code[code_off[r]:code_off[r + 1]], consts[consts_off[r]:consts_off[r + 1]],
                          local[:n_slots], flags, stack)
