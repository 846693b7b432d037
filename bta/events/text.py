"""Strings straight from Arrow buffers to codes and a sorted vocabulary (numba).

The text columns of a log (user ids, categories, items) arrive as Arrow string arrays (from
Arrow, Parquet, polars or pandas' Arrow dtypes). Turning them into Python objects first
costs more than everything else ingestion does; this module reads the buffers instead:
:func:`factorize_text` gives each row the code of its string and the distinct strings in
code point order, the order Python and Arrow sort text in.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from bta._jit import batch_jit, prefetch

__all__ = ["factorize_text", "text_hashes", "text_factorize", "text_rehash",
           "text_global_codes", "text_order"]

# ------------------------------------------------------------------ text factorization
#
# Strings are read straight from Arrow's buffers (``offsets``, UTF-8 ``data``, validity
# bitmap): no Python object per row. Distinct strings go to an open-addressing table whose
# slot holds ``(tag << 32) | (code + 1)`` and ``(arena offset << 24) | length``, the tag being
# high hash bits: a probe reads one slot, and a candidate is confirmed against the distinct
# string's bytes, copied once into a compact arena. The rows are split between threads by
# hash bits (each thread owns the strings of its part, so no two threads touch one slot).
# Each miss to the table or the arena costs a memory latency (~200 ns on a VM) that the rows
# before it cannot hide; the probe loop therefore prefetches the slot of the row 2*_AHEAD own
# rows ahead and the arena bytes of the row _AHEAD ahead (a hint only: it changes no result).

_AHEAD = 16
_RING = 64  # power of two, > 2 * _AHEAD
_LEN_BITS = 24  # string length kept in a slot; longer strings read theirs from aoff
_LEN_MAX = (1 << _LEN_BITS) - 1


@batch_jit(inline=True)
def _le_word(data, p, m):
    """The ``m`` (0 to 8) bytes at ``data[p]`` as a little-endian uint64."""
    w = np.uint64(0)
    if m == 8:  # spelled out so that LLVM makes it one load
        return (np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8))
                | (np.uint64(data[p + 2]) << np.uint64(16))
                | (np.uint64(data[p + 3]) << np.uint64(24))
                | (np.uint64(data[p + 4]) << np.uint64(32))
                | (np.uint64(data[p + 5]) << np.uint64(40))
                | (np.uint64(data[p + 6]) << np.uint64(48))
                | (np.uint64(data[p + 7]) << np.uint64(56)))
    for j in range(m):
        w |= np.uint64(data[p + j]) << np.uint64(8 * j)
    return w


@batch_jit(inline=True)
def _be_word(data, p, m):
    """The ``m`` (0 to 8) bytes at ``data[p]``, zero-padded to 8, as a big-endian uint64:
    unsigned order of these words is the bytewise (UTF-8: code point) order of the text."""
    w = np.uint64(0)
    for j in range(8):
        w <<= np.uint64(8)
        if j < m:
            w |= np.uint64(data[p + j])
    return w


@batch_jit(inline=True)
def _text_hash(data, a, b):
    h = np.uint64(0x9E3779B97F4A7C15) ^ np.uint64(b - a)
    p = a
    while p + 8 <= b:
        h = (h ^ _le_word(data, p, 8)) * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        p += 8
    if p < b:
        h = (h ^ _le_word(data, p, b - p)) * np.uint64(0xBF58476D1CE4E5B9)
    # murmur3's finalizer: the low bits (the slot) and the high bits (the tag) both depend on
    # every input bit
    h = (h ^ (h >> np.uint64(29))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(32))


@batch_jit(inline=True)
def _same_bytes(data, a, arena, c, m):
    j = 0
    while j + 8 <= m:
        if _le_word(data, a + j, 8) != _le_word(arena, c + j, 8):
            return False
        j += 8
    while j < m:
        if data[a + j] != arena[c + j]:
            return False
        j += 1
    return True


@batch_jit(inline=True)
def _part(h, n_parts):
    return np.int64(h >> np.uint64(56)) % n_parts


@batch_jit(parallel=True)
def text_hashes(offsets, data, bitmap, bit0, n_chunks, hashes, codes):
    """Hash each string of an Arrow string array's buffers; mark nulls.

    Parameters
    ----------
    offsets : ndarray of shape (n + 1,), int32 or int64
        String ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
    data : ndarray of uint8
    bitmap : ndarray of uint8
        Arrow validity bitmap (bit ``bit0 + i``), or empty when no row is null.
    hashes : ndarray of shape (n,), uint64 (OUT)
    codes : ndarray of shape (n,), int32 (OUT)
        -1 at null rows, 0 elsewhere (:func:`text_factorize` fills in the codes).
    """
    n = offsets.shape[0] - 1
    step = (n + n_chunks - 1) // n_chunks
    has_nulls = bitmap.shape[0] > 0
    for k in prange(n_chunks):
        for i in range(k * step, min(n, (k + 1) * step)):
            if has_nulls:
                b = bit0 + i
                if not (bitmap[b >> 3] >> (b & 7)) & 1:
                    codes[i] = -1
                    hashes[i] = 0
                    continue
            codes[i] = 0
            hashes[i] = _text_hash(data, offsets[i], offsets[i + 1])


@batch_jit(inline=True)
def _slot_of(h, mask):
    return np.int64(h) & mask


@batch_jit(parallel=True)
def text_factorize(offsets, data, hashes, codes, table, arena, aoff, state, status):
    """Codes of the strings (first-seen order within each part) and their distinct values.

    Part ``p`` of ``n_parts = table.shape[0]`` owns the rows whose hash has
    ``_part(h) == p``. Resumable: ``state[p]`` is ``[next row, distinct so far, arena bytes
    used]``; a part stops when its table is half full (``status[p] = 1``) or its arena has no
    room for the next string (``status[p] = 2``), the caller grows them and calls again;
    ``status[p] = 0`` when done.

    Parameters
    ----------
    offsets, data : string buffers, as :func:`text_hashes`
    hashes : ndarray of shape (n,), uint64 (IN)
    codes : ndarray of shape (n,), int32 (IN/OUT)
        -1 rows (null) are skipped; others get their part's local code.
    table : ndarray of shape (n_parts, 2 * cap), int64 (IN/OUT), cap a power of two
    arena : ndarray of shape (n_parts, arena_cap), uint8 (IN/OUT)
        The distinct strings' bytes, in code order.
    aoff : ndarray of shape (n_parts, cap // 2 + 1), int64 (IN/OUT)
        Local code ``c``'s bytes are ``arena[p, aoff[p, c]:aoff[p, c + 1]]``.
    state : ndarray of shape (n_parts, 3), int64 (IN/OUT)
    status : ndarray of shape (n_parts,), int64 (OUT)
    """
    n = offsets.shape[0] - 1
    n_parts = table.shape[0]
    cap = table.shape[1] >> 1
    mask = cap - 1
    limit = cap >> 1
    arena_cap = arena.shape[1]
    for p in prange(n_parts):
        tab = table[p]
        ar = arena[p]
        ao = aoff[p]
        k = state[p, 1]
        used = state[p, 2]
        ring = np.empty(_RING, np.int64)
        head = 0
        tail = 0
        scan = state[p, 0]
        status[p] = 0
        while True:
            while tail - head < 2 * _AHEAD and scan < n:
                if codes[scan] >= 0 and _part(hashes[scan], n_parts) == p:
                    ring[tail & (_RING - 1)] = scan
                    prefetch(tab, 2 * _slot_of(hashes[scan], mask))
                    tail += 1
                scan += 1
            if head == tail:
                break
            if head + _AHEAD < tail:
                s2 = _slot_of(hashes[ring[(head + _AHEAD) & (_RING - 1)]], mask)
                if tab[2 * s2] != 0:
                    prefetch(ar, tab[2 * s2 + 1] >> _LEN_BITS)
            i = ring[head & (_RING - 1)]
            h = hashes[i]
            a = offsets[i]
            m = offsets[i + 1] - a
            s = _slot_of(h, mask)
            tag = np.int64(h >> np.uint64(33))  # 31 bits: the slot word stays positive
            stop = False
            while True:
                v = tab[2 * s]
                if v == 0:
                    if k >= limit:
                        status[p] = 1
                    elif used + m > arena_cap:
                        status[p] = 2
                    if status[p] != 0:
                        stop = True
                        break
                    tab[2 * s] = (tag << 32) | (k + 1)
                    tab[2 * s + 1] = (used << _LEN_BITS) | min(m, _LEN_MAX)
                    for q in range(m):
                        ar[used + q] = data[a + q]
                    used += m
                    ao[k + 1] = used
                    codes[i] = k
                    k += 1
                    break
                if (v >> 32) == tag:
                    c = (v & 0xFFFFFFFF) - 1
                    w = tab[2 * s + 1]
                    off = w >> _LEN_BITS
                    length = w & _LEN_MAX
                    if length == _LEN_MAX:
                        length = ao[c + 1] - off
                    if length == m and _same_bytes(data, a, ar, off, m):
                        codes[i] = c
                        break
                s = (s + 1) & mask
            if stop:
                scan = i
                break
            head += 1
        state[p, 0] = scan
        state[p, 1] = k
        state[p, 2] = used


@batch_jit()
def text_rehash(arena, aoff, state, table):
    """Insert every part's distinct strings into the (larger, zeroed) ``table``."""
    mask = (table.shape[1] >> 1) - 1
    for p in range(table.shape[0]):
        ar = arena[p]
        tab = table[p]
        for c in range(state[p, 1]):
            a = aoff[p, c]
            m = aoff[p, c + 1] - a
            h = _text_hash(ar, a, a + m)
            s = _slot_of(h, mask)
            while tab[2 * s] != 0:
                s = (s + 1) & mask
            tab[2 * s] = (np.int64(h >> np.uint64(33)) << 32) | (c + 1)
            tab[2 * s + 1] = (a << _LEN_BITS) | min(m, _LEN_MAX)


@batch_jit(parallel=True)
def text_global_codes(hashes, codes, bases, n_chunks):
    """Local codes of part ``p`` become ``bases[p] + code`` (parts' codes laid end to end)."""
    n = codes.shape[0]
    n_parts = bases.shape[0]
    step = (n + n_chunks - 1) // n_chunks
    for k in prange(n_chunks):
        for i in range(k * step, min(n, (k + 1) * step)):
            if codes[i] >= 0:
                codes[i] += bases[_part(hashes[i], n_parts)]


@batch_jit()
def text_order(arena, aoff, counts):
    """The distinct strings of every part, in bytewise (code point) order.

    Parameters
    ----------
    arena, aoff : as :func:`text_factorize`
    counts : ndarray of shape (n_parts,), int64
        Distinct strings of each part; global code ``bases[p] + c`` (bases: the exclusive
        cumulative sum of counts).

    Returns
    -------
    rank : ndarray of shape (k,), int32
        Sorted position of each global code.
    data : ndarray of uint8
    offsets : ndarray of shape (k + 1,), int64
        The strings in sorted order, as Arrow buffers.
    """
    k = 0
    for p in range(counts.shape[0]):
        k += counts[p]
    part = np.empty(k, np.int64)
    start = np.empty(k, np.int64)
    length = np.empty(k, np.int64)
    g = 0
    for p in range(counts.shape[0]):
        for c in range(counts[p]):
            part[g] = p
            start[g] = aoff[p, c]
            length[g] = aoff[p, c + 1] - aoff[p, c]
            g += 1
    words = np.empty(k, np.uint64)
    for g in range(k):
        words[g] = _be_word(arena[part[g]], start[g], min(length[g], 8))
    order = np.argsort(words, kind="mergesort")
    # runs of equal words are refined on the next 8 bytes (a stack of (a, b, depth)): text
    # with a long common prefix (URLs) costs O(k log k) per 8 bytes of prefix, never k**2
    stack = [(np.int64(0), np.int64(k), np.int64(0))]
    while len(stack) > 0:
        a, b, depth = stack.pop()
        if depth > 0:
            sub = np.empty(b - a, np.uint64)
            for j in range(a, b):
                g = order[j]
                sub[j - a] = _be_word(arena[part[g]], start[g] + depth,
                                      max(0, min(length[g] - depth, 8)))
            o = np.argsort(sub, kind="mergesort")
            moved = order[a:b][o].copy()
            order[a:b] = moved
        j = a
        while j < b:
            e = j + 1
            wj = _be_word(arena[part[order[j]]], start[order[j]] + depth,
                          max(0, min(length[order[j]] - depth, 8)))
            while e < b and _be_word(arena[part[order[e]]], start[order[e]] + depth,
                                     max(0, min(length[order[e]] - depth, 8))) == wj:
                e += 1
            if e - j > 1:
                # equal 8 bytes at this depth: strings that end here come first (a prefix
                # sorts before its extensions), by length; the others go one word deeper
                ends = np.empty(e - j, np.int64)
                for q in range(j, e):
                    ends[q - j] = min(length[order[q]] - depth, 9)
                o = np.argsort(ends, kind="mergesort")
                moved = order[j:e][o].copy()
                order[j:e] = moved
                q = j
                while q < e and length[order[q]] - depth <= 8:
                    q += 1
                if e - q > 1:
                    stack.append((q, e, depth + 8))
            j = e
    rank = np.empty(k, np.int32)
    offsets = np.empty(k + 1, np.int64)
    offsets[0] = 0
    for j in range(k):
        rank[order[j]] = j
        offsets[j + 1] = offsets[j] + length[order[j]]
    data = np.empty(offsets[k], np.uint8)
    for j in range(k):
        g = order[j]
        ar = arena[part[g]]
        a = start[g]
        for q in range(length[g]):
            data[offsets[j] + q] = ar[a + q]
    return rank, data, offsets


def factorize_text(chunks, n, n_parts, n_chunks):
    """Codes and distinct values of Arrow string chunks: the driver of :func:`text_hashes`,
    :func:`text_factorize` (growing its table and arena between calls) and
    :func:`text_order`.

    Parameters
    ----------
    chunks : list of (offsets, data, bitmap, bit0)
        Buffers of each chunk (see :func:`text_hashes`); rows follow one another.
    n : int
        Total rows.
    n_parts : int
        Threads of the factorization (each owns the strings of one hash part).

    Returns
    -------
    codes : ndarray of shape (n,), int32
        -1 at nulls.
    rank, data, offsets : as :func:`text_order`
        ``rank[code]`` is the sorted position of a code's string; ``data``/``offsets`` the
        sorted distinct strings.
    """
    codes = np.empty(n, np.int32)
    hashes = np.empty(n, np.uint64)
    cap = 1 << 12
    table = np.zeros((n_parts, 2 * cap), np.int64)
    arena = np.empty((n_parts, 1 << 16), np.uint8)
    aoff = np.zeros((n_parts, cap // 2 + 1), np.int64)
    state = np.zeros((n_parts, 3), np.int64)
    status = np.zeros(n_parts, np.int64)
    row0 = 0
    for offsets, data, bitmap, bit0 in chunks:
        m = offsets.shape[0] - 1
        hc, cc = hashes[row0:row0 + m], codes[row0:row0 + m]
        text_hashes(offsets, data, bitmap, np.int64(bit0), np.int64(n_chunks), hc, cc)
        state[:, 0] = 0
        while True:
            text_factorize(offsets, data, hc, cc, table, arena, aoff, state, status)
            if not status.any():
                break
            if (status == 1).any():  # a table is half full: 4x the slots
                cap *= 4
                table = np.zeros((n_parts, 2 * cap), np.int64)
                text_rehash(arena, aoff, state, table)
                grown = np.zeros((n_parts, cap // 2 + 1), np.int64)
                grown[:, :aoff.shape[1]] = aoff
                aoff = grown
            if (status == 2).any():  # an arena is full: at least double it
                stuck = state[:, 0][status == 2]
                need = int((state[:, 2][status == 2] + offsets[stuck + 1] - offsets[stuck]).max())
                grown = np.empty((n_parts, max(2 * arena.shape[1], need)), np.uint8)
                used = int(state[:, 2].max())
                grown[:, :used] = arena[:, :used]
                arena = grown
        row0 += m
    counts = state[:, 1].copy()
    if n_parts > 1:
        bases = np.zeros(n_parts, np.int64)
        np.cumsum(counts[:-1], out=bases[1:])
        text_global_codes(hashes, codes, bases, np.int64(n_chunks))
    del hashes
    rank, data, offsets = text_order(arena, aoff, counts)
    return codes, rank, data, offsets
